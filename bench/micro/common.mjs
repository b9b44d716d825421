// Shared by the micro-benches: rows of a tinybench run, printed and written to <name>.json in
// bench/results/ with --write, otherwise in .scratch/bench/results/ (see ../out.mjs).
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { basename, join } from 'node:path'
import { progress, resultsDir, root, shown, write } from '../out.mjs'

export const quick = process.argv.includes('--quick')
const benchName = basename(process.argv[1] ?? '', '.mjs')
progress(`micro: ${benchName}${quick ? ' (quick)' : ''}…`)
// setup runs once per task before it is measured: a line per task keeps long runs visibly alive.
export const benchOptions = { time: quick ? 300 : 2000, warmupTime: quick ? 100 : 500, setup: (task, mode) => { if (mode === 'run') progress(`micro: ${benchName}: ${task.name}…`) } }

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
  const file = join(resultsDir, `${name}.json`)
  mkdirSync(resultsDir, { recursive: true })
  writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model, quick, ...data }, null, 2) + '\n')
  progress(`micro: ${name}: wrote ${shown(file)}${write ? '' : ` (--write updates ${shown(join(root, `bench/results/${name}.json`))})`}`)
}
