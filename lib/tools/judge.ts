/**
 * A second opinion on tool definitions the rules pass (`toolScan.judge`): an HTTP endpoint the
 * operator runs (a classifier, a model, a review queue) that takes
 *   POST { server, hash, tool }   (application/json)
 * and answers
 *   200 { "verdict": "allow" | "quarantine", "reason": "…" }
 * Verdicts are cached by definition hash, so a definition is judged once however many callers
 * see it. An answer that is not a verdict, an error or a timeout is a failure: the definition
 * gets `onFailure` (quarantine by default), and the judge is asked again after 30 s.
 */
import type { JudgeConfig } from '../config.js'

export interface Verdict {
  readonly quarantine: boolean
  readonly reason: string
  /** True when the judge could not answer and `onFailure` decided. */
  readonly failed: boolean
}

const MAX_CACHED = 50_000
const RETRY_FAILED_MS = 30_000
const MAX_ANSWER_BYTES = 64 * 1024

export class ToolJudge {
  readonly #config: JudgeConfig
  readonly #verdicts = new Map<string, Verdict & { until: number }>()
  readonly #asking = new Map<string, Promise<Verdict>>()

  constructor (config: JudgeConfig) {
    this.#config = config
  }

  async judge (server: string, hash: string, tool: unknown): Promise<Verdict> {
    const cached = this.#verdicts.get(hash)
    if (cached !== undefined && cached.until > Date.now()) return cached
    let asking = this.#asking.get(hash)
    if (asking === undefined) {
      asking = this.#ask(server, hash, tool).then(v => {
        if (this.#verdicts.size >= MAX_CACHED) this.#verdicts.clear()
        this.#verdicts.set(hash, { ...v, until: v.failed ? Date.now() + RETRY_FAILED_MS : Infinity })
        return v
      }).finally(() => { this.#asking.delete(hash) })
      this.#asking.set(hash, asking)
    }
    return await asking
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
