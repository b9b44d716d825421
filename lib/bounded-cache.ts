/**
 * A bounded map of remembered values (decisions, verified tokens): when it is full, the entry
 * set first goes. Counts hits and misses for the bench and the tests.
 */
export class BoundedCache<V> {
  readonly #entries = new Map<string, V>()
  readonly #max: number
  hits = 0
  misses = 0

  constructor (max: number) { this.#max = max }

  get (key: string): V | undefined {
    const v = this.#entries.get(key)
    if (v === undefined) this.misses++
    else this.hits++
    return v
  }

  set (key: string, value: V): void {
    if (this.#entries.size >= this.#max) {
      const oldest = this.#entries.keys().next()
      if (oldest.done !== true) this.#entries.delete(oldest.value)
    }
    this.#entries.set(key, value)
  }

  get size (): number { return this.#entries.size }
  /** What is held (tests check what a remembered entry keeps). */
  entries (): IterableIterator<[string, V]> { return this.#entries.entries() }
  clear (): void { this.#entries.clear() }
}
