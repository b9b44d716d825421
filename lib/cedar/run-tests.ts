/**
 * Runs Cedar test files in the Cedar CLI `run-tests` format against a policy set:
 * `[{ name?, request: { principal, action, resource, context }, entities, decision,
 * reason: [policy ids that must be among the determining ones], num_errors }]`.
 * Policies are named by their @id, as the gateway names them.
 */
import * as cedar from '@cedar-policy/cedar-wasm/nodejs'
import { compilePolicySet, splitPolicies, type PolicySource } from './engine.js'

export interface CedarTestCase {
  name?: string
  request: { principal: string, action: string, resource: string, context?: Record<string, cedar.CedarValueJson> }
  entities: cedar.EntityJson[]
  decision: 'allow' | 'deny'
  reason: string[]
  num_errors: number
}

export interface CedarTestResult {
  readonly name: string
  readonly ok: boolean
  /** Why it failed; empty when it passed. */
  readonly message: string
}

/** `Mcp::Agent::"bot"` → { type: 'Mcp::Agent', id: 'bot' } */
export function parseEntityUid (text: string): { type: string, id: string } {
  const m = /^(.+?)::("(?:[^"\\]|\\.)*")$/.exec(text.trim())
  if (m === null) throw new Error(`"${text}" is not an entity uid like Type::"id"`)
  return { type: m[1]!, id: JSON.parse(m[2]!) as string }
}

function check (c: unknown, i: number): asserts c is CedarTestCase {
  const t = c as Partial<CedarTestCase> | null
  const where = `case ${i + 1}${typeof t?.name === 'string' ? ` (${t.name})` : ''}`
  if (t === null || typeof t !== 'object') throw new Error(`${where}: not an object`)
  if (typeof t.request !== 'object' || t.request === null) throw new Error(`${where}: "request" is required`)
  for (const k of ['principal', 'action', 'resource'] as const) {
    if (typeof t.request[k] !== 'string') throw new Error(`${where}: request.${k} must be a string like Type::"id"`)
  }
  if (!Array.isArray(t.entities)) throw new Error(`${where}: "entities" must be an array`)
  if (t.decision !== 'allow' && t.decision !== 'deny') throw new Error(`${where}: "decision" must be "allow" or "deny"`)
  if (!Array.isArray(t.reason)) throw new Error(`${where}: "reason" must be an array of policy ids`)
  if (typeof t.num_errors !== 'number') throw new Error(`${where}: "num_errors" must be a number`)
}

/** Validates the policy set, then runs each case. Throws when the policy set or a case is malformed. */
export function runCedarTests (source: PolicySource, cases: unknown[]): CedarTestResult[] {
  compilePolicySet(source)
  const { texts } = splitPolicies(source.files)
  return cases.map((c, i) => {
    check(c, i)
    const name = c.name ?? `case ${i + 1}`
    const answer = cedar.isAuthorized({
      principal: parseEntityUid(c.request.principal),
      action: parseEntityUid(c.request.action),
      resource: parseEntityUid(c.request.resource),
      context: c.request.context ?? {},
      entities: c.entities,
      policies: { staticPolicies: texts },
      schema: source.schemaText,
      validateRequest: true
    })
    if (answer.type === 'failure') return { name, ok: false, message: `error: ${answer.errors.map(e => e.message).join('; ')}` }
    const { decision, diagnostics } = answer.response
    if (decision !== c.decision) return { name, ok: false, message: `expected ${c.decision}, got ${decision}` }
    const problems: string[] = []
    const missing = c.reason.filter(r => !diagnostics.reason.includes(r))
    if (missing.length > 0) problems.push(`missing reason(s): ${missing.map(r => `\`${r}\``).join(', ')} (determining: ${diagnostics.reason.join(', ') || 'none'})`)
    if (diagnostics.errors.length !== c.num_errors) {
      problems.push(`expected ${c.num_errors} error(s), but got ${diagnostics.errors.length}${diagnostics.errors.length > 0 ? `: ${diagnostics.errors.map(e => e.error.message).join(', ')}` : ''}`)
    }
    return { name, ok: problems.length === 0, message: problems.join('; ') }
  })
}
