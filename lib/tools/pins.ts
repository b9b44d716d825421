/**
 * Tool pinning (rug-pull defence): the first definition of a tool seen (or pinned by the
 * operator) is stored by its canonical hash; a later, different definition is held as
 * "pending" and the tool is quarantined until the operator approves it (or pins a definition),
 * whichever definition the upstream serves meanwhile. With
 * `toolScan.newTools: quarantine`, a name that appears after an upstream's first tools were
 * pinned is held as pending too (an entry with no pinned definition yet).
 * A definition the scanner flags can be accepted all the same: a waiver records that one
 * definition hash was accepted despite its findings, by whom and when. It covers that hash only:
 * any other definition of the tool is scanned and decided anew.
 * The file store is one JSON file, replaced atomically and re-read when it changes, so
 * `mcp-warden tools approve` takes effect in a running gateway.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { canonicalHash } from '../tokens/binding.js'
import type { ToolLike } from './scanner.js'

export interface PinRecord { readonly hash: string, readonly definition: ToolLike, readonly at: string }
/** A definition accepted despite the scanner's findings: its full hash, who accepted it and when. */
export interface Waiver { readonly hash: string, readonly by: string, readonly at: string }
export interface PinEntry { readonly pinned?: PinRecord, readonly pending?: PinRecord, readonly waived?: Waiver }
/** `new`: a name first seen after the upstream's first pins, held for approval (newTools: quarantine). */
export type PinCheck = 'pinned-now' | 'match' | 'changed' | 'new'
export type NewTools = 'review' | 'quarantine'

export interface PinStore {
  /**
   * Pins a first-seen tool, matches a pinned one, or records a changed definition as pending.
   * With `newTools: quarantine` a first-seen name is held as pending instead (the caller passes
   * `review` for the tools of an upstream's first list).
   */
  check (server: string, tool: ToolLike, hash?: string, newTools?: NewTools): Promise<PinCheck>
  /** Changes whenever a pin changes (caches of pin-dependent results key on it). */
  readonly generation: number
  /**
   * Makes the pending definition the pinned one; false when nothing is pending, or when
   * `hash` is given and the pending definition's hash does not start with it.
   */
  approve (server: string, tool: string, hash?: string): Promise<boolean>
  /**
   * Accepts one definition despite the scanner's findings: `hash` (in full) must be the pinned or
   * the pending definition's. It replaces the tool's earlier waiver, and covers only that hash.
   * False when the hash is neither.
   */
  waive (server: string, tool: string, hash: string, by: string): Promise<boolean>
  /** Pins a definition, replacing what was pinned (a waiver stays, for the hash it names). */
  pin (server: string, tool: ToolLike): Promise<void>
  entries (): Promise<ReadonlyMap<string, PinEntry>>
  /** One tool's entry, as `entries()` has it. */
  entry (server: string, tool: string): Promise<PinEntry | undefined>
  /** Whether any tool of this upstream is pinned (its first list has been seen). */
  hasPins (server: string): Promise<boolean>
}

/**
 * The definition that is pinned: the whole tool as the upstream listed it — name, title,
 * description, schemas, annotations, and every other field (`_meta`, `icons`, extensions). All of
 * it is forwarded to the agent, so all of it is scanned, hashed and pinned: a change anywhere is a
 * change.
 */
export function pinnedPart (tool: ToolLike): ToolLike {
  return JSON.parse(JSON.stringify(tool)) as ToolLike
}

export function definitionHash (tool: ToolLike): string {
  return canonicalHash(pinnedPart(tool))
}

/** The hash of a definition without its name: the same text under another name has the same one. */
export function contentHash (tool: ToolLike): string {
  const { name: _name, ...rest } = pinnedPart(tool)
  return canonicalHash(rest)
}

/** What of an entry outlives a change of its pinned or pending definition: the waiver. */
const kept = (entry: PinEntry | undefined): { waived?: Waiver } => entry?.waived !== undefined ? { waived: entry.waived } : {}

export class FilePinStore implements PinStore {
  readonly #file: string
  #data = new Map<string, PinEntry>()
  #stamp = ''
  #checkedAt = 0
  #generation = 0

