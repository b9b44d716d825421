/**
 * Checks of JSON text, on its bytes before parsing (how much it holds, keys that parsers read
 * differently) and on the parsed value (depth, Unicode, numbers). No MCP here: lib/jsonrpc.ts
 * applies them to each message.
 */

/** Deepest nesting of objects and arrays a message may have (DESIGN §4). */
export const MAX_JSON_DEPTH = 64

/** True when the string is well-formed Unicode (no lone surrogate). */
export function isWellFormedText (s: string): boolean {
  return (s as unknown as { isWellFormed: () => boolean }).isWellFormed()
}

/** Most object members (keys, counted over the whole message) a message may have (limits.maxJsonKeys). */
export const MAX_JSON_KEYS = 10_000
/**
 * Most values a message may hold (limits.maxJsonValues): every member's value and every array
 * element, containers and scalars alike, counted over the whole message.
 */
export const MAX_JSON_VALUES = 50_000

/** How much a JSON text holds, as counted on its bytes by {@link jsonShape}. */
export interface JsonShape {
  /** Object members (`"key": value`). */
  members: number
  /** Values other than the outermost one: each member's value and each array element. */
  values: number
  /** The deepest nesting of objects and arrays (the outermost one is level 1). */
  depth: number
}

/**
 * Counts the object members, the values and the nesting depth of a JSON text on its bytes, in
 * one pass and without parsing it, so that no body makes the parser build a huge or deep value.
 * Outside strings, a `:` is one member; a `,` is one more value of its container, and so is
 * the first thing after a `{` or `[` that does not close it; `{` and `[` open a level. Inside
 * strings nothing counts: a string ends at the next quote not escaped by a backslash (quotes and
 * backslashes are ASCII, so UTF-8 continuation bytes never look like them). Stops as soon as one
 * count is past its limit. Malformed text is counted all the same: the parser refuses it afterwards.
 */
export function jsonShape (raw: Uint8Array, limits: { maxKeys?: number, maxValues?: number, maxDepth?: number } = {}): JsonShape {
  const maxKeys = limits.maxKeys ?? Infinity
  const maxValues = limits.maxValues ?? Infinity
  const maxDepth = limits.maxDepth ?? Infinity
  let members = 0
  let values = 0
  let level = 0
  let depth = 0
  // Just after `{` or `[`: the next byte other than whitespace is a first value, or a close.
  let opened = false
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!
    if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) continue
    if (opened) {
      opened = false
      if (c !== 0x7d && c !== 0x5d && ++values > maxValues) return { members, values, depth }
    }
    switch (c) {
      case 0x22: i = stringEnd(raw, i); break
      case 0x3a: if (++members > maxKeys) return { members, values, depth }; break
      case 0x2c: if (++values > maxValues) return { members, values, depth }; break
      case 0x7b: case 0x5b:
        opened = true
        if (++level > depth) {
          depth = level
          if (depth > maxDepth) return { members, values, depth }
        }
        break
      case 0x7d: case 0x5d: if (level > 0) level--; break
    }
  }
  return { members, values, depth }
}

/**
 * The index of the quote that closes the string opened at `start` (raw.length when none does):
 * the next quote not escaped, i.e. not preceded by an odd run of backslashes. Found with
 * indexOf, so long strings cost little; each backslash run is looked at once.
 */
function stringEnd (raw: Uint8Array, start: number): number {
  let from = start + 1
  for (;;) {
    const q = raw.indexOf(0x22, from)
    if (q === -1) return raw.length
    let k = q - 1
    while (raw[k] === 0x5c) k--
    if ((q - 1 - k) % 2 === 0) return q
    from = q + 1
  }
}

/** Characters some parsers drop or stop at in a key: controls (NUL above all), format characters, BOM. */
const IGNORABLE_IN_KEY = /[\p{Cc}\p{Cf}]/gu
const ASCII_PLAIN_KEY = /^[\x20-\x21\x23-\x5b\x5d-\x7e]*$/
const CONTROL_IN_KEY = /\p{Cc}/u

/**
 * A key as parsers that are lenient about names would read it: Unicode-normalised (NFKC),
 * without format characters, and case-folded character by character the way simple case
 * folding does (upper then lower where that keeps one character: ς, ſ and K fold like σ, s and
 * k; ß stays ß, as Go's EqualFold has it).
 */
export function foldKey (key: string): string {
  if (ASCII_PLAIN_KEY.test(key)) return key.toLowerCase()
  let out = ''
  for (const ch of key.normalize('NFKC').replace(IGNORABLE_IN_KEY, '')) {
    const upper = ch.toUpperCase()
    out += (upper.length === ch.length ? upper : ch).toLowerCase()
  }
  return out
}

