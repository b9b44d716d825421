import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { startOAuthServer, type OAuthServer } from './fixtures/oauth-server.js'

const issuer = makeIssuer('ES256')
let up: RecordingUpstream
let as: OAuthServer
let gw: TestGateway
const dir = mkdtempSync(join(tmpdir(), 'mcpw-exchange-'))

t.before(async () => {
  up = await startRecordingUpstream()
  as = await startOAuthServer(issuer, ['banned-bot'])
  process.env.MCPW_TEST_CLIENT_SECRET = as.clientSecret
  writeFileSync(join(dir, 'client.key.pem'), as.clientKeyPem)
  gw = await startGateway({
    issuer,
    upstreams: {
      basic: { url: up.url, resource: 'https://basic.internal/mcp', auth: { type: 'exchange', tokenEndpoint: as.tokenEndpoint, clientId: 'gateway', clientSecret: 'env:MCPW_TEST_CLIENT_SECRET' } },
      pkj: { url: up.url, resource: 'https://pkj.internal/mcp', auth: { type: 'exchange', tokenEndpoint: as.tokenEndpoint, clientId: 'gateway-pkj', clientAuth: 'private_key_jwt', privateKeyFile: join(dir, 'client.key.pem'), scope: 'tool:{tool}' } },
      down: { url: up.url, auth: { type: 'exchange', tokenEndpoint: 'http://127.0.0.1:9/token', clientId: 'gateway', clientSecret: 'env:MCPW_TEST_CLIENT_SECRET', timeoutSeconds: 1 } }
    }
  })
})
t.teardown(async () => { await gw.close(); await up.close(); await as.close() })

const send = async (server: string, agent: string, body: unknown, session?: string) => {
  const res = await request(gw.url(server), {
    method: 'POST',
    headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource(server), sub: agent, agentId: agent })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(session !== undefined ? { 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' } : {}) },
    body: JSON.stringify(body)
  })
  const text = await res.body.text()
  return { status: res.statusCode, text, session: res.headers['mcp-session-id'] as string | undefined }
}
// An agent's session with an upstream, opened as a client does: initialize, initialized, tools/list.
const sessions = new Map<string, string | undefined>()
const open = async (server: string, agent: string) => {
  const key = `${server}\n${agent}`
  if (!sessions.has(key)) {
    const init = await send(server, agent, { jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } })
    if (init.session !== undefined) {
      await send(server, agent, { jsonrpc: '2.0', method: 'notifications/initialized' }, init.session)
      await send(server, agent, { jsonrpc: '2.0', id: 'list', method: 'tools/list' }, init.session)
    }
    sessions.set(key, init.session)
  }
}
const post = async (server: string, agent: string, body: unknown) => {
  const key = `${server}\n${agent}`
  await open(server, agent)
  return await send(server, agent, body, sessions.get(key))
}
const call = (tool: string, id = 1) => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: tool, arguments: { text: 'x' } } })

t.test('client_secret_basic: the upstream gets the authorization server\'s token for it, cached per principal and scope', async t => {
  await open('basic', 'bot-1')
  await open('basic', 'bot-2')
  const before = as.exchanges.length
  const n = up.received.length
  await post('basic', 'bot-1', call('echo'))
  const got = up.received.at(-1)!
  t.equal(up.received.length, n + 1, 'forwarded')
  const token = String(got.headers.authorization).replace('Bearer ', '')
  const claims = await as.verify(token, 'https://basic.internal/mcp')
  t.match(claims, { iss: as.issuer, sub: 'bot-1', aud: 'https://basic.internal/mcp', scope: 'tool:echo', client_id: 'gateway' }, 'a token of the authorization server, for this upstream and scope')
  t.equal(as.exchanges.length, before + 1)

  await post('basic', 'bot-1', call('echo', 2))
  t.equal(as.exchanges.length, before + 1, 'the second call of the same tool reuses the cached token')
  t.equal(up.received.at(-1)!.headers.authorization, got.headers.authorization)
  await post('basic', 'bot-1', call('count', 3))
  t.equal(as.exchanges.length, before + 2, 'another scope, another exchange')
  await post('basic', 'bot-2', call('echo', 4))
  t.equal(as.exchanges.length, before + 3, 'another principal, another exchange')
  for (const r of up.received.slice(n)) {
    const payload = JSON.parse(Buffer.from(String(r.headers.authorization).split('.')[1]!, 'base64url').toString()) as { iss: string }
    t.equal(payload.iss, as.issuer, 'every forwarded token is the authorization server\'s, never the agent\'s')
  }
})

