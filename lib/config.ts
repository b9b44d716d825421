/**
 * Configuration: schema, defaults, validation and normalisation.
 *
 * A config is YAML or JSON (DESIGN.md §5). Unknown keys and wrong types refuse to
 * boot with a ConfigError that names the key, e.g. `identity.algorithms[1]`.
 * The result is deep-frozen: nothing changes it after boot.
 */
import { existsSync, readFileSync, statSync } from 'node:fs'
import { createPrivateKey, createPublicKey } from 'node:crypto'
import { dirname, extname, resolve } from 'node:path'
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from './errors.js'
import { isTimeZone } from './cedar/time.js'
import { parse as parseDuration } from '@lukeed/ms'

const strict = { additionalProperties: false } as const
const Str = (o: object = {}) => Type.String({ minLength: 1, ...o })

const ClaimsSchema = Type.Object({
  agentId: Str({ default: 'agentId' }),
  userId: Str({ default: 'userId' }),
  role: Str({ default: 'role' }),
  roles: Str({ default: 'roles' }),
  department: Str({ default: 'department' })
}, { ...strict, default: {} })

const IdentitySchema = Type.Object({
  issuer: Str(),
  jwksUri: Type.Optional(Str()),
  publicKeyFile: Type.Optional(Str()),
  algorithms: Type.Array(Type.Union([
    Type.Literal('RS256'), Type.Literal('RS384'), Type.Literal('RS512'),
    Type.Literal('PS256'), Type.Literal('PS384'), Type.Literal('PS512'),
    Type.Literal('ES256'), Type.Literal('ES384'), Type.Literal('ES512'),
    Type.Literal('EdDSA')
  ]), { minItems: 1, default: ['RS256', 'ES256', 'EdDSA'] }),
  audiences: Type.Array(Str(), { default: [] }),
  clockToleranceSeconds: Type.Integer({ minimum: 0, maximum: 300, default: 5 }),
  maxTokenLifetimeSeconds: Type.Integer({ minimum: 60, maximum: 365 * 24 * 3600, default: 24 * 3600 }),
  claims: ClaimsSchema
}, strict)

const AuthorizationSchema = Type.Object({
  schema: Str(),
  policies: Str(),
  timezone: Str({ default: 'Asia/Seoul' }),
  watch: Type.Boolean({ default: true })
}, strict)

const VaultSchema = Type.Object({
  address: Str(),
  token: Type.Optional(Str()),
  appRole: Type.Optional(Type.Object({ roleId: Str(), secretId: Str(), mount: Type.Optional(Str()) }, strict)),
  namespace: Type.Optional(Str()),
  mount: Type.Optional(Str()),
  path: Str(),
  field: Str(),
  cacheSeconds: Type.Optional(Type.Integer({ minimum: 0, maximum: 3600 })),
  timeoutSeconds: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 60 }))
}, strict)

/** `env:NAME`, `file:PATH`, or `{ vault: {...} }`. */
const SecretRefSchema = Type.Union([Str(), Type.Object({ vault: VaultSchema }, strict)])

const UpstreamAuthSchema = Type.Object({
  type: Type.Union([Type.Literal('ephemeral'), Type.Literal('exchange'), Type.Literal('secret'), Type.Literal('none')]),
  // exchange
  tokenEndpoint: Type.Optional(Str()),
  clientId: Type.Optional(Str()),
  clientAuth: Type.Optional(Type.Union([Type.Literal('client_secret_basic'), Type.Literal('private_key_jwt')])),
  clientSecret: Type.Optional(SecretRefSchema),
  privateKeyFile: Type.Optional(Str()),
  audience: Type.Optional(Str()),
  resource: Type.Optional(Str()),
  scope: Type.Optional(Str()),
  timeoutSeconds: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 60 })),
  // secret
  header: Type.Optional(Str()),
  format: Type.Optional(Str()),
  secret: Type.Optional(SecretRefSchema)
}, strict)

const TokensSchema = Type.Object({
  issuer: Type.Optional(Str()),
  ttlSeconds: Type.Integer({ minimum: 1, maximum: 300, default: 60 }),
  exchangeTtlSeconds: Type.Integer({ minimum: 1, maximum: 86400, default: 300 }),
  keysDir: Str({ default: './.mcp-warden/keys' })
}, { ...strict, default: {} })

