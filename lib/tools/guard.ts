/**
 * The tool guard: the gateway's view of each upstream's tools and of what each caller was listed.
 * It reviews definitions (the scanner's rules, the judge, pins), remembers each caller's catalog,
 * and decides what a caller may see and call. The tool-filter plugin calls it from its hooks.
 */
import { createHash } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Tool } from '@modelcontextprotocol/sdk/types.js'
import type { GatewayConfig, UpstreamConfig } from '../config.js'
import { principalKey, type Identity } from '../identity.js'
import { localTime } from '../cedar/time.js'
import { ownFetch } from '../credentials/index.js'
import { nameSet, type Finding, type ScanContext, type ToolLike, type ToolScanner } from './scanner.js'
import { contentHash, definitionHash, pinnedPart, type NewTools, type PinCheck, type PinEntry, type PinStore } from './pins.js'
import { ToolJudge } from './judge.js'
import { listable, type AuthzRequest, type Decision } from '../cedar/engine.js'
import type { TokenMinter } from '../tokens/minter.js'
import { listUpstreamTools } from '../cedar/schema-gen.js'
import { targetRequest } from '../mcp-methods.js'

export interface ToolReview {
  readonly hash: string
  readonly quarantined: boolean
  /** Why a quarantined tool is: rule ids, or "changed since pinned". */
  readonly reason: string
  /** The findings that hold the tool back (none when the operator waived them for this definition). */
  readonly findings: readonly Finding[]
  /** Findings the operator accepted for this very definition (PinStore.waive): shown, not held against it. */
  readonly waivedFindings?: readonly Finding[]
  /** Held back only until the judge's verdict is in (toolScan.judge). */
  readonly pending?: boolean
  /** The pin store's generation the review was made at: a review of an older one may be out of date. */
  readonly pinGeneration?: number
}

export interface CatalogEntry { readonly tool: Tool, readonly review: ToolReview }

/** A tool held back from agents, as an operator reviews it (ToolGuard.quarantined). */
export interface QuarantinedTool {
  readonly server: string
  readonly tool: string
  /** The full hash of the definition waiting for a decision (the pending one, or the one served). */
  readonly hash: string
  /**
   * `finding`: the scanner's rules (or the judge) flag the definition; `changed`: it is not the
   * pinned one; `new`: it appeared after the upstream's tools were pinned (toolScan.newTools:
   * quarantine); `other`: held for a reason an approval does not lift (the same text as another
   * quarantined tool, a name listed twice, too many tools).
   */
  readonly kind: 'finding' | 'changed' | 'new' | 'other'
  readonly reason: string
  /** The findings that hold it back (none for a definition whose findings were waived). */
  readonly findings: readonly Finding[]
  /** The definition held, as it is pinned (pinnedPart). */
  readonly definition: ToolLike
  /** The pinned definition, when there is one other than the held one. */
  readonly pinned?: ToolLike
  /** When the held definition was first seen (recorded as pending, or pinned). */
  readonly seenAt?: string
}

/** The least of a definition hash an approval must name: as `mcp-warden tools list` shows it. */
const MIN_HASH_PREFIX = 12

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

/** A URI as held items are keyed: decoded, lower case, without fragment or query, dot segments and repeated slashes resolved. */
const normalUri = (uri: string): string => {
  let u = uri.trim().normalize('NFKC')
  // Percent-encoding decoded (repeatedly: %2565 is %65 is e), fragment and query dropped.
  for (let i = 0; i < 3 && /%[0-9a-f]{2}/i.test(u); i++) {
    try { u = decodeURIComponent(u) } catch { break }
  }
  u = u.split('#')[0]!.split('?')[0]!.toLowerCase()
  // file://localhost/x and file:/x are file:///x; dot segments and repeated slashes resolved.
  u = u.replace(/^file:\/\/localhost\//, 'file:///').replace(/^file:\/(?!\/)/, 'file:///')
  const m = /^([a-z][a-z0-9+.-]*:\/\/[^/]*)(\/.*)?$/.exec(u)
  if (m !== null) {
    const segments: string[] = []
    for (const seg of (m[2] ?? '').split('/')) {
      if (seg === '' || seg === '.') continue
      if (seg === '..') segments.pop()
      else segments.push(seg)
    }
    u = segments.length > 0 ? `${m[1]!}/${segments.join('/')}` : m[1]!
  }
  return u
}
/** A prompt name as held items are keyed: NFKC (fullwidth letters read as ASCII), lower case, trimmed. */
const normalName = (name: string): string => name.normalize('NFKC').trim().toLowerCase()

/** How listing the tools as a caller ended: `ok` once the upstream answered every page. */
export type ListAsCaller = { ok: true } | { ok: false, why: string, status?: number, error?: { code: number, message: string, data?: unknown } }

/** The most callers remembered, and the most pages per caller. */
const MAX_CALLERS = 20_000
const MAX_PAGES_PER_CALLER = 100
/** Limits on a list the gateway reads as a caller. */
export const CALLER_LIST = { maxPages: 20, timeoutMs: 15_000 }
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
  refreshing?: Promise<void> | undefined
}

