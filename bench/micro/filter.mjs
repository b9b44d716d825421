// Filtering a tools/list answer of 500 tools for one caller: cold (first sight: scan, pin,
// Cedar decision per tool) and warm (repeated list), side by side; also 50 tools.
// Run: npm run bench:filter   (builds first; results in .scratch/bench/results/filter.json,
// or bench/results/filter.json with `npm run bench:filter -- --write`)
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { quick, writeResults } from './common.mjs'
import { progress } from '../out.mjs'
import { buildGateway } from '../../dist/lib/gateway.js'
import { validateConfig } from '../../dist/lib/config.js'
import { identityFromClaims } from '../../dist/lib/identity.js'
import { ToolGuard } from '../../dist/plugins/tool-filter.js'
import { ToolScanner, loadRules, DEFAULT_RULES_FILE } from '../../dist/lib/tools/scanner.js'
import { FilePinStore } from '../../dist/lib/tools/pins.js'

const root = new URL('../../', import.meta.url).pathname
const dir = mkdtempSync(join(tmpdir(), 'mcpw-bench-filter-'))
const config = validateConfig({
  identity: { issuer: 'https://idp.bench', jwksUri: 'https://idp.bench/jwks' },
  authorization: { schema: join(root, 'cedar/schema.cedarschema'), policies: join(root, 'cedar/policies'), watch: false },
  tokens: { keysDir: join(dir, 'keys') },
  toolScan: { pins: join(dir, 'pins.json') },
  upstreams: { db: { url: 'http://127.0.0.1:1/mcp', tools: { database_query: { sensitivity: 'low', readOnly: true } } } },
  logLevel: 'silent'
})
const app = await buildGateway(config, { logger: false })
await app.ready()
const server = config.upstreams.get('db')
const identity = identityFromClaims({ iss: 'https://idp.bench', sub: 'bench', roles: ['readonly'] }, config.identity)
const scanner = new ToolScanner(loadRules([DEFAULT_RULES_FILE]))
const toolsOf = (n, tag) => Array.from({ length: n }, (_, i) => ({
  name: i === 0 ? 'database_query' : `tool_${tag}_${i}`,
  description: `Tool ${i}: reads records of kind ${i % 7} and returns them as JSON. Safe and read-only.`,
  inputSchema: { type: 'object', properties: { id: { type: 'string', description: 'The record id' }, limit: { type: 'integer', description: 'At most this many' } }, required: ['id'] }
}))

// The same call the tool-filter plugin makes for each tools/list answer.
const filter = async (guard, tools) => await guard.visibleTools(identity, server, tools)

const rounds = quick ? 5 : 25
const rows = []
for (const n of [50, 500]) {
  progress(`micro: filter: ${n} tools, ${rounds} rounds…`)
  const cold = []
  const warm = []
  let visible = 0
  for (let r = 0; r < rounds; r++) {
    const tools = toolsOf(n, `${n}_${r}`)
    const guard = new ToolGuard({ log: app.log, cedar: () => app.mcpWarden.cedar, minter: () => app.mcpWarden.tokens.minter }, config, scanner, new FilePinStore(join(dir, `pins-${n}-${r}.json`)))
    let t0 = performance.now()
    visible = (await filter(guard, tools)).length
    cold.push(performance.now() - t0)
    for (let w = 0; w < 5; w++) {
      t0 = performance.now()
      await filter(guard, tools)
      warm.push(performance.now() - t0)
    }
  }
  const p50 = a => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]
  const p99 = a => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(a.length * 0.99))]
  rows.push({ tools: n, visible, cold_p50_ms: +p50(cold).toFixed(2), cold_p99_ms: +p99(cold).toFixed(2), warm_p50_ms: +p50(warm).toFixed(3), warm_p99_ms: +p99(warm).toFixed(3), cold_over_warm: +(p50(cold) / p50(warm)).toFixed(1) })
}
console.table(rows)
await app.close()
writeResults('filter', { rows })
