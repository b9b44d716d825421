/**
 * Verifies audit files (oldest first) against their hash chains: every record of a replica must
 * be the next of its chain (seq + 1, prev = the hash of the replica's previous line), and every
 * checkpoint's signature must verify when keys are given. Reports the first broken link, named
 * for what was done to the file: edited, deleted, reordered, inserted, duplicated, cut off,
 * forged.
 *
 * The lines are read once, as a stream, and each is judged by what came before it; naming a break
 * may take one more pass. A line longer than the gateway ever writes ({@link MAX_LINE_BYTES}) is
 * itself a break, so a crafted file can make verify neither slow nor large.
 */
import { createReadStream } from 'node:fs'
import { CHECKPOINT_AT, GENESIS_PREV, HASH_PATTERN, checkpointSignatureValid, lineHash, type CheckpointAt } from './chain.js'
import type { CheckpointKeys } from './keys.js'

export type BreakKind = 'edited' | 'deleted' | 'reordered' | 'inserted' | 'duplicate' | 'cut-off' | 'malformed' |
'forged-genesis' | 'bad-signature' | 'unknown-key' | 'missing-checkpoint' | 'no-checkpoint' | 'too-long'

/**
 * The longest line verify reads by default (64 MiB). The gateway's longest lines hold what a
 * request or an answer brought: the names and id of a request (at most limits.maxBodyBytes, 1 MiB
 * by default) and, in shadow mode, the tool names a tools/list answer had hidden (at most
 * limits.maxResponseBytes, 16 MiB by default); the rest of a record is a few KiB.
 */
export const MAX_LINE_BYTES = 64 * 1024 * 1024
/** The most `maxLineBytes` may be set to: a longer line cannot be read as one string. */
export const MAX_LINE_BYTES_LIMIT = 256 * 1024 * 1024

export interface Where {
  readonly file: string
  /** 1-based. */
  readonly line: number
}

export interface ChainBreak extends Where {
  readonly replica: string | null
  readonly seq: number | null
  readonly kind: BreakKind
  readonly message: string
}

export interface ReplicaReport {
  readonly replica: string
  readonly firstSeq: number
  readonly lastSeq: number
  readonly records: number
  /** The line hash of the replica's newest record: keep it elsewhere to catch a cut tail later. */
  readonly lastHash: string
  readonly chains: number
  /** Where the files start mid-chain: the first record's prev is taken on trust. */
  readonly anchoredAt: (Where & { readonly seq: number, readonly prev: string }) | null
  readonly checkpoints: { readonly verified: number, readonly unchecked: number }
  /** Records after the last checkpoint. */
  readonly afterLastCheckpoint: number
}

export interface VerifyReport {
  readonly ok: boolean
  readonly files: readonly string[]
  /** Chained records read (checkpoints included). */
  readonly records: number
  readonly replicas: readonly ReplicaReport[]
  readonly checkpoints: { readonly verified: number, readonly unchecked: number, readonly keysGiven: boolean }
  readonly notes: readonly string[]
  readonly break: ChainBreak | null
}

export interface VerifyOptions {
  /** Check checkpoint signatures with these keys; every chain must then start with a checkpoint and keep its promise. */
  readonly keys?: CheckpointKeys
  /** A longer line is a break (`too-long`); default {@link MAX_LINE_BYTES}, at most {@link MAX_LINE_BYTES_LIMIT}. */
  readonly maxLineBytes?: number
}

interface At extends Where { readonly pos: number }
interface Line extends At {
  /** Without the newline; of a line that is too long, only its first bytes. */
  readonly bytes: Buffer
  readonly terminated: boolean
  /** Longer than maxLineBytes: read no further. */
  readonly tooLong: boolean
}

const at = (l: Where): string => `${l.file}:${l.line}`
/** A line's place, without its bytes. */
const place = (l: At): At => ({ file: l.file, line: l.line, pos: l.pos })
const short = (h: string): string => `${h.slice(0, 12)}…`
const mib = (n: number): string => n % (1024 * 1024) === 0 ? `${n / (1024 * 1024)} MiB` : `${n} bytes`

const CHUNK = 1 << 20
/** The bytes of a too-long line kept to tell which record it starts like. */
const HEAD_BYTES = 400

/**
 * The lines of the files in order, as bytes without their newline; blank lines are left out. A
 * line that spans chunks is joined once, at its end; one longer than `maxLineBytes` is yielded
 * (as `tooLong`, with its first bytes) as soon as it is, and the rest of it is skipped.
 */
