/**
 * The embedded demo: three real MCP servers on loopback (db, file, api), a demo agent
 * issuer whose key is generated on first start, and the gateway config that fronts them.
 */
import { mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { resourceUrl, type GatewayConfig } from '../config.js'
import { loadOrCreateIssuerKey, signAgentToken } from '../dev-tokens.js'
import { DEMO_AGENTS, DEMO_APPROVERS, DEMO_ISSUER, DEMO_OPERATORS, demoConfig } from './config.js'
import { createApiServer, createApiState } from './api.js'
import { createDbServer, openDemoDatabase } from './db.js'
import { createFileServer, seedSandbox } from './file.js'
export { DEMO_AGENTS, DEMO_APPROVERS, DEMO_ISSUER, DEMO_OPERATORS, demoConfig } from './config.js'
import { serveMcp, type ServedMcp, type ServeOptions } from './serve.js'
import { checkNodeRequest, createUpstreamVerifier, type UpstreamVerifier } from '../upstream.js'
import { freePort } from '../http-body.js'

export interface DemoOptions {
  /** Folder for the issuer key, the SQLite file and the file sandbox (default ./.mcp-warden/demo). */
  dataDir?: string
  host?: string
  port?: number
  /** The zone of the business-hours policies (default Asia/Seoul). */
  timezone?: string
  /** Serve health, metrics and the operator console on this second port (0: any free port); absent: no console. */
  adminPort?: number
  /** Extra config merged over the demo's (tests use it). */
  overrides?: Record<string, unknown>
}

export interface Demo {
  readonly config: GatewayConfig
  readonly upstreams: Readonly<Record<'db' | 'file' | 'api', ServedMcp>>
  readonly dataDir: string
  /** Signs a demo agent token valid on every demo server. */
  token (agent: { agentId: string, userId?: string, roles?: string[], department?: string, scope?: string }, ttlSeconds?: number): string
  /** The demo's approvers (DEMO_APPROVERS). */
  readonly approvers: typeof DEMO_APPROVERS
  /** The demo's console users (DEMO_OPERATORS). */
  readonly operators: typeof DEMO_OPERATORS
  /** Signs a token for a person who uses the operator console (aud: console.audience). */
  operatorToken (person: { userId: string, roles: string[], department: string }, ttlSeconds?: number): string
  /** Signs a token for a person who approves calls (aud: approvals.approverAudience). */
  approverToken (person: { userId: string, roles: string[], department: string }, ttlSeconds?: number): string
  /** One token per demo role. */
  tokens (ttlSeconds?: number): Array<(typeof DEMO_AGENTS)[number] & { token: string }>
  close (): Promise<void>
}

export async function startDemo (options: DemoOptions = {}): Promise<Demo> {
  const dataDir = resolve(options.dataDir ?? join('.mcp-warden', 'demo'))
  mkdirSync(dataDir, { recursive: true })
  const issuer = loadOrCreateIssuerKey(dataDir)
  const db = await openDemoDatabase(join(dataDir, 'demo.db'))
  const sandbox = join(dataDir, 'sandbox')
  seedSandbox(sandbox)
  const apiState = createApiState()

  // Each demo server checks the gateway's ephemeral token on every request (mcp-warden/upstream).
  const verifiers = new Map<string, UpstreamVerifier | null>()
  const guard = (name: string): ServeOptions['guard'] => async (req, body) => {
    const verifier = verifiers.get(name)
    if (verifier === null) return undefined // this upstream takes no credential (auth: none)
    if (verifier === undefined) return { status: 503, message: 'the demo server is starting' }
    return await checkNodeRequest(verifier, req, body)
  }
  const served: ServedMcp[] = []
  try {
    served.push(await serveMcp(() => createDbServer(db), { guard: guard('db') }))
    served.push(await serveMcp(() => createFileServer(sandbox), { guard: guard('file') }))
    served.push(await serveMcp(() => createApiServer(apiState), { guard: guard('api') }))
  } catch (err) {
    await Promise.all(served.map(async s => { await s.close() }))
    await db.close()
    throw err
  }
  const [dbUp, fileUp, apiUp] = served as [ServedMcp, ServedMcp, ServedMcp]

  const host = options.host ?? '127.0.0.1'
  // publicUrl names the port, so port 0 is resolved to a free port now.
  const port = options.port === 0 ? await freePort(host).catch(async (err: unknown) => { await Promise.all(served.map(async s => { await s.close() })); await db.close(); throw err }) : options.port ?? 8080
  let config: GatewayConfig
  try {
    config = demoConfig({ dataDir, host, port, urls: { db: dbUp.url, file: fileUp.url, api: apiUp.url }, ...(options.timezone !== undefined ? { timezone: options.timezone } : {}), ...(options.adminPort !== undefined ? { adminPort: options.adminPort } : {}), overrides: options.overrides ?? {} })
  } catch (err) {
    await Promise.all(served.map(async s => { await s.close() }))
    await db.close()
    throw err
  }
  for (const u of config.upstreams.values()) {
    verifiers.set(u.name, u.auth.type !== 'ephemeral'
      ? null
      : createUpstreamVerifier({
        issuer: config.tokens.issuer,
        audience: u.resource,
        jwksUri: `${config.publicUrl}/.well-known/jwks.json`
      }))
  }

  const audience = [...[...config.upstreams.keys()].map(name => resourceUrl(config, name)), `${config.publicUrl}/mcp`]
  const token: Demo['token'] = (agent, ttlSeconds = 12 * 3600) => signAgentToken(issuer.privateKeyPem, {
    issuer: DEMO_ISSUER,
    audience,
    agentId: agent.agentId,
    ...(agent.userId !== undefined ? { userId: agent.userId } : {}),
    ...(agent.roles !== undefined ? { roles: agent.roles } : {}),
    ...(agent.department !== undefined ? { department: agent.department } : {}),
    ...(agent.scope !== undefined ? { scope: agent.scope } : {}),
    ttlSeconds
  })

  const approverToken: Demo['approverToken'] = (person, ttlSeconds = 12 * 3600) => signAgentToken(issuer.privateKeyPem, {
    issuer: DEMO_ISSUER,
    audience: config.approvals.approverAudience,
    agentId: person.userId,
    userId: person.userId,
    roles: person.roles,
    department: person.department,
    ttlSeconds
  })
  const operatorToken: Demo['operatorToken'] = (person, ttlSeconds = 12 * 3600) => signAgentToken(issuer.privateKeyPem, {
    issuer: DEMO_ISSUER,
    audience: config.console.audience,
    agentId: person.userId,
    userId: person.userId,
    roles: person.roles,
    department: person.department,
    ttlSeconds
  })
  return {
    config,
    upstreams: { db: dbUp, file: fileUp, api: apiUp },
    operators: DEMO_OPERATORS,
    operatorToken,
    dataDir,
    token,
    approvers: DEMO_APPROVERS,
    approverToken,
    tokens: (ttlSeconds) => DEMO_AGENTS.map(a => ({ ...a, token: token({ agentId: a.agentId, userId: a.userId, roles: [a.role], department: a.department }, ttlSeconds) })),
    async close () {
      await Promise.all(served.map(async s => { await s.close() }))
      for (const v of verifiers.values()) await v?.close()
      await db.close()
    }
  }
}
