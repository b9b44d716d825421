// Cedar decision latency: the shipped reference policies and a 200-policy set, side by side,
// each decided in Cedar every time (the engine's cache off) and repeated (remembered).
// Run: npm run bench:cedar   (builds first; results in .scratch/bench/results/cedar.json,
// or bench/results/cedar.json with `npm run bench:cedar -- --write`)
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Bench } from 'tinybench'
import { benchOptions, report } from './common.mjs'
import { CedarEngine, compilePolicySet, readPolicySource } from '../../dist/lib/cedar/engine.js'
import { validateConfig } from '../../dist/lib/config.js'
import { identityFromClaims } from '../../dist/lib/identity.js'

const root = new URL('../../', import.meta.url).pathname
const schema = join(root, 'cedar/schema.cedarschema')
const shipped = join(root, 'cedar/policies')

// 200 policies: the 15 shipped ones and 185 role/tool rules of the same shapes.
const big = mkdtempSync(join(tmpdir(), 'mcpw-bench-cedar-'))
for (const f of ['00-connect.cedar', '10-roles.cedar', '20-admin-tools.cedar', '30-sensitive-tools.cedar']) {
  writeFileSync(join(big, f), readFileSync(join(shipped, f)))
}
const extra = []
for (let i = 0; i < 185; i++) {
  const tool = `svc${i % 20}/tool_${i}`
  extra.push(i % 3 === 0
    ? `@id("extra-forbid-${i}") @advice("rule ${i}") forbid (principal in Mcp::Role::"team_${i % 17}", action in Mcp::Action::"call_tool", resource == Mcp::Tool::"${tool}") when { context.localHour < ${i % 24} };`
    : `@id("extra-permit-${i}") permit (principal in Mcp::Role::"team_${i % 17}", action in Mcp::Action::"call_tool", resource) when { resource.sensitivity == "${['low', 'medium', 'high'][i % 3]}" && principal.department == "dept_${i % 11}" && context.localWeekday <= ${1 + (i % 7)} };`)
}
writeFileSync(join(big, '90-extra.cedar'), extra.join('\n'))

const config = validateConfig({
  identity: { issuer: 'https://idp.bench', jwksUri: 'https://idp.bench/jwks' },
  authorization: { schema, policies: shipped },
  upstreams: { db: { url: 'http://127.0.0.1:1/mcp', tools: { database_query: { sensitivity: 'low', readOnly: true } } } }
})
const server = config.upstreams.get('db')
const identity = identityFromClaims({ iss: 'https://idp.bench', sub: 'bench-agent', roles: ['readonly', 'team_3'], department: 'dept_3', userId: 'u' }, config.identity)
const request = { identity, server, action: 'call_tool', method: 'tools/call', tool: 'database_query' }

const sets = {
  shipped: compilePolicySet(readPolicySource(schema, shipped)),
  '200 policies': compilePolicySet(readPolicySource(schema, big))
}
const engines = Object.fromEntries(Object.entries(sets).map(([k, s]) => [k, new CedarEngine(s, 'Asia/Seoul', { cache: false })]))
const remembering = Object.fromEntries(Object.entries(sets).map(([k, s]) => [k, new CedarEngine(s, 'Asia/Seoul')]))
for (const [k, e] of [...Object.entries(engines), ...Object.entries(remembering)]) {
  const d = e.authorize(request)
  if (!d.allowed) throw new Error(`bench request should be allowed by ${k}: ${d.reason}`)
}

const bench = new Bench(benchOptions)
for (const [k, e] of Object.entries(engines)) bench.add(`cedar decision, ${k} (${sets[k].policyIds.length})`, () => { e.authorize(request) })
for (const [k, e] of Object.entries(remembering)) bench.add(`cedar decision repeated (remembered), ${k} (${sets[k].policyIds.length})`, () => { e.authorize(request) })
await bench.run()
const [a, b, c] = report('cedar', bench)
console.log(`200-policy / shipped p50 ratio: ${(b.p50_us / a.p50_us).toFixed(2)}; remembered / decided (shipped): ${(c.p50_us / a.p50_us).toFixed(3)}`)
