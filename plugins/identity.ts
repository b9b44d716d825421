/**
 * identity: verifies the agent's JWT on every MCP route (onRequest, before the body is read)
 * and decorates `request.identity`.
 *
 * Checks (DESIGN.md §6): signature with an allowed algorithm (never `none`, never HS*),
 * `iss`, `exp`, `nbf` with clock tolerance, and `aud` per route (RFC 8707: the route's own
 * resource URL, so a token for one server is refused by another). A refusal is 401 with
 * `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728) and nothing is forwarded.
 * Also serves the RFC 9728 metadata of each server route.
 *
 * With `rateLimit` configured, failed authentications spend a budget per client address
 * (`rateLimit.unauthenticated`, per replica): an address that spent it gets 429 with
 * `Retry-After` before its token is even read, for the rest of the window. The budget is a
 * decoration (`app.mcpWarden.authFailures`) so that every endpoint that authenticates a client spends the
 * same one: the token endpoint, and the rate limiter for requests aborted before anyone was
 * authenticated. An outside request carrying the header of the gateway's own in-process
 * requests is a failed authentication like any other: the header never skips the budget.
 */
import fp from 'fastify-plugin'
import { createHash, randomBytes } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { startStage } from '../lib/timing.js'
import { resourceUrl } from '../lib/config.js'
import { AddressBudget } from '../lib/address-budget.js'
import { BoundedCache } from '../lib/bounded-cache.js'
import { KeysUnavailableError, RateLimitedError, TokenAudienceError, TokenInvalidError, TokenMissingError, UnknownServerError } from '../lib/errors.js'
import { audiences, BAD_AUTHORIZATION, bearerToken, INTERNAL_IDENTITY_HEADER, checkTokenTimes, createBearerVerifier, identityFromClaims, tokenError, type Identity } from '../lib/identity.js'
import mcpContext from './mcp-context.js'
import { provide, provided, type AuthFailureBudget } from './decorations.js'
import type { GatewayTokens } from '../lib/tokens/gateway-tokens.js'

export interface IdentityOptions {
  config: GatewayConfig
  /**
   * The gateway's signing keys, so that tokens the gateway issued (its token endpoint) verify;
   * buildGateway passes them. Default: those of the ephemeral-token plugin, once registered.
   */
  tokens?: GatewayTokens
}

/** Verified tokens remembered at most (a few hundred bytes each, with their identity). */
export const VERIFIED_TOKENS = 10_000
/** A longer token is verified on every request: a full cache stays within about VERIFIED_TOKENS × 2 × this. */
const MAX_REMEMBERED_TOKEN = 4096

/** Text for a quoted-string of `WWW-Authenticate`: printable ASCII without quotes or backslashes (a token's alg or kid can hold anything). */
const quote = (s: string): string => s.replace(/[^\x20\x21\x23-\x5b\x5d-\x7e]/g, ' ')

