/**
 * Signed cookies of the approval pages: the approver's sign-in session, and the state of an
 * OIDC sign-in under way. HMAC-SHA256 with a key derived from the gateway's signing key, which
 * replicas share (tokens.keysDir): any replica reads a cookie another set.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'

export const SESSION_COOKIE = 'mcpw_approver'
export const SIGN_IN_COOKIE = 'mcpw_sign_in'

export interface ApproverSession {
  /** The approver's claims as read from their token. */
  readonly claims: Record<string, unknown>
  readonly via: 'oidc' | 'token'
  /** Random per session: what the CSRF tokens of its forms are bound to. */
  readonly nonce: string
  /** Seconds since the epoch. */
  readonly exp: number
}

export class CookieSigner {
  readonly #key: () => Buffer

  constructor (key: () => Buffer) { this.#key = key }

  #mac (purpose: string, payload: string): string {
    return createHmac('sha256', this.#key()).update(purpose).update('\0').update(payload).digest('base64url')
  }

  /** `<payload>.<mac>` for a value, with an expiry. */
  seal (purpose: string, value: unknown, exp: number): string {
    const payload = Buffer.from(JSON.stringify({ v: value, exp })).toString('base64url')
    return `${payload}.${this.#mac(purpose, payload)}`
  }

  /** The value of a sealed cookie, or undefined when it is forged, for another purpose or expired. */
  open<T> (purpose: string, sealed: string | undefined, now = Date.now()): T | undefined {
    if (sealed === undefined || sealed.length > 16_384) return undefined
    const dot = sealed.indexOf('.')
    if (dot <= 0) return undefined
    const payload = sealed.slice(0, dot)
    const want = Buffer.from(this.#mac(purpose, payload))
    const got = Buffer.from(sealed.slice(dot + 1))
    if (want.length !== got.length || !timingSafeEqual(want, got)) return undefined
    try {
      const { v, exp } = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { v: T, exp: number }
      return typeof exp === 'number' && exp * 1000 > now ? v : undefined
    } catch {
      return undefined
    }
  }

  /** The CSRF token of a form: bound to the session and to what the form acts on. */
  csrf (sessionNonce: string, target: string): string {
    return this.#mac('csrf', `${sessionNonce}\0${target}`)
  }

  checkCsrf (sessionNonce: string, target: string, token: unknown): boolean {
    if (typeof token !== 'string') return false
    const want = Buffer.from(this.csrf(sessionNonce, target))
    const got = Buffer.from(token)
    return want.length === got.length && timingSafeEqual(want, got)
  }
}

export function randomToken (bytes = 16): string {
  return randomBytes(bytes).toString('base64url')
}

/** Cookies of a request's Cookie header, by name (the first of each name). */
export function readCookies (header: string | undefined): Map<string, string> {
  const out = new Map<string, string>()
  if (header === undefined) return out
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq <= 0) continue
    const name = part.slice(0, eq).trim()
    if (!out.has(name)) out.set(name, part.slice(eq + 1).trim())
  }
  return out
}

/** A Set-Cookie value: HttpOnly, SameSite=Lax (the OIDC callback is a cross-site redirect), Secure on https, scoped to `path`. */
export function cookie (name: string, value: string, opts: { path: string, secure: boolean, maxAgeSeconds: number }): string {
  return `${name}=${value}; Path=${opts.path}; HttpOnly; SameSite=Lax; Max-Age=${Math.max(0, Math.floor(opts.maxAgeSeconds))}${opts.secure ? '; Secure' : ''}`
}
