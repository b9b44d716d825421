/**
 * A Streamable HTTP host for an SDK McpServer: one server instance and one transport per
 * session, sessions ended by DELETE. Used by the demo upstreams and by test fixtures.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { randomUUID } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StreamableHTTPServerTransport, type EventStore } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js'
import { readBody, sendError } from '../http-body.js'

export interface ServeOptions {
  host?: string
  port?: number
  /** Path of the MCP endpoint (default /mcp). */
  path?: string
  /**
   * Called for every request before the MCP transport sees it, with the parsed body.
   * Returning a response status and message refuses the request.
   */
  guard?: ((req: IncomingMessage, body: unknown, raw: Buffer) => Promise<Refusal | undefined> | Refusal | undefined) | undefined
  /** Answer POSTs with JSON instead of an SSE stream. */
  json?: boolean
  /** Makes streams resumable (`Last-Event-ID`): one store per session. */
  eventStore?: () => EventStore
  /** The SSE `retry` field sent to clients, in ms. */
  retryInterval?: number
}

export interface Refusal { status: number, message: string }

export interface ServedMcp {
  readonly url: string
  readonly server: Server
  /** Open sessions by id. */
  readonly sessions: ReadonlyMap<string, StreamableHTTPServerTransport>
  close (): Promise<void>
}

export async function serveMcp (factory: () => McpServer, options: ServeOptions = {}): Promise<ServedMcp> {
  const path = options.path ?? '/mcp'
  const sessions = new Map<string, StreamableHTTPServerTransport>()

  async function handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (new URL(req.url ?? '/', 'http://x').pathname !== path) return sendError(res, 404, -32601, 'Not found')
    const raw = req.method === 'POST' ? await readBody(req) : Buffer.alloc(0)
    let body: unknown
    if (raw.length > 0) {
      try { body = JSON.parse(raw.toString('utf8')) } catch { return sendError(res, 400, -32700, 'Parse error') }
    }
    const refusal = await options.guard?.(req, body, raw)
    if (refusal !== undefined) {
      res.writeHead(refusal.status, {
        'content-type': 'application/json',
        ...(refusal.status === 401 ? { 'www-authenticate': 'Bearer error="invalid_token"' } : {})
      })
      res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32001, message: refusal.message } }))
      return
    }
    const sid = req.headers['mcp-session-id']
    if (typeof sid === 'string') {
      const transport = sessions.get(sid)
      if (transport === undefined) return sendError(res, 404, -32001, 'Session not found')
      await transport.handleRequest(req, res, body)
      return
    }
    if (req.method !== 'POST' || !isInitializeRequest(body)) {
      return sendError(res, 400, -32000, 'Bad Request: no valid session id; send initialize first')
    }
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      enableJsonResponse: options.json === true,
      ...(options.eventStore !== undefined ? { eventStore: options.eventStore() } : {}),
      ...(options.retryInterval !== undefined ? { retryInterval: options.retryInterval } : {}),
      onsessioninitialized: (id) => { sessions.set(id, transport) }
    })
    transport.onclose = () => { if (transport.sessionId !== undefined) sessions.delete(transport.sessionId) }
    const server = factory()
    await server.connect(transport)
    await transport.handleRequest(req, res, body)
  }

  const server = createServer((req, res) => {
    handle(req, res).catch(() => { if (!res.headersSent) sendError(res, 500, -32603, 'Internal error'); else res.end() })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => { resolve() })
  })
  const { port, address } = server.address() as AddressInfo
  const host = address.includes(':') ? `[${address}]` : address
  return {
    url: `http://${host}:${port}${path}`,
    server,
    sessions,
    async close () {
      await Promise.allSettled([...sessions.values()].map(async t => { await t.close() }))
      server.closeAllConnections()
      await new Promise<void>(resolve => { server.close(() => { resolve() }) })
    }
  }
}
