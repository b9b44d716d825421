/**
 * telemetry: OpenTelemetry traces of MCP requests (DESIGN.md §12), exported over OTLP/HTTP to
 * `telemetry.otlp.endpoint` (`/v1/traces`, JSON), or recorded by a tracer provider the host
 * passes in (`tracerProvider`, e.g. its own global SDK's).
 *
 * Off (neither set) the plugin adds no hook and `app.mcpWarden.tracer` is null: the proxy only
 * passes an agent's `traceparent` on. On, each MCP request gets a server span with a child span
 * per pipeline stage and a client span for the upstream call (lib/tracing.ts).
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { TracerProvider } from '@opentelemetry/api'
import { BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler, TracerProvider as SdkTracerProvider } from '@opentelemetry/sdk-trace'
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { resourceFromAttributes } from '@opentelemetry/resources'
import type { GatewayConfig } from '../lib/config.js'
import { VERSION } from '../lib/version.js'
import { beginTrace, endTrace, TRACE_FIELD } from '../lib/tracing.js'
import { provide } from './decorations.js'

export interface TelemetryOptions {
  config: GatewayConfig
  /** Records spans with this provider instead of the gateway's own OTLP exporter. */
  tracerProvider?: TracerProvider
}

function traced (request: FastifyRequest): boolean {
  const route = request.routeOptions.config
  return route.mcp === true || route.mcpAggregate === true
}

async function telemetry (app: FastifyInstance, opts: TelemetryOptions): Promise<void> {
  const settings = opts.config.telemetry
  let provider: TracerProvider | undefined = opts.tracerProvider
  let own: SdkTracerProvider | undefined
  if (provider === undefined && settings?.otlp !== undefined) {
    own = new SdkTracerProvider({
      resource: resourceFromAttributes({ 'service.name': settings.serviceName, 'service.version': VERSION }),
      // A trace an agent started is followed as the agent sampled it; one started here is kept at sampleRatio.
      sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(settings.sampleRatio) }),
      // Whatever an agent sends, a span stays small: names are cut where they are set
      // (lib/tracing.ts), and any attribute value past 1 KiB is cut here.
      spanLimits: { attributeValueLengthLimit: 1024, attributeCountLimit: 64 },
      spanProcessors: [new BatchSpanProcessor({
        exporter: new OTLPTraceExporter({
          url: settings.otlp.tracesUrl,
          headers: { ...settings.otlp.headers },
          timeoutMillis: settings.otlp.timeoutMs
        }),
        scheduledDelayMillis: 2000,
        exportTimeoutMillis: settings.otlp.timeoutMs
      })]
    })
    provider = own
  }
  const tracer = provider?.getTracer('mcp-warden', VERSION) ?? null
  provide(app, 'tracer', tracer)
  if (tracer === null) return

  app.decorateRequest(TRACE_FIELD, null)
  app.addHook('onRequest', async (request) => { if (traced(request)) beginTrace(request) })
  app.addHook('onResponse', async (request, reply) => {
    const status = reply.statusCode
    const outcome = request.mcpOutcome ?? { outcome: status >= 500 ? 'error' as const : status >= 400 ? 'deny' as const : 'allow' as const, reason: `HTTP ${status}` }
    endTrace(tracer, request, { status, outcome: outcome.outcome, reason: outcome.reason, aborted: false })
  })
  app.addHook('onRequestAbort', async (request) => {
    endTrace(tracer, request, { status: 499, outcome: 'error', reason: 'client closed the connection', aborted: true })
  })
  if (own !== undefined) {
    const sdk = own
    app.addHook('onClose', async () => {
      // Spans still batched go out now (bounded by the exporter's timeout).
      try { await sdk.shutdown() } catch (err) { app.log.warn({ err }, 'trace export at shutdown failed') }
    })
  }
}

export default fp(telemetry, { name: 'mcp-warden-telemetry', fastify: '5.x' })
export { telemetry }
