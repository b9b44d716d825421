/**
 * W3C trace context and OpenTelemetry spans for MCP requests (DESIGN.md §12).
 *
 * With tracing on, a request's trace starts or continues from its `traceparent` header, else
 * from `params._meta.traceparent` (the MCP convention for trace context in a message). Its
 * server span is named `{method} {tool|prompt}` with the MCP attributes; each pipeline stage
 * lib/timing.ts times becomes a child span with the same start and end; the call to the upstream
 * is a client span whose context goes on in the `traceparent` header and in
 * `params._meta.traceparent`. Attributes name the method, server, tool, decision and policies,
 * never arguments, results or tokens.
 *
 * With tracing off nothing here runs per request but {@link passThroughHeaders}: an incoming
 * `traceparent`/`tracestate` goes on to the upstream unchanged, so a trace crosses the gateway
 * even when the gateway records none of it.
 */
import {
  trace, ROOT_CONTEXT, SpanKind, SpanStatusCode,
  type Attributes, type Context, type Span, type TextMapGetter, type Tracer
} from '@opentelemetry/api'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import type { FastifyRequest } from 'fastify'
import { setTraceRecorder, type Stage } from './timing.js'
import { parseMcpMessage } from './jsonrpc.js'
import { withTraceMeta } from './trace-meta.js'

const propagator = new W3CTraceContextPropagator()

const getter: TextMapGetter<Record<string, unknown>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => {
    const v = carrier[key]
    return typeof v === 'string' ? v : undefined
  }
}

/** The longest `traceparent` / `tracestate` taken from an agent (the W3C limits: 55 and 512 characters). */
const MAX_TRACEPARENT = 55
const MAX_TRACESTATE = 512

/** A request's trace while it is being served. */
interface RequestTrace {
  /** Epoch milliseconds (fractional) at which the request arrived. */
  readonly start: number
  /** Stage intervals: stage, start and end in epoch milliseconds. */
  readonly stages: Array<[Stage, number, number]>
  root: Span | null
  upstream: Span | null
  /** The upstream span's context, as it goes on in the header and in `_meta`. */
  carrier: { traceparent: string, tracestate?: string } | null
  /** The server span was started with the parsed message's attributes. */
  parsed: boolean
}

const TRACE = Symbol('mcp-warden.trace')
type Traced = { [TRACE]?: RequestTrace | null }

/** Epoch milliseconds at hrtime 0, so that hrtime readings become span times. */
const hrOrigin = performance.timeOrigin + performance.now() - Number(process.hrtime.bigint()) / 1e6
const epochOf = (hr: bigint): number => hrOrigin + Number(hr) / 1e6
/** Now, in epoch milliseconds on the same clock as every other time of a request's spans. */
const now = (): number => epochOf(process.hrtime.bigint())

function traceOf (request: object): RequestTrace | null {
  return (request as Traced)[TRACE] ?? null
}

setTraceRecorder((request, stage, start, end) => {
  const t = traceOf(request)
  if (t !== null) t.stages.push([stage, epochOf(start), epochOf(end)])
})

/** Starts recording a request's trace (the telemetry plugin's onRequest, tracing on). */
export function beginTrace (request: object): void {
  (request as Traced)[TRACE] = { start: now(), stages: [], root: null, upstream: null, carrier: null, parsed: false }
}

/** The symbol requests keep their trace under (declared once by the telemetry plugin). */
export const TRACE_FIELD = TRACE

/** The trace context an agent sent: the header first, else `params._meta`. */
function incomingContext (request: FastifyRequest): Context {
  const h = request.headers
  const fromHeader = carrierOf(h.traceparent, h.tracestate)
  if (fromHeader !== null) {
    const ctx = propagator.extract(ROOT_CONTEXT, fromHeader, getter)
    if (trace.getSpanContext(ctx) !== undefined) return ctx
  }
  const meta = metaOf(request)
  if (meta !== null) {
    const fromMeta = carrierOf(meta.traceparent, meta.tracestate)
    if (fromMeta !== null) return propagator.extract(ROOT_CONTEXT, fromMeta, getter)
  }
  return ROOT_CONTEXT
}

