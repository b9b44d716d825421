/**
 * JSON-RPC 2.0 / MCP message parsing and classification (no Fastify).
 *
 * One HTTP body carries one JSON-RPC message: a request, a notification or a
 * response (a client answering a server's sampling or elicitation request).
 * Batches are refused. The raw bytes are kept so that exactly what was checked
 * is what is forwarded.
 */
import sjson from 'secure-json-parse'
import { methodSpec } from './mcp-methods.js'
import { foldKey, isWellFormedText, jsonShape, jsonValueProblem, keyCollision, MAX_JSON_DEPTH, MAX_JSON_KEYS, MAX_JSON_VALUES } from './json-text.js'
import { BatchError, HeaderMismatchError, InvalidMessageError, ParseError } from './errors.js'

export type JsonRpcId = string | number

interface MessageBase {
  /** The request id; null for notifications. */
  readonly id: JsonRpcId | null
  readonly params: Readonly<Record<string, unknown>> | undefined
  /** The parsed message. */
  readonly message: Readonly<Record<string, unknown>>
  /** The bytes as received. */
  readonly raw: Buffer
}

/** A request or notification of a method that acts on one tool (tools/call). */
export interface ToolCallMessage extends MessageBase {
  readonly kind: 'request' | 'notification'
  readonly target: 'tool'
  readonly method: 'tools/call'
  readonly tool: string
  readonly arguments?: Readonly<Record<string, unknown>>
  readonly uri?: undefined
  readonly prompt?: undefined
}

/** A request or notification of a method that acts on one resource (resources/read, …). */
export interface ResourceMessage extends MessageBase {
  readonly kind: 'request' | 'notification'
  readonly target: 'resource'
  readonly method: 'resources/read' | 'resources/subscribe' | 'resources/unsubscribe'
  readonly uri: string
  readonly tool?: undefined
  readonly arguments?: undefined
  readonly prompt?: undefined
}

/** A request or notification of a method that acts on one prompt (prompts/get). */
export interface PromptMessage extends MessageBase {
  readonly kind: 'request' | 'notification'
  readonly target: 'prompt'
  readonly method: 'prompts/get'
  readonly prompt: string
  readonly tool?: undefined
  readonly arguments?: undefined
  readonly uri?: undefined
}

/** A request or notification of any other method (lists, initialize, notifications, unknown methods). */
export interface MethodMessage extends MessageBase {
  readonly kind: 'request' | 'notification'
  readonly target: null
  readonly method: string
  readonly tool?: undefined
  readonly arguments?: undefined
  readonly uri?: undefined
  readonly prompt?: undefined
}

/** A response (a client answering a server's request). */
export interface ResponseMessage extends MessageBase {
  readonly kind: 'response'
  readonly id: JsonRpcId
  readonly target: null
  readonly method: null
  readonly params: undefined
  readonly tool?: undefined
  readonly arguments?: undefined
  readonly uri?: undefined
  readonly prompt?: undefined
}

/**
 * One classified MCP message, discriminated by `target` (the kind of thing its method acts on,
 * from the method table of lib/mcp-methods.ts) and `kind`: `m.target === 'tool'` makes `m.tool`
 * a string, `m.kind === 'response'` makes `m.method` null.
 */
export type McpMessage = ToolCallMessage | ResourceMessage | PromptMessage | MethodMessage | ResponseMessage

/** True when a Content-Type names no charset or UTF-8: the only encoding a body is checked as. */
export function utf8Charset (contentType: string | undefined): boolean {
  const m = /;\s*charset\s*=\s*"?([^";\s]*)"?/i.exec(contentType ?? '')
  return m === null || /^utf-?8$/i.test(m[1]!)
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

const isObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v)

const METHOD_NAME = /^[\x21-\x7e]{1,128}$/
/** Whitespace or a control character: never part of a tool or prompt name. */
const NAME_BREAK = /[\s\p{Cc}\p{Cf}]/u

function requireString (params: Record<string, unknown> | undefined, key: string, method: string): string {
  const v = params?.[key]
  if (typeof v !== 'string' || v === '') throw new InvalidMessageError(`${method} needs params.${key} as a non-empty string`)
  return v
}

