// Ephemeral tokens: mint (gateway) and verify (upstream, mcp-warden/upstream), side by side.
// Run: npm run bench:tokens   (builds first; results in .scratch/bench/results/tokens.json,
// or bench/results/tokens.json with `npm run bench:tokens -- --write`)
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Bench } from 'tinybench'
import { benchOptions, quick, report } from './common.mjs'
import { KeyRing } from '../../dist/lib/tokens/keys.js'
import { TokenMinter } from '../../dist/lib/tokens/minter.js'
import { messageBinding } from '../../dist/lib/tokens/binding.js'
import { createUpstreamVerifier, MemoryReplayStore } from '../../dist/lib/upstream.js'

const ring = new KeyRing(mkdtempSync(join(tmpdir(), 'mcpw-bench-keys-')), 60)
const minter = new TokenMinter(ring, { issuer: 'https://gw.bench', ttlSeconds: 60 })
const audience = 'http://127.0.0.1:9001/mcp'
const body = { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT * FROM customers WHERE tier = ?', params: ['gold'] } } }
const agent = { agentId: 'bench-agent', userId: 'alice' }
const verifier = createUpstreamVerifier({ issuer: 'https://gw.bench', audience, jwks: ring.jwks(), replay: new MemoryReplayStore() })

// Tokens for the verify bench are minted ahead, so only verification is timed; each is used once.
const pool = []
for (let i = 0; i < (quick ? 20_000 : 100_000); i++) pool.push(minter.mint(agent, audience, messageBinding('POST', body)).token)
let next = 0

const bench = new Bench(benchOptions)
bench.add('binding: canonical JSON + SHA-256 of a tools/call', () => { messageBinding('POST', body) })
bench.add('mint: binding + sign (EdDSA)', () => { minter.mint(agent, audience, messageBinding('POST', body)) })
bench.add('upstream verify: signature, claims, scope, call hash, jti', async () => {
  await verifier.verify({ authorization: `Bearer ${pool[next++ % pool.length]}`, httpMethod: 'POST', body })
})
await bench.run()
report('tokens', bench)
if (next > pool.length) console.log(`note: ${next - pool.length} verifications reused a token and measured the replay refusal`)
