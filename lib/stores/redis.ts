/**
 * The Redis store (`store: redis://…`): what several gateway replicas share.
 *
 * - session → principal bindings, with the session TTL, removed on DELETE;
 * - the `jti` replay cache (SET NX until the token's `exp`);
 * - the exchange-token cache (keys are hashes: no principal or scope in clear);
 * - tool pins (four hashes, changed by Lua scripts so that two replicas that see the same
 *   tool change at once agree; changes are announced on a channel, and every replica keeps
 *   a local copy for the common "definition matches its pin" case), and the waivers of
 *   definitions accepted despite the scanner's findings (a fifth hash, written the same way);
 * - rate-limit counters (@fastify/rate-limit's own Redis store, on the same connection);
 * - the decision feed: audit records of every replica in a capped stream, for the console.
 *
 * Fail closed: commands are never queued while Redis is unreachable. Every operation then
 * throws StoreUnavailableError (503) at once, `available()` is false, and the client keeps
 * reconnecting in the background; the gateway serves again as soon as Redis is back.
 */
import { createHash } from 'node:crypto'
import { Redis, type RedisOptions } from 'ioredis'
import { StoreUnavailableError } from '../errors.js'
import { definitionHash, pinnedPart, type NewTools, type PinCheck, type PinEntry, type PinRecord, type PinStore, type Waiver } from '../tools/pins.js'
import type { ToolLike } from '../tools/scanner.js'
import type { DecisionFeed, GatewayStore, ReplayStore, SessionStore, TokenCache } from './types.js'
import type { AuditRecord } from '../../plugins/decorations.js'
import { RedisApprovalStore } from '../approvals/redis.js'

// KEYS: session, the principal's session set; ARGV: principal, ttl, session digest, expiry (ms)
const BIND = `
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1`

// KEYS: ph pr qh qr gen; ARGV: field hash record channel
const PIN_CHECK = `
local pinned = redis.call('HGET', KEYS[1], ARGV[1])
if not pinned then
  if ARGV[5] == 'quarantine' then
    if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
      redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
      redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
      redis.call('INCR', KEYS[5]); redis.call('PUBLISH', ARGV[4], ARGV[1])
    end
    return 'new'
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('SADD', KEYS[6], ARGV[6])
  redis.call('INCR', KEYS[5]); redis.call('PUBLISH', ARGV[4], ARGV[1])
  return 'pinned-now'
end
local pending = redis.call('HGET', KEYS[3], ARGV[1])
if pinned == ARGV[2] then
  if pending then return 'changed' end
  return 'match'
end
if pending ~= ARGV[2] then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
  redis.call('INCR', KEYS[5]); redis.call('PUBLISH', ARGV[4], ARGV[1])
end
return 'changed'`

// KEYS: ph pr qh qr gen; ARGV: field expectedPendingHash record channel
const PIN_APPROVE = `
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[1]); redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[5])
redis.call('INCR', KEYS[5]); redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1`

// KEYS: ph qh gen waived; ARGV: field hash waiver channel
const PIN_WAIVE = `
local pinned = redis.call('HGET', KEYS[1], ARGV[1])
local pending = redis.call('HGET', KEYS[2], ARGV[1])
if pinned ~= ARGV[2] and pending ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('INCR', KEYS[3]); redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1`

type Scripted = Redis & {
  mcpwBind: (key: string, set: string, principal: string, ttl: number, member: string, expiresAtMs: number) => Promise<number>
  mcpwPinCheck: (...args: string[]) => Promise<PinCheck>
  mcpwPinApprove: (...args: string[]) => Promise<number>
  mcpwPinWaive: (...args: string[]) => Promise<number>
}

function digest (text: string): string {
  return createHash('sha256').update(text).digest('base64url')
}

/** Runs a Redis operation; any failure is the store being unavailable (fail closed). */
async function guarded<T> (op: () => Promise<T>): Promise<T> {
  try {
    return await op()
  } catch (err) {
    throw new StoreUnavailableError({ cause: err })
  }
}

