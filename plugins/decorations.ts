/**
 * Every decoration the mcp-warden plugins add to Fastify, in one place: the declaration merges,
 * the types of what they hold, and `provide()` / `provided()` for the instance namespace.
 *
 * Instance decorations live under one name, `app.mcpWarden`, so that none of them can collide
 * with another plugin's (`app.metrics` of fastify-metrics, `app.audit`, …). Request decorations
 * keep the names of the design's contract (`request.identity`, `request.mcp`,
 * `request.decision`, `request.upstreamAuth`); the others carry an `mcp` prefix.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Registry } from 'prom-client'
import type { Tracer } from '@opentelemetry/api'
import type { UpstreamConfig } from '../lib/config.js'
import type { AuthzRequest, CedarEngine, Decision } from '../lib/cedar/engine.js'
import type { Identity } from '../lib/identity.js'
import type { JsonRpcId, McpMessage } from '../lib/jsonrpc.js'
import type { MessageTransform } from '../lib/sse.js'
import type { StdioBridge } from '../lib/stdio-bridge.js'
import type { GatewayStore } from '../lib/stores/types.js'
import type { GatewayTokens } from '../lib/tokens/gateway-tokens.js'
import type { MintedToken } from '../lib/tokens/minter.js'
import type { ToolGuard } from '../lib/tools/guard.js'
import type { UpstreamAuth } from '../lib/credentials/index.js'

export type ReloadResult = { ok: true, version: string } | { ok: false, error: string, version: string }

/** `app.mcpWarden.cedar` (cedar-authz). */
export interface CedarApi {
  /** Decides one request with the current policy set. */
  authorize (request: AuthzRequest): Decision
  /** Version (hash) of the current policy set. */
  readonly version: string
  readonly engine: CedarEngine
  /** Reads, validates and swaps in the policy set from disk; keeps the old one on error. */
  reload (): Promise<ReloadResult>
}

/** `app.mcpWarden.authFailures` (identity): failed authentications per client address. */
export interface AuthFailureBudget {
  /** Failures an address may have per window. */
  readonly max: number
  /** Seconds the request's address must still wait before it may try again (0: it may try). */
  blockedFor: (request: FastifyRequest) => number
  /**
   * Records one failed authentication of the request's address, at most once per request;
   * returns the seconds to wait when this failure went past the budget, else 0.
   */
  fail: (request: FastifyRequest) => number
}

/** `request.mcpTarget` (mcp-context): the upstream a server route serves. */
export interface McpTarget {
  readonly server: UpstreamConfig
  /** RFC 8707 resource URL of this route: the `aud` an agent token must carry. */
  readonly resource: string
  /** RFC 9728 metadata URL of this route. */
  readonly metadataUrl: string
}

/** `request.mcpOutcome`: how a request ended, for the audit record. */
export interface McpOutcome {
  outcome: 'allow' | 'deny' | 'error'
  reason: string
}

/** `request.mcpShadow`: this request was decided in shadow mode. */
export interface McpShadowNote {
  /** Names (tools, prompts, resources) the list filter would have removed from the answer. */
  readonly hidden: string[]
}

/** `request.mcpApproval` (approvals): the approval a call asked for, or used. */
export interface McpApprovalNote {
  readonly id: string
  /** `required`: the call waits for it (not forwarded); `used`: it let this call run (once). */
  readonly status: 'required' | 'used'
  /** The approver's user id, for a used approval. */
  readonly approver: string | null
}

/** `app.mcpWarden.approvals` (approvals): what cedar-authz calls for a call only @approval policies denied. */
export interface ApprovalGate {
  /**
   * Uses this exact call's approval, once, and returns the decision that allows it; or answers
   * the agent that the call needs approval (returns null: the request is answered).
   */
  settle (request: FastifyRequest, reply: FastifyReply, authzRequest: AuthzRequest, decision: Decision): Promise<Decision | null>
}