const MAX_DECISIONS = 50_000
/** The most tool names one upstream may have scanned, pinned and remembered. */
export const MAX_TOOLS_PER_UPSTREAM = 10_000
/** Least time between two reads of an upstream's list for names the gateway has not seen. */
export const REFRESH_MS = 5000
/** How long the pages of an upstream's first list count as that first list. */
const FIRST_LIST_MS = 60_000

/**
 * Why a definition is held back by its findings or its pin, or undefined when neither holds it.
 * Findings come first: an approval of the pin does not lift them.
 */
function heldBecause (server: string, name: string, hash: string, findings: readonly Finding[], pin: PinCheck): string | undefined {
  if (findings.length > 0) return `quarantined by ${[...new Set(findings.map(f => f.rule))].join(', ')}`
  if (pin === 'changed') return `quarantined: the upstream served a definition other than the pinned one; review it with mcp-warden tools diff and approve it with mcp-warden tools approve ${server}/${name} HASH`
  if (pin === 'new') return `quarantined: a tool that appeared after the upstream's tools were first pinned (toolScan.newTools: quarantine); review it and approve it with mcp-warden tools approve ${server}/${name} ${hash.slice(0, 12)}`
  return undefined
}

/** The gateway's view of each upstream's tools: reviews (scan + pin) and visibility decisions. */
/** What the guard needs from the gateway around it. */
export interface GuardDeps {
  readonly log: FastifyBaseLogger
  /** The current policy set: its decisions, version and time zone. */
  readonly cedar: () => { authorize (request: AuthzRequest): Decision, readonly version: string, readonly engine: { readonly timezone: string } }
  /** The minter of the gateway's own credential for ephemeral upstreams (asked when a read needs it). */
  readonly minter: () => TokenMinter
}

export class ToolGuard {
  readonly #catalogs = new Map<string, Catalog>()
  readonly #findings = new Map<string, readonly Finding[]>()
  readonly #pages = new Map<string, Set<string>>()
  readonly #announced = new Set<string>()
  readonly #decisions = new Map<string, boolean>()
  readonly #deps: GuardDeps
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

