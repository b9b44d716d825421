/**
 * store: the gateway's shared state (DESIGN.md §10), as `app.store`.
 *
 * With `store: redis://…`, an MCP request that arrives while Redis is unreachable is
 * refused at once with 503 (JSON-RPC -32014), before identity or any other stage runs:
 * the gateway fails closed, and serves again as soon as the connection is back.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { StoreUnavailableError } from '../lib/errors.js'
import { createStore } from '../lib/stores/index.js'
import type { GatewayStore } from '../lib/stores/types.js'

declare module 'fastify' {
  interface FastifyInstance {
    store: GatewayStore
  }
}

export interface StoreOptions {
  config: GatewayConfig
  /** A store made by the host (closed by the host); default: the one `config.store` names. */
  store?: GatewayStore
}

async function store (app: FastifyInstance, opts: StoreOptions): Promise<void> {
  const s = opts.store ?? createStore(opts.config)
  app.decorate('store', s)
  if (opts.store === undefined) app.addHook('onClose', async () => { await s.close() })
  if (s.kind === 'memory') return
  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.config.mcp === true && !s.available()) throw new StoreUnavailableError()
  })
}

export default fp(store, { name: 'mcp-warden-store', fastify: '5.x' })
export { store }