function requireName (params: Record<string, unknown> | undefined, key: string, method: string): string {
  const v = requireString(params, key, method)
  if (NAME_BREAK.test(v)) throw new InvalidMessageError(`${method} params.${key} must not contain whitespace or control characters, not ${JSON.stringify(v.slice(0, 64))}`)
  return v
}

/** The members of a JSON-RPC message, and of an MCP request's params, the gateway reads. */
const MESSAGE_MEMBERS = ['jsonrpc', 'id', 'method', 'params', 'result', 'error']
const PARAMS_MEMBERS = ['name', 'uri', 'arguments', 'cursor', '_meta']
const foldedMembers = (members: string[]): Map<string, string> => new Map(members.map(m => [foldKey(m), m]))
const FOLDED_MESSAGE_MEMBERS = foldedMembers(MESSAGE_MEMBERS)
const FOLDED_PARAMS_MEMBERS = foldedMembers(PARAMS_MEMBERS)

/**
 * A key spelled like one of these members but not as it (`Method`, `Arguments`, `paramſ`): the
 * gateway reads only the exact name, parsers that match names loosely (Go's encoding/json) take
 * it for the member. Returns the key and the member, or undefined.
 */
function looseMember (o: Record<string, unknown>, members: ReadonlyMap<string, string>): { key: string, member: string } | undefined {
  for (const key of Object.keys(o)) {
    const member = members.get(foldKey(key))
    if (member !== undefined && member !== key) return { key, member }
  }
  return undefined
}

/**
 * A message as JSON-RPC defines it, with only its members (a request or notification: jsonrpc,
 * id, method, params; a response: jsonrpc, id and one of result and error), or undefined for
 * anything else. What the gateway passes on of an upstream's messages.
 */
export function jsonRpcMessage (m: unknown): Record<string, unknown> | undefined {
  if (!isObject(m) || m.jsonrpc !== '2.0') return undefined
  if (typeof m.method === 'string') {
    return { jsonrpc: '2.0', ...(Object.hasOwn(m, 'id') ? { id: m.id } : {}), method: m.method, ...(m.params !== undefined ? { params: m.params } : {}) }
  }
  const hasResult = Object.hasOwn(m, 'result')
  if (hasResult === Object.hasOwn(m, 'error')) return undefined
  return hasResult ? { jsonrpc: '2.0', id: m.id ?? null, result: m.result } : { jsonrpc: '2.0', id: m.id ?? null, error: m.error }
}

/** Parses and classifies one MCP message; throws ParseError, BatchError or InvalidMessageError. */
export function parseMcpMessage (raw: Buffer, opts: { maxKeys?: number, maxValues?: number } = {}): McpMessage {
  let id: JsonRpcId | null = null
  try {
    return classify(raw, opts.maxKeys ?? MAX_JSON_KEYS, opts.maxValues ?? MAX_JSON_VALUES, (v) => { id = v })
  } catch (err) {
    // A refusal answers the request's id when it could be read.
    if (id !== null && err !== null && typeof err === 'object') (err as { rpcId?: JsonRpcId }).rpcId = id
    throw err
  }
}

