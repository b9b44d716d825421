/**
 * rate-limit: per-agent request limits, and per-tool limits for tools/call
 * (`rateLimit` in the config), counted by @fastify/rate-limit in the gateway's store
 * (its Redis store when `store: redis://…`, so that every replica counts the same).
 *
 * Every MCP request of an agent counts, refused ones too: the agent's budget is spent in
 * preValidation (once the message is parsed, before the Cedar decision), a request refused
 * before that (a parse error, a foreign session, a body over the limit) is counted when its
 * answer is sent, and a request whose client went away before its body was read (an upload
 * aborted mid-way) when it goes away: on the budget of the agent whose token was verified, or,
 * when no one was authenticated, on the per-address budget of failed authentications. Over the
 * limit → 429 with `Retry-After` and a JSON-RPC error body, nothing is forwarded and no decision
 * is computed, and the audit records the refusal. The requests the aggregated endpoint `/mcp`
 * makes on the agent's behalf do not count again; per-tool limits apply after the decision, to
 * allowed calls. Failed authentications have a budget per client
 * address, kept by the identity plugin. The counters are keyed by the agent (its token's
 * issuer + agent id + user; a token from the gateway's token exchange spends the budget of the
 * token it was exchanged for), never by IP: agents behind one NAT do not share a limit.
 */
import fp from 'fastify-plugin'
import rateLimitPlugin from '@fastify/rate-limit'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { GatewayConfig, RateLimitConfig } from '../lib/config.js'
import { RateLimitedError, StoreUnavailableError } from '../lib/errors.js'
import { budgetKey } from '../lib/identity.js'
import { startStage } from '../lib/timing.js'
import type {} from './decorations.js'

export interface RateLimitOptions {
  config: GatewayConfig
}

interface LimitResult { isAllowed: boolean, isExceeded?: boolean, max?: number, remaining?: number, ttlInSeconds?: number }
type Limiter = (request: FastifyRequest) => Promise<LimitResult>

/** The tool limit that applies to a call: `server/tool` first, then the bare tool name. */
export function toolLimit (limits: RateLimitConfig, server: string, tool: string): { key: string, max: number, timeWindowMs: number } | undefined {
  for (const key of [`${server}/${tool}`, tool]) {
    const l = limits.tools.get(key)
    if (l !== undefined) return { key, ...l }
  }
  return undefined
}

async function rateLimit (app: FastifyInstance, opts: RateLimitOptions): Promise<void> {
  const limits = opts.config.rateLimit
  if (limits === undefined) return
  const redis = app.mcpWarden.store.rateLimitRedis
  await app.register(rateLimitPlugin, {
    global: false,
    ...(redis !== undefined ? { redis: redis as never, nameSpace: 'mcpw:ratelimit:' } : {}),
    skipOnError: false
  })
  const create = (app as unknown as { createRateLimit: (o: object) => Limiter }).createRateLimit
  const perAgent = create({
    max: limits.max,
    timeWindow: limits.timeWindowMs,
    keyGenerator: (request: FastifyRequest) => `agent:${budgetKey(request.identity!)}`
  })
  // The tool limit of a call, looked up once in the hook below.
  const toolLimitOf = new WeakMap<FastifyRequest, { key: string, max: number, timeWindowMs: number }>()
  const perTool = create({
    max: (request: FastifyRequest) => toolLimitOf.get(request)!.max,
    timeWindow: (request: FastifyRequest) => toolLimitOf.get(request)!.timeWindowMs,
    keyGenerator: (request: FastifyRequest) => `tool:${toolLimitOf.get(request)!.key}:${budgetKey(request.identity!)}`
  })

  async function apply (limiter: Limiter, request: FastifyRequest, reply: FastifyReply, what: string): Promise<void> {
    let r: LimitResult
    try {
      r = await limiter(request)
    } catch (err) {
      throw new StoreUnavailableError({ cause: err })
    }
    if (r.isAllowed || r.isExceeded !== true) return
    const retry = Math.max(1, r.ttlInSeconds ?? 1)
    const error = new RateLimitedError(`${what} (${r.max ?? 0} requests per window)`, String(retry))
    request.log.info({ agentId: request.identity?.agentId, limit: what }, 'rate limited')
    void reply.headers({ 'retry-after': String(retry), 'x-ratelimit-limit': String(r.max ?? 0), 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(retry) })
    throw error
  }

  // The agent's own requests: one on a server route or on /mcp, not the ones /mcp makes for it.
  // `counted`: requests whose budget is settled (spent, or answered and counted if they had to be).
  const counted = new WeakSet<FastifyRequest>()
  const mcpRoute = (request: FastifyRequest): boolean =>
    request.mcpTarget !== null || request.routeOptions.config.mcpAggregate === true
  const agentRequest = (request: FastifyRequest): boolean =>
    request.identity !== null && !request.mcpInternal && mcpRoute(request)

  app.addHook('preValidation', async (request, reply) => {
    if (!agentRequest(request)) return
    counted.add(request)
    const done = startStage(request, 'ratelimit')
    try {
      await apply(perAgent, request, reply, 'requests of this agent')
    } finally {
      done()
    }
  })

  // Refused before preValidation (413, 415, a parse error, a foreign session): still counted.
  app.addHook('onResponse', async (request) => {
    if (counted.has(request)) return
    counted.add(request)
    if (!agentRequest(request)) return
    try { await perAgent(request) } catch { /* the store is down: the request was refused anyway */ }
  })

  // Gone before its body was read (an upload aborted mid-way, the body's stream failing): no
  // answer is sent, so neither hook above runs. The agent's budget pays, once its token is
  // verified (the abort may come while that is under way); with no one authenticated, the
  // address's budget of failed authentications does.
  app.addHook('onRequestAbort', async (request) => {
    if (!mcpRoute(request)) return
    await app.mcpWarden.identitySettled(request)
    if (counted.has(request)) return
    counted.add(request)
    if (agentRequest(request)) {
      try { await perAgent(request) } catch { /* the store is down: nothing was forwarded anyway */ }
    } else if (request.identity === null) {
      app.mcpWarden.authFailures?.fail(request)
    }
  })

  app.addHook('preHandler', async (request, reply) => {
    if (request.mcpTarget === null || request.identity === null) return
    // A refused call costs no per-tool budget; in shadow mode it is forwarded, so it does.
    if (request.decision !== null && !request.decision.allowed && request.mcpShadow == null) return
    const done = startStage(request, 'ratelimit')
    try {
      const m = request.mcp
      const limit = m?.target === 'tool' ? toolLimit(limits, request.mcpTarget.server.name, m.tool) : undefined
      if (limit !== undefined && m?.target === 'tool') {
        toolLimitOf.set(request, limit)
        await apply(perTool, request, reply, `calls of tool ${m.tool} by this agent`)
      }
    } finally {
      done()
    }
  })
}

export default fp(rateLimit, {
  name: 'mcp-warden-rate-limit',
  fastify: '5.x',
  dependencies: ['mcp-warden-store', 'mcp-warden-context', 'mcp-warden-identity', 'mcp-warden-cedar-authz']
})
export { rateLimit }
