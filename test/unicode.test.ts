/**
 * Text that is not well-formed Unicode, bytes that are not UTF-8 and JSON nested too deep, from
 * a hostile agent: refused at parse (400, -32700 / -32600) and never forwarded, never given to
 * the Cedar engine. And the engine itself: a Wasm instance that fails is replaced, every policy
 * set goes on deciding, and /readyz says so. (cedar-wasm 4.x, given lone surrogates, fails and
 * leaks until every later decision fails: bench/repro/cedar-wasm-lone-surrogate.cjs.)
 */
import t from 'tap'
import { Agent, request } from 'undici'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, REFERENCE, startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { CedarEngine, compilePolicySet, engineHealth, onEngineFailure, readPolicySource, replaceCedarInstance } from '../lib/cedar/engine.js'
import { identityFromClaims } from '../lib/identity.js'
import { jsonValueProblem } from '../lib/json-text.js'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'

const issuer = makeIssuer('EdDSA')
let up: RecordingUpstream
let gw: TestGateway
const dispatcher = new Agent({ connections: 8, pipelining: 1 })

t.before(async () => {
  up = await startRecordingUpstream()
  gw = await startGateway({ issuer, upstreams: { up: { url: up.url } } })
})
t.teardown(async () => { await gw.close(); await up.close(); await dispatcher.close() })

const token = () => issuer.sign({ aud: gw.resource('up') })
const HEADERS = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' }

async function post (body: string | Buffer, bearer = token()): Promise<{ status: number, json: any }> {
  const res = await request(gw.url('up'), { method: 'POST', headers: { ...HEADERS, authorization: `Bearer ${bearer}` }, body, dispatcher })
  const text = await res.body.text()
  let json: unknown
  try { json = JSON.parse(text) } catch { json = text }
  return { status: res.statusCode, json }
}

/** JSON text with a lone surrogate escape where the marker stands. */
const lone = (template: Record<string, unknown>): string => JSON.stringify(template).replaceAll('LONE', '\\ud800')

t.test('jsonValueProblem: lone surrogates anywhere, depth beyond 64, iteratively', async t => {
  t.equal(jsonValueProblem({ a: ['ok', { b: 'fine 😀' }] }), null, 'pairs are fine')
  t.match(jsonValueProblem({ a: ['x\ud800'] }), { kind: 'unicode' })
  t.match(jsonValueProblem({ 'k\udfff': 1 }), { kind: 'unicode' }, 'in a key')
  let deep: unknown = 1
  for (let i = 0; i < 64; i++) deep = [deep]
  t.equal(jsonValueProblem(deep), null, '64 levels pass')
  t.match(jsonValueProblem([deep]), { kind: 'depth' }, '65 do not')
  let huge: unknown = 1
  for (let i = 0; i < 200_000; i++) huge = { a: huge }
  t.match(jsonValueProblem(huge), { kind: 'depth' }, '200,000 levels: refused, no stack overflow')
})

t.test('lone surrogates, bad UTF-8 and deep nesting are refused at parse and forwarded nowhere', async t => {
  const n = up.received.length
  const deep = (levels: number): string => `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x","deep":${'['.repeat(levels)}${']'.repeat(levels)}}}}`
  const cases: Array<[string, string | Buffer, number, number]> = [
    ['in the method', lone({ jsonrpc: '2.0', id: 1, method: 'tools/LONE', params: {} }), 400, -32700],
    ['in the tool name', lone({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echoLONE', arguments: {} } }), 400, -32700],
    ['in an argument', lone({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'echo', arguments: { text: 'xLONE' } } }), 400, -32700],
    ['in a key', lone({ jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'echo', arguments: { LONE: 'x' } } }), 400, -32700],
    ['in the id', lone({ jsonrpc: '2.0', id: 'LONE', method: 'ping' }), 400, -32700],
    ['a low surrogate alone', JSON.stringify({ jsonrpc: '2.0', id: 5, method: 'ping', params: { _meta: { x: 'a' } } }).replace('"a"', '"\\udc00"'), 400, -32700],
    ['bytes that are not UTF-8', Buffer.concat([Buffer.from('{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"text":"'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}}}')]), 400, -32700],
    ['an encoded surrogate (CESU-8 bytes)', Buffer.concat([Buffer.from('{"jsonrpc":"2.0","id":8,"method":"ping","params":{"_meta":{"x":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}}}')]), 400, -32700],
    ['nested 65 levels (the envelope, params, arguments and 62 arrays)', deep(62), 400, -32600],
    ['nested 100,000 levels', deep(100_000), 400, -32600]
  ]
  for (const [what, body, status, code] of cases) {
    const r = await post(body)
    t.equal(r.status, status, `${what}: ${status}`)
    t.equal(r.json?.error?.code, code, `${what}: ${code}`)
    t.match(r.json?.error?.message, /Unicode|UTF-8|nested deeper than 64/, `${what}: says why`)
  }
  t.equal(up.received.length, n, 'nothing forwarded')
  t.ok(gw.audit.filter(a => a.status === 400).length >= cases.length, 'each refusal is audited')
})

t.test('a token whose claims hold a lone surrogate is refused (401), nothing forwarded', async t => {
  const n = up.received.length
  for (const claims of [{ agentId: 'bot\ud800' }, { roles: ['reader\udfff'] }, { department: '\ud83d' }, { extra: { nested: ['\ud800'] } }]) {
    const r = await post(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }), issuer.sign({ aud: gw.resource('up'), ...claims }))
    t.equal(r.status, 401, `${Object.keys(claims)[0]!}: 401`)
    t.match(r.json?.error?.message, /not well-formed Unicode/)
  }
  t.equal(up.received.length, n, 'nothing forwarded')
})

