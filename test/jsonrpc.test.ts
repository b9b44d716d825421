import t from 'tap'
import { parseMcpMessage } from '../lib/jsonrpc.js'
import { jsonShape, MAX_JSON_DEPTH, type JsonShape } from '../lib/json-text.js'

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

t.test('jsonShape counts members, values and depth of a JSON text without parsing it', async t => {
  const shape = (v: unknown): JsonShape => jsonShape(Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)))
  t.same(shape({}), { members: 0, values: 0, depth: 1 })
  t.same(shape('[ ]'), { members: 0, values: 0, depth: 1 }, 'whitespace in an empty array is no value')
  t.same(shape('[ 1 ]'), { members: 0, values: 1, depth: 1 })
  t.same(shape([[], {}, 0, 'x', null]), { members: 0, values: 5, depth: 2 }, 'containers and scalars are values alike')
  t.same(shape({ a: 1, b: { c: [{ d: 2 }] } }), { members: 4, values: 5, depth: 4 })
  t.same(shape({ 'k:ey,[{': 'va:l\\",]}:"x', q: '"' }), { members: 2, values: 2, depth: 1 }, 'colons, commas, brackets, quotes and backslashes inside strings count for nothing')
  t.same(shape('"a,b:[c"'), { members: 0, values: 0, depth: 0 }, 'a string alone')
  t.same(shape({ a: '\\', b: '\\"', c: '\\\\",[', d: ['"', '\\\\'] }), { members: 4, values: 6, depth: 2 }, 'a string ends at the first quote after an even run of backslashes')
  t.same(shape('["abc'), { members: 0, values: 1, depth: 1 }, 'an unterminated string runs to the end')
  t.same(shape({ 'ключ:😀': 'значение,[' }), { members: 1, values: 1, depth: 1 }, 'multi-byte UTF-8 text')
  t.equal(shape(Array(50).fill({ x: 1 })).values, 100, '50 elements and their 50 members\' values')
  t.same(jsonShape(Buffer.from(JSON.stringify({ a: 1, b: 2, c: 3, d: 4 })), { maxKeys: 2 }), { members: 3, values: 3, depth: 1 }, 'stops once past the key limit')
  t.same(jsonShape(Buffer.from('[0,0,0,0,0,0]'), { maxValues: 3 }), { members: 0, values: 4, depth: 1 }, 'stops once past the value limit')
  t.same(jsonShape(Buffer.from('['.repeat(1000)), { maxDepth: 64 }), { members: 0, values: 64, depth: 65 }, 'stops once past the depth limit')
  t.equal(jsonShape(Buffer.from(']]]]' + '['.repeat(70))).depth, 70, 'closing brackets before any opening one do not lower the count below zero')

  // Against the parsed value, on random JSON printed compactly and indented.
  let seed = 7
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
  const gen = (level: number): unknown => {
    const k = level > 5 ? rand(4) : rand(7)
    if (k === 0) return rand(1000) - 500
    if (k === 1) return ['', 'a,b', '[{"x":1}]', 'q\\"r:', 'ü€😀,'][rand(5)]
    if (k === 2) return [null, true, false][rand(3)]
    if (k === 3) return rand(2) === 0 ? [] : {}
    if (k === 4 || k === 5) return Array.from({ length: rand(5) }, () => gen(level + 1))
    return Object.fromEntries(Array.from({ length: rand(5) }, (_, i) => [`k${i}:,"`, gen(level + 1)]))
  }
  const count = (v: unknown, level: number): JsonShape => {
    if (v === null || typeof v !== 'object') return { members: 0, values: 0, depth: level - 1 }
    const children = Array.isArray(v) ? v : Object.values(v)
    const out = { members: Array.isArray(v) ? 0 : children.length, values: children.length, depth: level }
    for (const c of children) {
      const s = count(c, level + 1)
      out.members += s.members
      out.values += s.values
      out.depth = Math.max(out.depth, s.depth)
    }
    return out
  }
  for (let i = 0; i < 300; i++) {
    const v = gen(0)
    t.same(jsonShape(Buffer.from(JSON.stringify(v))), count(v, 1), `random value ${i}, compact`)
    t.same(jsonShape(Buffer.from(JSON.stringify(v, null, 2))), count(v, 1), `random value ${i}, indented`)
  }
})

t.test('too many values, too many keys or too deep: refused on the bytes, before the parser runs', async t => {
  const MiB = 1024 * 1024
  const head = '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":'
  const fill = (unit: string): string => unit.repeat(Math.floor((MiB - head.length) / unit.length))
  const parseCalls = { n: 0 }
  const original = JSON.parse
  JSON.parse = ((...args: Parameters<typeof JSON.parse>) => { parseCalls.n++; return original(...args) }) as typeof JSON.parse
  t.teardown(() => { JSON.parse = original })
  const cases: Array<[string, string, RegExp]> = [
    ['1 MiB of [] repeated', `${head}[${fill('[],')}[]]}}`, /more than 50000 values \(members' values and array elements\) in all \(limits\.maxJsonValues\)/],
    ['1 MiB of {} repeated', `${head}[${fill('{},')}{}]}}`, /more than 50000 values/],
    ['1 MiB of 0, repeated', `${head}[${fill('0,')}0]}}`, /more than 50000 values/],
    ['1 MiB of [ nested, never closed', `${head}${fill('[')}`, /nested deeper than 64 levels/],
    ['1 MiB of [ nested and closed', `${head}${'['.repeat(MiB / 2)}${']'.repeat(MiB / 2)}}}`, /nested deeper than 64 levels/],
    ['1 MiB of members', `${head}{${fill('"":0,')}"":0}}}`, /more than 10000 object members \(keys\)/]
  ]
  for (const [what, body, message] of cases) {
    parseCalls.n = 0
    t.throws(() => parseMcpMessage(Buffer.from(body)), { code: 'MCPW_ERR_RPC_INVALID', rpcCode: -32600, statusCode: 400, message }, what)
    t.equal(parseCalls.n, 0, `${what}: never parsed`)
  }

  // The limits themselves: exactly at each passes, one more is refused.
  const withValues = (n: number): Buffer => Buffer.from(`${head}[${Array(n - 5).fill(0).join(',')}]}}`) // 4 members + "a" + its elements
  t.equal(jsonShape(withValues(100)).values, 100)
  t.equal(parseMcpMessage(withValues(100), { maxValues: 100 }).method, 'ping', '100 values pass a limit of 100')
  t.throws(() => parseMcpMessage(withValues(101), { maxValues: 100 }), { message: /more than 100 values/ }, '101 do not')
  let nested = '0'
  for (let i = 0; i < MAX_JSON_DEPTH - 2; i++) nested = `[${nested}]`
  t.equal(parseMcpMessage(Buffer.from(`${head}${nested}}}`)).method, 'ping', '64 levels pass (the message and its params are two)')
  t.throws(() => parseMcpMessage(Buffer.from(`${head}[${nested}]}}`)), { code: 'MCPW_ERR_RPC_INVALID', message: /nested deeper than 64 levels/ }, '65 do not')
  parseCalls.n = 0
  t.equal(parseMcpMessage(Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping', params: { t: ',[{:'.repeat(100_000) } }))).method, 'ping', 'brackets, commas and colons inside a string are not values')
  t.equal(parseCalls.n, 1, 'and that message was parsed')
})
