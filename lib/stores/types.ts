/**
 * Shared state of the gateway. The memory store serves one process; the Redis store
 * lets several replicas share session bindings, the `jti` replay cache, rate-limit
 * counters, tool pins and the exchange-token cache.
 */
import type { PinStore } from '../tools/pins.js'
import type { ApprovalStore } from '../approvals/types.js'
import type { AuditRecord } from '../../plugins/decorations.js'

export interface SessionStore {
  /**
   * Binds an upstream session to the principal that opened it. Returns false,
   * binding nothing, when the session is already bound to another principal.
   */
  bind (server: string, sessionId: string, principal: string, ttlSeconds: number): Promise<boolean>
  /** The principal a session is bound to, or null. Refreshes its TTL. */
  owner (server: string, sessionId: string, ttlSeconds: number): Promise<string | null>
  unbind (server: string, sessionId: string): Promise<void>
  /** How many live sessions a principal holds on a server (for limits.maxSessionsPerAgent). */
  count (server: string, principal: string): Promise<number>
  close (): Promise<void>
}

/** Single use of token ids (`jti`): the first use wins, until the token expires. */
export interface ReplayStore {
  /** Records a jti until `expiresAt` (seconds since the epoch); false when it was already used. */
  use (jti: string, expiresAt: number): Promise<boolean>
  close (): Promise<void>
}

/** Upstream tokens obtained by token exchange, reused until shortly before they expire. */
export interface TokenCache {
  get (key: string): Promise<string | null>
  /** Keeps `token` until `until` (ms since the epoch). */
  set (key: string, token: string, until: number): Promise<void>
}

/**
 * The audit records of every replica, for the console's index. The audit file stays the record
 * of truth: the feed is best effort, and a record may arrive twice (the index drops repeats).
 */
export interface DecisionFeed {
  /** Hands a record to every subscriber (of every replica); never throws, never waits. */
  publish (record: AuditRecord): void
  /** Calls `fn` with each record published from now on; returns its removal. */
  subscribe (fn: (record: AuditRecord) => void): () => void
  /** The newest `max` records still kept, oldest first (none in the memory store). */
  history (max: number): Promise<AuditRecord[]>
}

/** Everything the gateway shares between replicas, from one place (`store:` in the config). */
export interface GatewayStore {
  readonly kind: 'memory' | 'redis'
  readonly sessions: SessionStore
  readonly replay: ReplayStore
  readonly tokens: TokenCache
  /** Approvals of single calls waiting for, or given by, a person (DESIGN §11). */
  readonly approvals: ApprovalStore
  /** The tool pins (the memory store keeps them in the `toolScan.pins` file). */
  readonly pins: PinStore
  /** Audit records of every replica, for the console's index (published only while a console runs). */
  readonly decisions: DecisionFeed
  /** The ioredis client @fastify/rate-limit keeps its counters in; undefined: in memory. */
  readonly rateLimitRedis: unknown
  /** False while the store cannot be reached: every MCP request is then refused with 503. */
  available (): boolean
  /** Resolves once the store is reachable, or rejects after `timeoutMs`. */
  ready (timeoutMs?: number): Promise<void>
  close (): Promise<void>
}
