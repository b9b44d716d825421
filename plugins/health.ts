/**
 * health: `GET /healthz` (the process answers) and `GET /readyz` (it can serve MCP requests:
 * 503 while the shared store is unreachable or the Cedar engine is broken). What readiness checks is settled at boot from
 * the plugins the host registered; nothing is looked up per request. Its body names the
 * upstreams and, under `shadow` (absent when there is none), those in shadow mode: their Cedar
 * decisions are recorded, not applied.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import type { GatewayStore } from '../lib/stores/types.js'
import { engineHealth } from '../lib/cedar/engine.js'
import { shadowUpstreams } from '../lib/shadow-mode.js'
import { provided } from './decorations.js'

export interface HealthOptions {
  config: GatewayConfig
}

async function health (app: FastifyInstance, opts: HealthOptions): Promise<void> {
  const upstreams = [...opts.config.upstreams.keys()]
  const shadow = shadowUpstreams(opts.config)
  let store: GatewayStore | undefined
  let cedar = false
  let settled = false
  app.addHook('onReady', async () => {
    if (app.hasPlugin('mcp-warden-store')) store = app.mcpWarden.store
    cedar = app.hasPlugin('mcp-warden-cedar-authz')
    settled = true
  })

  // On the admin listener when there is one (the public listener then has no such routes).
  const admin = provided(app, 'admin')
  const routes = admin ?? app
  routes.get('/healthz', async () => ({ status: 'ok' }))
  routes.get('/readyz', async (_request, reply) => {
    // The admin listener opens while the gateway is still starting (waiting for Redis, say):
    // it is not ready until the boot is done and the public listener takes requests.
    const starting = !settled || (admin !== undefined && !app.server.listening)
    const storeUp = store?.available() ?? true
    const engine = cedar ? engineHealth() : undefined
    const ready = !starting && storeUp && (engine?.healthy ?? true)
    return await reply.code(ready ? 200 : 503).send({
      status: ready ? 'ready' : starting ? 'starting' : 'unavailable',
      ...(store !== undefined ? { store: { kind: store.kind, available: storeUp } } : {}),
      ...(engine !== undefined ? { cedar: { healthy: engine.healthy, replacements: engine.replacements } } : {}),
      upstreams,
      ...(shadow.length > 0 ? { shadow } : {})
    })
  })
}

export default fp(health, { name: 'mcp-warden-health', fastify: '5.x' })
export { health }
