/**
 * Approvals in Redis (`store: redis://…`): every replica serves the approval page and honours an
 * approval. Each approval is a hash (the record as written at request time, its status, and the
 * decision); status changes run as Lua scripts, so an approval is decided once and used once
 * across replicas. Decisions are announced on a channel, so the replica that holds the agent's
 * session stream can tell it.
 */
import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import { StoreUnavailableError } from '../errors.js'
import type { ApprovalEvent, ApprovalRecord, ApprovalStore, ApproverRef, ClientTraits } from './types.js'

// KEYS: binding, approval, pending; ARGV: prefix, id, record, expiresAt (ms), now (ms), binding digest
const CREATE = `
local cur = redis.call('GET', KEYS[1])
if cur then
  local h = ARGV[1] .. 'approval:' .. cur
  local st = redis.call('HMGET', h, 'status', 'expiresAt')
  if (st[1] == 'pending' or st[1] == 'approved') and tonumber(st[2]) > tonumber(ARGV[5]) then return cur end
end
redis.call('HSET', KEYS[2], 'record', ARGV[3], 'status', 'pending', 'expiresAt', ARGV[4], 'binding', ARGV[6])
redis.call('PEXPIREAT', KEYS[2], ARGV[4])
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
return false`

// KEYS: approval, pending; ARGV: prefix, id, status, decision, now, channel, event
const DECIDE = `
local st = redis.call('HMGET', KEYS[1], 'status', 'expiresAt', 'binding')
if st[1] ~= 'pending' or tonumber(st[2]) <= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'decision', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[2])
if ARGV[3] == 'denied' then
  local b = ARGV[1] .. 'approval-binding:' .. st[3]
  if redis.call('GET', b) == ARGV[2] then redis.call('DEL', b) end
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1`

// KEYS: binding; ARGV: prefix, now
const CONSUME = `
local id = redis.call('GET', KEYS[1])
if not id then return false end
local h = ARGV[1] .. 'approval:' .. id
local st = redis.call('HMGET', h, 'status', 'expiresAt')
if st[1] ~= 'approved' or tonumber(st[2]) <= tonumber(ARGV[2]) then return false end
redis.call('HSET', h, 'status', 'consumed')
redis.call('DEL', KEYS[1])
return id`

type Scripted = Redis & {
  mcpwApprovalCreate: (...args: string[]) => Promise<string | null>
  mcpwApprovalDecide: (...args: string[]) => Promise<number>
  mcpwApprovalConsume: (...args: string[]) => Promise<string | null>
}

async function guarded<T> (op: () => Promise<T>): Promise<T> {
  try {
    return await op()
  } catch (err) {
    throw new StoreUnavailableError({ cause: err })
  }
}

const digest = (text: string): string => createHash('sha256').update(text).digest('base64url')

export class RedisApprovalStore implements ApprovalStore {
  readonly #redis: Scripted
  readonly #sub: Redis
  readonly #prefix: string
  readonly #channel: string
  readonly #listeners = new Set<(event: ApprovalEvent) => void>()

