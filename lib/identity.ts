/**
 * Agent identity: from verified JWT claims to the principal the gateway decides on,
 * and the issuer key sources (a PEM public key or a remote JWKS).
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import { createDecoder, createVerifier, type Algorithm } from 'fast-jwt'
import type { IdentityConfig } from './config.js'
import { KeysUnavailableError, TokenInvalidError } from './errors.js'
import { scopesOfClaims } from './scope.js'
import { jsonValueProblem } from './json-text.js'
import { NoMatchingKeyError, remoteJwks } from './jwks.js'

/** The header of in-process requests; never forwarded upstream (the proxy forwards an allow-list). */
export const INTERNAL_IDENTITY_HEADER = 'x-mcp-warden-internal'

export interface Identity {
  /** `agentId` claim (name configurable), falling back to `sub`. */
  readonly agentId: string
  readonly userId: string | null
  /** `role` and `roles` together, without duplicates. */
  readonly roles: readonly string[]
  readonly department: string | null
  /** `scope` (space-separated) and `scp` (array or string), read by the one scope parser (lib/scope.ts). */
  readonly scopes: readonly string[]
  readonly issuer: string
  /**
   * The issuer of the agent's own token: for a token from the gateway's token exchange, the
   * issuer of the token it was exchanged for (so both spend one rate-limit budget).
   */
  readonly subjectIssuer: string
  readonly subject: string | null
  /** Seconds since the epoch, from `exp`. */
  readonly expiresAt: number
  /**
   * True for an access token issued by the gateway's own token exchange: it is limited to
   * its `scopes` (tool:…, resource:…, prompt:…) on its one resource.
   */
  readonly delegated: boolean
  /** The acting party of a delegated token (`act.sub`), if any. */
  readonly actor: string | null
  /** The verified claims. Never logged. */
  readonly claims: Readonly<Record<string, unknown>>
}

const str = (v: unknown): string | null => typeof v === 'string' && v !== '' ? v : null

function strings (v: unknown): string[] {
  if (typeof v === 'string') return v.split(/\s+/).filter(s => s !== '')
  if (Array.isArray(v)) return v.filter((s): s is string => typeof s === 'string' && s !== '')
  return []
}

/** Maps verified claims to an Identity; throws TokenInvalidError when no agent id can be found. */
export function identityFromClaims (claims: Record<string, unknown>, config: IdentityConfig, gatewayIssuer?: string): Identity {
  const problem = jsonValueProblem(claims, 32)
  if (problem !== null) throw new TokenInvalidError(`the token's claims are not usable: ${problem.message}`)
  const names = config.claims
  const agentId = str(claims[names.agentId]) ?? str(claims.sub)
  if (agentId === null) throw new TokenInvalidError(`the token has neither a "${names.agentId}" nor a "sub" claim naming the agent`)
  const roles = [...new Set([...strings(claims[names.role]), ...strings(claims[names.roles])])]
  let scopes: string[]
  try {
    scopes = scopesOfClaims(claims.scope, claims.scp)
  } catch (err) {
    throw new TokenInvalidError(`${(err as Error).message} (RFC 6749 §3.3 scope syntax)`)
  }
  const delegated = gatewayIssuer !== undefined && claims.iss === gatewayIssuer && gatewayIssuer !== config.issuer
  return Object.freeze({
    agentId,
    userId: str(claims[names.userId]),
    roles,
    department: str(claims[names.department]),
    scopes,
    issuer: String(claims.iss),
    subjectIssuer: delegated ? str(claims.subject_iss) ?? String(claims.iss) : String(claims.iss),
    subject: str(claims.sub),
    expiresAt: typeof claims.exp === 'number' ? claims.exp : 0,
    delegated,
    actor: claims.act !== null && typeof claims.act === 'object' ? str((claims.act as Record<string, unknown>).sub) : null,
    claims
  })
}

/**
 * Token time sanity beyond exp/nbf: an `iat` in the future (past the clock tolerance) and a
 * lifetime longer than `maxTokenLifetimeSeconds` are refused (TokenInvalidError).
 */