const ToolAttrsSchema = Type.Object({
  sensitivity: Type.Optional(Type.Union([Type.Literal('low'), Type.Literal('medium'), Type.Literal('high')])),
  readOnly: Type.Optional(Type.Boolean()),
  destructive: Type.Optional(Type.Boolean())
}, strict)

const UpstreamSchema = Type.Object({
  url: Type.Optional(Str()),
  command: Type.Optional(Type.Array(Str(), { minItems: 1 })),
  cwd: Type.Optional(Str()),
  env: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }), Type.String())),
  envPass: Type.Optional(Type.Array(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }))),
  idleSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 86400 })),
  maxProcesses: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  processLimits: Type.Optional(Type.Object({
    memoryMb: Type.Optional(Type.Integer({ minimum: 16 })),
    cpuSeconds: Type.Optional(Type.Integer({ minimum: 1 })),
    openFiles: Type.Optional(Type.Integer({ minimum: 16 }))
  }, strict)),
  resource: Type.Optional(Str()),
  auth: Type.Optional(UpstreamAuthSchema),
  tools: Type.Optional(Type.Record(Type.String(), ToolAttrsSchema)),
  defaultSensitivity: Type.Optional(Type.Union([Type.Literal('low'), Type.Literal('medium'), Type.Literal('high')])),
  timeoutSeconds: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 3600 })),
  prefix: Type.Optional(Type.String({ maxLength: 64, pattern: '^[A-Za-z0-9_.-]*$' }))
}, strict)

const WINDOW_HINT = 'a number of milliseconds or a duration such as "1 minute"'

const ConfigSchema = Type.Object({
  listen: Type.Object({
    host: Str({ default: '127.0.0.1' }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 })
  }, { ...strict, default: {} }),
  publicUrl: Type.Optional(Str()),
  allowedOrigins: Type.Array(Str(), { default: [] }),
  identity: IdentitySchema,
  authorization: AuthorizationSchema,
  tokens: TokensSchema,
  upstreams: Type.Record(Type.String(), UpstreamSchema),
  toolScan: Type.Object({
    rules: Type.Optional(Str()),
    disable: Type.Array(Str(), { default: [] }),
    pins: Str({ default: './.mcp-warden/pins.json' }),
    newTools: Type.Union([Type.Literal('review'), Type.Literal('quarantine')], { default: 'review' }),
    judge: Type.Optional(Type.Object({
      url: Str(),
      timeoutMs: Type.Integer({ minimum: 100, maximum: 60_000, default: 5000 }),
      onFailure: Type.Union([Type.Literal('quarantine'), Type.Literal('allow')], { default: 'quarantine' }),
      concurrency: Type.Integer({ minimum: 1, maximum: 256, default: 4 }),
      headers: Type.Record(Type.String(), Type.String(), { default: {} })
    }, strict))
  }, { ...strict, default: {} }),
  limits: Type.Object({
    maxBodyBytes: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, default: 1024 * 1024 }),
    sessionTtlSeconds: Type.Integer({ minimum: 60, default: 24 * 3600 }),
    maxResponseBytes: Type.Integer({ minimum: 1024, maximum: 1024 * 1024 * 1024, default: 16 * 1024 * 1024 }),
    maxSessionsPerAgent: Type.Integer({ minimum: 1, maximum: 100_000, default: 100 }),
    maxJsonKeys: Type.Integer({ minimum: 16, maximum: 1_000_000, default: 10_000 }),
    maxJsonValues: Type.Integer({ minimum: 16, maximum: 10_000_000, default: 50_000 })
  }, { ...strict, default: {} }),
  rateLimit: Type.Optional(Type.Object({
    max: Type.Integer({ minimum: 1 }),
    timeWindow: Type.Union([Type.Integer({ minimum: 1 }), Str()], { default: '1 minute', hint: WINDOW_HINT }),
    tools: Type.Record(Type.String(), Type.Object({
      max: Type.Integer({ minimum: 1 }),
      timeWindow: Type.Union([Type.Integer({ minimum: 1 }), Str()], { hint: WINDOW_HINT })
    }, strict), { default: {} }),
    unauthenticated: Type.Optional(Type.Object({
      max: Type.Integer({ minimum: 1 }),
      timeWindow: Type.Union([Type.Integer({ minimum: 1 }), Str()], { default: '1 minute', hint: WINDOW_HINT })
    }, strict))
  }, strict)),
  store: Str({ default: 'memory' }),
  aggregate: Type.Object({
    enabled: Type.Boolean({ default: true }),
    separator: Type.String({ minLength: 1, maxLength: 8, pattern: '^[A-Za-z0-9_.-]+$', default: '__' })
  }, { ...strict, default: {} }),
  audit: Type.Object({
    destination: Str({ default: 'stdout' })
  }, { ...strict, default: {} }),
  serverTiming: Type.Boolean({ default: false }),
  logLevel: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), { default: 'info' })
}, strict)

