/**
 * Normalisation: turns a schema-checked config into the frozen `GatewayConfig`, checking what the
 * schema cannot (URLs, key files, folders, secret references, upstream auth, names, prefixes)
 * and resolving relative paths against the config file's folder.
 */
import { existsSync, readFileSync, statSync } from 'node:fs'
import { createPrivateKey, createPublicKey } from 'node:crypto'
import { resolve } from 'node:path'
import { hostname } from 'node:os'
import type { Static } from '@sinclair/typebox'
import { parse as parseDuration } from '@lukeed/ms'
import { isTimeZone } from '../cedar/time.js'
import { checkSchema, fail, type UpstreamAuthSchema, type UpstreamSchema, type VaultSchema } from './schema.js'
import type { ApprovalsConfig, AuditConfig, ConsoleConfig, TelemetryConfig, GatewayConfig, RateLimitConfig, RawConfig, SecretRef, StdioConfig, UpstreamAuthConfig, UpstreamConfig } from './types.js'

const SERVER_NAME = /^[a-z0-9](?:[a-z0-9_-]{0,62})$/

function parseUrl (field: string, value: string, protocols = ['http:', 'https:']): URL {
  let url: URL
  try { url = new URL(value) } catch { fail(field, `"${value}" is not an absolute URL`) }
  if (!protocols.includes(url.protocol)) fail(field, `must use ${protocols.join(' or ')}`)
  if (url.username !== '' || url.password !== '') fail(field, 'must not contain credentials')
  return url
}

function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    if (value instanceof Map) for (const v of value.values()) deepFreeze(v)
    else for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

type RawSecretRef = string | { vault: Static<typeof VaultSchema> }

