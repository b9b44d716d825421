/**
 * metrics: Prometheus text at GET /metrics (prom-client, a registry of its own) with the
 * duration of each pipeline stage, request, decision and per-tool counters, and which upstreams
 * are in shadow mode; and, with `serverTiming: true`, a Server-Timing header on MCP answers
 * (e.g. `identity;dur=0.081`). Every label value comes from a bounded set (lib/metric-labels.ts):
 * an agent's made-up server, method or tool name is `other`.
 */
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { declareStages, stagesOf } from '../lib/timing.js'
import { MetricLabels, type ToolKnown } from '../lib/metric-labels.js'
import { provide, provided } from './decorations.js'

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
  const decisions = new Counter({ name: 'mcp_warden_decisions_total', help: 'Cedar decisions by outcome, and whether they were applied (enforce) or only recorded (shadow)', labelNames: ['outcome', 'mode'], registers: [registry] })
  const toolCalls = new Counter({ name: 'mcp_warden_tool_calls_total', help: 'tools/call requests by server, tool and outcome (what the agent got)', labelNames: ['server', 'tool', 'outcome'], registers: [registry] })
  const toolDenials = new Counter({ name: 'mcp_warden_tool_denials_total', help: 'tools/call requests Cedar did not allow (deny or error), by server and tool; in shadow mode, the calls it would have refused', labelNames: ['server', 'tool'], registers: [registry] })
  const shadowMode = new Gauge({ name: 'mcp_warden_upstream_shadow_mode', help: '1 when the upstream is in shadow mode (Cedar decisions recorded, not applied), 0 when they are enforced', labelNames: ['server'], registers: [registry] })
  for (const u of opts.config.upstreams.values()) shadowMode.set({ server: u.name }, u.mode === 'shadow' ? 1 : 0)
  provide(app, 'metrics', registry)
  declareStages(app)

  const labels = new MetricLabels(opts.config)
  // A tool becomes a label value once its upstream listed it and the tool guard let it through
  // (the tool-filter plugin, when the host registered it; without it only declared tools are).
  let known: ToolKnown = () => false
  app.addHook('onReady', async () => {
    const guard = provided(app, 'toolGuard')
    if (guard !== undefined) known = (server, tool) => guard.catalog(server).tools.get(tool)?.review.quarantined === false
  })

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
    const mode = request.mcpShadow != null ? 'shadow' : 'enforce'
    if (request.decision != null) decisions.inc({ outcome: request.decision.outcome, mode })
    const server = labels.server(request.mcpTarget?.server.name)
    const outcome = request.mcpOutcome?.outcome ?? (reply.statusCode < 400 ? 'allow' : 'deny')
    requests.inc({ server, method: labels.method(request.mcp, request.method), outcome, status: labels.status(reply.statusCode) })
    const m = request.mcp
    if (m?.target === 'tool' && m.kind === 'request') {
      const tool = labels.tool(server, m.tool, known)
      toolCalls.inc({ server, tool, outcome })
      if (request.decision != null && !request.decision.allowed) toolDenials.inc({ server, tool })
    }
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
