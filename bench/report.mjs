// Generates RESULTS.md and results/hops.svg from results/latest.json: with --write the committed
// bench/RESULTS.md and bench/results/hops.svg, otherwise the same under .scratch/bench/ (from the
// latest.json there, or the committed one when there is none yet).
// Nothing in RESULTS.md is typed by hand: run `npm run bench -- --write` to regenerate it.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { outDir, progress, resultsDir, root, shown, write } from './out.mjs'

const latestFile = [join(resultsDir, 'latest.json'), join(root, 'bench/results/latest.json')].find(f => existsSync(f))
const r = JSON.parse(readFileSync(latestFile, 'utf8'))
mkdirSync(resultsDir, { recursive: true })
const STAGE_ORDER = ['identity', 'parse', 'authz', 'filter', 'ratelimit', 'mint', 'exchange', 'secret', 'upstream']
const hops = Object.entries(r.hops).sort(([a], [b]) => STAGE_ORDER.indexOf(a) - STAGE_ORDER.indexOf(b))

// Two charts: per-stage p50 and p99 bars (hops.svg), and the ladder's CPU per call per rung
// (ladder.svg), both on linear scales in µs.
function barChart (title, rows, note = '') {
  const max = Math.max(...rows.flatMap(x => x.bars.map(b => b.value)), 1)
  const rowH = 14 * Math.max(...rows.map(x => x.bars.length)) + 10
  const width = 760
  const left = 150
  const scale = (v) => (v / max) * (width - left - 140)
  const body = rows.map((x, i) => {
    const y = 40 + i * rowH
    return [
      `<text x="${left - 10}" y="${y + 12}" text-anchor="end" font-size="13">${x.label}</text>`,
      ...x.bars.flatMap((b, j) => [
        `<rect x="${left}" y="${y + 13 * j}" width="${scale(b.value).toFixed(1)}" height="12" fill="${b.color}"/>`,
        `<text x="${left + scale(b.value) + 6}" y="${y + 13 * j + 10}" font-size="11">${b.text}</text>`
      ])
    ].join('\n  ')
  }).join('\n  ')
  const height = 60 + rows.length * rowH + (note === '' ? 0 : 16)
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
  <rect width="100%" height="100%" fill="white"/>
  <text x="10" y="22" font-size="15" font-weight="bold">${title}</text>
  ${body}
  ${note === '' ? '' : `<text x="10" y="${height - 10}" font-size="11">${note}</text>`}
</svg>
`
}
writeFileSync(join(resultsDir, 'hops.svg'), barChart(`mcp-warden: time per stage of a tools/call (µs, ${r.machine.cpus} cores, ${r.date.slice(0, 10)})`,
  hops.map(([name, h]) => ({ label: name, bars: [{ value: h.p99_us, color: '#f2b880', text: `p99 ${h.p99_us} µs` }, { value: h.p50_us, color: '#2e6fba', text: `p50 ${h.p50_us} µs` }] }))))
const TIER_LABEL = { bare: 'bare proxy', identity: '+ identity', cedar: '+ Cedar', baseline: 'full chain (baseline build)', full: 'full chain', traced: 'full + traces', console: 'full + console' }
const chartC = r.ladder.some(x => x.connections === 10) ? 10 : r.ladder[0].connections
const ladderAt = (kind) => r.ladder.find(x => x.upstream === kind && x.connections === chartC)
writeFileSync(join(resultsDir, 'ladder.svg'), barChart(`mcp-warden: gateway CPU per forwarded tools/call (µs, ${chartC} connections, ${r.date.slice(0, 10)})`,
  Object.keys(TIER_LABEL).filter(tier => r.settings.tiers.includes(tier)).map(tier => ({
    label: TIER_LABEL[tier],
    bars: r.settings.upstreams.map((kind, j) => { const v = ladderAt(kind)?.tiers[tier]?.gateway_cpu_us ?? 0; return { value: v, color: j === 0 ? '#2e6fba' : '#7aa6d6', text: `${v} µs (${kind === 'raw' ? 'raw node:http upstream' : 'SDK upstream'})` } })
  })), 'process CPU time of the gateway (all threads) / calls; target 250 µs for the full chain'))

const table = (rows, cols) => [
  `| ${cols.map(c => c[0]).join(' | ')} |`,
  `|${cols.map(() => '---').join('|')}|`,
  ...rows.map(row => `| ${cols.map(c => c[1](row)).join(' | ')} |`)
].join('\n')

// The tool scanner's corpus figures: from latest.json when the full bench ran it, else from its own
// results file (npm run bench:tool-scan).
const toolScanFile = [join(resultsDir, 'tool-scan.json'), join(root, 'bench/results/tool-scan.json')].find(f => existsSync(f))
const ts = r.micro['tool-scan'] ?? (toolScanFile !== undefined ? JSON.parse(readFileSync(toolScanFile, 'utf8')) : undefined)
const list = (items) => items.length === 0 ? 'none' : items.map(x => `\n  - ${x.replaceAll('|', '\\|')}`).join('')
const toolScanSection = ts === undefined
  ? ''
  : `
## Tool review: the scanner on the corpus

\`npm run bench:tool-scan\` on ${ts.date}: the rules (rules/tool-scan.json) on ${ts.rates.realTools} tools recorded from ${ts.rates.servers} real MCP
servers (test/fixtures/tool-corpus/benign), on poisoned definitions written from the published
attack classes (…/poisoned) and on a held-out set written apart from the rules (…/poisoned/holdout).
"Behind one gateway" scans each server's tools knowing every other server's tool names, as a
gateway in front of all of them does.

| set | tools | flagged | rate |
|---|---|---|---|
| real tools, each server alone (false positives) | ${ts.rates.realTools} | ${ts.rates.falsePositivesAlone.count} | ${ts.rates.falsePositivesAlone.percent} % |
| real tools, all behind one gateway (false positives) | ${ts.rates.realTools} | ${ts.rates.falsePositivesBehindOneGateway.count} | ${ts.rates.falsePositivesBehindOneGateway.percent} % |
| poisoned (detection) | ${ts.rates.poisoned.count} | ${ts.rates.poisoned.caught} | ${ts.rates.poisoned.percent} % |
| held-out poisoned (detection) | ${ts.rates.holdout.count} | ${ts.rates.holdout.caught} | ${ts.rates.holdout.percent} % |

- False positives behind one gateway: ${list(ts.rates.falsePositivesBehindOneGateway.tools)}
- Poisoned definitions missed: ${list(ts.rates.poisoned.missed)}
- Held-out definitions missed: ${list(ts.rates.holdout.missed)}

A scan of one real tool: p50 ${ts.costPerRealTool.p50_us} µs, p99 ${ts.costPerRealTool.p99_us} µs (${ts.costPerRealTool.scans} scans; a
definition is scanned once per hash, so this is paid the first time a definition is seen). The slowest
of ${ts.adversarial64KB.inputs.length} adversarial 64 KB descriptions (runs of the characters and words the rules repeat) took ${ts.adversarial64KB.worst_ms} ms.
`

// The targets of the performance work, each met or not, from this run's figures.
const ladderRow = (kind, c) => r.ladder.find(x => x.upstream === kind && x.connections === c)
const microRow = (m, prefix) => r.micro[m]?.rows?.find(x => String(x.name ?? '').startsWith(prefix))
const filterRow = (n) => r.micro.filter?.rows?.find(x => x.tools === n)
const fmt = (v, unit) => v === undefined ? 'not measured' : `${v} ${unit}`
const targets = [
  ['gateway CPU per forwarded tools/call, full chain, raw upstream, 10 connections', '≤ 250 µs', ladderRow('raw', 10)?.tiers.full?.gateway_cpu_us, 'µs', (v) => v <= 250],
  ['gateway CPU per forwarded tools/call, full chain, SDK upstream, 10 connections', '≤ 250 µs', ladderRow('sdk', 10)?.tiers.full?.gateway_cpu_us, 'µs', (v) => v <= 250],
  ['added p50, full chain, raw upstream, 1 connection', '≤ 1 ms', ladderRow('raw', 1)?.tiers.full?.added_p50_ms, 'ms', (v) => v <= 1],
  ['added p50, full chain, raw upstream, 10 connections', '≤ 2 ms', ladderRow('raw', 10)?.tiers.full?.added_p50_ms, 'ms', (v) => v <= 2],
  ['throughput through the full chain / direct, SDK upstream, 10 connections', '≥ 0.5', ladderRow('sdk', 10)?.tiers.full?.throughput_ratio, '', (v) => v >= 0.5],
  ['throughput through the full chain / direct, SDK upstream, 32 connections', '≥ 0.5', ladderRow('sdk', 32)?.tiers.full?.throughput_ratio, '', (v) => v >= 0.5],
  ['Cedar, a repeated decision (shipped policies), p50', '≤ 10 µs', microRow('cedar', 'cedar decision repeated (remembered), shipped')?.p50_us, 'µs', (v) => v <= 10],
  ['filtering a tools/list of 500 tools, first sight, p50', '≤ 25 ms', filterRow(500)?.cold_p50_ms, 'ms', (v) => v <= 25],
  ['filtering a tools/list of 500 tools, repeated, p50', '≤ 1 ms', filterRow(500)?.warm_p50_ms, 'ms', (v) => v <= 1]
].map(([what, target, value, unit, ok]) => ({ what, target, value: fmt(value, unit).trim(), met: value === undefined ? '—' : ok(value) ? 'met' : '**missed**' }))
// autocannon's latencies have a resolution of 1 ms: the mean beside the added p50 is the finer figure.
for (const [i, c] of [[2, 1], [3, 10]]) {
  const mean = ladderRow('raw', c)?.tiers.full?.added_mean_ms
  if (mean !== undefined) targets[i].value += ` (mean +${mean} ms)`
}

// A CPU profile of one rung (npm run bench -- --profile full/raw --write), when there is one.
const profileFile = [join(resultsDir, 'profile.json'), join(root, 'bench/results/profile.json')].find(f => existsSync(f))
const pr = profileFile !== undefined ? JSON.parse(readFileSync(profileFile, 'utf8')) : undefined
const share = (...names) => +(pr?.byPackage ?? []).filter(x => names.includes(x.name)).reduce((a, x) => a + x.percent, 0).toFixed(1)
const profileSection = pr === undefined
  ? ''
  : `
## Where the CPU goes: a profile of the ${pr.tier === 'full' ? 'full chain' : pr.tier} (${pr.upstream} upstream)

\`npm run bench -- --profile ${pr.tier}/${pr.upstream} --write\` on ${pr.date}: the V8 profiler over the measured run alone (${pr.seconds} s of
tools/call, ${pr.connections} connections, ${pr.result.rps} req/s, ${pr.result.gateway_cpu_us} µs CPU per call with the profiler on). Self time of the
gateway's main thread, as a share of the sampled ${pr.sampledSeconds} s (\`(idle)\` is time waiting for the sockets):

${table(pr.byPackage.slice(0, 10), [['where', x => x.name.replace(/^\((.*)\)$/, '$1')], ['self time', x => `${x.percent} %`]])}

The hottest functions:

${table(pr.functions.slice(0, 15), [['function', x => `\`${x.name.replace(/\|/g, '\\|')}\``], ['self time', x => `${x.percent} %`]])}