function carrierOf (traceparent: unknown, tracestate: unknown): Record<string, string> | null {
  if (typeof traceparent !== 'string' || traceparent.length > MAX_TRACEPARENT) return null
  return typeof tracestate === 'string' && tracestate.length <= MAX_TRACESTATE
    ? { traceparent, tracestate }
    : { traceparent }
}

function metaOf (request: FastifyRequest): Record<string, unknown> | null {
  const m = request.mcp
  if (m === null || m.kind === 'response') return null
  const meta = (m.params as { _meta?: unknown } | undefined)?._meta
  return meta !== null && typeof meta === 'object' && !Array.isArray(meta) ? meta as Record<string, unknown> : null
}

/**
 * The longest name (method, tool, prompt) put on a span: names come from the agent, and a
 * message may be a megabyte of one name. Longer ones are cut and marked with `…`.
 */
export const MAX_SPAN_NAME = 128
const short = (s: string, max = MAX_SPAN_NAME): string => s.length <= max ? s : `${s.slice(0, max)}…`

/** `{method} {target}`: the MCP span name (a tool or prompt name as target, never a URI). */
function spanName (request: FastifyRequest): string {
  const m = request.mcp
  if (m === null) return `MCP ${request.method}`
  if (m.kind === 'response') return 'response'
  if (m.tool !== undefined) return `${short(m.method)} ${short(m.tool)}`
  if (m.prompt !== undefined) return `${short(m.method)} ${short(m.prompt)}`
  return short(m.method)
}

/** The attributes known once the message is parsed: what was asked, of which server, by whom. */
function requestAttributes (request: FastifyRequest): Attributes {
  const m = request.mcp
  const a: Attributes = {}
  if (m !== null && m.kind !== 'response') {
    a['mcp.method.name'] = short(m.method)
    if (m.tool !== undefined) a['gen_ai.tool.name'] = short(m.tool)
    if (m.prompt !== undefined) a['gen_ai.prompt.name'] = short(m.prompt)
    if (m.uri !== undefined) a['mcp.resource.uri'] = short(m.uri, 1024)
  }
  if (m !== null && m.id !== null) a['jsonrpc.request.id'] = short(String(m.id))
  const session = request.headers['mcp-session-id']
  if (typeof session === 'string') a['mcp.session.id'] = short(session)
  const version = request.headers['mcp-protocol-version']
  if (typeof version === 'string') a['mcp.protocol.version'] = short(version, 32)
  const server = request.mcpTarget?.server.name
  if (server !== undefined) a['mcp_warden.server'] = server
  a['http.request.method'] = request.method
  return a
}

/** The request's server span, started (back-dated to the request's arrival) on first use. */
function rootOf (tracer: Tracer, request: FastifyRequest, t: RequestTrace): Span {
  if (t.root === null) t.parsed = request.mcp !== null
  t.root ??= tracer.startSpan(spanName(request), { kind: SpanKind.SERVER, startTime: t.start, attributes: requestAttributes(request) }, incomingContext(request))
  return t.root
}

/** A `traceparent` (and `tracestate`) for the context of `span`. */
function headersOf (span: Span): { traceparent: string, tracestate?: string } {
  const carrier: Record<string, string> = {}
  propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, { set: (c, k, v) => { c[k] = v } })
  return carrier as { traceparent: string, tracestate?: string }
}

/**
 * Tracing on: starts the client span of the call to the upstream (once; later calls add
 * `attributes` and return the same context) and puts its context into the message's
 * `params._meta`, replacing `request.mcp` with the edited message. It runs before the upstream's
 * credential is obtained, so that an ephemeral token is bound to the message the upstream
 * receives. Tracing off (no trace recorded for the request): null.
 */
export function startUpstreamSpan (tracer: Tracer, request: FastifyRequest, attributes: Attributes): { traceparent: string, tracestate?: string } | null {
  const t = traceOf(request)
  if (t === null) return null
  if (t.upstream !== null && t.carrier !== null) {
    t.upstream.setAttributes(attributes)
    return t.carrier
  }
  const root = rootOf(tracer, request, t)
  const span = tracer.startSpan(spanName(request), { kind: SpanKind.CLIENT, attributes, startTime: now() }, trace.setSpan(ROOT_CONTEXT, root))
  t.upstream = span
  t.carrier = headersOf(span)
  const m = request.mcp
  if (request.method === 'POST' && m !== null && m.kind !== 'response') {
    const edited = withTraceMeta(m.raw, t.carrier)
    // The message was checked as it came; the edit adds two string members, so it is read
    // again without the size limits (which the original passed).
    if (edited !== m.raw) request.mcp = parseMcpMessage(Buffer.from(edited.buffer, edited.byteOffset, edited.byteLength), { maxKeys: Infinity, maxValues: Infinity })
  }
  return t.carrier
}