  constructor (redis: Redis, prefix = 'mcpw:') {
    redis.defineCommand('mcpwApprovalCreate', { numberOfKeys: 3, lua: CREATE })
    redis.defineCommand('mcpwApprovalDecide', { numberOfKeys: 2, lua: DECIDE })
    redis.defineCommand('mcpwApprovalConsume', { numberOfKeys: 1, lua: CONSUME })
    this.#redis = redis as Scripted
    this.#prefix = prefix
    this.#channel = `${prefix}approvals:decided`
    this.#sub = redis.duplicate({ enableOfflineQueue: true })
    this.#sub.on('error', () => { /* reported by the main connection */ })
    this.#sub.on('message', (_channel: string, message: string) => {
      let event: ApprovalEvent
      try { event = JSON.parse(message) as ApprovalEvent } catch { return }
      for (const l of this.#listeners) l(event)
    })
    void this.#sub.subscribe(this.#channel).catch(() => {})
  }

  #key (id: string): string { return `${this.#prefix}approval:${id}` }
  #bindingKey (binding: string): string { return `${this.#prefix}approval-binding:${binding}` }
  get #pendingKey (): string { return `${this.#prefix}approvals:pending` }

  async #read (id: string): Promise<ApprovalRecord | null> {
    const h = await guarded(async () => await this.#redis.hgetall(this.#key(id)))
    if (h.record === undefined || h.status === undefined) return null
    const record = JSON.parse(h.record) as ApprovalRecord
    if (record.expiresAt <= Date.now()) return null
    const decision = h.decision !== undefined ? JSON.parse(h.decision) as { approver: ApproverRef, reason: string | null, decidedAt: number } : undefined
    return { ...record, status: h.status as ApprovalRecord['status'], ...(decision !== undefined ? decision : {}) }
  }

  async create (record: ApprovalRecord): Promise<{ record: ApprovalRecord, created: boolean }> {
    const existing = await guarded(async () => await this.#redis.mcpwApprovalCreate(
      this.#bindingKey(record.binding), this.#key(record.id), this.#pendingKey,
      this.#prefix, record.id, JSON.stringify(record), String(record.expiresAt), String(Date.now()), record.binding))
    if (existing === null) return { record, created: true }
    const found = await this.#read(existing)
    // It expired between the two reads: ask again.
    return found !== null ? { record: found, created: false } : await this.create(record)
  }

  async byBinding (binding: string): Promise<ApprovalRecord | null> {
    const id = await guarded(async () => await this.#redis.get(this.#bindingKey(binding)))
    if (id === null) return null
    const r = await this.#read(id)
    return r !== null && (r.status === 'pending' || r.status === 'approved') ? r : null
  }

  async get (id: string): Promise<ApprovalRecord | null> {
    return await this.#read(id)
  }

  async decide (id: string, status: 'approved' | 'denied', approver: ApproverRef, reason: string | null, now = Date.now()): Promise<ApprovalRecord | null> {
    const current = await this.#read(id)
    if (current === null) return null
    const event: ApprovalEvent = { id, status, server: current.server, sessionId: current.sessionId }
    const ok = await guarded(async () => await this.#redis.mcpwApprovalDecide(this.#key(id), this.#pendingKey,
      this.#prefix, id, status, JSON.stringify({ approver, reason, decidedAt: now }), String(now), this.#channel, JSON.stringify(event)))
    return ok === 1 ? { ...current, status, approver, reason, decidedAt: now } : null
  }

  async consume (binding: string, now = Date.now()): Promise<ApprovalRecord | null> {
    const id = await guarded(async () => await this.#redis.mcpwApprovalConsume(this.#bindingKey(binding), this.#prefix, String(now)))
    if (id === null) return null
    return await this.#read(id)
  }

  async pending (limit = 500): Promise<ApprovalRecord[]> {
    const ids = await guarded(async () => await this.#redis.zrange(this.#pendingKey, 0, limit * 2))
    const out: ApprovalRecord[] = []
    const gone: string[] = []
    for (const id of ids) {
      const r = await this.#read(id)
      if (r === null) gone.push(id)
      else if (r.status === 'pending') out.push(r)
      if (out.length >= limit) break
    }
    if (gone.length > 0) await guarded(async () => await this.#redis.zrem(this.#pendingKey, ...gone))
    return out
  }

  async countRequest (key: string, windowMs: number): Promise<number> {
    const k = `${this.#prefix}approval-requests:${digest(key)}`
    const [[, n]] = await guarded(async () => await this.#redis.multi().incr(k).pexpire(k, windowMs, 'NX').exec()) as [[unknown, number]]
    return n
  }

  async rememberClient (server: string, sessionId: string, client: ClientTraits, ttlSeconds: number): Promise<void> {
    await guarded(async () => await this.#redis.set(`${this.#prefix}client:${server}:${digest(sessionId)}`, JSON.stringify(client), 'EX', ttlSeconds))
  }

  async client (server: string, sessionId: string): Promise<ClientTraits | null> {
    const raw = await guarded(async () => await this.#redis.get(`${this.#prefix}client:${server}:${digest(sessionId)}`))
    return raw === null ? null : JSON.parse(raw) as ClientTraits
  }

  async revokeSession (nonce: string, until: number): Promise<void> {
    await guarded(async () => await this.#redis.set(`${this.#prefix}approver-signed-out:${digest(nonce)}`, '1', 'PXAT', Math.max(until, Date.now() + 1)))
  }

  async sessionRevoked (nonce: string): Promise<boolean> {
    return await guarded(async () => await this.#redis.exists(`${this.#prefix}approver-signed-out:${digest(nonce)}`)) === 1
  }

  onDecided (listener: (event: ApprovalEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  async close (): Promise<void> {
    this.#listeners.clear()
    this.#sub.disconnect()
  }
}
