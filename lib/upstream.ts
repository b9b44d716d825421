/**
 * mcp-warden/upstream: for authors of MCP servers behind mcp-warden.
 *
 * Verifies the ephemeral token the gateway sends with each message: EdDSA signature by a
 * key of the gateway's JWKS, `iss`, `aud` (this server's resource URL), `exp`/`nbf`,
 * `scope` against the message received, `call_sha256` against the body received, and
 * single use of `jti`. Each failure has its own code and a clear message.
 *
 *   const verifier = createUpstreamVerifier({ issuer, audience, jwksUri })
 *   await verifier.verify({ authorization: req.headers.authorization, httpMethod: req.method, body })
 */
import { createPublicKey, timingSafeEqual, type JsonWebKey } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { createDecoder, createVerifier } from 'fast-jwt'
import { bearerToken, remoteKeyResolver } from './identity.js'
import { messageBinding } from './tokens/binding.js'
import type { EphemeralClaims } from './tokens/minter.js'
import { MemoryReplayStore } from './stores/memory.js'
import type { ReplayStore } from './stores/types.js'

export type { EphemeralClaims } from './tokens/minter.js'
export type { ReplayStore } from './stores/types.js'
export { MemoryReplayStore } from './stores/memory.js'
export { RedisReplayStore } from './stores/redis.js'

export type UpstreamTokenErrorCode =
  | 'missing' | 'malformed' | 'signature' | 'expired' | 'not_yet_valid' | 'issuer' | 'audience'
  | 'claims' | 'scope' | 'call_hash' | 'replay' | 'keys' | 'replay_store'

export class UpstreamTokenError extends Error {
  override name = 'UpstreamTokenError'
  readonly statusCode: number
  constructor (readonly code: UpstreamTokenErrorCode, message: string) {
    super(message)
    // The verifier could not decide (keys or replay store unreachable): 503, so the caller
    // retries later instead of reading it as a refusal of its credentials.
    this.statusCode = code === 'keys' || code === 'replay_store' ? 503 : 401
  }
}

export interface UpstreamVerifierOptions {
  /** The gateway's token issuer (its tokens.issuer, by default its publicUrl). */
  issuer: string
  /** This server's resource URL: the `aud` its tokens must carry (the gateway's upstreams.<name>.resource). */
  audience: string
  /** The gateway's JWKS, e.g. https://gateway.example.com/.well-known/jwks.json ... */
  jwksUri?: string
  /** ... or its keys, when they are known in advance. */
  jwks?: { keys: JsonWebKey[] }
  /** Where used `jti`s are kept (default: in memory; use a shared store with several replicas). */
  replay?: ReplayStore
  clockToleranceSeconds?: number
  /** Refuses tokens that live longer than this (default 300 s, the gateway's maximum). */
  maxLifetimeSeconds?: number
}

export interface VerifyInput {
  /** The Authorization header as received. */
  authorization: string | string[] | undefined
  /** GET, POST or DELETE. */
  httpMethod: string
  /** The parsed JSON-RPC body of a POST. */
  body?: unknown
}

export interface UpstreamVerifier {
  verify (input: VerifyInput): Promise<EphemeralClaims>
  close (): Promise<void>
}

const REQUIRED = ['iss', 'sub', 'aud', 'scope', 'iat', 'nbf', 'exp', 'jti', 'call_sha256']

function mapError (err: unknown): UpstreamTokenError {
  if (err instanceof UpstreamTokenError) return err
  const e = err as { code?: string, message?: string, originalError?: unknown }
  // fast-jwt wraps errors of the key callback.
  if (e.originalError instanceof UpstreamTokenError) return e.originalError
  switch (e.code) {
    case 'FAST_JWT_EXPIRED': return new UpstreamTokenError('expired', 'the token has expired')
    case 'FAST_JWT_INACTIVE': return new UpstreamTokenError('not_yet_valid', 'the token is not valid yet')
    case 'FAST_JWT_MALFORMED': case 'FAST_JWT_INVALID_TYPE': return new UpstreamTokenError('malformed', 'the token is not a well-formed JWT')
    case 'FAST_JWT_MISSING_REQUIRED_CLAIM': return new UpstreamTokenError('claims', e.message ?? 'a required claim is missing')
    case 'FAST_JWT_INVALID_CLAIM_VALUE':
      if (/\biss\b/.test(e.message ?? '')) return new UpstreamTokenError('issuer', 'the token was not issued by the expected gateway')
      if (/\baud\b/.test(e.message ?? '')) return new UpstreamTokenError('audience', 'the token is for another server (aud)')
      return new UpstreamTokenError('claims', e.message ?? 'a claim has an invalid value')
    default:
      return new UpstreamTokenError('signature', 'the token\'s signature, algorithm or key is not accepted')
  }
}

