/**
 * Every error mcp-warden sends to a client or raises at boot.
 *
 * Each HTTP-facing error carries a status code and a JSON-RPC error code; the
 * mcp-context plugin turns them into `{ jsonrpc: "2.0", id, error: { code, message } }`.
 * Messages are written for the person reading them: what is wrong and what to do.
 * They never contain tokens, secrets, stack traces or policy text.
 * docs/errors.md lists every code; a test keeps the two in step.
 */
import createError, { type FastifyErrorConstructor } from '@fastify/error'

/** JSON-RPC error codes used by the gateway (see docs/errors.md). */
export const RpcCode = Object.freeze({
  parseError: -32700,
  invalidRequest: -32600,
  methodNotFound: -32601,
  invalidParams: -32602,
  internalError: -32603,
  unauthorized: -32001,
  accessDenied: -32003,
  upstreamUnavailable: -32011,
  upstreamTimeout: -32012,
  upstreamRejected: -32013,
  unavailable: -32014,
  rateLimited: -32029,
  headerMismatch: -32020
})

export interface WardenError extends Error {
  code: string
  statusCode: number
  rpcCode: number
  /** JSON-RPC `error.data` (a refusal's decision id and policies). */
  data?: unknown
  /** What the audit record says, where it says more than the message an agent is shown. */
  reason?: string
  /** The audit outcome, where it is not what the status says (a refusal because the policy engine failed is an error). */
  outcome?: 'allow' | 'deny' | 'error'
}

type Ctor = FastifyErrorConstructor & { prototype: WardenError }

const registry = new Map<string, { statusCode: number, rpcCode: number }>()

function define (code: string, message: string, statusCode: number, rpcCode: number): Ctor {
  if (registry.has(code)) throw new Error(`duplicate error code ${code}`)
  registry.set(code, { statusCode, rpcCode })
  const E = createError(code, message, statusCode) as Ctor
  Object.defineProperty(E.prototype, 'rpcCode', { value: rpcCode, enumerable: false })
  return E
}

/** All codes defined here, with their status and JSON-RPC code. */
export function errorCatalog (): ReadonlyMap<string, { statusCode: number, rpcCode: number }> {
  return registry
}

// --- boot -----------------------------------------------------------------
export const ConfigError = define('MCPW_ERR_CONFIG_INVALID', 'Invalid configuration: %s', 500, RpcCode.internalError)
/** A plugin needs another one that the host did not register; the message says which to register. */
export const PluginMissingError = define('MCPW_ERR_PLUGIN_MISSING', '%s', 500, RpcCode.internalError)

// --- transport and message shape ---------------------------------------------
export const OriginForbiddenError = define('MCPW_ERR_ORIGIN_FORBIDDEN',
  'Origin %s is not allowed; add it to allowedOrigins if this browser app is trusted', 403, RpcCode.invalidRequest)
export const HostForbiddenError = define('MCPW_ERR_HOST_FORBIDDEN',
  'Host %s is not allowed: this gateway\'s public URL is a loopback address, so only loopback Host headers are accepted (DNS rebinding defence)', 403, RpcCode.invalidRequest)
export const UnknownServerError = define('MCPW_ERR_SERVER_UNKNOWN',
  'No MCP server named "%s" is configured on this gateway', 404, RpcCode.invalidRequest)
export const ParseError = define('MCPW_ERR_RPC_PARSE', 'Parse error: %s', 400, RpcCode.parseError)
export const InvalidMessageError = define('MCPW_ERR_RPC_INVALID', 'Invalid Request: %s', 400, RpcCode.invalidRequest)
export const BatchError = define('MCPW_ERR_RPC_BATCH',
  'Invalid Request: JSON-RPC batches are not accepted; send one message per HTTP request', 400, RpcCode.invalidRequest)
export const BodyTooLargeError = define('MCPW_ERR_BODY_TOO_LARGE',
  'Request body is larger than the %s-byte limit', 413, RpcCode.invalidRequest)
export const MediaTypeError = define('MCPW_ERR_MEDIA_TYPE',
  'Content-Type must be application/json (UTF-8, no other charset) for MCP messages', 415, RpcCode.invalidRequest)
export const HeaderMismatchError = define('MCPW_ERR_HEADER_MISMATCH',
  'Header %s does not match the message body: %s', 400, RpcCode.headerMismatch)
export const MethodNotAllowedError = define('MCPW_ERR_METHOD_NOT_ALLOWED',
  'HTTP method %s is not allowed on this endpoint', 405, RpcCode.invalidRequest)

// --- identity ----------------------------------------------------------------
export const TokenMissingError = define('MCPW_ERR_AUTH_MISSING',
  'Authentication required: send an agent token as "Authorization: Bearer <token>"', 401, RpcCode.unauthorized)
export const TokenInvalidError = define('MCPW_ERR_AUTH_INVALID', 'Invalid token: %s', 401, RpcCode.unauthorized)
export const TokenAudienceError = define('MCPW_ERR_AUTH_AUDIENCE',
  'Invalid token: its audience does not include %s; request a token for this resource (RFC 8707)', 401, RpcCode.unauthorized)
export const KeysUnavailableError = define('MCPW_ERR_AUTH_KEYS_UNAVAILABLE',
  'The identity provider\'s signing keys cannot be fetched right now; try again later', 503, RpcCode.unavailable)

