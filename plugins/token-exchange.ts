/**
 * token-exchange (RFC 8693), both ways:
 * - as STS: `POST /oauth/token` exchanges an agent token for a narrower gateway token
 *   (one server route, a Cedar-allowed scope, `act` for delegation);
 * - as client: for upstreams with `auth.type: exchange`, exchanges the agent's token at the
 *   upstream's authorization server for each call (cached) and hands the result to the proxy.
 * Failures fail closed: a refusal by the authorization server is an access denied, an
 * unreachable one a 503; nothing is forwarded either way.
 *
 * The token endpoint authenticates its client by the subject token in the body, so its failed
 * authentications spend the same per-address budget as the MCP routes' (`app.mcpWarden.authFailures`):
 * every refusal before a subject token was verified, every subject or actor token that is not
 * valid (`invalid_grant`), and every upload aborted before its body was read. An address that
 * spent it is answered 429 with `Retry-After` and `{"error":"slow_down"}` before its body is read.
 */
import fp from 'fastify-plugin'
import formbody from '@fastify/formbody'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { AccessDeniedError, CredentialError, KeysUnavailableError, refusal, StoreUnavailableError } from '../lib/errors.js'
import { ExchangeClient, ExchangeRefusedError } from '../lib/exchange-client.js'
import { bearerToken, createBearerVerifier, principalKey } from '../lib/identity.js'
import { exchangeToken, StsError } from '../lib/sts.js'
import { messageBinding } from '../lib/tokens/binding.js'
import { provided } from './decorations.js'
import { addCredentialHook } from './credential-hook.js'

export interface TokenExchangeOptions {
  config: GatewayConfig
}

