/**
 * aggregate: `POST /mcp`, every upstream as one virtual MCP server (resource `<publicUrl>/mcp`).
 * The plugin checks the request (Origin, Host, store, the agent's token for this resource) and
 * hands the message to the server of lib/aggregate-server.ts.
 *
 * Its tools are the tools the agent may call on every upstream, named `<server>__<tool>`
 * (lib/aggregate.ts); its prompts likewise; its resources keep their URIs. Each message is
 * answered by calling the per-server routes in-process (`/servers/<name>/mcp`) on behalf of
 * the already verified agent, so every call goes through the whole pipeline for the real
 * server and tool: Cedar, tool filter and quarantine, rate limit, the upstream's own
 * credential (an ephemeral token for that upstream), audit. What an agent sees here is
 * therefore exactly the union of what it sees per server.
 *
 * The endpoint is stateless (no `Mcp-Session-Id`; GET and DELETE answer 405). The upstream
 * sessions it needs are opened per agent and server and reused for a while.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import type { GatewayConfig } from '../lib/config.js'
import { createAggregate } from '../lib/aggregate-server.js'
import { MediaTypeError, MethodNotAllowedError } from '../lib/errors.js'
import { parseMcpMessage, utf8Charset } from '../lib/jsonrpc.js'
import { createMcpErrorHandler, hostCheck, originCheck } from './mcp-context.js'
import { provided } from './decorations.js'
import { traceHeadersFor } from '../lib/tracing.js'

export interface AggregateOptions {
  config: GatewayConfig
}

async function aggregate (app: FastifyInstance, opts: AggregateOptions): Promise<void> {
  const { config } = opts
  if (!config.aggregate.enabled) return
  const resource = `${config.publicUrl}/mcp`
  const metadataUrl = `${config.publicUrl}/.well-known/oauth-protected-resource/mcp`
  const checkOrigin = originCheck(config)
  const checkHost = hostCheck(config.publicUrl)

  const { buildServer } = createAggregate({
    config,
    log: app.log,
    inject: async (request) => await app.inject(request),
    issueHandle: (identity) => app.mcpWarden.internalIdentity.issue(identity)
  })

  await app.register(async function routes (scope) {
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: config.limits.maxBodyBytes }, (request, body, done) => { done(utf8Charset(request.headers['content-type']) ? null : new MediaTypeError(), body) })
    scope.setErrorHandler(createMcpErrorHandler(config.limits.maxBodyBytes))

    scope.addHook('onRequest', async (request, reply) => {
      checkOrigin(request.headers.origin)
      checkHost(request.headers.host)
      if (request.method !== 'POST') {
        void reply.header('allow', 'POST')
        throw new MethodNotAllowedError(`${request.method} (the aggregated endpoint is stateless: POST only)`)
      }
      request.identity = await app.mcpWarden.authenticate(request, reply, resource, metadataUrl)
    })

    scope.route({
      method: ['POST', 'GET', 'DELETE'],
      url: '/mcp',
      config: { mcpAggregate: true },
      handler: async (request: FastifyRequest, reply: FastifyReply) => {
        const message = parseMcpMessage(Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0), { maxKeys: config.limits.maxJsonKeys, maxValues: config.limits.maxJsonValues })
        request.mcp = message
        // Each upstream call it makes is decided and audited on that server's route.
        request.mcpOutcome = { outcome: 'allow', reason: 'answered by the aggregated endpoint; each upstream call is audited on its server route' }
        // The in-process requests carry the agent's token and this request's trace context.
        const authorization = request.headers.authorization
        const server = buildServer(request.identity!, {
          ...(authorization !== undefined ? { authorization } : {}),
          ...traceHeadersFor(provided(app, 'tracer') ?? null, request)
        })
        // SSE answers: progress and log messages of an upstream call are relayed before the result.
        const transport = new StreamableHTTPServerTransport({})
        reply.hijack()
        reply.raw.on('close', () => { void transport.close(); void server.close() })
        await server.connect(transport)
        await transport.handleRequest(request.raw, reply.raw, message.message)
      }
    })
  })

  app.get('/.well-known/oauth-protected-resource/mcp', async (_request, reply) => {
    void reply.header('cache-control', 'public, max-age=300')
    return { resource, authorization_servers: [config.identity.issuer], bearer_methods_supported: ['header'], resource_name: 'mcp-warden: every server' }
  })
}

export default fp(aggregate, {
  name: 'mcp-warden-aggregate',
  fastify: '5.x',
  dependencies: ['mcp-warden-identity', 'mcp-warden-store', 'mcp-warden-proxy']
})
export { aggregate }
