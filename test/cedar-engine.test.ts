import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { CedarEngine, compilePolicySet, readPolicySource, ENGINE_ERROR_REASON, type AuthzRequest } from '../lib/cedar/engine.js'
import { schemaWithToolActions } from '../lib/cedar/schema-gen.js'
import { localTime } from '../lib/cedar/time.js'
import { validateConfig, type UpstreamConfig } from '../lib/config.js'
import { identityFromClaims } from '../lib/identity.js'
import { REFERENCE, ALLOW_ALL } from './fixtures/gateway.js'
import { zoneWhereHourIs } from './fixtures/time.js'

const config = validateConfig({
  identity: { issuer: 'https://idp.test', jwksUri: 'https://idp.test/jwks' },
  authorization: ALLOW_ALL,
  upstreams: {
    db: { url: 'http://127.0.0.1:1/mcp', tools: { database_query: { sensitivity: 'low', readOnly: true }, database_insert: { sensitivity: 'medium' } } },
    file: { url: 'http://127.0.0.1:2/mcp', tools: { file_read: { sensitivity: 'low', readOnly: true }, file_write: { sensitivity: 'medium' } } }
  }
})
const db = config.upstreams.get('db')!
const file = config.upstreams.get('file')!
const agent = (roles: string[], extra: Record<string, unknown> = {}) => identityFromClaims({ iss: 'https://idp.test', sub: 'bot', roles, department: 'engineering', ...extra }, config.identity)
const reference = compilePolicySet(readPolicySource(REFERENCE.schema, REFERENCE.policies))

function folder (policies: Record<string, string>, schema?: string): { schema: string, policies: string } {
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-cedar-'))
  for (const [name, text] of Object.entries(policies)) writeFileSync(join(dir, name), text)
  const schemaFile = join(dir, 'schema.cedarschema')
  writeFileSync(schemaFile, schema ?? readPolicySource(REFERENCE.schema, REFERENCE.policies).schemaText)
  return { schema: schemaFile, policies: dir }
}
const compile = (f: { schema: string, policies: string }) => compilePolicySet(readPolicySource(f.schema, f.policies))
/** A tools/call request now; the engine's time zone decides the local hour. */
const call = (server: UpstreamConfig, tool: string, roles: string[]): AuthzRequest =>
  ({ identity: agent(roles), server, action: 'call_tool', method: 'tools/call', tool })

t.test('the reference policy set compiles with its @id names and advice', async t => {
  t.equal(reference.policyIds.length, 23)
  t.ok(reference.policyIds.includes('readonly-read-tools'))
  t.equal(reference.advice.get('admin-tool-database-drop'), 'database_drop needs the approval of a super_admin of platform-ops')
  t.equal(reference.approvals.get('admin-tool-database-drop'), 'a super_admin of platform-ops other than the caller\'s user')
  t.match(reference.version, /^[0-9a-f]{16}$/)
  t.equal(compilePolicySet(readPolicySource(REFERENCE.schema, REFERENCE.policies)).version, reference.version, 'the version is a stable hash')
})

t.test('decisions: allow, forbid with advice, default deny, business hours in the configured zone', async t => {
  const noon = new CedarEngine(reference, zoneWhereHourIs(12))
  const night = new CedarEngine(reference, zoneWhereHourIs(22))
  const allow = noon.authorize(call(file, 'file_write', ['readwrite']))
  t.match(allow, { outcome: 'allow', allowed: true, policies: ['readwrite-write-tools-in-business-hours'], policyVersion: reference.version })
  t.match(allow.decisionId, /^[0-9a-f-]{36}$/)
  const forbid = night.authorize(call(file, 'file_write', ['readwrite']))
  t.match(forbid, { outcome: 'deny', allowed: false, policies: ['readwrite-writes-outside-business-hours'], advice: [/only during business hours/] })
  t.equal(forbid.reason, forbid.advice[0])
  const none = noon.authorize(call(db, 'database_insert', ['readonly']))
  t.match(none, { outcome: 'deny', policies: [], reason: 'no policy permits call tool db/database_insert' })
  t.not(noon.authorize(call(db, 'database_query', ['readonly'])).decisionId, noon.authorize(call(db, 'database_query', ['readonly'])).decisionId, 'each decision has its own id')
  const connect = night.authorize({ identity: agent([]), server: db, action: 'connect', method: 'tools/list' })
  t.match(connect, { outcome: 'allow', policies: ['connect-any-authenticated-agent'] })
  const undeclared = noon.authorize(call(db, 'mystery_tool', ['readonly', 'readwrite', 'engineer']))
  t.equal(undeclared.outcome, 'deny', 'an undeclared tool is denied')
})

