/**
 * The gateway as an RFC 8693 client, for upstreams with `auth.type: exchange`: the agent's
 * token is exchanged at the upstream's authorization server for a token for that upstream
 * and scope. Tokens are cached per (principal, upstream, scope) until shortly before they
 * expire, never past the agent token's own expiry. Every failure fails closed.
 */
import { createPrivateKey, randomUUID } from 'node:crypto'
import { createSigner } from 'fast-jwt'
import { request } from 'undici'
import type { UpstreamAuthConfig } from './config.js'
import { algorithmFor } from './dev-tokens.js'
import { createSecretProvider, type SecretProvider } from './secrets.js'
import { ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from './sts.js'
import { MemoryTokenCache } from './stores/memory.js'
import type { TokenCache } from './stores/types.js'

type ExchangeAuth = Extract<UpstreamAuthConfig, { type: 'exchange' }>

/** The authorization server refused the exchange (invalid_grant, invalid_scope, …): a deny. */
export class ExchangeRefusedError extends Error {
  override name = 'ExchangeRefusedError'
  constructor (readonly error: string, readonly description: string | undefined) {
    super(`the upstream's authorization server refused to exchange the agent's token (${error})`)
  }
}
/** The exchange could not be done (unreachable, timeout, bad answer, client rejected): fail closed. */
export class ExchangeUnavailableError extends Error {
  override name = 'ExchangeUnavailableError'
}

const EARLY_MS = 30_000

export class ExchangeClient {
  readonly #auth: ExchangeAuth
  readonly #secret: SecretProvider | undefined
  readonly #sign: ((payload: Record<string, unknown>) => string) | undefined
  readonly #cache: TokenCache
  readonly #inflight = new Map<string, Promise<string>>()
  /** Exchanges done at the authorization server (cache misses). */
  exchanges = 0

  /** `cache` is shared by every client of a gateway (and by its replicas, with Redis). */
  constructor (auth: ExchangeAuth, cache: TokenCache = new MemoryTokenCache()) {
    this.#auth = auth
    this.#cache = cache
    this.#secret = auth.clientSecret !== undefined ? createSecretProvider(auth.clientSecret) : undefined
    if (auth.privateKeyPem !== undefined) {
      this.#sign = createSigner({ key: auth.privateKeyPem, algorithm: algorithmFor(createPrivateKey(auth.privateKeyPem)) })
    }
  }

  /** The scope asked for a message: the template with {scope}, {tool}, {method}, {server} filled in. */
  scopeFor (vars: { scope: string, tool?: string, method: string, server: string }): string {
    return this.#auth.scope
      .replaceAll('{scope}', vars.scope)
      .replaceAll('{tool}', vars.tool ?? '')
      .replaceAll('{method}', vars.method)
      .replaceAll('{server}', vars.server)
  }

  /** An upstream token for this principal and scope (cached). */
  async tokenFor (subjectToken: string, principal: string, scope: string, subjectExpiresAt: number): Promise<string> {
    const key = `${this.#auth.tokenEndpoint}\n${this.#auth.resource}\n${principal}\n${scope}`
    const hit = await this.#cache.get(key)
    if (hit !== null) return hit
    let pending = this.#inflight.get(key)
    if (pending === undefined) {
      pending = this.#exchange(subjectToken, scope, subjectExpiresAt, key).finally(() => { this.#inflight.delete(key) })
      this.#inflight.set(key, pending)
    }
    return await pending
  }

  async #exchange (subjectToken: string, scope: string, subjectExpiresAt: number, key: string): Promise<string> {
    const a = this.#auth
    const form = new URLSearchParams({
      grant_type: TOKEN_EXCHANGE_GRANT,
      subject_token: subjectToken,
      subject_token_type: ACCESS_TOKEN_TYPE,
      requested_token_type: ACCESS_TOKEN_TYPE,
      resource: a.resource,
      scope
    })
    if (a.audience !== undefined) form.set('audience', a.audience)
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' }
    if (a.clientAuth === 'client_secret_basic') {
      const secret = await this.#secret!.get()
      // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
      headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(a.clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`
    } else {
      const now = Math.floor(Date.now() / 1000)
      form.set('client_id', a.clientId)
      form.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer')
      form.set('client_assertion', this.#sign!({ iss: a.clientId, sub: a.clientId, aud: a.tokenEndpoint, jti: randomUUID(), iat: now, exp: now + 60 }))
    }
    this.exchanges++
    let status: number
    let body: Record<string, unknown>
    try {
      const res = await request(a.tokenEndpoint, {
        method: 'POST',
        headers,
        body: form.toString(),
        headersTimeout: a.timeoutMs,
        bodyTimeout: a.timeoutMs,
        signal: AbortSignal.timeout(a.timeoutMs)
      })
      status = res.statusCode
      const text = await res.body.text()
      try { body = JSON.parse(text) as Record<string, unknown> } catch { body = {} }
    } catch (err) {
      throw new ExchangeUnavailableError(`the authorization server at ${a.tokenEndpoint} did not answer (${(err as { code?: string }).code ?? (err as Error).name})`)
    }
    if (status === 400 && typeof body.error === 'string' && ['invalid_grant', 'invalid_scope', 'invalid_target', 'unauthorized_client', 'access_denied'].includes(body.error)) {
      throw new ExchangeRefusedError(body.error, typeof body.error_description === 'string' ? body.error_description : undefined)
    }
    if (status !== 200 || typeof body.access_token !== 'string') {
      throw new ExchangeUnavailableError(`the authorization server at ${a.tokenEndpoint} answered HTTP ${status}${typeof body.error === 'string' ? ` (${body.error})` : ''}`)
    }
    const expiresIn = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in * 1000 : 60_000
    const until = Math.min(Date.now() + expiresIn - Math.min(EARLY_MS, expiresIn / 10), subjectExpiresAt * 1000)
    await this.#cache.set(key, body.access_token, until)
    return body.access_token
  }
}
