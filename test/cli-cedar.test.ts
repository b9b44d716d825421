import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { main } from '../lib/cli.js'
import { demoConfig, startDemo, type Demo } from '../lib/demo/index.js'
import { REFERENCE, startWithConfig } from './fixtures/gateway.js'

const ROOT = new URL('../', import.meta.url).pathname
const dir = mkdtempSync(join(tmpdir(), 'mcpw-cli-cedar-'))

async function run (...args: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []
  const err: string[] = []
  const code = await main(['cedar', ...args], { out: l => out.push(l), err: l => err.push(l) })
  return { code, out: out.join('\n'), err: err.join('\n') }
}

let demo: Demo
t.before(async () => { demo = await startDemo({ dataDir: join(dir, 'demo'), port: 0 }) })
t.teardown(async () => { await demo.close() })

t.test('validate: the shipped set, and a broken one', async t => {
  const ok = await run('validate')
  t.equal(ok.code, 0)
  t.match(ok.out, /^ok: 23 policies valid against .*schema\.cedarschema \(version [0-9a-f]{16}\)$/)
  const bad = join(dir, 'bad-policies')
  cpSync(REFERENCE.policies, bad, { recursive: true })
  writeFileSync(join(bad, '99-typo.cedar'), '@id("typo") permit (principal in Mcp::Role::"readonly", action in Mcp::Action::"call_tool", resource) when { resource.sensitivty == "low" };')
  const refused = await run('validate', '--policies', bad)
  t.equal(refused.code, 1)
  t.match(refused.err, /policy "typo": .*sensitivty/)
})

t.test('test: the shipped Cedar tests pass; a wrong expectation fails with the reason', async t => {
  const ok = await run('test')
  t.equal(ok.code, 0)
  t.match(ok.out, /results: 40 passed, 0 failed/)
  t.match(ok.out, /test readwrite: not any tool in business hours \(payment_process\) \.\.\. ok/)
  const cases = JSON.parse(readFileSync(join(ROOT, 'cedar/tests/roles.json'), 'utf8')) as Array<{ decision: string, reason: string[] }>
  cases[0]!.decision = 'deny'
  cases[1]!.reason = ['no-such-policy']
  const file = join(dir, 'wrong.json')
  writeFileSync(file, JSON.stringify(cases))
  const failed = await run('test', file)
  t.equal(failed.code, 1)
  t.match(failed.out, /fail: expected deny, got allow/)
  t.match(failed.out, /fail: missing reason\(s\): `no-such-policy`/)
  t.match(failed.out, /results: \d+ passed, 2 failed/)
  writeFileSync(file, '{"not": "an array"}')
  const malformed = await run('test', file)
  t.equal(malformed.code, 2)
  t.match(malformed.err, /a test file is a JSON array/)
})

