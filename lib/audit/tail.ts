/**
 * Where a replica's chain stands in an existing audit file: read from the end, a chunk at a
 * time, never the whole file. The gateway continues the chain from there when it starts again.
 */
import { closeSync, fstatSync, openSync, readSync, statSync } from 'node:fs'
import { HASH_PATTERN, lineHash, type ChainHead } from './chain.js'

const CHUNK = 64 * 1024
/** How far back the last record of the replica is looked for before giving up. */
export const MAX_TAIL_SCAN = 16 * 1024 * 1024

export interface ChainTail {
  /** The file's size in bytes. */
  readonly size: number
  /** The replica's newest complete record, or null when the scanned tail has none. */
  readonly head: ChainHead | null
  /** The file does not end with a newline (a record cut off by a crash, or one not yet terminated). */
  readonly unterminated: boolean
  /** The bytes after the last newline when they are not a complete record: a record cut off mid-write. */
  readonly cutOff: { readonly bytes: number, readonly sha256: string } | null
}

/** The chain fields of one line, or null when it is not a chained record. */
export function chainFields (line: string): { replica: string, seq: number, prev: string, record: Record<string, unknown> } | null {
  let value: unknown
  try { value = JSON.parse(line) } catch { return null }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null
  const r = value as Record<string, unknown>
  if (typeof r.replica !== 'string' || typeof r.seq !== 'number' || !Number.isSafeInteger(r.seq) || r.seq < 1 ||
    typeof r.prev !== 'string' || !HASH_PATTERN.test(r.prev)) return null
  return { replica: r.replica, seq: r.seq, prev: r.prev, record: r }
}

/** Whether a line is a JSON object: a record, not a cut-off piece of one. */
function isObject (line: string): boolean {
  try {
    const v: unknown = JSON.parse(line)
    return typeof v === 'object' && v !== null && !Array.isArray(v)
  } catch {
    return false
  }
}

/**
 * Reads the end of `file` for `replica`'s newest record. A missing or empty file, or one that is
 * not a regular file (a device, a pipe), gives null.
 * `maxScan` bounds the bytes read; past it the head is null (a new chain starts).
 */
export function readChainTail (file: string, replica: string, maxScan = MAX_TAIL_SCAN): ChainTail | null {
  const st = statSync(file, { throwIfNoEntry: false })
  if (st === undefined) return null
  if (st.isDirectory()) throw new Error(`${file} is a folder, not a file`)
  // A device or a pipe (/dev/stdout, a FIFO) has no tail to read; opening a FIFO to read would wait for a writer.
  if (!st.isFile()) return null
  const fd = openSync(file, 'r')
  try {
    const size = fstatSync(fd).size
    if (size === 0) return null
    // buf holds the bytes [pos, size) of the file.
    let buf = Buffer.alloc(0)
    let pos = size
    const more = (): boolean => {
      if (pos === 0 || size - pos >= maxScan) return false
      const n = Math.min(CHUNK, pos, maxScan - (size - pos))
      const chunk = Buffer.allocUnsafe(n)
      let got = 0
      while (got < n) {
        const r = readSync(fd, chunk, got, n - got, pos - n + got)
        if (r === 0) break
        got += r
      }
      pos -= n
      buf = Buffer.concat([chunk.subarray(0, got), buf])
      return true
    }
    more()
    const unterminated = buf[buf.length - 1] !== 0x0a
    let cutOff: ChainTail['cutOff'] = null
    // end: the (absolute) offset just past the next line to look at, its newline excluded.
    let end = unterminated ? size : size - 1
    let line = 0
    // The last newline before `end`, as an offset into buf; -1 when buf has none.
    const newlineBefore = (): number => end - pos - 1 < 0 ? -1 : buf.lastIndexOf(0x0a, end - pos - 1)
    for (;;) {
      let nl = newlineBefore()
      while (nl === -1 && more()) nl = newlineBefore()
      if (nl === -1 && pos > 0) return { size, head: null, unterminated, cutOff }
      const start = nl === -1 ? 0 : pos + nl + 1
      const bytes = buf.subarray(start - pos, end - pos)
      const text = bytes.toString('utf8')
      line++
      if (line === 1 && unterminated && !isObject(text)) {
        cutOff = { bytes: bytes.length, sha256: lineHash(bytes) }
      } else if (bytes.length > 0) {
        const f = chainFields(text)
        if (f !== null && f.replica === replica) return { size, head: { seq: f.seq, hash: lineHash(bytes) }, unterminated, cutOff }
      }
      if (start === 0) return { size, head: null, unterminated, cutOff }
      end = start - 1
    }
  } finally {
    closeSync(fd)
  }
}