What the profile says about the missed targets: Node's own HTTP work (its internals: the server's
parser and streams; \`writev\` for the answer to the agent and the request to the upstream, which on
loopback runs the receiving side's TCP stack too; undici's client) takes ${share('node internals', '(writev)', 'undici', '(writeString)')} % of the samples,
the gateway's own code ${share('mcp-warden (dist)')} % and Fastify ${share('fastify')} %. Of the gateway's stages, identity and Cedar, once remembered, are about 10–20 µs each
(per-stage table above); of the gateway's own work, the ephemeral token (an Ed25519 signature,
about 40 µs here, and the call's canonical hash) is the largest. The bare proxy alone, with no
identity and no policy, costs most of what the full chain does. What would remove the rest is a
different transport, not a different pipeline: a persistent upstream connection with pipelined
or multiplexed requests (HTTP/2 upstreams), fewer syscalls per message, and a proxy core outside
the JS event loop. The first sight of 500 tools is spent in the tool scanner (about 130 µs per
new definition, once per definition hash); a repeated list pays for serialising and hashing the
page to find it in the cache.
`

// The sustained run's figures, when one was run (npm run bench:sustained [-- --write]).
const sustainedFile = [join(resultsDir, 'sustained.json'), join(root, 'bench/results/sustained.json')].find(f => existsSync(f))
const su = sustainedFile !== undefined ? JSON.parse(readFileSync(sustainedFile, 'utf8')) : undefined
const sustainedSection = su === undefined
  ? ''
  : `
## Sustained run

\`npm run bench:sustained\` on ${su.date} (Node ${su.machine.node}): the full chain against the SDK server, ${su.connections} connections, ${su.seconds} s,
tools/call and tools/list (3 : 1) with 3 agents' JWTs: ${su.result.total} requests, ${su.result.rps} req/s, none failed, gateway
${su.result.gateway_cpu_us} µs CPU per request. RSS median of the second quarter ${su.rss.earlyMedianMiB} MiB, of the last quarter
${su.rss.lateMedianMiB} MiB (${su.rss.growing ? '**growing**' : 'no growth'}); worst event-loop delay p99 in any second ${su.loopDelayP99MaxMs} ms.

${table(su.samples.filter((x, i) => i % Math.max(1, Math.floor(su.samples.length / 10)) === 0 || i === su.samples.length - 1), [['second', x => x.t], ['RSS MiB', x => x.rssMiB], ['heap MiB', x => x.heapMiB], ['loop delay p50 / p99 / max ms', x => `${x.loopP50ms} / ${x.loopP99ms} / ${x.loopMaxMs}`]])}
`

