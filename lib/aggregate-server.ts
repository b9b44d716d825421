/**
 * The aggregated endpoint's MCP server (`POST /mcp`): every upstream as one virtual MCP server.
 * Each message is answered by calling the per-server routes in-process, as the agent, through an
 * in-process client (`inject`, with a single-use handle standing for the verified identity), so
 * the whole pipeline applies per real server and tool. The aggregate plugin serves it.
 */
import type { FastifyBaseLogger, InjectOptions, LightMyRequestResponse } from 'fastify'
import { Server } from '@modelcontextprotocol/sdk/server/index.js'
import {
  CallToolRequestSchema, GetPromptRequestSchema, ListPromptsRequestSchema, ListResourcesRequestSchema, ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema, McpError, ReadResourceRequestSchema, SetLevelRequestSchema
} from '@modelcontextprotocol/sdk/types.js'
import type { GatewayConfig, UpstreamConfig } from './config.js'
import { AggregateNames } from './aggregate.js'
import { RpcCode } from './errors.js'
import { INTERNAL_IDENTITY_HEADER, principalKey, type Identity } from './identity.js'
import { methodSpec } from './mcp-methods.js'
import { sseMessages } from './sse.js'
import { VERSION } from './version.js'

export interface AggregateDeps {
  readonly config: GatewayConfig
  readonly log: FastifyBaseLogger
  /** Sends one request into the gateway in-process (the host's `app.inject`). */
  readonly inject: (request: InjectOptions & { payloadAsStream: true }) => Promise<LightMyRequestResponse>
  /** A single-use handle that stands for an already verified identity (the identity plugin's). */
  readonly issueHandle: (identity: Identity) => string
}

type Message = Record<string, any>
/**
 * Headers of the agent's request that go on to each in-process request made for it: its
 * `authorization`, and the trace context (`traceparent`, `tracestate`) that makes those
 * requests' spans children of the aggregated request's.
 */
export type CarriedHeaders = Readonly<Record<string, string>>
interface InnerAnswer { status: number, sessionId: string | undefined, message: Message | undefined }

/** What the aggregated endpoint does with messages an upstream sends while it answers. */
interface Relay {
  /** A notification (progress, log message) for the agent's request. */
  notify: (message: Message) => Promise<void>
}

const SESSION_REUSE_MS = 10 * 60_000
const MAX_PAGES = 20

