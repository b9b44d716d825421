// The console's decision index (sql.js): what indexing one audit record costs (add() on an index
// at its cap of 100 000 records, so the batched deletes of the oldest are included),
// beside the searches the console runs and loading an audit file.
// Run: npm run build && node bench/micro/decision-index.mjs   (results in .scratch/bench/results/decision-index.json,
// or bench/results/decision-index.json with --write)
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Bench } from 'tinybench'
import { benchOptions, quick, report, writeResults } from './common.mjs'
import { DecisionIndex } from '../../dist/lib/console/decision-index.js'

const T0 = Date.parse('2025-03-01T00:00:00.000Z')
const agents = Array.from({ length: 50 }, (_, i) => `agent-${i}`)
const tools = Array.from({ length: 40 }, (_, i) => `tool_${i}`)
const outcomes = ['allow', 'allow', 'allow', 'allow', 'deny', 'allow', 'allow', 'error']
let n = 0
// A record as the audit plugin writes it; one second apart, so time order is insertion order.
function record () {
  const i = n++
  return {
    time: new Date(T0 + i * 1000).toISOString(),
    requestId: `req-${i}`,
    decisionId: `9f1c2b7e-${i}`,
    agentId: agents[i % agents.length],
    userId: `user-${i % 13}`,
    server: `server-${i % 5}`,
    httpMethod: 'POST',
    method: 'tools/call',
    rpcId: i,
    tool: tools[i % tools.length],
    upstreamTokenId: `jti-${i}`,
    outcome: outcomes[i % outcomes.length],
    reason: 'permitted by policy',
    policies: ['policy0', 'policy3'],
    policyVersion: 'sha256:3f1a9b',
    status: 200,
    durationMs: 3.217
  }
}

const index = await DecisionIndex.create()
for (let i = 0; i < 99_000; i++) index.add(record())
const repeat = record()
index.add(repeat)

const page = index.search({ limit: 50 })
// A summary reads records that stay put: a second index, 100 000 records over 27.8 hours, the
// last 24 hours of them in the window (1 728 of the agent's).
n = 0
const still = await DecisionIndex.create()
for (let i = 0; i < 100_000; i++) still.add(record())
const summaryTo = new Date(T0 + 100_000 * 1000).toISOString()
if (still.agentSummary('agent-7', { to: summaryTo }).total !== 1728) throw new Error('the summary window holds other records than intended')
n = 5_000_000
const dir = mkdtempSync(join(tmpdir(), 'mcpw-bench-decisions-'))
const file = join(dir, 'audit.jsonl')
n = 10_000_000
writeFileSync(file, Array.from({ length: 10_000 }, () => JSON.stringify(record())).join('\n') + '\n')

const bench = new Bench(benchOptions)
// Each add() is of a new record, made in the timed function: the first row is that making alone.
let scratch = 0
bench.add('baseline: make a record (inside the next row)', () => { scratch += record().rpcId })
bench.add('add(): a new record (at the 100k cap, batched deletes included)', () => {
  if (!index.add(record())) throw new Error('not added')
})
bench.add('add(): a repeat (dedupe)', () => { if (index.add(repeat)) throw new Error('added twice') })
bench.add('search: newest 50, no filter', () => { index.search({ limit: 50 }) })
bench.add('search: agent, newest 50', () => { index.search({ agent: 'agent-7', limit: 50 }) })
bench.add('search: tool + outcome deny, newest 50', () => { index.search({ tool: 'tool_4', outcome: 'deny', limit: 50 }) })
bench.add('search: next page (cursor)', () => { index.search({ limit: 50, cursor: page.next }) })
bench.add('search: one id', () => { index.search({ id: 'req-1234' }) })
bench.add('get: one id', () => { index.get('9f1c2b7e-1234') })
bench.add('agentSummary: 24 h, 24 buckets, 1 728 records', () => { still.agentSummary('agent-7', { to: summaryTo }) })
bench.add('agents(): picker', () => { index.agents() })
bench.add('tools(): picker', () => { index.tools() })
bench.add('loadFile: 10 000 lines into a new index', async () => {
  const fresh = await DecisionIndex.create()
  const r = await fresh.loadFile(file)
  fresh.close()
  if (r.loaded !== 10_000) throw new Error('lines lost')
})
await bench.run()
const rows = report('decision-index', bench)

// The steady cost of add() at the cap: process CPU time over many inserts, each delete batch,
// the garbage collector and the making of the records included (see the baseline row).
const count = quick ? 20_000 : 100_000
const before = process.cpuUsage()
for (let i = 0; i < count; i++) index.add(record())
const used = process.cpuUsage(before)
const amortised = { adds: count, cpu_us_per_add: +((used.user + used.system) / count).toFixed(1) }
console.table([amortised])
writeResults('decision-index', { rows, amortised })
process.stderr.write(`bench: decision-index: ${index.size} records indexed at the end\n`)
index.close()
still.close()
if (scratch < 0) console.log(scratch)