async function * readLines (files: readonly string[], maxLineBytes: number): AsyncGenerator<Line> {
  let pos = 0
  for (const file of files) {
    let line = 0
    // The line being read: its pieces in earlier chunks, and their length.
    let parts: Buffer[] = []
    let size = 0
    // The line being read is too long: yielded already, skipped up to its newline.
    let over = false
    for await (const data of createReadStream(file, { highWaterMark: CHUNK })) {
      const chunk = data as Buffer
      let start = 0
      for (let nl = chunk.indexOf(0x0a); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
        if (!over) {
          line++
          const length = size + nl - start
          if (length > maxLineBytes) {
            yield { file, line, pos: pos++, bytes: head([...parts, chunk.subarray(start, nl)]), terminated: true, tooLong: true }
          } else if (length > 0) {
            const bytes = parts.length === 0 ? chunk.subarray(start, nl) : Buffer.concat([...parts, chunk.subarray(start, nl)], length)
            yield { file, line, pos: pos++, bytes, terminated: true, tooLong: false }
          }
        }
        parts = []
        size = 0
        over = false
        start = nl + 1
      }
      if (start < chunk.length && !over) {
        parts.push(chunk.subarray(start))
        size += chunk.length - start
        if (size > maxLineBytes) {
          line++
          yield { file, line, pos: pos++, bytes: head(parts), terminated: false, tooLong: true }
          parts = []
          over = true
        }
      }
    }
    if (size > 0 && !over) { line++; yield { file, line, pos: pos++, bytes: Buffer.concat(parts, size), terminated: false, tooLong: false } }
  }
}

/** The first HEAD_BYTES of a line's pieces. */
function head (parts: readonly Buffer[]): Buffer {
  const out: Buffer[] = []
  let n = 0
  for (const part of parts) {
    if (n >= HEAD_BYTES) break
    const piece = part.subarray(0, HEAD_BYTES - n)
    out.push(piece)
    n += piece.length
  }
  return Buffer.concat(out, n)
}

type Parsed =
  | { type: 'garbage' }
  | { type: 'unchained' }
  | { type: 'malformed' }
  | { type: 'record', replica: string, seq: number, prev: string, record: Record<string, unknown> }

function parse (bytes: Buffer): Parsed {
  let value: unknown
  try { value = JSON.parse(bytes.toString('utf8')) } catch { return { type: 'garbage' } }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { type: 'garbage' }
  const r = value as Record<string, unknown>
  if (!('replica' in r) && !('seq' in r) && !('prev' in r)) return { type: 'unchained' }
  if (typeof r.replica !== 'string' || typeof r.seq !== 'number' || !Number.isSafeInteger(r.seq) || r.seq < 1 ||
    typeof r.prev !== 'string' || !HASH_PATTERN.test(r.prev)) return { type: 'malformed' }
  return { type: 'record', replica: r.replica, seq: r.seq, prev: r.prev, record: r }
}

/** What a cut-off line still tells: the replica and seq its start names. */
function fragmentFields (bytes: Buffer): { replica: string | null, seq: number | null } {
  const m = /^\{"replica":("(?:[^"\\]|\\.)*"),"seq":(\d{1,15})[,}]/.exec(bytes.subarray(0, HEAD_BYTES).toString('utf8'))
  if (m === null) return { replica: null, seq: null }
  try { return { replica: JSON.parse(m[1]!) as string, seq: Number(m[2]) } } catch { return { replica: null, seq: null } }
}

/** A line that is not a record: the gateway's chain-resume must name it on the very next line. */
interface Cut {
  readonly at: At
  readonly terminated: boolean
  readonly bytes: number
  readonly hash: string
  readonly fields: ReturnType<typeof fragmentFields>
}

/** Whether a chain-resume record names `cut` (its length and hash). */
function names (record: Record<string, unknown>, cut: Cut): boolean {
  const c = record.cutOff as { bytes?: unknown, sha256?: unknown } | null | undefined
  return typeof c === 'object' && c !== null && c.sha256 === cut.hash && c.bytes === cut.bytes
}

/**
 * Whether `l` comes right after `cut` as the gateway writes it: the next line of the same file,
 * or — when the gateway continued from a rotated file that ends with the cut-off line — the first
 * line of the next file.
 */
