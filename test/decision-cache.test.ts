/**
 * The decision cache cannot change a decision: thousands of generated requests are decided by
 * an engine that remembers decisions and by one that asks Cedar every time, on the shipped
 * policies, on argument-level policies and on randomly generated policy sets (every policy of
 * which is kept only if Cedar's strict validator accepts it), and the two must agree on
 * outcome, deciding policies, advice and reason; also across a reload, which starts the new
 * set with an empty cache. The generator is seeded (MCPW_PROPERTY_SEED to replay a run).
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { CedarEngine, compilePolicySet, readPolicySource, PolicySetError, type AuthzRequest, type CompiledPolicySet, type Decision } from '../lib/cedar/engine.js'
import { schemaWithToolActions } from '../lib/cedar/schema-gen.js'
import { validateConfig, type UpstreamConfig } from '../lib/config.js'
import { identityFromClaims, type Identity } from '../lib/identity.js'
import { analysePolicies } from '../lib/cedar/policy-reads.js'
import { REFERENCE, ALLOW_ALL } from './fixtures/gateway.js'

const SEED = Number(process.env.MCPW_PROPERTY_SEED ?? 20261202)
t.comment(`seed ${SEED} (MCPW_PROPERTY_SEED replays a run)`)

/** mulberry32: a small seeded generator, so a failure can be replayed. */
function rng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}
const random = rng(SEED)
const pick = <T>(a: readonly T[]): T => a[Math.floor(random() * a.length)]!
const some = <T>(a: readonly T[], p = 0.4): T[] => a.filter(() => random() < p)

const config = validateConfig({
  identity: { issuer: 'https://idp.test', jwksUri: 'https://idp.test/jwks' },
  authorization: ALLOW_ALL,
  upstreams: {
    db: { url: 'http://127.0.0.1:1/mcp', tools: { database_query: { sensitivity: 'low', readOnly: true }, database_insert: { sensitivity: 'medium' }, database_drop: { sensitivity: 'high', destructive: true } } },
    file: { url: 'http://127.0.0.1:2/mcp', tools: { file_read: { sensitivity: 'low', readOnly: true }, file_write: { sensitivity: 'medium' } } },
    api: { url: 'http://127.0.0.1:3/mcp', defaultSensitivity: 'high', tools: {} }
  }
})
const servers = [...config.upstreams.values()]
const TOOLS = ['database_query', 'database_insert', 'database_drop', 'file_read', 'file_write', 'report_1', 'report_2', 'user_delete', 'payment_process']
const ROLES = ['readonly', 'readwrite', 'analyst', 'engineer', 'super_admin']
const DEPARTMENTS = ['engineering', 'analytics', 'platform-ops']
const SCOPES = ['approved:user_delete', 'approved:database_drop', 'tool:database_query', 'read']
const USERS = ['u-1', 'u-2']
const URIS = ['sqlite://customers', 'sqlite://orders', 'file://data/a.txt']
const PROMPTS = ['summarise', 'triage']
const METHODS = ['initialize', 'ping', 'tools/list', 'resources/list', 'notifications/initialized']
const SQL = ['SELECT * FROM t', 'DROP TABLE t', 'select 1', '']

function folder (policies: Record<string, string>, schema: string): { schema: string, policies: string } {
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-cache-'))
  for (const [name, text] of Object.entries(policies)) writeFileSync(join(dir, name), text)
  const schemaFile = join(dir, 'schema.cedarschema')
  writeFileSync(schemaFile, schema)
  return { schema: schemaFile, policies: dir }
}
const compileIn = (policies: Record<string, string>, schema: string): CompiledPolicySet => {
  const f = folder(policies, schema)
  return compilePolicySet(readPolicySource(f.schema, f.policies))
}
const baseSchema = readPolicySource(REFERENCE.schema, REFERENCE.policies).schemaText
/** The schema with typed per-tool actions for db/database_query (arguments sql, limit). */
const argsSchema = schemaWithToolActions(baseSchema, new Map([
  ['db', [{ name: 'database_query', inputSchema: { type: 'object', properties: { sql: { type: 'string' }, limit: { type: 'integer' } }, required: ['sql'] } }]]
]))

