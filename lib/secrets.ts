/**
 * Secret providers for legacy upstreams and OAuth client secrets: `env:NAME`, `file:PATH`,
 * and HashiCorp Vault KV v2 (token or AppRole login). Values are cached briefly and never
 * logged: errors name the reference, never the value.
 */
import { readFile } from 'node:fs/promises'
import { request } from 'undici'
import type { SecretRef } from './config.js'

export interface SecretProvider {
  get (): Promise<string>
}

export class SecretUnavailableError extends Error {
  override name = 'SecretUnavailableError'
}

/** Where a reference points, for messages: never the value. */
export function describeRef (ref: SecretRef): string {
  switch (ref.kind) {
    case 'env': return `env:${ref.name}`
    case 'file': return `file:${ref.path}`
    case 'vault': return `vault:${ref.address}/v1/${ref.mount}/data/${ref.path}#${ref.field}`
  }
}

const FILE_CACHE_MS = 30_000

export function createSecretProvider (ref: SecretRef): SecretProvider {
  switch (ref.kind) {
    case 'env':
      return {
        async get () {
          const v = process.env[ref.name]
          if (v === undefined || v === '') throw new SecretUnavailableError(`${describeRef(ref)} is not set`)
          return v
        }
      }
    case 'file': {
      let cached: { value: string, until: number } | undefined
      return {
        async get () {
          if (cached !== undefined && cached.until > Date.now()) return cached.value
          let value: string
          try { value = (await readFile(ref.path, 'utf8')).trim() } catch (err) {
            throw new SecretUnavailableError(`${describeRef(ref)} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
          }
          cached = { value, until: Date.now() + FILE_CACHE_MS }
          return value
        }
      }
    }
    case 'vault':
      return new VaultKvSecret(ref)
  }
}

interface VaultLogin { token: string, renewAt: number }

/**
 * One field of a Vault KV v2 secret. The Vault token is either given (env:/file:) or
 * obtained by AppRole login and renewed by logging in again before its lease ends. A 403
 * (token revoked or expired early) triggers one fresh login and retry.
 */
export class VaultKvSecret implements SecretProvider {
  readonly #ref: Extract<SecretRef, { kind: 'vault' }>
  readonly #tokenSource: SecretProvider | undefined
  readonly #secretId: SecretProvider | undefined
  #login: VaultLogin | undefined
  #cached: { value: string, until: number } | undefined
  #inflight: Promise<string> | undefined
  /** Number of AppRole logins and KV reads done (for tests and metrics). */
  readonly stats = { logins: 0, reads: 0 }

  constructor (ref: Extract<SecretRef, { kind: 'vault' }>) {
    this.#ref = ref
    this.#tokenSource = ref.token !== undefined ? createSecretProvider(ref.token) : undefined
    this.#secretId = ref.appRole !== undefined ? createSecretProvider(ref.appRole.secretId) : undefined
  }

  async get (): Promise<string> {
    if (this.#cached !== undefined && this.#cached.until > Date.now()) return this.#cached.value
    this.#inflight ??= this.#fetch().finally(() => { this.#inflight = undefined })
    return await this.#inflight
  }

  async #call (method: 'GET' | 'POST', path: string, token: string | undefined, body?: unknown): Promise<{ status: number, json: Record<string, unknown> }> {
    const headers: Record<string, string> = { accept: 'application/json' }
    if (token !== undefined) headers['x-vault-token'] = token
    if (this.#ref.namespace !== undefined) headers['x-vault-namespace'] = this.#ref.namespace
    if (body !== undefined) headers['content-type'] = 'application/json'
    try {
      const res = await request(`${this.#ref.address}/v1/${path}`, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        headersTimeout: this.#ref.timeoutMs,
        bodyTimeout: this.#ref.timeoutMs,
        signal: AbortSignal.timeout(this.#ref.timeoutMs)
      })
      const text = await res.body.text()
      let json: Record<string, unknown> = {}
      try { json = text === '' ? {} : JSON.parse(text) as Record<string, unknown> } catch { /* not JSON: reported by status */ }
      return { status: res.statusCode, json }
    } catch (err) {
      throw new SecretUnavailableError(`Vault at ${this.#ref.address} is unreachable (${(err as { code?: string }).code ?? (err as Error).name})`)
    }
  }

  async #token (fresh: boolean): Promise<string> {
    if (this.#tokenSource !== undefined) return await this.#tokenSource.get()
    if (!fresh && this.#login !== undefined && this.#login.renewAt > Date.now()) return this.#login.token
    const appRole = this.#ref.appRole!
    this.stats.logins++
    const { status, json } = await this.#call('POST', `auth/${appRole.mount}/login`, undefined, { role_id: appRole.roleId, secret_id: await this.#secretId!.get() })
    const auth = json.auth as { client_token?: unknown, lease_duration?: unknown } | undefined
    if (status !== 200 || typeof auth?.client_token !== 'string') {
      throw new SecretUnavailableError(`Vault AppRole login at ${this.#ref.address} failed (HTTP ${status})`)
    }
    const lease = typeof auth.lease_duration === 'number' && auth.lease_duration > 0 ? auth.lease_duration : 3600
    // Log in again at 80 % of the lease.
    this.#login = { token: auth.client_token, renewAt: Date.now() + lease * 800 }
    return auth.client_token
  }

  async #fetch (): Promise<string> {
    const path = `${this.#ref.mount}/data/${this.#ref.path}`
    let answer = await this.#call('GET', path, await this.#token(false))
    if (answer.status === 403 && this.#ref.appRole !== undefined) answer = await this.#call('GET', path, await this.#token(true))
    this.stats.reads++
    if (answer.status !== 200) throw new SecretUnavailableError(`${describeRef(this.#ref)} cannot be read (HTTP ${answer.status})`)
    const data = (answer.json.data as { data?: Record<string, unknown> } | undefined)?.data
    const value = data?.[this.#ref.field]
    if (typeof value !== 'string' || value === '') throw new SecretUnavailableError(`${describeRef(this.#ref)} has no string field "${this.#ref.field}"`)
    const lease = typeof answer.json.lease_duration === 'number' && answer.json.lease_duration > 0 ? answer.json.lease_duration : Infinity
    this.#cached = { value, until: Date.now() + Math.min(this.#ref.cacheSeconds, lease) * 1000 }
    return value
  }
}
