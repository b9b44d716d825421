/**
 * The Cedar policy engine (no Fastify): loads a schema and a folder of policies,
 * validates them strictly, pre-parses them once, and decides requests.
 *
 * A decision is a union of allow | deny | error; every exception, failure answer or
 * evaluation error of Cedar is an `error`, which denies (fail closed).
 */
import { createHash, randomUUID } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { createRequire } from 'node:module'
import { setFlagsFromString } from 'node:v8'
import type * as CedarWasm from '@cedar-policy/cedar-wasm/nodejs'
import type { Identity } from '../identity.js'
import type { UpstreamConfig } from '../config.js'
import { ArgumentMismatchError, normaliseType, toCedarValue, type CedarType } from './arguments.js'
import { localTime } from './time.js'
import { policyTextProblem } from './text-shape.js'
import { isWellFormedText } from '../json-text.js'
import { analysePolicies, type ActionReads, type PolicySetReads } from './policy-reads.js'
import { BoundedCache } from '../bounded-cache.js'

// With V8's inlining of JS-to-Wasm calls on, a tight loop of decisions now and then kills the
// process ("unreachable code" in Deoptimizer::DoComputeBuiltinContinuation, Node 20 and 22;
// bench/repro/v8-wasm-inline-deopt.mjs reproduces it). It is switched off before any Cedar call
// is optimized. docs/performance.md has the runs.
setFlagsFromString('--no-turbo-inline-js-wasm-calls')

// The Cedar Wasm module is loaded through require() so that a fresh instance can replace it:
// when a call into it throws, its memory can no longer be trusted (cedar-wasm 4.x leaks on
// some failing inputs until every later call fails with "memory access out of bounds";
// bench/repro/cedar-wasm-lone-surrogate.cjs). Every policy set that was pre-parsed is parsed
// again into the fresh instance, so every engine of the process goes on deciding.
const requireCjs = createRequire(import.meta.url)
const CEDAR_MODULE = requireCjs.resolve('@cedar-policy/cedar-wasm/nodejs')
let cedar = requireCjs(CEDAR_MODULE) as typeof CedarWasm

/** A fresh instance of the module; the replaced one is left to the garbage collector. */
function freshCedar (): typeof CedarWasm {
  delete requireCjs.cache[CEDAR_MODULE]
  const exports = requireCjs(CEDAR_MODULE) as typeof CedarWasm
  // require() lists each load among the requiring module's children; unlisted, the old
  // instances (and their Wasm memories) can be collected.
  const mod = requireCjs.cache[CEDAR_MODULE]
  const parent = mod?.parent
  if (parent !== undefined && parent !== null) parent.children = parent.children.filter(c => c.id !== CEDAR_MODULE || c === mod)
  return exports
}

interface Preparsed { schemaName: string, schemaText: string, policySetId: string, texts: Record<string, string> }
/** Every pre-parsed policy set, by version: what a fresh instance must parse again. */
const preparsed = new Map<string, Preparsed>()

/** The state of the Wasm instance, shared by every engine of the process. */
export interface EngineHealth {
  readonly healthy: boolean
  /** Fresh instances that replaced a failed one since the process started. */
  readonly replacements: number
  readonly lastError: string | null
}
const health = { healthy: true, replacements: 0, lastError: null as string | null, lastAttempt: 0 }
export type EngineFailureListener = (event: { error: string, recovered: boolean }) => void
const failureListeners = new Set<EngineFailureListener>()

export function engineHealth (): EngineHealth {
  return { healthy: health.healthy, replacements: health.replacements, lastError: health.lastError }
}

/** Called when a Cedar call threw, with whether a fresh instance took over; returns an unsubscribe. */
export function onEngineFailure (listener: EngineFailureListener): () => void {
  failureListeners.add(listener)
  return () => { failureListeners.delete(listener) }
}

function preparseInto (c: typeof CedarWasm, e: Preparsed): void {
  const s = c.preparseSchema(e.schemaName, e.schemaText)
  if (s.type === 'failure') throw new PolicySetError(`schema: ${messages(s.errors)}`)
  const p = c.preparsePolicySet(e.policySetId, { staticPolicies: e.texts })
  if (p.type === 'failure') throw new PolicySetError(messages(p.errors))
}

/**
 * A call into the Wasm instance threw: replace the instance with a fresh one and parse every
 * policy set into it again. When that fails, the engine stays unhealthy (every decision is an
 * error, which denies) and another replacement is tried at most once a second.
 */
