/**
 * A decision explained for people: the lines `mcp-warden cedar explain` prints and the console's
 * policy playground shows, from one place.
 */
import { requestEntities, type AuthzRequest, type CedarEngine, type Decision } from './engine.js'
import { localTime } from './time.js'

export function explainLines (engine: CedarEngine, request: AuthzRequest, decision: Decision): string[] {
  const identity = request.identity
  const now = request.now ?? new Date()
  const { principal, resource } = requestEntities(request)
  const t = localTime(now, engine.timezone)
  const lines = [
    `decision: ${decision.outcome}`,
    `request: ${principal.type}::${JSON.stringify(principal.id)} ${request.action} ${resource.type}::${JSON.stringify(resource.id)}`,
    `agent: roles [${identity.roles.join(', ')}], department ${identity.department ?? '(none)'}, scopes [${identity.scopes.join(', ')}]`,
    `context: ${now.toISOString()} = ${String(t.localHour).padStart(2, '0')}h, weekday ${t.localWeekday} in ${engine.timezone}; method ${request.method}`,
    `determining policies: ${decision.policies.length > 0 ? decision.policies.join(', ') : '(none: no policy applies, so the default is deny)'}`
  ]
  for (const a of decision.advice) lines.push(`advice: ${a}`)
  if (decision.approval !== undefined) lines.push(`approval: the call waits for a person (${decision.approval.approvers.join('; ')}); approved, it is allowed once`)
  lines.push(`reason: ${decision.reason}`)
  for (const e of decision.errors) lines.push(`error: ${e}`)
  lines.push(`policy version: ${decision.policyVersion}`)
  return lines
}