/** The aggregated endpoint's state (upstream sessions, name and resource owners) and its MCP server per request. */
export function createAggregate (deps: AggregateDeps): { buildServer: (identity: Identity, carried: CarriedHeaders) => Server } {
  const names = new AggregateNames(deps.config)
  const upstreams = [...deps.config.upstreams.values()]
  // Which unprefixed upstream offers a bare tool or prompt name to an agent (principal \n name →
  // server), learned from the lists that agent was answered; NOBODY once two upstreams offered it.
  const bareOwners = { tools: new Map<string, string>(), prompts: new Map<string, string>() }
  const NOBODY = ''
  // Which upstream serves a resource URI (learned from resources/list).
  const resourceOwners = new Map<string, string>()
  // Upstream sessions opened for an agent: principal \n server → session.
  const sessions = new Map<string, { at: number, session: Promise<{ id: string | undefined, version: string } | null> }>()
  let nextId = 1

  async function inner (identity: Identity, carried: CarriedHeaders, server: string, message: Message,
    session?: { id: string | undefined, version: string }, relay?: Relay): Promise<InnerAnswer> {
    const res = await deps.inject({
      payloadAsStream: true,
      method: 'POST',
      url: `/servers/${server}/mcp`,
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        [INTERNAL_IDENTITY_HEADER]: deps.issueHandle(identity),
        ...carried,
        ...(session?.id !== undefined ? { 'mcp-session-id': session.id } : {}),
        ...(session !== undefined ? { 'mcp-protocol-version': session.version } : {})
      },
      payload: JSON.stringify(message)
    })
    const sid = res.headers['mcp-session-id']
    const answer: InnerAnswer = { status: res.statusCode, sessionId: typeof sid === 'string' ? sid : undefined, message: undefined }
    const body = res.stream()
    if (!String(res.headers['content-type'] ?? '').toLowerCase().startsWith('text/event-stream')) {
      let text = ''
      for await (const chunk of body) text += (chunk as Buffer).toString()
      try {
        const m = text === '' ? undefined : JSON.parse(text) as Message
        if (m !== undefined && (m.id === message.id || (m.id === null && 'error' in m))) answer.message = m
      } catch { /* not JSON: no answer */ }
      return answer
    }
    for await (const m of sseMessages(body)) {
      if ((m.id === message.id || m.id === null) && ('result' in m || 'error' in m)) { answer.message = m; break }
      if (typeof m.method !== 'string') continue
      if (m.id !== undefined) {
        // The upstream asks the agent something (sampling, elicitation): a stateless endpoint
        // cannot carry the answer back, so the upstream hears so at once instead of waiting.
        await inner(identity, carried, server, { jsonrpc: '2.0', id: m.id, error: { code: RpcCode.methodNotFound, message: `${m.method} is not available through the aggregated endpoint /mcp; use /servers/${server}/mcp` } }, session)
        continue
      }
      if (relay !== undefined && (m.method === 'notifications/progress' || m.method === 'notifications/message')) await relay.notify(m).catch(() => {})
    }
    body.destroy()
    return answer
  }

  async function openSession (identity: Identity, carried: CarriedHeaders, server: string): Promise<{ id: string | undefined, version: string } | null> {
    const id = nextId++
    const init = await inner(identity, carried, server, {
      jsonrpc: '2.0', id, method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'mcp-warden-aggregate', version: VERSION } }
    })
    const result = init.message?.result as { protocolVersion?: string } | undefined
    if (init.status !== 200 || result === undefined) return null
    const session = { id: init.sessionId, version: result.protocolVersion ?? '2025-06-18' }
    await inner(identity, carried, server, { jsonrpc: '2.0', method: 'notifications/initialized' }, session)
    return session
  }

  function sessionFor (identity: Identity, carried: CarriedHeaders, server: string, fresh = false): Promise<{ id: string | undefined, version: string } | null> {
    const key = `${principalKey(identity)}\n${server}`
    const now = Date.now()
    const hit = sessions.get(key)
    if (!fresh && hit !== undefined && now - hit.at < SESSION_REUSE_MS) return hit.session
    if (sessions.size > 10_000) for (const [k, v] of sessions) if (now - v.at >= SESSION_REUSE_MS) sessions.delete(k)
    const session = openSession(identity, carried, server).catch(() => null)
    sessions.set(key, { at: now, session })
    void session.then(s => { if (s === null) sessions.delete(key) })
    return session
  }

  /** One request to one upstream through its route, in the agent's session there (reopened once if it ended). */
  async function call (identity: Identity, carried: CarriedHeaders, server: string, method: string, params: Message, relay?: Relay): Promise<Message> {
    for (const fresh of [false, true]) {
      const session = await sessionFor(identity, carried, server, fresh)
      if (session === null) throw new McpError(RpcCode.accessDenied, `Server ${server} is not available to this agent`)
      const id = nextId++
      const answer = await inner(identity, carried, server, { jsonrpc: '2.0', id, method, params }, session, relay)
      if (answer.status === 404 && !fresh) continue // the upstream session ended: open a new one
      if (answer.message === undefined) throw new McpError(RpcCode.upstreamUnavailable, `MCP server "${server}" gave no answer (HTTP ${answer.status})`)
      if ('error' in answer.message) {
        const e = answer.message.error as { code: number, message: string, data?: unknown }
        throw new McpError(e.code, e.message.replace(/^MCP error -?\d+: /, ''), e.data)
      }
      return answer.message.result as Message
    }
    throw new McpError(RpcCode.upstreamUnavailable, `MCP server "${server}" ended the session`)
  }

  /** A list method on every upstream the agent can reach, following pages; unreachable ones contribute nothing. */
  async function listAll<T> (identity: Identity, carried: CarriedHeaders, method: string): Promise<Array<{ server: UpstreamConfig, items: T[] }>> {
    const key = methodSpec(method).list?.key ?? 'items'
    return await Promise.all(upstreams.map(async server => {
      const items: T[] = []
      let cursor: string | undefined
      try {
        for (let page = 0; page < MAX_PAGES; page++) {
          const result = await call(identity, carried, server.name, method, cursor !== undefined ? { cursor } : {})
          if (Array.isArray(result[key])) items.push(...result[key] as T[])
          cursor = typeof result.nextCursor === 'string' ? result.nextCursor : undefined
          if (cursor === undefined) break
        }
      } catch (err) {
        deps.log.debug({ server: server.name, method, error: (err as Error).message }, 'aggregate: upstream left out of the list')
      }
      return { server, items }
    }))
  }

  /**
   * Records which unprefixed upstream offers each bare name to this agent. A name two upstreams
   * offered (in one list, or one after the other) is routed to neither from then on: one agent's
   * lists never move another agent's calls, and an upstream cannot take over another's name.
   */
  function rememberBare (which: Map<string, string>, identity: Identity, lists: Array<{ server: UpstreamConfig, items: Array<{ name: string }> }>): void {
    const principal = principalKey(identity)
    const count = new Map<string, number>()
    for (const { server, items } of lists) if (server.prefix === '') for (const i of items) count.set(i.name, (count.get(i.name) ?? 0) + 1)
    for (const { server, items } of lists) {
      if (server.prefix !== '') continue
      for (const i of items) {
        const key = `${principal}\n${i.name}`
        const previous = which.get(key)
        // Bounded, and never by forgetting: past the bound new names are not learned (and so not routed).
        if (previous === undefined && which.size >= 100_000) continue
        which.set(key, count.get(i.name) === 1 && (previous === undefined || previous === server.name) ? server.name : NOBODY)
      }
    }
  }
  const bareOwner = (which: Map<string, string>, identity: Identity) => (name: string): string | undefined => {
    const owner = which.get(`${principalKey(identity)}\n${name}`)
    return owner === NOBODY ? undefined : owner
  }

  function buildServer (identity: Identity, carried: CarriedHeaders): Server {
    const server = new Server({ name: 'mcp-warden', version: VERSION }, {
      capabilities: { tools: {}, resources: {}, prompts: {}, logging: {} },
      instructions: 'Every MCP server behind this gateway as one: tool and prompt names are <server>__<name>.'
    })
    server.setRequestHandler(ListToolsRequestSchema, async () => {
      const lists = await listAll<{ name: string }>(identity, carried, 'tools/list')
      rememberBare(bareOwners.tools, identity, lists)
      const { items, collisions } = names.merge(lists)
      if (collisions.length > 0) deps.log.warn({ collisions }, 'aggregate: tool names exposed by more than one upstream are left out')
      return { tools: items as never }
    })
    server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
      const target = names.resolve(req.params.name, bareOwner(bareOwners.tools, identity))
      if (target === undefined) throw new McpError(RpcCode.invalidParams, `Unknown tool: ${req.params.name}`)
      try {
        // Progress and log messages of the call go back to the agent on this request's stream.
        const relay: Relay = { notify: async (m) => { await extra.sendNotification({ method: m.method, params: m.params } as never) } }
        return await call(identity, carried, target.server, 'tools/call', { ...req.params, name: target.name }, relay) as never
      } catch (err) {
        if (err instanceof McpError && err.code === RpcCode.invalidParams && /Unknown tool/.test(err.message)) throw new McpError(RpcCode.invalidParams, `Unknown tool: ${req.params.name}`)
        throw err
      }
    })
    // The agent's log level applies to its sessions on every upstream.
    server.setRequestHandler(SetLevelRequestSchema, async (req) => {
      await Promise.all(upstreams.map(async u => { await call(identity, carried, u.name, 'logging/setLevel', { level: req.params.level }).catch(() => {}) }))
      return {}
    })
    server.setRequestHandler(ListPromptsRequestSchema, async () => {
      const lists = await listAll<{ name: string }>(identity, carried, 'prompts/list')
      rememberBare(bareOwners.prompts, identity, lists)
      return { prompts: names.merge(lists).items as never }
    })
    server.setRequestHandler(GetPromptRequestSchema, async (req) => {
      const target = names.resolve(req.params.name, bareOwner(bareOwners.prompts, identity))
      if (target === undefined) throw new McpError(RpcCode.invalidParams, `Unknown prompt: ${req.params.name}`)
      return await call(identity, carried, target.server, 'prompts/get', { ...req.params, name: target.name }) as never
    })
    server.setRequestHandler(ListResourcesRequestSchema, async () => {
      const lists = await listAll<{ uri: string }>(identity, carried, 'resources/list')
      const seen = new Map<string, number>()
      for (const { items } of lists) for (const r of items) seen.set(r.uri, (seen.get(r.uri) ?? 0) + 1)
      // A URI that two upstreams list belongs to neither: it is left out, and a read of it is
      // routed nowhere (one upstream cannot take over another's resource).
      for (const { server: s, items } of lists) {
        for (const r of items) {
          const key = `${principalKey(identity)}\n${r.uri}`
          const previous = resourceOwners.get(key)
          if (previous === undefined && resourceOwners.size >= 100_000) { seen.set(r.uri, 2); continue }
          // A URI two upstreams offered stays nobody's, also when a later list has only one of them.
          if (seen.get(r.uri) === 1 && (previous === undefined || previous === s.name)) resourceOwners.set(key, s.name)
          else { resourceOwners.set(key, NOBODY); seen.set(r.uri, 2) }
        }
      }
      return { resources: lists.flatMap(l => l.items).filter(r => seen.get(r.uri) === 1) as never }
    })
    server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => {
      const lists = await listAll<{ uriTemplate: string }>(identity, carried, 'resources/templates/list')
      return { resourceTemplates: lists.flatMap(l => l.items) as never }
    })
    server.setRequestHandler(ReadResourceRequestSchema, async (req) => {
      const owner = resourceOwners.get(`${principalKey(identity)}\n${req.params.uri}`)
      if (owner === undefined || owner === NOBODY) throw new McpError(RpcCode.invalidParams, `Unknown resource: ${req.params.uri} (list resources first)`)
      return await call(identity, carried, owner, 'resources/read', { ...req.params }) as never
    })
    return server
  }

  return { buildServer }
}
