/**
 * Replicas: two gateway processes (`mcp-warden start --config`), one config, one real
 * redis-server, no sticky routing. The client alternates between them within one session.
 */
import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { z } from 'zod'
import { Redis } from 'ioredis'
import { ensureKeys, KeyRing } from '../lib/tokens/keys.js'
import { createUpstreamVerifier, checkNodeRequest, RedisReplayStore, type UpstreamVerifierOptions } from '../lib/upstream.js'
import { serveMcp, type ServedMcp } from '../lib/demo/serve.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL } from './fixtures/gateway.js'
import { readyz, redisAvailable, startRedis, type RedisServer } from './fixtures/redis.js'
import { startReplica, type Replica } from './fixtures/replica.js'

if (!redisAvailable()) throw new Error('these tests need redis-server on the PATH (apt-get install -y redis-server)')

const PUBLIC_URL = 'http://gateway.test:8080'
const ECHO_RESOURCE = 'http://echo.internal/mcp'
const issuer = makeIssuer('EdDSA')
const dir = mkdtempSync(join(tmpdir(), 'mcpw-replicas-'))
const keysDir = join(dir, 'keys')
// Replicas share the signing keys: created once, before any replica starts.
ensureKeys(keysDir)

interface Upstream { served: ServedMcp, received: Array<{ authorization: string, raw: string, body: unknown }>, refused: Array<{ status: number, code: string }>, replayConn: Redis }

/** An upstream replica that verifies the gateway's tokens, with the jti replay cache in Redis. */
async function startUpstream (redisUrl: string): Promise<Upstream> {
  const replayConn = new Redis(redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 0 })
  await new Promise(resolve => replayConn.once('ready', resolve))
  const verifier = createUpstreamVerifier({
    issuer: PUBLIC_URL,
    audience: ECHO_RESOURCE,
    jwks: new KeyRing(keysDir, 60).jwks() as NonNullable<UpstreamVerifierOptions['jwks']>,
    replay: new RedisReplayStore(replayConn, 'upstream:')
  })
  const received: Upstream['received'] = []
  const refused: Upstream['refused'] = []
  const served = await serveMcp(() => {
    const s = new McpServer({ name: 'echo', version: '1.0.0' })
    s.registerTool('echo', { description: 'Echo the text back.', inputSchema: { text: z.string() } }, async ({ text }) => ({ content: [{ type: 'text', text }] }))
    s.registerTool('pay', { description: 'Make a payment.', inputSchema: { cents: z.number().int() } }, async ({ cents }) => ({ content: [{ type: 'text', text: `paid ${cents}` }] }))
    return s
  }, {
    guard: async (req, body, raw) => {
      const refusal = await checkNodeRequest(verifier, req, body)
      if (refusal !== undefined) { refused.push({ status: refusal.status, code: refusal.code }); return refusal }
      received.push({ authorization: req.headers.authorization ?? '', raw: raw.toString('utf8'), body })
      return undefined
    }
  })
  return { served, received, refused, replayConn }
}

/** Resolves once an ioredis connection has reconnected (ready), failing after 10 s. */
async function connectionReady (conn: Redis): Promise<void> {
  if (conn.status === 'ready') return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`upstream Redis connection still ${conn.status} after 10 s`)) }, 10_000)
    conn.once('ready', () => { clearTimeout(timer); resolve() })
  })
}

let redis: RedisServer
let up1: Upstream
let up2: Upstream
let a: Replica
let b: Replica

t.before(async () => {
  redis = await startRedis()
  up1 = await startUpstream(redis.url)
  up2 = await startUpstream(redis.url)
  const pub = join(dir, 'issuer.pub.pem')
  writeFileSync(pub, issuer.publicKeyPem)
  const configFile = join(dir, 'gateway.json')
  writeFileSync(configFile, JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    publicUrl: PUBLIC_URL,
    identity: { issuer: issuer.issuer, publicKeyFile: pub, algorithms: ['EdDSA'] },
    authorization: ALLOW_ALL,
    tokens: { keysDir },
    toolScan: { pins: join(dir, 'pins-unused.json') },
    upstreams: { echo: { url: up1.served.url, resource: ECHO_RESOURCE, tools: { echo: { sensitivity: 'low' }, pay: { sensitivity: 'high' } } } },
    rateLimit: { max: 1000, timeWindow: '1 minute', tools: { pay: { max: 3, timeWindow: '1 minute' } } },
    store: redis.url,
    logLevel: 'warn'
  }))
  ;[a, b] = await Promise.all([startReplica('A', configFile), startReplica('B', configFile)])
})

