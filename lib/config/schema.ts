/**
 * The config's TypeBox schema and its check: unknown keys, wrong types and missing keys refuse
 * to boot with a ConfigError that names the key, e.g. `identity.algorithms[1]`. Defaults are
 * filled in here; everything the schema cannot say is checked in normalise.ts.
 */
import { Type, type TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { ConfigError } from '../errors.js'
import type { RawConfig } from './types.js'

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
  verifiedTokenCacheSeconds: Type.Integer({ minimum: 0, maximum: 3600, default: 300 }),
  claims: ClaimsSchema
}, strict)

const AuthorizationSchema = Type.Object({
  schema: Str(),
  policies: Str(),
  timezone: Str({ default: 'Asia/Seoul' }),
  watch: Type.Boolean({ default: true }),
  mode: Type.Union([Type.Literal('enforce'), Type.Literal('shadow')], { default: 'enforce' })
}, strict)

export const VaultSchema = Type.Object({
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

export const UpstreamAuthSchema = Type.Object({
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

export const UpstreamSchema = Type.Object({
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
  prefix: Type.Optional(Type.String({ maxLength: 64, pattern: '^[A-Za-z0-9_.-]*$' })),
  mode: Type.Optional(Type.Union([Type.Literal('enforce'), Type.Literal('shadow')]))
}, strict)

const WINDOW_HINT = 'a number of milliseconds or a duration such as "1 minute"'

export const ConfigSchema = Type.Object({
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
  approvals: Type.Object({
    ttlSeconds: Type.Integer({ minimum: 5, maximum: 7 * 86400, default: 600 }),
    rateLimit: Type.Object({
      max: Type.Integer({ minimum: 1, default: 10 }),
      timeWindow: Type.Union([Type.Integer({ minimum: 1 }), Str()], { default: '10 minutes', hint: WINDOW_HINT })
    }, { ...strict, default: {} }),
    approverAudience: Type.Optional(Str()),
    notify: Type.Optional(Type.Object({
      url: Str(),
      secret: SecretRefSchema,
      timeoutSeconds: Type.Number({ exclusiveMinimum: 0, maximum: 60, default: 5 })
    }, strict)),
    signIn: Type.Optional(Type.Object({
      issuer: Str(),
      clientId: Str(),
      clientSecret: Type.Optional(SecretRefSchema),
      scopes: Type.Array(Str(), { default: ['openid', 'profile'] })
    }, strict))
  }, { ...strict, default: {} }),
  aggregate: Type.Object({
    enabled: Type.Boolean({ default: true }),
    separator: Type.String({ minLength: 1, maxLength: 8, pattern: '^[A-Za-z0-9_.-]+$', default: '__' })
  }, { ...strict, default: {} }),
  audit: Type.Object({
    destination: Str({ default: 'stdout' }),
    replica: Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_.:-]+$' })),
    checkpoint: Type.Optional(Type.Object({
      every: Type.Integer({ minimum: 1, maximum: 1_000_000 })
    }, strict)),
    rotate: Type.Optional(Type.Object({
      maxBytes: Type.Integer({ minimum: 4096 }),
      keep: Type.Integer({ minimum: 1, maximum: 1000, default: 10 })
    }, strict))
  }, { ...strict, default: {} }),
  telemetry: Type.Optional(Type.Object({
    serviceName: Str({ default: 'mcp-warden' }),
    sampleRatio: Type.Number({ minimum: 0, maximum: 1, default: 1 }),
    otlp: Type.Optional(Type.Object({
      endpoint: Str(),
      headers: Type.Optional(Type.Record(Type.String(), Type.String())),
      timeoutSeconds: Type.Number({ exclusiveMinimum: 0, maximum: 60, default: 10 })
    }, strict))
  }, strict)),
  admin: Type.Optional(Type.Object({
    listen: Type.Object({
      host: Str({ default: '127.0.0.1' }),
      port: Type.Integer({ minimum: 0, maximum: 65535 })
    }, strict)
  }, strict)),
  console: Type.Object({
    enabled: Type.Boolean({ default: false }),
    url: Type.Optional(Str()),
    audience: Type.Optional(Str()),
    maxRecords: Type.Integer({ minimum: 100, maximum: 10_000_000, default: 100_000 })
  }, { ...strict, default: {} }),
  serverTiming: Type.Boolean({ default: false }),
  logRequests: Type.Boolean({ default: false }),
  logLevel: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), { default: 'info' })
}, strict)

/** `/identity/algorithms/1` → `identity.algorithms[1]` */
function fieldName (pointer: string): string {
  if (pointer === '' || pointer === '/') return '(top level)'
  return pointer.slice(1).split('/').map(p => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((acc, part) => /^\d+$/.test(part) ? `${acc}[${part}]` : acc === '' ? part : `${acc}.${part}`, '')
}

/** Refuses the config: a ConfigError `<field>: <problem>`. */
export function fail (field: string, problem: string): never {
  throw new ConfigError(`${field}: ${problem}`)
}

function firstSchemaError (schema: TSchema, value: unknown): string | undefined {
  const e = Value.Errors(schema, value).First()
  if (e === undefined) return undefined
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

/**
 * Checks a parsed config object against the schema and returns a copy with the defaults filled in.
 * Throws a ConfigError naming the first bad key; never changes `input`.
 */
export function checkSchema (input: unknown): RawConfig {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) fail('(top level)', 'the config must be an object')
  const algs = (input as { identity?: { algorithms?: unknown } }).identity?.algorithms
  if (Array.isArray(algs)) {
    const i = algs.findIndex(a => typeof a === 'string' && /^(none|HS\d+)$/i.test(a))
    if (i >= 0) fail(`identity.algorithms[${i}]`, `${String(algs[i])} is never accepted: agent tokens are verified with the issuer's public key (RS*, PS*, ES*, EdDSA)`)
  }
  const raw = Value.Default(ConfigSchema, structuredClone(input)) as unknown
  const problem = firstSchemaError(ConfigSchema, raw)
  if (problem !== undefined) throw new ConfigError(problem)
  return raw as RawConfig
}
