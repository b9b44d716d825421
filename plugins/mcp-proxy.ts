/**
 * mcp-proxy: the Streamable HTTP route `POST/GET/DELETE /servers/:name/mcp`.
 *
 * Streams each message to its upstream through a keep-alive undici pool and streams the
 * answer (JSON or SSE) back without buffering it. Only an allow-list of headers crosses
 * in either direction; the agent's Authorization header never does. Each `Mcp-Session-Id`
 * an upstream issues is bound to the principal that opened it: another principal using it
 * gets 404, as if it did not exist.
 */
import fp from 'fastify-plugin'
import { pipeline } from 'node:stream'
import { Pool } from 'undici'
import { formatEvent, sseMessages, SseLimitError, sseTransform, type MessageTransform } from '../lib/sse.js'
import { jsonRpcMessage, utf8Charset, type JsonRpcId } from '../lib/jsonrpc.js'
import { startStage } from '../lib/timing.js'
import { endUpstreamSpan, passThroughHeaders, startUpstreamSpan } from '../lib/tracing.js'
import type { Tracer } from '@opentelemetry/api'
import { BodyLimitError, readAtMost } from '../lib/http-body.js'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { GatewayConfig, UpstreamConfig } from '../lib/config.js'
import {
  CredentialError, MediaTypeError, MethodNotAllowedError, PluginMissingError, SessionLimitError, UpstreamAnswerError, UpstreamTooLargeError, SessionNotFoundError, UpstreamProtocolError, UpstreamRejectedError, UpstreamStatusError, UpstreamTimeoutError, UpstreamUnavailableError, refusal
} from '../lib/errors.js'
import { principalKey } from '../lib/identity.js'
import type { SessionStore } from '../lib/stores/types.js'
import { MemorySessionStore } from '../lib/stores/memory.js'
import { createMcpErrorHandler } from './mcp-context.js'
import { declareShared, provide, provided, type AuditSink } from './decorations.js'

export interface McpProxyOptions {
  config: GatewayConfig
  /** Session bindings (default: the gateway store's; in memory without the store plugin). */
  sessions?: SessionStore
}

/** Request headers that cross to the upstream (lower case). Authorization never does. */
const FORWARD_REQUEST = ['accept', 'mcp-session-id', 'mcp-protocol-version', 'last-event-id', 'mcp-method', 'mcp-name'] as const
/** Response headers that cross back to the agent. */
const FORWARD_RESPONSE = ['content-type', 'mcp-session-id', 'mcp-protocol-version', 'cache-control', 'retry-after', 'allow'] as const

interface Upstream {
  readonly config: UpstreamConfig
  readonly pool: Pool
  readonly path: string
  readonly host: string
  readonly port: number
}

/** The plugin that supplies each kind of upstream credential (auth.type none needs none). */
const CREDENTIAL_PLUGINS: Readonly<Record<string, { name: string, export: string } | undefined>> = {
  ephemeral: { name: 'mcp-warden-ephemeral-token', export: 'ephemeralTokenPlugin' },
  exchange: { name: 'mcp-warden-token-exchange', export: 'tokenExchangePlugin' },
  secret: { name: 'mcp-warden-upstream-secret', export: 'upstreamSecretPlugin' }
}

/** The body, read whole up to `limit` bytes; more is UpstreamTooLargeError. */
async function readLimited (body: AsyncIterable<Buffer> & { destroy: () => void }, limit: number, server: string): Promise<string> {
  try {
    return (await readAtMost(body, limit)).toString('utf8')
  } catch (err) {
    if (err instanceof BodyLimitError) throw new UpstreamTooLargeError(server, String(limit))
    throw err
  }
}

/** One JSON-RPC message (an object), or a refusal. */
function parseAnswer (text: string, refuse: (why: string) => never): Record<string, unknown> {
  let message: unknown
  try { message = JSON.parse(text) } catch { refuse('the body is not JSON') }
  if (Array.isArray(message)) refuse('a JSON array (a batch) is not an answer to one request')
  if (message === null || typeof message !== 'object') refuse('the body is not a JSON-RPC message')
  return message as Record<string, unknown>
}

/** A JSON-RPC error response (its members only) to the request with this id (or to none: id null), or undefined. */
function errorAnswer (body: unknown, id: JsonRpcId | null): Record<string, unknown> | undefined {
  const m = jsonRpcMessage(body)
  if (m === undefined || !Object.hasOwn(m, 'error') || m.error === null || typeof m.error !== 'object') return undefined
  return m.id === id || m.id === null ? m : undefined
}

