/**
 * Puts trace context into a JSON-RPC message's `params._meta` on its bytes: the message the
 * upstream gets stays the bytes the gateway checked, with only `_meta.traceparent` (and
 * `_meta.tracestate`) set. Parsing and re-serialising would change numbers past 2^53, escapes and
 * spacing of the agent's own values; this edits nothing but those members.
 *
 * The text was parsed and checked before (lib/jsonrpc.ts: well-formed, one object, no
 * duplicate keys), so the scanner here can rely on it being valid JSON.
 */

const QUOTE = 0x22
const BACKSLASH = 0x5c

function isSpace (c: number | undefined): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d
}

function skipSpace (b: Uint8Array, i: number): number {
  while (isSpace(b[i])) i++
  return i
}

/** `b[i]` is a quote: the index after the string's closing quote. */
function skipString (b: Uint8Array, i: number): number {
  i++
  while (i < b.length) {
    const c = b[i]
    if (c === BACKSLASH) i += 2
    else if (c === QUOTE) return i + 1
    else i++
  }
  return b.length
}

/** The index after the value that starts at `i`. */
function skipValue (b: Uint8Array, i: number): number {
  const c = b[i]
  if (c === QUOTE) return skipString(b, i)
  if (c === 0x7b || c === 0x5b) {
    let depth = 0
    while (i < b.length) {
      const d = b[i]
      if (d === QUOTE) { i = skipString(b, i); continue }
      if (d === 0x7b || d === 0x5b) depth++
      else if (d === 0x7d || d === 0x5d) {
        depth--
        if (depth === 0) return i + 1
      }
      i++
    }
    return b.length
  }
  while (i < b.length && b[i] !== 0x2c && b[i] !== 0x7d && b[i] !== 0x5d && !isSpace(b[i])) i++
  return i
}

const decoder = new TextDecoder()

/** The key of the string at [start, end): plain ASCII read as it is, anything else decoded as JSON. */
function keyOf (b: Uint8Array, start: number, end: number): string {
  let key = ''
  for (let i = start + 1; i < end - 1; i++) {
    const c = b[i]!
    if (c === BACKSLASH || c >= 0x80) return JSON.parse(decoder.decode(b.subarray(start, end))) as string
    key += String.fromCharCode(c)
  }
  return key
}

interface ObjectView {
  /** Index just after the object's `{`. */
  readonly open: number
  readonly empty: boolean
  /** Each member's key and the [start, end) of its value. */
  readonly members: ReadonlyMap<string, readonly [number, number]>
}

/** The members of the object whose `{` is at `i`, when asked for by name only. */
function objectAt (b: Uint8Array, i: number, wanted: readonly string[]): ObjectView {
  const open = i + 1
  const members = new Map<string, readonly [number, number]>()
  let j = skipSpace(b, open)
  const empty = b[j] === 0x7d
  while (j < b.length && b[j] !== 0x7d && members.size < wanted.length) {
    const keyEnd = skipString(b, j)
    const key = keyOf(b, j, keyEnd)
    j = skipSpace(b, keyEnd) + 1 // past ':'
    const start = skipSpace(b, j)
    const end = skipValue(b, start)
    if (wanted.includes(key)) members.set(key, [start, end])
    j = skipSpace(b, end)
    if (b[j] === 0x2c) j = skipSpace(b, j + 1)
  }
  return { open, empty, members }
}

/** Trace context to put into `_meta`: a `traceparent`, and a `tracestate` when there is one. */
export interface TraceCarrier {
  readonly traceparent: string
  readonly tracestate?: string
}

/**
 * The message with `params._meta.traceparent` (and `tracestate`) set to `carrier`'s, replacing
 * any the agent sent; the input itself when `params` or `_meta` is there but not an object
 * (nothing is set then: the header still carries the trace).
 */
export function withTraceMeta (raw: Uint8Array, carrier: TraceCarrier): Uint8Array {
  const edits: Array<[number, number, string]> = [] // [start, end, text]: replace [start, end) by text
  const pairs = Object.entries(carrier).filter(([, v]) => typeof v === 'string') as Array<[string, string]>
  const top = skipSpace(raw, 0)
  if (raw[top] !== 0x7b) return raw
  const params = objectAt(raw, top, ['params']).members.get('params')
  if (params === undefined) {
    const meta = '{' + pairs.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',') + '}'
    edits.push([top + 1, top + 1, `"params":{"_meta":${meta}},`])
  } else {
    if (raw[params[0]] !== 0x7b) return raw
    const p = objectAt(raw, params[0], ['_meta'])
    const metaAt = p.members.get('_meta')
    if (metaAt === undefined) {
      const meta = '{' + pairs.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',') + '}'
      edits.push([p.open, p.open, `"_meta":${meta}${p.empty ? '' : ','}`])
    } else {
      if (raw[metaAt[0]] !== 0x7b) return raw
      const m = objectAt(raw, metaAt[0], ['traceparent', 'tracestate'])
      const inserts: string[] = []
      for (const [k, v] of pairs) {
        const at = m.members.get(k)
        if (at !== undefined) edits.push([at[0], at[1], JSON.stringify(v)])
        else inserts.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`)
      }
      if (inserts.length > 0) edits.push([m.open, m.open, inserts.join(',') + (m.empty ? '' : ',')])
    }
  }
  edits.sort((a, b) => a[0] - b[0])
  const parts: Uint8Array[] = []
  let at = 0
  for (const [start, end, text] of edits) {
    parts.push(raw.subarray(at, start), Buffer.from(text, 'utf8'))
    at = end
  }
  parts.push(raw.subarray(at))
  return Buffer.concat(parts)
}