export function replaceCedarInstance (error: string): boolean {
  health.lastError = error
  health.lastAttempt = Date.now()
  try {
    const fresh = freshCedar()
    for (const e of preparsed.values()) preparseInto(fresh, e)
    cedar = fresh
    health.healthy = true
    health.replacements++
  } catch (err) {
    health.healthy = false
    health.lastError = `${error}; a fresh instance failed too: ${(err as Error).message}`
  }
  for (const listener of failureListeners) listener({ error: health.lastError, recovered: health.healthy })
  return health.healthy
}

import type { CedarAction } from '../mcp-methods.js'
export type { CedarAction }

export interface AuthzRequest {
  identity: Identity
  server: UpstreamConfig
  action: CedarAction
  /** The MCP method (or `GET` / `DELETE` / `response` for non-request traffic). */
  method: string
  tool?: string
  /** tools/call arguments; absent at list time. */
  arguments?: Readonly<Record<string, unknown>>
  uri?: string
  prompt?: string
  /** Evaluation time (default: now). */
  now?: Date
  /** The approval this exact call carries (`context.approval`); absent: none granted. */
  approval?: ApprovalContext
}

/** `context.approval` (DESIGN §11). */
export interface ApprovalContext {
  readonly granted: boolean
  /** The approver's user id ('' when none). */
  readonly approver: string
  readonly ageSeconds: number
}
const NOT_GRANTED: ApprovalContext = Object.freeze({ granted: false, approver: '', ageSeconds: 0 })
/** What a call would be decided as once approved: asked only to tell "needs approval" from "denied". */
const GRANTED_PROBE: ApprovalContext = Object.freeze({ granted: true, approver: '', ageSeconds: 0 })

/** A person deciding on an approval (`Mcp::Action::"approve"`). */
export interface ApproveRequest {
  /** The approver, read from their token like an agent's identity. */
  approver: Identity
  server: UpstreamConfig
  tool: string
  requester: { agentId: string, userId: string, department: string }
  /** Ids of the @approval policies that asked for the approval. */
  policies: readonly string[]
  now?: Date
}

/** A person using the operator console. */
export interface ConsoleRequest {
  /** The person, read from their token like an agent's identity. */
  person: Identity
  action: 'view_console' | 'operate_console' | 'approve_console'
  /** The page or action asked for (`context.page`). */
  page: string
  now?: Date
}

interface DecisionBase {
  readonly decisionId: string
  /** Ids of the policies that determined the decision. */
  readonly policies: readonly string[]
  /** @advice texts of those policies. */
  readonly advice: readonly string[]
  readonly errors: readonly string[]
  /** A sentence for people: why. */
  readonly reason: string
  readonly policyVersion: string
  /**
   * On a deny: set when only @approval policies denied, and the same call with
   * `context.approval.granted` would be allowed. The call then waits for a person.
   */
  readonly approval?: ApprovalRequirement
}

export interface ApprovalRequirement {
  /** The @approval policies that asked for it. */
  readonly policies: readonly string[]
  /** Their @approval texts: who may approve, for people. */
  readonly approvers: readonly string[]
}
export type Decision =
  | DecisionBase & { readonly outcome: 'allow', readonly allowed: true }
  | DecisionBase & { readonly outcome: 'deny', readonly allowed: false }
  | DecisionBase & { readonly outcome: 'error', readonly allowed: false }

export const ENGINE_ERROR_REASON = 'policy engine error'

/**
 * Whether lists show what a decision is about: it is allowed, or it would be once a person
 * approves the call. Tool lists and the "hidden tool" answer to a call both use this one rule.
 */
export function listable (decision: Decision): boolean {
  return decision.allowed || decision.approval !== undefined
}

export interface PolicyFile { readonly file: string, readonly text: string }
export interface PolicySource { readonly schemaText: string, readonly files: readonly PolicyFile[] }

export class PolicySetError extends Error {
  override name = 'PolicySetError'
}

