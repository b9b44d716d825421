/**
 * Names on the aggregated endpoint (`POST /mcp`): a tool or prompt `name` of upstream `db`
 * is exposed as `db__name` (`<prefix><separator><name>`, the prefix defaulting to the
 * upstream's name). An upstream with the prefix '' exposes its names as they are; such a
 * name must be unique among everything exposed, or it is left out (never routed by guess).
 */
import type { GatewayConfig, UpstreamConfig } from './config.js'

export interface Exposed { readonly server: string, readonly name: string }

export class AggregateNames {
  readonly #separator: string
  readonly #prefixed: Array<{ prefix: string, server: UpstreamConfig }>
  readonly #unprefixed: UpstreamConfig[]

  constructor (config: Pick<GatewayConfig, 'upstreams' | 'aggregate'>) {
    this.#separator = config.aggregate.separator
    const all = [...config.upstreams.values()]
    this.#prefixed = all.filter(u => u.prefix !== '').map(u => ({ prefix: u.prefix + this.#separator, server: u }))
      .sort((a, b) => b.prefix.length - a.prefix.length)
    this.#unprefixed = all.filter(u => u.prefix === '')
  }

  /** The exposed name of an upstream's tool or prompt. */
  expose (server: UpstreamConfig, name: string): string {
    return server.prefix === '' ? name : `${server.prefix}${this.#separator}${name}`
  }

  /**
   * The upstream and original name behind an exposed name. `unprefixedOwner` says which
   * unprefixed upstream offers a bare name (from the lists it has answered), if any.
   */
  resolve (exposed: string, unprefixedOwner: (name: string) => string | undefined): Exposed | undefined {
    for (const { prefix, server } of this.#prefixed) {
      if (exposed.startsWith(prefix) && exposed.length > prefix.length) return { server: server.name, name: exposed.slice(prefix.length) }
    }
    if (this.#unprefixed.length === 0) return undefined
    const owner = unprefixedOwner(exposed)
    return owner !== undefined ? { server: owner, name: exposed } : undefined
  }

  /**
   * Merges per-upstream lists into one, renaming; a name exposed twice (possible only with
   * unprefixed upstreams) is left out everywhere. Returns the merged list and the names dropped.
   */
  merge<T extends { name: string }> (lists: ReadonlyArray<{ server: UpstreamConfig, items: readonly T[] }>): { items: T[], collisions: string[] } {
    const seen = new Map<string, number>()
    const out: T[] = []
    for (const { server, items } of lists) {
      for (const item of items) {
        const name = this.expose(server, item.name)
        seen.set(name, (seen.get(name) ?? 0) + 1)
        out.push({ ...item, name })
      }
    }
    const collisions = [...seen].filter(([, n]) => n > 1).map(([k]) => k)
    return { items: out.filter(i => seen.get(i.name) === 1), collisions }
  }
}
