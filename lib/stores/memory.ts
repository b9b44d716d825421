import { FilePinStore, type PinStore } from '../tools/pins.js'
import { MemoryApprovalStore } from '../approvals/memory.js'
import type { DecisionFeed, GatewayStore, ReplayStore, SessionStore, TokenCache } from './types.js'
import type { AuditRecord } from '../../plugins/decorations.js'
import { BoundedCache } from '../bounded-cache.js'

interface Entry { server: string, sessionId: string, principal: string, expires: number }

/**
 * The embedded, single-process store. Expired entries are swept once a minute. Sessions are also
 * indexed by server and principal, so counting an agent's sessions (each initialize does) reads
 * that agent's sessions only, however many others are open.
 */
export class MemorySessionStore implements SessionStore {
  readonly #sessions = new Map<string, Entry>()
  readonly #byAgent = new Map<string, Set<Entry>>()
  readonly #timer: NodeJS.Timeout

  constructor (sweepMs = 60_000) {
    this.#timer = setInterval(() => { this.#sweep() }, sweepMs)
    this.#timer.unref()
  }

  #agentKey (server: string, principal: string): string { return `${server}\n${principal}` }

  #delete (e: Entry): void {
    this.#sessions.delete(`${e.server}\n${e.sessionId}`)
    const key = this.#agentKey(e.server, e.principal)
    const set = this.#byAgent.get(key)
    if (set === undefined) return
    set.delete(e)
    if (set.size === 0) this.#byAgent.delete(key)
  }

  #sweep (): void {
    const now = Date.now()
    for (const e of this.#sessions.values()) if (e.expires <= now) this.#delete(e)
  }

  async bind (server: string, sessionId: string, principal: string, ttlSeconds: number): Promise<boolean> {
    const current = this.#sessions.get(`${server}\n${sessionId}`)
    if (current !== undefined) {
      if (current.expires > Date.now() && current.principal !== principal) return false
      this.#delete(current)
    }
    const e: Entry = { server, sessionId, principal, expires: Date.now() + ttlSeconds * 1000 }
    this.#sessions.set(`${server}\n${sessionId}`, e)
    const key = this.#agentKey(server, principal)
    let set = this.#byAgent.get(key)
    if (set === undefined) { set = new Set(); this.#byAgent.set(key, set) }
    set.add(e)
    return true
  }

  async count (server: string, principal: string): Promise<number> {
    const set = this.#byAgent.get(this.#agentKey(server, principal))
    if (set === undefined) return 0
    const now = Date.now()
    let n = 0
    for (const e of set) {
      if (e.expires > now) n++
      else this.#delete(e)
    }
    return n
  }

  async owner (server: string, sessionId: string, ttlSeconds: number): Promise<string | null> {
    const e = this.#sessions.get(`${server}\n${sessionId}`)
    if (e === undefined) return null
    const now = Date.now()
    if (e.expires <= now) { this.#delete(e); return null }
    e.expires = now + ttlSeconds * 1000
    return e.principal
  }

  async unbind (server: string, sessionId: string): Promise<void> {
    const e = this.#sessions.get(`${server}\n${sessionId}`)
    if (e !== undefined) this.#delete(e)
  }

  async close (): Promise<void> {
    clearInterval(this.#timer)
    this.#sessions.clear()
    this.#byAgent.clear()
  }
}

/** Single-process replay cache; expired ids are swept once a minute. */
export class MemoryReplayStore implements ReplayStore {
  readonly #seen = new Map<string, number>()
  readonly #timer: NodeJS.Timeout

  constructor (sweepMs = 60_000) {
    this.#timer = setInterval(() => {
      const now = Date.now() / 1000
      for (const [jti, exp] of this.#seen) if (exp < now) this.#seen.delete(jti)
    }, sweepMs)
    this.#timer.unref()
  }

  async use (jti: string, expiresAt: number): Promise<boolean> {
    const exp = this.#seen.get(jti)
    if (exp !== undefined && exp >= Date.now() / 1000) return false
    this.#seen.set(jti, expiresAt)
    return true
  }

  async close (): Promise<void> {
    clearInterval(this.#timer)
    this.#seen.clear()
  }
}

/** Single-process exchange-token cache. */
export class MemoryTokenCache implements TokenCache {
  readonly #entries = new BoundedCache<string>(10_000)

  async get (key: string): Promise<string | null> { return this.#entries.get(key) ?? null }
  async set (key: string, token: string, until: number): Promise<void> { this.#entries.set(key, token, until) }
}

/** The decision feed of one process: a publish calls every subscriber at once; there is no history. */
export class MemoryDecisionFeed implements DecisionFeed {
  // One entry per subscribe call: the same function subscribed twice is called twice, removed once per removal.
  readonly #subscribers = new Set<{ fn: (record: AuditRecord) => void }>()

  publish (record: AuditRecord): void {
    for (const s of [...this.#subscribers]) {
      try { s.fn(record) } catch { /* a failing subscriber neither stops the others nor the caller */ }
    }
  }

  subscribe (fn: (record: AuditRecord) => void): () => void {
    const entry = { fn }
    this.#subscribers.add(entry)
    return () => { this.#subscribers.delete(entry) }
  }

  async history (_max: number): Promise<AuditRecord[]> { return [] }

  close (): void { this.#subscribers.clear() }
}

/** The embedded default (`store: memory`): one process, pins in the `toolScan.pins` file. */
export class MemoryStore implements GatewayStore {
  readonly kind = 'memory' as const
  readonly sessions = new MemorySessionStore()
  readonly replay = new MemoryReplayStore()
  readonly tokens = new MemoryTokenCache()
  readonly approvals = new MemoryApprovalStore()
  readonly decisions = new MemoryDecisionFeed()
  readonly rateLimitRedis = undefined
  readonly pins: PinStore

  constructor (pinsFile: string) {
    this.pins = new FilePinStore(pinsFile)
  }

  available (): boolean { return true }
  async ready (): Promise<void> {}
  async close (): Promise<void> {
    await this.sessions.close()
    await this.replay.close()
    await this.approvals.close()
    this.decisions.close()
  }
}
