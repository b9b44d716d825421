/**
 * audit: one JSON line per MCP message, written when the response ends or the client
 * goes away, to a pino destination (stdout or a file, asynchronous). Never a token or
 * a secret: a record is built from an explicit list of fields, nothing else.
 */
import fp from 'fastify-plugin'
import { pino, type DestinationStream } from 'pino'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { provide, provided, type AuditRecord, type AuditSink } from './decorations.js'

export interface AuditOptions {
  config: GatewayConfig
  /** Where records go; default: config.audit.destination (stdout or a file). */
  stream?: DestinationStream
}

const written = Symbol('mcp-warden.audited')
const started = Symbol('mcp-warden.started')

export function auditRecord (request: FastifyRequest, status: number, aborted: boolean, durationMs: number): AuditRecord {
  const m = request.mcp
  // In shadow mode a call Cedar did not allow is forwarded; its record keeps what enforcing
  // would have recorded (the decision), beside the status the agent got.
  const shadowed = request.mcpShadow != null && request.decision != null && !request.decision.allowed
    ? { outcome: request.decision.outcome, reason: request.decision.reason }
    : null
  const outcome = shadowed ?? request.mcpOutcome ?? (aborted
    ? { outcome: 'error' as const, reason: 'client closed the connection' }
    : { outcome: status >= 500 ? 'error' as const : status >= 400 ? 'deny' as const : 'allow' as const, reason: `HTTP ${status}` })
  return {
    time: new Date().toISOString(),
    requestId: request.id,
    decisionId: request.decision?.decisionId ?? null,
    agentId: request.identity?.agentId ?? null,
    userId: request.identity?.userId ?? null,
    server: request.mcpTarget?.server.name ?? (request.params as { name?: string }).name ?? null,
    httpMethod: request.method,
    method: m?.method ?? null,
    rpcId: m?.id ?? null,
    ...(m?.tool !== undefined ? { tool: m.tool } : {}),
    ...(m?.uri !== undefined ? { uri: m.uri } : {}),
    ...(m?.prompt !== undefined ? { prompt: m.prompt } : {}),
    ...(request.mcpUpstreamToken != null ? { upstreamTokenId: request.mcpUpstreamToken.jti } : {}),
    ...(request.mcpApproval != null ? { approvalId: request.mcpApproval.id, approver: request.mcpApproval.approver } : {}),
    ...(request.mcpShadow != null ? { shadow: true as const, ...(request.mcpShadow.hidden.length > 0 ? { shadowHidden: [...request.mcpShadow.hidden] } : {}) } : {}),
    outcome: outcome.outcome,
    reason: outcome.reason,
    policies: [...(request.decision?.policies ?? [])],
    policyVersion: request.decision?.policyVersion ?? (provided(request.server, 'cedar')?.version ?? null),
    status,
    durationMs: Math.round(durationMs * 1000) / 1000
  }
}

async function audit (app: FastifyInstance, opts: AuditOptions): Promise<void> {
  const dest = opts.stream ?? (opts.config.audit.destination === 'stdout'
    ? pino.destination({ dest: 1, sync: false })
    : pino.destination({ dest: opts.config.audit.destination, mkdir: true, sync: false }))
  const listeners = new Set<(record: AuditRecord) => void>()
  const sink: AuditSink = {
    write (record) {
      dest.write(JSON.stringify(record) + '\n')
      for (const listener of listeners) {
        try { listener(record) } catch (err) { app.log.error({ err }, 'audit listener failed') }
      }
    },
    onRecord (listener) {
      listeners.add(listener)
      return () => { listeners.delete(listener) }
    }
  }
  provide(app, 'audit', sink)

  app.decorateRequest(written, false)
  app.decorateRequest(started, 0)
  type Tracked = FastifyRequest & { [written]: boolean, [started]: number }
  function write (req: FastifyRequest, status: number, aborted: boolean): void {
    const request = req as Tracked
    const route = request.routeOptions.config
    if ((route.mcp !== true && route.mcpAggregate !== true && route.mcpRefusal !== true) || request[written] === true) return
    request[written] = true
    sink.write(auditRecord(request, status, aborted, request[started] === 0 ? 0 : performance.now() - request[started]))
  }

  app.addHook('onRequest', async (request) => { (request as Tracked)[started] = performance.now() })
  app.addHook('onResponse', async (request, reply) => { write(request, reply.statusCode, false) })
  app.addHook('onRequestAbort', async (request) => { write(request, 499, true) })
  app.addHook('onClose', async () => {
    const d = dest as { flushSync?: () => void }
    try { d.flushSync?.() } catch { /* destination not ready or already closed */ }
  })
}

export default fp(audit, { name: 'mcp-warden-audit', fastify: '5.x' })
export { audit }
