/**
 * Re-reading configuration files while the gateway runs (policies, signing keys): on a change
 * to any of the watched paths (debounced), and every `everyMs` as a fallback where file events
 * are unreliable (network file systems, some containers). A path that cannot be watched is
 * reported once; the interval and an explicit reload still work. SIGHUP is the host's to wire
 * (buildGateway does): plugins expose reload().
 */
import { watch, type FSWatcher } from 'node:fs'

export interface WatchAndReload {
  /** The files or folders whose change triggers a reload. */
  paths: readonly string[]
  reload: () => unknown
  /** Wait this long after the last change before reloading (default 150 ms). */
  debounceMs?: number
  /** Also reload this often (no interval when absent). */
  everyMs?: number
  /** A path that cannot be watched. */
  onWatchError?: (err: Error, path: string) => void
}

export function watchAndReload (opts: WatchAndReload): { close: () => void } {
  const watchers: FSWatcher[] = []
  let timer: NodeJS.Timeout | undefined
  const changed = (): void => {
    clearTimeout(timer)
    timer = setTimeout(() => { void opts.reload() }, opts.debounceMs ?? 150)
    timer.unref()
  }
  for (const path of opts.paths) {
    try {
      const w = watch(path, { persistent: false }, changed)
      w.on('error', (err) => { opts.onWatchError?.(err, path) })
      watchers.push(w)
    } catch (err) {
      opts.onWatchError?.(err as Error, path)
    }
  }
  const interval = opts.everyMs !== undefined ? setInterval(() => { void opts.reload() }, opts.everyMs) : undefined
  interval?.unref()
  return {
    close: () => {
      clearTimeout(timer)
      clearInterval(interval)
      for (const w of watchers) w.close()
    }
  }
}
