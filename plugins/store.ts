/**
 * store: the gateway's shared state (DESIGN.md §10), as `app.mcpWarden.store`.
 *
 * With `store: redis://…`, an MCP request (server routes and `/mcp`) that arrives while Redis
 * is unreachable is refused at once with 503 (JSON-RPC -32014), before identity or any other
 * stage runs: the gateway fails closed, and serves again as soon as the connection is back.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { StoreUnavailableError } from '../lib/errors.js'
import { createStore, RedisStore } from '../lib/stores/index.js'
import type { GatewayStore } from '../lib/stores/types.js'
import { provide } from './decorations.js'

export interface StoreOptions {
  config: GatewayConfig
  /** A store made by the host (closed by the host); default: the one `config.store` names. */
  store?: GatewayStore
}

async function store (app: FastifyInstance, opts: StoreOptions): Promise<void> {
  const s = opts.store ?? createStore(opts.config)
  provide(app, 'store', s)
  if (opts.store === undefined) app.addHook('onClose', async () => { await s.close() })
  if (s.kind === 'memory') return
  // The operational log says when the store is lost and when it is back (transitions only).
  if (s instanceof RedisStore) {
    let up: boolean | undefined
    let closing = false
    app.addHook('preClose', async () => { closing = true })
    const report = (now: boolean): void => {
      if (now === up || closing) return
      up = now
      if (now) app.log.info('shared store (Redis) connected')
      else app.log.warn('shared store (Redis) unreachable: MCP requests get 503 until it is back')
    }
    s.redis.on('ready', () => { report(true) })
    s.redis.on('close', () => { if (up !== false) report(false) })
    app.addHook('onReady', async () => { await s.ready(2000).catch(() => { report(false) }) })
  }
  app.addHook('onRequest', async (request) => {
    const route = request.routeOptions.config
    if ((route.mcp === true || route.mcpAggregate === true) && !s.available()) throw new StoreUnavailableError()
  })
}

export default fp(store, { name: 'mcp-warden-store', fastify: '5.x' })
export { store }