export type RawConfig = Static<typeof ConfigSchema>
export type Sensitivity = 'low' | 'medium' | 'high'

export type SecretRef =
  | { readonly kind: 'env', readonly name: string }
  | { readonly kind: 'file', readonly path: string }
  | {
    readonly kind: 'vault'
    readonly address: string
    readonly token?: SecretRef
    readonly appRole?: { readonly roleId: string, readonly secretId: SecretRef, readonly mount: string }
    readonly namespace?: string
    readonly mount: string
    readonly path: string
    readonly field: string
    readonly cacheSeconds: number
    readonly timeoutMs: number
  }

export type UpstreamAuthConfig =
  | { readonly type: 'none' }
  | { readonly type: 'ephemeral' }
  | {
    readonly type: 'exchange'
    readonly tokenEndpoint: string
    readonly clientId: string
    readonly clientAuth: 'client_secret_basic' | 'private_key_jwt'
    readonly clientSecret?: SecretRef
    readonly privateKeyPem?: string
    readonly audience?: string
    /** RFC 8707 resource requested for the upstream token (default: the upstream's resource). */
    readonly resource: string
    /** Scope template: {scope} (the message's scope), {tool}, {method}, {server}. */
    readonly scope: string
    readonly timeoutMs: number
  }
  | { readonly type: 'secret', readonly header: string, readonly format: string, readonly secret: SecretRef }

/** A stdio upstream: the gateway spawns `command` per client session (lib/stdio-bridge.ts). */
export interface StdioConfig {
  /** argv: the program and its arguments (no shell). */
  readonly command: readonly string[]
  readonly cwd?: string
  /** Fixed environment variables. */
  readonly env: Readonly<Record<string, string>>
  /** Variables passed through from the gateway's environment (default: PATH only). */
  readonly envPass: readonly string[]
  readonly idleMs: number
  readonly maxProcesses: number
  readonly limits: { readonly memoryMb?: number, readonly cpuSeconds?: number, readonly openFiles?: number }
}

export interface UpstreamConfig {
  readonly name: string
  /** Streamable HTTP endpoint (for a stdio upstream: its bridge, set when the gateway starts). */
  readonly url: string
  /** Set for stdio upstreams. */
  readonly stdio?: StdioConfig
  /** RFC 8707 resource of the upstream: the `aud` of tokens minted for it. */
  readonly resource: string
  /** How the gateway authenticates to the upstream: a per-message ephemeral token, or nothing. */
  readonly auth: UpstreamAuthConfig
  readonly tools: Readonly<Record<string, { sensitivity?: Sensitivity, readOnly?: boolean, destructive?: boolean }>>
  readonly defaultSensitivity: Sensitivity
  readonly timeoutMs: number
  /** Prefix of its tools and prompts on the aggregated endpoint (`<prefix><separator><name>`); '' = none. */
  readonly prefix: string
}

export interface IdentityConfig {
  readonly issuer: string
  readonly jwksUri?: string
  /** PEM text of the agent issuer's public key, read at boot from publicKeyFile. */
  readonly publicKeyPem?: string
  readonly algorithms: readonly string[]
  readonly audiences: readonly string[]
  readonly clockToleranceSeconds: number
  /** Longest lifetime (exp − iat, or exp − now without iat) an agent token may have. */
  readonly maxTokenLifetimeSeconds: number
  readonly claims: Readonly<RawConfig['identity']['claims']>
}