/** `app.mcpWarden.sessionStreams` (mcp-proxy): the agents' open GET streams, to tell them something. */
export interface SessionStreams {
  /** Sends a JSON-RPC notification on every open GET stream of a session on this replica; returns how many. */
  notify (server: string, sessionId: string, message: Record<string, unknown>): number
}

/** One audit line (audit). */
export interface AuditRecord {
  time: string
  requestId: string
  decisionId: string | null
  agentId: string | null
  userId: string | null
  server: string | null
  httpMethod: string
  method: string | null
  rpcId: string | number | null
  tool?: string
  uri?: string
  prompt?: string
  /** The jti of the ephemeral token minted for the upstream, if one was. */
  upstreamTokenId?: string
  /**
   * Records that are not one MCP request: a grant or refusal of the token endpoint
   * (`token-exchange`, with `resource`, `scope`, `actor`), a request an upstream sent the agent
   * on a stream (`upstream-request`: sampling, elicitation, …).
   */
  event?: 'token-exchange' | 'upstream-request' | 'approval' | 'console'
  /** The operator who acted in the console (`event: console`). */
  operator?: string
  /** Decided in shadow mode (DESIGN §12): the decision was recorded, not applied. */
  shadow?: true
  /** Shadow mode, on a list answer: the names the filter would have removed. */
  shadowHidden?: string[]
  /** The approval a call asked for or used, or that an approver acted on. */
  approvalId?: string
  /** The approver's user id: who approved the call that ran, or who acted on the approval page. */
  approver?: string | null
  resource?: string
  scope?: string
  actor?: string | null
  outcome: 'allow' | 'deny' | 'error'
  reason: string
  policies: string[]
  policyVersion: string | null
  status: number
  durationMs: number
}

/**
 * `app.mcpWarden.audit` (audit): where audit records go, one JSON line each, built from the fields
 * above only, each line led by its hash-chain fields `replica`, `seq` and `prev` (docs/audit.md).
 */
export interface AuditSink {
  write (record: AuditRecord): void
  /** Calls `listener` with every record written from now on (the console's index); returns its removal. */
  onRecord (listener: (record: AuditRecord) => void): () => void
  /** Opens a file destination anew, after an external rotation moved it away (buildGateway calls it on SIGHUP). */
  reopen (): void
}

/** What the plugins provide on `app.mcpWarden`; each member exists once its plugin is registered. */
export interface McpWarden {
  /** cedar-authz. */
  cedar: CedarApi
  /** ephemeral-token: the gateway's signing keys and minter. */
  tokens: GatewayTokens
  /** store. */
  store: GatewayStore
  /** approvals. */
  approvals: ApprovalGate
  /** The admin listener's own Fastify instance (`admin.listen`), where health, metrics and the console are served. */
  admin: FastifyInstance
  /** telemetry: the tracer of MCP request spans; null when tracing is off. */
  tracer: Tracer | null
  /** mcp-proxy. */
  sessionStreams: SessionStreams
  /** audit. */
  audit: AuditSink
  /** metrics: the Prometheus registry of `GET /metrics`. */
  metrics: Registry
  /** tool-filter. */
  toolGuard: ToolGuard
  /** buildGateway: the local bridges of the stdio upstreams, by upstream name. */
  stdioBridges: ReadonlyMap<string, StdioBridge>
  /**
   * identity: verifies the agent token of a request for a resource (its `aud`), or throws the
   * 401 with `WWW-Authenticate` pointing at `metadataUrl`. Used by routes other than
   * `/servers/:name/mcp` (the aggregated endpoint).
   */
  authenticate: (request: FastifyRequest, reply: FastifyReply, resource: string, metadataUrl: string) => Promise<Identity>
  /**
   * identity: in-process requests made on behalf of an already verified agent (the aggregated
   * endpoint calling a server route): `issue` returns a single-use random handle, valid for
   * 30 s, to send as the `x-mcp-warden-internal` header instead of re-verifying a token.
   */
  internalIdentity: { issue: (identity: Identity) => string }
  /**
   * identity: failed authentications per client address (`rateLimit.unauthenticated`, per
   * replica), shared by every endpoint that authenticates a client; null without `rateLimit`.
   */
  authFailures: AuthFailureBudget | null
  /**
   * identity: resolves once the authentication of a request has finished (verified, refused,
   * or none under way): `request.identity` is then final. For hooks that may run while it is
   * under way, such as onRequestAbort.
   */
  identitySettled: (request: FastifyRequest) => Promise<void>
}