// --- sessions ------------------------------------------------------------------
export const SessionNotFoundError = define('MCPW_ERR_SESSION_UNKNOWN',
  'Session not found: start a new session with an initialize request', 404, RpcCode.unauthorized)

// --- upstream --------------------------------------------------------------------
/**
 * The answer the gateway got when it listed an upstream's tools as the caller (its own chain's
 * refusal or the upstream's error), given to the caller's tool call as it is: message, JSON-RPC
 * code and status are that answer's.
 */
export const ListingAnswerError = define('MCPW_ERR_LISTING_ANSWER', '%s', 200, RpcCode.accessDenied)
export const UpstreamStatusError = define('MCPW_ERR_UPSTREAM_STATUS',
  'MCP server "%s" answered HTTP %s', 502, RpcCode.upstreamUnavailable)
export const UpstreamUnavailableError = define('MCPW_ERR_UPSTREAM_UNAVAILABLE',
  'MCP server "%s" is unreachable', 502, RpcCode.upstreamUnavailable)
export const UpstreamTimeoutError = define('MCPW_ERR_UPSTREAM_TIMEOUT',
  'MCP server "%s" did not answer in time', 504, RpcCode.upstreamTimeout)
export const UpstreamRejectedError = define('MCPW_ERR_UPSTREAM_REJECTED',
  'MCP server "%s" refused the gateway\'s credentials; the operator must check its auth settings', 502, RpcCode.upstreamRejected)
export const UpstreamProtocolError = define('MCPW_ERR_UPSTREAM_PROTOCOL',
  'MCP server "%s" answered with a session id that is bound to another principal; the answer was dropped', 502, RpcCode.upstreamUnavailable)

export const UpstreamAnswerError = define('MCPW_ERR_UPSTREAM_ANSWER',
  'MCP server "%s" sent an answer the gateway cannot accept (%s); nothing of it was forwarded', 502, RpcCode.upstreamUnavailable)
export const UpstreamTooLargeError = define('MCPW_ERR_UPSTREAM_TOO_LARGE',
  'MCP server "%s" answered with more than %s bytes (limits.maxResponseBytes); nothing of it was forwarded', 502, RpcCode.upstreamUnavailable)

// --- upstream credentials ------------------------------------------------------------
export const CredentialError = define('MCPW_ERR_UPSTREAM_CREDENTIAL',
  'The gateway could not obtain a credential for MCP server "%s"; the request was not forwarded', 503, RpcCode.unavailable)

// --- refusals of one MCP message --------------------------------------------------------
// Answered as a JSON-RPC error with HTTP 200 (the message was understood and refused), or with
// the status set on the error (403 where there is no message, a GET stream or a DELETE).
// Nothing is forwarded.

export const AccessDeniedError = define('MCPW_ERR_ACCESS_DENIED', 'Access denied: %s', 200, RpcCode.accessDenied)
/** A tool that does not exist, is hidden by policy, or is quarantined: the same answer for all three. */
export const UnknownToolError = define('MCPW_ERR_TOOL_UNKNOWN', 'Unknown tool: %s', 200, RpcCode.invalidParams)
export const ArgumentNameError = define('MCPW_ERR_ARGUMENT_NAME',
  'Invalid params: argument %s is not the tool\'s argument %s; send argument names exactly as the tool\'s input schema spells them', 200, RpcCode.invalidParams)
export const UnknownPromptError = define('MCPW_ERR_PROMPT_UNKNOWN', 'Unknown prompt: %s', 200, RpcCode.invalidParams)
export const ResourceNotFoundError = define('MCPW_ERR_RESOURCE_UNKNOWN', 'Resource not found: %s', 200, RpcCode.invalidParams)

/** A refusal with its audit reason, JSON-RPC data and, where it differs, its HTTP status. */
export function refusal<E extends Error> (error: E, extra: { reason?: string, data?: unknown, statusCode?: number, outcome?: 'allow' | 'deny' | 'error', rpcCode?: number }): E {
  const e = error as unknown as WardenError
  if (extra.reason !== undefined) e.reason = extra.reason
  if (extra.outcome !== undefined) e.outcome = extra.outcome
  if (extra.data !== undefined) e.data = extra.data
  if (extra.statusCode !== undefined) e.statusCode = extra.statusCode
  if (extra.rpcCode !== undefined) Object.defineProperty(e, 'rpcCode', { value: extra.rpcCode, enumerable: false })
  return error
}

// --- shared state and limits -------------------------------------------------------------
export const StoreUnavailableError = define('MCPW_ERR_STORE_UNAVAILABLE',
  'The gateway\'s shared store is unreachable; the request was not forwarded. Retry in a few seconds', 503, RpcCode.unavailable)
export const SessionLimitError = define('MCPW_ERR_SESSION_LIMIT',
  'Too many open sessions: this agent holds %s sessions on MCP server "%s" (limits.maxSessionsPerAgent); end one (DELETE) before opening another', 429, RpcCode.rateLimited)
export const ApprovalRateLimitError = define('MCPW_ERR_APPROVAL_RATE_LIMITED',
  'Too many approval requests: this agent asked for %s approvals within %s (approvals.rateLimit); retry after %s seconds', 429, RpcCode.rateLimited)
export const RateLimitedError = define('MCPW_ERR_RATE_LIMITED',
  'Rate limit exceeded: %s; retry after %s seconds', 429, RpcCode.rateLimited)