export interface AuthorizationConfig {
  /** Absolute path of the Cedar schema file. */
  readonly schema: string
  /** Absolute path of the folder whose *.cedar files are the policy set. */
  readonly policies: string
  /** IANA time zone of context.localHour / localWeekday. */
  readonly timezone: string
  /** Reload when a policy file or the schema changes (SIGHUP always reloads). */
  readonly watch: boolean
}

export interface TokensConfig {
  /** `iss` of the ephemeral tokens (default: publicUrl). */
  readonly issuer: string
  readonly ttlSeconds: number
  /** Longest life of an access token issued by the gateway's token exchange (POST /oauth/token). */
  readonly exchangeTtlSeconds: number
  /** Absolute path of the signing keys' folder. */
  readonly keysDir: string
}

export interface JudgeConfig {
  /** POST {server, hash, tool} → {verdict: "allow" | "quarantine", reason}. */
  readonly url: string
  readonly timeoutMs: number
  /** What a definition gets when the judge cannot answer (error, timeout, anything but a verdict). */
  readonly onFailure: 'quarantine' | 'allow'
  /** Questions in flight at once; the rest wait their turn. */
  readonly concurrency: number
  readonly headers: Readonly<Record<string, string>>
}

export interface RateLimitConfig {
  /** Every MCP request of an agent counts against this. */
  readonly max: number
  readonly timeWindowMs: number
  /** tools/call of a tool, per agent; keyed by tool name or by `server/tool`. */
  readonly tools: ReadonlyMap<string, { readonly max: number, readonly timeWindowMs: number }>
  /**
   * Failed authentications (401) per client address, per replica; beyond it the address gets
   * 429 before its token is read, until the window ends. Default: `max` per `timeWindow`.
   */
  readonly unauthenticated: { readonly max: number, readonly timeWindowMs: number }
}

export interface GatewayConfig {
  readonly listen: { readonly host: string, readonly port: number }
  /** Base URL without a trailing slash. */
  readonly publicUrl: string
  readonly allowedOrigins: readonly string[]
  readonly identity: IdentityConfig
  readonly authorization: AuthorizationConfig
  readonly tokens: TokensConfig
  readonly upstreams: ReadonlyMap<string, UpstreamConfig>
  readonly limits: { readonly maxBodyBytes: number, readonly sessionTtlSeconds: number, readonly maxResponseBytes: number, readonly maxSessionsPerAgent: number, readonly maxJsonKeys: number, readonly maxJsonValues: number }
  /** Tool metadata scanning and pinning. */
  readonly toolScan: {
    readonly rules?: string
    readonly disable: readonly string[]
    readonly pins: string
    /** Tools that appear after an upstream's first tools were pinned: scanned and pinned (`review`) or held for approval (`quarantine`). */
    readonly newTools: 'review' | 'quarantine'
    /** A second opinion on definitions the rules pass. */
    readonly judge?: JudgeConfig
  }
  /** `memory`, or a Redis URL (redis://, rediss://) shared by replicas. */
  readonly store: string
  /** The aggregated endpoint `POST /mcp`: every upstream as one server. */
  readonly aggregate: { readonly enabled: boolean, readonly separator: string }
  /** Per-agent request limits; absent: none. Windows in milliseconds. */
  readonly rateLimit?: RateLimitConfig
  readonly audit: { readonly destination: string }
  readonly logLevel: string
  /** Send a Server-Timing header with the duration of each stage on MCP answers. */
  readonly serverTiming: boolean
}

const SERVER_NAME = /^[a-z0-9](?:[a-z0-9_-]{0,62})$/

