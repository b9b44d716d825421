/**
 * Per-agent and per-tool rate limits on one gateway (the memory store); the shared,
 * multi-replica case is in replicas.test.ts.
 */
import t from 'tap'
import { request } from 'undici'
import { validateConfig } from '../lib/config.js'
import { toolLimit } from '../plugins/rate-limit.js'
import { AddressBudget, addressKey } from '../lib/address-budget.js'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { abortedUpload, until } from './fixtures/aborted-upload.js'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { jwk } from './fixtures/keys.js'

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

t.test('refused requests count too: parse errors, bad methods, unknown tools and foreign sessions spend the budget', async t => {
  const headers = (agentId: string): Record<string, string> => ({ authorization: `Bearer ${issuer.sign({ aud: gw.resource('rec'), agentId, sub: agentId })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' })
  const raw = async (body: string, extra: Record<string, string> = {}): Promise<number> => {
    const res = await request(gw.url('rec'), { method: 'POST', headers: { ...headers('noisy-bot'), ...extra }, body })
    await res.body.dump()
    return res.statusCode
  }
  const n = up.received.length
  t.equal(await raw('{"jsonrpc":'), 400, 'a parse error')
  t.equal(await raw(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call ', params: { name: 'echo' } })), 400, 'a method name with a space')
  t.equal(await raw(JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'no_such_tool', arguments: {} } })), 200, 'an unknown tool: a JSON-RPC error')
  t.equal(await raw(JSON.stringify(ping(3)), { 'mcp-session-id': 'not-a-session-of-this-agent', 'mcp-protocol-version': '2025-06-18' }), 404, 'a foreign session')
  const forwarded = up.received.length - n
  const over = await send('noisy-bot', ping(5))
  t.equal(over.status, 429, 'four refusals spent the budget of four: the next request is refused')
  t.match(JSON.parse(over.text), { id: 5, error: { code: -32029 } })
  t.equal(up.received.length - n, forwarded, 'the refused request forwarded nothing')
  t.equal(await raw(JSON.stringify({ jsonrpc: '2.0', id: 6, method: 'tools/call', params: { name: 'echo', arguments: { text: 'x' } } })), 429, 'a call is refused before its decision')
  t.equal(up.received.length - n, forwarded, 'nothing forwarded')
})

t.test('/mcp requests spend the same budget, and what /mcp asks the upstreams for it does not count again', async t => {
  const mcp = async (id: number): Promise<number> => {
    const res = await request(`${gw.base}/mcp`, {
      method: 'POST',
      headers: { authorization: `Bearer ${issuer.sign({ aud: `${gw.config.publicUrl}/mcp`, agentId: 'agg-bot', sub: 'agg-bot' })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' },
      body: JSON.stringify({ jsonrpc: '2.0', id, method: 'tools/list', params: {} })
    })
    await res.body.dump()
    return res.statusCode
  }
  for (let i = 1; i <= 4; i++) t.equal(await mcp(i), 200, `aggregated tools/list ${i} (each reads the upstream on the agent's behalf)`)
  t.equal(await mcp(5), 429, 'the fifth is over the budget of four')
})

