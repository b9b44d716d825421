/**
 * Tool pinning (rug-pull defence): the first definition of a tool seen (or pinned by the
 * operator) is stored by its canonical hash; a later, different definition is held as
 * "pending" and the tool is quarantined until the operator approves it.
 * The file store is one JSON file, replaced atomically and re-read when it changes, so
 * `mcp-warden tools approve` takes effect in a running gateway.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { canonicalHash } from '../tokens/binding.js'
import type { ToolLike } from './scanner.js'

export interface PinRecord { readonly hash: string, readonly definition: ToolLike, readonly at: string }
export interface PinEntry { readonly pinned: PinRecord, readonly pending?: PinRecord }
export type PinCheck = 'pinned-now' | 'match' | 'changed'

export interface PinStore {
  /** Pins a first-seen tool, matches a pinned one, or records a changed definition as pending. */
  check (server: string, tool: ToolLike, hash?: string): Promise<PinCheck>
  /** Changes whenever a pin changes (caches of pin-dependent results key on it). */
  readonly generation: number
  /** Makes the pending definition the pinned one; false when nothing is pending. */
  approve (server: string, tool: string): Promise<boolean>
  /** Pins a definition, replacing what was pinned. */
  pin (server: string, tool: ToolLike): Promise<void>
  entries (): Promise<ReadonlyMap<string, PinEntry>>
}

/** The definition that is pinned: what the model reads and what the tool accepts. */
export function pinnedPart (tool: ToolLike): ToolLike {
  const { name, title, description, inputSchema, outputSchema, annotations } = tool
  return JSON.parse(JSON.stringify({ name, title, description, inputSchema, outputSchema, annotations })) as ToolLike
}

export function definitionHash (tool: ToolLike): string {
  return canonicalHash(pinnedPart(tool))
}

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

  async check (server: string, tool: ToolLike, knownHash?: string): Promise<PinCheck> {
    this.#load()
    const hash = knownHash ?? definitionHash(tool)
    const known = this.#data.get(`${server}/${tool.name}`)
    if (known !== undefined && known.pinned.hash === hash && known.pending === undefined) return 'match'
    if (this.#pendingSave === undefined) this.#load(true)
    const key = `${server}/${tool.name}`
    const entry = this.#data.get(key)
    const record = { hash, definition: pinnedPart(tool), at: new Date().toISOString() }
    if (entry === undefined) {
      this.#data.set(key, { pinned: record })
      this.#saveSoon()
      return 'pinned-now'
    }
    if (entry.pinned.hash === hash) {
      if (entry.pending !== undefined) { this.#data.set(key, { pinned: entry.pinned }); this.#saveSoon() }
      return 'match'
    }
    if (entry.pending?.hash !== hash) {
      this.#data.set(key, { pinned: entry.pinned, pending: record })
      this.#saveSoon()
    }
    return 'changed'
  }

  async approve (server: string, tool: string): Promise<boolean> {
    this.#load(true)
    const key = `${server}/${tool}`
    const entry = this.#data.get(key)
    if (entry?.pending === undefined) return false
    this.#data.set(key, { pinned: { ...entry.pending, at: new Date().toISOString() } })
    this.#save()
    return true
  }

  async pin (server: string, tool: ToolLike): Promise<void> {
    this.#load(true)
    this.#data.set(`${server}/${tool.name}`, { pinned: { hash: definitionHash(tool), definition: pinnedPart(tool), at: new Date().toISOString() } })
    this.#save()
  }

  async entries (): Promise<ReadonlyMap<string, PinEntry>> {
    this.#load(true)
    return this.#data
  }
}
