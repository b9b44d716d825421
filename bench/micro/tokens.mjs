// Ephemeral tokens: mint (gateway) and verify (upstream, mcp-warden/upstream), side by side.
// Run: npm run bench:tokens   (builds first; results in bench/results/tokens.json)
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs'
import { tmpdir, cpus } from 'node:os'
import { join } from 'node:path'
import { Bench } from 'tinybench'
import { KeyRing } from '../../dist/lib/tokens/keys.js'
import { TokenMinter } from '../../dist/lib/tokens/minter.js'
import { messageBinding } from '../../dist/lib/tokens/binding.js'
import { createUpstreamVerifier, MemoryReplayStore } from '../../dist/lib/upstream.js'

const root = new URL('../../', import.meta.url).pathname
const ring = new KeyRing(mkdtempSync(join(tmpdir(), 'mcpw-bench-keys-')), 60)
const minter = new TokenMinter(ring, { issuer: 'https://gw.bench', ttlSeconds: 60 })
const audience = 'http://127.0.0.1:9001/mcp'
const body = { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT * FROM customers WHERE tier = ?', params: ['gold'] } } }
const agent = { agentId: 'bench-agent', userId: 'alice' }
const verifier = createUpstreamVerifier({ issuer: 'https://gw.bench', audience, jwks: ring.jwks(), replay: new MemoryReplayStore() })

// Tokens for the verify bench are minted ahead, so only verification is timed; each is used once.
const quick = process.argv.includes('--quick')
const pool = []
for (let i = 0; i < (quick ? 20_000 : 100_000); i++) pool.push(minter.mint(agent, audience, messageBinding('POST', body)).token)
let next = 0

const bench = new Bench({ time: quick ? 300 : 2000, warmupTime: quick ? 100 : 500 })
bench.add('binding: canonical JSON + SHA-256 of a tools/call', () => { messageBinding('POST', body) })
bench.add('mint: binding + sign (EdDSA)', () => { minter.mint(agent, audience, messageBinding('POST', body)) })
bench.add('upstream verify: signature, claims, scope, call hash, jti', async () => {
  await verifier.verify({ authorization: `Bearer ${pool[next++ % pool.length]}`, httpMethod: 'POST', body })
})
await bench.run()
const rows = bench.tasks.map(t => ({
  name: t.name,
  p50_us: +(t.result.latency.p50 * 1000).toFixed(1),
  p99_us: +(t.result.latency.p99 * 1000).toFixed(1),
  mean_us: +(t.result.latency.mean * 1000).toFixed(1),
  ops_per_s: Math.round(t.result.throughput.mean)
}))
console.table(rows)
if (next > pool.length) console.log(`note: ${next - pool.length} verifications reused a token and measured the replay refusal`)
mkdirSync(join(root, 'bench/results'), { recursive: true })
writeFileSync(join(root, 'bench/results/tokens.json'), JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model, quick, rows }, null, 2) + '\n')
