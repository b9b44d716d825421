/**
 * OIDC sign-in of approvers (authorization code flow with PKCE, RFC 7636 S256): the relying
 * party side, against `approvals.signIn.issuer`. The ID token is verified with the issuer's
 * JWKS (lib/jwks.ts): signature, `iss`, `aud` = the client id, `exp`, and the `nonce` of this
 * sign-in.
 */
import { createHash } from 'node:crypto'
import { createDecoder, createVerifier, type Algorithm } from 'fast-jwt'
import { request } from 'undici'
import { BodyLimitError, readAtMost } from '../http-body.js'
import { remoteJwks } from '../jwks.js'
import { randomToken } from './session.js'

export interface OidcMetadata {
  readonly issuer: string
  readonly authorizationEndpoint: string
  readonly tokenEndpoint: string
  readonly jwksUri: string
}

export class OidcError extends Error {
  override name = 'OidcError'
}

const ID_TOKEN_ALGORITHMS: Algorithm[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']
const MAX_BYTES = 256 * 1024

async function getJson (url: string, init: { method?: 'GET' | 'POST', headers?: Record<string, string>, body?: string } = {}): Promise<{ status: number, json: unknown }> {
  const res = await request(url, { method: init.method ?? 'GET', headers: { accept: 'application/json', ...init.headers }, body: init.body ?? null, headersTimeout: 5000, bodyTimeout: 5000 })
  let body: Buffer
  try {
    body = await readAtMost(res.body, MAX_BYTES)
  } catch (err) {
    if (err instanceof BodyLimitError) throw new OidcError(`${new URL(url).origin} answered more than ${MAX_BYTES} bytes`)
    throw err
  }
  let json: unknown
  try { json = JSON.parse(body.toString('utf8')) } catch { throw new OidcError(`${url} did not answer JSON (HTTP ${res.statusCode})`) }
  return { status: res.statusCode, json }
}

/** The provider's endpoints, from its discovery document (its `issuer` must be the configured one). */
export async function discover (issuer: string): Promise<OidcMetadata> {
  const { status, json } = await getJson(`${issuer}/.well-known/openid-configuration`)
  const d = json as Record<string, unknown> | null
  if (status !== 200 || d === null || typeof d !== 'object') throw new OidcError(`the discovery document of ${issuer} could not be read (HTTP ${status})`)
  if (d.issuer !== issuer) throw new OidcError(`the discovery document names issuer ${String(d.issuer)}, not ${issuer}`)
  for (const k of ['authorization_endpoint', 'token_endpoint', 'jwks_uri']) {
    if (typeof d[k] !== 'string') throw new OidcError(`the discovery document of ${issuer} has no ${k}`)
  }
  return { issuer, authorizationEndpoint: d.authorization_endpoint as string, tokenEndpoint: d.token_endpoint as string, jwksUri: d.jwks_uri as string }
}

/** What a sign-in under way keeps (in a signed cookie) until the callback. */
export interface SignInState {
  readonly state: string
  readonly nonce: string
  readonly verifier: string
  /** Where to go after signing in (a path of the approval pages). */
  readonly next: string
}

export function newSignIn (next: string): SignInState {
  return { state: randomToken(), nonce: randomToken(), verifier: randomToken(32), next }
}

export function authorizationUrl (meta: OidcMetadata, o: { clientId: string, redirectUri: string, scopes: readonly string[], signIn: SignInState }): string {
  const url = new URL(meta.authorizationEndpoint)
  url.searchParams.set('response_type', 'code')
  url.searchParams.set('client_id', o.clientId)
  url.searchParams.set('redirect_uri', o.redirectUri)
  url.searchParams.set('scope', o.scopes.join(' '))
  url.searchParams.set('state', o.signIn.state)
  url.searchParams.set('nonce', o.signIn.nonce)
  url.searchParams.set('code_challenge', createHash('sha256').update(o.signIn.verifier).digest('base64url'))
  url.searchParams.set('code_challenge_method', 'S256')
  return url.href
}

export interface OidcClient {
  /** Redeems an authorization code and returns the verified ID token's claims. */
  redeem (code: string, redirectUri: string, signIn: SignInState): Promise<Record<string, unknown>>
  metadata (): Promise<OidcMetadata>
}

export function createOidcClient (o: { issuer: string, clientId: string, clientSecret?: () => Promise<string>, clockToleranceSeconds: number }): OidcClient {
  let meta: Promise<OidcMetadata> | undefined
  const metadata = async (): Promise<OidcMetadata> => {
    meta ??= discover(o.issuer).catch((err: unknown) => { meta = undefined; throw err })
    return await meta
  }
  let keys: ReturnType<typeof remoteJwks> | undefined
  const decode = createDecoder({ complete: true })
  return {
    metadata,
    async redeem (code, redirectUri, signIn) {
      const m = await metadata()
      const form = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: signIn.verifier })
      const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' }
      if (o.clientSecret !== undefined) {
        const secret = await o.clientSecret()
        headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(o.clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`
      } else {
        form.set('client_id', o.clientId)
      }
      const { status, json } = await getJson(m.tokenEndpoint, { method: 'POST', headers, body: form.toString() })
      const answer = json as Record<string, unknown> | null
      if (status !== 200 || typeof answer?.id_token !== 'string') {
        throw new OidcError(`the identity provider refused the sign-in (HTTP ${status}${typeof answer?.error === 'string' ? `, ${answer.error.slice(0, 80)}` : ''})`)
      }
      keys ??= remoteJwks(m.jwksUri)
      const keyFor = keys
      const idToken = answer.id_token
      let header: { alg?: unknown, kid?: unknown }
      try { header = (decode(idToken) as { header: { alg?: unknown, kid?: unknown } }).header } catch { throw new OidcError('the ID token is not a JWT') }
      if (typeof header.alg !== 'string' || !(ID_TOKEN_ALGORITHMS as string[]).includes(header.alg)) throw new OidcError(`the ID token's algorithm ${String(header.alg)} is not accepted`)
      let pem: string
      try {
        pem = (await keyFor(header.alg, typeof header.kid === 'string' ? header.kid : undefined)).export({ type: 'spki', format: 'pem' }).toString()
      } catch (err) {
        throw new OidcError(`the ID token's signing key could not be found: ${(err as Error).message}`)
      }
      try {
        return createVerifier({
          key: pem,
          algorithms: [header.alg as Algorithm],
          allowedIss: o.issuer,
          allowedAud: o.clientId,
          allowedNonce: signIn.nonce,
          clockTolerance: o.clockToleranceSeconds * 1000,
          requiredClaims: ['iss', 'aud', 'exp', 'sub', 'nonce']
        })(idToken) as Record<string, unknown>
      } catch (err) {
        throw new OidcError(`the ID token is not valid: ${(err as Error).message}`)
      }
    }
  }
}