/** Ends the upstream span (when its answer's headers arrived, or the exchange failed). */
export function endUpstreamSpan (request: object, status: number | null, error?: string): void {
  const t = traceOf(request)
  const span = t?.upstream
  if (span == null) return
  if (status !== null) span.setAttribute('http.response.status_code', status)
  if (error !== undefined) {
    span.setAttribute('error.type', error)
    span.setStatus({ code: SpanStatusCode.ERROR })
  }
  span.end(now())
}

/**
 * The trace context for requests the gateway makes in-process on a request's behalf (the
 * aggregated endpoint's calls of the server routes): the request's own server span with tracing
 * on, else the agent's trace context as it came.
 */
export function traceHeadersFor (tracer: Tracer | null, request: FastifyRequest): Record<string, string> {
  const t = tracer !== null ? traceOf(request) : null
  if (t !== null) return headersOf(rootOf(tracer!, request, t))
  const headers: Record<string, string> = {}
  passThroughHeaders(request, headers)
  return headers
}

/** Passes an agent's trace context on unchanged (tracing off). */
export function passThroughHeaders (request: FastifyRequest, headers: Record<string, string>): void {
  const carrier = carrierOf(request.headers.traceparent, request.headers.tracestate)
  if (carrier !== null) Object.assign(headers, carrier)
}

/** What the request ended with, for its server span. */
export interface TraceOutcome {
  status: number
  outcome: 'allow' | 'deny' | 'error'
  reason: string
  aborted: boolean
}

/** Ends a request's trace: the stage spans, then its server span with the decision. */
export function endTrace (tracer: Tracer, request: FastifyRequest, end: TraceOutcome): void {
  const t = traceOf(request)
  if (t == null) return
  ;(request as Traced)[TRACE] = null
  const root = rootOf(tracer, request, t)
  const parent = trace.setSpan(ROOT_CONTEXT, root)
  for (const [stage, start, stop] of t.stages) {
    if (stage === 'upstream' && t.upstream !== null) continue // its own client span
    tracer.startSpan(`mcp_warden.${stage}`, { startTime: start, attributes: { 'mcp_warden.stage': stage } }, parent).end(stop)
  }
  // An upstream span still open (an abort before its headers came) ends with the request.
  if (t.upstream !== null && t.upstream.isRecording()) t.upstream.end(now())

  const a: Attributes = { 'http.response.status_code': end.status, 'mcp_warden.outcome': end.outcome }
  if (root.isRecording()) {
    // Attributes the parse came too late for (a request refused before it) are set now.
    if (request.mcp !== null && !t.parsed) root.setAttributes(requestAttributes(request))
    const d = request.decision
    if (d != null) {
      a['mcp_warden.decision'] = d.outcome
      a['mcp_warden.decision_id'] = d.decisionId
      a['mcp_warden.policies'] = [...d.policies]
      a['mcp_warden.policy_version'] = d.policyVersion
    }
    if (request.mcpShadow != null) a['mcp_warden.shadow'] = true
    const approval = request.mcpApproval
    if (approval != null) {
      a['mcp_warden.approval.id'] = approval.id
      a['mcp_warden.approval.status'] = approval.status
    }
    const agent = request.identity?.agentId
    if (agent !== undefined) a['mcp_warden.agent_id'] = short(agent)
    if (request.mcpUpstreamToken != null) a['mcp_warden.upstream_token_id'] = request.mcpUpstreamToken.jti
    root.setAttributes(a)
    if (end.outcome === 'error' || end.aborted) {
      root.setAttribute('error.type', end.aborted ? 'aborted' : String(end.status))
      root.setStatus({ code: SpanStatusCode.ERROR, message: end.reason.slice(0, 256) })
    }
  }
  root.end(now())
}
