/**
 * The host: composes the plugins in pipeline order (DESIGN.md §3) on one Fastify instance.
 * Users who want their own host register the same plugins themselves.
 */
import { randomUUID } from 'node:crypto'
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { DestinationStream } from 'pino'
import type { TracerProvider } from '@opentelemetry/api'
import type { GatewayConfig } from './config.js'
import type { GatewayStore } from './stores/types.js'
import store from '../plugins/store.js'
import rateLimit from '../plugins/rate-limit.js'
import aggregate from '../plugins/aggregate.js'
import { startStdioBridges } from './stdio-bridge.js'
import audit from '../plugins/audit.js'
import metrics from '../plugins/metrics.js'
import telemetry from '../plugins/telemetry.js'
import mcpContext, { hostCheck } from '../plugins/mcp-context.js'
import identity from '../plugins/identity.js'
import cedarAuthz from '../plugins/cedar-authz.js'
import approvals from '../plugins/approvals.js'
import mcpProxy from '../plugins/mcp-proxy.js'
import ephemeralToken from '../plugins/ephemeral-token.js'
import toolFilter from '../plugins/tool-filter.js'
import tokenExchange from '../plugins/token-exchange.js'
import upstreamSecret from '../plugins/upstream-secret.js'
import health from '../plugins/health.js'
import operatorConsole from '../plugins/console.js'
import { provide } from '../plugins/decorations.js'
import { createGatewayTokens, type GatewayTokens } from './tokens/gateway-tokens.js'

export interface GatewayOptions {
  /** Fastify's logger option; default: pino at config.logLevel with secrets redacted. */
  logger?: FastifyServerOptions['logger']
  /** Shared state; default: the store `config.store` names (closed with the gateway). */
  store?: GatewayStore
  /** Audit destination; default: config.audit.destination. */
  auditStream?: DestinationStream
  /** Records traces with this OpenTelemetry provider (the host's own) instead of telemetry.otlp. */
  tracerProvider?: TracerProvider
}

/** Redaction paths for the operational log: no token or secret is ever written. */
export const REDACT_PATHS = [
  'req.headers.authorization', 'req.headers.cookie', 'req.headers["x-api-key"]',
  '*.token', '*.subject_token', '*.actor_token', '*.access_token', '*.client_secret',
  'subject_token', 'access_token', 'client_secret'
]

/** The MCP routes: /servers/<name>/mcp and the aggregated /mcp. */
function isMcpPath (url: string): boolean {
  const path = url.split('?', 1)[0]!
  return path === '/mcp' || (path.startsWith('/servers/') && path.endsWith('/mcp'))
}

export async function buildGateway (config: GatewayConfig, options: GatewayOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? { level: config.logLevel, redact: { paths: REDACT_PATHS, censor: '[redacted]' } },
    // The audit record is the record of an MCP request: Fastify's two info lines per request
    // ("incoming request", "request completed") are off on the MCP routes unless logRequests.
    logController: new LogController({ disableRequestLogging: (request: { url?: string }) => !config.logRequests && isMcpPath(request.url ?? '') }),
    bodyLimit: config.limits.maxBodyBytes,
    genReqId: () => randomUUID(),
    return503OnClosing: true,
    forceCloseConnections: true
  })

  // The admin listener (admin.listen): health, metrics and the console, off the public port.
  // It starts when the gateway is ready, so a port in use fails the boot, and closes with it.
  if (config.admin !== undefined) {
    const adminListen = config.admin.listen
    const admin = Fastify({
      loggerInstance: app.log.child({ listener: 'admin' }),
      genReqId: () => randomUUID(),
      return503OnClosing: true,
      forceCloseConnections: true
    })
    // DNS rebinding: a loopback admin listener answers only requests addressed to a loopback name.
    const checkHost = hostCheck(config.console.url ?? `http://${adminListen.host.includes(':') ? `[${adminListen.host}]` : adminListen.host}:${adminListen.port}`)
    admin.addHook('onRequest', async (request, reply) => {
      try { checkHost(request.headers.host) } catch {
        return await reply.code(403).type('text/plain; charset=utf-8').send('This Host is not allowed: the admin listener is on a loopback address, so only loopback Host headers are accepted (DNS rebinding defence).\n')
      }
    })
    provide(app, 'admin', admin)
    app.addHook('onReady', async () => { await admin.listen({ host: adminListen.host, port: adminListen.port }) })
    app.addHook('onClose', async () => { await admin.close() })
  }

  // stdio upstreams get a local Streamable HTTP bridge; the plugins see its URL.
  const bridged = await startStdioBridges(config, app.log)
  app.addHook('onClose', async () => { await bridged.close() })
  config = bridged.config
  provide(app, 'stdioBridges', bridged.bridges)

  // A plugin that refuses its options fails here: close what the earlier ones opened
  // (stdio bridges, the store's connection), so a refused boot leaves nothing running.
  let tokens: GatewayTokens
  try {
    // The signing keys, handed to every plugin that uses them.
    tokens = createGatewayTokens(config.tokens, app.log)
    await app.register(telemetry, { config, ...(options.tracerProvider !== undefined ? { tracerProvider: options.tracerProvider } : {}) })
    await app.register(metrics, { config })
    await app.register(audit, { config, keys: tokens.keys, ...(options.auditStream !== undefined ? { stream: options.auditStream } : {}) })
    await app.register(mcpContext, { config })
    await app.register(store, { config, ...(options.store !== undefined ? { store: options.store } : {}) })
    await app.register(identity, { config, tokens })
    await app.register(cedarAuthz, { config })
    await app.register(approvals, { config, tokens })
    await app.register(toolFilter, { config, tokens })
    await app.register(rateLimit, { config })
    await app.register(ephemeralToken, { config, tokens })
    await app.register(tokenExchange, { config })
    await app.register(upstreamSecret, { config })
    await app.register(mcpProxy, { config })
    await app.register(aggregate, { config })
    await app.register(health, { config })
    await app.register(operatorConsole, { config, tokens })
  } catch (err) {
    await app.close().catch(() => {})
    await bridged.close()
    throw err
  }
  // SIGHUP re-reads what can change while the gateway runs: the policy set and the signing keys;
  // and reopens the audit file (after logrotate moved it).
  const onHup = (): void => {
    void app.mcpWarden.cedar.reload()
    tokens.reload()
    app.mcpWarden.audit.reopen()
  }
  process.on('SIGHUP', onHup)
  app.addHook('onClose', async () => { process.off('SIGHUP', onHup) })
  return app
}