// Atoms of generated conditions, by the kind of resource the policy's action scope implies.
const anyAtoms = (): string[] => [
  `context.localHour >= ${Math.floor(random() * 24)}`,
  `context.localHour < ${Math.floor(random() * 24)}`,
  `context.localWeekday == ${1 + Math.floor(random() * 7)}`,
  `context.method == "${pick(['tools/call', ...METHODS])}"`,
  `context.timezone == "${pick(['UTC', 'Asia/Kolkata'])}"`,
  `principal.department == "${pick(DEPARTMENTS)}"`,
  `principal in Mcp::Role::"${pick(ROLES)}"`,
  `principal.roles.contains("${pick(ROLES)}")`,
  `principal.scopes.contains("${pick(SCOPES)}")`,
  `principal.userId == "${pick(USERS)}"`,
  `principal == Mcp::Agent::"${pick(['bot-a', 'bot-b'])}"`,
  `context.now > datetime("${pick(['2020-01-01', '2030-01-01'])}")`,
  'context.approval.granted',
  `context.approval.approver == "${pick(['grace', 'heidi', ''])}"`,
  `context.approval.ageSeconds < ${pick([0, 30, 600])}`
]
const toolAtoms = (): string[] => [
  ...anyAtoms(),
  `resource.sensitivity == "${pick(['low', 'medium', 'high'])}"`,
  'resource.readOnly',
  'resource.destructive',
  `resource.name like "${pick(['database*', 'file*', 'report*', '*_delete'])}"`,
  `resource.name == "${pick(TOOLS)}"`,
  `resource == Mcp::Tool::"${pick(servers).name}/${pick(TOOLS)}"`,
  `resource in [Mcp::Tool::"${pick(servers).name}/${pick(TOOLS)}", Mcp::Tool::"${pick(servers).name}/${pick(TOOLS)}"]`,
  `resource in Mcp::Server::"${pick(servers).name}"`,
  `resource.server == "${pick(servers).name}"`,
  'resource is Mcp::Tool'
]
const argAtoms = (): string[] => [
  ...toolAtoms(),
  `context has arguments && context.arguments.sql like "${pick(['SELECT*', 'DROP*', '*'])}"`,
  `context has arguments && context.arguments has limit && context.arguments.limit > ${Math.floor(random() * 200)}`
]
const resourceAtoms = (): string[] => [...anyAtoms(), `resource.uri like "${pick(['sqlite://*', 'file://*'])}"`, `resource == Mcp::Resource::"db/${pick(URIS)}"`]
const serverAtoms = (): string[] => [...anyAtoms(), `resource == Mcp::Server::"${pick(servers).name}"`]

function condition (atoms: string[]): string {
  const n = Math.floor(random() * 4)
  if (n === 0) return ''
  const parts = Array.from({ length: n }, () => (random() < 0.2 ? `!(${pick(atoms)})` : `(${pick(atoms)})`))
  let body = parts[0]!
  for (const p of parts.slice(1)) body = `${body} ${random() < 0.7 ? '&&' : '||'} ${p}`
  return ` ${random() < 0.8 ? 'when' : 'unless'} { ${body} }`
}

function randomPolicy (i: number, withArgs: boolean): string {
  const scopes: Array<[string, () => string[]]> = [
    ['action', anyAtoms],
    ['action == Mcp::Action::"connect"', serverAtoms],
    ['action in Mcp::Action::"call_tool"', toolAtoms],
    ['action == Mcp::Action::"call_tool"', toolAtoms],
    ['action == Mcp::Action::"read_resource"', resourceAtoms],
    ['action in [Mcp::Action::"connect", Mcp::Action::"get_prompt"]', anyAtoms],
    ...(withArgs ? [['action == Mcp::Action::"db/database_query"', argAtoms] as [string, () => string[]]] : [])
  ]
  const [action, atoms] = pick(scopes)
  const principal = pick(['principal', `principal in Mcp::Role::"${pick(ROLES)}"`, 'principal is Mcp::Agent'])
  const resourceScope = action.includes('call_tool') || action.includes('database_query')
    ? pick(['resource', `resource == Mcp::Tool::"${pick(servers).name}/${pick(TOOLS)}"`, `resource in Mcp::Server::"${pick(servers).name}"`, 'resource is Mcp::Tool'])
    : 'resource'
  const effect = random() < 0.65 ? 'permit' : 'forbid'
  // Some forbids ask for a person's approval instead of refusing (the approval outcome is compared too).
  if (effect === 'forbid' && random() < 0.35) {
    return `@id("p${i}") @advice("advice of p${i}") @approval("approver of p${i}") forbid (${principal}, ${action}, ${resourceScope})${condition(atoms())} unless { context.approval.granted };`
  }
  return `@id("p${i}") @advice("advice of p${i}") ${effect} (${principal}, ${action}, ${resourceScope})${condition(atoms())};`
}

