/**
 * The audit log's hash chain (DESIGN.md §12). Every line the audit sink writes starts with three
 * fields: `replica` (which chain), `seq` (1, 2, 3 … in that chain) and `prev`, the lower-case hex
 * SHA-256 of the previous line of the same chain, its exact UTF-8 bytes without the newline. The
 * first record of a chain (the genesis) has `seq` 1 and `prev` = 64 zeros ({@link GENESIS_PREV}).
 *
 * Editing, removing, moving or inserting a line breaks a link that `mcp-warden audit verify`
 * reports; signed checkpoints ({@link checkpointPayload}) let it also tell a rewritten chain
 * from the gateway's own.
 */
import { hash, sign, verify, type KeyObject } from 'node:crypto'

/** `prev` of the first record of a chain. */
export const GENESIS_PREV = '0'.repeat(64)

/** What a `prev` looks like. */
export const HASH_PATTERN = /^[0-9a-f]{64}$/

/** The SHA-256 of a line's bytes (UTF-8 for a string), lower-case hex. */
export function lineHash (line: string | Uint8Array): string {
  return hash('sha256', line, 'hex')
}

/** The last link of a chain: the seq and line hash of its newest record (0 and {@link GENESIS_PREV} before the first). */
export interface ChainHead {
  readonly seq: number
  readonly hash: string
}

/**
 * One replica's chain as it is written: {@link seal} turns the JSON text of a record into its
 * line and moves the head on. The record's JSON is not parsed or serialised again: the chain
 * fields go in front of its first key.
 */
export class Chain {
  readonly replica: string
  #seq: number
  #hash: string
  readonly #start: string

  constructor (replica: string, head: ChainHead = { seq: 0, hash: GENESIS_PREV }) {
    if (!Number.isSafeInteger(head.seq) || head.seq < 0 || !HASH_PATTERN.test(head.hash)) throw new RangeError('not a chain head')
    this.replica = replica
    this.#seq = head.seq
    this.#hash = head.hash
    this.#start = `{"replica":${JSON.stringify(replica)},"seq":`
  }

  /** The seq of the newest record (0: none yet). */
  get seq (): number { return this.#seq }
  /** The line hash of the newest record: the `prev` of the next one. */
  get hash (): string { return this.#hash }

  /** The line (without its newline) of a record whose JSON text is `json` (an object); moves the chain on. */
  seal (json: string): string {
    const seq = this.#seq + 1
    const line = `${this.#start}${seq},"prev":"${this.#hash}"${json.length > 2 ? ',' : ''}${json.slice(1)}`
    this.#hash = lineHash(line)
    this.#seq = seq
    return line
  }
}

/** Why a checkpoint was written. */
export type CheckpointAt = 'start' | 'interval' | 'resume' | 'close'
export const CHECKPOINT_AT: ReadonlySet<string> = new Set<CheckpointAt>(['start', 'interval', 'resume', 'close'])

/** The signed fields of a checkpoint record. */
export interface CheckpointFields {
  readonly replica: string
  readonly seq: number
  /** The chain hash so far: the line hash of the record before the checkpoint. */
  readonly prev: string
  readonly time: string
  readonly at: CheckpointAt
  /** The promise of the next checkpoint: at most this many records until then. */
  readonly every: number
}

const CHECKPOINT_TAG = 'mcp-warden audit checkpoint v1'

/** The bytes a checkpoint's Ed25519 signature covers: a JSON array of its signed fields. */
export function checkpointPayload (c: CheckpointFields): Buffer {
  return Buffer.from(JSON.stringify([CHECKPOINT_TAG, c.replica, c.seq, c.prev, c.time, c.at, c.every]), 'utf8')
}

/** The base64url Ed25519 signature of a checkpoint. */
export function signCheckpoint (c: CheckpointFields, privateKey: KeyObject): string {
  return sign(null, checkpointPayload(c), privateKey).toString('base64url')
}

/** Whether `sig` (base64url) is the Ed25519 `publicKey`'s signature of the checkpoint; false for a malformed one. */
export function checkpointSignatureValid (c: CheckpointFields, sig: string, publicKey: KeyObject): boolean {
  if (!/^[A-Za-z0-9_-]{86}$/.test(sig)) return false
  return verify(null, checkpointPayload(c), publicKey, Buffer.from(sig, 'base64url'))
}