const flags = [...(r.quick ? ['--quick'] : []), ...(write ? ['--write'] : [])]
const microRows = Object.values(r.micro).flatMap(m => (m.rows ?? []).filter(x => x.name !== undefined))
const md = `# Benchmark results

Generated by \`npm run bench${flags.length > 0 ? ` -- ${flags.join(' ')}` : ''}\` on ${r.date} from \`${relative(root, latestFile)}\`; not edited by hand.
Machine: ${r.machine.cpus} × ${r.machine.cpu}, ${r.machine.memoryGiB} GiB, Node ${r.machine.node} (${r.machine.platform}).
Versions: ${Object.entries(r.versions).map(([k, v]) => `${k} ${v}`).join(', ')}.
This machine is shared and noisy: compare numbers within one run, not across runs.

## Targets

${table(targets, [['target', x => x.what], ['goal', x => x.target], ['this run', x => x.value], ['', x => x.met]])}

CPU per call depends on load (a process handling one request per event-loop turn spends more per
call than a saturated one; docs/performance.md), so compare rungs at the same upstream and
concurrency.

## The ladder: what each rung of the gateway costs per forwarded tools/call

![gateway CPU per call, by rung](results/ladder.svg)

autocannon, ${r.settings.durationSeconds} s per run, ${r.settings.agents} agents' JWTs in rotation, every run's requests checked to be answered with
a result first (a denial is a 200 too). Each rung is its own gateway process in front of its own
upstream as server \`db\`, with the shipped policies: **bare proxy** (mcp-context + mcp-proxy; a
fixed identity and an allow decision stand in for the identity and Cedar plugins), **+ identity**
(the agent's JWT verified), **+ Cedar** (every message decided), **full chain** (\`buildGateway\`:
+ tool filter, rate limits, an ephemeral token per call, audit to a file), **full + console** (the
same with the admin listener and the operator console: every audit record also indexed). Upstreams: **raw**, a
node:http responder answering from prepared bytes (the gateway is the bottleneck), and **sdk**,
the MCP SDK's server (stateless Streamable HTTP, a server per request), which on the full rung
verifies each ephemeral token with mcp-warden/upstream. *CPU/call* is the gateway process's CPU
time (user + system, all threads) divided by the calls of that run; the upstream runs in a process
of its own. Latencies in ms as autocannon measures them (1 ms resolution).

${r.settings.upstreams.map(kind => `### ${kind === 'raw' ? 'raw node:http upstream' : 'SDK upstream'}

