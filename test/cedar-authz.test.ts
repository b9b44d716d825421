import { cpSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { McpError } from '@modelcontextprotocol/sdk/types.js'
import { demoConfig, DEMO_AGENTS, startDemo, type Demo } from '../lib/demo/index.js'
import { ALLOW_ALL, REFERENCE, startGateway, withGateway, startWithConfig, type TestGateway } from './fixtures/gateway.js'
import { makeIssuer } from './fixtures/keys.js'
import { startRecordingUpstream } from './fixtures/upstream.js'
import { atNight, inBusinessHours } from './fixtures/time.js'

let demo: Demo
/** Requests each demo upstream received. */
const hits: Record<string, number> = { db: 0, file: 0, api: 0 }

t.before(async () => {
  demo = await startDemo({ dataDir: mkdtempSync(join(tmpdir(), 'mcpw-cedar-e2e-')), port: 0 })
  for (const name of ['db', 'file', 'api'] as const) demo.upstreams[name].server.on('request', (req) => { if (req.method === 'POST') hits[name]!++ })
})
t.teardown(async () => { await demo.close() })

async function gatewayAt (timezone: string): Promise<TestGateway> {
  const config = demoConfig({
    dataDir: demo.dataDir,
    port: demo.config.listen.port,
    urls: { db: demo.upstreams.db.url, file: demo.upstreams.file.url, api: demo.upstreams.api.url },
    overrides: { authorization: { ...REFERENCE, timezone } }
  })
  return await startWithConfig(config)
}

const ARGS: Record<string, [string, Record<string, unknown>]> = {
  database_query: ['db', { sql: 'SELECT count(*) AS n FROM customers' }],
  database_insert: ['db', { table: 'orders', values: { customer_id: 1, amount: 1, status: 'test' } }],
  database_drop: ['db', { table: 'no_such_table' }],
  file_read: ['file', { path: 'data/report.csv' }],
  file_write: ['file', { path: 'data/out.txt', content: 'x' }],
  metrics_fetch: ['api', { service: 'search' }],
  payment_process: ['api', { amount: 1, currency: 'EUR', recipient: 'acme' }],
  user_delete: ['api', { userId: 'u-300' }],
  config_override: ['api', { key: 'k', value: 'v' }]
}

/** What each demo role may call under the reference policies. */
const EXPECTED: Record<'day' | 'night', Record<string, string[]>> = {
  day: {
    readonly: ['database_query', 'file_read', 'metrics_fetch'],
    readwrite: ['database_insert', 'database_query', 'file_read', 'file_write', 'metrics_fetch'],
    analyst: ['database_query'],
    engineer: ['database_insert', 'database_query'],
    payment_admin: ['payment_process'],
    super_admin: []
  },
  night: {
    readonly: ['database_query', 'file_read', 'metrics_fetch'],
    readwrite: ['database_query', 'file_read', 'metrics_fetch'],
    analyst: ['database_query'],
    engineer: ['database_insert', 'database_query'],
    payment_admin: [],
    super_admin: []
  }
}

/** What waits for a person's approval (listed, -32003 with an approval id, not forwarded). */
const NEEDS_APPROVAL: Record<'day' | 'night', Record<string, string[]>> = {
  day: { super_admin: ['config_override', 'database_drop', 'user_delete'] },
  night: {}
}

async function connect (gw: TestGateway, server: string, token: string): Promise<Client> {
  const client = new Client({ name: 'cedar-e2e', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url(server)), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
  return client
}

for (const period of ['day', 'night'] as const) {
  t.test(`the reference policies through the gateway with the real SDK client (${period})`, async t => {
    const gw = await gatewayAt(period === 'day' ? inBusinessHours() : atNight())
    t.teardown(async () => { await gw.close() })
    for (const agent of DEMO_AGENTS) {
      const token = demo.token({ agentId: agent.agentId, userId: agent.userId, roles: [agent.role], department: agent.department })
      const clients: Record<string, Client> = {}
      for (const server of ['db', 'file', 'api']) clients[server] = await connect(gw, server, token)
      const allowed: string[] = []
      const waiting: string[] = []
      for (const [tool, [server, args]] of Object.entries(ARGS)) {
        const before = hits[server]!
        try {
          await clients[server]!.callTool({ name: tool, arguments: args })
          allowed.push(tool)
          t.ok(hits[server]! > before, `${agent.role} ${tool}: forwarded`)
        } catch (err) {
          if (NEEDS_APPROVAL[period][agent.role]?.includes(tool) === true) {
            t.match(err, { code: -32003, data: { approvalId: /^[A-Za-z0-9_-]{22}$/ } }, `${agent.role} ${tool}: waits for approval`)
            t.equal(hits[server], before, `${agent.role} ${tool}: nothing forwarded`)
            waiting.push(tool)
            continue
          }
          // No reference policy depends on arguments: a denied tool is hidden, and answered
          // exactly like a tool that does not exist.
          t.type(err, McpError, `${agent.role} ${tool}: a JSON-RPC error`)
          const e = err as McpError
          t.equal(e.code, -32602, `${agent.role} ${tool}: -32602`)
          t.equal(e.message, `MCP error -32602: Unknown tool: ${tool}`)
          t.equal(e.data, undefined, 'no decision data that would tell it apart')
          t.equal(hits[server], before, `${agent.role} ${tool}: nothing forwarded`)
        }
      }
      t.same(allowed.sort(), EXPECTED[period][agent.role], `${agent.role} may call exactly ${EXPECTED[period][agent.role]!.join(', ') || 'nothing'}`)
      // One source of truth: what an agent sees listed is exactly what it may call.
      const listed: string[] = []
      for (const c of Object.values(clients)) listed.push(...(await c.listTools()).tools.map(x => x.name))
      t.same(waiting.sort(), NEEDS_APPROVAL[period][agent.role] ?? [], `${agent.role}: exactly these wait for approval`)
      t.same(listed.sort(), [...allowed, ...waiting].sort(), `${agent.role}: the listed tools are the callable ones and the ones a person may approve`)
      for (const c of Object.values(clients)) await c.close()
    }
    const denial = gw.audit.find(r => r.outcome === 'deny' && r.tool === 'database_drop' && r.agentId === 'reader-bot')!
    t.match(denial, { decisionId: /^[0-9a-f-]{36}$/, policies: ['admin-tool-database-drop'], reason: 'hidden: database_drop needs the approval of a super_admin of platform-ops', status: 200 }, 'the audit says why')
    const allowedRecord = gw.audit.find(r => r.outcome === 'allow' && r.tool === 'database_query')!
    t.match(allowedRecord, { policies: Array, policyVersion: /^[0-9a-f]{16}$/ })
  })
}

t.test('super_admin of platform-ops: user_delete is listed and waits for a person in business hours; at night it is hidden', async t => {
  const day = await gatewayAt(inBusinessHours())
  const ops = demo.token({ agentId: 'ops-bot', userId: 'frank', roles: ['super_admin'], department: 'platform-ops' })
  const client = await connect(day, 'api', ops)
  t.ok((await client.listTools()).tools.some(x => x.name === 'user_delete'), 'listed: the agent can ask for an approval')
  const before = hits.api!
  const err = await client.callTool({ name: 'user_delete', arguments: { userId: 'u-100' } }).then(() => null, (e: McpError) => e)
  t.equal(err?.code, -32003)
  t.match(err?.message, /Approval required: user_delete needs the approval of a super_admin of platform-ops/)
  t.equal(hits.api, before, 'nothing forwarded')
  t.match(day.audit.at(-1), { outcome: 'deny', policies: ['admin-tool-user-delete'], approvalId: /^[A-Za-z0-9_-]{22}$/ })
  // A token scope no longer approves anything: approval is per call, by a person.
  const scoped = await connect(day, 'api', demo.token({ agentId: 'ops-bot', userId: 'frank', roles: ['super_admin'], department: 'platform-ops', scope: 'approved:user_delete' }))
  const beforeScoped = hits.api!
  await t.rejects(scoped.callTool({ name: 'user_delete', arguments: { userId: 'u-100' } }), { code: -32003 }, 'the old approved:<tool> scope grants nothing')
  t.equal(hits.api, beforeScoped)
  await client.close()
  await scoped.close()
  await day.close()

  const night = await gatewayAt(atNight())
  t.teardown(async () => { await night.close() })
  const late = await connect(night, 'api', ops)
  t.teardown(async () => { await late.close() })
  const beforeNight = hits.api!
  await t.rejects(late.callTool({ name: 'user_delete', arguments: { userId: 'u-100' } }), { code: -32602 }, 'at night the business-hours forbid hides it: no approval can lift that')
  t.equal(hits.api, beforeNight)
  t.notOk((await late.listTools()).tools.some(x => x.name === 'user_delete'), 'and it is not listed')
})

t.test('reload: a bad policy set is refused and the old one stays; a good one replaces it (watch and SIGHUP)', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-reload-'))
  cpSync(ALLOW_ALL.policies, dir, { recursive: true })
  const issuer = makeIssuer('EdDSA')
  const up = await startRecordingUpstream()
  const gw = await withGateway(t, { issuer, upstreams: { echo: { url: up.url } }, extra: { authorization: { schema: ALLOW_ALL.schema, policies: dir, watch: true } } }, up)
  const token = issuer.sign({ aud: gw.resource('echo') })
  const ping = async () => {
    const res = await request(gw.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }) })
    const text = await res.body.text()
    return text.includes('-32003') ? 'deny' : res.statusCode === 200 ? 'allow' : `status ${res.statusCode}`
  }
  const v1 = gw.app.mcpWarden.cedar.version
  t.equal(await ping(), 'allow')

  writeFileSync(join(dir, 'broken.cedar'), '@id("broken") forbid (principal, action, resource) when { resource.nope };')
  const refused = await gw.app.mcpWarden.cedar.reload()
  t.match(refused, { ok: false, error: /nope/, version: v1 })
  t.equal(gw.app.mcpWarden.cedar.version, v1, 'the old set stays')
  t.equal(await ping(), 'allow')
  t.ok(gw.log.some(l => l.includes('Cedar policy set refused') && l.includes('nope')), 'the refusal is logged with the validator\'s message')

  writeFileSync(join(dir, 'broken.cedar'), '@id("no-initialize") @advice("initialize is closed for maintenance") forbid (principal, action == Mcp::Action::"connect", resource) when { context.method == "initialize" };')
  for (let i = 0; i < 100 && gw.app.mcpWarden.cedar.version === v1; i++) await new Promise(resolve => setTimeout(resolve, 30))
  t.not(gw.app.mcpWarden.cedar.version, v1, 'the file watch reloaded the new set')
  t.equal(await ping(), 'deny')
  t.equal(gw.audit.at(-1)?.policyVersion, gw.app.mcpWarden.cedar.version, 'the audit names the new version')

  const v2 = gw.app.mcpWarden.cedar.version
  const { rmSync } = await import('node:fs')
  rmSync(join(dir, 'broken.cedar'))
  process.emit('SIGHUP')
  for (let i = 0; i < 100 && gw.app.mcpWarden.cedar.version === v2; i++) await new Promise(resolve => setTimeout(resolve, 30))
  t.equal(gw.app.mcpWarden.cedar.version, v1, 'SIGHUP (or the watch) restored the first set')
  t.equal(await ping(), 'allow')
})