t.teardown(async () => {
  await Promise.allSettled([a?.close(), b?.close()])
  for (const u of [up1, up2]) { await u?.served.close(); u?.replayConn.disconnect() }
  await redis?.close()
})

const aud = `${PUBLIC_URL}/servers/echo/mcp`
const alice = issuer.sign({ aud, agentId: 'alice-bot', sub: 'alice-bot' })
const mallory = issuer.sign({ aud, agentId: 'mallory-bot', sub: 'mallory-bot' })

/** A client whose every HTTP request goes to the next replica in turn. */
function alternatingClient (token: string, replicas: Replica[]): { client: Client, transport: StreamableHTTPClientTransport, served: string[] } {
  let i = 0
  const served: string[] = []
  const transport = new StreamableHTTPClientTransport(new URL(replicas[0]!.url('echo')), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
    fetch: async (input, init) => {
      const r = replicas[i++ % replicas.length]!
      served.push(r.name)
      const url = new URL(String(input instanceof Request ? input.url : input))
      return await fetch(`${r.base}${url.pathname}${url.search}`, init)
    }
  })
  return { client: new Client({ name: 'replica-test', version: '1.0.0' }), transport, served }
}

const post = async (replica: Replica, token: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, unknown>, json: any }> => {
  const res = await request(replica.url('echo'), {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers },
    body: JSON.stringify(body)
  })
  const text = await res.body.text()
  const data = text.startsWith('event:') || text.startsWith('data:') ? JSON.parse(text.split('\n').find(l => l.startsWith('data:'))!.slice(5)) : text === '' ? null : JSON.parse(text)
  return { status: res.statusCode, headers: res.headers, json: data }
}

t.test('one session, served alternately by both replicas', async t => {
  const { client, transport, served } = alternatingClient(alice, [a, b])
  await client.connect(transport)
  t.teardown(async () => { await client.close() })
  const sid = transport.sessionId!
  t.type(sid, 'string')
  const tools = await client.listTools()
  t.same(tools.tools.map(x => x.name).sort(), ['echo', 'pay'])
  for (let i = 0; i < 4; i++) {
    const r = await client.callTool({ name: 'echo', arguments: { text: `hello ${i}` } })
    t.same(r.content, [{ type: 'text', text: `hello ${i}` }])
  }
  t.ok(served.includes('A') && served.includes('B'), `both replicas served the session (${served.join(',')})`)
  const sessionsSeen = new Set(up1.served.sessions.keys())
  t.ok(sessionsSeen.has(sid), 'the upstream knows one session, the one the client holds')
  const calls = up1.received.filter(r => (r.body as { method?: string } | undefined)?.method === 'tools/call')
  t.ok(calls.length >= 4)
  t.ok(a.audit.some(r => r.method === 'tools/call' && r.outcome === 'allow') && b.audit.some(r => r.method === 'tools/call' && r.outcome === 'allow'), 'both replicas audited calls')
})