${table(r.ladder.filter(x => x.upstream === kind).flatMap(x => [
  { c: x.connections, tier: 'direct', ...x.direct, gateway_cpu_us: '—', throughput_ratio: 1, added_p50_ms: 0, added_mean_ms: 0 },
  ...Object.entries(x.tiers).map(([tier, t]) => ({ c: x.connections, tier: TIER_LABEL[tier], ...t }))
]), [
  ['connections', x => x.c], ['rung', x => x.tier], ['gateway CPU µs/call', x => x.gateway_cpu_us], ['upstream CPU µs/call', x => x.upstream_cpu_us],
  ['p50 / p99 ms', x => `${x.p50_ms} / ${x.p99_ms}`], ['added p50 / mean ms', x => `${x.added_p50_ms} / ${x.added_mean_ms}`],
  ['req/s', x => x.rps], ['throughput vs direct', x => x.throughput_ratio]
])}
`).join('\n')}
### tools/list through the full chain (10 connections)

${table(r.lists, [['upstream', x => x.upstream], ['req/s direct', x => x.direct.rps], ['req/s full chain', x => x.full.rps], ['throughput vs direct', x => x.throughput_ratio], ['gateway CPU µs/list', x => x.full.gateway_cpu_us], ['p50 / p99 ms', x => `${x.full.p50_ms} / ${x.full.p99_ms}`]])}
${r.sessions === undefined
? ''
: `
### Memory of open sessions

