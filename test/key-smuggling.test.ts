/**
 * Key smuggling: a message whose bytes hold two readings of one member. JSON.parse keeps the
 * last of two equal keys; other parsers keep the first, or read keys without regard to case or
 * Unicode form (Go's encoding/json matches `Name` to the field `name`), or end a key at a NUL.
 * The gateway decides on its reading and forwards the bytes as received, so a message an upstream
 * could read differently is refused: the class (equal keys, keys equal after case folding, NFKC
 * or dropping ignorable characters, control characters in keys) at any depth, not one example.
 */
import t from 'tap'
import fc from 'fast-check'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { parseMcpMessage } from '../lib/jsonrpc.js'
import { keyCollision } from '../lib/json-text.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, withGateway } from './fixtures/gateway.js'
import { startRecordingUpstream } from './fixtures/upstream.js'
import { startScriptedUpstream } from './fixtures/scripted-upstream.js'

/** Spellings of a key that some parser takes for the key itself. */
const twins = (key: string): string[] => [
  key,
  key.toUpperCase(),
  key[0]!.toUpperCase() + key.slice(1),
  key.replace(/s/g, '\u017f'), // ſ: Go's simple folding and NFKC read it as s
  key.replace(/k/g, '\u212a'), // Kelvin sign: K
  `${key}\\u0000`, // a NUL (escaped): C-based parsers end the key there
  key.replace(/^./, c => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) // the same key, escaped
].filter((k, i, all) => all.indexOf(k) === i)

/** Puts the raw JSON member `"a":1,"b":2` style text into an object at some depth of a message. */
function nest (members: string, depth: number): string {
  let inner = `{${members}}`
  for (let d = 0; d < depth; d++) inner = d % 2 === 0 ? `{"level${d}":${inner}}` : `[${inner}]`
  return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"x":${inner}}}}`
}

t.test('any two keys that a parser can take for one another are refused, at any depth', async () => {
  const keys = fc.constantFrom('name', 'method', 'params', 'amount', 'uri', 'skip', 'kind', 'id')
  fc.assert(fc.property(keys, fc.nat({ max: 6 }), fc.nat({ max: 100 }), (key, depth, pick) => {
    const spellings = twins(key)
    const other = spellings[pick % spellings.length]!
    const body = nest(`"${key}":1,"filler":true,"${other}":2`, depth)
    let refused = false
    try { parseMcpMessage(Buffer.from(body)) } catch (err) { refused = /parsers disagree/.test((err as Error).message) }
    return refused
  }), { numRuns: 400 })
})

t.test('distinct keys, equal values, keys inside strings and arrays of objects pass', async t => {
  const ok = [
    nest('"name":1,"names":2,"nam":3', 2),
    nest('"a":"\\"a\\":1","b":"{\\"a\\":2}"', 1),
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"rows":[{"id":1},{"id":2}],"more":{"id":3}}}}',
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"straße":1,"strasse":2}}}',
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"ǅ":1,"x":2}}}'
  ]
  for (const body of ok) t.doesNotThrow(() => parseMcpMessage(Buffer.from(body)), body)
  t.equal(keyCollision(Buffer.from('{"a":{"b":1},"c":{"b":2}}')), null, 'the same key in two objects is not a collision')
  t.not(keyCollision(Buffer.from('{"λόγος":1,"ΛΌΓΟΣ":2}')), null, 'Greek keys fold too (final sigma and capital sigma)')
})

t.test('through the gateway: every smuggled message is refused with 400 and reaches the upstream not at all', async t => {
  const issuer = makeIssuer('EdDSA')
  const up = await startRecordingUpstream()
  const gw = await withGateway(t, { issuer, upstreams: { db: { url: up.url, auth: { type: 'none' } } }, extra: { authorization: ALLOW_ALL } }, up)
  const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${issuer.sign({ aud: gw.resource('db') })}` }
  const smuggled = [
    '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","Name":"add"}}',
    '{"jsonrpc":"2.0","id":3,"method":"ping","Method":"tools/call","params":{"name":"add"}}',
    '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"add","name":"echo"}}',
    '{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"file:///ok","URI":"file:///secret"}}',
    '{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","paramſ":{}},"params":{"name":"echo"}}',
    '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"amount":1,"AMOUNT":5000}}}',
    '{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"amount\\u0000":5000}}}',
    '{"jsonrpc":"2.0","id":9,"result":{},"Result":{"x":1}}',
    // A member spelled only loosely: the gateway reads none, a loose parser reads it.
    '{"jsonrpc":"2.0","id":10,"result":{},"Method":"tools/call","Params":{"name":"add"}}',
    '{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","Arguments":{"text":"DELETE"}}}',
    '{"jsonrpc":"2.0","id":12,"METHOD":"tools/call","params":{"name":"add"}}',
    '{"jsonrpc":"2.0","id":13,"method":"resources/read","params":{"Uri":"file:///secret"}}'
  ]
  const before = up.received.length
  for (const body of smuggled) {
    const r = await request(gw.url('db'), { method: 'POST', headers, body })
    const answer = await r.body.json() as { error?: { code: number, message: string } }
    t.equal(r.statusCode, 400, `refused: ${body}`)
    t.equal(answer.error?.code, -32600, 'JSON-RPC -32600')
    t.match(answer.error?.message, /parsers disagree|member names are exact|needs params/, 'the message says why')
  }
  t.equal(up.received.length, before, 'nothing of them reached the upstream')
  t.ok(gw.audit.slice(-smuggled.length).every(r => r.outcome === 'deny' && r.status === 400), 'each is audited as a deny')
})

