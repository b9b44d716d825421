import type { GatewayConfig } from '../config.js'
import { ConfigError } from '../errors.js'
import { MemoryStore } from './memory.js'
import { RedisStore } from './redis.js'
import type { GatewayStore } from './types.js'

/** The store named by `store:` in the config: the embedded memory store, or Redis. */
export function createStore (config: Pick<GatewayConfig, 'store' | 'toolScan'>): GatewayStore {
  if (config.store !== 'memory') return new RedisStore(config.store)
  try {
    return new MemoryStore(config.toolScan.pins)
  } catch (err) {
    throw new ConfigError(`toolScan.pins: cannot use ${config.toolScan.pins}: ${(err as Error).message}`)
  }
}
export { MemoryStore } from './memory.js'
export { RedisStore, RedisPinStore, RedisReplayStore } from './redis.js'
export type { GatewayStore, SessionStore, ReplayStore, TokenCache } from './types.js'
