/**
 * Approvals across replicas: two gateways on one real redis-server (shared signing keys, no
 * sticky routing). An approval asked for on one replica is shown and approved on the other, the
 * identical call runs once whichever replica it reaches, and the session on the first replica
 * hears notifications/elicitation/complete. The approvals webhook is signed.
 */
import { mkdtempSync } from 'node:fs'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { ElicitationCompleteNotificationSchema } from '@modelcontextprotocol/sdk/types.js'
import { ensureKeys } from '../lib/tokens/keys.js'
import { SIGNATURE_HEADER, TIMESTAMP_HEADER, verifyWebhook } from '../lib/approvals/webhook.js'
import { PUBLIC_URL, startGateway, type TestGateway } from './fixtures/gateway.js'
import { makeIssuer } from './fixtures/keys.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { redisAvailable, startRedis, type RedisServer } from './fixtures/redis.js'

if (!redisAvailable()) throw new Error('these tests need redis-server on the PATH (apt-get install -y redis-server)')

const POLICIES = { schema: new URL('../cedar/schema.cedarschema', import.meta.url).pathname, policies: new URL('./fixtures/cedar/needs-approval', import.meta.url).pathname, watch: false }
const issuer = makeIssuer('EdDSA')
const keysDir = join(mkdtempSync(join(tmpdir(), 'mcpw-approval-replicas-')), 'keys')
ensureKeys(keysDir)
const SECRET = 'webhook-secret-5e1d'
process.env.MCPW_TEST_APPROVAL_WEBHOOK = SECRET

interface Hook { headers: IncomingMessage['headers'], body: string }
let redis: RedisServer
let up: RecordingUpstream
let a: TestGateway
let b: TestGateway
const hooks: Hook[] = []
const hookServer = createServer((req, res) => {
  let body = ''
  req.on('data', (c: Buffer) => { body += c.toString('utf8') })
  req.on('end', () => { hooks.push({ headers: req.headers, body }); res.writeHead(204).end() })
})

t.before(async () => {
  redis = await startRedis()
  up = await startRecordingUpstream()
  await new Promise<void>(resolve => hookServer.listen(0, '127.0.0.1', resolve))
  const hookUrl = `http://127.0.0.1:${(hookServer.address() as AddressInfo).port}/hooks/approvals`
  const extra = (notify: boolean): Record<string, unknown> => ({
    authorization: POLICIES,
    store: redis.url,
    tokens: { keysDir },
    approvals: notify ? { notify: { url: hookUrl, secret: 'env:MCPW_TEST_APPROVAL_WEBHOOK' } } : {}
  })
  a = await startGateway({ issuer, upstreams: { echo: { url: up.url } }, extra: extra(true) })
  b = await startGateway({ issuer, upstreams: { echo: { url: up.url } }, extra: extra(false) })
})
t.teardown(async () => {
  await a.close()
  await b.close()
  await up.close()
  hookServer.close()
  await redis.close()
})

const agent = (): string => issuer.sign({ aud: a.resource('echo'), agentId: 'echo-bot', sub: 'echo-bot', userId: 'ursula' })
const approver = (): string => issuer.sign({ aud: `${PUBLIC_URL}/approvals`, sub: 'grace', agentId: 'grace', userId: 'grace', roles: ['approver'] })
const echoes = (): number => up.methods().filter(m => m === 'tools/call').length

/** One MCP session of the agent, opened on A; its binding is in Redis, so B serves it too. */
let session: string | undefined
async function post (gw: TestGateway, message: Record<string, unknown>): Promise<{ status: number, headers: Record<string, unknown>, text: string }> {
  const res = await request(gw.url('echo'), {
    method: 'POST',
    headers: { authorization: `Bearer ${agent()}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18', ...(session !== undefined ? { 'mcp-session-id': session } : {}) },
    body: JSON.stringify(message)
  })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}
async function call (gw: TestGateway, text: string, id = 1): Promise<Record<string, any>> {
  if (session === undefined) {
    const init = await post(a, { jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } })
    session = init.headers['mcp-session-id'] as string
    await post(a, { jsonrpc: '2.0', method: 'notifications/initialized' })
  }
  const raw = (await post(gw, { jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'echo', arguments: { text } } })).text
  const line = raw.split('\n').find(l => l.startsWith('data: '))
  return JSON.parse(line !== undefined ? line.slice(6) : raw) as Record<string, any>
}

async function api (gw: TestGateway, method: 'GET' | 'POST', id: string, body?: unknown): Promise<{ status: number, json: any }> {
  const res = await request(`${gw.base}/approvals/${id}`, { method, headers: { authorization: `Bearer ${approver()}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) })
  return { status: res.statusCode, json: await res.body.json() }
}