export function checkTokenTimes (claims: Record<string, unknown>, config: Pick<IdentityConfig, 'clockToleranceSeconds' | 'maxTokenLifetimeSeconds'>, nowMs = Date.now()): void {
  const now = Math.floor(nowMs / 1000)
  const iat = claims.iat
  if (iat !== undefined && (typeof iat !== 'number' || !Number.isFinite(iat))) throw new TokenInvalidError('the token\'s "iat" claim is not a number')
  if (typeof iat === 'number' && iat > now + config.clockToleranceSeconds) throw new TokenInvalidError('the token was issued in the future (iat)')
  const exp = claims.exp
  if (typeof exp === 'number' && exp - (typeof iat === 'number' ? iat : now) > config.maxTokenLifetimeSeconds) {
    throw new TokenInvalidError(`the token lives longer than ${config.maxTokenLifetimeSeconds} s (identity.maxTokenLifetimeSeconds)`)
  }
}

/** The key of an agent's rate-limit budget: a token and the tokens exchanged for it share one. */
export function budgetKey (identity: Identity): string {
  return JSON.stringify([identity.subjectIssuer, identity.agentId, identity.userId])
}

/** The key a session is bound to: the same issuer, agent and user. */
export function principalKey (identity: Identity): string {
  return JSON.stringify([identity.issuer, identity.agentId, identity.userId])
}

/** The audiences in a token's `aud` claim. */
export function audiences (claims: Record<string, unknown>): string[] {
  return strings(Array.isArray(claims.aud) ? claims.aud : typeof claims.aud === 'string' ? [claims.aud] : [])
}

/** The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1: one space, one token), or undefined. */
export function bearerToken (header: string | undefined): string | undefined {
  return header === undefined ? undefined : /^Bearer (\S+)$/i.exec(header)?.[1]
}

export interface JwtHeader { alg?: unknown, kid?: unknown }

/** The claims every bearer token must carry. */
export const REQUIRED_CLAIMS = ['iss', 'exp', 'aud'] as const

/** The code of an Authorization header that is not "Bearer <token>". */
export const BAD_AUTHORIZATION = 'MCPW_BAD_AUTHORIZATION_HEADER'

/**
 * The reasons a token is refused, by fast-jwt's error code (the verifier) and the gateway's own.
 * Each becomes the 401's `error_description`.
 */
const TOKEN_ERROR_REASONS: Readonly<Record<string, string>> = {
  FAST_JWT_EXPIRED: 'the token has expired',
  FAST_JWT_INACTIVE: 'the token is not valid yet (nbf)',
  FAST_JWT_MISSING_SIGNATURE: 'unsigned tokens (alg "none") are never accepted',
  FAST_JWT_INVALID_ALGORITHM: 'the token\'s algorithm is not accepted',
  FAST_JWT_INVALID_KEY: 'the token\'s algorithm does not fit the issuer\'s key',
  FAST_JWT_INVALID_SIGNATURE: 'the token\'s signature is invalid',
  FAST_JWT_VERIFY_ERROR: 'the token\'s signature is invalid',
  FAST_JWT_MALFORMED: 'the token is not a well-formed JWT',
  FAST_JWT_INVALID_TYPE: 'the token is not a well-formed JWT',
  FAST_JWT_INVALID_PAYLOAD: 'the token is not a well-formed JWT',
  [BAD_AUTHORIZATION]: 'the Authorization header must be "Bearer <token>"',
  FAST_JWT_MISSING_REQUIRED_CLAIM: `the token lacks a required claim (${REQUIRED_CLAIMS.join(', ')} are required)`,
  // allowedIss is the one claim value the verifier is given to check (the audience is checked per route).
  FAST_JWT_INVALID_CLAIM_VALUE: 'the token\'s issuer is not accepted',
  FAST_JWT_INVALID_CLAIM_TYPE: 'a claim of the token has the wrong type (exp, nbf and iat are numbers)',
  FAST_JWT_INVALID_CRIT_HEADER: 'the token names a critical header extension that is not supported'
}

