/**
 * Shadow mode (DESIGN §12): upstreams whose Cedar decisions are recorded, not applied
 * (`authorization.mode: shadow`, or `upstreams.<name>.mode: shadow`). The startup banner, the
 * boot warning and `/readyz` name them from here.
 */
import type { GatewayConfig } from './config.js'

/** The names of the upstreams in shadow mode, sorted. */
export function shadowUpstreams (config: Pick<GatewayConfig, 'upstreams'>): string[] {
  return [...config.upstreams.values()].filter(u => u.mode === 'shadow').map(u => u.name).sort()
}
