// What tracing costs per request, in the functions that run per request.
// Off (no telemetry configured): every stage a request goes through is timed as before, plus one
// check that it is not traced; the proxy passes an agent's traceparent on. "before" is a stage
// timed with no trace recorder loaded (the code without tracing); "as built" the same with it.
// On: the trace context put into the forwarded message's _meta, and a whole request's spans
// (server span, six stage spans, the upstream client span) recorded by the SDK and handed to a
// batch processor whose exporter drops them (the export's own HTTP cost is in the bench ladder's
// "full + traces" rung).
// Results in .scratch/bench/results/tracing.json, or bench/results/tracing.json with --write.
import { Bench } from 'tinybench'
import { benchOptions, writeResults } from './common.mjs'
import { startStage } from '../../dist/lib/timing.js'

const STAGES = ['identity', 'parse', 'authz', 'filter', 'ratelimit', 'mint', 'upstream']
function timeStages (request) {
  for (const s of STAGES) startStage(request, s)()
}

const rows = []
function collect (bench) {
  for (const t of bench.tasks) {
    rows.push({ name: t.name, p50_ns: Math.round(t.result.latency.p50 * 1e6), mean_ns: Math.round(t.result.latency.mean * 1e6), ops_per_s: Math.round(t.result.throughput.mean) })
  }
}

// Before the tracing module is loaded: no recorder.
const before = new Bench(benchOptions)
before.add('off, before: 7 stages timed', () => { timeStages({}) })
await before.run()
collect(before)

const { passThroughHeaders, beginTrace, endTrace, startUpstreamSpan, endUpstreamSpan } = await import('../../dist/lib/tracing.js')
const { withTraceMeta } = await import('../../dist/lib/trace-meta.js')
const { BatchSpanProcessor, TracerProvider } = await import('@opentelemetry/sdk-trace')
const { ExportResultCode } = await import('@opentelemetry/core')

const dropping = { export: (_spans, done) => { done({ code: ExportResultCode.SUCCESS }) }, shutdown: async () => {} }
const provider = new TracerProvider({ spanProcessors: [new BatchSpanProcessor({ exporter: dropping, maxQueueSize: 100_000, maxExportBatchSize: 4096, scheduledDelayMillis: 50 })] })
const tracer = provider.getTracer('bench')
const raw = Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT id, name FROM users WHERE id = 42', limit: 10 } } }))
const message = JSON.parse(raw.toString())
const fakeRequest = (headers) => ({
  method: 'POST',
  headers,
  mcp: { kind: 'request', method: 'tools/call', id: 7, tool: 'database_query', params: message.params, raw },
  mcpTarget: { server: { name: 'db' } },
  identity: { agentId: 'bench-agent' },
  decision: { outcome: 'allow', decisionId: 'd-1', policies: ['p1', 'p2'], policyVersion: 'v1' },
  mcpShadow: null,
  mcpApproval: null,
  mcpUpstreamToken: { jti: 'j-1' }
})
const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'

const after = new Bench(benchOptions)
after.add('off, as built: 7 stages timed, request not traced', () => { timeStages({}) })
after.add('off: traceparent passed on (none sent)', () => { passThroughHeaders({ headers: {} }, {}) })
after.add('off: traceparent passed on (one sent)', () => { passThroughHeaders({ headers: { traceparent } }, {}) })
after.add('on: _meta.traceparent put into a 180 B tools/call', () => { withTraceMeta(raw, { traceparent }) })
after.add('on: one request\'s spans recorded (server, 6 stages, upstream)', () => {
  const request = fakeRequest({ traceparent })
  beginTrace(request)
  for (const s of STAGES) if (s !== 'upstream') startStage(request, s)()
  startUpstreamSpan(tracer, request, { 'mcp_warden.server': 'db' })
  startStage(request, 'upstream')()
  endUpstreamSpan(request, 200)
  endTrace(tracer, request, { status: 200, outcome: 'allow', reason: 'forwarded', aborted: false })
})
await after.run()
collect(after)
await provider.shutdown()

console.table(rows)
writeResults('tracing', { rows })
