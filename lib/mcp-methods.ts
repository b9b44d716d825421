/**
 * The one table of MCP methods: for each method of the specification, the Cedar action that
 * decides it, the parameter that names its target (tool, resource or prompt), the scope an
 * ephemeral token for it carries, and whether it lists targets. The parser, the token binding,
 * the Cedar mapping, the list filter, the era checks and `/mcp` all read it, so they cannot
 * disagree about a method.
 */

/** The Cedar actions of the schema (`Mcp::Action::"…"`). */
export type CedarAction = 'connect' | 'call_tool' | 'read_resource' | 'get_prompt'

/** What a method acts on. */
export type TargetKind = 'tool' | 'resource' | 'prompt'

/** A method that acts on one named target. */
export interface TargetSpec {
  readonly kind: TargetKind
  /** The `params` member holding the target: `name` (tools, prompts) or `uri` (resources). */
  readonly param: 'name' | 'uri'
  /** Whether the 2026-07-28 era requires the target in the `Mcp-Name` header. */
  readonly nameHeader: boolean
}

/** A method whose answer lists targets. */
export interface ListSpec {
  readonly kind: TargetKind
  /** The member of the result holding the list. */
  readonly key: 'tools' | 'resources' | 'resourceTemplates' | 'prompts'
  /** The member of each item that names it (what the target method's `param` carries). */
  readonly itemKey: 'name' | 'uri' | 'uriTemplate'
}

export interface MethodSpec {
  readonly action: CedarAction
  readonly target?: TargetSpec
  readonly list?: ListSpec
}

/** The Cedar action for calls of each target kind. */
export const TARGET_ACTION: Readonly<Record<TargetKind, CedarAction>> = {
  tool: 'call_tool',
  resource: 'read_resource',
  prompt: 'get_prompt'
}

const CONNECT: MethodSpec = { action: 'connect' }
const tool: TargetSpec = { kind: 'tool', param: 'name', nameHeader: true }
const prompt: TargetSpec = { kind: 'prompt', param: 'name', nameHeader: true }
const resource = (nameHeader: boolean): TargetSpec => ({ kind: 'resource', param: 'uri', nameHeader })

/** Every method of the MCP specification (requests and notifications, both directions). */
export const METHOD_TABLE: Readonly<Record<string, MethodSpec>> = Object.freeze({
  initialize: CONNECT,
  ping: CONNECT,
  'completion/complete': CONNECT,
  'logging/setLevel': CONNECT,
  'tools/list': { action: 'connect', list: { kind: 'tool', key: 'tools', itemKey: 'name' } },
  'tools/call': { action: 'call_tool', target: tool },
  'resources/list': { action: 'connect', list: { kind: 'resource', key: 'resources', itemKey: 'uri' } },
  'resources/templates/list': { action: 'connect', list: { kind: 'resource', key: 'resourceTemplates', itemKey: 'uriTemplate' } },
  'resources/read': { action: 'read_resource', target: resource(true) },
  'resources/subscribe': { action: 'read_resource', target: resource(false) },
  'resources/unsubscribe': { action: 'read_resource', target: resource(false) },
  'prompts/list': { action: 'connect', list: { kind: 'prompt', key: 'prompts', itemKey: 'name' } },
  'prompts/get': { action: 'get_prompt', target: prompt },
  'sampling/createMessage': CONNECT,
  'elicitation/create': CONNECT,
  'roots/list': CONNECT,
  'tasks/get': CONNECT,
  'tasks/result': CONNECT,
  'tasks/list': CONNECT,
  'tasks/cancel': CONNECT,
  'notifications/initialized': CONNECT,
  'notifications/cancelled': CONNECT,
  'notifications/progress': CONNECT,
  'notifications/message': CONNECT,
  'notifications/resources/updated': CONNECT,
  'notifications/resources/list_changed': CONNECT,
  'notifications/tools/list_changed': CONNECT,
  'notifications/prompts/list_changed': CONNECT,
  'notifications/roots/list_changed': CONNECT,
  'notifications/elicitation/complete': CONNECT,
  'notifications/tasks/status': CONNECT
} satisfies Record<string, MethodSpec>)

/**
 * The method names of the MCP specification: the bounded set metric labels are drawn from
 * (anything else is `other`).
 */
export const MCP_METHODS: ReadonlySet<string> = new Set(Object.keys(METHOD_TABLE))

/** The spec of a method; a method outside the specification is decided as `connect`. */
export function methodSpec (method: string): MethodSpec {
  return Object.hasOwn(METHOD_TABLE, method) ? METHOD_TABLE[method]! : CONNECT
}

/** The methods that list each target kind, in the order a caller's catalog is read. */
export const LIST_METHODS_OF: Readonly<Record<TargetKind, readonly string[]>> = Object.freeze(
  Object.entries(METHOD_TABLE).reduce<Record<TargetKind, string[]>>((acc, [name, spec]) => {
    if (spec.list !== undefined) acc[spec.list.kind].push(name)
    return acc
  }, { tool: [], resource: [], prompt: [] })
)

/** The method that acts on one target of a kind (tools/call, resources/read, prompts/get). */
export const CALL_METHOD_OF: Readonly<Record<TargetKind, string>> = {
  tool: 'tools/call',
  resource: 'resources/read',
  prompt: 'prompts/get'
}

/** The ephemeral-token scope of a message on a target, or of any other method. */
export function scopeFor (method: string, target: string | undefined): string {
  const t = methodSpec(method).target
  return t === undefined ? `mcp:${method}` : `${t.kind}:${target ?? ''}`
}

/** The lists of the table (tools/list, resources/list, …), in table order. */
export const LISTS: readonly ListSpec[] = Object.values(METHOD_TABLE).flatMap(s => s.list !== undefined ? [s.list] : [])

/** The Cedar action, method and target member of a call of one target: what a list item is decided as. */
export function targetRequest (kind: TargetKind, name: string): { action: CedarAction, method: string, tool?: string, uri?: string, prompt?: string } {
  const base = { action: TARGET_ACTION[kind], method: CALL_METHOD_OF[kind] }
  return kind === 'tool' ? { ...base, tool: name } : kind === 'prompt' ? { ...base, prompt: name } : { ...base, uri: name }
}