function upstreamError (err: unknown, server: string): Error {
  const code = (err as { code?: string }).code
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') return new UpstreamTimeoutError(server)
  return new UpstreamUnavailableError(server)
}

async function mcpProxy (app: FastifyInstance, opts: McpProxyOptions): Promise<void> {
  const { config } = opts
  if (app.hasRoute({ method: 'POST', url: '/servers/:name/mcp' })) throw new Error('mcp-warden-proxy is registered twice: /servers/:name/mcp is routed already')
  const own = opts.sessions === undefined && provided(app, 'store') === undefined ? new MemorySessionStore() : undefined
  const sessions = opts.sessions ?? own ?? app.mcpWarden.store.sessions
  if (own !== undefined) app.addHook('onClose', async () => { await own.close() })
  const ttl = config.limits.sessionTtlSeconds
  const upstreams = new Map<string, Upstream>()
  for (const server of config.upstreams.values()) {
    const url = new URL(server.url)
    upstreams.set(server.name, {
      config: server,
      host: url.hostname,
      port: Number(url.port !== '' ? url.port : url.protocol === 'https:' ? 443 : 80),
      pool: new Pool(url.origin, { connections: 256, keepAliveTimeout: 30_000, connectTimeout: Math.min(server.timeoutMs, 10_000) }),
      path: url.pathname + url.search
    })
  }
  app.addHook('onClose', async () => {
    await Promise.all([...upstreams.values()].map(async u => { await u.pool.destroy() }))
  })

  let tracer: Tracer | null = null
  app.addHook('onReady', async () => { tracer = provided(app, 'tracer') ?? null })

  // A session id is checked right after identity, before any other stage can act on the request.
  app.addHook('onRequest', async (request) => {
    const target = request.mcpTarget
    if (target === null || request.identity === null) return
    const sessionHeader = request.headers['mcp-session-id']
    if (sessionHeader === undefined) return
    if (Array.isArray(sessionHeader) || await sessions.owner(target.server.name, sessionHeader, ttl) !== principalKey(request.identity)) {
      throw new SessionNotFoundError()
    }
  })

  declareShared(app, 'upstreamAuth', 'mcpResponseTransform', 'mcpListAnswer')

  // The agents' open GET streams on this replica, by server and session: the gateway's own
  // notifications (an approval decided) are written on them between the upstream's events.
  const streams = new Map<string, Set<(message: Record<string, unknown>) => void>>()
  provide(app, 'sessionStreams', {
    notify (server, sessionId, message) {
      const open = streams.get(`${server}\n${sessionId}`)
      if (open === undefined) return 0
      for (const push of open) push(message)
      return open.size
    }
  })

  // Each upstream's credential comes from a plugin; a host that left it out fails ready()
  // with the plugin to register, instead of answering every call with 503.
  let audit: AuditSink | undefined
  app.addHook('onReady', async () => {
    if (app.hasPlugin('mcp-warden-audit')) audit = app.mcpWarden.audit
    const missing: string[] = []
    for (const u of config.upstreams.values()) {
      const need = CREDENTIAL_PLUGINS[u.auth.type]
      if (need !== undefined && !app.hasPlugin(need.name)) missing.push(`upstream "${u.name}" (auth.type ${u.auth.type}) needs ${need.export} (${need.name}): app.register(${need.export}, { config })`)
    }
    if (missing.length > 0) throw new PluginMissingError(`mcp-warden-proxy: ${missing.join('; ')}`)
    if (!app.hasPlugin('mcp-warden-tool-filter')) {
      app.log.warn('mcp-warden-proxy: toolFilterPlugin is not registered: tool lists are forwarded unfiltered and unscanned (calls are still decided by Cedar)')
    }
  })

  function auditUpstreamRequest (request: FastifyRequest, m: Record<string, unknown>, status: number): void {
    audit?.write({
      time: new Date().toISOString(),
      requestId: request.id,
      decisionId: request.decision?.decisionId ?? null,
      event: 'upstream-request',
      agentId: request.identity?.agentId ?? null,
      userId: request.identity?.userId ?? null,
      server: request.mcpTarget?.server.name ?? null,
      httpMethod: request.method,
      method: String(m.method).slice(0, 128),
      rpcId: typeof m.id === 'string' || typeof m.id === 'number' ? m.id : null,
      outcome: 'allow',
      reason: 'relayed to the agent',
      policies: [],
      policyVersion: request.decision?.policyVersion ?? null,
      status,
      durationMs: 0
    })
  }

  // Sessions being opened on this replica (initialize sent, not yet bound), by server and
  // principal: counted with the bound ones, so concurrent initializes cannot pass the limit.
  const opening = new Map<string, number>()

  /** A new session (initialize without a session id) takes a slot of the agent's session limit. */
  async function reserveSession (request: FastifyRequest): Promise<() => void> {
    if (request.method !== 'POST' || request.headers['mcp-session-id'] !== undefined || request.mcp?.method !== 'initialize') return () => {}
    const name = request.mcpTarget!.server.name
    const principal = principalKey(request.identity!)
    const key = `${name}\n${principal}`
    opening.set(key, (opening.get(key) ?? 0) + 1)
    const release = (): void => {
      const n = (opening.get(key) ?? 1) - 1
      if (n <= 0) opening.delete(key)
      else opening.set(key, n)
    }
    try {
      const open = await sessions.count(name, principal) + (opening.get(key) ?? 1) - 1
      if (open >= config.limits.maxSessionsPerAgent) throw new SessionLimitError(String(open), name)
    } catch (err) {
      release()
      throw err
    }
    return release
  }

  async function forward (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const release = await reserveSession(request)
    try {
      return await forwardMessage(request, reply)
    } finally {
      release()
    }
  }

  async function forwardMessage (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const target = request.mcpTarget!
    const upstream = upstreams.get(target.server.name)!
    const name = upstream.config.name
    const principal = principalKey(request.identity!)
    const sessionId = request.headers['mcp-session-id'] as string | undefined

    const headers: Record<string, string> = { 'x-request-id': request.id }
    for (const h of FORWARD_REQUEST) {
      const v = request.headers[h]
      if (typeof v === 'string') headers[h] = v
    }
    // The body goes on as the bytes that were checked, declared as what they were checked as:
    // UTF-8 JSON. The agent's own Content-Type (a charset=utf-7, say) never crosses, so the
    // upstream cannot read the body differently from the gateway.
    if (request.method === 'POST') headers['content-type'] = 'application/json'
    if (request.upstreamAuth !== null) Object.assign(headers, request.upstreamAuth.headers)
    else if (upstream.config.auth.type !== 'none') throw new CredentialError(name) // a credential plugin is missing: fail closed

    // The trace goes on: the upstream call's span context with tracing on (in the header, and
    // in the message's _meta, set before the credential was obtained), else the agent's own.
    const carrier = tracer !== null ? startUpstreamSpan(tracer, request, { 'mcp_warden.server': name, 'server.address': upstream.host, 'server.port': upstream.port }) : null
    if (carrier !== null) Object.assign(headers, carrier)
    else passThroughHeaders(request, headers)
    const body = request.method === 'POST' ? request.mcp!.raw : null

    // The agent going away cancels the upstream exchange, while there is one: once the
    // upstream's answer has been read whole (or dropped), there is nothing left to cancel.
    const abort = new AbortController()
    let settled = false
    reply.raw.once('close', () => { if (!settled) abort.abort() })

    let res: Awaited<ReturnType<Pool['request']>>
    const upstreamDone = startStage(request, 'upstream')
    try {
      res = await upstream.pool.request({
        path: upstream.path,
        method: request.method as 'POST' | 'GET' | 'DELETE',
        headers,
        body,
        signal: abort.signal,
        headersTimeout: upstream.config.timeoutMs,
        bodyTimeout: 0
      })
    } catch (err) {
      upstreamDone()
      endUpstreamSpan(request, null, (err as { code?: string }).code ?? 'upstream_error')
      throw upstreamError(err, name)
    }
    upstreamDone()
    endUpstreamSpan(request, res.statusCode)

    res.body.once('close', () => { settled = true })
    const status = res.statusCode
    if (status === 401 || status === 403) {
      res.body.destroy()
      request.log.warn({ server: name, status }, 'upstream refused the gateway\'s credentials')
      throw new UpstreamRejectedError(name)
    }
    const issued = res.headers['mcp-session-id']
    // A session starts with a 2xx answer to initialize (and only there): an id on any other answer
    // (an error, a ping) binds nothing and takes none of the agent's session slots.
    const initialize = request.mcp?.kind === 'request' && request.mcp.method === 'initialize'
    if (typeof issued === 'string' && issued !== sessionId && initialize && status >= 200 && status <= 299) {
      if (!await sessions.bind(name, issued, principal, ttl)) {
        res.body.destroy()
        throw new UpstreamProtocolError(name)
      }
    }
    // A session the agent ended, or the upstream says is gone (404), frees its binding and slot.
    if (sessionId !== undefined && ((request.method === 'DELETE' && status < 300) || status === 404)) {
      await sessions.unbind(name, sessionId)
    }

    const mediaType = String(res.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase()
    const filter = request.mcpResponseTransform
    // A request the upstream sends the agent (sampling, elicitation, roots) is audited as it passes.
    const audited: MessageTransform | null = filter === null || audit === undefined
      ? filter
      : async (m) => {
        if (typeof m.method === 'string' && Object.hasOwn(m, 'id')) auditUpstreamRequest(request, m, status)
        return await filter(m)
      }
    // An initialize answered with an error (as JSON or on a stream) opened no session: the id
    // that came with it binds nothing.
    const initId = initialize && request.mcp?.kind === 'request' ? request.mcp.id : undefined
    const transform: MessageTransform | null = audited === null || initId === undefined || typeof issued !== 'string'
      ? audited
      : async (m) => {
        if (m.id === initId && Object.hasOwn(m, 'error')) await sessions.unbind(name, issued)
        return await audited(m)
      }
    const listAnswer = request.mcpListAnswer
    const limit = config.limits.maxResponseBytes
    const refuse = (why: string): never => {
      res.body.destroy()
      request.log.warn({ server: name, status, contentType: res.headers['content-type'], why }, 'upstream answer refused')
      throw new UpstreamAnswerError(name, why)
    }
    // The upstream's own error status, with the gateway's JSON-RPC error instead of its body: the
    // message was forwarded (an allow), the status goes back (a 404 still ends a session).
    const upstreamStatus = (code: number): Error =>
      refusal(new UpstreamStatusError(name, String(code)), { statusCode: code >= 400 && code <= 599 ? code : 502, outcome: 'allow', reason: 'forwarded' })
    const copyHeaders = (): void => {
      for (const h of FORWARD_RESPONSE) {
        const v = res.headers[h]
        if (typeof v === 'string') void reply.header(h, v)
      }
    }
    request.mcpOutcome = { outcome: 'allow', reason: 'forwarded' }

    // An error status carries none of the upstream's body but one JSON-RPC error answering this
    // request (read whole, up to the limit); anything else (HTML, a stack trace in JSON, an SSE
    // stream, a body on a 3xx) becomes the gateway's own error with the upstream's status.
    if (status < 200 || status > 299) {
      if (listAnswer === null && status >= 400 && status <= 599 && mediaType === 'application/json' && request.mcp !== null) {
        let body: unknown
        try { body = JSON.parse(await readLimited(res.body, limit, name)) } catch { body = undefined }
        const answer = errorAnswer(body, request.mcp.kind === 'request' ? request.mcp.id : null)
        if (answer !== undefined) {
          copyHeaders()
          return await reply.code(status).type('application/json').send(JSON.stringify(transform === null ? answer : await transform(answer)))
        }
      }
      res.body.destroy()
      copyHeaders()
      throw upstreamStatus(status)
    }

    // A notification or a response the agent sent is answered with a status and no body (202):
    // whatever body the upstream put on it does not reach the agent.
    if (request.method === 'POST' && request.mcp !== null && request.mcp.kind !== 'request') {
      res.body.destroy()
      copyHeaders()
      reply.removeHeader('content-type')
      return await reply.code(status).send()
    }

    // Without a response plugin (no tool filter), a JSON or SSE answer is streamed back as it is.
    if (transform === null && (mediaType === 'application/json' || mediaType === 'text/event-stream')) {
      copyHeaders()
      if (mediaType === 'text/event-stream') void reply.header('x-accel-buffering', 'no')
      return await reply.code(status).send(res.body)
    }

    // An answer to a list is forwarded only once read whole and filtered: one JSON-RPC response
    // with exactly the request's id, as JSON or in an SSE stream. Anything else is refused.
    if (listAnswer !== null && transform !== null) {
      if (mediaType === 'application/json') {
        const message = parseAnswer(await readLimited(res.body, limit, name), refuse)
        if (message.id !== listAnswer.id) refuse('the answer\'s id is not the request\'s')
        copyHeaders()
        return await reply.code(status).type('application/json').send(JSON.stringify(await transform(message)))
      }
      if (mediaType === 'text/event-stream') {
        let out = ''
        let answered = false
        try {
          for await (const m of sseMessages(res.body, limit)) {
            if (Object.hasOwn(m, 'result') || Object.hasOwn(m, 'error')) {
              if (m.id !== listAnswer.id) refuse('a response on the stream has another id than the request\'s')
              out += formatEvent({ event: 'message', data: JSON.stringify(await transform(m)) })
              answered = true
              break
            }
            out += formatEvent({ event: 'message', data: JSON.stringify(await transform(m)) })
            if (out.length > limit) throw new UpstreamTooLargeError(name, String(limit))
          }
        } catch (err) {
          if (err instanceof SseLimitError) throw new UpstreamTooLargeError(name, String(limit))
          throw err
        } finally {
          res.body.destroy()
        }
        if (!answered) refuse('the stream ended without the answer')
        copyHeaders()
        return await reply.code(status).type('text/event-stream').send(out)
      }
      refuse(`content type ${JSON.stringify(mediaType.slice(0, 64))} is neither JSON nor SSE`)
    }

    if (mediaType === 'text/event-stream' && transform !== null) {
      copyHeaders()
      void reply.header('x-accel-buffering', 'no')
      const rewritten = sseTransform(transform, limit)
      // On a GET stream an SSE comment goes first, so the status and headers reach the client at
      // once, before any event (a client with a headers timeout would drop a quiet stream).
      if (request.method === 'GET') rewritten.push(': mcp-warden\n\n')
      if (request.method === 'GET' && sessionId !== undefined) {
        const key = `${name}\n${sessionId}`
        const push = (message: Record<string, unknown>): void => {
          if (!rewritten.destroyed && !rewritten.writableEnded) rewritten.push(formatEvent({ event: 'message', data: JSON.stringify(message) }))
        }
        let open = streams.get(key)
        if (open === undefined) streams.set(key, open = new Set())
        open.add(push)
        rewritten.once('close', () => {
          open.delete(push)
          if (open.size === 0 && streams.get(key) === open) streams.delete(key)
        })
      }
      pipeline(res.body, rewritten, (err) => { if (err !== undefined && err !== null) request.log.debug({ err }, 'SSE stream ended early') })
      return await reply.code(status).send(rewritten)
    }
    // Anything else is read whole (up to the limit): one JSON-RPC message is filtered and sent;
    // other bodies never reach the agent (an error status gets the gateway's own error body, a
    // 2xx answer to a JSON-RPC request is refused, other 2xx answers go back without a body).
    const text = await readLimited(res.body, limit, name)
    let parsed: unknown
    if (mediaType === 'application/json') { try { parsed = JSON.parse(text) } catch { parsed = undefined } }
    const message = jsonRpcMessage(parsed)
    if (message !== undefined) {
      // An initialize answered with an error opened no session: the id it named binds nothing.
      copyHeaders()
      return await reply.code(status).send(JSON.stringify(transform === null ? message : await transform(message)))
    }
    if (request.mcp?.kind === 'request' && status !== 202) {
      refuse(mediaType === 'application/json' ? 'the body is not one JSON-RPC message' : `content type ${JSON.stringify(mediaType.slice(0, 64))} is neither JSON nor SSE`)
    }
    copyHeaders()
    reply.removeHeader('content-type')
    return await reply.code(status).send()
  }

  await app.register(async function routes (scope) {
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: config.limits.maxBodyBytes },
      (request, body, done) => { done(utf8Charset(request.headers['content-type']) ? null : new MediaTypeError(), body) })
    scope.setErrorHandler(createMcpErrorHandler(config.limits.maxBodyBytes))
    // HEAD, PUT, PATCH, OPTIONS …: 405, decided and forwarded nowhere (no automatic HEAD for GET).
    scope.route({
      method: ['HEAD', 'PUT', 'PATCH', 'OPTIONS', 'TRACE'],
      url: '/servers/:name/mcp',
      config: { mcpRefusal: true },
      handler: async (request, reply) => {
        void reply.header('allow', 'POST, GET, DELETE')
        throw new MethodNotAllowedError(request.method)
      }
    })
    scope.route({
      method: ['POST', 'GET', 'DELETE'],
      url: '/servers/:name/mcp',
      exposeHeadRoute: false,
      config: { mcp: true },
      handler: forward
    })
  })
}

export default fp(mcpProxy, {
  name: 'mcp-warden-proxy',
  fastify: '5.x',
  // No message is forwarded without a Cedar decision: the proxy cannot be registered without it.
  dependencies: ['mcp-warden-context', 'mcp-warden-identity', 'mcp-warden-cedar-authz']
})
export { mcpProxy }
