/**
 * A second opinion on tool definitions the rules pass (`toolScan.judge`): an HTTP endpoint the
 * operator runs (a classifier, a model, a review queue) that takes
 *   POST { server, hash, tool }   (application/json)
 * and answers
 *   200 { "verdict": "allow" | "quarantine", "reason": "…" }
 * Verdicts are cached by definition hash, so a definition is judged once however many callers
 * see it. An answer that is not a verdict, an error or a timeout is a failure: the definition
 * gets `onFailure` (quarantine by default), and the judge is asked again after 30 s.
 *
 * At most `concurrency` questions are in flight; the rest wait in a bounded queue, and their
 * `timeoutMs` starts when they are sent, so a list of many new definitions cannot overload the
 * judge into failing (which `onFailure: allow` would turn into a pass). A caller waits at most
 * about `timeoutMs` for a verdict; a definition still waiting then is `pending`: held back from that
 * answer (whatever `onFailure` says), and shown once its verdict is in.
 */
import type { JudgeConfig } from '../config.js'

export interface Verdict {
  readonly quarantine: boolean
  readonly reason: string
  /** True when the judge could not answer and `onFailure` decided. */
  readonly failed: boolean
  /** True when the verdict is not in yet (the question waits or is being answered). */
  readonly pending?: boolean
}

const MAX_CACHED = 50_000
const RETRY_FAILED_MS = 30_000
const MAX_ANSWER_BYTES = 64 * 1024
/** Questions waiting for a free slot; beyond this a definition stays pending and is asked again later. */
const MAX_QUEUED = 10_000

export class ToolJudge {
  readonly #config: JudgeConfig
  readonly #verdicts = new Map<string, Verdict & { until: number }>()
  readonly #asking = new Map<string, Promise<Verdict>>()
  readonly #queue: Array<() => void> = []
  #inFlight = 0

  constructor (config: JudgeConfig) {
    this.#config = config
  }

  /** Questions sent and not yet answered, and questions waiting for a slot. */
  get load (): { inFlight: number, queued: number } { return { inFlight: this.#inFlight, queued: this.#queue.length } }

  /** The verdict on one definition, or a pending one when it is not in within `timeoutMs`. */
  async judge (server: string, hash: string, tool: unknown): Promise<Verdict> {
    const cached = this.#verdicts.get(hash)
    if (cached !== undefined && cached.until > Date.now()) return cached
    let asking = this.#asking.get(hash)
    if (asking === undefined) {
      if (this.#queue.length >= MAX_QUEUED) return { quarantine: true, reason: 'waiting for the judge (too many definitions are waiting)', failed: false, pending: true }
      asking = this.#slot(async () => await this.#ask(server, hash, tool)).then(v => {
        if (this.#verdicts.size >= MAX_CACHED) this.#verdicts.clear()
        this.#verdicts.set(hash, { ...v, until: v.failed ? Date.now() + RETRY_FAILED_MS : Infinity })
        return v
      }).finally(() => { this.#asking.delete(hash) })
      this.#asking.set(hash, asking)
    }
    let timer: NodeJS.Timeout | undefined
    const pending = new Promise<Verdict>(resolve => {
      // A little longer than a question's own timeout, so that a question sent at once ends in its
      // verdict or its failure, never in "pending".
      timer = setTimeout(() => resolve({ quarantine: true, reason: `waiting for the judge (no verdict within ${this.#config.timeoutMs} ms yet)`, failed: false, pending: true }), this.#config.timeoutMs + 100)
    })
    try {
      return await Promise.race([asking, pending])
    } finally {
      clearTimeout(timer)
    }
  }

  /** Runs fn when fewer than `concurrency` questions are in flight. */
  async #slot<T> (fn: () => Promise<T>): Promise<T> {
    if (this.#inFlight >= this.#config.concurrency) await new Promise<void>(resolve => this.#queue.push(resolve))
    this.#inFlight++
    try {
      return await fn()
    } finally {
      this.#inFlight--
      this.#queue.shift()?.()
    }
  }

  async #ask (server: string, hash: string, tool: unknown): Promise<Verdict> {
    const failed = (why: string): Verdict => ({
      quarantine: this.#config.onFailure === 'quarantine',
      reason: `the judge could not answer (${why}); toolScan.judge.onFailure is ${this.#config.onFailure}`,
      failed: true
    })
    let res: Response
    try {
      res = await fetch(this.#config.url, {
        method: 'POST',
        headers: { ...this.#config.headers, 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify({ server, hash, tool }),
        signal: AbortSignal.timeout(this.#config.timeoutMs),
        redirect: 'error'
      })
    } catch (err) {
      const e = err as Error
      return failed(e.name === 'TimeoutError' ? `no answer within ${this.#config.timeoutMs} ms` : e.message)
    }
    if (res.status !== 200) { await res.body?.cancel(); return failed(`status ${res.status}`) }
    let body: unknown
    try {
      const text = await readLimited(res, MAX_ANSWER_BYTES)
      body = JSON.parse(text)
    } catch (err) {
      return failed((err as Error).message)
    }
    const b = body as { verdict?: unknown, reason?: unknown }
    if (b === null || typeof b !== 'object' || (b.verdict !== 'allow' && b.verdict !== 'quarantine')) return failed('the answer has no "verdict" of "allow" or "quarantine"')
    const reason = typeof b.reason === 'string' ? b.reason.slice(0, 500) : ''
    return { quarantine: b.verdict === 'quarantine', reason: reason === '' ? `the judge says ${b.verdict}` : reason, failed: false }
  }
}

async function readLimited (res: Response, max: number): Promise<string> {
  const reader = res.body?.getReader()
  if (reader === undefined) return ''
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > max) { await reader.cancel(); throw new Error(`the answer is larger than ${max} bytes`) }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}
