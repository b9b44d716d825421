// Shared by the micro-benches: rows of a tinybench run, printed and written to bench/results/<name>.json.
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { join } from 'node:path'

const root = new URL('../../', import.meta.url).pathname

export const quick = process.argv.includes('--quick')
export const benchOptions = { time: quick ? 300 : 2000, warmupTime: quick ? 100 : 500 }

export function report (name, bench) {
  const rows = bench.tasks.map(t => ({
    name: t.name,
    p50_us: +(t.result.latency.p50 * 1000).toFixed(1),
    p99_us: +(t.result.latency.p99 * 1000).toFixed(1),
    mean_us: +(t.result.latency.mean * 1000).toFixed(1),
    ops_per_s: Math.round(t.result.throughput.mean)
  }))
  console.table(rows)
  writeResults(name, { rows })
  return rows
}

export function writeResults (name, data) {
  mkdirSync(join(root, 'bench/results'), { recursive: true })
  writeFileSync(join(root, `bench/results/${name}.json`), JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model, quick, ...data }, null, 2) + '\n')
}
