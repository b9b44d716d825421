/**
 * The tool scanner against real servers' tool lists (test/fixtures/tool-corpus/benign: recorded
 * from MCP servers installed from the npm registry, with package and version) and against
 * poisoned definitions written from the published attack classes (…/poisoned, each with its
 * source). False positives on real servers ≤ 1 %, detection ≥ 90 %. The held-out set
 * (…/poisoned/holdout, written apart from the rules) is measured and reported, not tuned for.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { DEFAULT_RULES_FILE, loadRules, ToolScanner, type ToolLike } from '../lib/tools/scanner.js'

const DIR = new URL('./fixtures/tool-corpus/', import.meta.url).pathname
const scanner = new ToolScanner(loadRules([DEFAULT_RULES_FILE]))
const json = (dir: string): string[] => readdirSync(dir).filter(f => f.endsWith('.json')).sort()

interface Recorded { package: string, version: string, tools: ToolLike[] }
interface Poisoned { id: string, class: string, source: string, tool: ToolLike }

const benign = json(join(DIR, 'benign')).map(f => JSON.parse(readFileSync(join(DIR, 'benign', f), 'utf8')) as Recorded)
const poisoned = json(join(DIR, 'poisoned')).flatMap(f => JSON.parse(readFileSync(join(DIR, 'poisoned', f), 'utf8')) as Poisoned[])
const holdout = json(join(DIR, 'poisoned', 'holdout')).flatMap(f => JSON.parse(readFileSync(join(DIR, 'poisoned', 'holdout', f), 'utf8')) as Poisoned[])

t.test('real servers: at most 1 % of their tools are quarantined', async t => {
  t.ok(benign.length >= 10, `${benign.length} servers recorded`)
  let tools = 0
  const flagged: string[] = []
  for (const server of benign) {
    t.ok(server.package !== '' && server.version !== '', `${server.package}@${server.version}`)
    const names = server.tools.map(x => x.name)
    for (const tool of server.tools) {
      tools++
      const findings = scanner.scan(tool, { ownTools: names })
      if (findings.length > 0) flagged.push(`${server.package} ${tool.name}: ${findings.map(f => `${f.rule} at ${f.path} ("${f.excerpt}")`).join('; ')}`)
    }
  }
  for (const f of flagged) t.comment(`false positive: ${f}`)
  const rate = flagged.length / tools
  t.comment(`false positives: ${flagged.length} of ${tools} tools (${(rate * 100).toFixed(2)} %)`)
  t.ok(tools >= 300, `${tools} real tools`)
  t.ok(rate <= 0.01, `false-positive rate ${(rate * 100).toFixed(2)} % ≤ 1 %`)
})

t.test('real servers all behind one gateway (every other server\'s tool names known): at most 1 % quarantined', async t => {
  let tools = 0
  const flagged: string[] = []
  for (const server of benign) {
    const names = server.tools.map(x => x.name)
    const otherTools = benign.filter(s => s !== server).flatMap(s => s.tools.map(x => x.name))
    for (const tool of server.tools) {
      tools++
      const findings = scanner.scan(tool, { ownTools: names, otherTools })
      if (findings.length > 0) flagged.push(`${server.package} ${tool.name}: ${findings.map(f => `${f.rule} at ${f.path} ("${f.excerpt}")`).join('; ')}`)
    }
  }
  for (const f of flagged) t.comment(`false positive: ${f}`)
  const rate = flagged.length / tools
  t.comment(`false positives behind one gateway: ${flagged.length} of ${tools} tools (${(rate * 100).toFixed(2)} %)`)
  t.ok(rate <= 0.01, `false-positive rate ${(rate * 100).toFixed(2)} % ≤ 1 %`)
})

t.test('poisoned definitions: at least 90 % are caught, each finding names its rule, path and excerpt', async t => {
  t.ok(poisoned.length >= 90, `${poisoned.length} poisoned definitions`)
  const missed: string[] = []
  for (const p of poisoned) {
    t.ok(p.source !== '' && p.class !== '', `${p.id} has a class and a source`)
    const findings = scanner.scan(p.tool)
    if (findings.length === 0) missed.push(`${p.id} (${p.class})`)
    for (const f of findings) if (f.rule === '' || f.excerpt === '') t.fail(`${p.id}: a finding without rule or excerpt`)
  }
  for (const m of missed) t.comment(`missed: ${m}`)
  const rate = 1 - missed.length / poisoned.length
  t.comment(`detection: ${poisoned.length - missed.length} of ${poisoned.length} (${(rate * 100).toFixed(1)} %)`)
  t.ok(rate >= 0.9, `detection ${(rate * 100).toFixed(1)} % ≥ 90 %`)
})

t.test('held-out poisoned definitions: measured and reported', async t => {
  const caught = holdout.filter(p => scanner.scan(p.tool).length > 0)
  for (const p of holdout) if (!caught.includes(p)) t.comment(`held-out miss: ${p.id} (${p.class})`)
  t.comment(`held-out detection: ${caught.length} of ${holdout.length} (${(caught.length / Math.max(1, holdout.length) * 100).toFixed(1)} %)`)
  t.ok(holdout.length >= 20, `${holdout.length} held-out definitions`)
})