t.test('private_key_jwt and a scope template', async t => {
  await post('pkj', 'bot-3', call('echo'))
  const claims = await as.verify(String(up.received.at(-1)!.headers.authorization).replace('Bearer ', ''), 'https://pkj.internal/mcp')
  t.match(claims, { sub: 'bot-3', scope: 'tool:echo', client_id: 'gateway-pkj' })
})

t.test('the authorization server says invalid_grant: access denied, nothing forwarded', async t => {
  const n = up.received.length
  const r = await post('basic', 'banned-bot', call('echo'))
  t.equal(r.status, 200)
  t.match(JSON.parse(r.text), { error: { code: -32003, message: /Access denied: .*refused to exchange the agent's token \(invalid_grant\)/ } })
  t.equal(up.received.length, n)
  t.match(gw.audit.at(-1), { outcome: 'deny', agentId: 'banned-bot' })
})

t.test('the authorization server down: 503, nothing forwarded (fail closed)', async t => {
  const n = up.received.length
  const r = await post('down', 'bot-1', call('echo'))
  t.equal(r.status, 503)
  t.match(JSON.parse(r.text), { error: { code: -32014, message: /could not obtain a credential for MCP server "down"/ } })
  t.equal(up.received.length, n)
  t.match(gw.audit.at(-1), { outcome: 'error', status: 503 })
})

t.test('with store: redis://…, replicas share the exchanged tokens', async t => {
  const { startRedis } = await import('./fixtures/redis.js')
  const redis = await startRedis()
  const auth = { type: 'exchange', tokenEndpoint: as.tokenEndpoint, clientId: 'gateway', clientSecret: 'env:MCPW_TEST_CLIENT_SECRET' }
  const replicas = [
    await startGateway({ issuer, upstreams: { shared: { url: up.url, resource: 'https://shared.internal/mcp', auth } }, extra: { store: redis.url } }),
    await startGateway({ issuer, upstreams: { shared: { url: up.url, resource: 'https://shared.internal/mcp', auth } }, extra: { store: redis.url } })
  ]
  t.teardown(async () => { for (const r of replicas) await r.close(); await redis.close() })
  for (const r of replicas) await r.app.mcpWarden.store.ready()
  // One session, opened through the first replica; the second replica serves the same session.
  const sendTo = async (g: TestGateway, body: unknown, session?: string): Promise<{ status: number, session: string | undefined }> => {
    const res = await request(g.url('shared'), {
      method: 'POST',
      headers: { authorization: `Bearer ${issuer.sign({ aud: g.resource('shared'), sub: 'bot-r', agentId: 'bot-r' })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(session !== undefined ? { 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' } : {}) },
      body: JSON.stringify(body)
    })
    await res.body.dump()
    return { status: res.statusCode, session: res.headers['mcp-session-id'] as string | undefined }
  }
  const { session } = await sendTo(replicas[0]!, { jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } })
  await sendTo(replicas[0]!, { jsonrpc: '2.0', method: 'notifications/initialized' }, session)
  for (const r of replicas) t.equal((await sendTo(r, { jsonrpc: '2.0', id: 'l', method: 'tools/list' }, session)).status, 200, 'the session lists its tools on each replica')
  const before = as.exchanges.length
  const n = up.received.length
  t.equal((await sendTo(replicas[0]!, call('echo', 1), session)).status, 200)
  t.equal(as.exchanges.length, before + 1, 'the first replica exchanged')
  t.equal((await sendTo(replicas[1]!, call('echo', 2), session)).status, 200)
  t.same(up.received.slice(n).map(r => (r.body as { method?: string }).method), ['tools/call', 'tools/call'], 'both calls were forwarded')
  t.equal(as.exchanges.length, before + 1, 'the second replica used the token the first one stored')
  t.equal(up.received.at(-1)!.headers.authorization, up.received.at(-2)!.headers.authorization)
})
