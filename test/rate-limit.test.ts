/**
 * Per-agent and per-tool rate limits on one gateway (the memory store); the shared,
 * multi-replica case is in replicas.test.ts.
 */
import t from 'tap'
import { request } from 'undici'
import { validateConfig } from '../lib/config.js'
import { toolLimit } from '../plugins/rate-limit.js'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'

const issuer = makeIssuer('EdDSA')
let up: RecordingUpstream
let gw: TestGateway

t.before(async () => {
  up = await startRecordingUpstream()
  gw = await startGateway({
    issuer,
    upstreams: { rec: { url: up.url, auth: { type: 'none' } } },
    extra: { rateLimit: { max: 4, timeWindow: '1 minute', tools: { 'rec/echo': { max: 1, timeWindow: '1 minute' } } } }
  })
})
t.teardown(async () => { await gw.close(); await up.close() })

const send = async (agentId: string, body: Record<string, unknown>): Promise<{ status: number, headers: Record<string, unknown>, text: string }> => {
  const res = await request(gw.url('rec'), {
    method: 'POST',
    headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('rec'), agentId, sub: agentId })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify(body)
  })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}
const ping = (id: number): Record<string, unknown> => ({ jsonrpc: '2.0', id, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'rl', version: '1' } } })

t.test('every MCP request of an agent counts; over the limit: 429, Retry-After, JSON-RPC error, nothing forwarded', async t => {
  for (let i = 1; i <= 4; i++) t.equal((await send('busy-bot', ping(i))).status, 200, `request ${i} passes`)
  const n = up.received.length
  const over = await send('busy-bot', ping(5))
  t.equal(over.status, 429)
  t.ok(Number(over.headers['retry-after']) >= 1 && Number(over.headers['retry-after']) <= 60, 'Retry-After in seconds')
  t.equal(over.headers['x-ratelimit-limit'], '4')
  t.equal(over.headers['x-ratelimit-remaining'], '0')
  t.match(JSON.parse(over.text), { jsonrpc: '2.0', id: 5, error: { code: -32029, message: /^Rate limit exceeded: requests of this agent \(4 requests per window\); retry after \d+ seconds$/ } })
  t.equal(up.received.length, n, 'nothing forwarded')
  t.match(gw.audit.at(-1), { agentId: 'busy-bot', outcome: 'deny', status: 429, reason: /Rate limit exceeded/ })
  t.equal((await send('calm-bot', ping(6))).status, 200, 'another agent has its own budget')
})

t.test('a per-tool limit applies to calls of that tool only', async t => {
  const call = (id: number, name: string): Record<string, unknown> => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: { text: 'x' } } })
  // The recording upstream is sessionful: open a session for this agent.
  const init = await request(gw.url('rec'), {
    method: 'POST',
    headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('rec'), agentId: 'tool-bot', sub: 'tool-bot' })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify(ping(1))
  })
  const sid = init.headers['mcp-session-id'] as string
  await init.body.dump()
  const inSession = async (body: Record<string, unknown>): Promise<number> => {
    const res = await request(gw.url('rec'), {
      method: 'POST',
      headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('rec'), agentId: 'tool-bot', sub: 'tool-bot' })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' },
      body: JSON.stringify(body)
    })
    await res.body.dump()
    return res.statusCode
  }
  t.equal(await inSession(call(2, 'echo')), 200)
  t.equal(await inSession(call(3, 'echo')), 429, 'the second echo in the window is refused')
  t.equal(await inSession(call(4, 'count')), 200, 'another tool is not')
})

t.test('toolLimit: server/tool wins over the bare tool name', async t => {
  const c = validateConfig({
    identity: { issuer: 'https://idp.test', jwksUri: 'https://idp.test/jwks' },
    authorization: { schema: 'cedar/schema.cedarschema', policies: 'test/fixtures/cedar/allow-all' },
    upstreams: { db: { url: 'http://127.0.0.1:9/mcp' }, api: { url: 'http://127.0.0.1:9/mcp' } },
    rateLimit: { max: 100, tools: { pay: { max: 5, timeWindow: '1 minute' }, 'api/pay': { max: 1, timeWindow: '1 hour' } } }
  })
  t.same(toolLimit(c.rateLimit!, 'api', 'pay'), { key: 'api/pay', max: 1, timeWindowMs: 3_600_000 })
  t.same(toolLimit(c.rateLimit!, 'db', 'pay'), { key: 'pay', max: 5, timeWindowMs: 60_000 })
  t.equal(toolLimit(c.rateLimit!, 'db', 'query'), undefined)
})
