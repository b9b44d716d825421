/**
 * metrics: Prometheus text at GET /metrics (prom-client, a registry of its own) with the
 * duration of each pipeline stage and request and decision counters; and, with
 * `serverTiming: true`, a Server-Timing header on MCP answers (e.g. `identity;dur=0.081`).
 */
import fp from 'fastify-plugin'
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { declareStages, stagesOf } from '../lib/timing.js'
import { MCP_METHODS } from '../lib/mcp-methods.js'
import { provide, provided } from './decorations.js'

const HTTP_METHODS = new Set(['GET', 'POST', 'DELETE'])

export interface MetricsOptions {
  config: GatewayConfig
}

async function metrics (app: FastifyInstance, opts: MetricsOptions): Promise<void> {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'mcp_warden_' })
  const stage = new Histogram({
    name: 'mcp_warden_stage_duration_seconds',
    help: 'Time spent in each stage of the MCP pipeline',
    labelNames: ['stage'],
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry]
  })
  const requests = new Counter({ name: 'mcp_warden_requests_total', help: 'MCP requests by server, method and outcome', labelNames: ['server', 'method', 'outcome', 'status'], registers: [registry] })
  const decisions = new Counter({ name: 'mcp_warden_decisions_total', help: 'Cedar decisions by outcome', labelNames: ['outcome'], registers: [registry] })
  provide(app, 'metrics', registry)
  declareStages(app)

  if (opts.config.serverTiming) {
    app.addHook('onSend', async (request, reply, payload) => {
      if (request.mcpTarget === null) return payload
      const parts = [...stagesOf(request)].map(([name, ns]) => `${name};dur=${(Number(ns) / 1e6).toFixed(3)}`)
      if (parts.length > 0) void reply.header('server-timing', parts.join(', '))
      return payload
    })
  }

  app.addHook('onResponse', async (request, reply) => {
    if (request.routeOptions.config.mcp !== true) return
    for (const [name, ns] of stagesOf(request)) stage.observe({ stage: name }, Number(ns) / 1e9)
    if (request.decision != null) decisions.inc({ outcome: request.decision.outcome })
    requests.inc({
      server: request.mcpTarget?.server.name ?? 'unknown',
      // Label values come from bounded sets only: an agent's made-up method is `other`.
      method: request.mcp?.method != null ? (MCP_METHODS.has(request.mcp.method) ? request.mcp.method : 'other') : (request.mcp?.kind === 'response' ? 'response' : HTTP_METHODS.has(request.method) ? request.method : 'other'),
      outcome: request.mcpOutcome?.outcome ?? (reply.statusCode < 400 ? 'allow' : 'deny'),
      status: String(reply.statusCode)
    })
  })

  // On the admin listener when there is one (the public listener then has no such route).
  const routes = provided(app, 'admin') ?? app
  routes.get('/metrics', async (_request, reply) => {
    void reply.type(registry.contentType)
    return await registry.metrics()
  })
}

export default fp(metrics, { name: 'mcp-warden-metrics', fastify: '5.x' })
export { metrics }
