// SSE rewrite: a tools/list answer of 50 tools in one SSE event, filtered through the
// stream transform, against passing the same bytes through untouched.
// Results in .scratch/bench/results/sse.json, or bench/results/sse.json with --write.
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { Bench } from 'tinybench'
import { benchOptions, report } from './common.mjs'
import { sseTransform } from '../../dist/lib/sse.js'

const tools = Array.from({ length: 50 }, (_, i) => ({ name: `tool_${i}`, description: `Tool ${i}.`, inputSchema: { type: 'object', properties: { id: { type: 'string' } } } }))
const event = `event: message\nid: 1\ndata: ${JSON.stringify({ jsonrpc: '2.0', id: 1, result: { tools } })}\n\n`
const chunks = [Buffer.from(event.slice(0, 700)), Buffer.from(event.slice(700))]
const sink = () => new Writable({ write (_c, _e, cb) { cb() } })
const keepEven = (m) => ({ ...m, result: { tools: m.result.tools.filter((_, i) => i % 2 === 0) } })
const bench = new Bench(benchOptions)
bench.add('SSE pass-through (baseline)', async () => { await pipeline(Readable.from(chunks), sink()) })
bench.add('SSE rewrite: parse, filter 50 tools, re-serialise', async () => { await pipeline(Readable.from(chunks), sseTransform(keepEven), sink()) })
await bench.run()
report('sse', bench)
