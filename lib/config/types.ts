/**
 * The config's types: `RawConfig` (what the schema accepts, defaults filled in) and the
 * normalised, frozen `GatewayConfig` the gateway runs on, with its parts.
 */
import type { Static } from '@sinclair/typebox'
import type { ConfigSchema } from './schema.js'

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
  /** enforce: decisions are applied; shadow: decided and audited (`shadow: true`) but denied calls are forwarded (default: authorization.mode). */
  readonly mode: AuthorizationMode
}

export type AuthorizationMode = 'enforce' | 'shadow'

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
  /**
   * How long a verified token's signature and claims are remembered (by the SHA-256 of the
   * token, until it expires, at most this long); 0 verifies every request.
   */
  readonly verifiedTokenCacheSeconds: number
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
  /** The default of every upstream's mode (DESIGN §12 shadow mode). */
  readonly mode: AuthorizationMode
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
  /** Human approval of single calls (DESIGN §11). */
  readonly approvals: ApprovalsConfig
  /** The aggregated endpoint `POST /mcp`: every upstream as one server. */
  readonly aggregate: { readonly enabled: boolean, readonly separator: string }
  /** Per-agent request limits; absent: none. Windows in milliseconds. */
  readonly rateLimit?: RateLimitConfig
  readonly audit: AuditConfig
  /** OpenTelemetry traces (DESIGN §12); absent: tracing is off (the API's no-op). */
  readonly telemetry?: TelemetryConfig
  /** A second listener for /healthz, /readyz, /metrics and the console; absent: they are on the public listener. */
  readonly admin?: { readonly listen: { readonly host: string, readonly port: number } }
  /** The operator console (DESIGN §13), on the admin listener. */
  readonly console: ConsoleConfig
  /** Fastify's per-request info lines on the MCP routes too (off: the audit record is the request record). */
  readonly logRequests: boolean
  readonly logLevel: string
  /** Send a Server-Timing header with the duration of each stage on MCP answers. */
  readonly serverTiming: boolean
}

export interface AuditConfig {
  /** `stdout` or an absolute file path. */
  readonly destination: string
  /** Names this process's hash chain (`replica` in every record); default: the host name. */
  readonly replica: string
  /** A signed checkpoint record every this many records; 0: none. */
  readonly checkpointEvery: number
  /** Size-based rotation of a file destination; the chain continues into the new file. */
  readonly rotate?: { readonly maxBytes: number, readonly keep: number }
}

export interface TelemetryConfig {
  /** `service.name` of the exported spans. */
  readonly serviceName: string
  /** Share of traces started here that are recorded (a sampled incoming traceparent is always followed). */
  readonly sampleRatio: number
  readonly otlp?: {
    /** Base URL without a trailing slash. */
    readonly endpoint: string
    /** `<endpoint>/v1/traces`. */
    readonly tracesUrl: string
    readonly headers: Readonly<Record<string, string>>
    readonly timeoutMs: number
  }
}

export interface ApprovalsConfig {
  /** How long an approval waits for a person, and how long an approved call may be retried. */
  readonly ttlSeconds: number
  /** New approval requests per agent (and user) per window. */
  readonly rateLimit: { readonly max: number, readonly timeWindowMs: number }
  /** The `aud` an approver's JWT must carry (default `<publicUrl>/approvals`). */
  readonly approverAudience: string
  /** Webhook told of each new approval and each decision, signed with HMAC-SHA256. */
  readonly notify?: { readonly url: string, readonly secret: SecretRef, readonly timeoutMs: number }
  /** OIDC sign-in (authorization code + PKCE) of approvers at the approval page. */
  readonly signIn?: { readonly issuer: string, readonly clientId: string, readonly clientSecret?: SecretRef, readonly scopes: readonly string[] }
}

export interface ConsoleConfig {
  readonly enabled: boolean
  /** The console's own base URL as browsers reach it (OIDC redirect, Origin checks); absent: the admin listener's address. */
  readonly url?: string
  /** The `aud` an operator's JWT must carry (default `<publicUrl>/console`). */
  readonly audience: string
  /** Audit records the console's index keeps (the oldest go first). */
  readonly maxRecords: number
}