function classify (raw: Buffer, maxKeys: number, maxValues: number, seeId: (id: JsonRpcId) => void): McpMessage {
  if (raw.length === 0) throw new ParseError('the request body is empty; send one JSON-RPC message')
  // Counted on the bytes before parsing (one linear pass), so that no body makes the parser
  // build a huge or deep value: parsing 1 MiB of `[],[],…` or `[[[…` took hundreds of ms.
  const shape = jsonShape(raw, { maxKeys, maxValues, maxDepth: MAX_JSON_DEPTH })
  if (shape.depth > MAX_JSON_DEPTH) throw new InvalidMessageError(`the JSON is nested deeper than ${MAX_JSON_DEPTH} levels`)
  if (shape.members > maxKeys) throw new InvalidMessageError(`the JSON has more than ${maxKeys} object members (keys) in all (limits.maxJsonKeys)`)
  if (shape.values > maxValues) throw new InvalidMessageError(`the JSON has more than ${maxValues} values (members' values and array elements) in all (limits.maxJsonValues)`)
  let text: string
  try {
    text = utf8.decode(raw)
  } catch {
    throw new ParseError('the body is not valid UTF-8')
  }
  let data: unknown
  try {
    data = sjson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' })
  } catch (err) {
    throw new ParseError(`the body is not valid JSON (${(err as Error).message})`)
  }
  const collision = keyCollision(raw)
  if (collision !== null) {
    const where = collision.path !== '' ? ` (in ${collision.path.slice(0, 128)})` : ''
    throw new InvalidMessageError('control' in collision
      ? `the key ${JSON.stringify(collision.control.slice(0, 64))}${where} holds a control character; parsers disagree on where such a key ends`
      : `the JSON has the keys ${JSON.stringify(collision.first.slice(0, 64))} and ${JSON.stringify(collision.second.slice(0, 64))} in one object${where}; parsers disagree on which one counts, so send each key once`)
  }
  const problem = jsonValueProblem(data)
  if (problem !== null) {
    if (isObject(data) && (typeof data.id === 'string' || typeof data.id === 'number') && (typeof data.id !== 'string' || isWellFormedText(data.id))) seeId(data.id)
    throw problem.kind === 'depth' ? new InvalidMessageError(problem.message) : new ParseError(problem.message)
  }
  if (Array.isArray(data)) throw new BatchError()
  if (!isObject(data)) throw new InvalidMessageError('the body must be a JSON-RPC 2.0 object')
  const loose = looseMember(data, FOLDED_MESSAGE_MEMBERS) ?? (isObject(data.params) ? looseMember(data.params, FOLDED_PARAMS_MEMBERS) : undefined)
  if (loose !== undefined) throw new InvalidMessageError(`${JSON.stringify(loose.key.slice(0, 64))} is not ${JSON.stringify(loose.member)}: member names are exact, and parsers that match them loosely would read one where the gateway reads none`)
  if (data.jsonrpc !== '2.0') throw new InvalidMessageError('"jsonrpc" must be "2.0"')

  const hasId = Object.hasOwn(data, 'id')
  const id = data.id
  if (hasId && !(typeof id === 'string' || (typeof id === 'number' && Number.isInteger(id)))) {
    throw new InvalidMessageError('"id" must be a string or an integer')
  }
  if (hasId) seeId(id as JsonRpcId)
  const params = data.params
  if (params !== undefined && !isObject(params)) throw new InvalidMessageError('"params" must be an object')

  if (Object.hasOwn(data, 'method')) {
    const method = data.method
    if (typeof method !== 'string' || method === '') throw new InvalidMessageError('"method" must be a non-empty string')
    // A method name is printable ASCII without spaces ("tools/call " is not tools/call, and is
    // refused here rather than forwarded under a name nothing else agrees on).
    if (!METHOD_NAME.test(method)) throw new InvalidMessageError(`"method" must be a method name (printable ASCII, no spaces or control characters), not ${JSON.stringify(method.slice(0, 64))}`)
    if (Object.hasOwn(data, 'result') || Object.hasOwn(data, 'error')) {
      throw new InvalidMessageError('a message cannot have both "method" and "result"/"error"')
    }
    const base = { kind: hasId ? 'request' : 'notification', id: hasId ? id as JsonRpcId : null, params, message: data, raw } as const
    const target = methodSpec(method).target
    switch (target?.kind) {
      case 'tool': {
        const tool = requireName(params, target.param, method)
        const args = params?.arguments
        if (args !== undefined && !isObject(args)) throw new InvalidMessageError(`${method} params.arguments must be an object`)
        return { ...base, target: 'tool', method: method as ToolCallMessage['method'], tool, ...(args !== undefined ? { arguments: args } : {}) }
      }
      case 'resource':
        return { ...base, target: 'resource', method: method as ResourceMessage['method'], uri: requireString(params, target.param, method) }
      case 'prompt':
        return { ...base, target: 'prompt', method: method as PromptMessage['method'], prompt: requireName(params, target.param, method) }
      default:
        return { ...base, target: null, method }
    }
  }

  if (!hasId) throw new InvalidMessageError('a message needs "method" (request or notification) or "id" with "result"/"error" (response)')
  const hasResult = Object.hasOwn(data, 'result')
  const hasError = Object.hasOwn(data, 'error')
  if (hasResult === hasError) throw new InvalidMessageError('a response has exactly one of "result" and "error"')
  if (hasError && !isObject(data.error)) throw new InvalidMessageError('"error" must be an object')
  return { kind: 'response', id: id as JsonRpcId, target: null, method: null, params: undefined, message: data, raw }
}