  constructor (deps: GuardDeps, config: GatewayConfig, scanner: ToolScanner, pins: PinStore) {
    this.#deps = deps
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
    // A definition the operator accepted despite its findings (a waiver of this very hash): they
    // hold nothing back, and neither does the same text quarantined under another name.
    let waivedFindings: readonly Finding[] | undefined
    if (findings.length > 0 && (await this.#pins.entry(server, tool.name))?.waived?.hash === hash) {
      waivedFindings = findings
      findings = []
    }
    // What was quarantined under one name stays quarantined under another.
    const content = `${server}\n${contentHash(tool)}`
    let twin = waivedFindings === undefined ? this.#quarantinedContent.get(content) : undefined
    if (waivedFindings !== undefined && this.#quarantinedContent.get(content) === tool.name) this.#quarantinedContent.delete(content)
    const held = twin === undefined ? this.#changedContent.get(content) : undefined
    if (held !== undefined && held !== tool.name) {
      // Held for approval under another name: still so only while that definition waits.
      const waiting = (await this.#pins.entries()).get(`${server}/${held}`)?.pending
      if (waiting !== undefined && `${server}\n${contentHash(waiting.definition)}` === content) twin = held
      else this.#changedContent.delete(content)
    }
    const pin = await this.#pins.check(server, tool, hash, newTools)
    let reason = heldBecause(server, tool.name, hash, findings, pin) ?? 'ok'
    if (reason === 'ok' && twin !== undefined && twin !== tool.name) reason = `quarantined: the same definition as quarantined tool ${twin}`
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
      this.#deps.log.warn({ server, tool: tool.name, hash, reason, ...(findings.length > 0 ? { findings } : {}) }, 'tool quarantined')
    }
    return { hash, quarantined: reason !== 'ok', reason, findings, pinGeneration: this.#pins.generation, ...(waiting ? { pending: true } : {}), ...(waivedFindings !== undefined ? { waivedFindings } : {}) }
  }

  /**
   * Every tool held back from agents, for an operator to review: the tools of each upstream's
   * lists whose review is quarantined (made again when a pin changed since it was made), and every
   * definition the pin store holds for approval, seen by this process or not. Sorted by server,
   * then tool. A definition still waiting for the judge's verdict is not listed.
   */
  async quarantined (): Promise<QuarantinedTool[]> {
    const listed: Array<[string, string, CatalogEntry]> = []
    for (const [server, c] of this.#catalogs) {
      for (const name of [...c.tools.keys()]) {
        const entry = await this.#listedNow(server, name)
        if (entry !== undefined) listed.push([server, name, entry])
      }
    }
    // Read after the reviews above, which may have recorded a pending definition.
    const entries = await this.#pins.entries()
    const out: QuarantinedTool[] = []
    const seen = new Set<string>()
    for (const [server, name, entry] of listed) {
      seen.add(`${server}/${name}`)
      const held = this.#held(server, name, entries.get(`${server}/${name}`), entry)
      if (held !== undefined) out.push(held)
    }
    for (const [key, entry] of entries) {
      const slash = key.indexOf('/')
      if (entry.pending === undefined || seen.has(key) || slash < 0) continue
      const held = this.#held(key.slice(0, slash), key.slice(slash + 1), entry, undefined)
      if (held !== undefined) out.push(held)
    }
    const order = (a: string, b: string): number => a < b ? -1 : a > b ? 1 : 0
    return out.sort((a, b) => order(a.server, b.server) || order(a.tool, b.tool))
  }

  /**
   * An operator's decision on a quarantined tool: `hash` (in full, or its first 12 characters at
   * least) must be the definition held now. A pending definition is approved (pinned); a definition
   * the scanner flags is accepted despite its findings (a waiver recorded with `by`); both when both
   * hold it. Refused when something else is held now (the definition changed since it was
   * reviewed), when nothing is, or when what holds it is not lifted by an approval.
   */
  async approveQuarantined (server: string, tool: string, hash: string, by: string): Promise<{ ok: boolean, message: string }> {
    const target = `${server}/${tool}`
    if (!new RegExp(`^[A-Za-z0-9_-]{${MIN_HASH_PREFIX},64}$`).test(hash)) return { ok: false, message: `not approved: name the definition by its hash, in full or by its first ${MIN_HASH_PREFIX} characters at least` }
    if (by.trim() === '') return { ok: false, message: 'not approved: who approves is recorded, and was not given' }
    // The review first: made again, it may record a pending definition.
    const listed = await this.#listedNow(server, tool)
    const entry = await this.#pins.entry(server, tool)
    const held = this.#held(server, tool, entry, listed)
    if (held === undefined) return { ok: false, message: `not approved: nothing is held for ${target}` }
    if (!held.hash.startsWith(hash)) return { ok: false, message: `not approved: the definition held for ${target} is now ${held.hash.slice(0, MIN_HASH_PREFIX)}, not ${hash.slice(0, MIN_HASH_PREFIX)}; it changed since it was reviewed: review it again` }
    if (held.kind === 'other') return { ok: false, message: `not approved: ${target} is held for a reason an approval does not lift (${held.reason})` }
    if (entry?.pending?.hash === held.hash && !await this.#pins.approve(server, tool, held.hash)) {
      return { ok: false, message: `not approved: the definition held for ${target} changed meanwhile; review it again` }
    }
    if (held.findings.length > 0 && !await this.#pins.waive(server, tool, held.hash, by)) {
      return { ok: false, message: `not approved: the definition of ${target} with these findings is neither pinned nor waiting any more; review it again` }
    }
    this.#deps.log.info({ server, tool, hash: held.hash, kind: held.kind, by, ...(held.findings.length > 0 ? { waived: held.findings.map(f => f.rule) } : {}) }, 'quarantined tool approved')
    return { ok: true, message: `approved ${target} (${held.hash.slice(0, MIN_HASH_PREFIX)})${held.findings.length > 0 ? ' despite its findings' : ''}: the next tools/list shows it to the agents the policies allow` }
  }

  /**
   * The tool as this upstream's lists last showed it, its quarantined review made again when a pin
   * changed since (an approval or a waiver may have lifted it). A quarantine that does not come
   * from the pins (a name listed twice, too many tools) has no pin generation and is kept.
   */
  async #listedNow (server: string, name: string): Promise<CatalogEntry | undefined> {
    const c = this.#catalogs.get(server)
    const entry = c?.tools.get(name)
    if (c === undefined || entry === undefined) return undefined
    const review = entry.review
    if (!review.quarantined || review.pinGeneration === undefined || review.pinGeneration === this.#pins.generation) return entry
    const now = { tool: entry.tool, review: await this.review(server, entry.tool) }
    if (c.tools.get(name) === entry) c.tools.set(name, now)
    return now
  }

  /** What holds one tool back, from its pin entry and its last listed review; undefined when nothing does. */
  #held (server: string, name: string, entry: PinEntry | undefined, listed: CatalogEntry | undefined): QuarantinedTool | undefined {
    const pending = entry?.pending
    // A review without a pin generation was not decided by the pins (a name listed twice, too many
    // tools): nothing an operator approves lifts it, whatever waits in the pin store.
    const notByPins = listed?.review.quarantined === true && listed.review.pinGeneration === undefined
    if (pending !== undefined && !notByPins) {
      const hash = pending.hash
      const reviewed = listed?.review.hash === hash && listed.review.pending !== true ? listed.review : undefined
      const findings = reviewed?.findings ?? (entry?.waived?.hash === hash ? [] : this.#scanned(server, pending.definition, hash))
      const pin: PinCheck = entry?.pinned !== undefined ? 'changed' : 'new'
      return {
        server,
        tool: name,
        hash,
        kind: findings.length > 0 ? 'finding' : pin,
        reason: reviewed?.quarantined === true ? reviewed.reason : heldBecause(server, name, hash, findings, pin)!,
        findings,
        definition: pending.definition,
        ...(entry?.pinned !== undefined && entry.pinned.hash !== hash ? { pinned: entry.pinned.definition } : {}),
        seenAt: pending.at
      }
    }
    const review = listed?.review
    if (listed === undefined || review === undefined || !review.quarantined || review.pending === true) return undefined
    const pinned = entry?.pinned
    return {
      server,
      tool: name,
      hash: review.hash,
      kind: review.findings.length > 0 && !notByPins ? 'finding' : 'other',
      reason: review.reason,
      findings: review.findings,
      definition: pinnedPart(listed.tool),
      ...(pinned !== undefined && pinned.hash !== review.hash ? { pinned: pinned.definition } : {}),
      ...(pinned?.hash === review.hash ? { seenAt: pinned.at } : {})
    }
  }

  /** The rules' findings on a definition (cached by server, name and hash, as review() caches them). */
  #scanned (server: string, tool: ToolLike, hash: string): readonly Finding[] {
    const key = `${server}/${tool.name}\n${hash}`
    let findings = this.#findings.get(key)
    if (findings === undefined) {
      if (this.#findings.size >= MAX_DECISIONS) this.#findings.clear()
      findings = this.#scanner.scan(tool, this.#scanContext(server, []))
      this.#findings.set(key, findings)
    }
    return findings
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
      return review !== undefined && !review.quarantined && this.visible(identity, server, targetRequest('tool', t.name), review.hash, scope)
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
      if (findings.length > 0) this.#deps.log.warn({ server, [kind]: typeof item.name === 'string' ? item.name : undefined, hash, findings }, kind === 'instructions' ? 'upstream instructions removed' : `${kind} quarantined`)
    }
    if (kind !== 'instructions') this.#listedKinds.add(`${server}\n${kind}`)
    // Held from then on (until a restart), whatever another list says: a clean definition listed
    // to one caller must not release the poisoned one listed to another.
    if (findings.length > 0 && kind === 'prompt' && typeof item.name === 'string') this.#hold(`${server}\nprompt\n${normalName(item.name)}`)
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
    if (kind === 'prompt') return this.#heldItems.has(`${server}\nprompt\n${normalName(target)}`)
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

  /**
   * A listed tool's review as it stands now: reviewed again only when it may have changed since
   * (a pin changed anywhere, or the judge's verdict was pending); otherwise the review made when it
   * was listed, at no cost on the call's path.
   */
  async currentReview (server: string, entry: CatalogEntry): Promise<ToolReview> {
    const review = entry.review
    if (review.pending === true || (!review.quarantined && review.pinGeneration !== this.#pins.generation)) return await this.review(server, entry.tool)
    return review
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
    // The rules run here, one definition after another, giving the event loop a turn every few
    // milliseconds: a list of many large definitions costs CPU, not a stalled gateway. The
    // reviews below then find each definition's findings cached.
    let slice = performance.now()
    for (const tool of tools) {
      if (typeof tool?.name !== 'string' || !admitted.has(tool.name)) continue
      const key = `${server}/${tool.name}\n${definitionHash(tool)}`
      if (this.#findings.has(key)) continue
      if (this.#findings.size >= MAX_DECISIONS) this.#findings.clear()
      this.#findings.set(key, this.#scanner.scan(tool, ctx))
      if (performance.now() - slice > 10) {
        await new Promise(resolve => setImmediate(resolve))
        slice = performance.now()
      }
    }
    const reviewed = await Promise.all(tools.map(async tool => typeof tool?.name === 'string' ? await this.review(server, tool, ctx, !admitted.has(tool.name), newTools) : undefined))
    for (const [i, tool] of tools.entries()) {
      if (typeof tool?.name !== 'string') continue
      let review = reviewed[i]!
      if ((counts.get(tool.name) ?? 0) > 1) {
        // A clean and a poisoned definition under one name: both are quarantined together.
        // Not a pin's doing: no pin generation, so no later pin change makes it look lifted.
        const { pinGeneration: _made, ...reviewed } = review
        review = { ...reviewed, quarantined: true, reason: 'the upstream listed this name more than once in one list' }
        if (!out.has(tool.name)) this.#deps.log.warn({ server, tool: tool.name }, 'tool quarantined: its name appears more than once in one list')
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
    const cedar = this.#deps.cedar()
    const { localHour, localWeekday } = localTime(new Date(), cedar.engine.timezone)
    return `${JSON.stringify([identity.issuer, identity.agentId, identity.userId, identity.roles, identity.department, identity.scopes, identity.delegated])}\n${cedar.version}\n${localWeekday}:${localHour}\n${server.name}`
  }

  /** Whether Cedar would let this caller call the tool (list-time context), cached per decision scope and tool definition. */
  visible (identity: Identity, server: UpstreamConfig, r: Omit<AuthzRequest, 'identity' | 'server'>, hash = '', scope = this.decisionScope(identity, server)): boolean {
    const cedar = this.#deps.cedar()
    const key = `${scope}\n${r.action}:${r.tool ?? r.uri ?? r.prompt ?? ''}\n${hash}`
    let allowed = this.#decisions.get(key)
    if (allowed === undefined) {
      // A tool whose calls need a person's approval is listed: the agent can ask for one.
      allowed = listable(cedar.authorize({ ...r, identity, server }))
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
        this.#deps.log.warn({ server: server.name, error: (err as Error).message }, 'could not read the upstream\'s tool list')
      }
    })().finally(() => { c.refreshing = undefined })
    await c.refreshing
  }

  #fetchFor (server: UpstreamConfig): typeof fetch | undefined {
    return ownFetch(server, this.#deps.minter)
  }
}
