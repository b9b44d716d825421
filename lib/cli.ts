/**
 * The `mcp-warden` command: start, token, client.
 */
import { readFileSync } from 'node:fs'
import type { ParseArgsConfig } from 'node:util'
import { parseOptions } from './cli-args.js'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { loadConfig, resourceUrl, type GatewayConfig } from './config.js'
import { signAgentToken } from './dev-tokens.js'
import { buildGateway } from './gateway.js'
import type { Demo, DemoOptions } from './demo/index.js'
import { VERSION } from './version.js'
import { localTime, zoneWhereHourIs } from './cedar/time.js'
import { resolve as resolvePath } from 'node:path'
import { KeyRing, rotateKeys } from './tokens/keys.js'
import { cedarCommand, CedarUsageError } from './cli-cedar.js'
import { toolsCommand, ToolsUsageError } from './cli-tools.js'
import { approvalsCommand, ApprovalsUsageError } from './cli-approvals.js'
import { auditCommand, AuditUsageError } from './cli-audit.js'
import { shadowUpstreams } from './shadow-mode.js'

const pkg = { version: VERSION }

export interface Io {
  out: (line: string) => void
  err: (line: string) => void
}

const defaultIo: Io = {
  out: (line) => { process.stdout.write(line + '\n') },
  err: (line) => { process.stderr.write(line + '\n') }
}

const HELP: Record<string, string> = {
  main: `mcp-warden ${pkg.version} — Zero Trust gateway for the Model Context Protocol

Usage: mcp-warden <command> [options]

Commands:
  start     start the gateway (with no --config: the embedded demo)
  token     sign a development agent JWT with a private key
  client    list or call tools on an MCP endpoint with a bearer token
  cedar     policy tools: validate, test, explain, format, schema
  keys      the ephemeral-token signing keys: list, rotate
  tools     tool pinning: list, diff, approve, pin
  approvals  human approvals: list, show, approve, deny
  audit     the tamper-evident audit log: verify

Run "mcp-warden <command> --help" for a command's options.`,
  start: `Usage: mcp-warden start [--config FILE] [--host HOST] [--port PORT] [--admin-port PORT] [--data-dir DIR]

Starts the gateway. With --config, serves the upstreams of that YAML or JSON file.
Without it, starts the embedded demo: three MCP servers on loopback (db, file, api)
behind the gateway, and prints agent tokens for the demo roles.

Options:
  --config FILE     gateway configuration (YAML or JSON)
  --host HOST       listen address (overrides listen.host; demo default 127.0.0.1)
  --port PORT       listen port (overrides listen.port; demo default 8080)
  --data-dir DIR    demo only: where the demo keeps its issuer key, database and sandbox
                    (default ./.mcp-warden/demo)
  --timezone ZONE   demo only: the IANA zone of the business-hours policies (default
                    Asia/Seoul; e.g. Etc/GMT-3 to try high-sensitivity tools at another hour)
  --admin-port PORT the admin listener's port: health, metrics and the operator console
                    (overrides admin.listen.port; demo default: the listen port + 1)`,
  token: `Usage: mcp-warden token --key FILE --issuer ISS --agent ID --audience URL [options]

Signs an agent JWT for development and tests. The algorithm follows the key:
RSA → RS256, P-256 → ES256, Ed25519 → EdDSA.

Options:
  --key FILE          PEM private key of the issuer
  --issuer ISS        iss claim (must equal identity.issuer of the gateway)
  --agent ID          agent id (agentId and sub claims)
  --audience URL      aud: the server route, e.g. http://127.0.0.1:8080/servers/db/mcp (repeatable)
  --user ID           userId claim
  --role ROLE         a role (repeatable)
  --department NAME   department claim
  --scope "A B"       scope claim
  --ttl SECONDS       lifetime (default 3600)
  --kid KID           kid header, to match a JWKS entry`,
  client: `Usage: mcp-warden client URL --token TOKEN [list | call TOOL [JSON-ARGUMENTS]]

Connects to an MCP endpoint (Streamable HTTP) with the real MCP SDK client,
then lists the tools (default) or calls one.

Examples:
  mcp-warden client http://127.0.0.1:8080/servers/db/mcp --token "$TOKEN" list
  mcp-warden client http://127.0.0.1:8080/servers/db/mcp --token "$TOKEN" call database_query '{"sql":"SELECT * FROM customers"}'`
}

