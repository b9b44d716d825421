/**
 * tool-filter: what you may not call, you cannot see.
 *
 * - tools/list, resources/list, resources/templates/list, prompts/list answers (JSON or SSE,
 *   every page) are cut down to what the same Cedar decision would allow this caller with
 *   the list-time context (no arguments), minus quarantined tools.
 * - Every tool an upstream offers is scanned (rules/tool-scan.json) and pinned; a poisoned or
 *   changed tool is quarantined: not listed, not callable, an audit record says why.
 * - Each caller's catalog is what the upstream listed to that caller (agent, user and session):
 *   a tools/call of a tool this caller has not been listed makes the gateway list the tools as
 *   the caller (the caller's session and credential, through the same chain: Cedar, token,
 *   audit) before deciding. Definitions are reviewed once per hash, whoever sees them.
 * - A tools/call of a tool that is not visible — never offered, hidden by policy,
 *   quarantined — gets `-32602 Unknown tool: <name>`, the same answer for all three.
 * - `notifications/tools/list_changed` from an upstream marks its catalogs stale: the next
 *   call re-reads the tool list.
 * - Shadow mode (`request.mcpShadow`): lists keep what only Cedar would have removed, and its
 *   names go to `request.mcpShadow.hidden` for the audit record; quarantine, pins and the checks
 *   on calls apply as in enforce mode, also to calls Cedar did not allow.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { Tool } from '@modelcontextprotocol/sdk/types.js'
import type { GatewayConfig, UpstreamConfig } from '../lib/config.js'
import { ArgumentNameError, ConfigError, ListingAnswerError, ResourceNotFoundError, refusal, RpcCode, UnknownPromptError, UnknownToolError } from '../lib/errors.js'
import { envelopeVersion, isModernVersion, PROTOCOL_VERSION_META_KEY } from '../lib/jsonrpc.js'
import { foldKey } from '../lib/json-text.js'
import { CALL_METHOD_OF, LIST_METHODS_OF, LISTS, methodSpec, targetRequest } from '../lib/mcp-methods.js'
import type { Identity } from '../lib/identity.js'
import { DEFAULT_RULES_FILE, loadRules, ToolScanner } from '../lib/tools/scanner.js'
import { FilePinStore, type PinStore } from '../lib/tools/pins.js'
import { CALLER_LIST, REFRESH_MS, ToolGuard, type ListAsCaller } from '../lib/tools/guard.js'
import { startStage } from '../lib/timing.js'
import { sseMessages } from '../lib/sse.js'
import { INTERNAL_IDENTITY_HEADER } from '../lib/identity.js'
import { declareShared, provide, provided } from './decorations.js'
import type { GatewayTokens } from '../lib/tokens/gateway-tokens.js'

export { ToolGuard, MAX_TOOLS_PER_UPSTREAM, type ToolReview } from '../lib/tools/guard.js'

export interface ToolFilterOptions {
  config: GatewayConfig
  /** Pin store (default: the gateway store's, else the file at toolScan.pins). */
  pins?: PinStore
  /**
   * The gateway's minter, for its own reads of ephemeral upstreams' lists; buildGateway passes
   * it. Default: that of the ephemeral-token plugin, once registered.
   */
  tokens?: GatewayTokens
}

/**
 * An argument, at any depth the tool's input schema describes, whose name is one of the schema's
 * properties there but for case or Unicode form; or undefined.
 */
function looseArgument (tool: Tool, args: Readonly<Record<string, unknown>> | undefined): { sent: string, schema: string } | undefined {
  const walk = (schema: unknown, value: unknown, depth: number): { sent: string, schema: string } | undefined => {
    if (depth > 32 || schema === null || typeof schema !== 'object' || value === null || typeof value !== 'object') return undefined
    const s = schema as { properties?: unknown, items?: unknown }
    if (Array.isArray(value)) {
      for (const v of value) {
        const found = walk(s.items, v, depth + 1)
        if (found !== undefined) return found
      }
      return undefined
    }
    const properties = s.properties
    if (properties === null || typeof properties !== 'object') return undefined
    const names = Object.keys(properties)
    for (const [sent, v] of Object.entries(value)) {
      if (Object.hasOwn(properties, sent)) {
        const found = walk((properties as Record<string, unknown>)[sent], v, depth + 1)
        if (found !== undefined) return found
        continue
      }
      const folded = foldKey(sent)
      const match = names.find(n => foldKey(n) === folded)
      if (match !== undefined) return { sent, schema: match }
    }
    return undefined
  }
  return args === undefined ? undefined : walk(tool.inputSchema, args, 0)
}