async function tokenExchange (app: FastifyInstance, opts: TokenExchangeOptions): Promise<void> {
  const { config } = opts
  const verify = createBearerVerifier(config.identity, config.tokens.issuer, () => app.mcpWarden.tokens.keys.jwks())

  await app.register(async function sts (scope) {
    await scope.register(formbody, { bodyLimit: 64 * 1024 })
    const budget = app.mcpWarden.authFailures
    // Requests answered (or refused for their address): an abort after that spends nothing more.
    const answered = new WeakSet<FastifyRequest>()
    const started = new WeakMap<FastifyRequest, number>()
    type Params = Record<string, string | string[] | undefined>
    const text = (v: unknown): string | undefined => typeof v === 'string' ? v.slice(0, 512) : undefined
    const record = (request: FastifyRequest, params: Params, outcome: 'allow' | 'deny' | 'error', reason: string, status: number, who: { agentId?: string | null, userId?: string | null, actor?: string | null }): void => {
      app.mcpWarden.audit.write({
        time: new Date().toISOString(),
        requestId: request.id,
        decisionId: null,
        event: 'token-exchange',
        agentId: who.agentId ?? null,
        userId: who.userId ?? null,
        actor: who.actor ?? null,
        server: null,
        httpMethod: request.method,
        method: null,
        rpcId: null,
        ...(text(params.resource) !== undefined ? { resource: text(params.resource)! } : {}),
        ...(text(params.scope) !== undefined ? { scope: text(params.scope)! } : {}),
        outcome,
        reason,
        policies: [],
        policyVersion: app.mcpWarden.cedar.version,
        status,
        durationMs: Math.round((performance.now() - (started.get(request) ?? performance.now())) * 1000) / 1000
      })
    }
    // RFC 6749 §5.2 has no error for "too many attempts"; `slow_down` is the token endpoint's
    // registered one for it (RFC 8628 §3.5), with the wait in Retry-After.
    const slowDown = async (request: FastifyRequest, reply: FastifyReply, params: Params, seconds: number): Promise<FastifyReply> => {
      answered.add(request)
      const reason = `too many failed token requests from this client address (${budget!.max} per window); retry after ${seconds} seconds`
      request.log.info({ reason }, 'token exchange refused')
      record(request, params, 'deny', `slow_down: ${reason}`, 429, {})
      return await reply.code(429).header('retry-after', String(seconds)).header('cache-control', 'no-store').header('pragma', 'no-cache')
        .send({ error: 'slow_down', error_description: reason })
    }
    /** A failed authentication of the client's address: the seconds to wait when it went past the budget, else 0. */
    const fail = (request: FastifyRequest): number => budget?.fail(request) ?? 0

    scope.addHook('onRequest', async (request, reply) => {
      started.set(request, performance.now())
      const wait = budget?.blockedFor(request) ?? 0
      if (wait > 0) return await slowDown(request, reply, {}, wait)
    })
    scope.addHook('onResponse', async (request) => { answered.add(request) })
    scope.addHook('onRequestAbort', async (request) => {
      if (!answered.has(request)) budget?.fail(request)
    })
    scope.setErrorHandler(async (error: { statusCode?: number }, request, reply) => {
      const status = error.statusCode !== undefined && error.statusCode < 500 ? 400 : 500
      const over = status === 400 ? fail(request) : 0
      if (over > 0) return await slowDown(request, reply, {}, over)
      return await reply.code(status).header('cache-control', 'no-store').header('pragma', 'no-cache')
        .send(status === 400 ? { error: 'invalid_request', error_description: 'send application/x-www-form-urlencoded parameters (RFC 8693)' } : { error: 'server_error' })
    })
    scope.post('/oauth/token', async (request, reply) => {
      void reply.header('cache-control', 'no-store').header('pragma', 'no-cache')
      const params = request.body
      if (params === null || typeof params !== 'object' || !/^application\/x-www-form-urlencoded/i.test(request.headers['content-type'] ?? '')) {
        const over = fail(request)
        if (over > 0) return await slowDown(request, reply, {}, over)
        return await reply.code(400).send({ error: 'invalid_request', error_description: 'send application/x-www-form-urlencoded parameters (RFC 8693)' })
      }
      const p = params as Params
      try {
        const granted = await exchangeToken(p as Record<string, string | string[]>, { config, verify, engine: app.mcpWarden.cedar.engine, minter: app.mcpWarden.tokens.minter })
        const claims = JSON.parse(Buffer.from(granted.access_token.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>
        const act = claims.act as { sub?: unknown } | undefined
        record(request, p, 'allow', `issued for ${String(claims.aud)} with scope ${granted.scope}`, 200, { agentId: String(claims.sub), userId: typeof claims[config.identity.claims.userId] === 'string' ? claims[config.identity.claims.userId] as string : null, actor: typeof act?.sub === 'string' ? act.sub : null })
        return granted
      } catch (err) {
        // The issuer's keys cannot be fetched: an outage (503), not a failed authentication of the client.
        if (err instanceof KeysUnavailableError) {
          request.log.warn({ reason: err.message }, 'token exchange: the issuer\'s keys are unavailable')
          record(request, p, 'error', `temporarily_unavailable: ${err.message}`, 503, {})
          return await reply.code(503).header('retry-after', '5').send({ error: 'temporarily_unavailable', error_description: err.message })
        }
        if (!(err instanceof StsError)) throw err
        // No subject verified yet, or a subject or actor token that is not valid: a failed authentication.
        const over = err.subject === undefined || err.error === 'invalid_grant' ? fail(request) : 0
        if (over > 0) return await slowDown(request, reply, p, over)
        request.log.info({ error: err.error, reason: err.message }, 'token exchange refused')
        record(request, p, 'deny', `${err.error}: ${err.message}`, 400, { agentId: err.subject?.agentId ?? null, userId: err.subject?.userId ?? null })
        return await reply.code(400).send({ error: err.error, error_description: err.message })
      }
    })
  })

  // The client side: one ExchangeClient (and cache) per exchange upstream.
  const clients = new Map<string, ExchangeClient>()
  for (const u of config.upstreams.values()) if (u.auth.type === 'exchange') clients.set(u.name, new ExchangeClient(u.auth, provided(app, 'store')?.tokens))
  if (clients.size === 0) return
  addCredentialHook(app, 'exchange', (server) => clients.get(server.name), async ({ request, identity, decision, server }, client) => {
    const bearer = bearerToken(request.headers.authorization)
    if (bearer === undefined) throw new CredentialError(server.name)
    const binding = messageBinding(request.method, request.mcp?.message)
    const scope = client.scopeFor({ scope: binding.scope, ...(request.mcp?.tool !== undefined ? { tool: request.mcp.tool } : {}), method: request.mcp?.method ?? request.method, server: server.name })
    try {
      const token = await client.tokenFor(bearer, principalKey(identity), scope, identity.expiresAt)
      return { headers: { authorization: `Bearer ${token}` } }
    } catch (err) {
      if (err instanceof ExchangeRefusedError) {
        throw refusal(new AccessDeniedError(err.message), {
          reason: err.message,
          data: { decisionId: decision.decisionId, policies: decision.policies },
          ...(request.mcp === null ? { statusCode: 403 } : {})
        })
      }
      if (err instanceof StoreUnavailableError) throw err
      request.log.error({ server: server.name, error: (err as Error).message }, 'token exchange for the upstream failed')
      throw new CredentialError(server.name)
    }
  })
}

export default fp(tokenExchange, {
  name: 'mcp-warden-token-exchange',
  fastify: '5.x',
  dependencies: ['mcp-warden-audit', 'mcp-warden-context', 'mcp-warden-identity', 'mcp-warden-cedar-authz', 'mcp-warden-ephemeral-token']
})
export { tokenExchange }