class UsageError extends Error {}

function parse (args: string[], options: NonNullable<ParseArgsConfig['options']>): ReturnType<typeof parseOptions> {
  return parseOptions(args, options, m => new UsageError(m))
}

function str (v: unknown): string | undefined { return typeof v === 'string' ? v : undefined }

function need (values: Record<string, unknown>, name: string): string {
  const v = str(values[name])
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`)
  return v
}

function port (v: unknown): number | undefined {
  if (v === undefined) return undefined
  const n = typeof v === 'string' && /^\d{1,5}$/.test(v) ? Number(v) : NaN
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new UsageError(`--port must be a number from 0 to 65535, not ${JSON.stringify(v)}`)
  return n
}

function host (v: unknown): string | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'string' || v.trim() === '' || /\s/.test(v)) throw new UsageError(`--host must be an address or host name, not ${JSON.stringify(v)}`)
  return v
}

export interface Running {
  readonly url: string
  /** The admin listener's base URL (health, metrics, the console), when there is one. */
  readonly adminUrl?: string
  readonly config: GatewayConfig
  close (): Promise<void>
}

/** The libraries the embedded demo's servers use: sql.js (a dependency) and zod (an optional peer, which the MCP SDK brings). */
const DEMO_LIBRARIES = ['sql.js', 'zod']

/**
 * Loads the embedded demo on demand, so that a host of the library never loads it; without its
 * libraries installed, says which to install.
 */
async function loadDemo (options: DemoOptions): Promise<Demo> {
  const missing = DEMO_LIBRARIES.filter(name => {
    try { import.meta.resolve(name); return false } catch { return true }
  })
  if (missing.length > 0) throw new UsageError(`the embedded demo needs ${missing.join(' and ')} (npm install ${missing.join(' ')}); to run a gateway of your own, start it with --config FILE`)
  const { startDemo } = await import('./demo/index.js')
  return await startDemo(options)
}

/** Starts the gateway (and the demo when no config is given). Resolves once it listens. */
export async function start (args: string[], io: Io = defaultIo): Promise<Running | undefined> {
  const { values } = parse(args, { config: { type: 'string' }, host: { type: 'string' }, port: { type: 'string' }, 'admin-port': { type: 'string' }, 'data-dir': { type: 'string' }, timezone: { type: 'string' } })
  if (values.help === true) { io.out(HELP.start!); return undefined }
  const timezone = str(values.timezone)
  if (timezone !== undefined && str(values.config) !== undefined) throw new UsageError('--timezone is for the demo; set authorization.timezone in the config file')
  const portArg = port(values.port)
  const adminPortArg = port(values['admin-port'])
  const hostArg = host(values.host)
  let demo: Demo | undefined
  let config: GatewayConfig
  const configFile = str(values.config)
  if (configFile !== undefined) {
    config = loadConfig(configFile)
    if (hostArg !== undefined || portArg !== undefined) {
      config = Object.freeze({ ...config, listen: Object.freeze({ host: hostArg ?? config.listen.host, port: portArg ?? config.listen.port }) })
    }
    if (adminPortArg !== undefined) {
      if (config.admin === undefined) throw new UsageError('--admin-port needs admin.listen in the config file')
      config = Object.freeze({ ...config, admin: Object.freeze({ listen: Object.freeze({ host: config.admin.listen.host, port: adminPortArg }) }) })
    }
  } else {
    demo = await loadDemo({
      ...(str(values['data-dir']) !== undefined ? { dataDir: str(values['data-dir'])! } : {}),
      ...(hostArg !== undefined ? { host: hostArg } : {}),
      ...(portArg !== undefined ? { port: portArg } : {}),
      // The console beside the demo: on the next port, or any free one when the port is.
      adminPort: adminPortArg ?? (portArg === 0 ? 0 : (portArg ?? 8080) + 1),
      ...(timezone !== undefined ? { timezone } : {})
    })
    config = demo.config
  }
  let app: Awaited<ReturnType<typeof buildGateway>>
  try {
    app = await buildGateway(config)
  } catch (err) {
    await demo?.close()
    throw err
  }
  try {
    await app.listen({ host: config.listen.host, port: config.listen.port })
  } catch (err) {
    await app.close().catch(() => {})
    await demo?.close()
    const e = err as NodeJS.ErrnoException
    if (e.code === 'EADDRINUSE') throw new UsageError(`port ${config.listen.port} on ${config.listen.host} is in use; choose another with --port`)
    throw err
  }
  const address = app.server.address() as import('node:net').AddressInfo
  const url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`

  io.out(`mcp-warden ${pkg.version} listening on ${url}${demo !== undefined ? ' (embedded demo)' : ''}`)
  io.out(`public URL: ${config.publicUrl}`)
  io.out('')
  io.out('MCP servers:')
  for (const s of config.upstreams.values()) io.out(`  ${s.name.padEnd(6)} ${resourceUrl(config, s.name)}  ->  ${s.stdio !== undefined ? `stdio: ${s.stdio.command.join(' ')}` : s.url}`)
  if (config.aggregate.enabled) io.out(`  (all)  ${config.publicUrl}/mcp  ->  every server above, tools named <server>${config.aggregate.separator}<tool>`)
  const shadow = shadowUpstreams(config)
  if (shadow.length > 0) io.out(`Shadow mode: ${shadow.join(', ')}  (Cedar decisions are audited with "shadow":true, not applied: calls the policies deny are forwarded)`)
  if (demo !== undefined) {
    io.out('')
    io.out('Demo agent tokens (valid 12 h on every demo server; signed by the demo issuer key in')
    io.out(`${demo.dataDir}):`)
    for (const t of demo.tokens()) {
      io.out(`  ${t.role} (agent ${t.agentId}, user ${t.userId}, ${t.department}):`)
      io.out(`    export TOKEN_${t.role.toUpperCase()}=${t.token}`)
    }
    const db = resourceUrl(config, 'db')
    io.out('')
    io.out('Try it (in another terminal, after the export line above):')
    io.out(`  npx mcp-warden client ${db} --token "$TOKEN_READONLY" list`)
    io.out(`  npx mcp-warden client ${db} --token "$TOKEN_READONLY" call database_query '{"sql":"SELECT * FROM customers"}'`)
    io.out('')
    io.out('Human approval (user_delete needs a platform-ops super_admin other than the caller):')
    io.out(`  npx mcp-warden client ${resourceUrl(config, 'api')} --token "$TOKEN_SUPER_ADMIN" call user_delete '{"userId":"u-300"}'`)
    io.out('  -> "Approval required: ..." with the approval page\'s URL; nothing reaches the server yet.')
    io.out('  Open that URL, sign in with the approver token below, approve; then run the same call again: it runs once.')
    const local = localTime(new Date(), config.authorization.timezone).localHour
    if (local < 9 || local >= 18) io.out(`  (It is ${String(local).padStart(2, '0')}h in ${config.authorization.timezone}: the reference policies allow high-sensitivity tools 09-18h only; to try it now, start the demo with --timezone ${zoneWhereHourIs(12)})`)
    for (const a of demo.approvers) {
      io.out(`  approver ${a.userId} (${a.roles.join(', ')}, ${a.department}):`)
      io.out(`    export APPROVER_${a.userId.toUpperCase()}=${demo.approverToken({ userId: a.userId, roles: [...a.roles], department: a.department })}`)
    }
    io.out(`  Pending approvals: ${config.publicUrl}/approvals  (or: npx mcp-warden approvals list --url ${config.publicUrl} --token "$APPROVER_GRACE")`)
  }
  const admin = config.admin !== undefined ? app.mcpWarden.admin.server.address() as import('node:net').AddressInfo | null : null
  const adminUrl = admin !== null ? `http://${admin.family === 'IPv6' ? `[${admin.address}]` : admin.address}:${admin.port}` : undefined
  if (adminUrl !== undefined) {
    io.out('')
    io.out(`Admin listener: ${adminUrl}  (/healthz, /readyz, /metrics)`)
    if (config.console.enabled) {
      io.out(`Operator console: ${config.console.url ?? adminUrl}/console`)
      if (demo !== undefined) {
        io.out('  Sign in with an operator token (paste it on the sign-in page):')
        for (const o of demo.operators) {
          io.out(`  ${o.userId} (${o.roles.join(', ')}):`)
          io.out(`    ${demo.operatorToken({ userId: o.userId, roles: [...o.roles], department: o.department })}`)
        }
      }
    }
  }
  io.out('')
  io.out(`Audit records: ${config.audit.destination === 'stdout' ? 'JSON lines on stdout, below' : config.audit.destination}. Ctrl-C stops.`)

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    closing ??= (async () => { await app.close(); await demo?.close() })()
    await closing
  }
  return { url, config, close, ...(adminUrl !== undefined ? { adminUrl } : {}) }
}

