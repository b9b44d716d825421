/**
 * mcp-context: the first stage of every MCP route.
 *
 * - onRequest: resolves the upstream named in the URL (404 when unknown) and
 *   checks `Origin` against publicUrl's origin and `allowedOrigins` (403; DNS rebinding).
 * - preValidation: parses the body into one classified JSON-RPC message (`request.mcp`).
 * - `mcpErrorHandler`: turns every error on an MCP route into an HTTP status and a
 *   JSON-RPC error body, and records the outcome for the audit.
 *
 * A route opts in with `config: { mcp: true }` and a `:name` parameter.
 */
import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { metadataUrl, resourceUrl, type GatewayConfig } from '../lib/config.js'
import {
  BodyTooLargeError, HeaderMismatchError, HostForbiddenError, MediaTypeError, MethodNotAllowedError, InvalidMessageError, OriginForbiddenError, RpcCode, UnknownServerError, UpstreamUnavailableError,
  PluginMissingError, type WardenError
} from '../lib/errors.js'
import { declareStages, startStage } from '../lib/timing.js'
import { checkEra, parseMcpMessage, rpcError, type JsonRpcId } from '../lib/jsonrpc.js'
import type { McpTarget } from './decorations.js'

export interface McpContextOptions {
  config: GatewayConfig
}

/** Maps Fastify's own body errors to the gateway's. */
function normalise (error: FastifyError, maxBodyBytes: number, server: string): FastifyError & Partial<WardenError> {
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': return new BodyTooLargeError(String(maxBodyBytes))
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return new MediaTypeError()
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH': return new InvalidMessageError('Content-Length does not match the body')
    default:
      // The upstream connection failed while the answer was being relayed (or the gateway is closing).
      if (typeof error.code === 'string' && error.code.startsWith('UND_ERR')) return new UpstreamUnavailableError(server)
      return error
  }
}

export function createMcpErrorHandler (maxBodyBytes: number) {
  return function mcpErrorHandler (this: FastifyInstance, raw: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
    const error = normalise(raw, maxBodyBytes, request.mcpTarget?.server.name ?? '')
    // A refusal of a message is HTTP 200 with its JSON-RPC error; anything else below 400 is a bug.
    const status = error.statusCode !== undefined && (error.statusCode >= 400 || (error.statusCode === 200 && typeof error.rpcCode === 'number')) ? error.statusCode : 500
    const known = typeof error.rpcCode === 'number'
    let message: string
    let code: number
    if (known) {
      message = error.message
      code = error.rpcCode!
    } else if (status < 500) {
      message = `Invalid Request: ${error.message}`
      code = RpcCode.invalidRequest
    } else {
      request.log.error({ err: error }, 'unexpected error on an MCP route')
      message = 'Internal gateway error; the request was not forwarded'
      code = RpcCode.internalError
    }
    request.mcpOutcome = { outcome: (known ? error.outcome : undefined) ?? (status >= 500 ? 'error' : 'deny'), reason: known && error.reason !== undefined ? error.reason : message }
    void reply.code(status).type('application/json; charset=utf-8').send(rpcError((error as { rpcId?: JsonRpcId }).rpcId ?? request.mcp?.id ?? null, code, message, known ? error.data : undefined))
  }
}

const LOOPBACK_HOST = /^(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?$/i

/**
 * DNS rebinding defence, checked before anything else on an MCP route.
 * - `Origin` (sent by browsers): publicUrl's origin or an `allowedOrigins` entry; a gateway
 *   whose publicUrl is a loopback address also accepts any loopback origin (a local web app).
 * - `Host`: when publicUrl's host is localhost, 127.0.0.1 or [::1], only such Host headers are
 *   accepted (a browser tricked into calling it under another name sends that name). A gateway
 *   with a public name is reached through proxies that set their own Host; Origin applies there.
 */
export function hostCheck (publicUrl: string): (host: string | undefined) => void {
  if (!LOOPBACK_HOST.test(new URL(publicUrl).host)) return () => {}
  return (host) => {
    if (host === undefined || !LOOPBACK_HOST.test(host)) throw new HostForbiddenError(JSON.stringify((host ?? '').slice(0, 200)))
  }
}

export function originCheck (config: Pick<GatewayConfig, 'publicUrl' | 'allowedOrigins'>): (origin: string | undefined) => void {
  const origins = new Set([new URL(config.publicUrl).origin, ...config.allowedOrigins])
  const loopback = LOOPBACK_HOST.test(new URL(config.publicUrl).host)
  return (origin) => {
    if (origin === undefined || origins.has(origin)) return
    if (loopback) {
      try {
        const u = new URL(origin)
        if ((u.protocol === 'http:' || u.protocol === 'https:') && LOOPBACK_HOST.test(u.host)) return
      } catch { /* not a URL: refused below */ }
    }
    throw new OriginForbiddenError(JSON.stringify(origin.slice(0, 200)))
  }
}

async function mcpContext (app: FastifyInstance, opts: McpContextOptions): Promise<void> {
  const { config } = opts
  const targets = new Map<string, McpTarget>()
  for (const server of config.upstreams.values()) {
    targets.set(server.name, Object.freeze({
      server,
      resource: resourceUrl(config, server.name),
      metadataUrl: metadataUrl(config, server.name)
    }))
  }
  const checkOrigin = originCheck(config)
  const checkHost = hostCheck(config.publicUrl)

  if (app.hasRequestDecorator('mcpTarget')) {
    throw new PluginMissingError('mcp-warden-context is registered twice: identityPlugin registers it when it is missing, so register mcpContextPlugin once, before identityPlugin, or not at all')
  }
  app.decorateRequest('mcpTarget', null)
  declareStages(app)
  app.decorateRequest('mcp', null)
  app.decorateRequest('mcpOutcome', null)

  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.config.mcp !== true) return
    const name = (request.params as { name?: string }).name ?? ''
    const target = targets.get(name)
    if (target === undefined) throw new UnknownServerError(name.slice(0, 64))
    request.mcpTarget = target
    checkOrigin(request.headers.origin)
    checkHost(request.headers.host)
  })

  app.addHook('preValidation', async (request) => {
    if (request.mcpTarget === null) return
    // The 2026-07-28 era is stateless: no GET stream, no session to DELETE.
    if (request.method !== 'POST' && request.headers['mcp-protocol-version'] === '2026-07-28') {
      throw new MethodNotAllowedError(`${request.method} (protocol version 2026-07-28 is POST only)`)
    }
    if (request.method !== 'POST') return
    const body = request.body
    const done = startStage(request, 'parse')
    try {
      request.mcp = parseMcpMessage(Buffer.isBuffer(body) ? body : Buffer.alloc(0), { maxKeys: config.limits.maxJsonKeys, maxValues: config.limits.maxJsonValues })
      const method = request.headers['mcp-method']
      const name = request.headers['mcp-name']
      const version = request.headers['mcp-protocol-version']
      if (Array.isArray(method) || Array.isArray(name) || Array.isArray(version)) throw new HeaderMismatchError('Mcp-Method/Mcp-Name/MCP-Protocol-Version', 'each may be sent once')
      checkEra(request.mcp, { ...(version !== undefined ? { version } : {}), ...(method !== undefined ? { method } : {}), ...(name !== undefined ? { name } : {}) })
    } finally {
      done()
    }
  })
}

export default fp(mcpContext, { name: 'mcp-warden-context', fastify: '5.x' })
export { mcpContext }