function follows (cut: Cut, l: At): boolean {
  return l.file === cut.at.file ? l.line === cut.at.line + 1 : !cut.terminated && l.line === 1
}

/**
 * With keys, what the gateway owes a replica's chain next: `closed` after its close checkpoint (a
 * restart's signed resume checkpoint, or a last record that a close checkpoint follows: `late`),
 * `resumed` after a chain-resume (the signed resume checkpoint).
 */
type Phase = 'open' | 'closed' | 'late' | 'resumed'

interface ReplicaState {
  readonly name: string
  readonly firstSeq: number
  seq: number
  hash: string
  at: At
  records: number
  chains: number
  readonly anchoredAt: ReplicaReport['anchoredAt']
  /** Genesis lines seen, by line hash: a copied chain start is a duplicate. */
  readonly genesis: Map<string, At>
  /** The interval the last verified checkpoint promised (null: none verified in this chain). */
  every: number | null
  checkpointAt: At | null
  since: number
  verified: number
  unchecked: number
  phase: Phase
  /** The close checkpoint (closed, late), the record after it (late) or the chain-resume (resumed). */
  closedAt: At | null
  phaseAt: (At & { seq: number }) | null
  /** Checkpoints verified in the current chain. */
  chainVerified: number
  /** The replica's newest verified checkpoint, with its signed time. */
  lastSigned: { ms: number, time: string, at: At } | null
}

/** A break found in the first pass that needs a look at other lines to be named. */
type Suspect =
  | { type: 'break', found: Found }
  | { type: 'gap', line: At, r: ReplicaState, seq: number }
  | { type: 'repeat', line: At, bytes: Buffer, r: ReplicaState, seq: number, hash: string }
  | { type: 'link', line: At, r: ReplicaState, seq: number }

type Found = ChainBreak & { pos: number }

/** Notes of cut-off lines listed one by one; past it, counted. */
const MAX_CUT_NOTES = 10

class Verifier {
  readonly replicas = new Map<string, ReplicaState>()
  /** The line before, when it was not a record: the line after it must be the chain-resume that names it. */
  cut: Cut | null = null
  readonly acknowledged: string[] = []
  acknowledgedMore = 0
  readonly notes: string[] = []
  records = 0
  legacy = 0
  constructor (readonly keys: CheckpointKeys | undefined, readonly maxLineBytes: number) {}