function staticKeys (jwks: { keys: JsonWebKey[] }): (header: { kid?: unknown }) => string {
  const byKid = new Map<string, string>()
  for (const k of jwks.keys) {
    if (typeof k.kid === 'string') byKid.set(k.kid, createPublicKey({ key: k, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString())
  }
  return (header) => {
    const pem = typeof header.kid === 'string' ? byKid.get(header.kid) : undefined
    if (pem === undefined) throw new UpstreamTokenError('signature', 'no key of the gateway matches the token\'s kid')
    return pem
  }
}

/** Creates a verifier for one upstream. */
export function createUpstreamVerifier (options: UpstreamVerifierOptions): UpstreamVerifier {
  if ((options.jwksUri === undefined) === (options.jwks === undefined)) throw new TypeError('createUpstreamVerifier: give exactly one of jwksUri and jwks')
  const remote = options.jwksUri !== undefined ? remoteKeyResolver(options.jwksUri, ['EdDSA'], { cooldownMs: 5000 }) : null
  const local = options.jwks !== undefined ? staticKeys(options.jwks) : null
  const replay = options.replay ?? new MemoryReplayStore()
  const ownsReplay = options.replay === undefined
  const maxLifetime = options.maxLifetimeSeconds ?? 300
  // One synchronous verifier per key, created on first use: key lookup is the only async step.
  const decode = createDecoder({ complete: true })
  const byKey = new Map<string, (token: string) => unknown>()
  const verifierFor = (pem: string): (token: string) => unknown => {
    let v = byKey.get(pem)
    if (v === undefined) {
      v = createVerifier({
        key: pem,
        algorithms: ['EdDSA'],
        allowedIss: options.issuer,
        allowedAud: options.audience,
        clockTolerance: (options.clockToleranceSeconds ?? 5) * 1000,
        requiredClaims: REQUIRED
      })
      byKey.set(pem, v)
    }
    return v
  }
  async function keyFor (header: { kid?: unknown, alg?: unknown }): Promise<string> {
    if (header.alg !== 'EdDSA') throw new UpstreamTokenError('signature', 'the token\'s signature, algorithm or key is not accepted')
    if (local !== null) return local(header)
    try { return await remote!(header) } catch (err) {
      if ((err as { code?: string }).code === 'MCPW_ERR_AUTH_KEYS_UNAVAILABLE') throw new UpstreamTokenError('keys', 'the gateway\'s signing keys cannot be fetched')
      throw new UpstreamTokenError('signature', 'no key of the gateway matches the token\'s kid and alg')
    }
  }
  async function verifyJwt (token: string): Promise<unknown> {
    let header: { kid?: unknown, alg?: unknown }
    try { header = (decode(token) as { header: typeof header }).header } catch (err) { throw mapError(err) }
    return verifierFor(await keyFor(header))(token)
  }

  return {
    async verify (input: VerifyInput): Promise<EphemeralClaims> {
      const header = Array.isArray(input.authorization) ? undefined : input.authorization
      const token = bearerToken(header)
      if (token === undefined) throw new UpstreamTokenError('missing', 'no "Authorization: Bearer" token from the gateway')
      let claims: EphemeralClaims
      try {
        claims = await verifyJwt(token) as EphemeralClaims
      } catch (err) {
        throw mapError(err)
      }
      if (typeof claims.aud !== 'string') throw new UpstreamTokenError('audience', 'the token must name exactly one audience')
      if (claims.exp - claims.iat > maxLifetime) throw new UpstreamTokenError('claims', `the token lives longer than ${maxLifetime} s`)
      let binding: ReturnType<typeof messageBinding>
      try {
        binding = messageBinding(input.httpMethod.toUpperCase(), input.body)
      } catch {
        throw new UpstreamTokenError('call_hash', 'the request carries no JSON-RPC message to check the token against')
      }
      if (!String(claims.scope).split(' ').includes(binding.scope)) {
        throw new UpstreamTokenError('scope', `the token's scope "${claims.scope}" does not cover this message (${binding.scope})`)
      }
      const a = Buffer.from(String(claims.call_sha256))
      const b = Buffer.from(binding.callSha256)
      if (a.length !== b.length || !timingSafeEqual(a, b)) {
        throw new UpstreamTokenError('call_hash', 'the message does not match the call the token was minted for (call_sha256)')
      }
      let first: boolean
      try { first = await replay.use(claims.jti, claims.exp) } catch {
        throw new UpstreamTokenError('replay_store', 'the jti replay store is unreachable; the token cannot be checked for reuse')
      }
      if (!first) throw new UpstreamTokenError('replay', 'the token was already used (jti)')
      return claims
    },
    async close () { if (ownsReplay) await replay.close() }
  }
}

/** For plain Node http servers: verifies a request whose body is already parsed. Resolves to a refusal or undefined. */
export async function checkNodeRequest (verifier: UpstreamVerifier, req: IncomingMessage, body: unknown): Promise<{ status: number, code: UpstreamTokenErrorCode, message: string } | undefined> {
  try {
    await verifier.verify({ authorization: req.headers.authorization, httpMethod: req.method ?? 'GET', body })
    return undefined
  } catch (err) {
    const e = mapError(err)
    return { status: e.statusCode, code: e.code, message: `Unauthorized: ${e.message}` }
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The verified ephemeral token's claims (set by mcp-warden/upstream's plugin). */
    gatewayToken: EphemeralClaims | null
  }
}

/**
 * Fastify plugin for an MCP server behind mcp-warden: every request must carry a valid
 * ephemeral token for that exact message, or gets 401 with a JSON-RPC error.
 * Register it in the scope of your MCP route (it needs the parsed JSON body).
 */
async function upstreamAuth (app: FastifyInstance, options: UpstreamVerifierOptions): Promise<void> {
  const verifier = createUpstreamVerifier(options)
  app.decorateRequest('gatewayToken', null)
  app.addHook('preHandler', async (request, reply) => {
    try {
      request.gatewayToken = await verifier.verify({ authorization: request.headers.authorization, httpMethod: request.method, body: request.body })
    } catch (err) {
      const e = mapError(err)
      return await reply.code(e.statusCode).header('www-authenticate', `Bearer error="invalid_token", error_description="${e.message.replace(/"/g, "'")}"`)
        .send({ jsonrpc: '2.0', id: null, error: { code: -32001, message: `Unauthorized: ${e.message}`, data: { reason: e.code } } })
    }
  })
  app.addHook('onClose', async () => { await verifier.close() })
}

export const upstreamAuthPlugin = fp(upstreamAuth, { name: 'mcp-warden-upstream-auth', fastify: '5.x' })
