// SSE rewrite: a tools/list answer of 50 tools in one SSE event, filtered through the
// stream transform, against passing the same bytes through untouched.
// Results in bench/results/sse.json.
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { join } from 'node:path'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { Bench } from 'tinybench'
import { sseTransform } from '../../dist/lib/sse.js'

const root = new URL('../../', import.meta.url).pathname
const tools = Array.from({ length: 50 }, (_, i) => ({ name: `tool_${i}`, description: `Tool ${i}.`, inputSchema: { type: 'object', properties: { id: { type: 'string' } } } }))
const event = `event: message\nid: 1\ndata: ${JSON.stringify({ jsonrpc: '2.0', id: 1, result: { tools } })}\n\n`
const chunks = [Buffer.from(event.slice(0, 700)), Buffer.from(event.slice(700))]
const sink = () => new Writable({ write (_c, _e, cb) { cb() } })
const keepEven = (m) => ({ ...m, result: { tools: m.result.tools.filter((_, i) => i % 2 === 0) } })
const quick = process.argv.includes('--quick')
const bench = new Bench({ time: quick ? 300 : 2000, warmupTime: quick ? 100 : 500 })
bench.add('SSE pass-through (baseline)', async () => { await pipeline(Readable.from(chunks), sink()) })
bench.add('SSE rewrite: parse, filter 50 tools, re-serialise', async () => { await pipeline(Readable.from(chunks), sseTransform(keepEven), sink()) })
await bench.run()
const rows = bench.tasks.map(t => ({ name: t.name, p50_us: +(t.result.latency.p50 * 1000).toFixed(1), p99_us: +(t.result.latency.p99 * 1000).toFixed(1), ops_per_s: Math.round(t.result.throughput.mean) }))
console.table(rows)
mkdirSync(join(root, 'bench/results'), { recursive: true })
writeFileSync(join(root, 'bench/results/sse.json'), JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, quick, rows }, null, 2) + '\n')
