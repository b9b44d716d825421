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
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { Tool } from '@modelcontextprotocol/sdk/types.js'
import type { GatewayConfig, UpstreamConfig } from '../lib/config.js'
import { ConfigError, ResourceNotFoundError, refusal, UnknownPromptError, UnknownToolError } from '../lib/errors.js'
import { principalKey, type Identity } from '../lib/identity.js'
import { localTime } from '../lib/cedar/time.js'
import { createSecretProvider } from '../lib/secrets.js'
import { mintingFetch } from '../lib/tokens/fetch.js'
import { DEFAULT_RULES_FILE, loadRules, nameSet, ToolScanner, type Finding, type ScanContext } from '../lib/tools/scanner.js'
import { contentHash, definitionHash, FilePinStore, pinnedPart, type NewTools, type PinStore } from '../lib/tools/pins.js'
import { ToolJudge } from '../lib/tools/judge.js'
import type { AuthzRequest } from '../lib/cedar/engine.js'
import { listUpstreamTools } from '../lib/cedar/schema-gen.js'
import { startStage } from '../lib/timing.js'
import { sseMessages } from '../lib/sse.js'
import { INTERNAL_IDENTITY_HEADER } from './identity.js'
import { createHash } from 'node:crypto'
import type {} from './cedar-authz.js'
import type {} from './ephemeral-token.js'
import type {} from './mcp-proxy.js'

export interface ToolReview {
  readonly hash: string
  readonly quarantined: boolean
  /** Why a quarantined tool is: rule ids, or "changed since pinned". */
  readonly reason: string
  readonly findings: readonly Finding[]
  /** Held back only until the judge's verdict is in (toolScan.judge). */
  readonly pending?: boolean
}

interface CatalogEntry { readonly tool: Tool, readonly review: ToolReview }

/** What one caller (agent, user, session) has been listed by one upstream: pages by their hash. */
interface CallerCatalog {
  /** The upstream's list generation when this was filled (a list_changed makes it stale). */
  generation: number
  /** When the gateway last listed the tools as this caller. */
  listedAt: number
  /** False while, or after, the gateway's listing as this caller did not get every page. */
  ok: boolean
  readonly pages: string[]
}

/** A URI as held items are keyed: lower case, without its fragment. */
const normalUri = (uri: string): string => uri.split('#')[0]!.toLowerCase()

/** How listing the tools as a caller ended: `ok` once the upstream answered every page. */
type ListAsCaller = { ok: true } | { ok: false, why: string, status?: number, error?: { code: number, message: string, data?: unknown } }

/** The most callers remembered, and the most pages per caller. */
const MAX_CALLERS = 20_000
const MAX_PAGES_PER_CALLER = 100
/** Limits on a list the gateway reads as a caller. */
const CALLER_LIST = { maxPages: 20, timeoutMs: 15_000 }
/** The most list pages remembered for callers' catalogs, and the most tools in them together. */
const MAX_PAGES_KEPT = 2_000
const MAX_TOOLS_KEPT = 100_000
const MAX_BYTES_KEPT = 64 * 1024 * 1024

interface Catalog {
  /** Every tool any list of this upstream showed (names bounded by MAX_TOOLS_PER_UPSTREAM): for reviews and the CLI, never for deciding a call. */
  tools: Map<string, { tool: Tool, review: ToolReview }>
  /** What the gateway's own read of the list (its own credential) showed. */
  own: Map<string, CatalogEntry>
  stale: boolean
  /** When the gateway last read the list itself (ms since the epoch). */
  readAt?: number
  refreshing?: Promise<void>
}

declare module 'fastify' {
  interface FastifyInstance {
    toolGuard: ToolGuard
  }
}

export interface ToolFilterOptions {
  config: GatewayConfig
  /** Pin store (default: the gateway store's, else the file at toolScan.pins). */
  pins?: PinStore
}

const LIST_METHODS = new Set(['tools/list', 'resources/list', 'resources/templates/list', 'prompts/list'])
const MAX_DECISIONS = 50_000
/** The most tool names one upstream may have scanned, pinned and remembered. */
export const MAX_TOOLS_PER_UPSTREAM = 10_000
/** Least time between two reads of an upstream's list for names the gateway has not seen. */
const REFRESH_MS = 5000
/** How long the pages of an upstream's first list count as that first list. */
const FIRST_LIST_MS = 60_000