t.test('asked on A, shown and approved on B; two replicas race with the identical retry: it runs once', async t => {
  const before = echoes()
  const asked = await call(a, 'hello replicas')
  t.equal(asked.error?.code, -32003)
  const id = asked.error.data.approvalId as string
  t.equal((await call(b, 'hello replicas')).error?.data?.approvalId, id, 'B gives the same approval for the same call')
  const shown = await api(b, 'GET', id)
  t.equal(shown.status, 200, 'B serves the approval A recorded')
  t.equal(JSON.parse(shown.json.approval.arguments).text, 'hello replicas')
  t.equal((await api(b, 'POST', id, { decision: 'approve' })).status, 200)
  t.equal(echoes(), before, 'nothing forwarded before the retry')

  const [x, y] = await Promise.all([call(a, 'hello replicas', 2), call(b, 'hello replicas', 3)])
  const ran = [x, y].filter(m => m.result !== undefined)
  t.equal(ran.length, 1, 'one replica ran it')
  t.same(ran[0]!.result.content, [{ type: 'text', text: 'hello replicas' }])
  const other = [x, y].find(m => m.error !== undefined)!
  t.equal(other.error.code, -32003, 'the other asks for a new approval')
  t.not(other.error.data.approvalId, id)
  t.equal(echoes(), before + 1, 'forwarded exactly once')
  t.equal((await api(a, 'GET', id)).status, 404, 'used: neutral on A too')
})

t.test('the session on A hears notifications/elicitation/complete when B approves', async t => {
  const client = new Client({ name: 'url-elicitation', version: '1' }, { capabilities: { elicitation: { url: {} } } })
  let heard: (id: string) => void = () => {}
  const completed = new Promise<string>(resolve => { heard = resolve })
  client.setNotificationHandler(ElicitationCompleteNotificationSchema, async (n) => { heard(n.params.elicitationId) })
  const getsBefore = up.received.filter(r => r.method === 'GET').length
  await client.connect(new StreamableHTTPClientTransport(new URL(a.url('echo')), { requestInit: { headers: { authorization: `Bearer ${agent()}` } } }))
  t.teardown(async () => { await client.close() })
  // The client opens its GET stream after initialize: wait until it reached the upstream through A.
  const until = Date.now() + 10_000
  while (up.received.filter(r => r.method === 'GET').length === getsBefore && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 20))
  await new Promise(resolve => setTimeout(resolve, 300))

  const err = await client.callTool({ name: 'echo', arguments: { text: 'over the stream' } }).then(() => null, (e: { code: number, data: any }) => e)
  t.equal(err?.code, -32042)
  const id = err!.data.elicitations[0].elicitationId as string
  t.equal((await api(b, 'POST', id, { decision: 'approve' })).status, 200)
  const got = await Promise.race([completed, new Promise<string>((_resolve, reject) => setTimeout(() => { reject(new Error('no notification within 5 s')) }, 5000))])
  t.equal(got, id, 'approved on B, told on A\'s stream')
  const ran = await client.callTool({ name: 'echo', arguments: { text: 'over the stream' } })
  t.same(ran.content, [{ type: 'text', text: 'over the stream' }])
})

t.test('the approvals webhook: one signed notification per request and per decision, verifiable, without the arguments', async t => {
  const start = hooks.length
  const asked = await call(a, 'webhook please')
  const id = asked.error.data.approvalId as string
  t.equal((await api(b, 'POST', id, { decision: 'deny', reason: 'not today' })).status, 200)
  const deadline = Date.now() + 5000
  while (hooks.filter(h => h.body.includes(id)).length < 1 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50))
  const mine = hooks.slice(start).filter(h => h.body.includes(id))
  t.equal(mine.length, 1, 'A told of the request; B has no webhook configured, so its decision is not sent')
  const hook = mine[0]!
  const headers = { signature: hook.headers[SIGNATURE_HEADER] as string, timestamp: hook.headers[TIMESTAMP_HEADER] as string }
  t.ok(verifyWebhook(SECRET, headers, hook.body), 'the signature verifies with the shared secret')
  t.notOk(verifyWebhook('another-secret', headers, hook.body), 'not with another secret')
  t.notOk(verifyWebhook(SECRET, headers, hook.body.replace('echo-bot', 'evil-bot')), 'not for an edited body')
  t.notOk(verifyWebhook(SECRET, { ...headers, timestamp: String(Number(headers.timestamp) - 3600) }, hook.body), 'not an old timestamp (replay)')
  const body = JSON.parse(hook.body)
  t.equal(body.event, 'approval.requested')
  t.match(body.approval, { id, url: `${PUBLIC_URL}/approvals/${id}`, server: 'echo', tool: 'echo', agentId: 'echo-bot', userId: 'ursula', status: 'pending' })
  t.notOk(hook.body.includes('webhook please'), 'the arguments stay on the page, not in the notification')

  // A decision on A is sent too.
  const second = (await call(a, 'decided on A')).error.data.approvalId as string
  t.equal((await api(a, 'POST', second, { decision: 'approve' })).status, 200)
  const until = Date.now() + 5000
  while (!hooks.some(h => h.body.includes(second) && h.body.includes('approval.decided')) && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 50))
  const decided = hooks.find(h => h.body.includes(second) && h.body.includes('approval.decided'))
  t.ok(decided, 'the decision is notified')
  t.match(JSON.parse(decided!.body).approval, { id: second, status: 'approved', approver: 'grace' })
})
