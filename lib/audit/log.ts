/**
 * The audit log as written: one JSON line per record, each sealed into this replica's hash chain
 * (./chain.ts) in write(), so the order of the lines is the order of the chain. The lines go to a
 * pino destination (stdout or a file, asynchronous) or to a stream the host gives.
 *
 * With a file destination the chain survives restarts (the file's tail is read at start) and
 * rotation (size-based here, or external with reopen()); with `checkpointEvery` it is anchored
 * by Ed25519-signed checkpoint records. docs/audit.md describes the format.
 */
import { appendFileSync, existsSync, renameSync, statSync, writeSync } from 'node:fs'
import type { KeyObject } from 'node:crypto'
import { pino, type DestinationStream } from 'pino'
import { Chain, signCheckpoint, type ChainHead, type CheckpointAt } from './chain.js'
import { readChainTail, type ChainTail } from './tail.js'

type FileDestination = ReturnType<typeof pino.destination>

export interface AuditLogOptions {
  /** `stdout` or an absolute file path. */
  destination: string
  /** Where the lines go instead of `destination` (the chain starts anew; no rotation). */
  stream?: DestinationStream
  /** The chain's name, `replica` in every record. */
  replica: string
  /** A signed checkpoint after every this many records; 0 or absent: none. */
  checkpointEvery?: number
  /** The key checkpoints are signed with (called for each checkpoint, so a rotated key is used at once). */
  signer?: () => { readonly kid: string, readonly privateKey: KeyObject }
  /** Size-based rotation of a file destination. */
  rotate?: { readonly maxBytes: number, readonly keep: number }
  log?: { warn: (obj: object, msg: string) => void, error: (obj: object, msg: string) => void }
}

/** Rotated files looked through for the chain's last record when the newest ones are empty. */
const MAX_EMPTY_ROTATED = 10

/** How long close() waits for the destination to write what it holds. */
const CLOSE_TIMEOUT_MS = 10_000

/** Resolves on `event` (or after CLOSE_TIMEOUT_MS); `start` runs once the listener is on. */
async function settled (dest: FileDestination, event: string, start?: () => void): Promise<void> {
  await new Promise<void>(resolve => {
    const timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)
    dest.once(event, () => { clearTimeout(timer); resolve() })
    start?.()
  })
}

export class AuditLog {
  readonly #chain: Chain
  readonly #dest: DestinationStream
  /** The pino file destination this log opened (null: stdout or the host's stream). */
  readonly #file: FileDestination | null
  readonly #path: string | null
  readonly #every: number
  readonly #signer: AuditLogOptions['signer']
  readonly #rotate: AuditLogOptions['rotate']
  readonly #log: AuditLogOptions['log']
  #sinceCheckpoint = 0
  /** Bytes in the current file (counted as the destination writes them). */
  #bytes = 0
  /** A rotation or reopen is under way: the new file is not open yet. */
  #reopening = false
  /** 'open' → 'ending' (close() called; the destination still takes lines) → 'ended'. */
  #state: 'open' | 'ending' | 'ended' = 'open'