t.test('failed authentications spend a budget per client address; beyond it: 429 before the token is read', async t => {
  const g = await startGateway({
    issuer,
    upstreams: { rec: { url: up.url, auth: { type: 'none' } } },
    extra: { rateLimit: { max: 100, unauthenticated: { max: 3, timeWindow: '1 minute' } } }
  })
  t.teardown(() => g.close())
  const post = async (authorization: string | undefined): Promise<{ status: number, headers: Record<string, unknown>, text: string }> => {
    const res = await request(g.url('rec'), {
      method: 'POST',
      headers: { ...(authorization !== undefined ? { authorization } : {}), 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify(ping(1))
    })
    return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
  }
  const good = `Bearer ${issuer.sign({ aud: g.resource('rec'), agentId: 'good-bot', sub: 'good-bot' })}`
  t.equal((await post(good)).status, 200, 'a valid token spends nothing of the address budget')
  const n = up.received.length
  const forged = makeIssuer('EdDSA')
  t.equal((await post(undefined)).status, 401, 'no token')
  t.equal((await post(`Bearer ${forged.sign({ aud: g.resource('rec'), agentId: 'good-bot', sub: 'good-bot', iss: issuer.issuer })}`)).status, 401, 'a forged signature')
  t.equal((await post(`Bearer ${issuer.sign({ aud: 'http://elsewhere/mcp', agentId: 'good-bot', sub: 'good-bot' })}`)).status, 401, 'a wrong audience')
  const over = await post(undefined)
  t.equal(over.status, 429, 'the fourth failure from this address')
  t.ok(Number(over.headers['retry-after']) >= 1 && Number(over.headers['retry-after']) <= 60, 'Retry-After')
  t.equal(over.headers['www-authenticate'], undefined, 'no challenge: the address must wait, not retry with a token')
  t.match(JSON.parse(over.text), { error: { code: -32029, message: /failed authentications from this client address \(3 per window\)/ } })
  t.equal((await post(good)).status, 429, 'until the window ends the address is refused before its token is read, valid or not')
  t.equal(up.received.length, n, 'nothing forwarded')
  t.match(g.audit.at(-1), { outcome: 'deny', status: 429 })
})

t.test('the header of the gateway\'s own inner requests, sent by a client: a failed authentication that spends the address budget', async t => {
  const g = await startGateway({
    issuer,
    upstreams: { rec: { url: up.url, auth: { type: 'none' } } },
    extra: { rateLimit: { max: 100, unauthenticated: { max: 3, timeWindow: '1 minute' } } }
  })
  t.teardown(() => g.close())
  const good = `Bearer ${issuer.sign({ aud: g.resource('rec'), agentId: 'good-bot', sub: 'good-bot' })}`
  const post = async (extra: Record<string, string>): Promise<{ status: number, text: string }> => {
    const res = await request(g.url('rec'), {
      method: 'POST',
      headers: { authorization: good, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...extra },
      body: JSON.stringify(ping(1))
    })
    return { status: res.statusCode, text: await res.body.text() }
  }
  const n = up.received.length
  // Each with a valid token too: the header is not the gateway's, so the request is not let in.
  for (const handle of ['forged', 'A'.repeat(43), 'x-mcp-warden-internal']) {
    const r = await post({ 'x-mcp-warden-internal': handle })
    t.equal(r.status, 401, `a made-up handle (${handle.slice(0, 10)}): 401`)
    t.match(JSON.parse(r.text), { error: { code: -32001, message: /internal request handle is unknown or used/ } })
  }
  const over = await post({})
  t.equal(over.status, 429, 'three made-up handles spent the budget of three: the address waits, valid token or not')
  t.match(JSON.parse(over.text), { error: { code: -32029, message: /failed authentications from this client address \(3 per window\)/ } })
  t.equal((await post({ 'x-mcp-warden-internal': 'another' })).status, 429, 'the header never skips the budget')
  t.equal(up.received.length, n, 'nothing forwarded')
  t.match(g.audit.at(-1), { outcome: 'deny', status: 429 })
})

t.test('the inner-request header on the aggregated /mcp: a failed authentication, never a way around the agent\'s budget', async t => {
  const g = await startGateway({
    issuer,
    upstreams: { rec: { url: up.url, auth: { type: 'none' } } },
    extra: { rateLimit: { max: 3, unauthenticated: { max: 2, timeWindow: '1 minute' } } }
  })
  t.teardown(() => g.close())
  const bearer = `Bearer ${issuer.sign({ aud: `${g.config.publicUrl}/mcp`, agentId: 'agg-bot', sub: 'agg-bot' })}`
  const post = async (extra: Record<string, string>, id: number): Promise<number> => {
    const res = await request(`${g.base}/mcp`, {
      method: 'POST',
      headers: { authorization: bearer, 'content-type': 'application/json', accept: 'application/json, text/event-stream', host: new URL(g.config.publicUrl).host, ...extra },
      body: JSON.stringify(ping(id))
    })
    await res.body.dump()
    return res.statusCode
  }
  const n = up.received.length
  t.equal(await post({ 'x-mcp-warden-internal': 'x' }, 1), 401, 'the header from a client is refused on /mcp too')
  t.equal(await post({ 'x-mcp-warden-internal': 'y' }, 2), 401)
  t.equal(await post({ 'x-mcp-warden-internal': 'z' }, 3), 429, 'and it spends the address budget')
  t.equal(up.received.length, n, 'nothing forwarded')
})

t.test('the aggregated /mcp counts every request against the agent\'s budget', async t => {
  const g = await startGateway({ issuer, upstreams: { rec: { url: up.url, auth: { type: 'none' } } }, extra: { rateLimit: { max: 3 } } })
  t.teardown(() => g.close())
  const bearer = `Bearer ${issuer.sign({ aud: `${g.config.publicUrl}/mcp`, agentId: 'agg-bot2', sub: 'agg-bot2' })}`
  const statuses: number[] = []
  for (let i = 0; i < 5; i++) {
    const res = await request(`${g.base}/mcp`, {
      method: 'POST',
      headers: { authorization: bearer, 'content-type': 'application/json', accept: 'application/json, text/event-stream', host: new URL(g.config.publicUrl).host },
      body: JSON.stringify(ping(i))
    })
    await res.body.dump()
    statuses.push(res.statusCode)
  }
  t.same(statuses, [200, 200, 200, 429, 429], 'three within the budget, then 429')
})

t.test('uploads aborted mid-way spend the agent\'s budget, on server routes and on /mcp', async t => {
  const aborts = (): number => gw.audit.filter(r => r.agentId === 'abort-bot' && r.status === 499).length
  const token = (aud: string): string => `Bearer ${issuer.sign({ aud, agentId: 'abort-bot', sub: 'abort-bot' })}`
  const headers = (aud: string): Record<string, string> => ({ authorization: token(aud), 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' })
  const n = up.received.length
  await abortedUpload(gw.url('rec'), headers(gw.resource('rec')), '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","argu')
  await abortedUpload(gw.url('rec'), headers(gw.resource('rec')), '{"jsonrpc":"2.0","id":2,')
  await abortedUpload(`${gw.base}/mcp`, headers(`${gw.config.publicUrl}/mcp`), '{"jsonrpc":"2.0","id":3,"method":"tools/li')
  await until(() => aborts() === 3)
  await new Promise(resolve => setTimeout(resolve, 100))
  t.equal(up.received.length, n, 'nothing of them forwarded')
  t.equal((await send('abort-bot', ping(4))).status, 200, 'three aborted uploads spent three of four: the fourth request passes')
  const over = await send('abort-bot', ping(5))
  t.equal(over.status, 429, 'and the fifth is over the budget')
  t.match(JSON.parse(over.text), { id: 5, error: { code: -32029, message: /requests of this agent \(4 requests per window\)/ } })
  t.equal(up.received.length, n + 1, 'only the one request within the budget was forwarded')
  for (let i = 0; i < 4; i++) await abortedUpload(gw.url('rec'), headers(gw.resource('rec')), '{"jsonrpc":"2.0",')
  await until(() => aborts() === 7)
  t.equal(up.received.length, n + 1, 'aborted uploads over the budget forward nothing either')
})

t.test('an upload aborted while its token is being verified spends the agent\'s budget once the token is verified', async t => {
  // A JWKS endpoint that answers only when the test lets it: the first verification waits on it.
  let release!: () => void
  const held = new Promise<void>(resolve => { release = resolve })
  let asked!: () => void
  const fetched = new Promise<void>(resolve => { asked = resolve })
  const jwks = createServer((_req, res) => {
    asked()
    void held.then(() => { res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk(issuer)] })) })
  })
  await new Promise<void>(resolve => { jwks.listen(0, '127.0.0.1', resolve) })
  t.teardown(() => { jwks.closeAllConnections(); jwks.close() })
  const g = await startGateway({
    identity: { issuer: issuer.issuer, jwksUri: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`, algorithms: [issuer.alg] },
    upstreams: { rec: { url: up.url, auth: { type: 'none' } } },
    extra: { rateLimit: { max: 1, timeWindow: '1 minute', unauthenticated: { max: 1000 } } }
  })
  t.teardown(() => g.close())
  const headers = { authorization: `Bearer ${issuer.sign({ aud: g.resource('rec'), agentId: 'slow-bot', sub: 'slow-bot' })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
  const n = up.received.length
  const upload = abortedUpload(g.url('rec'), headers, '{"jsonrpc":"2.0","id":1,')
  await fetched
  await upload
  await until(() => g.audit.some(r => r.status === 499))
  t.equal(g.audit.find(r => r.status === 499)?.agentId, null, 'the connection went before the token was verified')
  release()
  await new Promise(resolve => setTimeout(resolve, 200))
  const res = await request(g.url('rec'), { method: 'POST', headers, body: JSON.stringify(ping(2)) })
  await res.body.dump()
  t.equal(res.statusCode, 429, 'the aborted upload spent the budget of one of the agent its token named')
  t.equal(up.received.length, n, 'nothing forwarded')
})

t.test('AddressBudget: IPv6 per /64, IPv4-mapped as IPv4, windows end, memory bounded', async t => {
  t.equal(addressKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64')
  t.equal(addressKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64')
  t.equal(addressKey('2001:0db8::5'), '2001:db8:0:0::/64')
  t.equal(addressKey('::1'), '0:0:0:0::/64')
  t.equal(addressKey('::ffff:10.1.2.3'), '10.1.2.3')
  t.equal(addressKey('10.1.2.3'), '10.1.2.3')
  let now = 0
  const b = new AddressBudget(2, 1000, 3, () => now)
  t.equal(b.fail('2001:db8:1:2::1'), 0)
  t.equal(b.fail('2001:db8:1:2::2'), 0, 'the same /64')
  t.equal(b.blockedFor('2001:db8:1:2::3'), 1, 'the whole /64 waits')
  t.equal(b.blockedFor('2001:db8:1:3::1'), 0, 'another /64 does not')
  now = 1000
  t.equal(b.blockedFor('2001:db8:1:2::3'), 0, 'the window ended')
  for (let i = 0; i < 50; i++) b.fail(`10.0.0.${i}`)
  t.ok(b.size <= 3, 'at most maxAddresses windows are kept')
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
