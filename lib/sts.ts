/**
 * The gateway as a Security Token Service (RFC 8693): exchanges an agent's token for a
 * narrower one — one resource (a server route of this gateway), a scope Cedar allows,
 * no longer-lived than the subject token — with an `act` claim for delegation.
 * Errors are RFC 6749 §5.2 / RFC 8693 §2.2.2 error codes.
 */
import type { GatewayConfig, UpstreamConfig } from './config.js'
import { resourceUrl } from './config.js'
import type { CedarEngine } from './cedar/engine.js'
import { audiences, checkTokenTimes, identityFromClaims, type Identity } from './identity.js'
import type { TokenMinter } from './tokens/minter.js'
import { parseScope } from './scope.js'
import { targetRequest } from './mcp-methods.js'
import { KeysUnavailableError } from './errors.js'

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange'
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token'
const ACCEPTED_TOKEN_TYPES = [ACCESS_TOKEN_TYPE, 'urn:ietf:params:oauth:token-type:jwt']

export type StsErrorCode = 'invalid_request' | 'invalid_grant' | 'invalid_target' | 'invalid_scope' | 'unsupported_grant_type'

export class StsError extends Error {
  override name = 'StsError'
  /** The verified subject, when the refusal came after it was verified (for the audit). */
  subject?: Identity
  // `error` is the OAuth error code (RFC 6749 §5.2), not a callback's error argument.
  // eslint-disable-next-line n/handle-callback-err
  constructor (readonly error: StsErrorCode, description: string) { super(description) }
}

export interface StsResponse {
  access_token: string
  issued_token_type: string
  token_type: 'Bearer'
  expires_in: number
  scope: string
}

export interface StsDeps {
  config: GatewayConfig
  verify: (token: string) => Promise<Record<string, unknown>>
  engine: CedarEngine
  minter: TokenMinter
}

type Params = Record<string, string | string[] | undefined>

function one (params: Params, name: string, required: boolean): string | undefined {
  const v = params[name]
  if (Array.isArray(v)) throw new StsError(name === 'resource' ? 'invalid_target' : 'invalid_request', `"${name}" may be given only once`)
  if (v === undefined || v === '') {
    if (required) throw new StsError('invalid_request', `"${name}" is required`)
    return undefined
  }
  return v
}

async function verifyToken (deps: StsDeps, token: string, which: string): Promise<{ claims: Record<string, unknown>, identity: Identity }> {
  let claims: Record<string, unknown>
  try {
    claims = await deps.verify(token)
  } catch (err) {
    // The issuer's keys could not be fetched: an outage, not the client's fault (no invalid_grant).
    if (err instanceof KeysUnavailableError) throw err
    throw new StsError('invalid_grant', `the ${which} is not valid: ${(err as Error).message.replace(/^Invalid token: /, '')}`)
  }
  const { config } = deps
  const accepted = [config.publicUrl, `${config.publicUrl}/oauth/token`, ...[...config.upstreams.keys()].map(n => resourceUrl(config, n))]
  if (!audiences(claims).some(a => accepted.includes(a))) {
    throw new StsError('invalid_grant', `the ${which}'s audience is not this gateway (${config.publicUrl})`)
  }
  try {
    checkTokenTimes(claims, config.identity)
    return { claims, identity: identityFromClaims(claims, config.identity, config.tokens.issuer) }
  } catch (err) {
    throw new StsError('invalid_grant', `the ${which} is not valid: ${(err as Error).message.replace(/^Invalid token: /, '')}`)
  }
}