t.test('local time', async t => {
  const at = new Date('2026-11-26T23:30:00Z') // a Thursday in UTC
  t.same(localTime(at, 'UTC'), { localHour: 23, localWeekday: 4 })
  t.same(localTime(at, 'Asia/Seoul'), { localHour: 8, localWeekday: 5 })
  t.same(localTime(at, 'America/New_York'), { localHour: 18, localWeekday: 4 })
  t.same(localTime(new Date('2026-11-29T12:00:00Z'), 'UTC'), { localHour: 12, localWeekday: 7 }, 'Sunday is 7')
})

t.test('a bad policy set is refused with the validator\'s words', async t => {
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['a syntax error', { 'a.cedar': 'permit (principal, action, resource' }, /a\.cedar: /],
    ['an unknown attribute', { 'a.cedar': '@id("typo") permit (principal, action == Mcp::Action::"call_tool", resource) when { resource.sensitivty == "low" };' }, /policy "typo": .*sensitivty/],
    ['an unknown action', { 'a.cedar': '@id("x") permit (principal, action == Mcp::Action::"drop_everything", resource);' }, /drop_everything/],
    ['a duplicate id', { 'a.cedar': '@id("same") permit (principal, action, resource);', 'b.cedar': '@id("same") forbid (principal, action, resource);' }, /policy id "same" is used twice \(a\.cedar and b\.cedar\)/],
    ['a template', { 'a.cedar': '@id("t") permit (principal == ?principal, action, resource);' }, /templates are not supported/]
  ]
  for (const [name, policies, message] of cases) {
    t.throws(() => compile(folder(policies)), message, name)
  }
  t.throws(() => compile(folder({ 'a.cedar': '' }, 'namespace Mcp { entity')), { message: /^schema: .*parse/ }, 'a broken schema')
  t.throws(() => readPolicySource('/nonexistent.cedarschema', REFERENCE.policies), /cannot read schema/)
})

t.test('policies without @id get a file-based id', async t => {
  const set = compile(folder({ 'base.cedar': 'permit (principal, action == Mcp::Action::"connect", resource);\nforbid (principal, action == Mcp::Action::"call_tool", resource);' }))
  t.same(set.policyIds, ['base.cedar#1', 'base.cedar#2'])
})

t.test('an evaluation error denies: reason "policy engine error"', async t => {
  const set = compile(folder({
    'ok.cedar': '@id("all") permit (principal, action, resource);',
    'overflow.cedar': '@id("overflow") forbid (principal, action, resource) when { context.localHour * 9223372036854775807 > 5 };'
  }))
  const d = new CedarEngine(set, 'UTC').authorize({ identity: agent([]), server: db, action: 'connect', method: 'ping', now: new Date('2026-01-01T05:00:00Z') })
  t.match(d, { outcome: 'error', allowed: false, reason: ENGINE_ERROR_REASON, errors: [/overflow/] })
})

t.test('a policy set that is not pre-parsed any more is an engine error, not an allow', async t => {
  const set = compile(folder({ 'ok.cedar': '@id("all") permit (principal, action, resource);' }))
  const broken = { ...set, policySetId: 'never-preparsed' }
  const d = new CedarEngine(broken, 'UTC').authorize({ identity: agent([]), server: db, action: 'connect', method: 'ping' })
  t.match(d, { outcome: 'error', allowed: false, reason: ENGINE_ERROR_REASON })
})

t.test('the wasm engine throwing is an engine error, and a fresh instance decides the next request', async t => {
  const { createRequire } = await import('node:module')
  const { engineHealth } = await import('../lib/cedar/engine.js')
  const engine = new CedarEngine(compilePolicySet(readPolicySource(ALLOW_ALL.schema, ALLOW_ALL.policies)), 'UTC')
  // The instance the engine calls now: make its next call trap, as a failed Wasm instance does.
  const live = createRequire(import.meta.url)('@cedar-policy/cedar-wasm/nodejs') as { statefulIsAuthorized: (...a: unknown[]) => unknown }
  const original = live.statefulIsAuthorized
  live.statefulIsAuthorized = () => { throw new Error('wasm trap: unreachable') }
  t.teardown(() => { live.statefulIsAuthorized = original })
  const before = engineHealth().replacements
  const d = engine.authorize({ identity: agent([]), server: db, action: 'connect', method: 'ping' })
  t.match(d, { outcome: 'error', allowed: false, reason: ENGINE_ERROR_REASON, errors: [/wasm trap: unreachable/] })
  t.equal(engineHealth().replacements, before + 1, 'the instance was replaced')
  t.match(engine.authorize({ identity: agent([]), server: db, action: 'connect', method: 'ping' }), { outcome: 'allow' }, 'the next decision is made on the fresh instance')
})

