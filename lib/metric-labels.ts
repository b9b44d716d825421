/**
 * Metric label values from bounded sets only (DESIGN §12): whatever an agent sends, the number
 * of series `/metrics` can grow to is fixed by the configuration and the upstreams' own lists.
 *
 * - `server`: a configured upstream's name, else `other`.
 * - `method`: a method name of the MCP specification (lib/mcp-methods.ts), `response` for a
 *   client's answer, the HTTP method of a request without a message (GET stream, DELETE), else
 *   `other`.
 * - `status`: a status the gateway answers with itself, else its class (`2xx` … `5xx`): an
 *   upstream chooses the status of its answers.
 * - `tool`: a tool the operator declared (`upstreams.<name>.tools`), or one the upstream itself
 *   listed and the tool guard let through (the first {@link MAX_SEEN_TOOLS} per upstream), else
 *   `other`.
 */
import type { GatewayConfig } from './config.js'
import type { McpMessage } from './jsonrpc.js'
import { MCP_METHODS } from './mcp-methods.js'

/** The label value of everything outside the bounded sets. */
export const OTHER = 'other'
/** Tools an upstream listed that become label values, per upstream (declared tools come on top). */
export const MAX_SEEN_TOOLS = 1000
/** A longer name is never a label value. */
export const MAX_LABEL_LENGTH = 128

const HTTP_METHODS: ReadonlySet<string> = new Set(['GET', 'POST', 'DELETE'])
/** Statuses the gateway answers with itself; an upstream's other statuses are counted by class. */
const STATUSES: ReadonlySet<number> = new Set([200, 202, 204, 400, 401, 403, 404, 405, 406, 409, 413, 415, 429, 499, 500, 502, 503, 504])

/** Whether the upstream listed this tool and the tool guard let it through (not quarantined). */
export type ToolKnown = (server: string, tool: string) => boolean

export class MetricLabels {
  /** Per configured upstream: its declared tools and the listed tools admitted as labels. */
  readonly #tools = new Map<string, { readonly declared: ReadonlySet<string>, readonly seen: Set<string> }>()

  constructor (config: Pick<GatewayConfig, 'upstreams'>) {
    for (const u of config.upstreams.values()) {
      this.#tools.set(u.name, { declared: new Set(Object.keys(u.tools)), seen: new Set() })
    }
  }

  /** The status label: one the gateway itself answers with, else its class (`2xx` … `5xx`), else `other`. */
  status (code: number): string {
    if (STATUSES.has(code)) return String(code)
    return code >= 100 && code <= 599 ? `${Math.floor(code / 100)}xx` : OTHER
  }

  /** A configured upstream's name, else `other`. */
  server (name: string | null | undefined): string {
    return name != null && this.#tools.has(name) ? name : OTHER
  }

  /** The method label of a request: its MCP method, `response`, or the HTTP method of a request without a message. */
  method (message: McpMessage | null | undefined, httpMethod: string): string {
    if (message == null) return HTTP_METHODS.has(httpMethod) ? httpMethod : OTHER
    if (message.kind === 'response') return 'response'
    return MCP_METHODS.has(message.method) ? message.method : OTHER
  }

  /**
   * The tool label of a call of `tool` on `server`: the name when it was declared, or when the
   * upstream listed it and the guard let it through (`known`) while there is room; else `other`.
   * Once a name is a label it stays one.
   */
  tool (server: string, tool: string, known: ToolKnown): string {
    const t = this.#tools.get(server)
    if (t === undefined) return OTHER
    if (t.declared.has(tool) || t.seen.has(tool)) return tool
    if (t.seen.size >= MAX_SEEN_TOOLS || tool.length > MAX_LABEL_LENGTH || !known(server, tool)) return OTHER
    t.seen.add(tool)
    return tool
  }
}