/** Handles one token request; throws StsError. */
export async function exchangeToken (params: Params, deps: StsDeps, now = Date.now()): Promise<StsResponse> {
  const grant = one(params, 'grant_type', true)
  if (grant !== TOKEN_EXCHANGE_GRANT) throw new StsError('unsupported_grant_type', `only ${TOKEN_EXCHANGE_GRANT} is supported`)
  const subjectToken = one(params, 'subject_token', true)!
  const subjectType = one(params, 'subject_token_type', true)!
  if (!ACCEPTED_TOKEN_TYPES.includes(subjectType)) throw new StsError('invalid_request', `subject_token_type must be ${ACCESS_TOKEN_TYPE}`)
  const requestedType = one(params, 'requested_token_type', false)
  if (requestedType !== undefined && requestedType !== ACCESS_TOKEN_TYPE) throw new StsError('invalid_request', `requested_token_type must be ${ACCESS_TOKEN_TYPE}`)
  const actorToken = one(params, 'actor_token', false)
  const actorType = one(params, 'actor_token_type', actorToken !== undefined)
  if (actorToken === undefined && actorType !== undefined) throw new StsError('invalid_request', 'actor_token_type without actor_token')
  if (actorType !== undefined && !ACCEPTED_TOKEN_TYPES.includes(actorType)) throw new StsError('invalid_request', `actor_token_type must be ${ACCESS_TOKEN_TYPE}`)

  const { config } = deps
  const resource = one(params, 'resource', false) ?? one(params, 'audience', false)
  if (resource === undefined) throw new StsError('invalid_request', '"resource" is required: the server route the token is for')
  const server = [...config.upstreams.values()].find(u => resourceUrl(config, u.name) === resource)
  if (server === undefined) throw new StsError('invalid_target', `${resource} is not a resource of this gateway`)

  const scopeParam = one(params, 'scope', false)
  if (scopeParam === undefined) throw new StsError('invalid_scope', '"scope" is required, e.g. "tool:file_read"')
  let requested: string[]
  try {
    requested = parseScope(scopeParam)
  } catch (err) {
    throw new StsError('invalid_scope', `"scope" must be scope tokens separated by single spaces (RFC 6749 §3.3): ${(err as Error).message}`)
  }

  const subject = await verifyToken(deps, subjectToken, 'subject_token')
  try {
    return await exchangeFor(subject, actorToken, resource, server, requested, deps, now)
  } catch (err) {
    if (err instanceof StsError) err.subject = subject.identity
    throw err
  }
}

async function exchangeFor (subject: { claims: Record<string, unknown>, identity: Identity }, actorToken: string | undefined, resource: string, server: UpstreamConfig, requested: string[], deps: StsDeps, now: number): Promise<StsResponse> {
  const { config } = deps
  const actor = actorToken !== undefined ? await verifyToken(deps, actorToken, 'actor_token') : undefined

  // DESIGN §8a: a token for one server's resource only is exchanged for that resource only; a
  // token for the gateway itself (publicUrl, or its token endpoint) for any server resource.
  const subjectAudiences = audiences(subject.claims)
  const gatewayWide = subjectAudiences.includes(config.publicUrl) || subjectAudiences.includes(`${config.publicUrl}/oauth/token`)
  if (!gatewayWide && !subjectAudiences.includes(resource)) {
    throw new StsError('invalid_target', `the subject_token is not for ${resource}: a token for one server's resource may be exchanged for that resource only; a token whose audience is ${config.publicUrl} may be exchanged for any server of this gateway`)
  }

  const remaining = subject.identity.expiresAt - Math.floor(now / 1000)
  if (remaining <= 0) throw new StsError('invalid_grant', 'the subject_token has expired')

  for (const scope of requested) {
    const m = /^(tool|resource|prompt):(.+)$/.exec(scope)
    if (m === null) throw new StsError('invalid_scope', `"${scope}" is not a scope of this gateway (tool:<name>, resource:<uri>, prompt:<name>)`)
    const [, kind, name] = m as unknown as [string, 'tool' | 'resource' | 'prompt', string]
    const decision = deps.engine.authorize({
      identity: subject.identity,
      server,
      ...targetRequest(kind, name)
    })
    if (!decision.allowed) throw new StsError('invalid_scope', `${scope} on ${server.name} is not allowed for this subject: ${decision.reason}`)
  }

  const names = config.identity.claims
  const ttl = Math.min(config.tokens.exchangeTtlSeconds, remaining)
  const id = subject.identity
  const previousAct = subject.claims.act
  const { token } = deps.minter.mintAccessToken({
    sub: id.agentId,
    aud: resource,
    // The issuer of the agent's own token, so the exchanged token spends the same budget.
    subject_iss: id.subjectIssuer,
    scope: requested.join(' '),
    [names.agentId]: id.agentId,
    ...(id.userId !== null ? { [names.userId]: id.userId } : {}),
    ...(id.roles.length > 0 ? { [names.roles]: [...id.roles] } : {}),
    ...(id.department !== null ? { [names.department]: id.department } : {}),
    ...(actor !== undefined
      ? { act: { sub: actor.identity.agentId, ...(previousAct !== null && typeof previousAct === 'object' ? { act: previousAct } : {}) } }
      : previousAct !== undefined ? { act: previousAct } : {})
  }, ttl, now)
  return { access_token: token, issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer', expires_in: ttl, scope: requested.join(' ') }
}