t.test('swap replaces the policy set atomically', async t => {
  const allowAll = compilePolicySet(readPolicySource(ALLOW_ALL.schema, ALLOW_ALL.policies))
  const engine = new CedarEngine(reference, 'UTC')
  t.equal(engine.authorize(call(db, 'database_insert', ['readonly'])).outcome, 'deny')
  engine.swap(allowAll)
  t.equal(engine.version, allowAll.version)
  t.equal(engine.authorize(call(db, 'database_insert', ['readonly'])).outcome, 'allow')
})

t.test('argument-level policies on generated per-tool actions', async t => {
  const schema = schemaWithToolActions(readPolicySource(REFERENCE.schema, REFERENCE.policies).schemaText, new Map([
    ['db', [{ name: 'database_query', inputSchema: { type: 'object', properties: { sql: { type: 'string' }, limit: { type: 'integer' }, ratio: { type: 'number' }, tags: { type: 'array', items: { type: 'string' } }, any: {} }, required: ['sql'] } }]],
    ['file', [{ name: 'file_read', inputSchema: { type: 'object', properties: { path: { type: 'string' } }, required: ['path'] } }]]
  ]))
  t.match(schema, /action "db\/database_query" in \[Action::"call_tool"\]/)
  const set = compile(folder({
    'base.cedar': '@id("all") permit (principal, action, resource);',
    'args.cedar': [
      '@id("select-only") @advice("database_query runs SELECT statements only")',
      'forbid (principal, action == Mcp::Action::"db/database_query", resource) when { context has arguments && !(context.arguments.sql like "SELECT *") };',
      '@id("small-limit") forbid (principal, action == Mcp::Action::"db/database_query", resource) when { context has arguments && context.arguments has limit && context.arguments.limit > 100 };',
      '@id("ratio") forbid (principal, action == Mcp::Action::"db/database_query", resource) when { context has arguments && context.arguments has ratio && context.arguments.ratio.greaterThan(decimal("0.5")) };',
      '@id("data-only") forbid (principal, action == Mcp::Action::"file/file_read", resource) when { context has arguments && (!(context.arguments.path like "data/*") || context.arguments.path like "*..*") };'
    ].join('\n')
  }, schema))
  t.ok(set.toolActions.has('db/database_query'))
  const engine = new CedarEngine(set, 'UTC')
  const q = (args: Record<string, unknown> | undefined) => engine.authorize({ identity: agent([]), server: db, action: 'call_tool', method: 'tools/call', tool: 'database_query', ...(args !== undefined ? { arguments: args } : {}) })
  t.equal(q({ sql: 'SELECT 1' }).outcome, 'allow')
  t.match(q({ sql: 'DELETE FROM customers' }), { outcome: 'deny', policies: ['select-only'], reason: 'database_query runs SELECT statements only' })
  t.match(q({ sql: 'SELECT 1', limit: 500 }), { outcome: 'deny', policies: ['small-limit'] })
  t.equal(q({ sql: 'SELECT 1', limit: 50, tags: ['a'], any: { free: 'form' } }).outcome, 'allow', 'untyped properties are left out')
  t.match(q({ sql: 'SELECT 1', ratio: 0.75 }), { outcome: 'deny', policies: ['ratio'] })
  t.equal(q({ sql: 'SELECT 1', ratio: 0.25 }).outcome, 'allow', 'numbers are decimals')
  t.match(q({ sql: 42 }), { outcome: 'deny', reason: /arguments\.sql must be a string/ }, 'arguments that do not fit the inputSchema are refused')
  t.match(q({ limit: 1 }), { outcome: 'deny', reason: /arguments\.sql must be present/ })
  t.equal(q(undefined).outcome, 'allow', 'without arguments (list time) the forbid does not apply')
  const r = (path: string) => engine.authorize({ identity: agent([]), server: file, action: 'call_tool', method: 'tools/call', tool: 'file_read', arguments: { path } }).outcome
  t.equal(r('data/report.csv'), 'allow')
  t.equal(r('README.txt'), 'deny')
  t.equal(r('data/../demo-issuer.key.pem'), 'deny')
  t.equal(engine.authorize({ identity: agent([]), server: file, action: 'call_tool', method: 'tools/call', tool: 'file_write', arguments: { path: 'x' } }).outcome, 'allow',
    'a tool without a generated action is decided on call_tool')
})