export function token (args: string[], io: Io = defaultIo): void {
  const { values } = parse(args, {
    key: { type: 'string' }, issuer: { type: 'string' }, agent: { type: 'string' }, audience: { type: 'string', multiple: true },
    user: { type: 'string' }, role: { type: 'string', multiple: true }, department: { type: 'string' }, scope: { type: 'string' },
    ttl: { type: 'string' }, kid: { type: 'string' }
  })
  if (values.help === true) { io.out(HELP.token!); return }
  const keyFile = need(values, 'key')
  let pem: string
  try { pem = readFileSync(keyFile, 'utf8') } catch { throw new UsageError(`cannot read --key ${keyFile}`) }
  const audience = values.audience as string[] | undefined
  if (audience === undefined || audience.length === 0) throw new UsageError('--audience is required (the server route URL the token is for)')
  const ttl = values.ttl === undefined ? 3600 : Number(values.ttl)
  if (!Number.isInteger(ttl) || ttl < 1) throw new UsageError('--ttl must be a whole number of seconds, at least 1')
  let jwt: string
  try {
    jwt = signAgentToken(pem, {
      issuer: need(values, 'issuer'),
      agentId: need(values, 'agent'),
      audience: audience.length === 1 ? audience[0]! : audience,
      ttlSeconds: ttl,
      ...(str(values.user) !== undefined ? { userId: str(values.user)! } : {}),
      ...(values.role !== undefined ? { roles: values.role as string[] } : {}),
      ...(str(values.department) !== undefined ? { department: str(values.department)! } : {}),
      ...(str(values.scope) !== undefined ? { scope: str(values.scope)! } : {}),
      ...(str(values.kid) !== undefined ? { kid: str(values.kid)! } : {})
    })
  } catch (err) {
    if (err instanceof UsageError) throw err
    throw new UsageError(`--key ${keyFile}: ${(err as Error).message}`)
  }
  io.out(jwt)
}