  /** Takes the next line; returns what broke, if anything. */
  line (line: Line): Suspect | null {
    const l = place(line)
    const cut = this.cut
    this.cut = null
    if (line.tooLong) {
      if (cut !== null) return { type: 'break', found: this.cutOffBreak(cut, 'other') }
      const f = fragmentFields(line.bytes)
      return this.#break(l, f.replica, f.seq, 'too-long', `a line of more than ${mib(this.maxLineBytes)}: the gateway writes none that long (its longest lines are bounded by limits.maxBodyBytes and limits.maxResponseBytes), so it was added to the file — if the gateway's limits are set higher, give a larger --max-line-bytes`)
    }
    const p = parse(line.bytes)
    let vouched = false
    if (cut !== null) {
      if (p.type !== 'record' || p.record.event !== 'chain-resume' || !follows(cut, l)) return { type: 'break', found: this.cutOffBreak(cut, 'other') }
      if (!names(p.record, cut)) return { type: 'break', found: this.cutOffBreak(cut, 'mismatch') }
      vouched = true
    }
    if (p.type === 'garbage') {
      this.cut = { at: l, terminated: line.terminated, bytes: line.bytes.length, hash: lineHash(line.bytes), fields: fragmentFields(line.bytes) }
      return null
    }
    if (p.type === 'unchained') {
      if (this.records === 0) { this.legacy++; return null }
      return this.#break(l, null, null, 'inserted', 'a record without the chain fields replica, seq and prev, after the chain started: the gateway writes none, so it was added to the file')
    }
    if (p.type === 'malformed') {
      return this.#break(l, null, null, 'malformed', 'its chain fields are not valid (replica a string, seq a whole number from 1, prev 64 lower-case hex digits): the line was edited')
    }
    this.records++
    const hash = lineHash(line.bytes)
    const { replica, seq, prev, record } = p
    const checkpoint = record.event === 'checkpoint'
    const resume = record.event === 'chain-resume'
    if ((seq === 1) !== (prev === GENESIS_PREV)) {
      return this.#break(l, replica, seq, 'forged-genesis', seq === 1
        ? `seq 1 starts a chain, so its prev must be ${GENESIS_PREV.slice(0, 8)}… (64 zeros), not ${short(prev)}: the line was edited`
        : `its prev is the genesis value (64 zeros), which only seq 1 may have: it pretends to start a chain at seq ${seq}`)
    }
    let r = this.replicas.get(replica)
    let anchored = false
    if (r === undefined || seq === 1) {
      if (r !== undefined) {
        const copy = r.genesis.get(hash)
        if (copy !== undefined) return this.#break(l, replica, seq, 'duplicate', `an exact copy of the chain start at ${at(copy)}: a replayed record`)
        // The chain before ends here: what the gateway still owed it, it never wrote.
        const owed = this.owed(r)
        if (owed !== null) return { type: 'break', found: owed }
        const uncovered = this.keys !== undefined && r.verified > 0 && r.since > 0 ? `; the last ${r.since} record${r.since > 1 ? 's' : ''} of the chain before come after its last checkpoint and are not covered by a signature` : ''
        this.notes.push(`replica ${replica} starts a new chain at ${at(l)}, after seq ${r.seq} (${at(r.at)}): the gateway restarted with an audit destination it cannot continue (stdout), or a file was lost${this.keys === undefined ? '; without signed checkpoints a new chain cannot be told from a forged one' : ''}${uncovered}`)
        r.chains++
        r.seq = 0
        r.every = null
        r.checkpointAt = null
        r.since = 0
        r.phase = 'open'
        r.closedAt = null
        r.phaseAt = null
        r.chainVerified = 0
      } else {
        r = {
          name: replica, firstSeq: seq, seq: seq - 1, hash: prev, at: l, records: 0, chains: 1,
          anchoredAt: seq === 1 ? null : { file: l.file, line: l.line, seq, prev },
          genesis: new Map(), every: null, checkpointAt: null, since: 0, verified: 0, unchecked: 0,
          phase: 'open', closedAt: null, phaseAt: null, chainVerified: 0, lastSigned: null
        }
        this.replicas.set(replica, r)
        anchored = seq > 1
        if (anchored) this.notes.push(`replica ${replica} starts mid-chain at ${at(l)} (seq ${seq}): its prev ${short(prev)} is taken as the anchor; the records before it are not in these files`)
      }
      if (seq === 1) {
        r.genesis.set(hash, l)
        if (this.keys !== undefined && !checkpoint && !vouched) {
          return this.#break(l, replica, seq, 'no-checkpoint', `replica ${replica}'s chain starts here without a signed checkpoint; with audit.checkpoint.every set the gateway starts every chain with one: this chain was written without checkpoints, or made up (a forged new chain)`)
        }
      }
    } else if (seq === r.seq + 1) {
      if (prev !== r.hash) return { type: 'link', line: l, r, seq }
    } else if (seq > r.seq + 1) {
      return { type: 'gap', line: l, r, seq }
    } else {
      return { type: 'repeat', line: l, bytes: line.bytes, r, seq, hash }
    }
    if (resume && !vouched) {
      const c = record.cutOff as { bytes?: unknown, sha256?: unknown } | null | undefined
      const named = typeof c === 'object' && c !== null && typeof c.sha256 === 'string' ? ` (${String(c.bytes)} bytes, SHA-256 ${short(c.sha256)})` : ''
      if (!(anchored && l.line === 1)) {
        return this.#break(l, replica, seq, 'inserted', `a chain-resume record, but the line before it is not the cut-off line it names${named}: the gateway writes one only right after a line cut off by a crash, so it was added to the file`)
      }
      // The first line of the files: the line it names is in an earlier file, not given; taken on trust like the anchor.
      this.notes.push(`the chain-resume record at ${at(l)} names a cut-off line${named} in an earlier file, not given`)
    }
    if (checkpoint) {
      const b = this.#checkpoint(l, r, seq, prev, record)
      if (b !== null) return b
    } else {
      // Every record counts toward the interval the last checkpoint promised. A chain-resume takes
      // the place of the line cut off before it, which may have been the checkpoint then due (the
      // resume checkpoint, when the chain-resume before was not yet followed by one).
      if (resume && r.phase === 'resumed') r.since = 1
      else r.since++
      if (this.keys !== undefined && r.every !== null && r.since > r.every + (resume ? 1 : 0)) {
        return this.#break(l, replica, seq, 'missing-checkpoint', `${r.since} records of replica ${replica} since the checkpoint at ${at(r.checkpointAt!)}, which promised one at least every ${r.every}: a checkpoint was removed, records were added, or checkpoints were turned off while the chain went on`)
      }
      if (vouched) this.#acknowledge(cut!, l)
    }
    if (this.keys !== undefined) {
      const b = this.#phase(l, r, seq, record, checkpoint, resume)
      if (b !== null) return b
    }
    r.seq = seq
    r.hash = hash
    r.at = l
    r.records++
    return null
  }

  #checkpoint (l: At, r: ReplicaState, seq: number, prev: string, record: Record<string, unknown>): Suspect | null {
    const { time, at: when, every, kid, sig } = record
    if (typeof time !== 'string' || typeof when !== 'string' || !CHECKPOINT_AT.has(when) || typeof every !== 'number' ||
      !Number.isSafeInteger(every) || every < 1 || typeof kid !== 'string' || typeof sig !== 'string') {
      return this.#break(l, r.name, seq, 'bad-signature', 'a checkpoint whose fields are not valid (time, at, every, kid, sig): it was edited or forged')
    }
    r.since = 0
    if (this.keys === undefined) { r.unchecked++; return null }
    const candidates = [...(this.keys.byKid.get(kid) ?? []), ...this.keys.any]
    if (candidates.length === 0) {
      return this.#break(l, r.name, seq, 'unknown-key', `the checkpoint is signed by key ${JSON.stringify(kid)}, which is not among the keys given: it was forged, or that key has since been retired — give its public key (an archived JWKS with --jwks, or --key)`)
    }
    const fields = { replica: r.name, seq, prev, time, at: when as CheckpointAt, every }
    if (!candidates.some(key => checkpointSignatureValid(fields, sig, key))) {
      return this.#break(l, r.name, seq, 'bad-signature', `the checkpoint's signature (key ${JSON.stringify(kid)}) does not verify: the checkpoint was forged or edited, or the chain before it was rewritten`)
    }
    // A new chain is started by a gateway that starts later than the chain before was signed: a
    // chain start signed earlier was copied from an older log.
    const ms = Date.parse(time)
    const last = r.lastSigned
    if (r.chains > 1 && r.chainVerified === 0 && last !== null && ms < last.ms) {
      return this.#break(l, r.name, seq, 'duplicate', `replica ${r.name}'s new chain starts with a checkpoint signed at ${time}, before the checkpoint at ${at(last.at)} of the chain before it (signed at ${last.time}): a chain start replayed from an older log (or the clock went back across a restart)`)
    }
    if (Number.isFinite(ms)) r.lastSigned = { ms, time, at: l }
    r.chainVerified++
    r.verified++
    r.every = every
    r.checkpointAt = l
    return null
  }

  /** With keys: what the record does to what the gateway owes the chain (see {@link Phase}). */
  #phase (l: At, r: ReplicaState, seq: number, record: Record<string, unknown>, checkpoint: boolean, resume: boolean): Suspect | null {
    if (checkpoint) {
      const when = record.at as CheckpointAt
      if (r.phase === 'resumed' && when !== 'resume') return this.#afterResume(l, r, seq, `a checkpoint "at":"${when}"`)
      r.phase = when === 'close' ? 'closed' : 'open'
      if (r.phase === 'closed') r.closedAt = l
      r.phaseAt = null
    } else if (resume) {
      // Several in a row (the gateway died again before its resume checkpoint): owed since the first.
      if (r.phase !== 'resumed') r.phaseAt = { ...l, seq }
      r.phase = 'resumed'
    } else if (r.phase === 'resumed') {
      return this.#afterResume(l, r, seq, 'a record')
    } else if (r.phase === 'closed') {
      r.phase = 'late'
      r.phaseAt = { ...l, seq }
    } else if (r.phase === 'late') {
      return { type: 'break', found: this.owed(r)! }
    }
    return null
  }

  #afterResume (l: At, r: ReplicaState, seq: number, what: string): Suspect {
    return this.#break(l, r.name, seq, 'missing-checkpoint', `${what} where the signed resume checkpoint belongs: the gateway writes it right after the chain-resume record (replica ${r.name}, ${at(r.phaseAt!)}), so the chain-resume was made up and records added after it, or the checkpoint was removed`)
  }

  /** With keys, the break a replica's chain owes where it ends (the end of the files, or a new chain): null when it owes nothing. */
  owed (r: ReplicaState): Found | null {
    // Set in the late and resumed phases only.
    const p = r.phaseAt
    if (p === null) return null
    if (r.phase === 'late') {
      return { file: p.file, line: p.line, pos: p.pos, replica: r.name, seq: p.seq, kind: 'inserted', message: `a record after replica ${r.name}'s closing checkpoint (${at(r.closedAt!)}) that no signed checkpoint follows: a gateway that starts again writes its signed resume checkpoint first, and a record that ends while it stops is followed by another close checkpoint; this one was added to the closed log` }
    }
    return { file: p.file, line: p.line, pos: p.pos, replica: r.name, seq: p.seq, kind: 'missing-checkpoint', message: `replica ${r.name}'s chain-resume is not followed by the signed resume checkpoint the gateway writes right after it: the chain-resume was made up, or the checkpoint was removed` }
  }

  #acknowledge (c: Cut, l: At): void {
    if (this.acknowledged.length >= MAX_CUT_NOTES) { this.acknowledgedMore++; return }
    this.acknowledged.push(`${at(c.at)} is a record cut off when the gateway stopped while writing it (${c.bytes} bytes); the chain-resume record at ${at(l)} notes it and the chain goes on`)
  }

  #break (l: At, replica: string | null, seq: number | null, kind: BreakKind, message: string): Suspect {
    return { type: 'break', found: { file: l.file, line: l.line, pos: l.pos, replica, seq, kind, message } }
  }

  /** A cut-off line no chain-resume vouches for, as a break: at the end of the files, or followed by another line (`mismatch`: a chain-resume that names another). */
  cutOffBreak (c: Cut, next: 'end' | 'other' | 'mismatch'): Found {
    const what = c.fields.replica !== null ? ` (it starts like replica ${c.fields.replica}'s seq ${c.fields.seq})` : ''
    const message = next === 'end'
      ? `the last line is cut off: ${c.bytes} bytes that are not a complete record${what}; the gateway stopped while writing it, or the file was truncated (a gateway that starts again on this file notes it with a chain-resume record)`
      : `not a complete record: ${c.bytes} bytes that are not a JSON object${what}; the line was cut off or garbled, or added — after a line cut off by a crash the gateway writes a chain-resume record that names it, on the very next line${next === 'mismatch' ? ', and the chain-resume record there names another line' : ''}`
    return { file: c.at.file, line: c.at.line, pos: c.at.pos, replica: c.fields.replica, seq: c.fields.seq, kind: 'cut-off', message }
  }

  /** At the end of the files: a last line cut off, or what a chain still owes (the first of them). */
  end (): Found | null {
    let first: Found | null = this.cut !== null ? this.cutOffBreak(this.cut, 'end') : null
    if (this.keys !== undefined) {
      for (const r of this.replicas.values()) {
        const owed = this.owed(r)
        if (owed !== null && (first === null || owed.pos < first.pos)) first = owed
      }
    }
    return first
  }
}