${r.sessions.count} initializes through the full chain, each answered with a session id that the gateway binds to
its agent (memory store): RSS ${r.sessions.rssBeforeMiB} → ${r.sessions.rssAfterMiB} MiB, heap ${r.sessions.heapBeforeMiB} → ${r.sessions.heapAfterMiB} MiB after a
full GC, so **${r.sessions.rssPer10kMiB} MiB RSS (${r.sessions.heapPer10kMiB} MiB heap) per 10,000 open sessions**.
`}
## Per stage (tools/call, 10 connections), measured inside the gateway

![per-stage latency](results/hops.svg)

${table(hops, [['stage', ([n]) => n], ['p50 µs', ([, h]) => h.p50_us], ['p99 µs', ([, h]) => h.p99_us], ['samples', ([, h]) => h.n]])}

\`upstream\` is the time to the upstream's response headers, including its token verification.

## Hot functions (tinybench)

${table(microRows, [['function', x => x.name], ['p50 µs', x => x.p50_us ?? '—'], ['p99 µs', x => x.p99_us ?? '—'], ['ops/s', x => x.ops_per_s ?? '—']])}

### Filtering a tools/list answer

${table(r.micro.filter.rows, [['tools', x => x.tools], ['visible', x => x.visible], ['first sight p50 ms', x => x.cold_p50_ms], ['first sight p99 ms', x => x.cold_p99_ms], ['repeated p50 ms', x => x.warm_p50_ms], ['repeated p99 ms', x => x.warm_p99_ms]])}
${profileSection}${sustainedSection}${toolScanSection}`
writeFileSync(join(outDir, 'RESULTS.md'), md)
progress(`wrote ${shown(join(outDir, 'RESULTS.md'))}, ${shown(join(resultsDir, 'ladder.svg'))} and ${shown(join(resultsDir, 'hops.svg'))} from ${shown(latestFile)}`)