/** The gateway's view of each upstream's tools: reviews (scan + pin) and visibility decisions. */
export class ToolGuard {
  readonly #catalogs = new Map<string, Catalog>()
  readonly #findings = new Map<string, readonly Finding[]>()
  readonly #pages = new Map<string, Set<string>>()
  readonly #announced = new Set<string>()
  readonly #decisions = new Map<string, boolean>()
  readonly #app: FastifyInstance
  readonly #scanner: ToolScanner
  readonly #pins: PinStore
  readonly #config: GatewayConfig
  readonly #judge: ToolJudge | undefined
  /** Content hashes (definitions without their names) the rules or the judge quarantined → the name they had. */
  readonly #quarantinedContent = new Map<string, string>()
  /** Content hashes held for approval (changed or new) → the name they had, while they wait. */
  readonly #changedContent = new Map<string, string>()
  /** Upstreams whose first list is being read page by page → until when. */
  readonly #firstListing = new Map<string, number>()
  /** Upstreams whose first list was read to its end (newTools: quarantine holds any later name). */
  readonly #baselined = new Set<string>()
  /** Callers' catalogs: server \n principal \n session → the pages listed to them. */
  readonly #callers = new Map<string, CallerCatalog>()
  /** One list page's tools and their reviews, by server \n page hash (shared by every caller listed it). */
  readonly #pageTools = new Map<string, ReadonlyMap<string, CatalogEntry>>()
  readonly #pageBytes = new Map<string, number>()
  #toolsKept = 0
  #bytesKept = 0
  /** Prompts and resources quarantined when last listed: server \n kind \n name or URI. */
  readonly #heldItems = new Set<string>()
  /** server \n prompt|resource: kinds of list reviewed at least once. */
  readonly #listedKinds = new Set<string>()
  /** Bumped by an upstream's notifications/tools/list_changed. */
  readonly #generations = new Map<string, number>()

  constructor (app: FastifyInstance, config: GatewayConfig, scanner: ToolScanner, pins: PinStore) {
    this.#app = app
    this.#config = config
    this.#scanner = scanner
    this.#pins = pins
    this.#judge = config.toolScan.judge !== undefined ? new ToolJudge(config.toolScan.judge) : undefined
  }

