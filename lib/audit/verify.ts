/**
 * Verifies audit files (oldest first) against their hash chains: every record of a replica must
 * be the next of its chain (seq + 1, prev = the hash of the replica's previous line), and every
 * checkpoint's signature must verify when keys are given. Reports the first broken link, named
 * for what was done to the file: edited, deleted, reordered, inserted, duplicated, cut off,
 * forged. The files are read as streams, twice only when a break needs a closer look.
 */
import { createReadStream } from 'node:fs'
import { CHECKPOINT_AT, GENESIS_PREV, HASH_PATTERN, checkpointSignatureValid, lineHash, type CheckpointAt } from './chain.js'
import type { CheckpointKeys } from './keys.js'

export type BreakKind = 'edited' | 'deleted' | 'reordered' | 'inserted' | 'duplicate' | 'cut-off' | 'malformed' |
'forged-genesis' | 'bad-signature' | 'unknown-key' | 'missing-checkpoint' | 'no-checkpoint'

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

interface At extends Where { readonly pos: number }
interface Line extends At { readonly bytes: Buffer, readonly terminated: boolean }

const at = (l: Where): string => `${l.file}:${l.line}`
/** A line's place, without its bytes. */
const place = (l: At): At => ({ file: l.file, line: l.line, pos: l.pos })
const short = (h: string): string => `${h.slice(0, 12)}…`

/** The lines of the files in order, as bytes without their newline; blank lines are left out. */
async function * readLines (files: readonly string[]): AsyncGenerator<Line> {
  let pos = 0
  for (const file of files) {
    let line = 0
    let rest: Buffer | null = null
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
      const buf: Buffer = rest === null ? chunk as Buffer : Buffer.concat([rest, chunk as Buffer])
      let start = 0
      for (let nl = buf.indexOf(0x0a); nl !== -1; nl = buf.indexOf(0x0a, start)) {
        line++
        if (nl > start) yield { file, line, pos: pos++, bytes: buf.subarray(start, nl), terminated: true }
        start = nl + 1
      }
      rest = start < buf.length ? buf.subarray(start) : null
    }
    if (rest !== null) { line++; yield { file, line, pos: pos++, bytes: rest, terminated: false } }
  }
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
  const m = /^\{"replica":("(?:[^"\\]|\\.)*"),"seq":(\d{1,15})[,}]/.exec(bytes.subarray(0, 400).toString('utf8'))
  if (m === null) return { replica: null, seq: null }
  try { return { replica: JSON.parse(m[1]!) as string, seq: Number(m[2]) } } catch { return { replica: null, seq: null } }
}

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
}

/** A break found in the first pass that needs a look at other lines to be named. */
type Suspect =
  | { type: 'break', found: ChainBreak & { pos: number } }
  | { type: 'gap', line: At, r: ReplicaState, seq: number }
  | { type: 'repeat', line: At, bytes: Buffer, r: ReplicaState, seq: number, hash: string }
  | { type: 'link', line: At, r: ReplicaState, seq: number }

class Verifier {
  readonly replicas = new Map<string, ReplicaState>()
  /** Lines that are not records, not (yet) acknowledged by a chain-resume. */
  readonly cutOffs: Array<{ at: At, hash: string, bytes: number, fields: ReturnType<typeof fragmentFields> }> = []
  readonly acknowledged: string[] = []
  readonly notes: string[] = []
  records = 0
  legacy = 0
  lastPos = -1
  constructor (readonly keys: CheckpointKeys | undefined) {}