/** JSON-RPC codes of the gateway's own refusals (errors.md): a caller listing refused with one of them falls back to nothing. */
const GATEWAY_REFUSALS: ReadonlySet<number> = new Set([RpcCode.headerMismatch, RpcCode.unauthorized, RpcCode.accessDenied, RpcCode.rateLimited, RpcCode.invalidRequest, RpcCode.parseError])

async function toolFilter (app: FastifyInstance, opts: ToolFilterOptions): Promise<void> {
  const { config } = opts
  let scanner: ToolScanner
  try {
    scanner = new ToolScanner(loadRules([DEFAULT_RULES_FILE, ...(config.toolScan.rules !== undefined ? [config.toolScan.rules] : [])], config.toolScan.disable))
  } catch (err) {
    throw new ConfigError(`toolScan.rules: ${(err as Error).message}`)
  }
  let pins: PinStore
  try {
    pins = opts.pins ?? (provided(app, 'store')?.pins ?? new FilePinStore(config.toolScan.pins))
  } catch (err) {
    throw new ConfigError(`toolScan.pins: cannot use ${config.toolScan.pins}: ${(err as Error).message}`)
  }
  declareShared(app, 'mcpResponseTransform', 'mcpListAnswer')
  const guard = new ToolGuard({
    log: app.log,
    cedar: () => app.mcpWarden.cedar,
    minter: () => {
      const tokens = opts.tokens ?? provided(app, 'tokens')
      if (tokens === undefined) throw new Error('the ephemeral-token plugin is not registered')
      return tokens.minter
    }
  }, config, scanner, pins)
  provide(app, 'toolGuard', guard)

  /**
   * Lists the upstream's tools as this caller: tools/list requests (every page) through the
   * gateway's own chain with the caller's identity, credential and upstream session, so Cedar
   * decides them, the caller's credential is minted or exchanged for them, they are audited, and
   * their answers are reviewed and recorded in the caller's catalog as they pass.
   */
  /** Listings as a caller under way, by caller key. */
  const listings = new Map<string, Promise<ListAsCaller>>()
  /** When prompts or resources of an upstream were last listed for a get before any list. */
  const kindListedAt = new Map<string, number>()

  async function listAsCaller (request: FastifyRequest, identity: Identity, server: UpstreamConfig, session: string | undefined): Promise<ListAsCaller> {
    const caller = guard.callerKey(identity, server.name, session)
    guard.listingAs(caller, server.name)
    const outcome = await listPages(request, identity, server, session)
    guard.listedAs(caller, outcome.ok)
    return outcome
  }

  async function listPages (request: FastifyRequest, identity: Identity, server: UpstreamConfig, session: string | undefined, method = 'tools/list'): Promise<ListAsCaller> {
    const deadline = Date.now() + CALLER_LIST.timeoutMs
    const cursors = new Set<string>()
    let cursor: string | undefined
    // The list is asked for in the caller's protocol era: a 2026-07-28-era caller's envelope and
    // routing header go with it (otherwise the gateway would refuse its own list, and the call
    // would be decided on something other than what the caller is listed).
    const envelope = request.mcp !== null ? envelopeVersion(request.mcp) : undefined
    const modern = envelope !== undefined && isModernVersion(envelope)
    for (let page = 1; page <= CALLER_LIST.maxPages && Date.now() < deadline; page++) {
      const id = `mcp-warden-list-${page}`
      const version = request.headers['mcp-protocol-version']
      const params: Record<string, unknown> = { ...(cursor !== undefined ? { cursor } : {}), ...(modern ? { _meta: { [PROTOCOL_VERSION_META_KEY]: envelope } } : {}) }
      const res = await app.inject({
        payloadAsStream: true,
        method: 'POST',
        url: `/servers/${server.name}/mcp`,
        headers: {
          'content-type': 'application/json',
          accept: 'application/json, text/event-stream',
          [INTERNAL_IDENTITY_HEADER]: app.mcpWarden.internalIdentity.issue(identity),
          ...(request.headers.authorization !== undefined ? { authorization: request.headers.authorization } : {}),
          ...(session !== undefined ? { 'mcp-session-id': session } : {}),
          ...(typeof version === 'string' ? { 'mcp-protocol-version': version } : {}),
          ...(modern ? { 'mcp-method': method } : {})
        },
        payload: JSON.stringify({ jsonrpc: '2.0', id, method, params })
      })
      let answer: Record<string, unknown> | undefined
      const body = res.stream()
      if (String(res.headers['content-type'] ?? '').toLowerCase().startsWith('text/event-stream')) {
        for await (const m of sseMessages(body)) if (m.id === id && ('result' in m || 'error' in m)) { answer = m; break }
        body.destroy()
      } else {
        let text = ''
        for await (const chunk of body) text += (chunk as Buffer).toString()
        try { answer = JSON.parse(text) as Record<string, unknown> } catch { /* not JSON */ }
      }
      const result = answer?.result as { nextCursor?: unknown } | undefined
      if (result === undefined || result === null || typeof result !== 'object') {
        const error = answer?.error as { code?: unknown, message?: unknown, data?: unknown } | undefined
        if (typeof error?.code === 'number' && typeof error.message === 'string') {
          return { ok: false, why: error.message.slice(0, 200), status: res.statusCode, error: { code: error.code, message: error.message.slice(0, 1000), ...(error.data !== undefined ? { data: error.data } : {}) } }
        }
        return { ok: false, why: `status ${res.statusCode}` }
      }
      if (typeof result.nextCursor !== 'string') return { ok: true }
      if (cursors.has(result.nextCursor)) return { ok: false, why: 'the list repeats a page cursor' }
      cursor = result.nextCursor
      cursors.add(cursor)
    }
    return { ok: false, why: `the list has more than ${CALLER_LIST.maxPages} pages or took longer than ${CALLER_LIST.timeoutMs} ms` }
  }

  /** A call of a tool this caller may not call: `Unknown tool`, whatever the reason (the audit record has it). */
  function refuse (name: string, reason: string): never { throw refusal(new UnknownToolError(name), { reason }) }

  app.addHook('preHandler', async (request) => {
    const target = request.mcpTarget
    const identity = request.identity
    // A message Cedar did not allow was refused before this hook, except in shadow mode, where
    // it is forwarded: tool quarantine, pins and argument spelling still apply to it.
    const shadow = request.mcpShadow
    if (target === null || identity === null || request.decision === null || (!request.decision.allowed && shadow === null)) return
    const server = target.server
    const m = request.mcp

    if (m?.target === 'tool') {
      const done = startStage(request, 'filter')
      const c = guard.catalog(server.name)
      const session = request.headers['mcp-session-id'] as string | undefined
      const caller = guard.callerKey(identity, server.name, session)
      // The tool as the upstream listed it to this caller. A name it was not listed (or a list
      // the upstream said changed) makes the gateway list the tools as the caller first, at most
      // once per REFRESH_MS, so calls of made-up names cannot make it hammer the upstream.
      let entry = guard.listedTool(caller, server.name, m.tool)
      let listed: ListAsCaller | undefined
      if (entry === undefined) {
        // A listing as this caller already under way (a call beside this one started it) is
        // waited for, never decided around.
        const inFlight = listings.get(caller)
        if (inFlight !== undefined) listed = await inFlight
        else if (guard.mayListAs(caller, server.name)) {
          const listing = listAsCaller(request, identity, server, session).finally(() => { listings.delete(caller) })
          listings.set(caller, listing)
          listed = await listing
        }
        entry = guard.listedTool(caller, server.name, m.tool)
      }
      // A caller the gateway could not list as (its policy does not let it list, or the list
      // failed): the gateway's own read of the upstream decides, as it would for a caller with no
      // list of its own. Exchange upstreams have no credential of the gateway's: nothing decides
      // there but the caller's own list.
      const canRead = server.auth.type !== 'exchange'
      // A listing the gateway's own chain refused (the caller's headers, its policy, its budget)
      // is no reason to decide on anything else: only an upstream that could not answer is.
      const refusedByGateway = listed?.ok === false && listed.status !== undefined && listed.status < 500 && listed.error !== undefined && GATEWAY_REFUSALS.has(listed.error.code)
      if (entry === undefined && !guard.hasOwnList(caller, server.name) && canRead && !refusedByGateway) {
        if (c.stale || (!c.own.has(m.tool) && Date.now() - (c.readAt ?? 0) >= REFRESH_MS)) await guard.refresh(server)
        entry = c.own.get(m.tool)
      }
      if (entry === undefined && listed?.ok === false && !canRead) {
        done()
        const reason = `the gateway could not list the upstream's tools as this caller (${listed.why})`
        // The listing's own refusal (access denied by the authorization server, a credential that
        // could not be obtained, the upstream's error) is the call's answer: it would be the call's too.
        if (listed.error !== undefined) {
          const status = listed.status ?? 200
          throw refusal(new ListingAnswerError(listed.error.message), { statusCode: status, rpcCode: listed.error.code, data: listed.error.data, outcome: status >= 500 ? 'error' : 'deny', reason })
        }
        refuse(m.tool, reason)
      }
      // Decided on the tool's review now, not as it was when listed: a pin that changed since (a
      // rug pull seen in another caller's list, an approval) or a judge's verdict that came in
      // applies at once.
      if (entry !== undefined) entry = { tool: entry.tool, review: await guard.currentReview(server.name, entry) }
      done()
      if (entry === undefined) refuse(m.tool, 'the upstream did not list this tool to this caller')
      if (entry.review.quarantined) refuse(m.tool, entry.review.reason)
      // An argument spelled like one of the schema's but not as it (AMOUNT for amount): policies read
      // the exact name, upstreams that match names loosely (Go's encoding/json) would take it for it.
      const loose = looseArgument(entry.tool, m.arguments)
      if (loose !== undefined) throw refusal(new ArgumentNameError(JSON.stringify(loose.sent.slice(0, 64)), JSON.stringify(loose.schema)), { reason: `argument ${loose.sent} spelled like the schema's ${loose.schema}` })
    }

    // A prompt or resource asked for before any list of its kind was reviewed: the gateway lists
    // them as the caller first (at most once per REFRESH_MS per upstream and kind), so what the
    // list would have held back is held back here too.
    const served = (m?.target === 'prompt' || m?.target === 'resource') && m.method === CALL_METHOD_OF[m.target] ? m : null
    if (served !== null && served.kind === 'request') {
      const kind = served.target
      const key = `${server.name}\n${kind}`
      if (!guard.hasListed(server.name, kind) && Date.now() - (kindListedAt.get(key) ?? 0) >= REFRESH_MS) {
        kindListedAt.set(key, Date.now())
        const session = request.headers['mcp-session-id'] as string | undefined
        for (const method of LIST_METHODS_OF[kind]) await listPages(request, identity, server, session, method)
      }
    }
    // A prompt or resource whose listed text was quarantined is not served either.
    if (served !== null) {
      const name = served.target === 'prompt' ? served.prompt : served.uri
      if (guard.isHeld(server.name, served.target, name)) {
        const reason = `quarantined: the ${served.target} ${name} was listed with text the tool scanner flags`
        throw refusal(served.target === 'prompt' ? new UnknownPromptError(name) : new ResourceNotFoundError(name), { reason })
      }
    }

    if (m !== null && m.kind === 'request' && methodSpec(m.method).list !== undefined && m.id !== null) request.mcpListAnswer = { id: m.id }
    request.mcpResponseTransform = async (message) => {
      if (message.method === 'notifications/tools/list_changed') {
        guard.listChanged(server.name)
        return message
      }
      // What an answer holds decides what is filtered, not which request it claims to answer: a
      // list may come on any stream (the GET stream included) and with any id.
      const held = message.result
      if (held === null || typeof held !== 'object' || Array.isArray(held)) return message
      const r = held as Record<string, unknown>
      // An initialize answer's instructions (and the server's title and description) are read by
      // the model like a tool's description: poisoned ones are removed (the session goes on).
      if ('protocolVersion' in r) {
        const info = r.serverInfo !== null && typeof r.serverInfo === 'object' ? r.serverInfo as Record<string, unknown> : undefined
        const text = { instructions: r.instructions, title: info?.title, description: info?.description }
        if ((typeof text.instructions === 'string' || typeof text.title === 'string' || typeof text.description === 'string') && !guard.passesScan(server.name, 'instructions', text)) {
          const { instructions: _removed, ...rest } = r
          const { title: _t, description: _d, ...keptInfo } = info ?? {}
          return { ...message, result: { ...rest, ...(info !== undefined ? { serverInfo: keptInfo } : {}) } }
        }
      }
      if (!LISTS.some(l => l.key in r)) return message
      const done = startStage(request, 'filter')
      const scope = guard.decisionScope(identity, server)
      const result = { ...r }
      const items = <T>(v: unknown): T[] => Array.isArray(v) ? v.filter(x => x !== null && typeof x === 'object') as T[] : []
      if ('tools' in result) {
        const continued = m?.method === 'tools/list' && typeof m.params?.cursor === 'string'
        const caller = guard.callerKey(identity, server.name, request.headers['mcp-session-id'] as string | undefined)
        const offered = items<Tool>(result.tools)
        const visible = await guard.visibleTools(identity, server, offered, typeof result.nextCursor !== 'string', caller, continued)
        result.tools = shadow === null ? visible : shadowTools(offered, visible, caller)
      }
      // Resources, resource templates and prompts: each item is decided as a call of it would be.
      for (const list of LISTS) {
        const kind = list.kind
        if (kind === 'tool' || !(list.key in result)) continue
        result[list.key] = items<Record<string, unknown>>(result[list.key]).filter(x => {
          const name = x[list.itemKey]
          if (typeof name !== 'string') return false
          const allowed = guard.visible(identity, server, targetRequest(kind, name), '', scope)
          if (!allowed && shadow === null) return false
          if (!guard.passesScan(server.name, kind, x)) return false
          if (!allowed) shadow!.hidden.push(name)
          return true
        })
      }
      done()
      return { ...message, result }
    }

    /**
     * Shadow mode: the tools of a page as enforce mode would show them (`visible`, the same
     * filter) plus those only Cedar hid, which are noted in `request.mcpShadow.hidden`. A tool
     * held back for any other reason (quarantined, a pin, a name listed twice) stays out.
     */
    function shadowTools (offered: readonly Tool[], visible: readonly Tool[], caller: string): Tool[] {
      const shown = new Set(visible)
      const scope = guard.decisionScope(identity!, server)
      return offered.filter(t => {
        if (shown.has(t)) return true
        if (typeof t.name !== 'string' || guard.visible(identity!, server, targetRequest('tool', t.name), '', scope)) return false
        const entry = guard.listedTool(caller, server.name, t.name)
        if (entry === undefined || entry.review.quarantined) return false
        shadow!.hidden.push(t.name)
        return true
      })
    }
  })
}

export default fp(toolFilter, {
  name: 'mcp-warden-tool-filter',
  fastify: '5.x',
  // Registered before the credential plugins, so that a refused call costs no credential;
  // the ephemeral-token plugin's minter is looked up when the catalog is refreshed.
  dependencies: ['mcp-warden-context', 'mcp-warden-identity', 'mcp-warden-cedar-authz']
})
export { toolFilter }