  catalog (server: string): Catalog {
    let c = this.#catalogs.get(server)
    if (c === undefined) { c = { tools: new Map(), own: new Map(), stale: true }; this.#catalogs.set(server, c) }
    return c
  }

  /** Scans (once per definition hash) and pin-checks (every time: approvals apply at once) a tool. */
  async review (server: string, tool: Tool, ctx?: ScanContext, overBound = false, newTools = this.#config.toolScan.newTools): Promise<ToolReview> {
    const hash = definitionHash(tool)
    const key = `${server}/${tool.name}\n${hash}`
    // What one upstream can make the gateway remember is bounded: past MAX_TOOLS_PER_UPSTREAM
    // names, a new name is neither scanned nor pinned, only quarantined.
    const known = this.catalog(server).tools
    if (overBound || (!known.has(tool.name) && known.size >= MAX_TOOLS_PER_UPSTREAM)) {
      return { hash, quarantined: true, reason: `quarantined: the upstream offers more than ${MAX_TOOLS_PER_UPSTREAM} tools`, findings: [] }
    }
    let findings = this.#findings.get(key)
    if (findings === undefined) {
      if (this.#findings.size >= MAX_DECISIONS) this.#findings.clear()
      findings = this.#scanner.scan(tool, ctx ?? this.#scanContext(server, []))
      this.#findings.set(key, findings)
    }
    // The rules passed: the judge, when one is configured, has the second word.
    if (findings.length === 0 && this.#judge !== undefined) {
      const verdict = await this.#judge.judge(server, hash, pinnedPart(tool))
      if (verdict.quarantine) findings = [{ rule: verdict.pending === true ? 'judge-pending' : verdict.failed ? 'judge-unavailable' : 'judge', path: '', excerpt: verdict.reason.slice(0, 80), description: 'the judge at toolScan.judge.url' }]
    }
    // What was quarantined under one name stays quarantined under another.
    const content = `${server}\n${contentHash(tool)}`
    let twin = this.#quarantinedContent.get(content)
    const held = twin === undefined ? this.#changedContent.get(content) : undefined
    if (held !== undefined && held !== tool.name) {
      // Held for approval under another name: still so only while that definition waits.
      const waiting = (await this.#pins.entries()).get(`${server}/${held}`)?.pending
      if (waiting !== undefined && `${server}\n${contentHash(waiting.definition)}` === content) twin = held
      else this.#changedContent.delete(content)
    }
    const pin = await this.#pins.check(server, tool, hash, newTools)
    let reason = 'ok'
    if (findings.length > 0) reason = `quarantined by ${[...new Set(findings.map(f => f.rule))].join(', ')}`
    else if (pin === 'changed') reason = `quarantined: the upstream served a definition other than the pinned one; review it with mcp-warden tools diff and approve it with mcp-warden tools approve ${server}/${tool.name} HASH`
    else if (pin === 'new') reason = `quarantined: a tool that appeared after the upstream's tools were first pinned (toolScan.newTools: quarantine); review it and approve it with mcp-warden tools approve ${server}/${tool.name} ${hash.slice(0, 12)}`
    else if (twin !== undefined && twin !== tool.name) reason = `quarantined: the same definition as quarantined tool ${twin}`
    // A definition still waiting for the judge is held back from this answer only: nothing is
    // remembered about it (its verdict, when in, decides).
    const waiting = findings.length === 1 && findings[0]!.rule === 'judge-pending'
    if (reason !== 'ok' && !waiting) {
      const remember = findings.length > 0 ? this.#quarantinedContent : this.#changedContent
      if (remember.size >= MAX_DECISIONS) remember.clear()
      if (!remember.has(content)) remember.set(content, tool.name)
    }
    if (reason !== 'ok' && !waiting && !this.#announced.has(key)) {
      if (this.#announced.size >= MAX_DECISIONS) this.#announced.clear()
      this.#announced.add(key)
      this.#app.log.warn({ server, tool: tool.name, hash, reason, ...(findings.length > 0 ? { findings } : {}) }, 'tool quarantined')
    }
    return { hash, quarantined: reason !== 'ok', reason, findings, ...(waiting ? { pending: true } : {}) }
  }

  /**
   * The tools of one tools/list page this caller may see. A page seen before (same text,
   * same pins, same decision scope) is answered from cache.
   */
  async visibleTools (identity: Identity, server: UpstreamConfig, tools: readonly Tool[], lastPage = true, caller?: string, continued = false): Promise<Tool[]> {
    const scope = this.decisionScope(identity, server)
    // The page as the upstream sent it (not canonical: the same answer has the same text).
    const text = JSON.stringify(tools)
    const pageHash = `${server.name}\n${createHash('sha256').update(text).digest('base64url')}`
    const pageKey = `${scope}\n${this.#pins.generation}\n${pageHash}`
    const names = this.#pages.get(pageKey)
    if (names !== undefined && this.#pageTools.has(pageHash)) {
      const c = this.catalog(server.name)
      if (!c.stale) {
        if (caller !== undefined) this.#listedTo(caller, server.name, pageHash)
        return tools.filter(t => names.has(t.name))
      }
    }
    const reviews = await this.record(server.name, tools, lastPage, continued)
    // What callers' catalogs hold is bounded in pages and in tools: the oldest pages go first (a
    // caller whose page went lists again when it calls).
    const entries = new Map(tools.filter(t => typeof t?.name === 'string' && reviews.has(t.name)).map(t => [t.name, { tool: t, review: reviews.get(t.name)! }]))
    const kept = this.#pageTools.get(pageHash)
    if (kept !== undefined) { this.#pageTools.delete(pageHash); this.#toolsKept -= kept.size; this.#bytesKept -= this.#pageBytes.get(pageHash) ?? 0 }
    while (this.#pageTools.size > 0 && (this.#pageTools.size >= MAX_PAGES_KEPT || this.#toolsKept + entries.size > MAX_TOOLS_KEPT || this.#bytesKept + text.length > MAX_BYTES_KEPT)) {
      const [oldest, page] = this.#pageTools.entries().next().value!
      this.#pageTools.delete(oldest)
      this.#toolsKept -= page.size
      this.#bytesKept -= this.#pageBytes.get(oldest) ?? 0
      this.#pageBytes.delete(oldest)
    }
    this.#pageTools.set(pageHash, entries)
    this.#pageBytes.set(pageHash, text.length)
    this.#toolsKept += entries.size
    this.#bytesKept += text.length
    if (caller !== undefined) this.#listedTo(caller, server.name, pageHash)
    const visible = tools.filter(t => {
      const review = reviews.get(t.name)
      return review !== undefined && !review.quarantined && this.visible(identity, server, { action: 'call_tool', method: 'tools/call', tool: t.name }, review.hash, scope)
    })
    // One name, two definitions in one list: which one a client keeps is anyone's guess, so
    // neither is shown (record() quarantined the name).
    if (this.#pages.size >= 10_000) this.#pages.clear()
    // A page with definitions still waiting for the judge is decided again next time.
    if (![...reviews.values()].some(r => r.pending === true)) this.#pages.set(pageKey, new Set(visible.map(t => t.name)))
    return visible
  }

  /** What the scanner knows about names when reviewing this upstream's tools: its own (listed now and known), and other upstreams'. Built once per list. */
  #scanContext (server: string, listed: readonly string[]): ScanContext {
    const ownTools = nameSet([...listed, ...this.catalog(server).tools.keys()])
    const otherTools = new Set<string>()
    for (const s of this.#config.upstreams.keys()) {
      if (s === server) continue
      for (const n of this.#catalogs.get(s)?.tools.keys() ?? []) {
        const lower = n.toLowerCase()
        if (!ownTools.has(lower)) otherTools.add(lower)
      }
    }
    return { ownTools, otherTools }
  }

  /**
   * Whether text an upstream sends the model besides tools — a prompt or resource listed, the
   * `instructions` of its initialize answer — passes the scanner's rules. Scanned once per
   * definition hash; a finding is logged once.
   */
  passesScan (server: string, kind: 'prompt' | 'resource' | 'instructions', item: Record<string, unknown>): boolean {
    const hash = definitionHash({ ...item, name: typeof item.name === 'string' ? item.name : kind })
    const key = `${kind}\n${server}\n${hash}`
    let findings = this.#findings.get(key)
    if (findings === undefined) {
      if (this.#findings.size >= MAX_DECISIONS) this.#findings.clear()
      findings = this.#scanner.scan({ ...item, name: typeof item.name === 'string' ? item.name : kind }, { ownTools: nameSet(this.catalog(server).tools.keys()) })
      this.#findings.set(key, findings)
      if (findings.length > 0) this.#app.log.warn({ server, [kind]: typeof item.name === 'string' ? item.name : undefined, hash, findings }, kind === 'instructions' ? 'upstream instructions removed' : `${kind} quarantined`)
    }
    if (kind !== 'instructions') this.#listedKinds.add(`${server}\n${kind}`)
    // Held from then on (until a restart), whatever another list says: a clean definition listed
    // to one caller must not release the poisoned one listed to another.
    if (findings.length > 0 && kind === 'prompt' && typeof item.name === 'string') this.#hold(`${server}\nprompt\n${item.name.toLowerCase()}`)
    if (findings.length > 0 && kind === 'resource' && typeof item.uri === 'string') this.#hold(`${server}\nresource\n${normalUri(item.uri)}`)
    if (findings.length > 0 && kind === 'resource' && typeof item.uriTemplate === 'string') this.#hold(`${server}\ntemplate\n${normalUri(item.uriTemplate.split('{')[0]!)}`)
    return findings.length === 0
  }

  #hold (key: string): void {
    if (this.#heldItems.size >= MAX_DECISIONS) return // beyond the bound nothing more is remembered; what is held stays held
    this.#heldItems.add(key)
  }

  /**
   * Whether a prompt (by name, in any case) or resource (by URI without its fragment, in any
   * case; or under the literal start of a quarantined URI template) was quarantined in a list.
   */
  isHeld (server: string, kind: 'prompt' | 'resource', target: string): boolean {
    if (kind === 'prompt') return this.#heldItems.has(`${server}\nprompt\n${target.toLowerCase()}`)
    const uri = normalUri(target)
    if (this.#heldItems.has(`${server}\nresource\n${uri}`)) return true
    const prefix = `${server}\ntemplate\n`
    for (const k of this.#heldItems) if (k.startsWith(prefix) && uri.startsWith(k.slice(prefix.length))) return true
    return false
  }

  /** Whether any list of this kind (prompts, resources) of this upstream has been reviewed. */
  hasListed (server: string, kind: 'prompt' | 'resource'): boolean {
    return this.#listedKinds.has(`${server}\n${kind}`)
  }

  /** The key of one caller's catalog of one upstream: agent, user and upstream session. */
  callerKey (identity: Identity, server: string, session: string | undefined): string {
    return `${server}\n${principalKey(identity)}\n${session ?? ''}`
  }

  #listedTo (caller: string, server: string, pageHash: string): void {
    const generation = this.#generations.get(server) ?? 0
    let c = this.#callers.get(caller)
    if (c === undefined || c.generation !== generation) {
      if (c === undefined && this.#callers.size >= MAX_CALLERS) this.#callers.delete(this.#callers.keys().next().value!)
      c = { generation, listedAt: c?.listedAt ?? 0, ok: true, pages: [] }
      this.#callers.set(caller, c)
    }
    if (c.pages.includes(pageHash)) return
    if (c.pages.length >= MAX_PAGES_PER_CALLER) c.pages.shift()
    c.pages.push(pageHash)
  }

  /**
   * The tool as it was last listed to this caller: undefined when it was not, or when the
   * caller's catalog is stale (the upstream said its list changed).
   */
  listedTool (caller: string, server: string, name: string): CatalogEntry | undefined {
    const c = this.#callers.get(caller)
    if (c === undefined || c.generation !== (this.#generations.get(server) ?? 0)) return undefined
    for (let i = c.pages.length - 1; i >= 0; i--) {
      const entry = this.#pageTools.get(c.pages[i]!)?.get(name)
      if (entry !== undefined) return entry
    }
    return undefined
  }

  /** Whether the gateway may list the tools as this caller now (at most once per REFRESH_MS, at once after a list_changed). */
  mayListAs (caller: string, server: string): boolean {
    const c = this.#callers.get(caller)
    if (c === undefined || c.generation !== (this.#generations.get(server) ?? 0)) return true
    return Date.now() - c.listedAt >= REFRESH_MS
  }

  /** Starts this caller's catalog afresh: the gateway is about to list the tools as the caller (pages are recorded as they pass). */
  listingAs (caller: string, server: string): void {
    if (!this.#callers.has(caller) && this.#callers.size >= MAX_CALLERS) this.#callers.delete(this.#callers.keys().next().value!)
    this.#callers.set(caller, { generation: this.#generations.get(server) ?? 0, listedAt: Date.now(), ok: false, pages: [] })
  }

  /** How the gateway's listing as this caller ended. */
  listedAs (caller: string, ok: boolean): void {
    const c = this.#callers.get(caller)
    if (c !== undefined) c.ok = ok
  }

  /** Whether this caller has a catalog of its own: a list that reached it, or a listing as it that got every page. */
  hasOwnList (caller: string, server: string): boolean {
    const c = this.#callers.get(caller)
    return c !== undefined && c.ok && c.generation === (this.#generations.get(server) ?? 0)
  }

  /** An upstream said its tool list changed: every catalog of it is stale. */
  listChanged (server: string): void {
    this.catalog(server).stale = true
    this.#generations.set(server, (this.#generations.get(server) ?? 0) + 1)
  }

  /**
   * Whether newTools: quarantine applies to this page: not while the upstream's first list is
   * read (every page of it, up to the page without a nextCursor, within FIRST_LIST_MS): the
   * tools that list offers are the ones pinned.
   */
  async #newToolsFor (server: string, lastPage: boolean, continued: boolean): Promise<NewTools> {
    const mode = this.#config.toolScan.newTools
    if (mode !== 'quarantine' || this.#baselined.has(server)) return mode
    const listing = this.#firstListing.get(server)
    // A later page of the first list (asked for with its cursor, in time), or a list while the
    // upstream has no pins yet.
    const first = (continued && listing !== undefined && listing > Date.now()) || !(await this.#pins.hasPins(server))
    if (!first) return mode
    if (lastPage) {
      // The first list is complete, even an empty one: from now on new names wait.
      this.#firstListing.delete(server)
      this.#baselined.add(server)
    } else this.#firstListing.set(server, listing ?? Date.now() + FIRST_LIST_MS)
    return 'review'
  }

  /** Records tools an upstream offered (one page of tools/list, or all of it) and returns their reviews. */
  async record (server: string, tools: readonly Tool[], lastPage = true, continued = false): Promise<Map<string, ToolReview>> {
    const c = this.catalog(server)
    // Decided once for the page, before its tools are reviewed side by side.
    const newTools = await this.#newToolsFor(server, lastPage, continued)
    const out = new Map<string, ToolReview>()
    const counts = new Map<string, number>()
    for (const tool of tools) if (typeof tool?.name === 'string') counts.set(tool.name, (counts.get(tool.name) ?? 0) + 1)
    const names = [...counts.keys()]
    // Reviewed side by side: a judge, when configured, is asked about every new definition at once.
    // The bound on names is applied in list order before the reviews run side by side.
    let room = MAX_TOOLS_PER_UPSTREAM - c.tools.size
    const admitted = new Set<string>()
    for (const name of names) if (c.tools.has(name) || (room-- > 0)) admitted.add(name)
    const ctx = this.#scanContext(server, names)
    const reviewed = await Promise.all(tools.map(async tool => typeof tool?.name === 'string' ? await this.review(server, tool, ctx, !admitted.has(tool.name), newTools) : undefined))
    for (const [i, tool] of tools.entries()) {
      if (typeof tool?.name !== 'string') continue
      let review = reviewed[i]!
      if ((counts.get(tool.name) ?? 0) > 1) {
        // A clean and a poisoned definition under one name: both are quarantined together.
        review = { ...review, quarantined: true, reason: 'the upstream listed this name more than once in one list' }
        if (!out.has(tool.name)) this.#app.log.warn({ server, tool: tool.name }, 'tool quarantined: its name appears more than once in one list')
      }
      if (out.get(tool.name)?.quarantined === true) continue
      c.tools.set(tool.name, { tool, review })
      out.set(tool.name, review)
    }
    c.stale = false
    return out
  }

  /**
   * The key of everything a list-time decision depends on besides the item: the caller's
   * attributes, the policy version and the local hour (policies read context.localHour).
   */
  decisionScope (identity: Identity, server: UpstreamConfig): string {
    const cedar = this.#app.cedar
    const { localHour, localWeekday } = localTime(new Date(), cedar.engine.timezone)
    return `${JSON.stringify([identity.issuer, identity.agentId, identity.userId, identity.roles, identity.department, identity.scopes, identity.delegated])}\n${cedar.version}\n${localWeekday}:${localHour}\n${server.name}`
  }

  /** Whether Cedar would let this caller call the tool (list-time context), cached per decision scope and tool definition. */
  visible (identity: Identity, server: UpstreamConfig, r: Omit<AuthzRequest, 'identity' | 'server'>, hash = '', scope = this.decisionScope(identity, server)): boolean {
    const cedar = this.#app.cedar
    const key = `${scope}\n${r.action}:${r.tool ?? r.uri ?? r.prompt ?? ''}\n${hash}`
    let allowed = this.#decisions.get(key)
    if (allowed === undefined) {
      allowed = cedar.authorize({ ...r, identity, server }).allowed
      if (this.#decisions.size >= MAX_DECISIONS) this.#decisions.clear()
      this.#decisions.set(key, allowed)
    }
    return allowed
  }

  /** Re-reads an upstream's tool list with the gateway's own credential for it (not possible for exchange upstreams). */
  async refresh (server: UpstreamConfig): Promise<void> {
    const c = this.catalog(server.name)
    c.refreshing ??= (async () => {
      c.readAt = Date.now()
      const fetchImpl = this.#fetchFor(server)
      if (fetchImpl === undefined) return
      try {
        const tools = await listUpstreamTools(server.url, fetchImpl, 'mcp-warden')
        c.tools.clear()
        const reviews = await this.record(server.name, tools)
        c.own = new Map(tools.filter(t => typeof t?.name === 'string' && reviews.has(t.name)).map(t => [t.name, { tool: t, review: reviews.get(t.name)! }]))
      } catch (err) {
        this.#app.log.warn({ server: server.name, error: (err as Error).message }, 'could not read the upstream\'s tool list')
      }
    })().finally(() => { c.refreshing = undefined })
    await c.refreshing
  }

  #fetchFor (server: UpstreamConfig): typeof fetch | undefined {
    const auth = server.auth
    switch (auth.type) {
      case 'none': return fetch
      case 'ephemeral': return mintingFetch(this.#app.tokens.minter, server.resource, { agentId: 'mcp-warden', userId: null })
      case 'secret': {
        const provider = createSecretProvider(auth.secret)
        return async (input, init = {}) => {
          const headers = new Headers(init.headers)
          headers.set(auth.header, auth.format.replace('{secret}', await provider.get()))
          return await fetch(input, { ...init, headers })
        }
      }
      case 'exchange': return undefined
    }
  }
}

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
    pins = opts.pins ?? (app.hasDecorator('store') ? app.store.pins : new FilePinStore(config.toolScan.pins))
  } catch (err) {
    throw new ConfigError(`toolScan.pins: cannot use ${config.toolScan.pins}: ${(err as Error).message}`)
  }
  const guard = new ToolGuard(app, config, scanner, pins)
  app.decorate('toolGuard', guard)

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
    for (let page = 1; page <= CALLER_LIST.maxPages && Date.now() < deadline; page++) {
      const id = `mcp-warden-list-${page}`
      const version = request.headers['mcp-protocol-version']
      const res = await app.inject({
        payloadAsStream: true,
        method: 'POST',
        url: `/servers/${server.name}/mcp`,
        headers: {
          'content-type': 'application/json',
          accept: 'application/json, text/event-stream',
          [INTERNAL_IDENTITY_HEADER]: app.mcpInternalIdentity.issue(identity),
          ...(request.headers.authorization !== undefined ? { authorization: request.headers.authorization } : {}),
          ...(session !== undefined ? { 'mcp-session-id': session } : {}),
          ...(typeof version === 'string' ? { 'mcp-protocol-version': version } : {})
        },
        payload: JSON.stringify({ jsonrpc: '2.0', id, method, params: cursor !== undefined ? { cursor } : {} })
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
  const refuse = (name: string, reason: string): never => { throw refusal(new UnknownToolError(name), { reason }) }

  app.addHook('preHandler', async (request, reply) => {
    const target = request.mcpTarget
    const identity = request.identity
    if (target === null || identity === null || request.decision?.allowed !== true) return
    const server = target.server
    const m = request.mcp

    if (m?.method === 'tools/call') {
      const done = startStage(request, 'filter')
      const c = guard.catalog(server.name)
      const session = request.headers['mcp-session-id'] as string | undefined
      const caller = guard.callerKey(identity, server.name, session)
      // The tool as the upstream listed it to this caller. A name it was not listed (or a list
      // the upstream said changed) makes the gateway list the tools as the caller first, at most
      // once per REFRESH_MS, so calls of made-up names cannot make it hammer the upstream.
      let entry = guard.listedTool(caller, server.name, m.tool!)
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
        entry = guard.listedTool(caller, server.name, m.tool!)
      }
      // A caller the gateway could not list as (its policy does not let it list, or the list
      // failed): the gateway's own read of the upstream decides, as it would for a caller with no
      // list of its own. Exchange upstreams have no credential of the gateway's: nothing decides
      // there but the caller's own list.
      const canRead = server.auth.type !== 'exchange'
      if (entry === undefined && !guard.hasOwnList(caller, server.name) && canRead) {
        if (c.stale || (!c.own.has(m.tool!) && Date.now() - (c.readAt ?? 0) >= REFRESH_MS)) await guard.refresh(server)
        entry = c.own.get(m.tool!)
      }
      if (entry === undefined && listed?.ok === false && !canRead) {
        done()
        const reason = `the gateway could not list the upstream's tools as this caller (${listed.why})`
        // The listing's own refusal (access denied by the authorization server, a credential that
        // could not be obtained, the upstream's error) is the call's answer: it would be the call's too.
        if (listed.error !== undefined) {
          request.mcpOutcome = { outcome: (listed.status ?? 200) >= 500 ? 'error' : 'deny', reason }
          return await reply.code(listed.status ?? 200).type('application/json; charset=utf-8').send({ jsonrpc: '2.0', id: m.id ?? null, error: listed.error })
        }
        refuse(m.tool!, reason)
      }
      // Decided on the tool's review now, not as it was when listed: a pin that changed since (a
      // rug pull seen in another caller's list, an approval) or a judge's verdict that came in
      // applies at once. The review is cached; its pin check is a lookup when nothing changed.
      if (entry !== undefined && !entry.review.quarantined) {
        entry = { tool: entry.tool, review: await guard.review(server.name, entry.tool) }
      } else if (entry?.review.pending === true) {
        entry = { tool: entry.tool, review: await guard.review(server.name, entry.tool) }
      }
      done()
      if (entry === undefined) refuse(m.tool!, 'the upstream did not list this tool to this caller')
      if (entry!.review.quarantined) refuse(m.tool!, entry!.review.reason)
    }

    // A prompt or resource asked for before any list of its kind was reviewed: the gateway lists
    // them as the caller first (at most once per REFRESH_MS per upstream and kind), so what the
    // list would have held back is held back here too.
    if ((m?.method === 'prompts/get' || m?.method === 'resources/read') && m.kind === 'request') {
      const kind = m.method === 'prompts/get' ? 'prompt' : 'resource'
      const key = `${server.name}\n${kind}`
      if (!guard.hasListed(server.name, kind) && Date.now() - (kindListedAt.get(key) ?? 0) >= REFRESH_MS) {
        kindListedAt.set(key, Date.now())
        const session = request.headers['mcp-session-id'] as string | undefined
        await listPages(request, identity, server, session, kind === 'prompt' ? 'prompts/list' : 'resources/list')
        if (kind === 'resource') await listPages(request, identity, server, session, 'resources/templates/list')
      }
    }
    // A prompt or resource whose listed text was quarantined is not served either.
    if ((m?.method === 'prompts/get' && m.prompt !== undefined && guard.isHeld(server.name, 'prompt', m.prompt)) ||
        (m?.method === 'resources/read' && m.uri !== undefined && guard.isHeld(server.name, 'resource', m.uri))) {
      const what = m.method === 'prompts/get' ? `prompt ${m.prompt!}` : `resource ${m.uri!}`
      const reason = `quarantined: the ${what} was listed with text the tool scanner flags`
      throw refusal(m.method === 'prompts/get' ? new UnknownPromptError(m.prompt!) : new ResourceNotFoundError(m.uri!), { reason })
    }

    if (m !== null && m.kind === 'request' && LIST_METHODS.has(m.method!) && m.id !== null) request.mcpListAnswer = { id: m.id }
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
      if (!('tools' in r) && !('resources' in r) && !('resourceTemplates' in r) && !('prompts' in r)) return message
      const done = startStage(request, 'filter')
      const scope = guard.decisionScope(identity, server)
      const result = { ...r }
      const items = <T>(v: unknown): T[] => Array.isArray(v) ? v.filter(x => x !== null && typeof x === 'object') as T[] : []
      if ('tools' in result) {
        const continued = m?.method === 'tools/list' && typeof m.params?.cursor === 'string'
        result.tools = await guard.visibleTools(identity, server, items<Tool>(result.tools), typeof result.nextCursor !== 'string', guard.callerKey(identity, server.name, request.headers['mcp-session-id'] as string | undefined), continued)
      }
      if ('resources' in result) {
        result.resources = items<Record<string, unknown>>(result.resources)
          .filter(x => typeof x.uri === 'string' && guard.visible(identity, server, { action: 'read_resource', method: 'resources/read', uri: x.uri }, '', scope) && guard.passesScan(server.name, 'resource', x))
      }
      if ('resourceTemplates' in result) {
        result.resourceTemplates = items<Record<string, unknown>>(result.resourceTemplates)
          .filter(x => typeof x.uriTemplate === 'string' && guard.visible(identity, server, { action: 'read_resource', method: 'resources/read', uri: x.uriTemplate }, '', scope) && guard.passesScan(server.name, 'resource', x))
      }
      if ('prompts' in result) {
        result.prompts = items<Record<string, unknown>>(result.prompts)
          .filter(x => typeof x.name === 'string' && guard.visible(identity, server, { action: 'get_prompt', method: 'prompts/get', prompt: x.name }, '', scope) && guard.passesScan(server.name, 'prompt', x))
      }
      done()
      return { ...message, result }
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