export async function client (args: string[], io: Io = defaultIo): Promise<void> {
  const { values, positionals } = parse(args, { token: { type: 'string' } })
  if (values.help === true) { io.out(HELP.client!); return }
  const [url, action = 'list', tool, json] = positionals
  if (url === undefined) throw new UsageError('the endpoint URL is required')
  let endpoint: URL
  try { endpoint = new URL(url) } catch { throw new UsageError(`${url} is not a URL`) }
  const bearer = need(values, 'token')
  let args2: Record<string, unknown> = {}
  if (action === 'call') {
    if (tool === undefined) throw new UsageError('call needs a tool name')
    if (json !== undefined) {
      try { args2 = JSON.parse(json) as Record<string, unknown> } catch { throw new UsageError('the tool arguments must be a JSON object') }
    }
  } else if (action !== 'list') {
    throw new UsageError(`unknown action ${action}: use list or call`)
  }
  const transport = new StreamableHTTPClientTransport(endpoint, { requestInit: { headers: { authorization: `Bearer ${bearer}` } } })
  const mcp = new Client({ name: 'mcp-warden-cli', version: pkg.version })
  try {
    await mcp.connect(transport)
    const result = action === 'list' ? await mcp.listTools() : await mcp.callTool({ name: tool!, arguments: args2 })
    io.out(JSON.stringify(result, null, 2))
    await transport.terminateSession().catch(() => {})
  } finally {
    await mcp.close()
  }
}

