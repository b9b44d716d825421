/**
 * A fixed-window budget of failures per client address (failed authentications), kept in
 * memory by each replica. An address that spends it is refused for the rest of the window
 * before any work is done for it. IPv6 addresses are counted per /64 (one host usually holds
 * the whole /64); IPv4-mapped IPv6 addresses as their IPv4 address.
 *
 * Bounded: at most `maxAddresses` are remembered. When full, expired windows are dropped
 * first, then the oldest ones; an attacker who rotates addresses then loses its own history
 * sooner than anyone else's, and never makes the map grow.
 */
import { isIPv6 } from 'node:net'

interface Window { count: number, resetAt: number }

export function addressKey (ip: string): string {
  if (ip.startsWith('::ffff:') && ip.includes('.')) return ip.slice(7)
  if (!isIPv6(ip)) return ip
  // Expand "::" to get the first four groups.
  const [head = '', tail] = ip.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right]
  return groups.slice(0, 4).map(g => g.replace(/^0+(?=.)/, '').toLowerCase()).join(':') + '::/64'
}

export class AddressBudget {
  private readonly windows = new Map<string, Window>()

  constructor (
    private readonly max: number,
    private readonly windowMs: number,
    private readonly maxAddresses = 100_000,
    private readonly now: () => number = Date.now
  ) {}

  /** Seconds until the address may try again, or 0 when it still has budget. */
  blockedFor (ip: string): number {
    const w = this.windows.get(addressKey(ip))
    if (w === undefined) return 0
    const t = this.now()
    if (w.resetAt <= t) return 0
    return w.count >= this.max ? Math.max(1, Math.ceil((w.resetAt - t) / 1000)) : 0
  }

  /** Records one failure; returns the seconds to wait when this failure spent the budget, else 0. */
  fail (ip: string): number {
    const key = addressKey(ip)
    const t = this.now()
    let w = this.windows.get(key)
    if (w === undefined || w.resetAt <= t) {
      if (w !== undefined) this.windows.delete(key)
      this.makeRoom(t)
      w = { count: 0, resetAt: t + this.windowMs }
      this.windows.set(key, w)
    }
    w.count++
    return w.count > this.max ? Math.max(1, Math.ceil((w.resetAt - t) / 1000)) : 0
  }

  get size (): number { return this.windows.size }

  private makeRoom (t: number): void {
    if (this.windows.size < this.maxAddresses) return
    for (const [k, w] of this.windows) if (w.resetAt <= t) this.windows.delete(k)
    // Still full: drop the oldest windows (Map keeps insertion order).
    const excess = this.windows.size - this.maxAddresses + 1
    if (excess <= 0) return
    let n = 0
    for (const k of this.windows.keys()) {
      if (n++ >= excess) break
      this.windows.delete(k)
    }
  }
}
