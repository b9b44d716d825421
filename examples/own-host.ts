import Fastify from 'fastify'
import {
  loadConfig, startStdioBridges, REDACT_PATHS, telemetryPlugin, metricsPlugin, auditPlugin, storePlugin, identityPlugin, cedarAuthzPlugin,
  toolFilterPlugin, rateLimitPlugin, ephemeralTokenPlugin, tokenExchangePlugin, upstreamSecretPlugin, mcpProxyPlugin, aggregatePlugin, healthPlugin
} from 'mcp-warden'

const app = Fastify({ logger: { level: 'info', redact: REDACT_PATHS } })
const bridged = await startStdioBridges(loadConfig(process.argv[2] ?? 'gateway.yaml'), app.log)   // stdio upstreams get a local bridge
app.addHook('onClose', bridged.close)
const config = bridged.config
await app.register(telemetryPlugin, { config })       // OpenTelemetry traces when telemetry.otlp is set (or pass your own tracerProvider)
await app.register(metricsPlugin, { config })         // GET /metrics (Prometheus), Server-Timing
await app.register(auditPlugin, { config })           // an audit record for every decision
await app.register(storePlugin, { config })           // app.mcpWarden.store: memory or Redis (503 while Redis is down)
await app.register(identityPlugin, { config })        // request.identity, 401 + WWW-Authenticate (registers the request context: Origin, server lookup, JSON-RPC parsing)
await app.register(cedarAuthzPlugin, { config })      // request.decision, app.mcpWarden.cedar.authorize(...)
await app.register(toolFilterPlugin, { config })      // filtered lists, scanner, pins
await app.register(rateLimitPlugin, { config })       // rateLimit: 429 + Retry-After
await app.register(ephemeralTokenPlugin, { config })  // per-message upstream token, /.well-known/jwks.json
await app.register(tokenExchangePlugin, { config })   // POST /oauth/token; exchange upstreams
await app.register(upstreamSecretPlugin, { config })  // secret upstreams
await app.register(mcpProxyPlugin, { config })        // /servers/:name/mcp; fails ready() if an upstream's credential plugin is missing
await app.register(aggregatePlugin, { config })       // POST /mcp: every server as one
await app.register(healthPlugin, { config })          // GET /healthz, GET /readyz
await app.listen({ host: config.listen.host, port: config.listen.port })
