/**
 * An identity provider's signing keys from its JWKS URL: fetched with a timeout and a size
 * limit, no redirects, cached, and refetched on an unknown `kid` at most once per cooldown, so
 * tokens with random kids cannot make the gateway hammer the issuer. Keys become Node KeyObjects
 * (node:crypto reads JWKs itself); the verifier turns them into PEM once per key.
 *
 * A token whose kid and alg match no key → NoMatchingKeyError; the JWKS unreachable or
 * unusable → JwksUnavailableError. The caller maps them to 401 and 503.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import { request } from 'undici'
import { BodyLimitError, readAtMost } from './http-body.js'

export class NoMatchingKeyError extends Error {
  override name = 'NoMatchingKeyError'
}

export class JwksUnavailableError extends Error {
  override name = 'JwksUnavailableError'
}

export interface RemoteJwksOptions {
  /** Longest wait for the JWKS answer (default 5 s). */
  timeoutMs?: number
  /** After a fetch, how long an unknown kid is refused without fetching again (default 30 s). */
  cooldownMs?: number
  /** How long fetched keys are used before they are fetched again (default 10 min). */
  maxAgeMs?: number
  /** Largest JWKS document read (default 256 KiB). */
  maxBytes?: number
  /**
   * After a failed fetch, how long tokens are refused (503) without fetching again (default 1 s):
   * while the issuer is down, tokens (forged ones included) cannot make the gateway fetch on
   * every request.
   */
  retryMs?: number
}

/** The key types and curves each JWS algorithm can be verified with. */
function fits (alg: string, jwk: JsonWebKey): boolean {
  if (jwk.alg !== undefined && jwk.alg !== alg) return false
  if (jwk.use !== undefined && jwk.use !== 'sig') return false
  if (alg.startsWith('RS') || alg.startsWith('PS')) return jwk.kty === 'RSA'
  if (alg === 'ES256') return jwk.kty === 'EC' && jwk.crv === 'P-256'
  if (alg === 'ES384') return jwk.kty === 'EC' && jwk.crv === 'P-384'
  if (alg === 'ES512') return jwk.kty === 'EC' && jwk.crv === 'P-521'
  if (alg === 'EdDSA') return jwk.kty === 'OKP' && (jwk.crv === 'Ed25519' || jwk.crv === 'Ed448')
  return false
}

async function fetchKeys (url: string, timeoutMs: number, maxBytes: number): Promise<JsonWebKey[]> {
  let text: string
  try {
    const res = await request(url, {
      method: 'GET',
      headers: { accept: 'application/jwk-set+json, application/json' },
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      signal: AbortSignal.timeout(timeoutMs)
    })
    if (res.statusCode !== 200) {
      await res.body.dump()
      throw new JwksUnavailableError(`the JWKS answered ${res.statusCode}`)
    }
    text = (await readAtMost(res.body, maxBytes)).toString('utf8')
  } catch (err) {
    if (err instanceof JwksUnavailableError) throw err
    if (err instanceof BodyLimitError) throw new JwksUnavailableError(`the JWKS is larger than ${maxBytes} bytes`)
    throw new JwksUnavailableError(`the JWKS could not be fetched: ${(err as Error).message}`)
  }
  let doc: unknown
  try { doc = JSON.parse(text) } catch { throw new JwksUnavailableError('the JWKS is not JSON') }
  const keys = (doc as { keys?: unknown } | null)?.keys
  if (!Array.isArray(keys)) throw new JwksUnavailableError('the JWKS has no "keys" array')
  return keys.filter((k): k is JsonWebKey => k !== null && typeof k === 'object' && !Array.isArray(k))
}

/** A resolver of the key that verifies a token signed with `alg` (and `kid`, when the token names one). */
export function remoteJwks (url: string, options: RemoteJwksOptions = {}): (alg: string, kid: string | undefined) => Promise<KeyObject> {
  const timeoutMs = options.timeoutMs ?? 5000
  const cooldownMs = options.cooldownMs ?? 30_000
  const maxAgeMs = options.maxAgeMs ?? 10 * 60_000
  const maxBytes = options.maxBytes ?? 256 * 1024
  const retryMs = options.retryMs ?? 1000
  let failedAt = -Infinity
  let lastFailure = ''
  let keys: JsonWebKey[] | undefined
  let fetchedAt = -Infinity
  let fetching: Promise<void> | undefined
  const objects = new WeakMap<JsonWebKey, KeyObject>()

  const refresh = async (): Promise<void> => {
    if (fetching === undefined && Date.now() - failedAt < retryMs) throw new JwksUnavailableError(lastFailure)
    fetching ??= fetchKeys(url, timeoutMs, maxBytes)
      .then((fetched) => { keys = fetched; fetchedAt = Date.now() }, (err: Error) => { failedAt = Date.now(); lastFailure = err.message; throw err })
      .finally(() => { fetching = undefined })
    await fetching
  }
  const match = (alg: string, kid: string | undefined): JsonWebKey[] =>
    (keys ?? []).filter(k => (kid === undefined || k.kid === kid) && fits(alg, k))

  return async function keyFor (alg, kid) {
    const age = Date.now() - fetchedAt
    let found = age < maxAgeMs ? match(alg, kid) : []
    if (found.length === 0 && (age >= maxAgeMs || age >= cooldownMs)) {
      await refresh()
      found = match(alg, kid)
    }
    if (found.length !== 1) throw new NoMatchingKeyError(found.length === 0 ? 'no signing key of the issuer matches the token\'s "kid" and "alg"' : 'several signing keys of the issuer match the token and it names no "kid"')
    const jwk = found[0]!
    // A key set that publishes a private key lets anyone sign: such a key verifies nothing.
    if (jwk.d !== undefined) throw new NoMatchingKeyError('the issuer\'s JWKS publishes the private part of this key; a published private key verifies nothing')
    let key = objects.get(jwk)
    if (key === undefined) {
      try {
        key = createPublicKey({ key: jwk, format: 'jwk' })
      } catch {
        throw new NoMatchingKeyError('the issuer\'s signing key for this token is not a usable public key')
      }
      objects.set(jwk, key)
    }
    return key
  }
}
