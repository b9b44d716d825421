/**
 * stdio upstreams (`upstreams.<name>.command`): a local MCP server process per client
 * session, bridged to Streamable HTTP so that the rest of the gateway treats it like any other
 * upstream (Cedar, filter, pins, ephemeral tokens, audit).
 *
 * The bridge listens on a loopback port and verifies the gateway's ephemeral tokens like any
 * upstream would (mcp-warden/upstream), so another local process cannot use it to skip the
 * gateway. Each `initialize` spawns the command (no shell; an explicit environment; cwd;
 * resource limits through prlimit(1) where available) with the SDK's StdioClientTransport,
 * and pairs it with a Streamable HTTP session. The process ends when the session is deleted,
 * when it has been idle for `idleSeconds`, or when the gateway stops; when it exits on its
 * own, the requests waiting on it get a JSON-RPC error and its session is gone (404).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { randomUUID } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import type { AddressInfo } from 'node:net'
import { StdioClientTransport, DEFAULT_INHERITED_ENV_VARS } from '@modelcontextprotocol/sdk/client/stdio.js'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { isInitializeRequest, type JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js'
import type { Logger } from 'pino'
import type { GatewayConfig, StdioConfig, UpstreamConfig } from './config.js'
import { createUpstreamVerifier, checkNodeRequest, type UpstreamVerifier } from './upstream.js'
import { KeyRing, ensureKeys } from './tokens/keys.js'
import { readBody, sendError } from './http-body.js'
import { watchAndReload } from './reload.js'

interface Pair {
  readonly http: StreamableHTTPServerTransport
  readonly stdio: StdioClientTransport
  lastUsed: number
  /** Requests sent to the process and not answered yet. */
  readonly pending: Set<string | number>
  /** progressToken → request id, so that progress goes back on the request's stream. */
  readonly progress: Map<string | number, string | number>
}

let prlimitPath: string | null | undefined
function prlimit (): string | null {
  if (prlimitPath === undefined) {
    try { prlimitPath = process.platform === 'linux' ? execFileSync('sh', ['-c', 'command -v prlimit'], { encoding: 'utf8' }).trim() || null : null } catch { prlimitPath = null }
  }
  return prlimitPath
}

/** The command line that spawns a server, with its resource limits applied where the OS allows. */
export function spawnLine (stdio: StdioConfig): { command: string, args: string[], limited: boolean } {
  const [command, ...args] = stdio.command as [string, ...string[]]
  const l = stdio.limits
  const flags = [
    ...(l.memoryMb !== undefined ? [`--as=${l.memoryMb * 1024 * 1024}`] : []),
    ...(l.cpuSeconds !== undefined ? [`--cpu=${l.cpuSeconds}`] : []),
    ...(l.openFiles !== undefined ? [`--nofile=${l.openFiles}`] : [])
  ]
  const tool = flags.length > 0 ? prlimit() : null
  if (tool === null) return { command, args, limited: false }
  return { command: tool, args: [...flags, '--', command, ...args], limited: true }
}

/** The environment of a spawned server: only what the config names. */
export function childEnv (stdio: StdioConfig): Record<string, string> {
  const env: Record<string, string | undefined> = {}
  // The SDK adds a few variables of its own (HOME, PATH, …): unset unless allowed.
  for (const k of DEFAULT_INHERITED_ENV_VARS) env[k] = undefined
  for (const k of stdio.envPass) if (process.env[k] !== undefined) env[k] = process.env[k]
  Object.assign(env, stdio.env)
  return env as Record<string, string>
}

export class StdioBridge {
  readonly #upstream: UpstreamConfig
  readonly #stdio: StdioConfig
  readonly #log: Pick<Logger, 'info' | 'warn'>
  readonly #pairs = new Map<string, Pair>()
  readonly #ring: KeyRing
  #verifier: UpstreamVerifier
  #server: Server | undefined
  #sweep: NodeJS.Timeout | undefined
  #keysWatch: { close: () => void } | undefined
  #url = ''
  readonly #maxBody: number
  /** Processes spawned so far (for tests and metrics). */
  spawned = 0