/**
 * One more pass over the files, for the records of `replica` that name a break: the last with
 * seq `before.seq` ahead of line `before.pos`, and the first with seq `after.seq` past `after.pos`.
 */
async function lookup (files: readonly string[], maxLineBytes: number, replica: string,
  q: { before?: { seq: number, pos: number }, after?: { seq: number, pos: number } }): Promise<{ before: Line | null, after: Line | null }> {
  let before: Line | null = null
  let after: Line | null = null
  for await (const l of readLines(files, maxLineBytes)) {
    const wantBefore = q.before !== undefined && l.pos < q.before.pos
    const wantAfter = q.after !== undefined && l.pos > q.after.pos && after === null
    if (!wantBefore && !wantAfter) {
      if (q.before === undefined || l.pos >= q.before.pos) {
        if (q.after === undefined || after !== null) break
      }
      continue
    }
    if (l.tooLong) continue
    const p = parse(l.bytes)
    if (p.type !== 'record' || p.replica !== replica) continue
    if (wantBefore && p.seq === q.before!.seq) before = { ...place(l), bytes: Buffer.from(l.bytes), terminated: l.terminated, tooLong: false }
    if (wantAfter && p.seq === q.after!.seq) after = { ...place(l), bytes: Buffer.from(l.bytes), terminated: l.terminated, tooLong: false }
  }
  return { before, after }
}

