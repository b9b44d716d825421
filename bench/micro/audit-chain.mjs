// The audit sink's cost per record, with and without the hash chain. "without" is the sink as it
// was before the chain (JSON.stringify of the record, a newline, one write); "with" is
// AuditLog.write (the same, the chain fields put in front and one SHA-256 of the line); and "with
// checkpoints every 1000" adds an Ed25519 signature every thousand records. The destination takes
// the line and drops it, so only the sink's own work is measured (not the file system).
// Run: npm run build && node bench/micro/audit-chain.mjs   (results in .scratch/bench/results/audit-chain.json,
// or bench/results/audit-chain.json with --write)
import { generateKeyPairSync, hash } from 'node:crypto'
import { Bench } from 'tinybench'
import { benchOptions, writeResults } from './common.mjs'
import { AuditLog } from '../../dist/lib/audit/log.js'

// A record as the audit plugin writes it for a tools/call (≈ 480 bytes of JSON).
let n = 0
function record () {
  const i = n++
  return {
    time: new Date(1_750_000_000_000 + i).toISOString(),
    requestId: `6f1c2b7e-3a5d-4c1e-9b2f-${String(i).padStart(12, '0')}`,
    decisionId: `9f1c2b7e-8d4e-4f3a-a1b2-${String(i).padStart(12, '0')}`,
    agentId: 'report-bot',
    userId: 'alice',
    server: 'db',
    httpMethod: 'POST',
    method: 'tools/call',
    rpcId: i,
    tool: 'database_query',
    upstreamTokenId: `c0ffee00-1234-4abc-8def-${String(i).padStart(12, '0')}`,
    outcome: 'allow',
    reason: 'forwarded',
    policies: ['read-only-analysts', 'business-hours'],
    policyVersion: '9c3082ac3295b067',
    status: 200,
    durationMs: 3.217
  }
}

const drop = { write () { return true } }
const { privateKey } = generateKeyPairSync('ed25519')
const chained = new AuditLog({ destination: 'stdout', stream: drop, replica: 'gw-1' })
const checkpointed = new AuditLog({ destination: 'stdout', stream: drop, replica: 'gw-1', checkpointEvery: 1000, signer: () => ({ kid: 'bench', privateKey }) })

const bench = new Bench(benchOptions)
bench.add('without chain (JSON.stringify + write)', () => { drop.write(JSON.stringify(record()) + '\n') })
bench.add('with chain (AuditLog.write)', () => { chained.write(record()) })
bench.add('with chain, checkpoints every 1000', () => { checkpointed.write(record()) })
bench.add('building the record alone', () => { record() })
const line = JSON.stringify({ replica: 'gw-1', seq: 123456, prev: '0'.repeat(64), ...record() })
bench.add(`SHA-256 of one line alone (${Buffer.byteLength(line)} B)`, () => { hash('sha256', line, 'hex') })
await bench.run()

const ns = Object.fromEntries(bench.tasks.map(t => [t.name, t.result.latency.mean * 1e6]))
const base = ns['building the record alone']
const rows = bench.tasks.map(t => ({
  name: t.name,
  ns_per_record: Math.round(ns[t.name]),
  ns_without_building: t.name.startsWith('SHA-256') ? null : Math.round(ns[t.name] - base)
}))
console.table(rows)
const plain = ns['without chain (JSON.stringify + write)'] - base
const chain = ns['with chain (AuditLog.write)'] - base
console.log(`chain: +${Math.round(chain - plain)} ns per record (${(chain / plain).toFixed(2)}× the write without it)`)
writeResults('audit-chain', { rows })