t.test('thousands of poisoned requests from one agent, then an ordinary call: it is answered, and the gateway is ready', async t => {
  const before = engineHealth().replacements
  const bearer = token()
  const n = up.received.length
  let refused = 0
  for (let batch = 0; batch < 30; batch++) {
    const results = await Promise.all(Array.from({ length: 100 }, async (_, i) =>
      await post(lone({ jsonrpc: '2.0', id: batch * 100 + i, method: 'tools/call', params: { name: 'echoLONE', arguments: { text: 'LONE' } } }), bearer)))
    refused += results.filter(r => r.status === 400 && r.json?.error?.code === -32700).length
  }
  t.equal(refused, 3000, 'all 3,000 refused at parse')
  t.equal(up.received.length, n, 'none forwarded')
  t.equal(engineHealth().replacements, before, 'none reached the Cedar engine')
  // The same agent's ordinary session: each message is decided by the engine, and a denial would
  // be an HTTP 200 too, so what counts is the tool's own answer coming back.
  const client = new Client({ name: 'after-the-flood', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('up')), { requestInit: { headers: { authorization: `Bearer ${bearer}` } } }))
  t.teardown(async () => { await client.close() })
  t.same((await client.listTools()).tools.map(x => x.name).sort(), ['add_tool', 'count', 'echo'], 'the tools are listed: each one was decided allowed')
  const answer = await client.callTool({ name: 'echo', arguments: { text: 'still standing ✓' } })
  t.same(answer.content, [{ type: 'text', text: 'still standing ✓' }], 'an ordinary call gets the tool\'s own result')
  t.notOk(answer.isError, 'not an error result')
  const forwarded = up.received.slice(n).filter(r => r.method === 'POST').map(r => (r.body as { method?: string } | undefined)?.method)
  t.same(forwarded, ['initialize', 'notifications/initialized', 'tools/list', 'tools/call'], 'of all that, only the ordinary session reached the upstream')
  const ready = await request(`${gw.base}/readyz`, { dispatcher })
  t.equal(ready.statusCode, 200)
  t.match(await ready.body.json(), { status: 'ready', cedar: { healthy: true } })
})

t.test('a failed Wasm instance is replaced: every engine goes on deciding, the failure is reported', async t => {
  const config = gw.config
  const allowAll = new CedarEngine(compilePolicySet(readPolicySource(ALLOW_ALL.schema, ALLOW_ALL.policies)), 'UTC')
  const reference = new CedarEngine(compilePolicySet(readPolicySource(REFERENCE.schema, REFERENCE.policies)), 'Asia/Seoul')
  const identity = identityFromClaims({ iss: issuer.issuer, sub: 'a', roles: ['readonly'], exp: 9e9 }, config.identity)
  const server = config.upstreams.get('up')!
  const decide = (e: CedarEngine) => e.authorize({ identity, server, action: 'connect', method: 'ping' }).outcome
  t.same([decide(allowAll), decide(reference)], ['allow', 'allow'])
  const events: Array<{ error: string, recovered: boolean }> = []
  const off = onEngineFailure(e => events.push(e))
  t.teardown(off)
  const before = engineHealth().replacements
  t.equal(replaceCedarInstance('simulated failure'), true, 'a fresh instance took over')
  t.same(events, [{ error: 'simulated failure', recovered: true }], 'listeners are told')
  t.equal(engineHealth().replacements, before + 1)
  t.same([decide(allowAll), decide(reference)], ['allow', 'allow'], 'both policy sets decide on the fresh instance')
  t.match(gw.log.join('\n'), /Cedar engine failed: a fresh Wasm instance replaced it/, 'the gateway logs it at error level')
  t.equal((await request(`${gw.base}/readyz`, { dispatcher })).statusCode, 200, 'and is ready')
  const poisoned = allowAll.authorize({ identity, server, action: 'call_tool', method: 'tools/call', tool: 'x\ud800' })
  t.match(poisoned, { outcome: 'error', allowed: false }, 'text that is not well-formed never reaches the instance: an error decision (deny)')
  t.equal(engineHealth().replacements, before + 1, 'and no replacement was needed')
})
