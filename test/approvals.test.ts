/**
 * Human approval of one exact call (DESIGN §11), end to end: the demo's real MCP servers behind
 * a real gateway with the reference policies, the real SDK client, approvers on the JSON API.
 */
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { ElicitationCompleteNotificationSchema } from '@modelcontextprotocol/sdk/types.js'
import { demoConfig, DEMO_ISSUER, startDemo, type Demo } from '../lib/demo/index.js'
import { loadOrCreateIssuerKey, signAgentToken } from '../lib/dev-tokens.js'
import { REFERENCE, startWithConfig, type TestGateway } from './fixtures/gateway.js'
import { inBusinessHours } from './fixtures/time.js'
import { refused } from './fixtures/refused.js'

let demo: Demo
/** POSTs each demo upstream received. */
const hits: Record<string, number> = { db: 0, file: 0, api: 0 }
/** GET streams each demo upstream was asked for. */
const streams: Record<string, number> = { db: 0, file: 0, api: 0 }

t.before(async () => {
  demo = await startDemo({ dataDir: mkdtempSync(join(tmpdir(), 'mcpw-approvals-')), port: 0 })
  for (const name of ['db', 'file', 'api'] as const) {
    demo.upstreams[name].server.on('request', (req) => {
      if (req.method === 'POST') hits[name]!++
      if (req.method === 'GET') streams[name]!++
    })
  }
})
t.teardown(async () => { await demo.close() })

async function gateway (overrides: Record<string, unknown> = {}): Promise<TestGateway> {
  return await startWithConfig(demoConfig({
    dataDir: demo.dataDir,
    port: demo.config.listen.port,
    urls: { db: demo.upstreams.db.url, file: demo.upstreams.file.url, api: demo.upstreams.api.url },
    overrides: { authorization: { ...REFERENCE, timezone: inBusinessHours() }, ...overrides }
  }))
}

const OPS = { agentId: 'ops-bot', userId: 'frank', roles: ['super_admin'], department: 'platform-ops' }
const GRACE = { userId: 'grace', roles: ['super_admin'], department: 'platform-ops' }
const FRANK = { userId: 'frank', roles: ['super_admin'], department: 'platform-ops' }
const HEIDI = { userId: 'heidi', roles: ['approver'], department: 'finance' }

async function connect (gw: TestGateway, server: string, token: string, capabilities: Record<string, unknown> = {}): Promise<Client> {
  const client = new Client({ name: 'approvals-test', version: '1' }, { capabilities })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url(server)), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
  return client
}