t.test('a refused GET stream is 403 with the JSON-RPC error; a boot with a bad policy set fails naming the field', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-get-'))
  writeFileSync(join(dir, 'p.cedar'), '@id("all") permit (principal, action, resource);\n@id("no-get") forbid (principal, action == Mcp::Action::"connect", resource) when { context.method == "GET" };')
  const issuer = makeIssuer('EdDSA')
  const up = await startRecordingUpstream()
  const gw = await withGateway(t, { issuer, upstreams: { echo: { url: up.url } }, extra: { authorization: { schema: ALLOW_ALL.schema, policies: dir, watch: false } } }, up)
  const n = up.received.length
  const res = await request(gw.url('echo'), { headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('echo') })}`, accept: 'text/event-stream' } })
  t.equal(res.statusCode, 403)
  t.match(await res.body.json(), { error: { code: -32003, message: 'Access denied: forbidden by no-get', data: { policies: ['no-get'] } } })
  t.equal(up.received.length, n)

  writeFileSync(join(dir, 'p.cedar'), '@id("bad") permit (principal, action, resource) when { principal.nope };')
  await t.rejects(startGateway({ issuer, upstreams: { echo: { url: up.url } }, extra: { authorization: { schema: ALLOW_ALL.schema, policies: dir, watch: false } } }),
    { code: 'MCPW_ERR_CONFIG_INVALID', message: /authorization\.policies: the policy set is not valid: policy "bad"/ })
})

t.test('resources/read and prompts/get are decided on Mcp::Resource and Mcp::Prompt', async t => {
  const gw = await gatewayAt(inBusinessHours())
  t.teardown(async () => { await gw.close() })
  const token = demo.token({ agentId: 'reader-bot', roles: ['readonly'], department: 'analytics' })
  const before = hits.db
  for (const [method, params, reason] of [
    ['resources/read', { uri: 'sqlite://customers' }, 'no policy permits read resource sqlite://customers of db'],
    ['resources/subscribe', { uri: 'sqlite://orders' }, 'no policy permits read resource sqlite://orders of db'],
    ['prompts/get', { name: 'summarise' }, 'no policy permits get prompt summarise of db']
  ] as const) {
    const res = await request(gw.url('db'), { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 5, method, params }) })
    t.equal(res.statusCode, 200)
    t.match(await res.body.json(), { id: 5, error: { code: -32003, message: `Access denied: ${reason}` } }, method)
  }
  t.equal(hits.db, before, 'nothing forwarded')
  t.match(gw.audit.at(-1), { method: 'prompts/get', prompt: 'summarise', outcome: 'deny' })
})