/** A random policy set: each policy kept only if the set with it still validates. */
function randomSet (size: number, withArgs: boolean): CompiledPolicySet {
  const schema = withArgs ? argsSchema : baseSchema
  const kept: string[] = []
  let set = compileIn({ 'empty.cedar': '' }, schema)
  for (let i = 0; kept.length < size && i < size * 4; i++) {
    const candidate = randomPolicy(i, withArgs)
    try {
      set = compileIn({ 'p.cedar': [...kept, candidate].join('\n') }, schema)
      kept.push(candidate)
    } catch (err) {
      if (!(err instanceof PolicySetError)) throw err
    }
  }
  return set
}

const identities: Identity[] = Array.from({ length: 14 }, (_, i) => identityFromClaims({
  iss: 'https://idp.test',
  sub: pick(['bot-a', 'bot-b', 'bot-c']),
  roles: some(ROLES, 0.3),
  ...(random() < 0.8 ? { department: pick(DEPARTMENTS) } : {}),
  ...(random() < 0.6 ? { userId: pick(USERS) } : {}),
  scope: some(SCOPES, 0.3).join(' '),
  jti: `id-${i}`
}, config.identity))
// Instants over a week, so local hours and weekdays vary.
const INSTANTS = Array.from({ length: 10 }, () => new Date(Date.UTC(2026, 11, 1 + Math.floor(random() * 7), Math.floor(random() * 24), Math.floor(random() * 60))))

/** The approval a request carries: none most of the time, else granted or not, by someone, some time ago. */
function randomApproval (): Pick<AuthzRequest, 'approval'> {
  if (random() < 0.6) return {}
  return { approval: { granted: random() < 0.7, approver: pick(['grace', 'heidi', '']), ageSeconds: pick([0, 5, 120]) } }
}

function randomRequest (withArgs: boolean): AuthzRequest {
  // A fresh Identity object with the same claims now and then: the key is built from values.
  const base = pick(identities)
  const identity = random() < 0.1 ? { ...base } : base
  const server: UpstreamConfig = pick(servers)
  const timing = { ...(random() < 0.85 ? { now: pick(INSTANTS) } : {}), ...randomApproval() }
  const kind = random()
  if (kind < 0.6) {
    const args = random() < 0.3 ? undefined : { sql: pick(SQL), ...(random() < 0.5 ? { limit: Math.floor(random() * 300) } : {}) }
    const tool = withArgs && random() < 0.4 ? 'database_query' : pick(TOOLS)
    return { identity, server: withArgs && tool === 'database_query' ? config.upstreams.get('db')! : server, action: 'call_tool', method: 'tools/call', tool, ...(args !== undefined ? { arguments: args } : {}), ...timing }
  }
  if (kind < 0.75) return { identity, server, action: 'read_resource', method: 'resources/read', uri: pick(URIS), ...timing }
  if (kind < 0.85) return { identity, server, action: 'get_prompt', method: 'prompts/get', prompt: pick(PROMPTS), ...timing }
  return { identity, server, action: 'connect', method: pick(METHODS), ...timing }
}

const comparable = (d: Decision) => ({ outcome: d.outcome, allowed: d.allowed, policies: [...d.policies], advice: [...d.advice], reason: d.reason, errors: [...d.errors], policyVersion: d.policyVersion, approval: d.approval })

const outcomes = { allow: 0, deny: 0, error: 0, approval: 0 }
/** Decides `n` generated requests with both engines; returns the cache's hits. */
function agree (t: Test, cached: CedarEngine, plain: CedarEngine, n: number, withArgs: boolean, label: string): number {
  const set = cached.policySet
  const hitsBefore = set.decisions.hits
  let mismatches = 0
  const ids = new Set<string>()
  for (let i = 0; i < n; i++) {
    const r = randomRequest(withArgs)
    const a = cached.authorize(r)
    const b = plain.authorize(r)
    ids.add(a.decisionId)
    outcomes[b.outcome]++
    if (b.approval !== undefined) outcomes.approval++
    if (JSON.stringify(comparable(a)) !== JSON.stringify(comparable(b))) {
      if (mismatches++ < 3) t.same(comparable(a), comparable(b), `${label}: request ${i} ${JSON.stringify({ ...r, identity: { ...r.identity } })}`)
    }
  }
  t.equal(mismatches, 0, `${label}: ${n} requests, the cached and uncached engines agree`)
  t.equal(ids.size, n, `${label}: every decision has an id of its own, remembered or not`)
  return set.decisions.hits - hitsBefore
}