t.test('explain: the decision, the determining policies and their advice', async t => {
  const token = demo.token({ agentId: 'writer-bot', roles: ['readwrite'], department: 'engineering' })
  const night = await run('explain', '--data-dir', demo.dataDir, '--token', token, '--server', 'file', '--tool', 'file_write', '--at', '2026-11-26T23:00:00+09:00')
  t.equal(night.code, 3, 'exit 3 on a deny')
  t.match(night.out, /^decision: deny$/m)
  t.match(night.out, /request: Mcp::Agent::"writer-bot" call_tool Mcp::Tool::"file\/file_write"/)
  t.match(night.out, /context: 2026-11-26T14:00:00\.000Z = 23h, weekday 4 in Asia\/Seoul/)
  t.match(night.out, /determining policies: readwrite-writes-outside-business-hours/)
  t.match(night.out, /advice: write tools are available to role readwrite only during business hours/)
  const day = await run('explain', '--data-dir', demo.dataDir, '--token', token, '--server', 'file', '--tool', 'file_write', '--at', '2026-11-26T10:00:00+09:00', '--json')
  t.equal(day.code, 0)
  t.match(JSON.parse(day.out), { outcome: 'allow', policies: ['readwrite-write-tools-in-business-hours'] })
  const none = await run('explain', '--data-dir', demo.dataDir, '--token', token, '--server', 'db', '--tool', 'database_drop')
  t.match(none.out, /advice: database_drop needs the approval of a super_admin of platform-ops/)
  t.notMatch(none.out, /approval: the call waits/, 'writer-bot may not call it even approved: no approval is offered')
  const ops = demo.token({ agentId: 'ops-bot', userId: 'frank', roles: ['super_admin'], department: 'platform-ops' })
  const waits = await run('explain', '--data-dir', demo.dataDir, '--token', ops, '--server', 'db', '--tool', 'database_drop', '--at', '2026-11-26T10:00:00+09:00')
  t.equal(waits.code, 3)
  t.match(waits.out, /approval: the call waits for a person \(a super_admin of platform-ops other than the caller's user\)/)
  const forged = await run('explain', '--data-dir', demo.dataDir, '--token', token.slice(0, -4) + 'AAAA', '--server', 'db', '--tool', 'database_query')
  t.equal(forged.code, 1)
  t.match(forged.err, /Invalid token/)
  const missing = await run('explain', '--data-dir', demo.dataDir, '--server', 'db')
  t.equal(missing.code, 2)
  t.match(missing.err, /needs --token and --server/)
})

t.test('format: --check and --write', async t => {
  t.equal((await run('format', '--check')).code, 0, 'the shipped policies are formatted')
  const file = join(dir, 'messy.cedar')
  writeFileSync(file, '@id("x") permit(principal,action,resource) when {context.localHour>=9};')
  const check = await run('format', '--check', file)
  t.equal(check.code, 1)
  t.match(check.out, /messy\.cedar: not formatted/)
  t.equal((await run('format', '--write', file)).code, 0)
  t.match(readFileSync(file, 'utf8'), /^@id\("x"\)\npermit \(principal, action, resource\)\nwhen \{ context\.localHour >= 9 \};\n$/)
  t.equal((await run('format', '--check', file)).code, 0)
})

t.test('schema: per-tool actions from the upstreams, then argument-level policies enforced by the gateway', async t => {
  const configFile = join(dir, 'demo.json')
  writeFileSync(configFile, JSON.stringify({
    identity: { issuer: demo.config.identity.issuer, publicKeyFile: join(demo.dataDir, 'demo-issuer.pub.pem'), algorithms: ['EdDSA'] },
    authorization: { schema: REFERENCE.schema, policies: REFERENCE.policies },
    tokens: { keysDir: join(demo.dataDir, 'keys') },
    publicUrl: demo.config.publicUrl,
    upstreams: { db: { url: demo.upstreams.db.url }, file: { url: demo.upstreams.file.url }, api: { url: demo.upstreams.api.url } }
  }))
  // The demo servers check ephemeral tokens against the gateway's JWKS, so the gateway runs
  // while the schema is generated, as in production; then it reloads the new schema and policies.
  const schemaFile = join(dir, 'live.cedarschema')
  const policies = join(dir, 'with-arguments')
  cpSync(REFERENCE.schema, schemaFile)
  cpSync(REFERENCE.policies, policies, { recursive: true })
  const gw = await startWithConfig(demoConfig({
    dataDir: demo.dataDir,
    port: demo.config.listen.port,
    urls: { db: demo.upstreams.db.url, file: demo.upstreams.file.url, api: demo.upstreams.api.url },
    overrides: { authorization: { schema: schemaFile, policies, watch: false } }
  }))
  t.teardown(async () => { await gw.close() })

  const gen = await run('schema', '--config', configFile, '--out', schemaFile)
  t.equal(gen.code, 0, gen.err)
  t.match(gen.out, /db \(3 tools\), file \(2 tools\), api \(4 tools\)/)
  const schema = readFileSync(schemaFile, 'utf8')
  t.match(schema, /action "file\/file_read" in \[Action::"call_tool"\]/)
  t.match(schema, /arguments\?: \{\s+path: __cedar::String\s+\}/)

  cpSync(join(ROOT, 'cedar/examples/arguments.cedar'), join(policies, '40-arguments.cedar'))
  t.equal((await run('validate', '--schema', schemaFile, '--policies', policies)).code, 0, 'the example policies validate against the generated schema')
  t.equal((await run('validate', '--policies', policies)).code, 1, 'and not against the base schema')
  t.match(await gw.app.mcpWarden.cedar.reload(), { ok: true }, 'the running gateway takes the new schema and policies')

  const token = demo.token({ agentId: 'reader-bot', roles: ['readonly'], department: 'analytics' })
  const connect = async (server: string) => {
    const c = new Client({ name: 'args', version: '1' })
    await c.connect(new StreamableHTTPClientTransport(new URL(gw.url(server)), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
    t.teardown(async () => { await c.close() })
    return c
  }
  const files = await connect('file')
  t.match(await files.callTool({ name: 'file_read', arguments: { path: 'data/report.csv' } }), { content: [{ text: /month,revenue/ }] })
  let hits = 0
  demo.upstreams.file.server.on('request', () => { hits++ })
  await t.rejects(files.callTool({ name: 'file_read', arguments: { path: 'README.txt' } }), { code: -32003, message: /file_read may read only files under data\// })
  await t.rejects(files.callTool({ name: 'file_read', arguments: { path: 'data/../demo-issuer.key.pem' } }), { code: -32003 })
  t.equal(hits, 0, 'refused calls reach no upstream')
  const db = await connect('db')
  await t.rejects(db.callTool({ name: 'database_query', arguments: { sql: 'DELETE FROM customers' } }), { code: -32003, message: /SELECT statement only/ })
  await t.rejects(db.callTool({ name: 'database_query', arguments: { sql: 'SELECT 1; DROP TABLE customers' } }), { code: -32003 })
  t.match(await db.callTool({ name: 'database_query', arguments: { sql: 'SELECT count(*) AS n FROM customers' } }), { content: [{ text: /"n": 3/ }] })
  t.same((await db.listTools()).tools.map(x => x.name), ['database_query'], 'argument rules hide no tool: readonly still sees database_query')
})