  constructor (opts: AuditLogOptions) {
    this.#every = opts.checkpointEvery ?? 0
    if (!Number.isSafeInteger(this.#every) || this.#every < 0) throw new RangeError('checkpointEvery: a whole number, 0 for none')
    if (this.#every > 0 && opts.signer === undefined) throw new TypeError('checkpoints need a signer')
    this.#signer = opts.signer
    this.#log = opts.log
    const file = opts.stream === undefined && opts.destination !== 'stdout' ? opts.destination : null
    this.#rotate = file !== null ? opts.rotate : undefined
    this.#path = file
    let tail: ChainTail | null = null
    let head: ChainHead | undefined
    if (file !== null) {
      tail = readChainTail(file, opts.replica)
      // Rotated (here or by logrotate) and nothing written since: the chain goes on from the newest
      // rotated file that has lines.
      let previous: ChainTail | null = null
      if (tail === null) {
        for (let i = 1; previous === null && i <= MAX_EMPTY_ROTATED && existsSync(`${file}.${i}`); i++) {
          previous = readChainTail(`${file}.${i}`, opts.replica)
        }
      }
      head = tail?.head ?? previous?.head ?? undefined
      if (tail === null && previous !== null) tail = { size: 0, head: previous.head, unterminated: false, cutOff: previous.cutOff }
      if (tail !== null && tail.head === null && tail.size > 0) {
        this.#log?.warn({ file, replica: opts.replica }, 'no record of this replica at the end of the audit file: a new chain starts')
      }
    }
    this.#chain = new Chain(opts.replica, head)
    if (opts.stream !== undefined) {
      this.#dest = opts.stream
      this.#file = null
    } else {
      this.#file = file === null ? pino.destination({ dest: 1, sync: false }) : pino.destination({ dest: file, mkdir: true, sync: false })
      this.#dest = this.#file
    }
    if (this.#file !== null && file !== null) {
      const dest = this.#file
      dest.on('ready', () => {
        try { this.#bytes = statSync(file).size } catch { this.#bytes = 0 }
        this.#reopening = false
      })
      if (this.#rotate !== undefined) {
        const { maxBytes } = this.#rotate
        dest.on('write', (n: number) => {
          this.#bytes += n
          // Not while closing: the destination no longer reopens then, so the file is rotated at the next start.
          if (this.#bytes >= maxBytes && !this.#reopening && this.#state === 'open') this.#rotateNow()
        })
      }
    }
    // A record cut off by a crash keeps a line of its own, and the record after it says so.
    if (tail?.unterminated === true && tail.size > 0) this.#dest.write('\n')
    if (tail?.cutOff != null) this.#append({ time: new Date().toISOString(), event: 'chain-resume', cutOff: tail.cutOff })
    if (this.#every > 0) this.#checkpoint(this.#chain.seq === 0 ? 'start' : 'resume')
  }

  /** The replica, and the seq and line hash of the newest record. */
  get head (): { replica: string, seq: number, hash: string } {
    return { replica: this.#chain.replica, seq: this.#chain.seq, hash: this.#chain.hash }
  }

  /**
   * Writes one record (any JSON object without `replica`, `seq` or `prev` keys of its own). With
   * checkpoints, a record written while or after the log closes (a request that ended while the
   * gateway stopped) is followed by a close checkpoint of its own: after the close checkpoint,
   * `audit verify` accepts nothing unsigned.
   */
  write (record: object): void {
    this.#append(record)
    if (this.#every === 0) return
    if (this.#state !== 'open') this.#checkpoint('close')
    else if (this.#sinceCheckpoint >= this.#every) this.#checkpoint('interval')
  }

  /**
   * Opens the file destination anew (after an external rotation moved it away; SIGHUP). What
   * was written before goes to the old file, everything after to the new one, in order.
   */
  reopen (): void {
    if (this.#state !== 'open' || this.#path === null) {
      // The host's stream reopens itself if it can; stdout has nothing to reopen.
      if (this.#state === 'open' && this.#file === null) (this.#dest as { reopen?: () => void }).reopen?.()
      return
    }
    this.#reopening = true
    this.#file!.reopen()
  }

  /** Writes a last checkpoint (when on) and everything held, in order; the destination ends. */
  async close (): Promise<void> {
    if (this.#state !== 'open') return
    if (this.#every > 0 && this.#sinceCheckpoint > 0) this.#checkpoint('close')
    this.#state = 'ending'
    const dest = this.#file
    if (dest === null) {
      try { (this.#dest as { flushSync?: () => void }).flushSync?.() } catch { /* the host's stream is not ready or already closed */ }
      this.#state = 'ended'
      return
    }
    // A reopen waiting behind a write would be dropped by end(): the new file opens first.
    if (this.#reopening) await settled(dest, 'ready')
    await settled(dest, 'close', () => { dest.end() })
    this.#state = 'ended'
  }

  #append (record: object, checkpoint = false): void {
    const line = this.#chain.seal(JSON.stringify(record)) + '\n'
    this.#sinceCheckpoint = checkpoint ? 0 : this.#sinceCheckpoint + 1
    if (this.#state !== 'ended') {
      this.#dest.write(line)
    } else if (this.#path !== null) {
      // After close (a request that ended while the gateway stopped): written at once, still in order.
      appendFileSync(this.#path, line)
    } else if (this.#file !== null) {
      writeSync(1, line)
    } else {
      this.#dest.write(line)
    }
  }

  #checkpoint (at: CheckpointAt): void {
    const key = this.#signer!()
    const time = new Date().toISOString()
    const fields = { replica: this.#chain.replica, seq: this.#chain.seq + 1, prev: this.#chain.hash, time, at, every: this.#every }
    this.#append({ time, event: 'checkpoint', at, every: this.#every, kid: key.kid, sig: signCheckpoint(fields, key.privateKey) }, true)
  }

  /**
   * Size-based rotation, at a write of the destination: `file` → `file.1` → … → `file.<keep>`
   * (the oldest beyond keep is replaced), and a new `file`. Lines the destination still holds go
   * to the new file after everything already written to the old one, so the chain runs on.
   */
  #rotateNow (): void {
    const file = this.#path!
    const { keep } = this.#rotate!
    try {
      for (let i = keep - 1; i >= 1; i--) {
        if (existsSync(`${file}.${i}`)) renameSync(`${file}.${i}`, `${file}.${i + 1}`)
      }
      renameSync(file, `${file}.1`)
    } catch (err) {
      this.#log?.error({ err, file }, 'the audit file could not be rotated; writing on to it')
      this.#bytes = 0
      return
    }
    this.#reopening = true
    this.#file!.reopen()
  }
}