/** Names a break the first pass found. */
async function diagnose (files: readonly string[], maxLineBytes: number, s: Suspect): Promise<Found> {
  if (s.type === 'break') return s.found
  const { r, line } = s
  const base = { replica: r.name, seq: s.seq }
  const boundary = line.line === 1 && line.file !== r.at.file
    ? ` (${line.file} starts here: is a rotated file missing between ${r.at.file} and ${line.file}, or are the files not given oldest first?)`
    : ''
  if (s.type === 'gap') {
    const { after: later } = await lookup(files, maxLineBytes, r.name, { after: { seq: r.seq + 1, pos: line.pos } })
    if (later !== null) {
      return { ...line, ...base, kind: 'reordered', message: `replica ${r.name}'s seq ${r.seq + 1} belongs here, after seq ${r.seq} (${at(r.at)}), but comes later, at ${at(later)}: records were moved` }
    }
    const missing = s.seq - r.seq - 1
    return { ...line, ...base, kind: 'deleted', message: `seq ${r.seq + 1}${missing > 1 ? `–${s.seq - 1}` : ''} of replica ${r.name} ${missing > 1 ? `(${missing} records) are` : 'is'} missing: the record before this one is seq ${r.seq} at ${at(r.at)}${boundary}` }
  }
  if (s.type === 'link') {
    // The next record of the replica tells which of the two was changed: it links to the genuine one.
    const { after: next } = await lookup(files, maxLineBytes, r.name, { after: { seq: s.seq, pos: line.pos } })
    const nextParsed = next === null ? null : parse(next.bytes)
    if (next !== null && nextParsed?.type === 'record' && nextParsed.prev === r.hash) {
      return { ...line, ...base, kind: 'inserted', message: `this record claims seq ${s.seq} but does not link to seq ${r.seq} (${at(r.at)}), and the record after it with the same seq (${at(next)}) does: it was added to the file` }
    }
    return {
      ...place(r.at), replica: r.name, seq: r.seq, kind: 'edited',
      message: `replica ${r.name}'s seq ${r.seq} was changed after it was written (or the prev of the next record was): its line no longer hashes to the prev that seq ${s.seq} (${at(line)}) holds for it${boundary}`
    }
  }
  // seq at or below the last one: a copy, or a second record with a seq already used.
  const { before: earlier, after } = await lookup(files, maxLineBytes, r.name, { before: { seq: s.seq, pos: line.pos }, after: { seq: s.seq + 1, pos: line.pos } })
  if (earlier !== null && earlier.bytes.equals(s.bytes)) {
    return { ...line, ...base, kind: 'duplicate', message: `an exact copy of ${at(earlier)} (replica ${r.name} seq ${s.seq}), which is already in the chain: a replayed record` }
  }
  if (earlier !== null && s.seq === r.seq) {
    // Two records with the same seq one after the other: the chain goes on from one of them.
    const afterParsed = after === null ? null : parse(after.bytes)
    const afterPrev = afterParsed?.type === 'record' ? afterParsed.prev : null
    if (afterPrev === s.hash) {
      return { ...place(earlier), ...base, kind: 'inserted', message: `a second record with seq ${s.seq} of replica ${r.name}; the chain goes on from the other one (${at(line)}), so this one was added to the file` }
    }
    if (afterPrev === r.hash) {
      return { ...line, ...base, kind: 'inserted', message: `a second record with seq ${s.seq} of replica ${r.name}; the chain goes on from the other one (${at(earlier)}), so this one was added to the file` }
    }
  }
  return { ...line, ...base, kind: 'reordered', message: `seq ${s.seq} of replica ${r.name} comes after seq ${r.seq} (${at(r.at)})${earlier !== null ? `, and ${at(earlier)} already has seq ${s.seq}` : ''}: records were moved or inserted${boundary}` }
}

