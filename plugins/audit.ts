/**
 * audit: one JSON line per MCP message, written when the response ends or the client
 * goes away, to a pino destination (stdout or a file, asynchronous). Never a token or
 * a secret: a record is built from an explicit list of fields, nothing else.
 *
 * Every line is sealed into this replica's hash chain (`replica`, `seq`, `prev`; lib/audit),
 * with signed checkpoints when `audit.checkpoint.every` is set (signed with the gateway's
 * token key), and rotates by size with `audit.rotate`; docs/audit.md.
 */
import fp from 'fastify-plugin'
import type { DestinationStream } from 'pino'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { AuditLog } from '../lib/audit/log.js'
import { ConfigError } from '../lib/errors.js'
import { KeyRing, type SigningKey } from '../lib/tokens/keys.js'
import { provide, provided, type AuditRecord, type AuditSink } from './decorations.js'

export interface AuditOptions {
  config: GatewayConfig
  /** Where records go; default: config.audit.destination (stdout or a file). */
  stream?: DestinationStream
  /**
   * The gateway's signing keys (tokens.keysDir), for checkpoints; default: opened from
   * config.tokens.keysDir when `audit.checkpoint.every` is set.
   */
  keys?: { current (): SigningKey }
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
  const cfg = opts.config.audit
  let keys = opts.keys
  if (cfg.checkpointEvery > 0 && keys === undefined) {
    try {
      keys = new KeyRing(opts.config.tokens.keysDir, opts.config.tokens.ttlSeconds)
    } catch (err) {
      throw new ConfigError(`audit.checkpoint: checkpoints are signed with the keys of tokens.keysDir, which cannot be used (${opts.config.tokens.keysDir}): ${(err as Error).message}`)
    }
  }
  const signingKeys = keys
  let log: AuditLog
  try {
    log = new AuditLog({
      destination: cfg.destination,
      ...(opts.stream !== undefined ? { stream: opts.stream } : {}),
      replica: cfg.replica,
      checkpointEvery: cfg.checkpointEvery,
      ...(signingKeys !== undefined ? { signer: () => signingKeys.current() } : {}),
      ...(cfg.rotate !== undefined ? { rotate: cfg.rotate } : {}),
      log: app.log
    })
  } catch (err) {
    throw new ConfigError(`audit.destination: cannot continue the audit chain in ${cfg.destination}: ${(err as Error).message}`)
  }
  const listeners = new Set<(record: AuditRecord) => void>()
  const sink: AuditSink = {
    write (record) {
      log.write(record)
      for (const listener of listeners) {
        try { listener(record) } catch (err) { app.log.error({ err }, 'audit listener failed') }
      }
    },
    onRecord (listener) {
      listeners.add(listener)
      return () => { listeners.delete(listener) }
    },
    reopen () { log.reopen() }
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
  // The last hook to run at close (the plugins registered after this one close first).
  app.addHook('onClose', async () => { await log.close() })
}

export default fp(audit, { name: 'mcp-warden-audit', fastify: '5.x' })
export { audit }