  /** Takes the next line; returns what broke, if anything. */
  line (line: Line): Suspect | null {
    this.lastPos = line.pos
    const l = place(line)
    const p = parse(line.bytes)
    if (p.type === 'garbage') {
      this.cutOffs.push({ at: l, hash: lineHash(line.bytes), bytes: line.bytes.length, fields: fragmentFields(line.bytes) })
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
    if ((seq === 1) !== (prev === GENESIS_PREV)) {
      return this.#break(l, replica, seq, 'forged-genesis', seq === 1
        ? `seq 1 starts a chain, so its prev must be ${GENESIS_PREV.slice(0, 8)}… (64 zeros), not ${short(prev)}: the line was edited`
        : `its prev is the genesis value (64 zeros), which only seq 1 may have: it pretends to start a chain at seq ${seq}`)
    }
    let r = this.replicas.get(replica)
    if (r === undefined || seq === 1) {
      if (r !== undefined) {
        const copy = r.genesis.get(hash)
        if (copy !== undefined) return this.#break(l, replica, seq, 'duplicate', `an exact copy of the chain start at ${at(copy)}: a replayed record`)
        this.notes.push(`replica ${replica} starts a new chain at ${at(l)}, after seq ${r.seq} (${at(r.at)}): the gateway restarted with an audit destination it cannot continue (stdout), or a file was lost${this.keys === undefined ? '; without signed checkpoints a new chain cannot be told from a forged one' : ''}`)
        r.chains++
        r.seq = 0
        r.every = null
        r.checkpointAt = null
        r.since = 0
      } else {
        r = {
          name: replica, firstSeq: seq, seq: seq - 1, hash: prev, at: l, records: 0, chains: 1,
          anchoredAt: seq === 1 ? null : { file: l.file, line: l.line, seq, prev },
          genesis: new Map(), every: null, checkpointAt: null, since: 0, verified: 0, unchecked: 0
        }
        this.replicas.set(replica, r)
        if (seq > 1) this.notes.push(`replica ${replica} starts mid-chain at ${at(l)} (seq ${seq}): its prev ${short(prev)} is taken as the anchor; the records before it are not in these files`)
      }
      if (seq === 1) {
        r.genesis.set(hash, l)
        if (this.keys !== undefined && !checkpoint) {
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
    if (checkpoint) {
      const b = this.#checkpoint(l, r, seq, prev, record)
      if (b !== null) return b
    } else {
      // A chain-resume stands where a checkpoint may have been cut off: it does not count.
      if (record.event !== 'chain-resume') r.since++
      if (this.keys !== undefined && r.every !== null && r.since > r.every) {
        return this.#break(l, replica, seq, 'missing-checkpoint', `${r.since} records of replica ${replica} since the checkpoint at ${at(r.checkpointAt!)}, which promised one at least every ${r.every}: a checkpoint was removed (or checkpoints were turned off while the chain went on)`)
      }
      if (record.event === 'chain-resume') this.#resume(l, record)
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
    r.verified++
    r.every = every
    r.checkpointAt = l
    return null
  }

  #resume (l: At, record: Record<string, unknown>): void {
    const cut = record.cutOff as { sha256?: unknown } | undefined
    const i = this.cutOffs.findIndex(c => c.hash === cut?.sha256)
    if (i === -1) return
    const [c] = this.cutOffs.splice(i, 1)
    this.acknowledged.push(`${at(c!.at)} is a record cut off when the gateway stopped while writing it (${c!.bytes} bytes); the chain-resume record at ${at(l)} notes it and the chain goes on`)
  }

  #break (l: At, replica: string | null, seq: number | null, kind: BreakKind, message: string): Suspect {
    return { type: 'break', found: { file: l.file, line: l.line, pos: l.pos, replica, seq, kind, message } }
  }

  /** The cut-off lines nothing acknowledged, as breaks. */
  cutOffBreak (c: Verifier['cutOffs'][number]): ChainBreak & { pos: number } {
    const what = c.fields.replica !== null ? ` (it starts like replica ${c.fields.replica}'s seq ${c.fields.seq})` : ''
    const message = c.at.pos === this.lastPos
      ? `the last line is cut off: ${c.bytes} bytes that are not a complete record${what}; the gateway stopped while writing it, or the file was truncated (a gateway that starts again on this file notes it with a chain-resume record)`
      : `not a complete record: ${c.bytes} bytes that are not a JSON object${what}; the line was cut off or garbled`
    return { file: c.at.file, line: c.at.line, pos: c.at.pos, replica: c.fields.replica, seq: c.fields.seq, kind: 'cut-off', message }
  }
}

/** Scans the files again for the line of `replica` with `seq` after (or before) `pos`. */
async function findSeq (files: readonly string[], replica: string, seq: number, where: { after?: number, before?: number }): Promise<Line | null> {
  let found: Line | null = null
  for await (const l of readLines(files)) {
    if (where.before !== undefined && l.pos >= where.before) break
    if (where.after !== undefined && l.pos <= where.after) continue
    const p = parse(l.bytes)
    if (p.type === 'record' && p.replica === replica && p.seq === seq) {
      found = { ...place(l), bytes: Buffer.from(l.bytes), terminated: l.terminated }
      if (where.after !== undefined) break
    }
  }
  return found
}

/** Names a break the first pass found. */
async function diagnose (files: readonly string[], s: Suspect): Promise<ChainBreak & { pos: number }> {
  if (s.type === 'break') return s.found
  const { r, line } = s
  const base = { replica: r.name, seq: s.seq }
  const boundary = line.line === 1 && line.file !== r.at.file
    ? ` (${line.file} starts here: is a rotated file missing between ${r.at.file} and ${line.file}, or are the files not given oldest first?)`
    : ''
  if (s.type === 'gap') {
    const later = await findSeq(files, r.name, r.seq + 1, { after: line.pos })
    if (later !== null) {
      return { ...line, ...base, kind: 'reordered', message: `replica ${r.name}'s seq ${r.seq + 1} belongs here, after seq ${r.seq} (${at(r.at)}), but comes later, at ${at(later)}: records were moved` }
    }
    const missing = s.seq - r.seq - 1
    return { ...line, ...base, kind: 'deleted', message: `seq ${r.seq + 1}${missing > 1 ? `–${s.seq - 1}` : ''} of replica ${r.name} ${missing > 1 ? `(${missing} records) are` : 'is'} missing: the record before this one is seq ${r.seq} at ${at(r.at)}${boundary}` }
  }
  if (s.type === 'link') {
    // The next record of the replica tells which of the two was changed: it links to the genuine one.
    const next = await findSeq(files, r.name, s.seq, { after: line.pos })
    if (next !== null && parse(next.bytes).type === 'record' && (parse(next.bytes) as { prev: string }).prev === r.hash) {
      return { ...line, ...base, kind: 'inserted', message: `this record claims seq ${s.seq} but does not link to seq ${r.seq} (${at(r.at)}), and the record after it with the same seq (${at(next)}) does: it was added to the file` }
    }
    return {
      ...place(r.at), replica: r.name, seq: r.seq, kind: 'edited',
      message: `replica ${r.name}'s seq ${r.seq} was changed after it was written (or the prev of the next record was): its line no longer hashes to the prev that seq ${s.seq} (${at(line)}) holds for it${boundary}`
    }
  }
  // seq at or below the last one: a copy, or a second record with a seq already used.
  const earlier = await findSeq(files, r.name, s.seq, { before: line.pos })
  if (earlier !== null && earlier.bytes.equals(s.bytes)) {
    return { ...line, ...base, kind: 'duplicate', message: `an exact copy of ${at(earlier)} (replica ${r.name} seq ${s.seq}), which is already in the chain: a replayed record` }
  }
  if (earlier !== null && s.seq === r.seq) {
    // Two records with the same seq one after the other: the chain goes on from one of them.
    const after = await findSeq(files, r.name, s.seq + 1, { after: line.pos })
    const afterPrev = after === null ? null : (parse(after.bytes) as { prev?: string }).prev
    if (afterPrev === s.hash) {
      return { ...place(earlier), ...base, kind: 'inserted', message: `a second record with seq ${s.seq} of replica ${r.name}; the chain goes on from the other one (${at(line)}), so this one was added to the file` }
    }
    if (afterPrev === r.hash) {
      return { ...line, ...base, kind: 'inserted', message: `a second record with seq ${s.seq} of replica ${r.name}; the chain goes on from the other one (${at(earlier)}), so this one was added to the file` }
    }
  }
  return { ...line, ...base, kind: 'reordered', message: `seq ${s.seq} of replica ${r.name} comes after seq ${r.seq} (${at(r.at)})${earlier !== null ? `, and ${at(earlier)} already has seq ${s.seq}` : ''}: records were moved or inserted${boundary}` }
}

/** Whether a chain-resume later in the files acknowledges a cut-off line. */
async function acknowledgedLater (files: readonly string[], hash: string, after: number): Promise<boolean> {
  for await (const l of readLines(files)) {
    if (l.pos <= after) continue
    const p = parse(l.bytes)
    if (p.type === 'record' && p.record.event === 'chain-resume' && (p.record.cutOff as { sha256?: unknown } | undefined)?.sha256 === hash) return true
  }
  return false
}

/**
 * Verifies `files` (oldest first) as one sequence of lines. With `keys`, every checkpoint's
 * signature is checked, every chain must start with one and keep the interval it promises.
 * Throws (ENOENT, EACCES…) when a file cannot be read.
 */
export async function verifyAuditFiles (files: readonly string[], opts: { keys?: CheckpointKeys } = {}): Promise<VerifyReport> {
  const v = new Verifier(opts.keys)
  let found: (ChainBreak & { pos: number }) | null = null
  for await (const l of readLines(files)) {
    const s = v.line(l)
    if (s !== null) { found = await diagnose(files, s); break }
  }
  // A cut-off line before the break (or anywhere, without one) is the first broken link,
  // unless a chain-resume further on acknowledges it.
  for (const c of v.cutOffs) {
    if (found !== null && c.at.pos > found.pos) break
    if (found !== null && await acknowledgedLater(files, c.hash, c.at.pos)) continue
    found = v.cutOffBreak(c)
    break
  }
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