async function identity (app: FastifyInstance, opts: IdentityOptions): Promise<void> {
  const { config } = opts
  // The request context (Origin and Host checks, server lookup, JSON-RPC parsing) is what every
  // later stage reads; a host that did not register it gets it here, with the same config.
  if (!app.hasPlugin('mcp-warden-context')) await app.register(mcpContext, { config })
  const id = config.identity
  if (id.jwksUri === undefined && id.publicKeyPem === undefined) {
    throw new Error('mcp-warden identity: identity needs a key source (jwksUri or publicKeyFile)')
  }
  const extraAudiences = id.audiences
  const gatewayIssuer = config.tokens.issuer
  // The one verifier of bearer tokens (lib/identity.ts), as the token endpoint and the CLI use it.
  const verifyBearer = createBearerVerifier(id, gatewayIssuer, () => (opts.tokens ?? provided(app, 'tokens'))?.keys.jwks())
  // Tokens whose signature and claims verified, by the SHA-256 of the token (never by claims):
  // an agent sends the same token with every call until it expires. Only successes are kept.
  const verified = new BoundedCache<{ claims: Record<string, unknown>, identity: Identity }>(VERIFIED_TOKENS)

  app.decorateRequest('identity', null)
  app.decorateRequest('mcpInternal', false)

  const internal = new Map<string, { identity: Identity, until: number }>()
  provide(app, 'internalIdentity', {
    issue (identity: Identity): string {
      const now = Date.now()
      if (internal.size > 1000) for (const [k, v] of internal) if (v.until < now) internal.delete(k)
      const handle = randomBytes(32).toString('base64url')
      internal.set(handle, { identity, until: now + 30_000 })
      return handle
    }
  })

  // Failed authentications per client address (rateLimit.unauthenticated): an address that
  // spent its budget is refused with 429 before its token is read, until its window ends.
  const unauth = config.rateLimit?.unauthenticated
  const failures = unauth !== undefined ? new AddressBudget(unauth.max, unauth.timeWindowMs) : undefined
  const failedRequests = new WeakSet<FastifyRequest>()
  const budget: AuthFailureBudget | null = failures === undefined
    ? null
    : {
        max: unauth!.max,
        blockedFor: (request) => failures.blockedFor(request.ip),
        fail (request) {
          if (failedRequests.has(request)) return 0
          failedRequests.add(request)
          return failures.fail(request.ip)
        }
      }
  provide(app, 'authFailures', budget)
  const refuseAddress = (reply: FastifyReply, seconds: number): never => {
    reply.removeHeader('www-authenticate')
    void reply.header('retry-after', String(seconds))
    throw new RateLimitedError(`failed authentications from this client address (${unauth!.max} per window)`, String(seconds))
  }

  // Authentications under way, so that a hook running meanwhile can wait for their outcome.
  const pending = new WeakMap<FastifyRequest, Promise<void>>()
  provide(app, 'identitySettled', async (request: FastifyRequest) => { await pending.get(request) })

  /**
   * One authentication attempt of a request, under the address budget: refused with 429 before
   * `attempt` runs when the address has spent it; a failure spends it. Sets `request.identity`.
   */
  function authenticateWith (request: FastifyRequest, reply: FastifyReply, attempt: () => Promise<Identity>): Promise<Identity> {
    const run = async (): Promise<Identity> => {
      if (budget === null) return await attempt()
      const wait = budget.blockedFor(request)
      if (wait > 0) refuseAddress(reply, wait)
      try {
        return await attempt()
      } catch (err) {
        // An unreachable key source is the gateway's problem, not the client's.
        if (!(err instanceof KeysUnavailableError)) {
          const over = budget.fail(request)
          if (over > 0) refuseAddress(reply, over)
        }
        throw err
      }
    }
    const result = run().then(identity => { request.identity = identity; return identity })
    pending.set(request, result.then(() => {}, () => {}))
    return result
  }

  async function authenticate (request: FastifyRequest, reply: FastifyReply, resource: string, metadataUrl: string): Promise<Identity> {
    return await authenticateWith(request, reply, async () => await verify(request, reply, resource, metadataUrl))
  }

  async function verify (request: FastifyRequest, reply: FastifyReply, resource: string, metadataUrl: string): Promise<Identity> {
    const challenge = `Bearer resource_metadata="${metadataUrl}"`
    const header = request.headers.authorization
    if (header === undefined || !/^Bearer\s+\S/i.test(header)) {
      reply.header('www-authenticate', challenge)
      throw new TokenMissingError()
    }
    let claims: Record<string, unknown>
    let known: Identity | undefined
    let remember: string | undefined
    const done = startStage(request, 'identity')
    try {
      const token = bearerToken(header)
      if (token === undefined) throw tokenError({ code: BAD_AUTHORIZATION })
      // Tokens up to MAX_REMEMBERED_TOKEN characters are remembered (an ordinary JWT is well under).
      const key = id.verifiedTokenCacheSeconds > 0 && token.length <= MAX_REMEMBERED_TOKEN ? createHash('sha256').update(token).digest('base64') : undefined
      const hit = key === undefined ? undefined : verified.get(key)
      if (hit !== undefined) {
        claims = hit.claims
        known = hit.identity
      } else {
        claims = await verifyBearer(token)
        remember = key
      }
    } catch (err) {
      done()
      const e = tokenError(err)
      if (e instanceof TokenInvalidError) {
        reply.header('www-authenticate', `${challenge}, error="invalid_token", error_description="${quote(e.message)}"`)
      }
      throw e
    }
    done()
    const aud = audiences(claims)
    if (!aud.includes(resource) && !aud.some(a => extraAudiences.includes(a))) {
      const e = new TokenAudienceError(resource)
      reply.header('www-authenticate', `${challenge}, error="invalid_token", error_description="${quote(e.message)}"`)
      throw e
    }
    try {
      checkTokenTimes(claims, id)
      if (known !== undefined) return known
      const identity = identityFromClaims(claims, id, gatewayIssuer)
      if (remember !== undefined) {
        const exp = typeof claims.exp === 'number' ? claims.exp * 1000 : 0
        verified.set(remember, { claims, identity }, Math.min(exp, Date.now() + id.verifiedTokenCacheSeconds * 1000))
      }
      return identity
    } catch (err) {
      reply.header('www-authenticate', `${challenge}, error="invalid_token"`)
      throw err
    }
  }
  provide(app, 'authenticate', authenticate)

  app.addHook('onRequest', async (request, reply) => {
    const target = request.mcpTarget
    const handle = request.headers[INTERNAL_IDENTITY_HEADER]
    if (target === null) {
      // Only server routes take the gateway's own handles: anywhere else (the aggregated /mcp
      // above all) the header comes from a client, and is a failed authentication.
      if (handle !== undefined) await authenticateWith(request, reply, async () => { throw new TokenInvalidError('the internal request header is not accepted here') })
      return
    }
    if (handle !== undefined) {
      const entry = typeof handle === 'string' ? internal.get(handle) : undefined
      if (typeof handle === 'string') internal.delete(handle)
      if (entry !== undefined && entry.until >= Date.now()) {
        request.identity = entry.identity
        request.mcpInternal = true
        return
      }
      // Not a handle this gateway issued, so not one of its own requests: a client sent the
      // header, and that is a failed authentication, under the address budget like any other.
      await authenticateWith(request, reply, async () => { throw new TokenInvalidError('the internal request handle is unknown or used') })
    }
    await authenticate(request, reply, target.resource, target.metadataUrl)
  })

  // RFC 9728 protected resource metadata, one document per server route.
  app.get<{ Params: { name: string } }>('/.well-known/oauth-protected-resource/servers/:name/mcp', async (request, reply) => {
    const server = config.upstreams.get(request.params.name)
    if (server === undefined) throw new UnknownServerError(request.params.name.slice(0, 64))
    void reply.header('cache-control', 'public, max-age=300')
    return {
      resource: resourceUrl(config, server.name),
      authorization_servers: [id.issuer],
      bearer_methods_supported: ['header'],
      resource_name: `mcp-warden: ${server.name}`
    }
  })
}

export default fp(identity, { name: 'mcp-warden-identity', fastify: '5.x' })
export { identity }

export { INTERNAL_IDENTITY_HEADER } from '../lib/identity.js'