/** Parses a secret reference; checks at boot what can be checked (the variable is set, the file readable). */
export function secretRef (field: string, raw: RawSecretRef, baseDir: string): SecretRef {
  if (typeof raw === 'string') {
    const m = /^(env|file):(.+)$/.exec(raw)
    if (m === null) fail(field, 'a secret is "env:NAME", "file:PATH" or { vault: {...} }, never the value itself')
    if (m[1] === 'env') {
      if (process.env[m[2]!] === undefined || process.env[m[2]!] === '') fail(field, `the environment variable ${m[2]!} is not set`)
      return { kind: 'env', name: m[2]! }
    }
    const path = resolve(baseDir, m[2]!)
    try { readFileSync(path) } catch (err) { fail(field, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`) }
    return { kind: 'file', path }
  }
  const v = raw.vault
  parseUrl(`${field}.vault.address`, v.address)
  if ((v.token === undefined) === (v.appRole === undefined)) fail(`${field}.vault`, 'set exactly one of token and appRole')
  return {
    kind: 'vault',
    address: v.address.replace(/\/+$/, ''),
    ...(v.token !== undefined ? { token: secretRef(`${field}.vault.token`, v.token, baseDir) } : {}),
    ...(v.appRole !== undefined ? { appRole: { roleId: v.appRole.roleId, secretId: secretRef(`${field}.vault.appRole.secretId`, v.appRole.secretId, baseDir), mount: v.appRole.mount ?? 'approle' } } : {}),
    ...(v.namespace !== undefined ? { namespace: v.namespace } : {}),
    mount: v.mount ?? 'secret',
    path: v.path,
    field: v.field,
    cacheSeconds: v.cacheSeconds ?? 60,
    timeoutMs: Math.round((v.timeoutSeconds ?? 5) * 1000)
  }
}

const AUTH_FIELDS: Record<string, string[]> = {
  none: [],
  ephemeral: [],
  exchange: ['tokenEndpoint', 'clientId', 'clientAuth', 'clientSecret', 'privateKeyFile', 'audience', 'resource', 'scope', 'timeoutSeconds'],
  secret: ['header', 'format', 'secret']
}

function upstreamAuth (field: string, raw: Static<typeof UpstreamAuthSchema> | undefined, resource: string, baseDir: string): UpstreamAuthConfig {
  if (raw === undefined) return { type: 'ephemeral' }
  const extra = Object.keys(raw).find(k => k !== 'type' && !AUTH_FIELDS[raw.type]!.includes(k))
  if (extra !== undefined) fail(`${field}.${extra}`, `not used by auth type ${raw.type}`)
  switch (raw.type) {
    case 'none': case 'ephemeral': return { type: raw.type }
    case 'exchange': {
      if (raw.tokenEndpoint === undefined) fail(`${field}.tokenEndpoint`, 'required for auth type exchange')
      parseUrl(`${field}.tokenEndpoint`, raw.tokenEndpoint)
      if (raw.clientId === undefined) fail(`${field}.clientId`, 'required for auth type exchange')
      const clientAuth = raw.clientAuth ?? 'client_secret_basic'
      let privateKeyPem: string | undefined
      if (clientAuth === 'client_secret_basic') {
        if (raw.clientSecret === undefined) fail(`${field}.clientSecret`, 'required for client_secret_basic')
        if (raw.privateKeyFile !== undefined) fail(`${field}.privateKeyFile`, 'only used with clientAuth private_key_jwt')
      } else {
        if (raw.privateKeyFile === undefined) fail(`${field}.privateKeyFile`, 'required for private_key_jwt')
        if (raw.clientSecret !== undefined) fail(`${field}.clientSecret`, 'not used with private_key_jwt')
        const file = resolve(baseDir, raw.privateKeyFile)
        try { privateKeyPem = readFileSync(file, 'utf8'); createPrivateKey(privateKeyPem) } catch {
          fail(`${field}.privateKeyFile`, `${file} is not a readable PEM private key`)
        }
      }
      if (raw.resource !== undefined) parseUrl(`${field}.resource`, raw.resource)
      return {
        type: 'exchange',
        tokenEndpoint: raw.tokenEndpoint,
        clientId: raw.clientId,
        clientAuth,
        ...(raw.clientSecret !== undefined ? { clientSecret: secretRef(`${field}.clientSecret`, raw.clientSecret, baseDir) } : {}),
        ...(privateKeyPem !== undefined ? { privateKeyPem } : {}),
        ...(raw.audience !== undefined ? { audience: raw.audience } : {}),
        resource: raw.resource ?? resource,
        scope: raw.scope ?? '{scope}',
        timeoutMs: Math.round((raw.timeoutSeconds ?? 5) * 1000)
      }
    }
    case 'secret': {
      if (raw.secret === undefined) fail(`${field}.secret`, 'required for auth type secret')
      const header = (raw.header ?? 'authorization').toLowerCase()
      if (!/^[a-z0-9-]+$/.test(header) || ['host', 'content-type', 'content-length', 'mcp-session-id', 'cookie'].includes(header)) fail(`${field}.header`, `"${header}" cannot carry a secret`)
      const format = raw.format ?? (header === 'authorization' ? 'Bearer {secret}' : '{secret}')
      if (!format.includes('{secret}')) fail(`${field}.format`, 'must contain {secret}')
      return { type: 'secret', header, format, secret: secretRef(`${field}.secret`, raw.secret, baseDir) }
    }
  }
}

const STDIO_ONLY = ['cwd', 'env', 'envPass', 'idleSeconds', 'maxProcesses', 'processLimits'] as const

function stdioConfig (field: string, u: Static<typeof UpstreamSchema>, baseDir: string): StdioConfig | undefined {
  if (u.command === undefined) {
    const extra = STDIO_ONLY.find(k => u[k] !== undefined)
    if (extra !== undefined) fail(`${field}.${extra}`, 'only used with command (stdio upstreams)')
    return undefined
  }
  for (const k of Object.keys(u.env ?? {})) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) fail(`${field}.env.${k}`, 'not an environment variable name')
  const cwd = u.cwd !== undefined ? resolve(baseDir, u.cwd) : undefined
  if (cwd !== undefined && (!existsSync(cwd) || !statSync(cwd).isDirectory())) fail(`${field}.cwd`, `${cwd} is not a folder`)
  return {
    command: u.command,
    ...(cwd !== undefined ? { cwd } : {}),
    env: u.env ?? {},
    envPass: u.envPass ?? ['PATH'],
    idleMs: (u.idleSeconds ?? 900) * 1000,
    maxProcesses: u.maxProcesses ?? 32,
    limits: u.processLimits ?? {}
  }
}

function storeUrl (value: string): string {
  if (value === 'memory') return value
  // A Redis URL may carry a password: it is never repeated in an error.
  let url: URL
  try { url = new URL(value) } catch { fail('store', 'is neither "memory" nor a Redis URL (redis://[user:password@]host:port[/db] or rediss://…)') }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') fail('store', 'must use redis: or rediss: (or be "memory")')
  if (url.hostname === '') fail('store', 'names no host')
  if (url.pathname !== '' && url.pathname !== '/' && !/^\/\d+$/.test(url.pathname)) fail('store', 'the path of a Redis URL is a database number, e.g. redis://127.0.0.1:6379/0')
  return value
}

/** "1 minute", "30 s", "500ms", or a number of milliseconds. */
export function windowMs (field: string, value: number | string): number {
  if (typeof value === 'number') return value
  const ms = parseDuration(value)
  if (ms === undefined || !Number.isFinite(ms) || ms < 1) fail(field, `"${value}" is not a time window (e.g. "1 minute", "30 seconds", 60000)`)
  return Math.round(ms)
}

function rateLimitConfig (raw: NonNullable<RawConfig['rateLimit']>, upstreams: ReadonlyMap<string, UpstreamConfig>): RateLimitConfig {
  const tools = new Map<string, { max: number, timeWindowMs: number }>()
  for (const [name, t] of Object.entries(raw.tools)) {
    const slash = name.indexOf('/')
    if (slash >= 0 && !upstreams.has(name.slice(0, slash))) fail(`rateLimit.tools.${name}`, `no upstream is named "${name.slice(0, slash)}"`)
    tools.set(name, { max: t.max, timeWindowMs: windowMs(`rateLimit.tools.${name}.timeWindow`, t.timeWindow) })
  }
  const timeWindowMs = windowMs('rateLimit.timeWindow', raw.timeWindow)
  const unauthenticated = raw.unauthenticated !== undefined
    ? { max: raw.unauthenticated.max, timeWindowMs: windowMs('rateLimit.unauthenticated.timeWindow', raw.unauthenticated.timeWindow) }
    : { max: raw.max, timeWindowMs }
  return { max: raw.max, timeWindowMs, tools, unauthenticated }
}

function auditConfig (raw: RawConfig['audit'], baseDir: string): AuditConfig {
  const destination = raw.destination === 'stdout' ? 'stdout' : resolve(baseDir, raw.destination)
  if (raw.rotate !== undefined && destination === 'stdout') fail('audit.rotate', 'rotation needs a file destination (audit.destination), not stdout')
  const replica = raw.replica ?? hostname().replace(/[^A-Za-z0-9_.:-]/g, '-').slice(0, 128)
  return {
    destination,
    replica: replica === '' ? 'gateway' : replica,
    checkpointEvery: raw.checkpoint?.every ?? 0,
    ...(raw.rotate !== undefined ? { rotate: { maxBytes: raw.rotate.maxBytes, keep: raw.rotate.keep } } : {})
  }
}

function telemetryConfig (raw: NonNullable<RawConfig['telemetry']>): TelemetryConfig {
  let otlp: TelemetryConfig['otlp']
  if (raw.otlp !== undefined) {
    const u = parseUrl('telemetry.otlp.endpoint', raw.otlp.endpoint, ['http:', 'https:'])
    if (u.search !== '' || u.hash !== '') fail('telemetry.otlp.endpoint', 'is the OTLP/HTTP base URL, like http://127.0.0.1:4318 (traces go to /v1/traces); no query or fragment')
    for (const [name, value] of Object.entries(raw.otlp.headers ?? {})) {
      if (!/^[A-Za-z0-9-]+$/.test(name)) fail(`telemetry.otlp.headers.${name}`, 'is not an HTTP header name (letters, digits and "-")')
      if (/[\r\n]/.test(value)) fail(`telemetry.otlp.headers.${name}`, 'a header value cannot hold a line break')
    }
    const base = u.href.replace(/\/+$/, '')
    otlp = { endpoint: base, tracesUrl: `${base}/v1/traces`, headers: raw.otlp.headers ?? {}, timeoutMs: Math.round(raw.otlp.timeoutSeconds * 1000) }
  }
  return { serviceName: raw.serviceName, sampleRatio: raw.sampleRatio, ...(otlp !== undefined ? { otlp } : {}) }
}

function consoleConfig (cfg: RawConfig, base: string): ConsoleConfig {
  const c = cfg.console
  if (c.enabled && cfg.admin === undefined) fail('console.enabled', 'the console is served on the admin listener: set admin.listen too')
  if (c.enabled && cfg.admin !== undefined && cfg.admin.listen.port !== 0 && cfg.admin.listen.port === cfg.listen.port && cfg.admin.listen.host === cfg.listen.host) fail('admin.listen', 'must differ from listen (the admin listener is a second port)')
  let url: string | undefined
  if (c.url !== undefined) {
    const u = parseUrl('console.url', c.url, ['http:', 'https:'])
    if (u.search !== '' || u.hash !== '' || u.pathname !== '/') fail('console.url', 'must be an origin only, like https://console.example.com (the console lives under /console)')
    url = u.origin
  }
  const audience = c.audience ?? `${base}/console`
  parseUrl('console.audience', audience, ['http:', 'https:', 'urn:'])
  return { enabled: c.enabled, ...(url !== undefined ? { url } : {}), audience, maxRecords: c.maxRecords }
}

function approvalsConfig (raw: RawConfig['approvals'], base: string, baseDir: string): ApprovalsConfig {
  if (raw.notify !== undefined) parseUrl('approvals.notify.url', raw.notify.url)
  if (raw.signIn !== undefined) {
    const issuer = parseUrl('approvals.signIn.issuer', raw.signIn.issuer)
    if (issuer.search !== '' || issuer.hash !== '') fail('approvals.signIn.issuer', 'must not have a query or fragment')
    if (!raw.signIn.scopes.includes('openid')) fail('approvals.signIn.scopes', 'must include "openid" (the sign-in reads the ID token)')
  }
  const audience = raw.approverAudience ?? `${base}/approvals`
  parseUrl('approvals.approverAudience', audience, ['http:', 'https:', 'urn:'])
  return {
    ttlSeconds: raw.ttlSeconds,
    rateLimit: { max: raw.rateLimit.max, timeWindowMs: windowMs('approvals.rateLimit.timeWindow', raw.rateLimit.timeWindow) },
    approverAudience: audience,
    ...(raw.notify !== undefined ? { notify: { url: raw.notify.url, secret: secretRef('approvals.notify.secret', raw.notify.secret, baseDir), timeoutMs: Math.round(raw.notify.timeoutSeconds * 1000) } } : {}),
    ...(raw.signIn !== undefined
      ? {
          signIn: {
            issuer: raw.signIn.issuer.replace(/\/+$/, ''),
            clientId: raw.signIn.clientId,
            ...(raw.signIn.clientSecret !== undefined ? { clientSecret: secretRef('approvals.signIn.clientSecret', raw.signIn.clientSecret, baseDir) } : {}),
            scopes: raw.signIn.scopes
          }
        }
      : {})
  }
}

/**
 * Validates a parsed config object and returns the normalised, frozen config.
 * `baseDir` resolves relative file paths (the config file's folder).
 */
export function validateConfig (input: unknown, baseDir: string = process.cwd()): GatewayConfig {
  const cfg = checkSchema(input)

  const publicUrl = parseUrl('publicUrl', cfg.publicUrl ?? `http://${cfg.listen.host.includes(':') ? `[${cfg.listen.host}]` : cfg.listen.host}:${cfg.listen.port}`)
  if (publicUrl.search !== '' || publicUrl.hash !== '') fail('publicUrl', 'must not have a query or fragment')
  const base = publicUrl.href.replace(/\/+$/, '')

  cfg.allowedOrigins.forEach((o, i) => {
    const u = parseUrl(`allowedOrigins[${i}]`, o)
    if (u.origin !== o.replace(/\/$/, '')) fail(`allowedOrigins[${i}]`, `must be an origin like ${u.origin} (no path)`)
  })

  const id = cfg.identity
  if ((id.jwksUri === undefined) === (id.publicKeyFile === undefined)) {
    fail('identity', 'set exactly one key source: jwksUri or publicKeyFile')
  }
  let publicKeyPem: string | undefined
  if (id.jwksUri !== undefined) parseUrl('identity.jwksUri', id.jwksUri)
  if (id.publicKeyFile !== undefined) {
    const file = resolve(baseDir, id.publicKeyFile)
    try { publicKeyPem = readFileSync(file, 'utf8') } catch (err) {
      fail('identity.publicKeyFile', `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
    let type: string | undefined
    try { type = createPublicKey(publicKeyPem).asymmetricKeyType } catch {
      fail('identity.publicKeyFile', `${file} is not a PEM public key`)
    }
    const fits: Record<string, RegExp> = { rsa: /^(RS|PS)/, ec: /^ES/, ed25519: /^EdDSA$/, 'rsa-pss': /^PS/ }
    if (!id.algorithms.some(a => fits[type ?? '']?.test(a) === true)) {
      fail('identity.algorithms', `none of ${id.algorithms.join(', ')} can be verified with the ${type ?? 'unknown'} key in identity.publicKeyFile`)
    }
  }

  const authz = cfg.authorization
  if (!isTimeZone(authz.timezone)) fail('authorization.timezone', `"${authz.timezone}" is not an IANA time zone (e.g. Asia/Seoul, UTC)`)
  const schemaFile = resolve(baseDir, authz.schema)
  if (!existsSync(schemaFile)) fail('authorization.schema', `${schemaFile} does not exist`)
  const policiesDir = resolve(baseDir, authz.policies)
  if (!existsSync(policiesDir) || !statSync(policiesDir).isDirectory()) fail('authorization.policies', `${policiesDir} is not a folder`)

  if (cfg.tokens.issuer !== undefined) parseUrl('tokens.issuer', cfg.tokens.issuer)
  const tokenIssuer = cfg.tokens.issuer ?? base
  // Tokens the gateway mints are told from the agents' by their issuer: one name for both would
  // let an upstream replay a minted token to the gateway as an agent token.
  if (tokenIssuer === id.issuer) fail(cfg.tokens.issuer !== undefined ? 'tokens.issuer' : 'identity.issuer', `the gateway's own issuer (${tokenIssuer}) must not be the agents' identity.issuer`)

  const names = Object.keys(cfg.upstreams)
  if (names.length === 0) fail('upstreams', 'configure at least one upstream MCP server')
  const upstreams = new Map<string, UpstreamConfig>()
  for (const name of names) {
    const u = cfg.upstreams[name]!
    if (!SERVER_NAME.test(name)) fail(`upstreams.${name}`, 'a server name is lower-case letters, digits, "-" and "_", starting with a letter or digit')
    if ((u.url === undefined) === (u.command === undefined)) fail(`upstreams.${name}`, 'set exactly one of url (Streamable HTTP) and command (stdio)')
    const stdio = stdioConfig(`upstreams.${name}`, u, baseDir)
    if (u.url !== undefined) parseUrl(`upstreams.${name}.url`, u.url)
    if (u.resource !== undefined) parseUrl(`upstreams.${name}.resource`, u.resource, ['http:', 'https:', 'urn:'])
    const resource = u.resource ?? u.url ?? `urn:mcp-warden:stdio:${name}`
    // A stdio server is reached through the gateway's own loopback bridge, which always takes the
    // gateway's ephemeral tokens; `none` says the server itself takes no credential, which is
    // what a stdio server is, so it means the same as `ephemeral` here.
    if (stdio !== undefined && u.auth !== undefined && u.auth.type !== 'ephemeral' && u.auth.type !== 'none') fail(`upstreams.${name}.auth.type`, `a stdio upstream is reached through the gateway's own bridge, which takes the gateway's ephemeral tokens: use ephemeral or none, not ${String(u.auth.type)} (give the server a credential of its own through env)`)
    const authRaw = stdio !== undefined && u.auth?.type === 'none' ? undefined : u.auth
    upstreams.set(name, {
      name,
      url: u.url ?? '',
      ...(stdio !== undefined ? { stdio } : {}),
      resource,
      // Values inside a record get no schema defaults: they are set here.
      auth: upstreamAuth(`upstreams.${name}.auth`, authRaw, resource, baseDir),
      tools: u.tools ?? {},
      defaultSensitivity: u.defaultSensitivity ?? 'high',
      timeoutMs: Math.round((u.timeoutSeconds ?? 30) * 1000),
      prefix: u.prefix ?? name,
      mode: u.mode ?? cfg.authorization.mode
    })
  }

  const prefixes = new Map<string, string>()
  for (const u of upstreams.values()) {
    if (u.prefix === '') continue
    if (u.prefix.includes(cfg.aggregate.separator)) fail(`upstreams.${u.name}.prefix`, `must not contain the separator "${cfg.aggregate.separator}" (aggregate.separator)`)
    const other = prefixes.get(u.prefix)
    if (other !== undefined) fail(`upstreams.${u.name}.prefix`, `"${u.prefix}" is already the prefix of upstream ${other}`)
    prefixes.set(u.prefix, u.name)
  }

  return deepFreeze({
    listen: cfg.listen,
    publicUrl: base,
    allowedOrigins: cfg.allowedOrigins.map(o => o.replace(/\/$/, '')),
    identity: {
      issuer: id.issuer,
      ...(id.jwksUri !== undefined ? { jwksUri: id.jwksUri } : {}),
      ...(publicKeyPem !== undefined ? { publicKeyPem } : {}),
      algorithms: [...new Set(id.algorithms)],
      audiences: id.audiences,
      clockToleranceSeconds: id.clockToleranceSeconds,
      maxTokenLifetimeSeconds: id.maxTokenLifetimeSeconds,
      verifiedTokenCacheSeconds: id.verifiedTokenCacheSeconds,
      claims: id.claims
    },
    authorization: { schema: schemaFile, policies: policiesDir, timezone: authz.timezone, watch: authz.watch, mode: authz.mode },
    tokens: { issuer: tokenIssuer, ttlSeconds: cfg.tokens.ttlSeconds, exchangeTtlSeconds: cfg.tokens.exchangeTtlSeconds, keysDir: resolve(baseDir, cfg.tokens.keysDir) },
    upstreams,
    limits: cfg.limits,
    toolScan: {
      ...(cfg.toolScan.rules !== undefined ? { rules: resolve(baseDir, cfg.toolScan.rules) } : {}),
      disable: cfg.toolScan.disable,
      pins: resolve(baseDir, cfg.toolScan.pins),
      newTools: cfg.toolScan.newTools,
      ...(cfg.toolScan.judge !== undefined ? { judge: { ...cfg.toolScan.judge, url: parseUrl('toolScan.judge.url', cfg.toolScan.judge.url).href } } : {})
    },
    store: storeUrl(cfg.store),
    approvals: approvalsConfig(cfg.approvals, base, baseDir),
    aggregate: cfg.aggregate,
    ...(cfg.rateLimit !== undefined ? { rateLimit: rateLimitConfig(cfg.rateLimit, upstreams) } : {}),
    audit: auditConfig(cfg.audit, baseDir),
    ...(cfg.telemetry !== undefined ? { telemetry: telemetryConfig(cfg.telemetry) } : {}),
    ...(cfg.admin !== undefined ? { admin: { listen: cfg.admin.listen } } : {}),
    console: consoleConfig(cfg, base),
    logRequests: cfg.logRequests,
    logLevel: cfg.logLevel,
    serverTiming: cfg.serverTiming
  })
}