t.test('the shipped policies: remembered decisions equal Cedar\'s, for every kind of request', async t => {
  const set = compilePolicySet(readPolicySource(REFERENCE.schema, REFERENCE.policies))
  const cached = new CedarEngine(set, 'UTC')
  const plain = new CedarEngine(set, 'UTC', { cache: false })
  const hits = agree(t, cached, plain, 3000, false, 'shipped')
  t.ok(hits > 1000, `the cache answered most of them (${hits} hits)`)
})

t.test('argument-level policies: the arguments are part of the key exactly where policies read them', async t => {
  const set = compileIn({
    'all.cedar': '@id("all") permit (principal, action, resource);',
    'args.cedar': [
      '@id("select-only") @advice("SELECT only") forbid (principal, action == Mcp::Action::"db/database_query", resource) when { context has arguments && !(context.arguments.sql like "SELECT *") };',
      '@id("limit") forbid (principal, action == Mcp::Action::"db/database_query", resource) when { context has arguments && context.arguments has limit && context.arguments.limit > 100 };'
    ].join('\n')
  }, argsSchema)
  t.ok(set.reads.actions.get('db/database_query')?.context.has('arguments'), 'the per-tool action reads its arguments')
  t.notOk(set.reads.actions.get('call_tool')?.context.has('arguments'), 'other calls do not: their arguments are not part of their key')
  const cached = new CedarEngine(set, 'Asia/Kolkata')
  const plain = new CedarEngine(set, 'Asia/Kolkata', { cache: false })
  t.ok(agree(t, cached, plain, 2000, true, 'arguments') > 500)
})

t.test('generated policy sets, each decided with and without the cache, then reloaded into the next', async t => {
  let sets = 0
  let hits = 0
  const timezone = pick(['UTC', 'Asia/Kolkata', 'America/St_Johns'])
  let previous: CompiledPolicySet | undefined
  const cached = new CedarEngine(compilePolicySet(readPolicySource(ALLOW_ALL.schema, ALLOW_ALL.policies)), timezone)
  const plain = new CedarEngine(cached.policySet, timezone, { cache: false })
  for (let i = 0; i < 12; i++) {
    const withArgs = i % 3 === 2
    const set = randomSet(3 + Math.floor(random() * 6), withArgs)
    if (set.policyIds.length === 0) continue
    sets++
    // A reload: the new set's cache starts empty, whatever the old one remembered.
    cached.swap(set)
    plain.swap(set)
    t.equal(set.decisions.size, 0, `set ${i}: a new set starts with nothing remembered`)
    hits += agree(t, cached, plain, 600, withArgs, `set ${i} (${set.policyIds.length} policies)`)
    if (previous !== undefined) t.not(previous.decisions, set.decisions)
    previous = set
  }
  t.ok(sets >= 8, `${sets} generated sets were decided`)
  t.ok(outcomes.allow > 1000 && outcomes.deny > 1000, `allows and denies both (${JSON.stringify(outcomes)})`)
  t.ok(outcomes.approval > 20, `and calls waiting for approval (${outcomes.approval})`)
  t.ok(hits > 1000, `the cache answered part of them (${hits} hits)`)
})