/**
 * Verifies `files` (oldest first) as one sequence of lines, in one pass (and one more to name a
 * break). With `keys`, every checkpoint's signature is checked, every chain must start with one,
 * keep the interval it promises, follow a chain-resume with a signed resume checkpoint and write
 * nothing after a close checkpoint but a restart's checkpoint. Throws (ENOENT, EACCES…) when a
 * file cannot be read, and a RangeError for a `maxLineBytes` out of range.
 */
export async function verifyAuditFiles (files: readonly string[], opts: VerifyOptions = {}): Promise<VerifyReport> {
  const maxLineBytes = opts.maxLineBytes ?? MAX_LINE_BYTES
  if (!Number.isSafeInteger(maxLineBytes) || maxLineBytes < 1024 || maxLineBytes > MAX_LINE_BYTES_LIMIT) {
    throw new RangeError(`the longest line to read must be a whole number of bytes from 1024 to ${MAX_LINE_BYTES_LIMIT}`)
  }
  const v = new Verifier(opts.keys, maxLineBytes)
  let found: Found | null = null
  for await (const l of readLines(files, maxLineBytes)) {
    const s = v.line(l)
    if (s !== null) { found = await diagnose(files, maxLineBytes, s); break }
  }
  if (found === null) found = v.end()
  if (found === null && opts.keys !== undefined) {
    for (const r of v.replicas.values()) {
      if (r.verified === 0) {
        found = { ...place(r.at), replica: r.name, seq: r.seq, kind: 'no-checkpoint', message: `no signed checkpoint of replica ${r.name} in these files: checkpoints are off, or were removed (give the neighbouring rotated files too, if these are only part of the log)` }
        break
      }
    }
  }
  const replicas = [...v.replicas.values()].map(r => ({
    replica: r.name,
    firstSeq: r.firstSeq,
    lastSeq: r.seq,
    records: r.records,
    lastHash: r.hash,
    chains: r.chains,
    anchoredAt: r.anchoredAt,
    checkpoints: { verified: r.verified, unchecked: r.unchecked },
    afterLastCheckpoint: r.since
  }))
  const notes = [...v.notes, ...v.acknowledged]
  if (v.acknowledgedMore > 0) notes.push(`${v.acknowledgedMore} more cut-off line${v.acknowledgedMore > 1 ? 's' : ''}, each noted by the chain-resume record right after it`)
  if (v.legacy > 0) notes.push(`${v.legacy} line${v.legacy > 1 ? 's' : ''} before the first chained record carr${v.legacy > 1 ? 'y' : 'ies'} no seq/prev (written before the chain was on): not verified`)
  const verified = replicas.reduce((n, r) => n + r.checkpoints.verified, 0)
  const unchecked = replicas.reduce((n, r) => n + r.checkpoints.unchecked, 0)
  if (opts.keys === undefined) {
    if (unchecked > 0) notes.push(`${unchecked} checkpoint${unchecked > 1 ? 's' : ''} not checked: give --key, --jwks or --keys-dir to check their signatures`)
    notes.push('records removed from the very end of a chain leave no trace in the file: keep each replica\'s last hash (above) elsewhere to compare, or check signed checkpoints')
  } else {
    for (const r of replicas) {
      if (r.afterLastCheckpoint > 0 && r.checkpoints.verified > 0) notes.push(`replica ${r.replica}: the last ${r.afterLastCheckpoint} record${r.afterLastCheckpoint > 1 ? 's' : ''} (up to seq ${r.lastSeq}) come after its last checkpoint and are not yet covered by a signature`)
    }
  }
  let chainBreak: ChainBreak | null = null
  if (found !== null) {
    const { pos: _pos, ...rest } = found
    chainBreak = rest
  }
  return {
    ok: chainBreak === null,
    files,
    records: v.records,
    replicas,
    checkpoints: { verified, unchecked, keysGiven: opts.keys !== undefined },
    notes: chainBreak === null ? notes : [],
    break: chainBreak
  }
}

/** The report as a person reads it: `OK …` or `FAIL file:line …`, then notes. */
export function formatReport (report: VerifyReport): string[] {
  const b = report.break
  if (b !== null) {
    const who = b.replica !== null ? `replica ${b.replica}, seq ${b.seq ?? '?'}` : 'replica ?, seq ?'
    return [`FAIL ${b.file}:${b.line}: ${who}: ${b.kind}: ${b.message}`]
  }
  const replicas = report.replicas.map(r => `replica ${r.replica} seq ${r.firstSeq}-${r.lastSeq}${r.chains > 1 ? ` (${r.chains} chains)` : ''} last ${r.lastHash}`)
  const cp = report.checkpoints
  const checkpoints = cp.keysGiven ? `${cp.verified} checkpoint${cp.verified === 1 ? '' : 's'} verified` : `${cp.unchecked} checkpoint${cp.unchecked === 1 ? '' : 's'} unchecked`
  const files = `${report.files.length} file${report.files.length === 1 ? '' : 's'}`
  return [
    `OK ${report.records} records in ${files}; ${replicas.length > 0 ? replicas.join('; ') : 'no chained record'}; ${checkpoints}`,
    ...report.notes.map(n => `  note: ${n}`)
  ]
}
