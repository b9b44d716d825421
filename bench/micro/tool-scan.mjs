// The tool scanner on the corpus (test/fixtures/tool-corpus): false positives on real servers'
// tools (each server alone, and all of them behind one gateway, where every other server's tool
// names are "other tools"), detection on the poisoned and held-out sets, every false positive and
// miss by name; and what a scan costs: per real tool, and per 64 KB of adversarial text.
// Run: npm run bench:tool-scan   (builds first; results in .scratch/bench/results/tool-scan.json,
// or bench/results/tool-scan.json with `npm run bench:tool-scan -- --write`)
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { quick, writeResults } from './common.mjs'
import { progress } from '../out.mjs'
import { ToolScanner, loadRules, DEFAULT_RULES_FILE } from '../../dist/lib/tools/scanner.js'

const DIR = new URL('../../test/fixtures/tool-corpus/', import.meta.url).pathname
const json = dir => readdirSync(dir).filter(f => f.endsWith('.json')).sort()
const benign = json(join(DIR, 'benign')).map(f => JSON.parse(readFileSync(join(DIR, 'benign', f), 'utf8')))
const poisoned = json(join(DIR, 'poisoned')).flatMap(f => JSON.parse(readFileSync(join(DIR, 'poisoned', f), 'utf8')))
const holdout = json(join(DIR, 'poisoned', 'holdout')).flatMap(f => JSON.parse(readFileSync(join(DIR, 'poisoned', 'holdout', f), 'utf8')))
const scanner = new ToolScanner(loadRules([DEFAULT_RULES_FILE]))
const pct = (n, d) => +(100 * n / d).toFixed(2)
const p = (a, q) => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(a.length * q))]

progress('micro: tool-scan: rates…')
const tools = benign.flatMap(s => s.tools.map(tool => ({ server: s.package, tool, own: s.tools.map(x => x.name) })))
const allNames = benign.map(s => ({ server: s.package, names: s.tools.map(x => x.name) }))
const flag = (ctx) => tools.flatMap(({ server, tool, own }) => {
  const findings = scanner.scan(tool, { ownTools: own, ...(ctx ? { otherTools: allNames.filter(x => x.server !== server).flatMap(x => x.names) } : {}) })
  return findings.length > 0 ? [`${server} ${tool.name}: ${findings.map(f => `${f.rule} at ${f.path} ("${f.excerpt}")`).join('; ')}`] : []
})
const alone = flag(false)
const together = flag(true)
const missed = poisoned.filter(x => scanner.scan(x.tool).length === 0).map(x => `${x.id} (${x.class})`)
const holdoutMissed = holdout.filter(x => scanner.scan(x.tool).length === 0).map(x => `${x.id} (${x.class})`)

progress('micro: tool-scan: cost per real tool…')
const rounds = quick ? 3 : 15
const perTool = []
for (let r = 0; r < rounds; r++) {
  for (const { tool, own } of tools) {
    const t0 = performance.now()
    scanner.scan(tool, { ownTools: own })
    perTool.push((performance.now() - t0) * 1000)
  }
}

progress('micro: tool-scan: adversarial 64 KB strings…')
const N = 64_000
const fill = unit => unit.repeat(Math.ceil(N / unit.length)).slice(0, N)
const units = ['\n', ' ', '\u00A0', '\n#', 'a', 'a1', 'aB', 'a.', 'QUFB', '41', '<', '\u0430', 'ignore all ', 'send to ']
const adversarial = units.map(unit => {
  const t0 = performance.now()
  scanner.scan({ name: 'a', description: fill(unit) })
  return { unit: JSON.stringify(unit), ms: +(performance.now() - t0).toFixed(1) }
})

const result = {
  rates: {
    realTools: tools.length,
    servers: benign.length,
    falsePositivesAlone: { count: alone.length, percent: pct(alone.length, tools.length), tools: alone },
    falsePositivesBehindOneGateway: { count: together.length, percent: pct(together.length, tools.length), tools: together },
    poisoned: { count: poisoned.length, caught: poisoned.length - missed.length, percent: pct(poisoned.length - missed.length, poisoned.length), missed },
    holdout: { count: holdout.length, caught: holdout.length - holdoutMissed.length, percent: pct(holdout.length - holdoutMissed.length, holdout.length), missed: holdoutMissed }
  },
  costPerRealTool: { scans: perTool.length, p50_us: +p(perTool, 0.5).toFixed(1), p99_us: +p(perTool, 0.99).toFixed(1), max_us: +Math.max(...perTool).toFixed(1) },
  adversarial64KB: { worst_ms: Math.max(...adversarial.map(a => a.ms)), inputs: adversarial }
}
console.log(`real tools: ${tools.length} from ${benign.length} servers`)
console.log(`false positives, each server alone: ${alone.length} (${result.rates.falsePositivesAlone.percent} %)`)
console.log(`false positives, all behind one gateway: ${together.length} (${result.rates.falsePositivesBehindOneGateway.percent} %)`)
for (const f of together) console.log(`  ${f}`)
console.log(`poisoned caught: ${result.rates.poisoned.caught} of ${poisoned.length} (${result.rates.poisoned.percent} %); missed: ${missed.join(', ') || 'none'}`)
console.log(`held-out caught: ${result.rates.holdout.caught} of ${holdout.length} (${result.rates.holdout.percent} %); missed: ${holdoutMissed.join(', ')}`)
console.log(`scan per real tool: p50 ${result.costPerRealTool.p50_us} µs, p99 ${result.costPerRealTool.p99_us} µs`)
console.table(adversarial)
writeResults('tool-scan', result)