  constructor (config: GatewayConfig, upstream: UpstreamConfig, log: Pick<Logger, 'info' | 'warn'>) {
    this.#upstream = upstream
    this.#stdio = upstream.stdio!
    this.#log = log
    this.#maxBody = config.limits.maxBodyBytes
    ensureKeys(config.tokens.keysDir)
    this.#ring = new KeyRing(config.tokens.keysDir, config.tokens.ttlSeconds)
    this.#verifier = this.#makeVerifier(config)
    // The gateway's signing keys, re-read as the gateway re-reads them: on a change, and every 30 s.
    this.#keysWatch = watchAndReload({
      paths: [config.tokens.keysDir],
      debounceMs: 0,
      everyMs: 30_000,
      reload: () => {
        try { if (this.#ring.reload()) { void this.#verifier.close(); this.#verifier = this.#makeVerifier(config) } } catch { /* keep the keys we have */ }
      }
    })
  }

  #makeVerifier (config: GatewayConfig): UpstreamVerifier {
    return createUpstreamVerifier({ issuer: config.tokens.issuer, audience: this.#upstream.resource, jwks: this.#ring.jwks() as never })
  }

  get url (): string { return this.#url }
  /** Live server processes. */
  get processes (): number { return this.#pairs.size }

  async start (): Promise<string> {
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        this.#log.warn({ server: this.#upstream.name, error: (err as Error).message }, 'stdio bridge: request failed')
        if (!res.headersSent) sendError(res, 500, -32603, 'Internal error')
        else res.end()
      })
    })
    await new Promise<void>((resolve, reject) => {
      this.#server!.once('error', reject)
      this.#server!.listen(0, '127.0.0.1', () => { resolve() })
    })
    const { port } = this.#server.address() as AddressInfo
    this.#url = `http://127.0.0.1:${port}/mcp`
    this.#sweep = setInterval(() => { this.#closeIdle() }, Math.min(30_000, this.#stdio.idleMs))
    this.#sweep.unref()
    return this.#url
  }

  #closeIdle (): void {
    const now = Date.now()
    for (const [id, pair] of this.#pairs) {
      if (now - pair.lastUsed > this.#stdio.idleMs && pair.pending.size === 0) {
        this.#log.info({ server: this.#upstream.name, session: id }, 'stdio bridge: idle session ended')
        void this.#end(id, pair)
      }
    }
  }

  async #end (id: string, pair: Pair): Promise<void> {
    this.#pairs.delete(id)
    await pair.stdio.close().catch(() => {})
    await pair.http.close().catch(() => {})
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (new URL(req.url ?? '/', 'http://x').pathname !== '/mcp') return sendError(res, 404, -32601, 'Not found')
    const raw = req.method === 'POST' ? await readBody(req, this.#maxBody) : Buffer.alloc(0)
    let body: unknown
    if (raw.length > 0) {
      try { body = JSON.parse(raw.toString('utf8')) } catch { return sendError(res, 400, -32700, 'Parse error') }
    }
    const refusal = await checkNodeRequest(this.#verifier, req, body)
    if (refusal !== undefined) return sendError(res, refusal.status, -32001, refusal.message)

    const sid = req.headers['mcp-session-id']
    if (typeof sid === 'string') {
      const pair = this.#pairs.get(sid)
      if (pair === undefined) return sendError(res, 404, -32001, 'Session not found: the server process has ended')
      pair.lastUsed = Date.now()
      this.#track(pair, body)
      await pair.http.handleRequest(req, res, body)
      return
    }
    if (req.method !== 'POST' || !isInitializeRequest(body)) return sendError(res, 400, -32000, 'Bad Request: no valid session id; send initialize first')
    if (this.#pairs.size >= this.#stdio.maxProcesses) {
      return sendError(res, 503, -32014, `MCP server "${this.#upstream.name}" runs ${this.#stdio.maxProcesses} processes already (maxProcesses); try again later`)
    }
    const pair = await this.#spawn()
    this.#track(pair, body)
    await pair.http.handleRequest(req, res, body)
  }

  #track (pair: Pair, body: unknown): void {
    const m = body as { id?: string | number, method?: string, params?: { _meta?: { progressToken?: string | number } } } | undefined
    if (m?.method !== undefined && m.id !== undefined) {
      pair.pending.add(m.id)
      const token = m.params?._meta?.progressToken
      if (token !== undefined) pair.progress.set(token, m.id)
    }
  }

  async #spawn (): Promise<Pair> {
    const line = spawnLine(this.#stdio)
    const stdio = new StdioClientTransport({ command: line.command, args: line.args, env: childEnv(this.#stdio), ...(this.#stdio.cwd !== undefined ? { cwd: this.#stdio.cwd } : {}), stderr: 'pipe' })
    let stderrTail = ''
    stdio.stderr?.on('data', (d: Buffer) => { stderrTail = (stderrTail + d.toString('utf8')).slice(-2000) })
    // The session is initialized (and the callback called) only after `p` is set below.
    const http: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => { this.#pairs.set(id, p) }
    })
    const p: Pair = { http, stdio, lastUsed: Date.now(), pending: new Set(), progress: new Map() }
    http.onmessage = (message) => { void stdio.send(message).catch(() => {}) }
    http.onclose = () => {
      // DELETE from the client, or the bridge closing: the process ends with its session.
      if (http.sessionId !== undefined) this.#pairs.delete(http.sessionId)
      void stdio.close().catch(() => {})
    }
    stdio.onmessage = (message: JSONRPCMessage) => {
      const m = message as { id?: string | number, method?: string, params?: { progressToken?: string | number } }
      if (m.method === undefined && m.id !== undefined) p.pending.delete(m.id)
      const related = m.method === 'notifications/progress' && m.params?.progressToken !== undefined ? p.progress.get(m.params.progressToken) : undefined
      void http.send(message, related !== undefined ? { relatedRequestId: related } : undefined).catch(() => {})
    }
    stdio.onclose = () => {
      const id = http.sessionId
      const stillOurs = id !== undefined && this.#pairs.get(id) === p
      if (stillOurs || id === undefined) {
        // The process ended on its own: answer what it left unanswered, then end the session.
        const reason = `MCP server "${this.#upstream.name}" process exited${stderrTail !== '' ? `: ${stderrTail.trim().split('\n').at(-1)!.slice(0, 200)}` : ''}`
        this.#log.warn({ server: this.#upstream.name, session: id }, reason)
        for (const rid of p.pending) void http.send({ jsonrpc: '2.0', id: rid, error: { code: -32603, message: reason } } as JSONRPCMessage).catch(() => {})
        p.pending.clear()
        if (id !== undefined) this.#pairs.delete(id)
        setTimeout(() => { void http.close().catch(() => {}) }, 50).unref()
      }
    }
    await stdio.start()
    this.spawned++
    if (this.#stdio.limits.memoryMb !== undefined || this.#stdio.limits.cpuSeconds !== undefined || this.#stdio.limits.openFiles !== undefined) {
      if (!line.limited) this.#log.warn({ server: this.#upstream.name }, 'stdio bridge: prlimit is not available; the process runs without resource limits')
    }
    return p
  }

  async close (): Promise<void> {
    if (this.#sweep !== undefined) clearInterval(this.#sweep)
    this.#keysWatch?.close()
    await Promise.allSettled([...this.#pairs].map(async ([id, pair]) => { await this.#end(id, pair) }))
    await this.#verifier.close()
    if (this.#server !== undefined) {
      this.#server.closeAllConnections()
      await new Promise<void>(resolve => { this.#server!.close(() => { resolve() }) })
    }
  }
}

/**
 * Starts a bridge for every stdio upstream and returns the config with their URLs filled in
 * (hosts that register the plugins themselves call this first; buildGateway does).
 */
export async function startStdioBridges (config: GatewayConfig, log: Pick<Logger, 'info' | 'warn'>): Promise<{ config: GatewayConfig, bridges: Map<string, StdioBridge>, close: () => Promise<void> }> {
  const bridges = new Map<string, StdioBridge>()
  const upstreams = new Map(config.upstreams)
  try {
    for (const u of config.upstreams.values()) {
      if (u.stdio === undefined) continue
      const bridge = new StdioBridge(config, u, log)
      const url = await bridge.start()
      bridges.set(u.name, bridge)
      upstreams.set(u.name, Object.freeze({ ...u, url }))
    }
  } catch (err) {
    await Promise.allSettled([...bridges.values()].map(async b => { await b.close() }))
    throw err
  }
  return {
    config: bridges.size === 0 ? config : Object.freeze({ ...config, upstreams }),
    bridges,
    close: async () => { await Promise.allSettled([...bridges.values()].map(async b => { await b.close() })) }
  }
}