declare module 'fastify' {
  interface FastifyInstance {
    mcpWarden: McpWarden
  }
  interface FastifyContextConfig {
    /** Marks a route as an MCP endpoint: the mcp-warden pipeline runs on it. */
    mcp?: boolean
    /** A route of the MCP path that refuses every request (405): audited like the MCP routes. */
    mcpRefusal?: boolean
    /** Marks the aggregated endpoint. */
    mcpAggregate?: boolean
  }
  interface FastifyRequest {
    /** identity: the verified agent; null before or without a valid token. */
    identity: Identity | null
    /** identity: true for the gateway's own in-process requests (a handle it issued, consumed). */
    mcpInternal: boolean
    /** mcp-context: the server route's upstream. */
    mcpTarget: McpTarget | null
    /** mcp-context: the one JSON-RPC message of a POST. */
    mcp: McpMessage | null
    /** mcp-context's error handler and the refusing hooks: how the request ended. */
    mcpOutcome: McpOutcome | null
    /** cedar-authz. */
    decision: Decision | null
    /**
     * cedar-authz: set when the request's upstream is in shadow mode (decisions are recorded,
     * not applied); `hidden` collects the names a list filter would have removed.
     */
    mcpShadow: McpShadowNote | null
    /** approvals: the approval this call asked for, or used. */
    mcpApproval: McpApprovalNote | null
    /** Set by the upstream-credential plugins; null means the upstream gets no credential. */
    upstreamAuth: UpstreamAuth | null
    /** ephemeral-token: the claims of the token minted for this request's upstream call. */
    mcpUpstreamToken: MintedToken['claims'] | null
    /**
     * tool-filter: rewrites or watches the upstream's JSON-RPC messages, applied to a JSON
     * answer, or to each message of an SSE stream, as it passes.
     */
    mcpResponseTransform: MessageTransform | null
    /**
     * tool-filter, for a list request (tools/list, resources/list, …): its answer is forwarded
     * only once read whole and filtered, and only with exactly this id.
     */
    mcpListAnswer: { readonly id: JsonRpcId } | null
  }
}

/**
 * Puts one member on `app.mcpWarden` (creating the namespace on first use). A member provided
 * twice means a plugin was registered twice on one instance: refused, naming it.
 */
export function provide<K extends keyof McpWarden> (app: FastifyInstance, key: K, value: McpWarden[K]): void {
  if (!app.hasDecorator('mcpWarden')) app.decorate('mcpWarden', Object.create(null) as McpWarden)
  const ns = app.mcpWarden as Partial<McpWarden>
  if (Object.hasOwn(ns, key)) throw new Error(`app.mcpWarden.${key} is already set: is the plugin that provides it registered twice?`)
  ns[key] = value
}

/** The request fields a stage writes for the proxy, which every plugin that writes one declares. */
export type SharedRequestField = 'upstreamAuth' | 'mcpResponseTransform' | 'mcpListAnswer'

/**
 * Declares request fields several plugins write (the credential plugins and the proxy
 * `upstreamAuth`, the tool filter and the proxy the response fields): the first plugin
 * registered declares them, the others find them declared.
 */
export function declareShared (app: FastifyInstance, ...names: SharedRequestField[]): void {
  for (const name of names) if (!app.hasRequestDecorator(name)) app.decorateRequest(name, null)
}

/** A member of `app.mcpWarden`, or undefined while the plugin that provides it is not registered. */
export function provided<K extends keyof McpWarden> (app: FastifyInstance, key: K): McpWarden[K] | undefined {
  return app.hasDecorator('mcpWarden') ? (app.mcpWarden as Partial<McpWarden>)[key] : undefined
}
