/**
 * What a policy set reads, learnt from Cedar's JSON form of its policies, so that a decision
 * can be remembered under a key made of exactly those inputs (DecisionCache, engine.ts).
 *
 * For each action of the schema, the policies that can apply to it (by their action scope and
 * the schema's action hierarchy) are walked, and the analysis records:
 * - which `context` fields they read (`now`, `localHour`, `localWeekday`, `method`,
 *   `arguments`, …), or that they use `context` whole (then nothing is cached for the action);
 * - whether anything depends on the resource's own id: a policy uses `resource` other than
 *   through an attribute other than `name`, an `is` test, or `==` / `in` against literal
 *   entities. Entity literals anywhere in the set are collected: a resource whose uid is one of
 *   them is always keyed by its id.
 * The analysis only ever makes keys longer than needed, never shorter: an expression it does
 * not know is treated as reading everything it contains.
 */

/** Context fields the engine fills; any other read makes the action uncacheable. */
export const CONTEXT_FIELDS = ['now', 'localHour', 'localWeekday', 'timezone', 'method', 'approval', 'arguments'] as const
export type ContextField = typeof CONTEXT_FIELDS[number]

export interface ActionReads {
  /** False when a decision for this action must never be remembered (reads `now`, `context` whole, or an unknown field). */
  readonly cacheable: boolean
  readonly context: ReadonlySet<ContextField>
  /** True when some policy depends on the resource's id (or name) beyond literal comparisons. */
  readonly resourceId: boolean
}

export interface PolicySetReads {
  /** By action id (`call_tool`, `db/database_query`, …); an action missing here is not cacheable. */
  readonly actions: ReadonlyMap<string, ActionReads>
  /** `type::id` of every entity literal in the policies (scopes and conditions). */
  readonly literals: ReadonlySet<string>
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json }
type Obj = Record<string, Json>
interface EntityRef { type: string, id: string }

interface Acc { context: Set<string>, contextWhole: boolean, resourceId: boolean, literals: Set<string> }

const isObj = (x: Json | undefined): x is Obj => typeof x === 'object' && x !== null && !Array.isArray(x)
const isVar = (x: Json | undefined, name: string): boolean => isObj(x) && x.Var === name && Object.keys(x).length === 1
const uidKey = (e: EntityRef): string => `${e.type}::${e.id}`

/** A literal entity or a set of them: comparing the resource with one reads no attribute. */
function isEntityLiteral (x: Json | undefined): boolean {
  if (!isObj(x)) return false
  if (isObj(x.Value) && isObj(x.Value.__entity)) return true
  if (Array.isArray(x.Set)) return x.Set.every(isEntityLiteral)
  return false
}

/** Collects entity literals (`{"__entity": …}` and `{"type","id"}` in scopes) anywhere in a value. */
function collectLiterals (x: Json | undefined, acc: Set<string>): void {
  if (Array.isArray(x)) { for (const v of x) collectLiterals(v, acc); return }
  if (!isObj(x)) return
  const e = x.__entity
  if (isObj(e) && typeof e.type === 'string' && typeof e.id === 'string') acc.add(uidKey({ type: e.type, id: e.id }))
  for (const v of Object.values(x)) collectLiterals(v, acc)
}

/** Entity literals of a scope constraint: `{"op","entity"}`, `{"op":"in","entities":[…]}`, `{"op":"is","in":{"entity"}}`. */
function scopeLiterals (scope: Json | undefined, acc: Set<string>): void {
  if (!isObj(scope)) return
  for (const e of [scope.entity, ...(Array.isArray(scope.entities) ? scope.entities : []), isObj(scope.in) ? scope.in.entity : undefined]) {
    if (isObj(e) && typeof e.type === 'string' && typeof e.id === 'string') acc.add(uidKey({ type: e.type, id: e.id }))
  }
  // Anything else a future scope form holds.
  collectLiterals(scope, acc)
}

