/**
 * Tool arguments in Cedar: a tool's JSON Schema `inputSchema` becomes a Cedar record
 * type (for the generated per-tool action's `context.arguments`), and a tools/call's
 * arguments become a Cedar value of that type.
 *
 * Mapping: string → String; integer → Long; number → decimal (at most 4 fraction
 * digits, rounded); boolean → Bool; array with typed items → Set; object with
 * properties → Record (properties in `required` are required). Properties whose type
 * has no Cedar counterpart (unions, null, untyped, free-form objects) are left out of
 * the type and of the value, so policies cannot depend on them.
 */
export type CedarType =
  | { type: 'String' } | { type: 'Long' } | { type: 'Boolean' }
  | { type: 'Extension', name: 'decimal' }
  | { type: 'Set', element: CedarType }
  | { type: 'Record', attributes: Record<string, CedarType & { required?: boolean }> }

type Json = null | boolean | number | string | Json[] | { [k: string]: Json }

export class ArgumentMismatchError extends Error {
  constructor (readonly path: string, expected: string) {
    super(`${path === '' ? 'arguments' : `arguments.${path}`} must be ${expected}`)
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)
const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/

/** The Cedar type of a JSON Schema, or undefined when it has none. */
export function cedarTypeOf (schema: unknown): CedarType | undefined {
  if (!isObject(schema)) return undefined
  const type = schema.type
  switch (type) {
    case 'string': return { type: 'String' }
    case 'integer': return { type: 'Long' }
    case 'number': return { type: 'Extension', name: 'decimal' }
    case 'boolean': return { type: 'Boolean' }
    case 'array': {
      const element = cedarTypeOf(schema.items)
      return element === undefined ? undefined : { type: 'Set', element }
    }
    case 'object': return recordTypeOf(schema)
    default: return undefined
  }
}

/** The Cedar record type of an object JSON Schema (an inputSchema). */
export function recordTypeOf (schema: unknown): { type: 'Record', attributes: Record<string, CedarType & { required?: boolean }> } | undefined {
  if (!isObject(schema) || !isObject(schema.properties)) return undefined
  const required = new Set(Array.isArray(schema.required) ? schema.required.filter((r): r is string => typeof r === 'string') : [])
  const attributes: Record<string, CedarType & { required?: boolean }> = {}
  for (const [name, prop] of Object.entries(schema.properties)) {
    if (!IDENT.test(name)) continue
    const t = cedarTypeOf(prop)
    if (t !== undefined) attributes[name] = required.has(name) ? t : { ...t, required: false }
  }
  return { type: 'Record', attributes }
}

function decimal (n: number, path: string): Json {
  if (!Number.isFinite(n) || Math.abs(n) > 922337203685477) throw new ArgumentMismatchError(path, 'a number within the decimal range')
  // Cedar's decimal has four fraction digits: a number with more is refused, never rounded (1000.00004
  // rounded would slip under a "greater than 1000" rule).
  if (Number(n.toFixed(4)) !== n) throw new ArgumentMismatchError(path, 'a number with at most 4 decimal places')
  let s = n.toFixed(4).replace(/0+$/, '').replace(/\.$/, '.0')
  if (!s.includes('.')) s += '.0'
  return { __extn: { fn: 'decimal', arg: s } } as unknown as Json
}

/** Converts a value to the Cedar JSON value of a type; throws ArgumentMismatchError. */
export function toCedarValue (value: unknown, type: CedarType, path = ''): Json {
  switch (type.type) {
    case 'String':
      if (typeof value !== 'string') throw new ArgumentMismatchError(path, 'a string')
      return value
    case 'Long':
      if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new ArgumentMismatchError(path, 'an integer')
      return value
    case 'Boolean':
      if (typeof value !== 'boolean') throw new ArgumentMismatchError(path, 'a boolean')
      return value
    case 'Extension':
      if (typeof value !== 'number') throw new ArgumentMismatchError(path, 'a number')
      return decimal(value, path)
    case 'Set':
      if (!Array.isArray(value)) throw new ArgumentMismatchError(path, 'an array')
      return value.map((v, i) => toCedarValue(v, type.element, `${path}[${i}]`))
    case 'Record': {
      if (!isObject(value)) throw new ArgumentMismatchError(path, 'an object')
      const out: Record<string, Json> = {}
      for (const [name, attr] of Object.entries(type.attributes)) {
        const sub = path === '' ? name : `${path}.${name}`
        if (!Object.hasOwn(value, name) || value[name] === undefined) {
          if (attr.required !== false) throw new ArgumentMismatchError(sub, 'present')
          continue
        }
        out[name] = toCedarValue(value[name], attr, sub)
      }
      return out
    }
  }
}

/**
 * A type read back from a Cedar JSON schema (`{ type: 'EntityOrCommon', name: '__cedar::Long' }`
 * and the like) as a CedarType; undefined for types that tool arguments never use.
 */
export function normaliseType (t: unknown): CedarType | undefined {
  if (!isObject(t)) return undefined
  const required = t.required === false ? { required: false } : {}
  let type = t.type
  let name = typeof t.name === 'string' ? t.name.replace(/^__cedar::/, '') : undefined
  if (type === 'EntityOrCommon' || type === 'Extension') { type = name; name = undefined }
  switch (type) {
    case 'String': return { type: 'String', ...required }
    case 'Long': return { type: 'Long', ...required }
    case 'Bool': case 'Boolean': return { type: 'Boolean', ...required }
    case 'decimal': return { type: 'Extension', name: 'decimal', ...required }
    case 'Set': {
      const element = normaliseType(t.element)
      return element === undefined ? undefined : { type: 'Set', element, ...required }
    }
    case 'Record': {
      const attributes: Record<string, CedarType & { required?: boolean }> = {}
      for (const [k, v] of Object.entries(isObject(t.attributes) ? t.attributes : {})) {
        const n = normaliseType(v)
        if (n !== undefined) attributes[k] = n
      }
      return { type: 'Record', attributes, ...required }
    }
    default: return undefined
  }
}