t.test('session hijack is refused by every replica, and nothing is forwarded', async t => {
  const { client, transport } = alternatingClient(alice, [a])
  await client.connect(transport)
  t.teardown(async () => { await client.close() })
  const sid = transport.sessionId!
  for (const r of [a, b]) {
    const res = await post(r, mallory, { jsonrpc: '2.0', id: 9, method: 'tools/call', params: { name: 'echo', arguments: { text: 'stolen' } } }, { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' })
    t.equal(res.status, 404, `replica ${r.name}: another principal's session does not exist`)
    t.equal(res.json.error.code, -32001)
  }
  t.notOk(up1.received.some(x => x.raw.includes('stolen')), 'nothing reached the upstream')
  // The owner still uses it from the other replica.
  const res = await post(b, alice, { jsonrpc: '2.0', id: 10, method: 'tools/call', params: { name: 'echo', arguments: { text: 'mine' } } }, { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' })
  t.equal(res.status, 200)
  t.same(res.json.result.content, [{ type: 'text', text: 'mine' }])
})

t.test('a per-tool rate limit is shared by the replicas: 429, Retry-After, JSON-RPC error, audited, nothing forwarded', async t => {
  const { client, transport } = alternatingClient(alice, [a, b])
  await client.connect(transport)
  t.teardown(async () => { await client.close() })
  const sid = transport.sessionId!
  const call = (r: Replica, id: number): ReturnType<typeof post> => post(r, alice, { jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'pay', arguments: { cents: id } } }, { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' })
  t.equal((await call(a, 1)).status, 200)
  t.equal((await call(b, 2)).status, 200)
  t.equal((await call(a, 3)).status, 200)
  const over = await call(b, 4)
  t.equal(over.status, 429, 'the fourth call in the window is refused by the other replica')
  const retry = Number(over.headers['retry-after'])
  t.ok(retry >= 1 && retry <= 60, `Retry-After: ${String(over.headers['retry-after'])}`)
  t.equal(over.json.id, 4)
  t.equal(over.json.error.code, -32029)
  t.match(over.json.error.message, /Rate limit exceeded: calls of tool pay by this agent/)
  t.notOk(up1.received.some(x => x.raw.includes('"cents":4')), 'nothing forwarded')
  await new Promise(resolve => setTimeout(resolve, 300))
  t.match(b.audit.at(-1), { method: 'tools/call', tool: 'pay', outcome: 'deny', status: 429, reason: /Rate limit exceeded/ })
  t.equal((await call(a, 5)).status, 429, 'and by the first replica too')
  t.equal((await post(a, alice, { jsonrpc: '2.0', id: 6, method: 'tools/call', params: { name: 'echo', arguments: { text: 'still fine' } } }, { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' })).status, 200, 'other tools are not limited by it')
  const bob = issuer.sign({ aud, agentId: 'bob-bot', sub: 'bob-bot' })
  const bobClient = alternatingClient(bob, [b])
  await bobClient.client.connect(bobClient.transport)
  t.teardown(async () => { await bobClient.client.close() })
  const r = await bobClient.client.callTool({ name: 'pay', arguments: { cents: 7 } })
  t.same(r.content, [{ type: 'text', text: 'paid 7' }], 'another agent has its own limit')
})

t.test('an ephemeral token replayed to any upstream replica is refused', async t => {
  const { client, transport } = alternatingClient(alice, [a, b])
  await client.connect(transport)
  t.teardown(async () => { await client.close() })
  await client.callTool({ name: 'echo', arguments: { text: 'once' } })
  const used = up1.received.filter(r => (r.body as { method?: string } | undefined)?.method === 'tools/call').at(-1)!
  for (const target of [up2, up1]) {
    const res = await request(target.served.url, { method: 'POST', headers: { authorization: used.authorization, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: used.raw })
    await res.body.dump()
    t.equal(res.statusCode, 401)
    t.equal(target.refused.at(-1)?.code, 'replay')
  }
  t.notOk(up2.received.some(r => r.raw === used.raw), 'the replayed call never ran on the second replica')
})

t.test('Redis killed mid-run: 503 with a JSON-RPC error on every replica, nothing forwarded, then recovery', async t => {
  const { client, transport } = alternatingClient(alice, [a, b])
  await client.connect(transport)
  const sid = transport.sessionId!
  await redis.stop()
  for (const r of [a, b]) {
    const ready = await readyz(r.base, 503)
    t.equal(ready.status, 503, `replica ${r.name} is not ready`)
    t.match(ready.body, { status: 'unavailable', store: { kind: 'redis', available: false } })
    const res = await post(r, alice, { jsonrpc: '2.0', id: 20, method: 'tools/call', params: { name: 'echo', arguments: { text: 'while down' } } }, { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' })
    t.equal(res.status, 503)
    t.equal(res.json.id, null)
    t.equal(res.json.error.code, -32014)
    t.match(res.json.error.message, /shared store is unreachable; the request was not forwarded/)
    const fresh = await post(r, alice, { jsonrpc: '2.0', id: 21, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } })
    t.equal(fresh.status, 503, 'a new session cannot start either')
  }
  t.notOk(up1.received.some(x => x.raw.includes('while down')), 'nothing was forwarded while Redis was down')
  await client.close().catch(() => {})

  await redis.start()
  for (const r of [a, b]) t.equal((await readyz(r.base, 200)).status, 200, `replica ${r.name} is ready again without a restart`)
  // The upstreams' own Redis connections reconnect on their own schedule; the gateway being
  // ready says nothing about them, so wait for them before calling through.
  for (const u of [up1, up2]) await connectionReady(u.replayConn)
  // This Redis kept nothing (no persistence): the old session's binding is gone, so the
  // session is refused, never guessed. A new session works on both replicas.
  const old = await post(a, alice, { jsonrpc: '2.0', id: 22, method: 'tools/list' }, { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' })
  t.equal(old.status, 404)
  const again = alternatingClient(alice, [b, a])
  await again.client.connect(again.transport)
  t.teardown(async () => { await again.client.close() })
  const r = await again.client.callTool({ name: 'echo', arguments: { text: 'back' } })
  t.same(r.content, [{ type: 'text', text: 'back' }])
})