/** Reads the schema file and every *.cedar file of the policy folder (sorted). */
export function readPolicySource (schemaFile: string, policiesDir: string): PolicySource {
  let schemaText: string
  try { schemaText = readFileSync(schemaFile, 'utf8') } catch (err) {
    throw new PolicySetError(`cannot read schema ${schemaFile} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let names: string[]
  try { names = readdirSync(policiesDir).filter(n => n.endsWith('.cedar')).sort() } catch (err) {
    throw new PolicySetError(`cannot read policy folder ${policiesDir} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  return { schemaText, files: names.map(n => ({ file: join(policiesDir, n), text: readFileSync(join(policiesDir, n), 'utf8') })) }
}

/** A validated, pre-parsed policy set. */
export interface CompiledPolicySet {
  readonly version: string
  readonly policyIds: readonly string[]
  /** Each policy's text, by id. */
  readonly texts: ReadonlyMap<string, string>
  /** Set for a set compiled with `preparse: false`: what each decision passes to Cedar. */
  readonly stateless?: { readonly schemaText: string, readonly texts: Readonly<Record<string, string>> }
  readonly advice: ReadonlyMap<string, string>
  /** Policies annotated @approval("who"), by id: they ask for a person's approval instead of denying. */
  readonly approvals: ReadonlyMap<string, string>
  /** Per-tool actions of a generated schema: `server/tool` → the type of context.arguments (if any). */
  readonly toolActions: ReadonlyMap<string, CedarType | undefined>
  readonly schemaName: string
  readonly policySetId: string
  readonly warnings: readonly string[]
  /** What the policies read, per action (policy-reads.ts): what a remembered decision is keyed on. */
  readonly reads: PolicySetReads
  /** Decisions of this set, by exactly the inputs its policies read; a new set starts empty. */
  readonly decisions: BoundedCache<Decision>
}

/** Decisions remembered per policy set (each entry is a few hundred bytes). */
export const DECISION_CACHE_ENTRIES = 20_000
/** Arguments longer than this (as JSON) are not made part of a key: such a decision is not remembered. */
const MAX_ARGUMENTS_KEY = 4096
/**
 * A key longer than this (a long URI, prompt or tool name, long arguments) is kept as its
 * SHA-256: what an agent sends cannot make a remembered decision take more room than this.
 */
const MAX_KEY_CHARS = 512

const messages = (errors: Array<{ message: string, help?: string | null }>): string =>
  errors.map(e => e.help ? `${e.message} (${e.help})` : e.message).join('; ')

/** Splits every file into policies named by their @id (or `<file>#<n>`), with their @advice. */
export function splitPolicies (files: readonly PolicyFile[]): { texts: Record<string, string>, advice: Map<string, string>, approvals: Map<string, string>, json: unknown[] } {
  const texts: Record<string, string> = {}
  const jsonForms: unknown[] = []
  const where = new Map<string, string>()
  const advice = new Map<string, string>()
  const approvals = new Map<string, string>()
  for (const { file, text } of files) {
    const parts = cedar.policySetTextToParts(text)
    if (parts.type === 'failure') throw new PolicySetError(`${basename(file)}: ${messages(parts.errors)}`)
    if (parts.policy_templates.length > 0) throw new PolicySetError(`${basename(file)}: templates are not supported; write static policies`)
    parts.policies.forEach((policy, i) => {
      const json = cedar.policyToJson(policy)
      if (json.type === 'failure') throw new PolicySetError(`${basename(file)}: ${messages(json.errors)}`)
      const annotations = json.json.annotations ?? {}
      const id = annotations.id ?? `${basename(file)}#${i + 1}`
      const previous = where.get(id)
      if (previous !== undefined) throw new PolicySetError(`policy id "${id}" is used twice (${previous} and ${basename(file)})`)
      where.set(id, basename(file))
      texts[id] = policy
      jsonForms.push(json.json)
      if (typeof annotations.advice === 'string' && annotations.advice !== '') advice.set(id, annotations.advice)
      if (annotations.approval !== undefined) {
        const effect = (json.json as { effect?: string }).effect
        if (effect !== 'forbid') throw new PolicySetError(`${basename(file)}: policy "${id}" is annotated @approval but is a ${String(effect)}; @approval marks a forbid that a person's approval lifts (unless { context.approval.granted })`)
        approvals.set(id, typeof annotations.approval === 'string' && annotations.approval !== '' ? annotations.approval : 'an approver')
      }
    })
  }
  return { texts, advice, approvals, json: jsonForms }
}

interface SchemaJsonAction { memberOf?: Array<{ id: string }>, appliesTo?: { context?: unknown } }
interface SchemaJsonNs { actions?: Record<string, SchemaJsonAction>, commonTypes?: Record<string, unknown> }

/**
 * Finds generated per-tool actions (`<server>/<tool>` in call_tool) and their arguments type,
 * and every Mcp action's parents (the action groups it is a member of).
 */
function actionsOf (schemaText: string): { toolActions: Map<string, CedarType | undefined>, actionParents: Map<string, string[]> } {
  const out = new Map<string, CedarType | undefined>()
  const actionParents = new Map<string, string[]>()
  const answer = cedar.schemaToJson(schemaText)
  if (answer.type === 'failure') throw new PolicySetError(`schema: ${messages(answer.errors)}`)
  const ns = (answer.json as Record<string, SchemaJsonNs>).Mcp
  for (const [name, action] of Object.entries(ns?.actions ?? {})) {
    actionParents.set(name, (action.memberOf ?? []).map(m => m.id))
  }
  for (const [name, action] of Object.entries(ns?.actions ?? {})) {
    if (!name.includes('/') || !(action.memberOf ?? []).some(m => m.id === 'call_tool')) continue
    let ctx = action.appliesTo?.context as { type?: string, attributes?: Record<string, unknown> } | undefined
    if (ctx !== undefined && ctx.type !== 'Record' && typeof ctx.type === 'string') {
      ctx = ns?.commonTypes?.[ctx.type] as typeof ctx
    }
    out.set(name, normaliseType(ctx?.attributes?.arguments))
  }
  return { toolActions: out, actionParents }
}

/**
 * Validates (strict) and pre-parses a policy source; throws PolicySetError with the validator's words.
 * `preparse: false` (a set tried once, such as the console playground's edited text) keeps the
 * set out of the Wasm instance: its decisions pass the schema and policy text with each call.
 */
export function compilePolicySet (source: PolicySource, options: { preparse?: boolean } = {}): CompiledPolicySet {
  for (const f of source.files) {
    const problem = policyTextProblem(f.text)
    if (problem !== undefined) throw new PolicySetError(`${f.file}: ${problem}`)
  }
  const schemaProblem = policyTextProblem(source.schemaText)
  if (schemaProblem !== undefined) throw new PolicySetError(`schema: ${schemaProblem}`)
  let texts: Record<string, string>, advice: Map<string, string>, approvals: Map<string, string>, json: unknown[]
  let check: ReturnType<typeof CedarWasm.checkParseSchema>
  let validation: ReturnType<typeof CedarWasm.validate>
  try {
    check = cedar.checkParseSchema(source.schemaText)
    if (check.type === 'failure') throw new PolicySetError(`schema: ${messages(check.errors)}`)
    ;({ texts, advice, approvals, json } = splitPolicies(source.files))
    validation = cedar.validate({ schema: source.schemaText, policies: { staticPolicies: texts }, validationSettings: { mode: 'strict' } })
  } catch (err) {
    if (err instanceof PolicySetError) throw err
    // Cedar answers its own errors as values: a throw is the Wasm instance failing (a stack
    // overflow leaves it unusable). Every engine of the process uses it: replace it now.
    replaceCedarInstance(`Cedar threw while compiling a policy set: ${(err as Error).message}`)
    throw new PolicySetError(`Cedar could not compile this text (${(err as Error).message})`)
  }
  if (validation.type === 'failure') throw new PolicySetError(messages(validation.errors))
  if (validation.validationErrors.length > 0) {
    throw new PolicySetError(validation.validationErrors.map(e => `policy "${e.policyId}": ${messages([e.error])}`).join('; '))
  }
  const hash = createHash('sha256').update(source.schemaText)
  for (const id of Object.keys(texts).sort()) hash.update('\0').update(id).update('\0').update(texts[id]!)
  const version = hash.digest('hex').slice(0, 16)
  const schemaName = `schema-${version}`
  const policySetId = `policies-${version}`
  const entry: Preparsed = { schemaName, schemaText: source.schemaText, policySetId, texts }
  const preparse = options.preparse ?? true
  if (preparse) {
    preparseInto(cedar, entry)
    preparsed.set(version, entry)
  }
  const { toolActions, actionParents } = actionsOf(source.schemaText)
  return Object.freeze({
    version,
    policyIds: Object.keys(texts).sort(),
    texts: new Map(Object.entries(texts)),
    ...(preparse ? {} : { stateless: { schemaText: source.schemaText, texts } }),
    advice,
    approvals,
    toolActions,
    reads: analysePolicies(json as Parameters<typeof analysePolicies>[0], actionParents),
    decisions: new BoundedCache<Decision>(DECISION_CACHE_ENTRIES),
    schemaName,
    policySetId,
    warnings: validation.validationWarnings.map(w => `policy "${w.policyId}": ${w.error.message}`)
  })
}

const uid = (type: string, id: string) => ({ type, id })

/** The entity ids of a request, as Cedar sees them. */
export function requestEntities (r: AuthzRequest): { principal: { type: string, id: string }, resource: { type: string, id: string }, entities: CedarWasm.EntityJson[] } {
  const id = r.identity
  const server = uid('Mcp::Server', r.server.name)
  const principal = uid('Mcp::Agent', id.agentId)
  const entities: CedarWasm.EntityJson[] = [
    {
      uid: principal,
      attrs: { userId: id.userId ?? '', department: id.department ?? '', roles: [...id.roles], scopes: [...id.scopes], issuer: id.issuer },
      parents: id.roles.map(role => uid('Mcp::Role', role))
    },
    { uid: server, attrs: {}, parents: [] }
  ]
  let resource = server
  if (r.action === 'call_tool') {
    const name = r.tool ?? ''
    const declared = r.server.tools[name] ?? {}
    resource = uid('Mcp::Tool', `${r.server.name}/${name}`)
    entities.push({
      uid: resource,
      attrs: {
        name,
        server: r.server.name,
        sensitivity: declared.sensitivity ?? r.server.defaultSensitivity,
        readOnly: declared.readOnly ?? false,
        destructive: declared.destructive ?? false
      },
      parents: [server]
    })
  } else if (r.action === 'read_resource') {
    resource = uid('Mcp::Resource', `${r.server.name}/${r.uri ?? ''}`)
    entities.push({ uid: resource, attrs: { uri: r.uri ?? '', server: r.server.name }, parents: [server] })
  } else if (r.action === 'get_prompt') {
    resource = uid('Mcp::Prompt', `${r.server.name}/${r.prompt ?? ''}`)
    entities.push({ uid: resource, attrs: { name: r.prompt ?? '', server: r.server.name }, parents: [server] })
  }
  return { principal, resource, entities }
}

/** Every attribute of the principal entity, once per Identity object. */
const principalKeys = new WeakMap<Identity, string>()
function principalKey (id: Identity): string {
  let key = principalKeys.get(id)
  if (key === undefined) {
    key = JSON.stringify([id.agentId, id.userId, id.department, id.roles, id.scopes, id.issuer])
    principalKeys.set(id, key)
  }
  return key
}

/** The resource entity as a key part; a tool's id is left out when nothing in the set can tell it apart. */
function resourceKey (r: AuthzRequest, reads: ActionReads, set: CompiledPolicySet): unknown[] {
  const server = r.server.name
  switch (r.action) {
    case 'call_tool': {
      const name = r.tool ?? ''
      const declared = r.server.tools[name] ?? {}
      const byId = reads.resourceId || set.reads.literals.has(`Mcp::Tool::${server}/${name}`)
      return ['tool', server, byId ? name : null, declared.sensitivity ?? r.server.defaultSensitivity, declared.readOnly ?? false, declared.destructive ?? false]
    }
    case 'read_resource': return ['resource', server, r.uri ?? '']
    case 'get_prompt': return ['prompt', server, r.prompt ?? '']
    case 'connect': return ['server', server]
  }
}

/** The scope a delegated token needs for a request: tool:<name>, resource:<uri> or prompt:<name>. */
export function delegatedScope (r: Pick<AuthzRequest, 'action' | 'tool' | 'uri' | 'prompt' | 'method'>): string {
  switch (r.action) {
    case 'call_tool': return `tool:${r.tool ?? ''}`
    case 'read_resource': return `resource:${r.uri ?? ''}`
    case 'get_prompt': return `prompt:${r.prompt ?? ''}`
    case 'connect': return `mcp:${r.method}`
  }
}

function describe (r: AuthzRequest): string {
  switch (r.action) {
    case 'call_tool': return `call tool ${r.server.name}/${r.tool ?? ''}`
    case 'read_resource': return `read resource ${r.uri ?? ''} of ${r.server.name}`
    case 'get_prompt': return `get prompt ${r.prompt ?? ''} of ${r.server.name}`
    case 'connect': return `${r.method} on ${r.server.name}`
  }
}

/**
 * One call into Cedar with a pre-parsed set: a decision (allow, or deny with `whyDenied` as its
 * reason when no advice says why), or an `error` decision for anything that failed. The Wasm
 * instance is replaced when the call throws.
 */
function evaluate (
  set: CompiledPolicySet,
  base: { decisionId: string, policyVersion: string },
  call: Pick<CedarWasm.StatefulAuthorizationCall, 'principal' | 'action' | 'resource' | 'context' | 'entities'>,
  whyDenied: (policies: readonly string[]) => string,
  refusedWhat: string
): Decision {
  const fail = (error: string): Decision => ({ ...base, outcome: 'error', allowed: false, policies: [], advice: [], errors: [error], reason: ENGINE_ERROR_REASON })
  if (!health.healthy && (Date.now() - health.lastAttempt < 1000 || !replaceCedarInstance(health.lastError ?? 'unhealthy'))) {
    return fail(`the Cedar engine is unavailable: ${health.lastError ?? ''}`)
  }
  let answer: ReturnType<typeof CedarWasm.statefulIsAuthorized>
  try {
    answer = set.stateless !== undefined
      ? cedar.isAuthorized({ ...call, schema: set.stateless.schemaText, policies: { staticPolicies: set.stateless.texts }, validateRequest: true })
      : cedar.statefulIsAuthorized({ ...call, preparsedSchemaName: set.schemaName, preparsedPolicySetId: set.policySetId, validateRequest: true })
  } catch (err) {
    // Cedar answers its own errors as values; a throw is the instance itself failing.
    const message = (err as Error).message
    replaceCedarInstance(`Cedar threw: ${message}`)
    return fail(`the Cedar engine failed (${message}); this ${refusedWhat} is denied`)
  }
  if (answer.type !== 'success') return fail(messages(answer.errors))
  const { decision, diagnostics } = answer.response
  if (diagnostics.errors.length > 0) {
    return fail(diagnostics.errors.map(e => `policy "${e.policyId}": ${e.error.message}`).join('; '))
  }
  const policies = Object.freeze([...diagnostics.reason].sort())
  const advice = Object.freeze(policies.map(id => set.advice.get(id)).filter((a): a is string => a !== undefined))
  switch (decision) {
    case 'allow':
      return { ...base, outcome: 'allow', allowed: true, policies, advice, errors: [], reason: `allowed by ${policies.join(', ')}` }
    case 'deny':
      return {
        ...base,
        outcome: 'deny',
        allowed: false,
        policies,
        advice,
        errors: [],
        reason: advice.length > 0 ? advice.join('; ') : policies.length > 0 ? `forbidden by ${policies.join(', ')}` : whyDenied(policies)
      }
    default: {
      const never: never = decision
      return fail(`unexpected decision ${String(never)}`)
    }
  }
}

/**
 * Decides requests against the current policy set. `swap` replaces the set atomically:
 * a decision uses one set from start to end.
 */
export class CedarEngine {
  #set: CompiledPolicySet
  readonly timezone: string
  readonly #remember: boolean

  /** `options.cache: false` decides every request in Cedar (the cache's property test compares against it). */
  constructor (set: CompiledPolicySet, timezone: string, options: { cache?: boolean } = {}) {
    this.#set = set
    this.timezone = timezone
    this.#remember = options.cache ?? true
  }

  get policySet (): CompiledPolicySet { return this.#set }
  get version (): string { return this.#set.version }

  swap (set: CompiledPolicySet): void { this.#set = set }

  /** The local hour and weekday of the live clock change on minute boundaries: worked out once a minute. */
  #clock = { minute: -1, localHour: 0, localWeekday: 0 }
  #localTime (now: Date, live: boolean): { localHour: number, localWeekday: number } {
    if (!live) return localTime(now, this.timezone)
    const minute = Math.floor(now.getTime() / 60_000)
    if (minute !== this.#clock.minute) this.#clock = { minute, ...localTime(now, this.timezone) }
    return this.#clock
  }

  /**
   * The key of a remembered decision: the action, the method, the whole principal, the resource
   * (by id, or by its attributes alone when no policy can tell tools apart by id), and the
   * context fields the action's policies read. Undefined when the request is not to be
   * remembered (its arguments, which the policies read, are too long to be a key).
   */
  #cacheKey (r: AuthzRequest, action: string, reads: ActionReads, set: CompiledPolicySet, now: Date): string | undefined {
    const parts: unknown[] = [action, r.method, principalKey(r.identity), resourceKey(r, reads, set)]
    if (reads.context.has('localHour') || reads.context.has('localWeekday') || reads.context.has('timezone')) {
      const { localHour, localWeekday } = this.#localTime(now, r.now === undefined)
      parts.push(this.timezone, localHour, localWeekday)
    }
    if (reads.context.has('approval')) {
      const a = r.approval ?? NOT_GRANTED
      parts.push(a.granted, a.approver, a.ageSeconds)
    }
    if (reads.context.has('arguments')) {
      const args = r.arguments === undefined ? null : JSON.stringify(r.arguments)
      if (args !== null && args.length > MAX_ARGUMENTS_KEY) return undefined
      parts.push(args)
    }
    const key = JSON.stringify(parts)
    // Short keys are JSON arrays ("[…"); a digest starts with "#", so the two never meet.
    return key.length <= MAX_KEY_CHARS ? key : `#${createHash('sha256').update(key).digest('base64')}`
  }

  /**
   * A deny that only @approval policies made is a call waiting for a person when the same call,
   * approved, would be allowed (another forbid, or no permit, would still deny it: no approval).
   */
  #withApproval (made: Decision & { outcome: 'deny' }, r: AuthzRequest, set: CompiledPolicySet): Decision {
    if (set.approvals.size === 0 || made.policies.length === 0 || !made.policies.every(id => set.approvals.has(id))) return made
    const probe = this.authorize({ ...r, approval: GRANTED_PROBE })
    if (!probe.allowed) return made
    return { ...made, approval: Object.freeze({ policies: made.policies, approvers: Object.freeze(made.policies.map(id => set.approvals.get(id)!)) }) }
  }

  /**
   * Whether a person may approve a call of a tool (`Mcp::Action::"approve"`): decided in Cedar
   * every time, never remembered.
   */
  authorizeApproval (r: ApproveRequest): Decision {
    const set = this.#set
    const decisionId = randomUUID()
    const base = { decisionId, policyVersion: set.version }
    const fail = (error: string): Decision => ({ ...base, outcome: 'error', allowed: false, policies: [], advice: [], errors: [error], reason: ENGINE_ERROR_REASON })
    try {
      const now = r.now ?? new Date()
      const { localHour, localWeekday } = localTime(now, this.timezone)
      const a = r.approver
      const approver = uid('Mcp::Approver', a.userId ?? a.agentId)
      const { resource, entities } = requestEntities({ identity: a, server: r.server, action: 'call_tool', method: 'tools/call', tool: r.tool })
      entities[0] = {
        uid: approver,
        attrs: { userId: a.userId ?? a.agentId, department: a.department ?? '', roles: [...a.roles], issuer: a.issuer },
        parents: a.roles.map(role => uid('Mcp::Role', role))
      }
      return evaluate(set, base, {
        principal: approver,
        action: uid('Mcp::Action', 'approve'),
        resource,
        context: {
          now: { __extn: { fn: 'datetime', arg: now.toISOString() } },
          localHour,
          localWeekday,
          timezone: this.timezone,
          requester: { ...r.requester },
          policies: [...r.policies]
        },
        entities
      }, () => `no policy lets ${a.userId ?? a.agentId} approve calls of ${r.server.name}/${r.tool}`, 'approval')
    } catch (err) {
      return fail((err as Error).message)
    }
  }

  /**
   * Whether a person may use the operator console for `page` (`Mcp::Action::"view_console"`,
   * `operate_console`, `approve_console` on `Mcp::Console::"console"`): decided in Cedar every
   * time, never remembered.
   */
  authorizeConsole (r: ConsoleRequest): Decision {
    const set = this.#set
    const base = { decisionId: randomUUID(), policyVersion: set.version }
    try {
      const now = r.now ?? new Date()
      const { localHour, localWeekday } = localTime(now, this.timezone)
      const p = r.person
      const person = uid('Mcp::Operator', p.userId ?? p.agentId)
      return evaluate(set, base, {
        principal: person,
        action: uid('Mcp::Action', r.action),
        resource: uid('Mcp::Console', 'console'),
        context: {
          now: { __extn: { fn: 'datetime', arg: now.toISOString() } },
          localHour,
          localWeekday,
          timezone: this.timezone,
          page: r.page
        },
        entities: [
          { uid: person, attrs: { userId: p.userId ?? p.agentId, department: p.department ?? '', roles: [...p.roles], issuer: p.issuer }, parents: p.roles.map(role => uid('Mcp::Role', role)) },
          { uid: uid('Mcp::Console', 'console'), attrs: {}, parents: [] }
        ]
      }, () => `no policy lets ${p.userId ?? p.agentId} ${r.action.replace('_console', '')} the console`, 'console request')
    } catch (err) {
      return { ...base, outcome: 'error', allowed: false, policies: [], advice: [], errors: [(err as Error).message], reason: ENGINE_ERROR_REASON }
    }
  }

  /** Decides one request. Never throws: failures are `error` decisions. */
  authorize (r: AuthzRequest): Decision {
    const set = this.#set
    const decisionId = randomUUID()
    const base = { decisionId, policyVersion: set.version }
    const fail = (error: string): Decision => ({ ...base, outcome: 'error', allowed: false, policies: [], advice: [], errors: [error], reason: ENGINE_ERROR_REASON })
    // A token from the gateway's own token exchange is limited to its granted scope:
    // Cedar can only narrow that further.
    if (r.identity.delegated && r.action !== 'connect') {
      const needed = delegatedScope(r)
      if (!r.identity.scopes.includes(needed)) {
        return { ...base, outcome: 'deny', allowed: false, policies: [], advice: [], errors: [], reason: `the token's scope does not include ${needed}` }
      }
    }
    // Text that is not well-formed Unicode never reaches the Wasm instance (it fails there, and
    // cedar-wasm 4.x leaks when it does). Messages (method, arguments) and token claims (the
    // identity) are checked once, at parse; the names below can also come from an upstream's
    // lists (the filter decides each listed tool, resource and prompt), so they are checked here.
    if ((r.tool !== undefined && !isWellFormedText(r.tool)) || (r.uri !== undefined && !isWellFormedText(r.uri)) || (r.prompt !== undefined && !isWellFormedText(r.prompt))) {
      return fail('the request holds text that is not well-formed Unicode')
    }
    try {
      const now = r.now ?? new Date()
      let action = r.action as string
      let cedarArguments: CedarWasm.CedarValueJson | undefined
      if (r.action === 'call_tool') {
        const key = `${r.server.name}/${r.tool ?? ''}`
        if (set.toolActions.has(key)) {
          action = key
          const argsType = set.toolActions.get(key)
          if (argsType !== undefined && r.arguments !== undefined) {
            try {
              cedarArguments = toCedarValue(r.arguments, argsType) as CedarWasm.CedarValueJson
            } catch (err) {
              if (!(err instanceof ArgumentMismatchError)) throw err
              return { ...base, outcome: 'deny', allowed: false, policies: [], advice: [], errors: [], reason: `${err.message} (the tool's declared inputSchema)` }
            }
          }
        }
      }
      // A decision this set made before on the same inputs (the ones its policies read).
      const reads = set.reads.actions.get(action)
      const cacheKey = this.#remember && reads?.cacheable === true ? this.#cacheKey(r, action, reads, set, now) : undefined
      if (cacheKey !== undefined) {
        const hit = set.decisions.get(cacheKey)
        // Only a deny that no policy explains names the request in its reason.
        if (hit !== undefined) return hit.outcome === 'deny' && hit.policies.length === 0 ? { ...hit, decisionId, reason: `no policy permits ${describe(r)}` } : { ...hit, decisionId }
      }
      const { localHour, localWeekday } = this.#localTime(now, r.now === undefined)
      const context: Record<string, CedarWasm.CedarValueJson> = {
        now: { __extn: { fn: 'datetime', arg: now.toISOString() } },
        localHour,
        localWeekday,
        timezone: this.timezone,
        method: r.method,
        approval: { ...(r.approval ?? NOT_GRANTED) }
      }
      if (cedarArguments !== undefined) context.arguments = cedarArguments
      const { principal, resource, entities } = requestEntities(r)
      let made = evaluate(set, base, { principal, action: uid('Mcp::Action', action), resource, context, entities }, () => `no policy permits ${describe(r)}`, 'request')
      if (made.outcome === 'error') return made
      // Errors are never remembered: the next request is decided afresh.
      // A deny no policy explains names the request in its reason; that is rebuilt on a hit, so
      // nothing the agent sent is kept with the remembered decision.
      if (made.outcome === 'deny' && r.approval?.granted !== true) made = this.#withApproval(made, r, set)
      if (cacheKey !== undefined) set.decisions.set(cacheKey, Object.freeze(made.outcome === 'deny' && made.policies.length === 0 ? { ...made, reason: '' } : made))
      return made
    } catch (err) {
      return fail((err as Error).message)
    }
  }
}
