/**
 * What an ephemeral token is bound to: the scope of one MCP message and the hash of that
 * exact message. The gateway (minting) and the upstream verifier (checking) both derive
 * them from the message with this one function, so they cannot disagree.
 *
 * - tools/call → `tool:<name>`; resources/read|subscribe|unsubscribe → `resource:<uri>`;
 *   prompts/get → `prompt:<name>`; any other request or notification → `mcp:<method>`;
 *   a response to a server request → `mcp:response`; a GET stream or DELETE → `mcp:GET` / `mcp:DELETE`.
 * - `call_sha256` = base64url(SHA-256(RFC 8785 canonical JSON of `{method, params}`)),
 *   `params` left out when the message has none; for a response, of `{id, result}` or
 *   `{id, error}`; for GET/DELETE, of `{method: "GET"}` / `{method: "DELETE"}`.
 */
import { createHash } from 'node:crypto'
import { canonicalize } from 'json-canonicalize'
import { methodSpec, scopeFor } from '../mcp-methods.js'

export interface MessageBinding {
  readonly scope: string
  readonly callSha256: string
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)

/** Base64url SHA-256 of the canonical JSON of a value. */
export function canonicalHash (value: unknown): string {
  return createHash('sha256').update(canonicalize(value)).digest('base64url')
}

function scopeOf (method: string, params: unknown): string {
  const target = methodSpec(method).target
  if (target === undefined) return scopeFor(method, undefined)
  const v = isObject(params) ? params[target.param] : undefined
  return scopeFor(method, typeof v === 'string' ? v : '')
}

/**
 * The binding of an HTTP request's MCP message. `message` is the parsed JSON-RPC body
 * (for POST); other HTTP methods carry none.
 */
export function messageBinding (httpMethod: string, message?: unknown): MessageBinding {
  if (httpMethod !== 'POST') return { scope: `mcp:${httpMethod}`, callSha256: canonicalHash({ method: httpMethod }) }
  if (!isObject(message)) throw new Error('a POST carries one JSON-RPC message')
  if (typeof message.method === 'string') {
    const hashed = message.params === undefined ? { method: message.method } : { method: message.method, params: message.params }
    return { scope: scopeOf(message.method, message.params), callSha256: canonicalHash(hashed) }
  }
  const hashed = Object.hasOwn(message, 'error') ? { id: message.id, error: message.error } : { id: message.id, result: message.result }
  return { scope: 'mcp:response', callSha256: canonicalHash(hashed) }
}