/**
 * The 2026-07-28 protocol era's routing headers must say what the body says: `Mcp-Method`
 * the method, `Mcp-Name` the tool or prompt name or the resource URI. Checked before any
 * policy reads the message; throws HeaderMismatchError.
 */
export function checkRoutingHeaders (message: McpMessage, method: string | undefined, name: string | undefined): void {
  if (method !== undefined && method !== (message.method ?? '')) {
    throw new HeaderMismatchError('Mcp-Method', `the header says "${method.slice(0, 100)}", the body "${message.method ?? '(a response)'}"`)
  }
  if (name !== undefined) {
    const bodyName = message.tool ?? message.prompt ?? message.uri
    if (name !== bodyName) throw new HeaderMismatchError('Mcp-Name', `the header says "${name.slice(0, 200)}", the body ${bodyName === undefined ? 'names nothing' : `"${bodyName}"`}`)
  }
}

/** The first protocol version of the stateless era (per-request `_meta` envelope, routing headers). */
export const MODERN_ERA = '2026-07-28'
/** Where a 2026-07-28-era message names its protocol version. */
export const PROTOCOL_VERSION_META_KEY = 'io.modelcontextprotocol/protocolVersion'

/** Whether a protocol version belongs to the 2026-07-28 era or later. */
export function isModernVersion (version: string): boolean {
  return /^\d{4}-\d{2}-\d{2}$/.test(version) && version >= MODERN_ERA
}

/** The protocol version a message names in its `_meta` envelope (2026-07-28 era), if any. */
export function envelopeVersion (message: McpMessage): string | undefined {
  const meta = (message.params as { _meta?: unknown } | undefined)?._meta
  if (meta === null || typeof meta !== 'object') return undefined
  const v = (meta as Record<string, unknown>)[PROTOCOL_VERSION_META_KEY]
  return typeof v === 'string' ? v : undefined
}

/**
 * The protocol era of a POSTed message, checked before any policy reads it. A message whose
 * envelope names a 2026-07-28-era version must say so in `MCP-Protocol-Version` and carry
 * `Mcp-Method` (and `Mcp-Name` for a tool call, resource read or prompt), each agreeing with
 * the body; a header that names that era on a message without the envelope is refused too.
 * Older-era messages are checked only for the routing headers they do send.
 */
export function checkEra (message: McpMessage, headers: { version?: string, method?: string, name?: string }): void {
  if (message.kind !== 'response') {
    const claimed = envelopeVersion(message)
    const header = headers.version?.trim()
    if (claimed !== undefined && isModernVersion(claimed)) {
      if (header === undefined || header === '') throw new HeaderMismatchError('MCP-Protocol-Version', `it is required in protocol version ${claimed.slice(0, 20)}, which the body's _meta names`)
      if (header !== claimed) throw new HeaderMismatchError('MCP-Protocol-Version', `the header says "${header.slice(0, 20)}", the body's _meta "${claimed.slice(0, 20)}"`)
      if (headers.method === undefined) throw new HeaderMismatchError('Mcp-Method', `it is required in protocol version ${claimed.slice(0, 20)}`)
      if (headers.name === undefined && message.method !== null && methodSpec(message.method).target?.nameHeader === true) throw new HeaderMismatchError('Mcp-Name', `it is required for ${message.method ?? ''} in protocol version ${claimed.slice(0, 20)}`)
    } else if (header !== undefined && isModernVersion(header)) {
      throw new HeaderMismatchError('MCP-Protocol-Version', `the header says "${header.slice(0, 20)}", but the body has no _meta["${PROTOCOL_VERSION_META_KEY}"]${claimed !== undefined ? ` of that era (it says "${claimed.slice(0, 20)}")` : ''}`)
    }
  }
  checkRoutingHeaders(message, headers.method, headers.name)
}

/** A JSON-RPC error body. */
export function rpcError (id: JsonRpcId | null, code: number, message: string, data?: unknown): Record<string, unknown> {
  return { jsonrpc: '2.0', id, error: data === undefined ? { code, message } : { code, message, data } }
}