/** The refusal of a token verification error: TokenInvalidError (401) or KeysUnavailableError (503), by code. */
export function tokenError (err: unknown): Error {
  if (err instanceof TokenInvalidError || err instanceof KeysUnavailableError) return err
  const code = (err as { code?: unknown } | null)?.code
  const known = typeof code === 'string' ? TOKEN_ERROR_REASONS[code] : undefined
  return new TokenInvalidError(known ?? 'the token could not be verified')
}

/** What the verifier checks besides the key: the algorithms, the issuers, the clock tolerance, the required claims. */
export function verifierOptions (config: IdentityConfig, gatewayIssuer: string): { algorithms: Algorithm[], allowedIss: string[], clockTolerance: number, requiredClaims: string[] } {
  return {
    algorithms: [...new Set([...config.algorithms, 'EdDSA'])] as Algorithm[],
    allowedIss: [...new Set([config.issuer, gatewayIssuer])],
    clockTolerance: config.clockToleranceSeconds * 1000,
    requiredClaims: [...REQUIRED_CLAIMS]
  }
}

/**
 * A key resolver for a remote JWKS (lib/jwks.ts): fetched with a timeout, cached, refetched on an
 * unknown `kid` at most once per cooldown. Returns the PEM text of the matching key.
 * A token whose kid matches no key → TokenInvalidError (401); the JWKS unreachable or
 * unusable → KeysUnavailableError (503). Either way nothing is forwarded.
 */
export function remoteKeyResolver (jwksUri: string, algorithms: readonly string[], options: { timeoutMs?: number, cooldownMs?: number } = {}): (header: JwtHeader) => Promise<string> {
  const keyFor = remoteJwks(jwksUri, options)
  const pems = new WeakMap<KeyObject, string>()
  return async function resolveKey (header: JwtHeader): Promise<string> {
    if (typeof header.alg !== 'string' || !algorithms.includes(header.alg)) {
      throw new TokenInvalidError(`algorithm "${String(header.alg)}" is not accepted (accepted: ${algorithms.join(', ')})`)
    }
    let key: KeyObject
    try {
      key = await keyFor(header.alg, typeof header.kid === 'string' ? header.kid : undefined)
    } catch (err) {
      if (err instanceof NoMatchingKeyError) throw new TokenInvalidError(err.message)
      throw new KeysUnavailableError()
    }
    let pem = pems.get(key)
    if (pem === undefined) {
      pem = key.export({ type: 'spki', format: 'pem' }).toString()
      pems.set(key, pem)
    }
    return pem
  }
}

/**
 * Chooses the verification key of a bearer token: the identity provider's for its tokens
 * (algorithm in the allow-list), the gateway's own key ring for access tokens its token
 * exchange issued (typ "at+jwt", EdDSA). Tokens the gateway minted for upstreams are
 * never accepted as bearer tokens. A token without a required claim is refused here, by name.
 */
export function createKeySelector (config: IdentityConfig, gatewayIssuer: string, gatewayJwks: () => { keys: JsonWebKey[] } | undefined): (header: JwtHeader & { typ?: unknown }, payload: Record<string, unknown>) => Promise<string> {
  const resolveKey = config.jwksUri !== undefined ? remoteKeyResolver(config.jwksUri, config.algorithms) : null
  const gatewayPems = new Map<string, string>()
  return async function keyFor (header, payload) {
    for (const claim of REQUIRED_CLAIMS) {
      if (payload[claim] === undefined) throw new TokenInvalidError(`the token lacks the required "${claim}" claim`)
    }
    if (payload.iss !== config.issuer && payload.iss !== gatewayIssuer) throw new TokenInvalidError(TOKEN_ERROR_REASONS.FAST_JWT_INVALID_CLAIM_VALUE!)
    if (payload.iss === gatewayIssuer && gatewayIssuer !== config.issuer) {
      if (header.typ !== 'at+jwt') throw new TokenInvalidError('tokens the gateway minted for upstreams are not accepted here')
      if (header.alg !== 'EdDSA' || typeof header.kid !== 'string') throw new TokenInvalidError('the token\'s algorithm is not accepted')
      const jwk = gatewayJwks()?.keys.find(k => k.kid === header.kid)
      if (jwk === undefined) throw new TokenInvalidError('no signing key of the gateway matches the token\'s "kid"')
      let pem = gatewayPems.get(header.kid)
      if (pem === undefined) {
        pem = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()
        gatewayPems.set(header.kid, pem)
      }
      return pem
    }
    if (typeof header.alg !== 'string' || !config.algorithms.includes(header.alg)) {
      throw new TokenInvalidError(`algorithm "${String(header.alg)}" is not accepted (accepted: ${config.algorithms.join(', ')})`)
    }
    return resolveKey !== null ? await resolveKey(header) : config.publicKeyPem!
  }
}