export interface RedisStoreOptions {
  /** Key prefix (default `mcpw:`): several gateways can share one Redis with different prefixes. */
  prefix?: string
  /** Longest wait for one command (default 2000 ms). */
  commandTimeoutMs?: number
}

class RedisSessions implements SessionStore {
  constructor (private readonly redis: Scripted, private readonly prefix: string) {}
  #key (server: string, sessionId: string): string { return `${this.prefix}session:${server}:${digest(sessionId)}` }

  #set (server: string, principal: string): string { return `${this.prefix}agent-sessions:${server}:${digest(principal)}` }

  async bind (server: string, sessionId: string, principal: string, ttlSeconds: number): Promise<boolean> {
    return await guarded(async () => await this.redis.mcpwBind(this.#key(server, sessionId), this.#set(server, principal), principal, ttlSeconds, digest(sessionId), Date.now() + ttlSeconds * 1000) === 1)
  }

  async count (server: string, principal: string): Promise<number> {
    const set = this.#set(server, principal)
    return await guarded(async () => {
      await this.redis.zremrangebyscore(set, '-inf', Date.now())
      return await this.redis.zcard(set)
    })
  }

  async owner (server: string, sessionId: string, ttlSeconds: number): Promise<string | null> {
    return await guarded(async () => await this.redis.call('GETEX', this.#key(server, sessionId), 'EX', ttlSeconds) as string | null)
  }

  async unbind (server: string, sessionId: string): Promise<void> {
    await guarded(async () => {
      const key = this.#key(server, sessionId)
      const principal = await this.redis.get(key)
      await this.redis.del(key)
      if (principal !== null) await this.redis.zrem(this.#set(server, principal), digest(sessionId))
    })
  }

  async close (): Promise<void> {}
}

/** The jti replay cache in Redis: shared by every replica of a gateway (or of an upstream using `mcp-warden/upstream`). */
export class RedisReplayStore implements ReplayStore {
  constructor (private readonly redis: Redis, private readonly prefix = 'mcpw:') {}

  async use (jti: string, expiresAt: number): Promise<boolean> {
    const at = Math.max(Math.ceil(expiresAt), Math.floor(Date.now() / 1000) + 1)
    return await guarded(async () => await this.redis.set(`${this.prefix}jti:${digest(jti)}`, '1', 'EXAT', at, 'NX') === 'OK')
  }

  async close (): Promise<void> {}
}

class RedisTokens implements TokenCache {
  constructor (private readonly redis: Redis, private readonly prefix: string) {}

  async get (key: string): Promise<string | null> {
    return await guarded(async () => await this.redis.get(`${this.prefix}xtoken:${digest(key)}`))
  }

  async set (key: string, token: string, until: number): Promise<void> {
    const ms = Math.floor(until - Date.now())
    if (ms <= 0) return
    await guarded(async () => await this.redis.set(`${this.prefix}xtoken:${digest(key)}`, token, 'PX', ms))
  }
}

/** A pin entry from its stored records (JSON), any of which may be missing. */
function pinEntry (pinned: string | undefined, pending: string | undefined, waived: string | undefined): PinEntry {
  return {
    ...(pinned !== undefined ? { pinned: JSON.parse(pinned) as PinRecord } : {}),
    ...(pending !== undefined ? { pending: JSON.parse(pending) as PinRecord } : {}),
    ...(waived !== undefined ? { waived: JSON.parse(waived) as Waiver } : {})
  }
}

/** Tool pins in Redis, mirrored locally and refreshed when any replica changes one. */
export class RedisPinStore implements PinStore {
  readonly #redis: Scripted
  readonly #sub: Redis
  readonly #keys: string[]
  /** Waivers: field → the JSON of a Waiver (kept apart from #keys, which the pin scripts take whole). */
  readonly #waived: string
  readonly #channel: string
  #mirror = new Map<string, { hash: string, pending: boolean }>()
  #generation = 0

  constructor (redis: Redis, prefix: string) {
    this.#redis = redis as Scripted
    this.#keys = ['pins:hash', 'pins:record', 'pins:pending-hash', 'pins:pending-record', 'pins:generation', 'pins:servers'].map(k => prefix + k)
    this.#waived = `${prefix}pins:waived`
    this.#channel = `${prefix}pins:changed`
    this.#sub = redis.duplicate({ enableOfflineQueue: true })
    this.#sub.on('error', () => { /* reported by the main connection */ })
    this.#sub.on('ready', () => { void this.#reload() })
    this.#sub.on('message', () => { void this.#reload() })
    void this.#sub.subscribe(this.#channel).catch(() => {})
  }

  get generation (): number { return this.#generation }

  async #reload (): Promise<void> {
    try {
      const [pinned, pending] = await Promise.all([this.#redis.hgetall(this.#keys[0]!), this.#redis.hgetall(this.#keys[2]!)])
      const next = new Map<string, { hash: string, pending: boolean }>()
      for (const [k, hash] of Object.entries(pinned)) next.set(k, { hash, pending: pending[k] !== undefined })
      this.#mirror = next
      this.#generation++
    } catch { /* Redis is down: requests are refused until it is back, then this runs again */ }
  }

  async check (server: string, tool: ToolLike, knownHash?: string, newTools: NewTools = 'review'): Promise<PinCheck> {
    const hash = knownHash ?? definitionHash(tool)
    const field = `${server}/${tool.name}`
    const known = this.#mirror.get(field)
    if (known !== undefined && known.hash === hash && !known.pending) return 'match'
    const record: PinRecord = { hash, definition: pinnedPart(tool), at: new Date().toISOString() }
    const result = await guarded(async () => await this.#redis.mcpwPinCheck(...this.#keys, field, hash, JSON.stringify(record), this.#channel, newTools, server))
    if (result === 'pinned-now' || result === 'match') this.#mirror.set(field, { hash, pending: false })
    else this.#mirror.set(field, { hash: known?.hash ?? '', pending: true })
    if (result !== 'match' || known?.pending === true) this.#generation++
    return result
  }

  async approve (server: string, tool: string, expected?: string): Promise<boolean> {
    const field = `${server}/${tool}`
    const [hash, raw] = await guarded(async () => await Promise.all([this.#redis.hget(this.#keys[2]!, field), this.#redis.hget(this.#keys[3]!, field)]))
    if (hash === null || raw === null) return false
    if (expected !== undefined && !hash.startsWith(expected)) return false
    const record = { ...JSON.parse(raw) as PinRecord, at: new Date().toISOString() }
    const ok = await guarded(async () => await this.#redis.mcpwPinApprove(...this.#keys, field, hash, JSON.stringify(record), this.#channel, server))
    if (ok === 1) { this.#mirror.set(field, { hash, pending: false }); this.#generation++ }
    return ok === 1
  }

  async waive (server: string, tool: string, hash: string, by: string): Promise<boolean> {
    const field = `${server}/${tool}`
    const waiver: Waiver = { hash, by, at: new Date().toISOString() }
    const ok = await guarded(async () => await this.#redis.mcpwPinWaive(this.#keys[0]!, this.#keys[2]!, this.#keys[4]!, this.#waived, field, hash, JSON.stringify(waiver), this.#channel))
    if (ok === 1) this.#generation++
    return ok === 1
  }

  async pin (server: string, tool: ToolLike): Promise<void> {
    const field = `${server}/${tool.name}`
    const hash = definitionHash(tool)
    const record: PinRecord = { hash, definition: pinnedPart(tool), at: new Date().toISOString() }
    const [ph, pr, qh, qr, gen, servers] = this.#keys as [string, string, string, string, string, string]
    await guarded(async () => await this.#redis.multi()
      .hset(ph, field, hash).hset(pr, field, JSON.stringify(record)).hdel(qh, field).hdel(qr, field).sadd(servers, server).incr(gen)
      .publish(this.#channel, field).exec())
    this.#mirror.set(field, { hash, pending: false })
    this.#generation++
  }

  async hasPins (server: string): Promise<boolean> {
    return await guarded(async () => await this.#redis.sismember(this.#keys[5]!, server)) === 1
  }

  async entries (): Promise<ReadonlyMap<string, PinEntry>> {
    const [pinned, pending, waived] = await guarded(async () => await Promise.all([this.#redis.hgetall(this.#keys[1]!), this.#redis.hgetall(this.#keys[3]!), this.#redis.hgetall(this.#waived)]))
    const out = new Map<string, PinEntry>()
    for (const field of [...new Set([...Object.keys(pinned), ...Object.keys(pending)])].sort()) {
      out.set(field, pinEntry(pinned[field], pending[field], waived[field]))
    }
    return out
  }

  async entry (server: string, tool: string): Promise<PinEntry | undefined> {
    const field = `${server}/${tool}`
    // One transaction: the three records as they stood together (an approval moves pending to pinned).
    const replies = await guarded(async () => await this.#redis.multi().hget(this.#keys[1]!, field).hget(this.#keys[3]!, field).hget(this.#waived, field).exec())
    const [pinned, pending, waived] = (replies ?? []).map(([err, value]) => {
      if (err !== null) throw new StoreUnavailableError({ cause: err })
      return typeof value === 'string' ? value : undefined
    })
    if (pinned === undefined && pending === undefined) return undefined
    return pinEntry(pinned, pending, waived)
  }

  async close (): Promise<void> {
    this.#sub.disconnect()
  }
}

/** Entries the decision stream keeps, about (MAXLEN ~: trimmed a whole node at a time). */
const DECISIONS_MAXLEN = 100_000
/** How long one XREAD of the decision reader waits for new entries. */
const DECISIONS_BLOCK_MS = 2000

/** The audit record of a stream entry (its field `r`), or null when the entry holds none. */
function decisionOf (fields: string[]): AuditRecord | null {
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] !== 'r') continue
    try {
      const value: unknown = JSON.parse(fields[i + 1]!)
      return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as AuditRecord : null
    } catch {
      return null
    }
  }
  return null
}

/**
 * The decision feed in a Redis stream (`<prefix>decisions`, capped at about 100 000 entries): a
 * publish is one XADD, not waited for, whose failure is dropped (the audit file is the record of
 * truth). The first subscribe starts a reader on a connection of its own that blocks in XREAD,
 * from the stream's last entry at that moment, and hands every new entry to every subscriber of
 * this replica (a record published here comes back through the stream like any other). close()
 * ends that connection, so a blocked read never holds up shutdown.
 */
export class RedisDecisionFeed implements DecisionFeed {
  readonly #redis: Redis
  readonly #key: string
  readonly #subscribers = new Set<{ fn: (record: AuditRecord) => void }>()
  #reader: Redis | undefined
  #closed = false

  constructor (redis: Redis, prefix: string) {
    this.#redis = redis
    this.#key = `${prefix}decisions`
  }

  publish (record: AuditRecord): void {
    if (this.#closed) return
    try {
      this.#redis.xadd(this.#key, 'MAXLEN', '~', DECISIONS_MAXLEN, '*', 'r', JSON.stringify(record)).catch(() => {})
    } catch { /* a record that does not serialise is not published */ }
  }

  subscribe (fn: (record: AuditRecord) => void): () => void {
    const entry = { fn }
    this.#subscribers.add(entry)
    if (this.#reader === undefined && !this.#closed) this.#startReader()
    return () => { this.#subscribers.delete(entry) }
  }

  async history (max: number): Promise<AuditRecord[]> {
    const count = Math.floor(max)
    if (!(count > 0)) return []
    const entries = await guarded(async () => await this.#redis.xrevrange(this.#key, '+', '-', 'COUNT', count))
    const out: AuditRecord[] = []
    for (let i = entries.length - 1; i >= 0; i--) {
      const record = decisionOf(entries[i]![1])
      if (record !== null) out.push(record)
    }
    return out
  }

  #startReader (): void {
    // The stream's last id is asked for now, on the main connection: a history() called after
    // subscribe() is answered after it, so nothing falls between the two. Without an answer (the
    // main connection is down) the reader asks on its own connection once that is up.
    const start = this.#redis.xrevrange(this.#key, '+', '-', 'COUNT', 1)
      .then(last => last[0]?.[0] ?? '0-0', () => undefined)
    // Its own connection: XREAD BLOCK holds the connection it runs on. Commands wait while it
    // reconnects, and wait longer than one blocked read.
    const reader = this.#redis.duplicate({ enableOfflineQueue: true, commandTimeout: DECISIONS_BLOCK_MS + 5000 })
    reader.on('error', () => { /* reported by the main connection */ })
    this.#reader = reader
    void this.#read(reader, start)
  }

  async #read (reader: Redis, start: Promise<string | undefined>): Promise<void> {
    let last = await start
    while (!this.#closed) {
      try {
        last ??= (await reader.xrevrange(this.#key, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0'
        const streams = await reader.xread('BLOCK', DECISIONS_BLOCK_MS, 'STREAMS', this.#key, last)
        for (const [, entries] of streams ?? []) {
          for (const [id, fields] of entries) {
            last = id
            const record = decisionOf(fields)
            if (record !== null) this.#deliver(record)
          }
        }
      } catch {
        // Redis away (or the reader closed): wait, then read on from the last entry seen.
        if (this.#closed) return
        await new Promise(resolve => setTimeout(resolve, 500).unref())
      }
    }
  }

  #deliver (record: AuditRecord): void {
    for (const s of [...this.#subscribers]) {
      try { s.fn(record) } catch { /* a failing subscriber neither stops the others nor the reader */ }
    }
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#subscribers.clear()
    this.#reader?.disconnect()
  }
}

export class RedisStore implements GatewayStore {
  readonly kind = 'redis' as const
  readonly redis: Redis
  readonly sessions: SessionStore
  readonly replay: ReplayStore
  readonly tokens: TokenCache
  readonly pins: RedisPinStore
  readonly approvals: RedisApprovalStore
  readonly decisions: RedisDecisionFeed
  readonly rateLimitRedis: Redis
  #closed = false

  constructor (url: string, options: RedisStoreOptions = {}) {
    const prefix = options.prefix ?? 'mcpw:'
    const redisOptions: RedisOptions = {
      // Fail closed and fast: nothing waits in a queue for a Redis that is down.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.commandTimeoutMs ?? 2000,
      connectTimeout: 2000,
      // Reconnect for ever, at most every second.
      retryStrategy: (times) => Math.min(50 * times, 1000),
      lazyConnect: false
    }
    this.redis = new Redis(url, redisOptions)
    this.redis.on('error', () => { /* state is read from redis.status; errors reach callers as 503 */ })
    this.redis.defineCommand('mcpwBind', { numberOfKeys: 2, lua: BIND })
    this.redis.defineCommand('mcpwPinCheck', { numberOfKeys: 6, lua: PIN_CHECK })
    this.redis.defineCommand('mcpwPinApprove', { numberOfKeys: 6, lua: PIN_APPROVE })
    this.redis.defineCommand('mcpwPinWaive', { numberOfKeys: 4, lua: PIN_WAIVE })
    const scripted = this.redis as Scripted
    this.sessions = new RedisSessions(scripted, prefix)
    this.replay = new RedisReplayStore(this.redis, prefix)
    this.tokens = new RedisTokens(this.redis, prefix)
    this.pins = new RedisPinStore(this.redis, prefix)
    this.approvals = new RedisApprovalStore(this.redis, prefix)
    this.decisions = new RedisDecisionFeed(this.redis, prefix)
    this.rateLimitRedis = this.redis
  }

  available (): boolean {
    return this.redis.status === 'ready'
  }

  async ready (timeoutMs = 5000): Promise<void> {
    if (this.available()) return
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => { this.redis.off('ready', onReady); reject(new StoreUnavailableError({ cause: new Error(`no connection within ${timeoutMs} ms`) })) }, timeoutMs)
      const onReady = (): void => { clearTimeout(timer); resolve() }
      this.redis.once('ready', onReady)
    })
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.pins.close()
    await this.approvals.close()
    await this.decisions.close()
    this.redis.disconnect()
  }
}