/** An approver's call of the approvals API. */
async function api (gw: TestGateway, method: 'GET' | 'POST', path: string, token: string, body?: unknown): Promise<{ status: number, json: any }> {
  const res = await request(`${gw.base}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {})
  })
  return { status: res.statusCode, json: await res.body.json() }
}

t.test('a client without URL elicitation: -32003 with the approval, nothing forwarded; approved, the identical call runs once', async t => {
  const gw = await gateway()
  t.teardown(async () => { await gw.close() })
  const client = await connect(gw, 'api', demo.token(OPS))
  t.teardown(async () => { await client.close() })

  const listed = (await client.listTools()).tools.map(x => x.name)
  t.ok(listed.includes('user_delete'), 'a tool that needs approval is listed: the agent can ask for it')

  const before = hits.api!
  const args = { userId: 'u-300' }
  const e = await refused(client.callTool({ name: 'user_delete', arguments: args }))
  t.equal(e.code, -32003)
  t.match(e.message, /Approval required: user_delete needs the approval of a super_admin of platform-ops/)
  const data = e.data as { approvalId: string, approvalUrl: string, expiresAt: string, policies: string[] }
  t.match(data.approvalId, /^[A-Za-z0-9_-]{22}$/)
  t.equal(data.approvalUrl, `${gw.config.publicUrl}/approvals/${data.approvalId}`)
  t.ok(Date.parse(data.expiresAt) > Date.now(), 'it expires in the future')
  t.same(data.policies, ['admin-tool-user-delete'])
  t.equal(hits.api, before, 'nothing was forwarded')

  const again = await refused(client.callTool({ name: 'user_delete', arguments: args }))
  t.equal((again.data as { approvalId: string }).approvalId, data.approvalId, 'asked again while it waits: the same approval')
  t.equal(hits.api, before, 'still nothing forwarded')

  // Approvers: the caller's own user, another department, then the right person.
  const self = await api(gw, 'POST', `/approvals/${data.approvalId}`, demo.approverToken(FRANK), { decision: 'approve' })
  t.equal(self.status, 403, 'nobody approves a call made for their own user')
  t.match(self.json.message, /own user/)
  const finance = await api(gw, 'POST', `/approvals/${data.approvalId}`, demo.approverToken(HEIDI), { decision: 'approve' })
  t.equal(finance.status, 403, 'finance may not approve user_delete')
  t.equal(hits.api, before)
  const shown = await api(gw, 'GET', `/approvals/${data.approvalId}`, demo.approverToken(GRACE))
  t.equal(shown.status, 200)
  t.equal(shown.json.approval.tool, 'user_delete')
  t.same(JSON.parse(shown.json.approval.arguments), args, 'the approver sees exactly the arguments')
  t.equal(shown.json.approval.agentId, 'ops-bot')
  const approved = await api(gw, 'POST', `/approvals/${data.approvalId}`, demo.approverToken(GRACE), { decision: 'approve', reason: 'ticket OPS-1' })
  t.equal(approved.status, 200)
  t.equal(approved.json.approval.status, 'approved')

  const ran = await client.callTool({ name: 'user_delete', arguments: args })
  t.notOk(ran.isError, 'the approved call ran')
  t.ok(hits.api! > before, 'forwarded')
  t.equal(gw.audit.filter(r => r.tool === 'user_delete' && r.upstreamTokenId !== undefined).length, 1, 'forwarded exactly once')
  const afterRun = hits.api!
  const record = gw.audit.find(r => r.tool === 'user_delete' && r.outcome === 'allow' && r.event === undefined)
  t.equal(record?.approvalId, data.approvalId, 'the call\'s audit record names the approval')
  t.equal(record?.approver, 'grace', 'and the approver')

  const second = await refused(client.callTool({ name: 'user_delete', arguments: args }))
  t.equal(second.code, -32003, 'a second retry needs a new approval')
  t.not((second.data as { approvalId: string }).approvalId, data.approvalId)
  t.equal(hits.api, afterRun, 'the second retry was not forwarded')

  const refusals = gw.audit.filter(r => r.event === 'approval' && r.status === 403)
  t.same(refusals.map(r => r.approver).sort(), ['frank', 'heidi'], 'each refused approver is audited')
  t.ok(gw.audit.some(r => r.event === 'approval' && r.method === 'approvals/approve' && r.outcome === 'allow' && r.approver === 'grace' && r.reason.includes('OPS-1')), 'the approval is audited with its reason')
})

t.test('an approval is bound to the exact call: other arguments, another agent, a denial or an expiry each need a new approval', async t => {
  const gw = await gateway({ approvals: { ttlSeconds: 5 } })
  t.teardown(async () => { await gw.close() })
  const client = await connect(gw, 'api', demo.token(OPS))
  const other = await connect(gw, 'api', demo.token({ ...OPS, agentId: 'ops-bot-2' }))
  t.teardown(async () => { await client.close(); await other.close() })
  const grace = demo.approverToken(GRACE)
  const before = hits.api!

  const first = ((await refused(client.callTool({ name: 'config_override', arguments: { key: 'mode', value: 'safe' } }))).data as { approvalId: string }).approvalId
  t.equal((await api(gw, 'POST', `/approvals/${first}`, grace, { decision: 'approve' })).status, 200)

  const changed = await refused(client.callTool({ name: 'config_override', arguments: { key: 'mode', value: 'unsafe' } }))
  t.equal(changed.code, -32003, 'changed arguments: not approved')
  t.not((changed.data as { approvalId: string }).approvalId, first)
  const otherAgent = await refused(other.callTool({ name: 'config_override', arguments: { key: 'mode', value: 'safe' } }))
  t.equal(otherAgent.code, -32003, 'another agent with the same call: not approved')
  t.not((otherAgent.data as { approvalId: string }).approvalId, first)
  t.equal(hits.api, before, 'nothing forwarded')

  // A denied approval: the call is refused, and asking again starts a new approval.
  const denyMe = ((await refused(client.callTool({ name: 'config_override', arguments: { key: 'x', value: '1' } }))).data as { approvalId: string }).approvalId
  t.equal((await api(gw, 'POST', `/approvals/${denyMe}`, grace, { decision: 'deny', reason: 'no' })).status, 200)
  const afterDeny = await refused(client.callTool({ name: 'config_override', arguments: { key: 'x', value: '1' } }))
  t.not((afterDeny.data as { approvalId: string }).approvalId, denyMe, 'denied: a new approval is asked for')
  t.equal((await api(gw, 'POST', `/approvals/${denyMe}`, grace, { decision: 'approve' })).status, 404, 'a denied approval cannot be approved after all')

  // Every id that is not a pending approval gets the same neutral answer.
  const neutral = await Promise.all(['AAAAAAAAAAAAAAAAAAAAAA', 'not-an-id', denyMe].map(async id => await api(gw, 'GET', `/approvals/${id}`, grace)))
  t.same(neutral.map(n => n.status), [404, 404, 404])
  t.equal(new Set(neutral.map(n => n.json.message)).size, 1, 'unknown, malformed and denied ids read the same')

  // Expiry: an approved call not retried within approvals.ttlSeconds needs a new approval.
  await new Promise(resolve => setTimeout(resolve, 5200))
  const expired = await refused(client.callTool({ name: 'config_override', arguments: { key: 'mode', value: 'safe' } }))
  t.equal(expired.code, -32003, 'the approval expired: refused')
  t.not((expired.data as { approvalId: string }).approvalId, first)
  t.equal((await api(gw, 'GET', `/approvals/${first}`, grace)).status, 404, 'an expired approval reads like an unknown one')
  t.equal(hits.api, before, 'nothing was forwarded in all of this')
  // Each refused call is audited with the approval it now waits for.
  for (const [what, e] of [['changed arguments', changed], ['another agent', otherAgent], ['after a denial', afterDeny], ['expired', expired]] as const) {
    const id = (e.data as { approvalId: string }).approvalId
    t.ok(gw.audit.some(r => r.method === 'tools/call' && r.outcome === 'deny' && r.approvalId === id && r.reason.startsWith('approval required')), `${what}: audited`)
  }
  t.ok(gw.audit.some(r => r.event === 'approval' && r.method === 'approvals/deny' && r.approvalId === denyMe && r.approver === 'grace'), 'the denial is audited')
})

t.test('a client that declared URL elicitation gets -32042 and notifications/elicitation/complete on its session', async t => {
  const gw = await gateway()
  t.teardown(async () => { await gw.close() })
  const streamsBefore = streams.db!
  const client = await connect(gw, 'db', demo.token(OPS), { elicitation: { url: {} } })
  t.teardown(async () => { await client.close() })
  const completed: string[] = []
  let resolveCompleted: () => void = () => {}
  const completion = new Promise<void>(resolve => { resolveCompleted = resolve })
  client.setNotificationHandler(ElicitationCompleteNotificationSchema, async (n) => { completed.push(n.params.elicitationId); resolveCompleted() })
  // The SDK opens its GET stream after initialize: wait until it reached the server through the gateway.
  const until = Date.now() + 10_000
  while (streams.db === streamsBefore && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 20))
  await new Promise(resolve => setTimeout(resolve, 300))

  const before = hits.db!
  const args = { table: 'audit_tmp' }
  const e = await refused(client.callTool({ name: 'database_drop', arguments: args }))
  t.equal(e.code, -32042, 'URL elicitation required')
  const elicitations = (e.data as { elicitations: Array<{ mode: string, elicitationId: string, url: string, message: string }> }).elicitations
  t.equal(elicitations.length, 1)
  t.equal(elicitations[0]!.mode, 'url')
  t.equal(elicitations[0]!.url, `${gw.config.publicUrl}/approvals/${elicitations[0]!.elicitationId}`)
  t.equal(hits.db, before, 'nothing forwarded')

  t.equal((await api(gw, 'POST', `/approvals/${elicitations[0]!.elicitationId}`, demo.approverToken(GRACE), { decision: 'approve' })).status, 200)
  await Promise.race([completion, new Promise((_resolve, reject) => setTimeout(() => { reject(new Error('no notifications/elicitation/complete within 5 s')) }, 5000))])
  t.same(completed, [elicitations[0]!.elicitationId], 'the session was told the elicitation is complete')
  const ran = await client.callTool({ name: 'database_drop', arguments: args })
  t.ok(ran.content, 'the approved call ran')
  t.ok(hits.db! > before, 'forwarded')
  t.equal(gw.audit.filter(r => r.tool === 'database_drop' && r.upstreamTokenId !== undefined).length, 1, 'once')
})

t.test('argument level: a small payment needs nobody; a large one needs finance, and never the payer\'s own user', async t => {
  const gw = await gateway()
  t.teardown(async () => { await gw.close() })
  const payer = { agentId: 'payments-bot', userId: 'erin', roles: ['payment_admin'], department: 'finance' }
  const client = await connect(gw, 'api', demo.token(payer))
  t.teardown(async () => { await client.close() })
  const before = hits.api!
  const small = await client.callTool({ name: 'payment_process', arguments: { amount: 10, currency: 'EUR', recipient: 'acme' } })
  t.notOk(small.isError, 'a payment of 10 runs at once')
  t.ok(hits.api! > before)
  const forwarded = (): number => gw.audit.filter(r => r.tool === 'payment_process' && r.upstreamTokenId !== undefined).length
  t.equal(forwarded(), 1)
  const beforeLarge = hits.api!
  const large = await refused(client.callTool({ name: 'payment_process', arguments: { amount: 5000, currency: 'EUR', recipient: 'acme' } }))
  t.equal(large.code, -32003)
  t.same((large.data as { policies: string[] }).policies, ['large-payment-needs-finance'])
  const id = (large.data as { approvalId: string }).approvalId
  t.equal((await api(gw, 'POST', `/approvals/${id}`, demo.approverToken({ userId: 'erin', roles: ['approver'], department: 'finance' }), { decision: 'approve' })).status, 403, 'the payer\'s own user may not approve it')
  t.equal((await api(gw, 'POST', `/approvals/${id}`, demo.approverToken(GRACE), { decision: 'approve' })).status, 403, 'platform-ops does not approve payments')
  t.equal((await api(gw, 'POST', `/approvals/${id}`, demo.approverToken(HEIDI), { decision: 'approve' })).status, 200)
  t.equal(hits.api, beforeLarge, 'nothing forwarded while it waited')
  const ran = await client.callTool({ name: 'payment_process', arguments: { amount: 5000, currency: 'EUR', recipient: 'acme' } })
  t.notOk(ran.isError)
  t.equal(forwarded(), 2)
})

t.test('through the aggregated endpoint /mcp as well', async t => {
  const gw = await gateway()
  t.teardown(async () => { await gw.close() })
  const client = new Client({ name: 'approvals-aggregate', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(`${gw.base}/mcp`), { requestInit: { headers: { authorization: `Bearer ${demo.token(OPS)}` } } }))
  t.teardown(async () => { await client.close() })
  const e = await refused(client.callTool({ name: 'api__user_delete', arguments: { userId: 'u-301' } }))
  t.equal(e.code, -32003)
  const id = (e.data as { approvalId: string }).approvalId
  t.match(id, /^[A-Za-z0-9_-]{22}$/)
  t.equal(gw.audit.filter(r => r.tool === 'user_delete' && r.upstreamTokenId !== undefined).length, 0, 'nothing forwarded (the aggregate opened its upstream session, no more)')
  t.equal((await api(gw, 'POST', `/approvals/${id}`, demo.approverToken(GRACE), { decision: 'approve' })).status, 200)
  const ran = await client.callTool({ name: 'api__user_delete', arguments: { userId: 'u-301' } })
  t.ok(Array.isArray(ran.content), 'the upstream answered the call')
  t.equal(gw.audit.filter(r => r.tool === 'user_delete' && r.upstreamTokenId !== undefined).length, 1, 'forwarded once')
})

t.test('approval requests per agent are rate limited; a call already waiting is not counted again', async t => {
  const gw = await gateway({ approvals: { rateLimit: { max: 2, timeWindow: '1 minute' } } })
  t.teardown(async () => { await gw.close() })
  const client = await connect(gw, 'api', demo.token(OPS))
  t.teardown(async () => { await client.close() })
  const before = hits.api!
  for (const key of ['a', 'b', 'a', 'b']) t.equal((await refused(client.callTool({ name: 'config_override', arguments: { key, value: '1' } }))).code, -32003)
  const limited = await request(gw.url('api'), {
    method: 'POST',
    headers: { authorization: `Bearer ${demo.token(OPS)}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'config_override', arguments: { key: 'c', value: '1' } } })
  })
  t.equal(limited.statusCode, 429)
  t.ok(Number(limited.headers['retry-after']) > 0, 'Retry-After says when')
  const body = await limited.body.json() as { error: { code: number, message: string } }
  t.equal(body.error.code, -32029)
  t.match(body.error.message, /approvals\.rateLimit/)
  t.equal(hits.api, before, 'nothing forwarded')
})

