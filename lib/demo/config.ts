/**
 * The embedded demo's agents and gateway config: what the CLI needs to explain a decision
 * against the demo without starting it (and without the demo servers' libraries).
 */
import { join } from 'node:path'
import { validateConfig, type GatewayConfig } from '../config.js'
import { loadOrCreateIssuerKey } from '../dev-tokens.js'
import { PACKAGE_ROOT } from '../version.js'

export const DEMO_ISSUER = 'https://demo-issuer.mcp-warden.local'

/** The demo agents: one per reference role. */
export const DEMO_AGENTS = [
  { role: 'readonly', agentId: 'reader-bot', userId: 'alice', department: 'analytics' },
  { role: 'readwrite', agentId: 'writer-bot', userId: 'bob', department: 'engineering' },
  { role: 'analyst', agentId: 'analyst-bot', userId: 'carol', department: 'analytics' },
  { role: 'engineer', agentId: 'engineer-bot', userId: 'dave', department: 'engineering' },
  { role: 'payment_admin', agentId: 'payments-bot', userId: 'erin', department: 'finance' },
  { role: 'super_admin', agentId: 'ops-bot', userId: 'frank', department: 'platform-ops' }
] as const

/** People who approve calls in the demo (reference policies: platform-ops super_admins, finance). */
export const DEMO_APPROVERS = [
  { userId: 'grace', roles: ['super_admin'], department: 'platform-ops' },
  { userId: 'heidi', roles: ['approver'], department: 'finance' }
] as const

/** People who use the demo's operator console (reference policies: viewer, operator, approver roles). */
export const DEMO_OPERATORS = [
  { userId: 'olivia', roles: ['operator', 'approver'], department: 'platform-ops' },
  { userId: 'victor', roles: ['viewer'], department: 'security' }
] as const

/**
 * The demo's gateway config. `urls` are the demo upstreams' addresses; tools that only
 * read the config (cedar explain) may pass placeholders.
 */
export function demoConfig (o: { dataDir: string, host?: string, port?: number, urls: Record<'db' | 'file' | 'api', string>, timezone?: string, adminPort?: number, overrides?: Record<string, unknown> }): GatewayConfig {
  const issuer = loadOrCreateIssuerKey(o.dataDir)
  return validateConfig({
    listen: { host: o.host ?? '127.0.0.1', port: o.port ?? 8080 },
    identity: { issuer: DEMO_ISSUER, publicKeyFile: issuer.publicKeyFile, algorithms: ['EdDSA'] },
    authorization: {
      schema: join(PACKAGE_ROOT, 'cedar', 'schema.cedarschema'),
      policies: join(PACKAGE_ROOT, 'cedar', 'policies'),
      timezone: o.timezone ?? 'Asia/Seoul'
    },
    upstreams: {
      db: {
        url: o.urls.db,
        tools: {
          database_query: { sensitivity: 'low', readOnly: true },
          database_insert: { sensitivity: 'medium' },
          database_drop: { sensitivity: 'high', destructive: true }
        }
      },
      file: {
        url: o.urls.file,
        tools: { file_read: { sensitivity: 'low', readOnly: true }, file_write: { sensitivity: 'medium' } }
      },
      api: {
        url: o.urls.api,
        tools: {
          metrics_fetch: { sensitivity: 'low', readOnly: true },
          payment_process: { sensitivity: 'high' },
          user_delete: { sensitivity: 'high', destructive: true },
          config_override: { sensitivity: 'high', destructive: true }
        }
      }
    },
    tokens: { keysDir: join(o.dataDir, 'keys') },
    toolScan: { pins: join(o.dataDir, 'pins.json') },
    rateLimit: { max: 600, timeWindow: '1 minute', tools: { 'api/payment_process': { max: 5, timeWindow: '1 minute' } } },
    serverTiming: true,
    logLevel: 'warn',
    // With an admin port: health, metrics and the operator console there, the audit in a file (the console's index reads it on start).
    ...(o.adminPort !== undefined ? { admin: { listen: { host: o.host ?? '127.0.0.1', port: o.adminPort } }, console: { enabled: true }, audit: { destination: join(o.dataDir, 'audit.jsonl') } } : {}),
    ...o.overrides
  }, o.dataDir)
}