  get generation (): number { this.#load(); return this.#generation }

  constructor (file: string) {
    this.#file = file
    this.#load()
  }

  /** Re-reads the file when it changed (looked at most once a second, and always before a write). */
  #load (force = false): void {
    // Changes not written yet are never read over: a forced read writes them first, another waits.
    if (this.#pendingSave !== undefined) {
      if (!force) return
      this.#save()
    }
    const now = Date.now()
    if (!force && now - this.#checkedAt < 1000) return
    this.#checkedAt = now
    if (!existsSync(this.#file)) { this.#data = new Map(); this.#stamp = 'none'; return }
    const st = statSync(this.#file)
    const stamp = `${st.ino}:${st.mtimeMs}:${st.size}`
    if (stamp === this.#stamp) return
    const raw = JSON.parse(readFileSync(this.#file, 'utf8')) as Record<string, PinEntry>
    this.#data = new Map(Object.entries(raw))
    this.#stamp = stamp
    this.#generation++
  }

  #pendingSave: NodeJS.Immediate | undefined

  /** Coalesces the writes of one burst (a first list of many tools) into one. */
  #saveSoon (): void {
    this.#pendingSave ??= setImmediate(() => { this.#pendingSave = undefined; this.#save() })
  }

  #save (): void {
    if (this.#pendingSave !== undefined) { clearImmediate(this.#pendingSave); this.#pendingSave = undefined }
    mkdirSync(dirname(this.#file), { recursive: true })
    const tmp = `${this.#file}.${process.pid}.tmp`
    writeFileSync(tmp, JSON.stringify(Object.fromEntries([...this.#data].sort(([a], [b]) => a.localeCompare(b))), null, 2) + '\n')
    renameSync(tmp, this.#file)
    this.#generation++
    const st = statSync(this.#file)
    this.#stamp = `${st.ino}:${st.mtimeMs}:${st.size}`
  }

  async check (server: string, tool: ToolLike, knownHash?: string, newTools: NewTools = 'review'): Promise<PinCheck> {
    this.#load()
    const hash = knownHash ?? definitionHash(tool)
    const known = this.#data.get(`${server}/${tool.name}`)
    if (known?.pinned !== undefined && known.pinned.hash === hash && known.pending === undefined) return 'match'
    if (this.#pendingSave === undefined) this.#load(true)
    const key = `${server}/${tool.name}`
    const entry = this.#data.get(key)
    const record = { hash, definition: pinnedPart(tool), at: new Date().toISOString() }
    if (entry?.pinned === undefined) {
      if (newTools === 'quarantine') {
        if (entry?.pending?.hash !== hash) { this.#data.set(key, { pending: record, ...kept(entry) }); this.#saveSoon() }
        return 'new'
      }
      this.#data.set(key, { pinned: record, ...kept(entry) })
      this.#saveSoon()
      return 'pinned-now'
    }
    // The pinned definition served again while a change waits: the change still waits (an
    // upstream that alternates definitions must not wipe what the operator has to decide), and
    // the tool stays held until it is approved or the pinned one is pinned again.
    if (entry.pinned.hash === hash) return entry.pending !== undefined ? 'changed' : 'match'
    if (entry.pending?.hash !== hash) {
      this.#data.set(key, { pinned: entry.pinned, pending: record, ...kept(entry) })
      this.#saveSoon()
    }
    return 'changed'
  }

  async hasPins (server: string): Promise<boolean> {
    this.#load()
    return this.#anyPinned(server)
  }

  #anyPinned (server: string): boolean {
    const prefix = `${server}/`
    for (const [k, e] of this.#data) if (e.pinned !== undefined && k.startsWith(prefix)) return true
    return false
  }

  async approve (server: string, tool: string, hash?: string): Promise<boolean> {
    this.#load(true)
    const key = `${server}/${tool}`
    const entry = this.#data.get(key)
    if (entry?.pending === undefined) return false
    if (hash !== undefined && !entry.pending.hash.startsWith(hash)) return false
    this.#data.set(key, { pinned: { ...entry.pending, at: new Date().toISOString() }, ...kept(entry) })
    this.#save()
    return true
  }

  async waive (server: string, tool: string, hash: string, by: string): Promise<boolean> {
    this.#load(true)
    const key = `${server}/${tool}`
    const entry = this.#data.get(key)
    if (entry === undefined || (entry.pinned?.hash !== hash && entry.pending?.hash !== hash)) return false
    this.#data.set(key, { ...entry, waived: { hash, by, at: new Date().toISOString() } })
    this.#save()
    return true
  }

  async pin (server: string, tool: ToolLike): Promise<void> {
    this.#load(true)
    const key = `${server}/${tool.name}`
    this.#data.set(key, { pinned: { hash: definitionHash(tool), definition: pinnedPart(tool), at: new Date().toISOString() }, ...kept(this.#data.get(key)) })
    this.#save()
  }

  async entries (): Promise<ReadonlyMap<string, PinEntry>> {
    this.#load(true)
    return this.#data
  }

  async entry (server: string, tool: string): Promise<PinEntry | undefined> {
    this.#load()
    return this.#data.get(`${server}/${tool}`)
  }
}