/** A token of the demo issuer with any claims (an identity provider that signs what it is told). */
function signed (claims: Record<string, unknown>, audience: string | string[]): string {
  return signAgentToken(loadOrCreateIssuerKey(demo.dataDir).privateKeyPem, { issuer: DEMO_ISSUER, audience, agentId: String(claims.agentId ?? 'someone'), claims })
}

t.test('no approving yourself: not as the calling agent, not under another spelling of your user id, not with a token that is also an agent token', async t => {
  const gw = await gateway()
  t.teardown(async () => { await gw.close() })
  const approvals = gw.config.approvals.approverAudience
  const apiRoute = gw.resource('api')
  // An agent acting for no user, whose identity provider also lets it approve.
  const solo = { agentId: 'solo-bot', roles: ['super_admin'], department: 'platform-ops' }
  const client = await connect(gw, 'api', demo.token(solo))
  t.teardown(async () => { await client.close() })
  const id = ((await refused(client.callTool({ name: 'config_override', arguments: { key: 'solo', value: '1' } }))).data as { approvalId: string }).approvalId
  const both = signed({ ...solo, sub: 'solo-bot' }, [apiRoute, approvals])
  const dual = await api(gw, 'POST', `/approvals/${id}`, both, { decision: 'approve' })
  t.equal(dual.status, 401, 'a token that is also an agent token is never an approver token')
  t.match(dual.json.message, /also an agent token/)
  const asAgent = await api(gw, 'POST', `/approvals/${id}`, signed({ ...solo, sub: 'solo-bot' }, approvals), { decision: 'approve' })
  t.equal(asAgent.status, 403, 'the calling agent\'s own id may not approve')
  t.match(asAgent.json.message, /own agent identity/)

  // frank's call; approvers that are frank under other spellings.
  const frankCall = await connect(gw, 'api', demo.token(OPS))
  t.teardown(async () => { await frankCall.close() })
  const fid = ((await refused(frankCall.callTool({ name: 'config_override', arguments: { key: 'frank', value: '1' } }))).data as { approvalId: string }).approvalId
  for (const spelling of ['Frank', 'frank ', 'ｆｒａｎｋ', 'fr\u200bank']) {
    const r = await api(gw, 'POST', `/approvals/${fid}`, signed({ userId: spelling, agentId: 'p', sub: 'p', roles: ['super_admin'], department: 'platform-ops' }, approvals), { decision: 'approve' })
    t.equal(r.status, 403, `userId ${JSON.stringify(spelling)} is frank`)
  }
  const bySub = await api(gw, 'POST', `/approvals/${fid}`, signed({ sub: 'frank', agentId: 'frank', roles: ['super_admin'], department: 'platform-ops' }, approvals), { decision: 'approve' })
  t.equal(bySub.status, 403, 'frank without a userId claim (sub only) is frank too')
  const array = await api(gw, 'POST', `/approvals/${fid}`, signed({ userId: ['frank'], sub: 'x-user', agentId: 'x-user', roles: ['super_admin'], department: 'platform-ops' }, approvals), { decision: 'approve' })
  t.equal(array.status, 401, 'a userId claim that is not a string is refused')
  t.equal(gw.audit.filter(r => r.tool === 'config_override' && r.upstreamTokenId !== undefined).length, 0, 'nothing ran')
})

