// Where a bench run writes, and its progress lines. With --write: the committed files
// (bench/results/*.json, bench/results/hops.svg, bench/RESULTS.md); without: the same layout
// under .scratch/bench/ (ignored by git), so a plain run leaves the tree untouched.
import { join, relative } from 'node:path'

export const root = new URL('../', import.meta.url).pathname
export const write = process.argv.includes('--write')
export const outDir = join(root, write ? 'bench' : '.scratch/bench')
export const resultsDir = join(outDir, 'results')

// A path as the person who ran the bench would type it.
export const shown = (path) => relative(process.cwd(), path) || '.'

// One line to stderr as each phase starts, so a long run shows it is alive.
export const progress = (msg) => { process.stderr.write(`bench: ${msg}\n`) }