/**
 * The verifier of bearer tokens: signature (the key of {@link createKeySelector}), `iss`, `exp`,
 * `nbf`, required claims ({@link verifierOptions}), errors by {@link tokenError}. The identity
 * plugin, the token endpoint, the CLI and the bench all verify with it. The audience is the
 * caller's to check.
 */
export function createBearerVerifier (config: IdentityConfig, gatewayIssuer: string, gatewayJwks: () => { keys: JsonWebKey[] } | undefined): (token: string) => Promise<Record<string, unknown>> {
  const keyFor = createKeySelector(config, gatewayIssuer, gatewayJwks)
  const options = verifierOptions(config, gatewayIssuer)
  const decode = createDecoder({ complete: true })
  const verifiers = new Map<string, (token: string) => unknown>()
  return async (token) => {
    try {
      const { header, payload } = decode(token) as { header: JwtHeader & { typ?: unknown }, payload: Record<string, unknown> }
      const pem = await keyFor(header, payload)
      let verify = verifiers.get(pem)
      if (verify === undefined) {
        verify = createVerifier({ key: pem, ...options })
        verifiers.set(pem, verify)
      }
      return verify(token) as Record<string, unknown>
    } catch (err) {
      throw tokenError(err)
    }
  }
}

/**
 * Verifies an agent JWT of the identity provider outside a request (for `mcp-warden cedar
 * explain`): the same checks as the token endpoint's, without the gateway's own tokens.
 */
export async function verifyAgentToken (token: string, config: IdentityConfig): Promise<Record<string, unknown>> {
  return await createBearerVerifier(config, config.issuer, () => undefined)(token)
}

/**
 * A checker of the tokens people present (approvers, console operators): a JWT of the identity
 * provider (`identity.issuer`) whose `aud` includes `audience` and none of `agentAudiences` (an
 * agent's token for this gateway's MCP routes never signs a person in), within its times, with a
 * string user id claim. `what` names the token in refusals ("an approver token is for the approvals only").
 */
export function createPersonTokenCheck (config: IdentityConfig, o: { audience: string, agentAudiences: ReadonlySet<string>, purpose: string, role: string }): (token: string) => Promise<Record<string, unknown>> {
  const verify = createBearerVerifier(config, config.issuer, () => undefined)
  return async (token) => {
    const claims = await verify(token)
    const aud = audiences(claims)
    if (!aud.includes(o.audience)) throw new TokenInvalidError(`the token is not for ${o.purpose} (its aud must include ${o.audience})`)
    if (aud.some(a => o.agentAudiences.has(a))) throw new TokenInvalidError(`the token is also an agent token for this gateway's MCP routes: ${o.role} token is for ${o.purpose} only`)
    checkTokenTimes(claims, config)
    const userClaim = claims[config.claims.userId]
    if (userClaim !== undefined && typeof userClaim !== 'string') throw new TokenInvalidError(`the token's ${config.claims.userId} claim is not a string`)
    return claims
  }
}

/** The resource URLs of a gateway's MCP routes: the audiences of agent tokens. */
export function agentAudiencesOf (publicUrl: string, servers: Iterable<string>): ReadonlySet<string> {
  return new Set([...servers].map(name => `${publicUrl}/servers/${name}/mcp`).concat(`${publicUrl}/mcp`))
}