t.test('an approver reads only what they may decide: the list is filtered and a refused view shows no arguments', async t => {
  const gw = await gateway()
  t.teardown(async () => { await gw.close() })
  const client = await connect(gw, 'api', demo.token(OPS))
  t.teardown(async () => { await client.close() })
  const secret = { key: 'payments.api_key', value: 'sk_live_SECRET_VALUE' }
  const id = ((await refused(client.callTool({ name: 'config_override', arguments: secret }))).data as { approvalId: string }).approvalId
  const nobody = signed({ userId: 'nobody', sub: 'nobody', agentId: 'nobody' }, gw.config.approvals.approverAudience)
  const list = await api(gw, 'GET', '/approvals', nobody)
  t.equal(list.status, 200)
  t.same(list.json.approvals, [], 'an approver without rights sees nothing waiting')
  const heidi = await api(gw, 'GET', `/approvals/${id}`, demo.approverToken(HEIDI))
  t.equal(heidi.status, 403)
  t.notOk(JSON.stringify(heidi.json).includes('sk_live'), 'a refused view carries no arguments')
  const grace = await api(gw, 'GET', '/approvals', demo.approverToken(GRACE))
  t.ok(grace.json.approvals.some((x: { id: string }) => x.id === id), 'the right approver sees it')
  const raw = await request(`${gw.base}/approvals`, { headers: { authorization: `Bearer ${demo.approverToken(GRACE)}` } })
  t.equal(raw.headers['cache-control'], 'no-store', 'JSON answers are not cached either')
  await raw.body.dump()
})

t.test('argument level: an amount with more than 4 decimals is refused, never rounded under the threshold', async t => {
  const gw = await gateway()
  t.teardown(async () => { await gw.close() })
  const client = await connect(gw, 'api', demo.token({ agentId: 'payments-bot', userId: 'erin', roles: ['payment_admin'], department: 'finance' }))
  t.teardown(async () => { await client.close() })
  const e = await refused(client.callTool({ name: 'payment_process', arguments: { amount: 1000.00004, currency: 'EUR', recipient: 'acme' } }))
  t.equal(e.code, -32003)
  t.match(e.message, /at most 4 decimal places/)
  t.equal(gw.audit.filter(r => r.tool === 'payment_process' && r.upstreamTokenId !== undefined).length, 0)
})
