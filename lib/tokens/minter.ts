/**
 * Mints the ephemeral token of DESIGN.md §8 for one forwarded message: EdDSA, `kid` from
 * the key ring, audience-bound to one upstream, scoped to one message, bound to its hash,
 * alive `ttlSeconds`, with a unique `jti`.
 */
import { randomUUID } from 'node:crypto'
import { createSigner } from 'fast-jwt'
import type { Identity } from '../identity.js'
import type { KeyRing } from './keys.js'
import type { MessageBinding } from './binding.js'

export interface EphemeralClaims {
  iss: string
  sub: string
  user_id?: string
  aud: string
  scope: string
  iat: number
  nbf: number
  exp: number
  jti: string
  call_sha256: string
}

export interface MintedToken {
  readonly token: string
  readonly claims: EphemeralClaims
  readonly kid: string
}

export class TokenMinter {
  readonly #accessSigners = new Map<string, (payload: Record<string, unknown>) => string>()
  readonly #keys: KeyRing
  readonly #signers = new Map<string, (payload: Record<string, unknown>) => string>()
  readonly issuer: string
  readonly ttlSeconds: number

  constructor (keys: KeyRing, options: { issuer: string, ttlSeconds: number }) {
    this.#keys = keys
    this.issuer = options.issuer
    this.ttlSeconds = options.ttlSeconds
  }

  mint (subject: Pick<Identity, 'agentId' | 'userId'>, audience: string, binding: MessageBinding, now = Date.now()): MintedToken {
    const key = this.#keys.current(now)
    let sign = this.#signers.get(key.kid)
    if (sign === undefined) {
      sign = createSigner({ key: key.privateKeyPem, algorithm: 'EdDSA', kid: key.kid })
      this.#signers.set(key.kid, sign)
    }
    const iat = Math.floor(now / 1000)
    const claims: EphemeralClaims = {
      iss: this.issuer,
      sub: subject.agentId,
      ...(subject.userId !== null ? { user_id: subject.userId } : {}),
      aud: audience,
      scope: binding.scope,
      iat,
      nbf: iat,
      exp: iat + this.ttlSeconds,
      jti: randomUUID(),
      call_sha256: binding.callSha256
    }
    return { token: sign(claims as unknown as Record<string, unknown>), claims, kid: key.kid }
  }

  /**
   * Signs an access token of the gateway's token exchange (typ "at+jwt", RFC 9068): the
   * caller sets every claim but iss, iat, nbf, exp and jti.
   */
  mintAccessToken (claims: Record<string, unknown>, ttlSeconds: number, now = Date.now()): { token: string, claims: Record<string, unknown> } {
    const key = this.#keys.current(now)
    let sign = this.#accessSigners.get(key.kid)
    if (sign === undefined) {
      sign = createSigner({ key: key.privateKeyPem, algorithm: 'EdDSA', kid: key.kid, header: { alg: 'EdDSA', typ: 'at+jwt' } })
      this.#accessSigners.set(key.kid, sign)
    }
    const iat = Math.floor(now / 1000)
    const full = { ...claims, iss: this.issuer, iat, nbf: iat, exp: iat + ttlSeconds, jti: randomUUID() }
    return { token: sign(full), claims: full }
  }
}
