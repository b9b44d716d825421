/**
 * A bounded map of remembered values, each until an optional expiry: remembered decisions,
 * verified tokens, exchanged tokens. When it is full, expired entries go first (when any entry
 * can expire), then the entry set first. Counts hits and misses for the bench and the tests.
 */
export class BoundedCache<V> {
  readonly #entries = new Map<string, { value: V, until: number }>()
  readonly #max: number
  /** Whether any entry was set with an expiry: only then is a full cache swept for expired ones. */
  #expiring = false
  hits = 0
  misses = 0

  constructor (max: number) { this.#max = max }

  /** The value, unless there is none or it expired (ms since the epoch `now`). */
  get (key: string, now = Date.now()): V | undefined {
    const e = this.#entries.get(key)
    if (e !== undefined && e.until <= now) this.#entries.delete(key)
    if (e === undefined || e.until <= now) {
      this.misses++
      return undefined
    }
    this.hits++
    return e.value
  }

  /** Keeps `value` until `until` (ms since the epoch; default: until it is pushed out). */
  set (key: string, value: V, until = Infinity): void {
    if (until !== Infinity) this.#expiring = true
    if (!this.#entries.has(key) && this.#entries.size >= this.#max) {
      if (this.#expiring) {
        const now = Date.now()
        for (const [k, e] of this.#entries) if (e.until <= now) this.#entries.delete(k)
      }
      if (this.#entries.size >= this.#max) this.#entries.delete(this.#entries.keys().next().value!)
    }
    this.#entries.set(key, { value, until })
  }

  get size (): number { return this.#entries.size }
  /** What is held (tests check what a remembered entry keeps). */
  * entries (): IterableIterator<[string, V]> { for (const [k, e] of this.#entries) yield [k, e.value] }
  clear (): void { this.#entries.clear() }
}
