/**
 * Agent identity: from verified JWT claims to the principal the gateway decides on,
 * and the issuer key sources (a PEM public key or a remote JWKS).
 */
import { KeyObject, type webcrypto } from 'node:crypto'
import { createRemoteJWKSet, errors as joseErrors } from 'jose'
import { createVerifier, type Algorithm } from 'fast-jwt'
import type { IdentityConfig } from './config.js'
import { KeysUnavailableError, TokenInvalidError } from './errors.js'

export interface Identity {
  /** `agentId` claim (name configurable), falling back to `sub`. */
  readonly agentId: string
  readonly userId: string | null
  /** `role` and `roles` together, without duplicates. */
  readonly roles: readonly string[]
  readonly department: string | null
  /** `scope` (space-separated) or `scp` (array or string). */
  readonly scopes: readonly string[]
  readonly issuer: string
  readonly subject: string | null
  /** Seconds since the epoch, from `exp`. */
  readonly expiresAt: number
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
export function identityFromClaims (claims: Record<string, unknown>, config: IdentityConfig): Identity {
  const names = config.claims
  const agentId = str(claims[names.agentId]) ?? str(claims.sub)
  if (agentId === null) throw new TokenInvalidError(`the token has neither a "${names.agentId}" nor a "sub" claim naming the agent`)
  const roles = [...new Set([...strings(claims[names.role]), ...strings(claims[names.roles])])]
  const scopes = [...new Set([...strings(claims.scope), ...strings(claims.scp)])]
  return Object.freeze({
    agentId,
    userId: str(claims[names.userId]),
    roles,
    department: str(claims[names.department]),
    scopes,
    issuer: String(claims.iss),
    subject: str(claims.sub),
    expiresAt: typeof claims.exp === 'number' ? claims.exp : 0,
    claims
  })
}

/** The key a session is bound to: the same issuer, agent and user. */
export function principalKey (identity: Identity): string {
  return JSON.stringify([identity.issuer, identity.agentId, identity.userId])
}

/** The audiences in a token's `aud` claim. */
export function audiences (claims: Record<string, unknown>): string[] {
  return strings(Array.isArray(claims.aud) ? claims.aud : typeof claims.aud === 'string' ? [claims.aud] : [])
}

export interface JwtHeader { alg?: unknown, kid?: unknown }

/**
 * A key resolver for a remote JWKS: fetched with a timeout, cached, refetched on an
 * unknown `kid` at most once per cooldown (so random kids cannot make the gateway
 * hammer the issuer). Returns the PEM text of the matching key.
 * A token whose kid matches no key → TokenInvalidError (401); the JWKS unreachable or
 * unusable → KeysUnavailableError (503). Either way nothing is forwarded.
 */
export function remoteKeyResolver (jwksUri: string, algorithms: readonly string[], options: { timeoutMs?: number, cooldownMs?: number } = {}): (header: JwtHeader) => Promise<string> {
  const jwks = createRemoteJWKSet(new URL(jwksUri), {
    timeoutDuration: options.timeoutMs ?? 5000,
    cooldownDuration: options.cooldownMs ?? 30_000,
    cacheMaxAge: 10 * 60_000
  })
  const pems = new WeakMap<object, string>()
  return async function resolveKey (header: JwtHeader): Promise<string> {
    if (typeof header.alg !== 'string' || !algorithms.includes(header.alg)) {
      throw new TokenInvalidError(`algorithm "${String(header.alg)}" is not accepted (accepted: ${algorithms.join(', ')})`)
    }
    let key: webcrypto.CryptoKey
    try {
      key = await jwks({ alg: header.alg, ...(typeof header.kid === 'string' ? { kid: header.kid } : {}) })
    } catch (err) {
      if (err instanceof joseErrors.JWKSNoMatchingKey || err instanceof joseErrors.JWKSMultipleMatchingKeys) {
        throw new TokenInvalidError('no signing key of the issuer matches the token\'s "kid" and "alg"')
      }
      throw new KeysUnavailableError()
    }
    let pem = pems.get(key)
    if (pem === undefined) {
      pem = KeyObject.from(key).export({ type: 'spki', format: 'pem' }).toString()
      pems.set(key, pem)
    }
    return pem
  }
}

/**
 * Verifies an agent JWT outside a request (for `mcp-warden cedar explain`): signature with
 * an allowed algorithm, `iss`, `exp`, `nbf`, required claims — everything but the audience,
 * which depends on the route. Returns the claims.
 */
export async function verifyAgentToken (token: string, config: IdentityConfig): Promise<Record<string, unknown>> {
  const resolveKey = config.jwksUri !== undefined ? remoteKeyResolver(config.jwksUri, config.algorithms) : null
  const verify = createVerifier({
    key: async (decoded: { header: JwtHeader }) => resolveKey !== null ? await resolveKey(decoded.header) : config.publicKeyPem!,
    algorithms: [...config.algorithms] as Algorithm[],
    allowedIss: config.issuer,
    clockTolerance: config.clockToleranceSeconds * 1000,
    requiredClaims: ['iss', 'exp']
  })
  try {
    return await verify(token) as Record<string, unknown>
  } catch (err) {
    const inner = (err as { originalError?: unknown }).originalError ?? err
    if (inner instanceof TokenInvalidError || inner instanceof KeysUnavailableError) throw inner
    throw new TokenInvalidError((err as Error).message)
  }
}