/** Walks one condition expression. */
function walk (x: Json | undefined, acc: Acc): void {
  if (Array.isArray(x)) { for (const v of x) walk(v, acc); return }
  if (!isObj(x)) return
  const keys = Object.keys(x)
  if (keys.length === 1) {
    const k = keys[0]!
    const v = x[k]
    if (k === 'Var') {
      // A variable used whole (passed to a function, compared with another expression, …).
      if (v === 'context') acc.contextWhole = true
      else if (v === 'resource') acc.resourceId = true
      return
    }
    if (k === 'Value') { collectLiterals(v, acc.literals); return }
    if ((k === '.' || k === 'has') && isObj(v) && typeof v.attr === 'string') {
      if (isVar(v.left, 'context')) { acc.context.add(v.attr); return }
      if (isVar(v.left, 'resource')) { if (v.attr === 'name') acc.resourceId = true; return }
      walk(v.left, acc)
      return
    }
    if (k === 'is' && isObj(v) && isVar(v.left, 'resource')) { walk(v.in, acc); return }
    if ((k === '==' || k === '!=' || k === 'in') && isObj(v)) {
      if ((isVar(v.left, 'resource') && isEntityLiteral(v.right)) || (isVar(v.right, 'resource') && isEntityLiteral(v.left))) {
        collectLiterals(v, acc.literals)
        return
      }
    }
  }
  for (const v of Object.values(x)) walk(v, acc)
}

/** The actions a policy's action scope can match: undefined for all. */
function scopeActions (scope: Json | undefined): EntityRef[] | undefined {
  if (!isObj(scope) || scope.op === 'All') return undefined
  const one = scope.entity
  if (isObj(one) && typeof one.type === 'string' && typeof one.id === 'string') return [{ type: one.type, id: one.id }]
  if (Array.isArray(scope.entities)) return scope.entities.filter(isObj).map(e => ({ type: String(e.type), id: String(e.id) }))
  return undefined
}

/**
 * Analyses policies (Cedar JSON, as `policyToJson` gives them) against the schema's actions:
 * `actionParents` maps each action id to the ids of the action groups it is a member of.
 */
export function analysePolicies (policies: readonly Json[], actionParents: ReadonlyMap<string, readonly string[]>): PolicySetReads {
  const literals = new Set<string>()
  const perPolicy: Array<{ actions: Set<string> | undefined, acc: Acc }> = []
  for (const p of policies) {
    if (!isObj(p)) continue
    const acc: Acc = { context: new Set(), contextWhole: false, resourceId: false, literals }
    scopeLiterals(p.principal, literals)
    scopeLiterals(p.resource, literals)
    if (p.resource !== undefined && !isObj(p.resource)) acc.resourceId = true
    for (const c of Array.isArray(p.conditions) ? p.conditions : []) if (isObj(c)) walk(c.body, acc)
    const scoped = scopeActions(p.action)
    perPolicy.push({ actions: scoped === undefined ? undefined : new Set(scoped.filter(a => a.type.endsWith('Action')).map(a => a.id)), acc })
  }
  // An action's ancestors, itself included (the hierarchy is acyclic; Cedar's validator checks).
  const ancestors = (id: string, seen = new Set<string>()): Set<string> => {
    if (seen.has(id)) return seen
    seen.add(id)
    for (const parent of actionParents.get(id) ?? []) ancestors(parent, seen)
    return seen
  }
  const actions = new Map<string, ActionReads>()
  for (const action of actionParents.keys()) {
    const mine = ancestors(action)
    const context = new Set<string>()
    let whole = false
    let resourceId = false
    for (const { actions: scoped, acc } of perPolicy) {
      if (scoped !== undefined && ![...scoped].some(a => mine.has(a))) continue
      for (const f of acc.context) context.add(f)
      whole ||= acc.contextWhole
      resourceId ||= acc.resourceId
    }
    const known = [...context].every(f => (CONTEXT_FIELDS as readonly string[]).includes(f))
    actions.set(action, {
      cacheable: !whole && known && !context.has('now'),
      context: new Set([...context].filter((f): f is ContextField => (CONTEXT_FIELDS as readonly string[]).includes(f))),
      resourceId
    })
  }
  return { actions, literals }
}