t.test('an argument spelled like the schema\'s but not as it is refused; exact names pass', async t => {
  const issuer = makeIssuer('EdDSA')
  const up = await startRecordingUpstream()
  const gw = await withGateway(t, { issuer, upstreams: { db: { url: up.url, auth: { type: 'none' } } }, extra: { authorization: ALLOW_ALL } }, up)
  const client = new Client({ name: 'loose-names', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('db')), { requestInit: { headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('db') })}` } } }))
  t.teardown(async () => { await client.close() })
  t.same((await client.callTool({ name: 'echo', arguments: { text: 'hi' } })).content, [{ type: 'text', text: 'hi' }], 'the exact name passes')
  const calls = () => up.received.filter(r => (r.body as { method?: string } | undefined)?.method === 'tools/call').length
  const before = calls()
  for (const text of ['TEXT', 'Text', 'ｔｅｘｔ', 'te\u00adxt']) {
    await t.rejects(client.callTool({ name: 'echo', arguments: { [text]: 'hi' } }), { code: -32602, message: /is not the tool's argument "text"/ }, `${JSON.stringify(text)}: -32602, naming the schema's spelling`)
  }
  t.equal(calls(), before, 'none of them reached the upstream')
})

t.test('argument names are held to the schema at every depth it describes', async t => {
  const nested = {
    name: 'configure',
    description: 'Sets limits.',
    inputSchema: { type: 'object', properties: { config: { type: 'object', properties: { amount: { type: 'number' } } }, rows: { type: 'array', items: { type: 'object', properties: { id: { type: 'string' } } } } } }
  }
  const up = await startScriptedUpstream((req, res) => {
    const m = req.body as { id?: unknown, method?: string } | undefined
    const result = m?.method === 'initialize'
      ? { protocolVersion: '2025-06-18', capabilities: { tools: {} }, serverInfo: { name: 'nested', version: '1' } }
      : m?.method === 'tools/list' ? { tools: [nested] } : { content: [{ type: 'text', text: 'done' }] }
    if (m?.id === undefined) { res.writeHead(202).end(); return }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: m.id, result }))
  })
  const issuer = makeIssuer('EdDSA')
  const gw = await withGateway(t, { issuer, upstreams: { n: { url: up.url, auth: { type: 'none' } } }, extra: { authorization: ALLOW_ALL } }, up)
  const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${issuer.sign({ aud: gw.resource('n') })}` }
  const call = async (args: unknown) => {
    const r = await request(gw.url('n'), { method: 'POST', headers, body: JSON.stringify({ jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'configure', arguments: args } }) })
    return await r.body.json() as { result?: unknown, error?: { code: number, message: string } }
  }
  t.ok((await call({ config: { amount: 5 }, rows: [{ id: 'a' }] })).result, 'exact names at every depth pass')
  const calls = () => up.received.filter(r => (r.body as { method?: string } | undefined)?.method === 'tools/call').length
  const before = calls()
  for (const args of [{ config: { AMOUNT: 5000 } }, { rows: [{ id: 'a' }, { ID: 'b' }] }, { CONFIG: { amount: 1 } }]) {
    const r = await call(args)
    t.equal(r.error?.code, -32602, `${JSON.stringify(args)}: -32602`)
    t.match(r.error?.message, /is not the tool's argument/)
  }
  t.equal(calls(), before, 'none of them reached the upstream')
})
