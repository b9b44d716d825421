/** Approvals in memory (`store: memory`): one process. */
import { BoundedCache } from '../bounded-cache.js'
import type { ApprovalEvent, ApprovalRecord, ApprovalStore, ApproverRef, ClientTraits } from './types.js'

const MAX_APPROVALS = 100_000

export class MemoryApprovalStore implements ApprovalStore {
  readonly #byId = new Map<string, ApprovalRecord>()
  readonly #byBinding = new Map<string, string>()
  readonly #counters = new Map<string, { n: number, until: number }>()
  readonly #listeners = new Set<(event: ApprovalEvent) => void>()
  readonly #clients = new BoundedCache<ClientTraits>(100_000)
  readonly #revoked = new BoundedCache<true>(100_000)

  #sweep (now: number): void {
    for (const [id, r] of this.#byId) {
      if (r.expiresAt > now) break // insertion order is expiry order for one TTL; good enough to bound memory
      this.#drop(r)
      this.#byId.delete(id)
    }
    for (const [k, c] of this.#counters) if (c.until <= now) this.#counters.delete(k)
  }

  #drop (r: ApprovalRecord): void {
    if (this.#byBinding.get(r.binding) === r.id) this.#byBinding.delete(r.binding)
  }

  #live (id: string | undefined, now: number): ApprovalRecord | null {
    if (id === undefined) return null
    const r = this.#byId.get(id)
    return r !== undefined && r.expiresAt > now ? r : null
  }

  async create (record: ApprovalRecord): Promise<{ record: ApprovalRecord, created: boolean }> {
    const now = Date.now()
    this.#sweep(now)
    const existing = this.#live(this.#byBinding.get(record.binding), now)
    if (existing !== null && (existing.status === 'pending' || existing.status === 'approved')) return { record: existing, created: false }
    if (this.#byId.size >= MAX_APPROVALS) throw new Error(`more than ${MAX_APPROVALS} approvals are kept; try again later`)
    this.#byId.set(record.id, record)
    this.#byBinding.set(record.binding, record.id)
    return { record, created: true }
  }

  async byBinding (binding: string): Promise<ApprovalRecord | null> {
    const r = this.#live(this.#byBinding.get(binding), Date.now())
    return r !== null && (r.status === 'pending' || r.status === 'approved') ? r : null
  }

  async get (id: string): Promise<ApprovalRecord | null> {
    return this.#live(id, Date.now())
  }

  async decide (id: string, status: 'approved' | 'denied', approver: ApproverRef, reason: string | null, now = Date.now()): Promise<ApprovalRecord | null> {
    const r = this.#live(id, now)
    if (r === null || r.status !== 'pending') return null
    const next: ApprovalRecord = { ...r, status, approver, reason, decidedAt: now }
    this.#byId.set(id, next)
    if (status === 'denied') this.#drop(next)
    const event: ApprovalEvent = { id, status, server: r.server, sessionId: r.sessionId }
    for (const l of this.#listeners) l(event)
    return next
  }

  async consume (binding: string, now = Date.now()): Promise<ApprovalRecord | null> {
    const r = this.#live(this.#byBinding.get(binding), now)
    if (r === null || r.status !== 'approved') return null
    const next: ApprovalRecord = { ...r, status: 'consumed' }
    this.#byId.set(r.id, next)
    this.#drop(next)
    return next
  }

  async pending (limit = 500): Promise<ApprovalRecord[]> {
    const now = Date.now()
    const out: ApprovalRecord[] = []
    for (const r of this.#byId.values()) {
      if (r.status === 'pending' && r.expiresAt > now) out.push(r)
      if (out.length >= limit) break
    }
    return out.sort((a, b) => a.requestedAt - b.requestedAt)
  }

  async countRequest (key: string, windowMs: number): Promise<number> {
    const now = Date.now()
    let c = this.#counters.get(key)
    if (c === undefined || c.until <= now) {
      c = { n: 0, until: now + windowMs }
      this.#counters.set(key, c)
    }
    return ++c.n
  }

  async rememberClient (server: string, sessionId: string, client: ClientTraits, ttlSeconds: number): Promise<void> {
    this.#clients.set(`${server}\n${sessionId}`, client, Date.now() + ttlSeconds * 1000)
  }

  async client (server: string, sessionId: string): Promise<ClientTraits | null> {
    return this.#clients.get(`${server}\n${sessionId}`) ?? null
  }

  async revokeSession (nonce: string, until: number): Promise<void> {
    this.#revoked.set(nonce, true, until)
  }

  async sessionRevoked (nonce: string): Promise<boolean> {
    return this.#revoked.get(nonce) === true
  }

  onDecided (listener: (event: ApprovalEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  async close (): Promise<void> { this.#listeners.clear() }
}