t.test('the analysis: what keys a decision', async t => {
  const parents = new Map([['connect', []], ['call_tool', []], ['read_resource', []], ['get_prompt', []], ['db/database_query', ['call_tool']]])
  const analyse = (...policies: unknown[]) => analysePolicies(policies as Parameters<typeof analysePolicies>[0], parents)
  const v = (name: string) => ({ Var: name })
  const dot = (left: unknown, attr: string) => ({ '.': { left, attr } })
  const permit = (action: unknown, body?: unknown) => ({ effect: 'permit', principal: { op: 'All' }, action, resource: { op: 'All' }, conditions: body === undefined ? [] : [{ kind: 'when', body }] })
  const toolAction = { op: 'in', entity: { type: 'Mcp::Action', id: 'call_tool' } }

  let r = analyse(permit({ op: 'All' }))
  t.same([...r.actions.values()].map(a => [a.cacheable, [...a.context], a.resourceId]), Array(5).fill([true, [], false]), 'a policy that reads nothing: every action cacheable on principal, resource and action alone')
  r = analyse(permit(toolAction, { '>': { left: dot(v('context'), 'localHour'), right: { Value: 9 } } }))
  t.same([...r.actions.get('db/database_query')!.context], ['localHour'], 'a call_tool policy applies to the per-tool actions in call_tool')
  t.same([...r.actions.get('connect')!.context], [], 'and not to connect')
  r = analyse(permit({ op: 'All' }, { '<': { left: dot(v('context'), 'now'), right: { Value: 1 } } }))
  t.notOk(r.actions.get('connect')!.cacheable, 'reading context.now: nothing is remembered')
  r = analyse(permit({ op: 'All' }, { '==': { left: v('context'), right: { Record: {} } } }))
  t.notOk(r.actions.get('connect')!.cacheable, 'context used whole: nothing is remembered')
  r = analyse(permit({ op: 'All' }, dot(v('context'), 'requester')))
  t.notOk(r.actions.get('connect')!.cacheable, 'a context field the engine does not fill: nothing is remembered')
  r = analyse(permit(toolAction, { like: { left: dot(v('resource'), 'name'), pattern: ['Wildcard'] } }))
  t.ok(r.actions.get('call_tool')!.resourceId, 'resource.name: tools are keyed by id')
  r = analyse(permit(toolAction, { '==': { left: v('resource'), right: dot(v('principal'), 'x') } }))
  t.ok(r.actions.get('call_tool')!.resourceId, 'resource compared with anything but a literal: keyed by id')
  r = analyse(permit(toolAction, { in: { left: v('resource'), right: { Set: [{ Value: { __entity: { type: 'Mcp::Tool', id: 'db/x' } } }] } } }))
  t.notOk(r.actions.get('call_tool')!.resourceId, 'resource in a set of literal tools: keyed by attributes,')
  t.ok(r.literals.has('Mcp::Tool::db/x'), 'except the tools named')
  r = analyse({ ...permit(toolAction), resource: { op: '==', entity: { type: 'Mcp::Tool', id: 'db/y' } } })
  t.ok(r.literals.has('Mcp::Tool::db/y'), 'a tool named in a scope is keyed by id')
  r = analyse(permit({ op: '==', entity: { type: 'Mcp::Action', id: 'db/database_query' } }, dot(v('context'), 'arguments')))
  t.ok(r.actions.get('db/database_query')!.context.has('arguments'))
  t.notOk(r.actions.get('call_tool')!.context.has('arguments'), 'a policy on one action does not widen the others\' keys')
})

t.test('tools with the same attributes share a decision when no policy tells them apart', async t => {
  const set = compilePolicySet(readPolicySource(REFERENCE.schema, REFERENCE.policies))
  const engine = new CedarEngine(set, 'UTC')
  const identity = identities[0]!
  const api = config.upstreams.get('api')!
  const misses = set.decisions.misses
  for (let i = 0; i < 500; i++) engine.authorize({ identity, server: api, action: 'call_tool', method: 'tools/call', tool: `listed_${i}`, now: INSTANTS[0]! })
  t.equal(set.decisions.misses - misses, 1, '500 unnamed tools of one server with the same attributes: one Cedar decision')
  const before = set.decisions.misses
  engine.authorize({ identity, server: api, action: 'call_tool', method: 'tools/call', tool: 'user_delete', now: INSTANTS[0]! })
  t.equal(set.decisions.misses - before, 1, 'a tool a policy names is decided on its own')
})

t.test('what an agent sends cannot make a remembered decision large: long names are keyed by digest, and request text is not kept', async t => {
  const set = compilePolicySet(readPolicySource(REFERENCE.schema, REFERENCE.policies))
  const cached = new CedarEngine(set, 'UTC')
  const plain = new CedarEngine(set, 'UTC', { cache: false })
  const identity = identities[0]!
  const db = config.upstreams.get('db')!
  const long = (i: number) => `file://${i}/${'a'.repeat(100_000)}`
  for (let i = 0; i < 50; i++) {
    for (const r of [
      { identity, server: db, action: 'read_resource', method: 'resources/read', uri: long(i) },
      { identity, server: db, action: 'get_prompt', method: 'prompts/get', prompt: long(i) },
      { identity, server: db, action: 'call_tool', method: 'tools/call', tool: `database_query${'x'.repeat(i * 1000)}` }
    ] as AuthzRequest[]) {
      t.same(comparable(cached.authorize(r)), comparable(plain.authorize(r)))
      // Asked again: answered from the cache, equal still.
      t.same(comparable(cached.authorize(r)), comparable(plain.authorize(r)))
    }
  }
  let largest = 0
  for (const [key, decision] of set.decisions.entries()) largest = Math.max(largest, key.length, JSON.stringify(decision).length)
  t.ok(set.decisions.size >= 100, `${set.decisions.size} decisions remembered`)
  t.ok(largest < 1024, `the largest key or remembered decision is ${largest} characters, whatever the request held`)
})