const KEYS_HELP = `Usage: mcp-warden keys <list | rotate> [--config FILE | --keys-dir DIR] [--ttl SECONDS] [--activate-in SECONDS]

The Ed25519 keys that sign the gateway's ephemeral upstream tokens (tokens.keysDir).

  list     the keys, which one signs now, and which the JWKS publishes
  rotate   add a new key. It is published at once and starts signing after --activate-in
           seconds (default 60), so every verifier can fetch it first; the previous key stays
           published until every token it signed has expired. Running gateways pick the
           change up by themselves (file watch, SIGHUP, or within 30 s).

Options:
  --config FILE          take keysDir and ttlSeconds from a gateway config
  --keys-dir DIR         the keys folder (default ./.mcp-warden/keys)
  --ttl SECONDS          token lifetime (default 60), for how long a retired key stays published
  --activate-in SECONDS  delay before the new key signs (default 60)`

export function keysCommand (args: string[], io: Io = defaultIo): number {
  const [sub, ...rest] = args
  const { values } = parse(rest, { config: { type: 'string' }, 'keys-dir': { type: 'string' }, ttl: { type: 'string' }, 'activate-in': { type: 'string' } })
  if (sub === undefined || sub === '--help' || sub === 'help' || values.help === true) { io.out(KEYS_HELP); return sub === undefined ? 1 : 0 }
  const config = str(values.config) !== undefined ? loadConfig(str(values.config)!) : undefined
  const dir = str(values['keys-dir']) !== undefined ? resolvePath(str(values['keys-dir'])!) : config?.tokens.keysDir ?? resolvePath('.mcp-warden/keys')
  const whole = (v: unknown, name: string, fallback: number): number => {
    if (v === undefined) return fallback
    const n = Number(v)
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a whole number of seconds`)
    return n
  }
  const ttl = whole(values.ttl, 'ttl', config?.tokens.ttlSeconds ?? 60)
  switch (sub) {
    case 'rotate': {
      const r = rotateKeys(dir, ttl, whole(values['activate-in'], 'activate-in', 60))
      io.out(`new key ${r.kid} in ${dir}: published now, signs from ${r.activates}`)
      if (r.removed.length > 0) io.out(`removed expired keys: ${r.removed.join(', ')}`)
      return 0
    }
    case 'list': {
      const ring = new KeyRing(dir, ttl)
      const current = ring.current().kid
      const published = new Set(ring.jwks().keys.map(k => k.kid))
      for (const k of ring.list()) io.out(`${k.kid}  activates ${k.activates}${k.kid === current ? '  (signing)' : ''}${published.has(k.kid) ? '  (published)' : ''}`)
      return 0
    }
    default:
      throw new UsageError(`unknown keys command "${sub}"\n\n${KEYS_HELP}`)
  }
}

/** Runs the command line; returns the exit code (start keeps running until a signal). */
export async function main (argv: string[], io: Io = defaultIo): Promise<number> {
  const [command, ...rest] = argv
  try {
    switch (command) {
      case undefined: case '--help': case '-h': case 'help':
        io.out(HELP.main!)
        return command === undefined ? 1 : 0
      case '--version': case '-v':
        io.out(pkg.version)
        return 0
      case 'start': {
        const running = await start(rest, io)
        if (running === undefined) return 0
        await new Promise<void>(resolve => {
          const stop = (): void => { void running.close().then(resolve) }
          process.once('SIGINT', stop)
          process.once('SIGTERM', stop)
        })
        return 0
      }
      case 'token':
        token(rest, io)
        return 0
      case 'client':
        await client(rest, io)
        return 0
      case 'cedar':
        return await cedarCommand(rest, io)
      case 'keys':
        return keysCommand(rest, io)
      case 'tools':
        return await toolsCommand(rest, io)
      case 'approvals':
        return await approvalsCommand(rest, io)
      case 'audit':
        return await auditCommand(rest, io)
      default:
        io.err(`mcp-warden: unknown command "${command}"\n\n${HELP.main!}`)
        return 2
    }
  } catch (err) {
    const e = err as Error & { code?: string }
    const usage = err instanceof UsageError || err instanceof CedarUsageError || err instanceof ToolsUsageError || err instanceof ApprovalsUsageError || err instanceof AuditUsageError
    if (usage) io.err(`mcp-warden ${command ?? ''}: ${e.message}`)
    else if (e.code === 'MCPW_ERR_CONFIG_INVALID') io.err(`mcp-warden: ${e.message}`)
    else io.err(`mcp-warden ${command ?? ''}: ${e.message}`)
    return usage ? 2 : 1
  }
}
