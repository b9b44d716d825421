import t from 'tap'
import { countJsonMembers, parseMcpMessage } from '../lib/jsonrpc.js'

const parse = (v: unknown) => parseMcpMessage(Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)))

t.test('classifies MCP messages', async t => {
  const call = parse({ jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT 1' } } })
  t.equal(call.kind, 'request')
  t.equal(call.id, 5)
  t.equal(call.method, 'tools/call')
  t.equal(call.tool, 'database_query')
  t.same(call.arguments, { sql: 'SELECT 1' })
  t.equal(parse({ jsonrpc: '2.0', id: 'a', method: 'resources/read', params: { uri: 'file:///x' } }).uri, 'file:///x')
  t.equal(parse({ jsonrpc: '2.0', id: 'a', method: 'resources/subscribe', params: { uri: 'file:///y' } }).uri, 'file:///y')
  t.equal(parse({ jsonrpc: '2.0', id: 1, method: 'prompts/get', params: { name: 'summary' } }).prompt, 'summary')
  const note = parse({ jsonrpc: '2.0', method: 'notifications/initialized' })
  t.equal(note.kind, 'notification')
  t.equal(note.id, null)
  const res = parse({ jsonrpc: '2.0', id: 3, result: { content: [] } })
  t.equal(res.kind, 'response')
  t.equal(res.method, null)
  t.equal(parse({ jsonrpc: '2.0', id: 3, error: { code: -1, message: 'no' } }).kind, 'response')
  const raw = Buffer.from('{"jsonrpc":"2.0","id":1,"method":"ping"}')
  t.equal(parseMcpMessage(raw).raw, raw, 'the raw bytes are kept for forwarding')
})

t.test('refuses what is not one JSON-RPC message', async t => {
  const cases: Array<[string, unknown, string, RegExp]> = [
    ['empty', '', 'MCPW_ERR_RPC_PARSE', /empty/],
    ['not JSON', '{nope', 'MCPW_ERR_RPC_PARSE', /not valid JSON/],
    ['a batch', [{ jsonrpc: '2.0', id: 1, method: 'ping' }], 'MCPW_ERR_RPC_BATCH', /batches/],
    ['a string', '"hi"', 'MCPW_ERR_RPC_INVALID', /JSON-RPC 2\.0 object/],
    ['no jsonrpc', { id: 1, method: 'ping' }, 'MCPW_ERR_RPC_INVALID', /"jsonrpc" must be "2.0"/],
    ['a fractional id', { jsonrpc: '2.0', id: 1.5, method: 'ping' }, 'MCPW_ERR_RPC_INVALID', /"id"/],
    ['an object id', { jsonrpc: '2.0', id: {}, method: 'ping' }, 'MCPW_ERR_RPC_INVALID', /"id"/],
    ['array params', { jsonrpc: '2.0', id: 1, method: 'ping', params: [] }, 'MCPW_ERR_RPC_INVALID', /"params" must be an object/],
    ['an empty method', { jsonrpc: '2.0', id: 1, method: '' }, 'MCPW_ERR_RPC_INVALID', /"method"/],
    ['method and result', { jsonrpc: '2.0', id: 1, method: 'ping', result: {} }, 'MCPW_ERR_RPC_INVALID', /both/],
    ['neither method nor id', { jsonrpc: '2.0' }, 'MCPW_ERR_RPC_INVALID', /needs "method"/],
    ['result and error', { jsonrpc: '2.0', id: 1, result: {}, error: { code: 1, message: 'x' } }, 'MCPW_ERR_RPC_INVALID', /exactly one/],
    ['tools/call without name', { jsonrpc: '2.0', id: 1, method: 'tools/call', params: {} }, 'MCPW_ERR_RPC_INVALID', /params\.name/],
    ['tools/call with array arguments', { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'x', arguments: [1] } }, 'MCPW_ERR_RPC_INVALID', /arguments must be an object/],
    ['resources/read without uri', { jsonrpc: '2.0', id: 1, method: 'resources/read', params: {} }, 'MCPW_ERR_RPC_INVALID', /params\.uri/],
    ['__proto__ key', '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"__proto__":{}}}', 'MCPW_ERR_RPC_PARSE', /not valid JSON/],
    ['constructor.prototype', '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"constructor":{"prototype":{}}}}', 'MCPW_ERR_RPC_PARSE', /not valid JSON/]
  ]
  for (const [name, input, code, message] of cases) {
    t.throws(() => parse(input), { code, message }, name)
  }
  try {
    parse({ jsonrpc: '2.0', id: 42, method: 'tools/call', params: {} })
    t.fail('should throw')
  } catch (err) {
    t.equal((err as { rpcId?: unknown }).rpcId, 42, 'a refusal carries the id it could read')
  }
})

t.test('countJsonMembers counts the members of a JSON text without parsing it', async t => {
  const count = (v: unknown): number => countJsonMembers(Buffer.from(JSON.stringify(v)))
  t.equal(count({}), 0)
  t.equal(count({ a: 1, b: { c: [{ d: 2 }] } }), 4)
  t.equal(count({ 'k:ey': 'va:l\\":"x', q: '"' }), 2, 'colons, quotes and backslashes inside strings are not members')
  t.equal(count({ ['ключ:😀']: 'значение:' }), 1, 'multi-byte UTF-8 text')
  t.equal(count(Array(50).fill({ x: 1 })), 50)
  t.equal(countJsonMembers(Buffer.from(JSON.stringify({ a: 1, b: 2, c: 3, d: 4 })), 2), 3, 'stops once past the limit')
})