/**
 * Two keys of one object that parsers can take for one another: the same key twice (JSON.parse
 * keeps the last, others the first), or keys that differ only in case, Unicode form or ignorable
 * characters (`name` and `Name`: Go's encoding/json reads both as the field `name`, the last one
 * winning). Either way the gateway would decide on one reading and the upstream act on another,
 * so such a message is refused. Scanned on the bytes (objects of a message bounded by
 * limits.maxJsonKeys); returns the two keys and the path of their object, or null.
 */
export function keyCollision (raw: Uint8Array): { first: string, second: string, path: string } | { control: string, path: string } | null {
  const buf = Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)
  // Per open container: an object's keys by their folded form (null for an array), and its name.
  const keys: Array<Map<string, string> | null> = []
  const names: string[] = []
  const path = (): string => names.slice(1).join('.')
  let pendingKey = ''
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i]!
    if (c === 0x22) {
      const end = stringEnd(buf, i)
      const top = keys[keys.length - 1]
      // A string directly inside an object and followed by ':' is a key.
      if (top !== undefined && top !== null) {
        let j = end + 1
        while (j < buf.length && (buf[j] === 0x20 || buf[j] === 0x0a || buf[j] === 0x0d || buf[j] === 0x09)) j++
        if (buf[j] === 0x3a) {
          let plain = true
          for (let k = i + 1; k < end; k++) if (buf[k]! >= 0x80 || buf[k] === 0x5c) { plain = false; break }
          let key: string
          let folded: string
          if (plain) {
            key = buf.toString('latin1', i + 1, end)
            folded = key.toLowerCase()
          } else {
            try { key = JSON.parse(`"${buf.toString('utf8', i + 1, end)}"`) as string } catch { return null }
            // A control character in a key (a NUL above all, where C-based parsers end the key)
            // makes it read as another key by some parser: never a key of a message.
            if (CONTROL_IN_KEY.test(key)) return { control: key, path: path() }
            folded = foldKey(key)
          }
          const seen = top.get(folded)
          if (seen !== undefined) return { first: seen, second: key, path: path() }
          top.set(folded, key)
          pendingKey = key
        }
      }
      i = end
    } else if (c === 0x7b || c === 0x5b) {
      keys.push(c === 0x7b ? new Map() : null)
      names.push(pendingKey)
      pendingKey = ''
    } else if (c === 0x7d || c === 0x5d) {
      keys.pop()
      names.pop()
      pendingKey = ''
    } else if (c === 0x2c) {
      pendingKey = ''
    }
  }
  return null
}

type Problem = { kind: 'depth' | 'unicode' | 'number', message: string }
const UNICODE: Problem = { kind: 'unicode', message: 'a string is not well-formed Unicode (it holds a lone surrogate, e.g. "\\ud800")' }
const UNICODE_KEY: Problem = { kind: 'unicode', message: 'a key is not well-formed Unicode (it holds a lone surrogate)' }
const NUMBER: Problem = { kind: 'number', message: 'a number is out of range (JSON numbers must be finite, e.g. not 1e400)' }

/** A primitive's problem (a string with a lone surrogate, a non-finite number), or null. */
function primitiveProblem (v: unknown): Problem | null {
  if (typeof v === 'string') return isWellFormedText(v) ? null : UNICODE
  if (typeof v === 'number') return Number.isFinite(v) ? null : NUMBER
  return null
}

/**
 * What makes a parsed JSON value unfit to act on, or null: nesting deeper than `maxDepth`, a
 * string or key that is not well-formed Unicode, or a number that is not finite. Iterative, so
 * no input can exhaust the stack; primitives are checked in place and only containers are queued.
 */
export function jsonValueProblem (value: unknown, maxDepth = MAX_JSON_DEPTH): Problem | null {
  if (value === null || typeof value !== 'object') return primitiveProblem(value)
  const queue: object[] = [value]
  const depths: number[] = [0]
  while (queue.length > 0) {
    const v = queue.pop()!
    const depth = depths.pop()!
    if (depth >= maxDepth) return { kind: 'depth', message: `the JSON is nested deeper than ${maxDepth} levels` }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const x: unknown = v[i]
        if (x !== null && typeof x === 'object') { queue.push(x); depths.push(depth + 1); continue }
        const p = primitiveProblem(x)
        if (p !== null) return p
      }
    } else {
      const o = v as Record<string, unknown>
      for (const k of Object.keys(o)) {
        if (!isWellFormedText(k)) return UNICODE_KEY
        const x = o[k]
        if (x !== null && typeof x === 'object') { queue.push(x); depths.push(depth + 1); continue }
        const p = primitiveProblem(x)
        if (p !== null) return p
      }
    }
  }
  return null
}