/** `/identity/algorithms/1` → `identity.algorithms[1]` */
function fieldName (pointer: string): string {
  if (pointer === '' || pointer === '/') return '(top level)'
  return pointer.slice(1).split('/').map(p => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((acc, part) => /^\d+$/.test(part) ? `${acc}[${part}]` : acc === '' ? part : `${acc}.${part}`, '')
}

function fail (field: string, problem: string): never {
  throw new ConfigError(`${field}: ${problem}`)
}

function firstSchemaError (schema: TSchema, value: unknown): string | undefined {
  for (const e of Value.Errors(schema, value)) {
    const field = fieldName(e.path)
    const sch = e.schema as { properties?: object, anyOf?: Array<{ const?: unknown }> }
    if (e.message === 'Unexpected property') {
      return `${field}: unknown key (allowed here: ${Object.keys(sch.properties ?? {}).join(', ')})`
    }
    if (Array.isArray(sch.anyOf) && sch.anyOf.every(o => o.const !== undefined)) {
      return `${field}: must be one of ${sch.anyOf.map(o => JSON.stringify(o.const)).join(', ')}`
    }
    if (Array.isArray(sch.anyOf) && e.value === undefined) return `${field}: expected required property`
    if (typeof (sch as { hint?: unknown }).hint === 'string') return `${field}: must be ${(sch as { hint: string }).hint}`
    if (Array.isArray(sch.anyOf)) {
      // A union of a string and an object (a secret reference): explain with the member that fits the value's shape.
      const member = (sch.anyOf as Array<{ type?: string }>).find(o => o.type === (typeof e.value === 'object' && e.value !== null ? 'object' : typeof e.value))
      const inner = member !== undefined ? firstSchemaError(member as TSchema, e.value) : undefined
      if (inner !== undefined) return inner.startsWith('(top level)') ? `${field}${inner.slice('(top level)'.length)}` : `${field}.${inner}`
      return `${field}: must be "env:NAME", "file:PATH" or { vault: { address, token or appRole, path, field } }`
    }
    return `${field}: ${e.message.toLowerCase()}`
  }
  return undefined
}

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

/**
 * Validates a parsed config object and returns the normalised, frozen config.
 * `baseDir` resolves relative file paths (the config file's folder).
 */
export function validateConfig (input: unknown, baseDir: string = process.cwd()): GatewayConfig {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) fail('(top level)', 'the config must be an object')
  const algs = (input as { identity?: { algorithms?: unknown } }).identity?.algorithms
  if (Array.isArray(algs)) {
    const i = algs.findIndex(a => typeof a === 'string' && /^(none|HS\d+)$/i.test(a))
    if (i >= 0) fail(`identity.algorithms[${i}]`, `${String(algs[i])} is never accepted: agent tokens are verified with the issuer's public key (RS*, PS*, ES*, EdDSA)`)
  }
  const raw = Value.Default(ConfigSchema, structuredClone(input)) as unknown
  const problem = firstSchemaError(ConfigSchema, raw)
  if (problem !== undefined) throw new ConfigError(problem)
  const cfg = raw as RawConfig

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
      prefix: u.prefix ?? name
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
      claims: id.claims
    },
    authorization: { schema: schemaFile, policies: policiesDir, timezone: authz.timezone, watch: authz.watch },
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
    aggregate: cfg.aggregate,
    ...(cfg.rateLimit !== undefined ? { rateLimit: rateLimitConfig(cfg.rateLimit, upstreams) } : {}),
    audit: { destination: cfg.audit.destination === 'stdout' ? 'stdout' : resolve(baseDir, cfg.audit.destination) },
    logLevel: cfg.logLevel,
    serverTiming: cfg.serverTiming
  })
}

/** Reads a YAML or JSON config file and validates it. */
export function loadConfig (file: string): GatewayConfig {
  const path = resolve(file)
  let text: string
  try { text = readFileSync(path, 'utf8') } catch (err) {
    throw new ConfigError(`cannot read config file ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let data: unknown
  try {
    data = extname(path) === '.json' ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    throw new ConfigError(`${path} is not valid ${extname(path) === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message}`)
  }
  return validateConfig(data, dirname(path))
}

/** The RFC 8707 resource URL of a server's route: `<publicUrl>/servers/<name>/mcp`. */
export function resourceUrl (config: Pick<GatewayConfig, 'publicUrl'>, server: string): string {
  return `${config.publicUrl}/servers/${server}/mcp`
}

/** The RFC 9728 metadata URL of a server's route. */
export function metadataUrl (config: Pick<GatewayConfig, 'publicUrl'>, server: string): string {
  return `${config.publicUrl}/.well-known/oauth-protected-resource/servers/${server}/mcp`
}
