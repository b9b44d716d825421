// npm run bench [-- --quick] [-- --write] [-- --sustained [seconds]]
//
// The ladder, side by side in one run: each request straight at the upstream (direct), then
// through the gateway at each rung (bare proxy, + identity, + Cedar, full chain, + traces, + console), against two
// upstreams (a minimal node:http responder and the SDK server), at each concurrency; for every
// run the gateway's CPU time per call (process CPU, all threads, / calls), p50/p99 and
// throughput. Then tools/list through the full chain, the memory of 10,000 open sessions, the
// per-stage timings, the micro-benches, and results/latest.json + RESULTS.md.
// --quick: a subset (10 connections, 2 s runs, quick micro-benches) in under a minute.
// --profile RUNG[/UPSTREAM]: only a CPU profile (the V8 profiler, over the measured run alone) of
// one rung (default full; upstream default raw) under tools/call, 10 connections, and its
// hottest functions, into results/profile.json (which RESULTS.md shows).
// --baseline DIR: also the full chain of another build (DIR: a checkout with dist/ built), as the
// rung before this build's full chain, e.g. to show what a change costs.
// --sustained [s]: only the sustained run (default 300 s): the full chain under load, RSS and
// event-loop delay every second; exits non-zero when a process dies or a request fails.
// With --write the committed bench/results/ and bench/RESULTS.md, otherwise .scratch/bench/.
import { fork, execFileSync } from 'node:child_process'
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { join, resolve } from 'node:path'
import autocannon from 'autocannon'
import { createSigner } from 'fast-jwt'
import { freePort } from '../dist/lib/free-port.js'
import { outDir, progress, resultsDir, root, shown, write } from './out.mjs'

const argv = process.argv.slice(2)
const quick = argv.includes('--quick')
const sustainedAt = argv.indexOf('--sustained')
const sustained = sustainedAt < 0 ? undefined : (Number(argv[sustainedAt + 1]) > 0 ? Number(argv[sustainedAt + 1]) : 300)
const profileAt = argv.indexOf('--profile')
const profile = profileAt < 0 ? undefined : argv[profileAt + 1] ?? 'full'
const duration = quick ? 2 : 6
const concurrencies = quick ? [10] : [1, 10, 32]
// --baseline DIR: a checkout of another commit with its dist/ built; its full chain runs as the
// rung `baseline`, right before this build's, so that two builds are compared in one run.
const baselineAt = argv.indexOf('--baseline')
const baseline = baselineAt < 0 ? undefined : resolve(argv[baselineAt + 1] ?? '')
if (baseline !== undefined && !existsSync(join(baseline, 'dist/lib/index.js'))) { console.error(`bench: --baseline takes a checkout with dist/ built (npm install && npm run build there); ${baseline}/dist/lib/index.js is missing`); process.exit(2) }
if (baseline !== undefined) process.env.MCPW_BENCH_BASELINE = baseline
const TIERS = ['bare', 'identity', 'cedar', ...(baseline !== undefined ? ['baseline'] : []), 'full', 'traced', 'console']
const UPSTREAMS = ['raw', 'sdk']
const nodeFlags = (process.env.MCPW_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean)
progress(sustained !== undefined
  ? `sustained run, ${sustained} s; results to ${shown(outDir)}/`
  : `${quick ? 'quick run' : 'full run'}, ${duration} s per autocannon run; results to ${shown(outDir)}/${write ? ' (--write: the committed files)' : ' (--write updates the committed bench/ files)'}`)

const { privateKey, publicKey } = generateKeyPairSync('ed25519')
const sign = createSigner({ key: privateKey.export({ type: 'pkcs8', format: 'pem' }), algorithm: 'EdDSA' })
const publicPem = publicKey.export({ type: 'spki', format: 'pem' }).toString()

// Upstream and gateways each get a process of their own; only the rung being driven is busy.
const askOf = (proc) => (msg, key) => new Promise(resolve => { const on = (m) => { if (key in m) { proc.off('message', on); resolve(m) } }; proc.on('message', on); if (msg !== undefined) proc.send(msg) })
const procs = []
// A run that ends early (a failed request, a dead process) takes its servers with it.
process.on('exit', () => { for (const p of procs) if (p.exitCode === null) p.kill() })
let stopping = false
function start (name, args, execArgv = []) {
  const proc = fork(join(root, 'bench/e2e/servers.mjs'), args, { stdio: 'inherit', execArgv: [...process.execArgv, ...execArgv] })
  proc.on('exit', (code, signal) => {
    if (stopping) return
    console.error(`bench: the ${name} process died (${signal ?? `exit ${code}`}); no results are written`)
    process.exit(1)
  })
  procs.push(proc)
  return { proc, ask: askOf(proc) }
}
const [profileTier, profileKind = 'raw'] = (profile ?? '').split('/')
if (profile !== undefined && (!TIERS.includes(profileTier) || !UPSTREAMS.includes(profileKind))) { console.error(`bench: --profile takes RUNG[/UPSTREAM]: one of ${TIERS.join(', ')}, then ${UPSTREAMS.join(' or ')}`); process.exit(2) }
// One gateway process per rung and upstream, each with that upstream as server `db`.
const gatewaysToStart = sustained !== undefined ? ['full/sdk'] : profile !== undefined ? [`${profileTier}/${profileKind}`] : TIERS.flatMap(t => UPSTREAMS.map(k => `${t}/${k}`))
// Profiles are large and machine-specific: never among the committed files, --write or not.
const profileDir = join(root, '.scratch/bench/profiles')
const ports = Object.fromEntries(await Promise.all(gatewaysToStart.map(async t => [t, await freePort()])))
progress('starting upstream and gateways…')
// Only full/sdk's tokens are checked by the upstream (on /sdk/mcp).
const fullOrigin = `http://127.0.0.1:${ports['full/sdk'] ?? 9}`
const upstream = start('upstream', ['upstream', fullOrigin, `${fullOrigin}/.well-known/jwks.json`])
const up = await upstream.ask(undefined, 'ready')
const gateways = {}
for (const name of gatewaysToStart) {
  const [tier, kind] = name.split('/')
  const g = start(`gateway (${name})`, ['gateway', tier, kind, publicPem, String(up.port), String(ports[name])], ['--expose-gc', ...nodeFlags])
  gateways[name] = { ...g, ...(await g.ask(undefined, 'ready')) }
}
progress(`upstream on :${up.port}; gateways ${gatewaysToStart.map(t => `${t} :${ports[t]}`).join(', ')}`)

const agents = [['reader-bot', 'readonly'], ['analyst-bot', 'analyst'], ['engineer-bot', 'engineer']]
const tokensFor = (resource) => agents.map(([agentId, role]) => sign({ iss: 'https://idp.bench', sub: agentId, agentId, roles: [role], aud: resource, exp: Math.floor(Date.now() / 1000) + 3600 }))
const bodies = {
  'tools/call': { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT * FROM customers' } } },
  'tools/list': { jsonrpc: '2.0', id: 1, method: 'tools/list' },
  initialize: { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'bench', version: '1' } } }
}
const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' }
const directUrl = (kind) => `http://127.0.0.1:${up.port}${kind === 'raw' ? '/raw' : '/sdk/direct'}`
const gatewayOf = (tier, kind) => gateways[`${tier}/${kind}`]

/** One autocannon run; `tier` undefined is direct. Returns latency, throughput and CPU per call. */
async function drive ({ tier, kind, method, connections, seconds = duration, amount, bodyList }) {
  const gateway = tier === undefined ? undefined : gatewayOf(tier, kind)
  const url = new URL(gateway === undefined ? directUrl(kind) : `${gateway.origin}/servers/db/mcp`)
  const tokens = gateway === undefined ? [undefined] : tokensFor(`${gateway.publicUrl}/servers/db/mcp`)
  const list = bodyList ?? [bodies[method]]
  const requests = []
  for (const body of list) for (const token of tokens) requests.push({ method: 'POST', path: url.pathname, headers: token !== undefined ? { ...headers, authorization: `Bearer ${token}` } : headers, body: JSON.stringify(body) })
  // autocannon counts HTTP statuses only; a JSON-RPC error (a denial) is a 200. Each request
  // of the run is sent once first and must be answered with a result.
  for (const r of requests) {
    const res = await fetch(url, { method: 'POST', headers: r.headers, body: r.body })
    const text = await res.text()
    let answer
    try { answer = JSON.parse(text) } catch { answer = undefined }
    if (!res.ok || answer?.result === undefined || answer.result.isError === true) throw new Error(`${url}: ${JSON.parse(r.body).method} was not answered with a result (${res.status}): ${text.slice(0, 300)}`)
  }
  const meters = [upstream, ...(gateway !== undefined ? [gateway] : [])]
  await Promise.all(meters.map(m => m.ask('reset', 'reset')))
  const result = await autocannon({ url: url.origin, connections, ...(amount !== undefined ? { amount } : { duration: seconds }), requests })
  const [upAnswer, gwAnswer] = await Promise.all(meters.map(async m => await m.ask('cpu', 'cpu')))
  const upCpu = upAnswer.cpu
  const gwCpu = gwAnswer?.cpu
  const bad = result.non2xx + result.errors + result.timeouts
  if (bad > 0) throw new Error(`${url}: ${bad} failed requests of ${result.requests.total} (${result.non2xx} non-2xx, ${result.errors} errors, ${result.timeouts} timeouts)`)
  const n = result.requests.total
  return {
    p50_ms: result.latency.p50, p99_ms: result.latency.p99, mean_ms: +result.latency.mean.toFixed(3),
    rps: Math.round(n / (amount !== undefined ? result.duration : seconds)), total: n,
    upstream_cpu_us: +(upCpu / n).toFixed(1),
    upstream_connections: upAnswer.connections,
    ...(gwCpu !== undefined ? { gateway_cpu_us: +(gwCpu / n).toFixed(1) } : {})
  }
}

if (sustained !== undefined) await sustainedRun(sustained)
else if (profile !== undefined) await profileRun(profileTier, profileKind)
else await ladderRun()

async function profileRun (tier, kind) {
  progress(`profile of the ${tier} rung before the ${kind} upstream: warm-up 2 s, then tools/call c=10 for ${duration} s…`)
  await drive({ tier, kind, method: 'tools/list', connections: 1, seconds: 1 })
  await drive({ tier, kind, method: 'tools/call', connections: 4, seconds: 1 })
  const g = gatewayOf(tier, kind)
  await g.ask('profile-start', 'profiling')
  const r = await drive({ tier, kind, method: 'tools/call', connections: 10 })
  mkdirSync(profileDir, { recursive: true })
  const file = join(profileDir, `${tier}-${kind}-${Date.now()}.cpuprofile`)
  await g.ask({ profileTo: file }, 'profiled')
  progress(`${r.rps} req/s, gateway ${r.gateway_cpu_us} µs CPU/call (profiler on); profile in ${shown(file)}`)
  await stopAll()
  execFileSync(process.execPath, [join(root, 'bench/profile-top.mjs'), file], { stdio: 'inherit' })
  // The summary goes into results/profile.json, which RESULTS.md shows.
  const { newestProfile, summarise } = await import('./profile-top.mjs')
  mkdirSync(resultsDir, { recursive: true })
  writeFileSync(join(resultsDir, 'profile.json'), JSON.stringify({ ...header(), tier, upstream: kind, connections: 10, seconds: duration, result: r, ...summarise(newestProfile(file), 25) }, null, 2) + '\n')
  progress(`wrote ${shown(join(resultsDir, 'profile.json'))}`)
}

async function ladderRun () {
  // Warm-up: each rung learns the tool lists (the full chain's filter), the upstream verifier
  // fetches the JWKS, and the JIT settles.
  progress(`warm-up: tools/list and tools/call through each rung (${TIERS.length * UPSTREAMS.length * 2} × 1 s)…`)
  for (const tier of TIERS) {
    for (const kind of UPSTREAMS) {
      await drive({ tier, kind, method: 'tools/list', connections: 1, seconds: 1 })
      await drive({ tier, kind, method: 'tools/call', connections: 4, seconds: 1 })
    }
  }
  const ladder = []
  for (const kind of UPSTREAMS) {
    for (const connections of concurrencies) {
      const direct = await drive({ kind, method: 'tools/call', connections })
      progress(`tools/call ${kind} c=${connections}: direct p50 ${direct.p50_ms} ms, ${direct.rps} req/s, upstream ${direct.upstream_cpu_us} µs CPU/call`)
      const row = { upstream: kind, connections, direct, tiers: {} }
      for (const tier of TIERS) {
        const r = await drive({ tier, kind, method: 'tools/call', connections })
        row.tiers[tier] = { ...r, added_p50_ms: +(r.p50_ms - direct.p50_ms).toFixed(3), added_mean_ms: +(r.mean_ms - direct.mean_ms).toFixed(3), throughput_ratio: +(r.rps / direct.rps).toFixed(3) }
        progress(`tools/call ${kind} c=${connections}: ${tier.padEnd(8)} p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms, ${r.rps} req/s (x${(r.rps / direct.rps).toFixed(2)}), gateway ${r.gateway_cpu_us} µs CPU/call`)
      }
      ladder.push(row)
    }
  }

  // tools/list through the full chain: the filter decides each listed tool for the caller.
  const lists = []
  for (const kind of UPSTREAMS) {
    const direct = await drive({ kind, method: 'tools/list', connections: 10 })
    const full = await drive({ tier: 'full', kind, method: 'tools/list', connections: 10 })
    lists.push({ upstream: kind, connections: 10, direct, full, throughput_ratio: +(full.rps / direct.rps).toFixed(3) })
    progress(`tools/list ${kind} c=10: direct ${direct.rps} req/s, full chain ${full.rps} req/s, gateway ${full.gateway_cpu_us} µs CPU/list`)
  }

  // Per-stage timings of the full chain, tools/call against the SDK server.
  const fullSdk = gatewayOf('full', 'sdk')
  await fullSdk.ask('reset', 'reset')
  progress(`per-stage timings: tools/call through the full chain, c=10 (${duration} s)…`)
  await drive({ tier: 'full', kind: 'sdk', method: 'tools/call', connections: 10 })
  const { stages } = await fullSdk.ask('stages', 'stages')
  const pct = (a, p) => { const s = [...a].sort((x, y) => x - y); return +s[Math.min(s.length - 1, Math.floor(s.length * p))].toFixed(1) }
  const hops = Object.fromEntries(Object.entries(stages).map(([k, a]) => [k, { p50_us: pct(a, 0.5), p99_us: pct(a, 0.99), n: a.length }]))

  // Memory of open sessions: 10,000 initializes through the full chain, each answered with a
  // session id by the raw upstream, each bound by the gateway to its agent.
  let sessions
  if (!quick) {
    const count = 10_000
    progress(`sessions: ${count} initializes through the full chain…`)
    await gatewayOf('full', 'raw').ask('gc', 'gc')
    const before = (await gatewayOf('full', 'raw').ask('vitals', 'vitals')).vitals
    await drive({ tier: 'full', kind: 'raw', method: 'initialize', connections: 10, amount: count })
    await gatewayOf('full', 'raw').ask('gc', 'gc')
    const after = (await gatewayOf('full', 'raw').ask('vitals', 'vitals')).vitals
    sessions = { count, rssBeforeMiB: before.rssMiB, rssAfterMiB: after.rssMiB, heapBeforeMiB: before.heapMiB, heapAfterMiB: after.heapMiB, rssPer10kMiB: +((after.rssMiB - before.rssMiB) * 10_000 / count).toFixed(1), heapPer10kMiB: +((after.heapMiB - before.heapMiB) * 10_000 / count).toFixed(1) }
    progress(`sessions: RSS ${before.rssMiB} → ${after.rssMiB} MiB, heap ${before.heapMiB} → ${after.heapMiB} MiB for ${count} sessions`)
  }
  await stopAll()

  // The micro-benches, each writing its own results file into resultsDir (same --write).
  const flags = [...(quick ? ['--quick'] : []), ...(write ? ['--write'] : [])]
  const micros = quick ? ['cedar', 'tokens', 'filter', 'identity'] : ['cedar', 'tokens', 'filter', 'identity', 'sse', 'tool-scan']
  for (const m of micros) execFileSync(process.execPath, [join(root, `bench/micro/${m}.mjs`), ...flags], { stdio: 'inherit' })
  const micro = Object.fromEntries(micros.filter(m => m !== 'tool-scan').map(m => [m, JSON.parse(readFileSync(join(resultsDir, `${m}.json`), 'utf8'))]))

  const latest = {
    ...header(),
    settings: { durationSeconds: duration, concurrencies, tiers: TIERS, upstreams: UPSTREAMS, agents: agents.length, nodeFlags },
    ladder,
    lists,
    hops,
    ...(sessions !== undefined ? { sessions } : {}),
    micro
  }
  mkdirSync(resultsDir, { recursive: true })
  writeFileSync(join(resultsDir, 'latest.json'), JSON.stringify(latest, null, 2) + '\n')
  progress('report…')
  execFileSync(process.execPath, [join(root, 'bench/report.mjs'), ...(write ? ['--write'] : [])], { stdio: 'inherit' })
  if (!write) progress(`done; results in ${shown(outDir)}/ (RESULTS.md, results/); the committed bench/ files are untouched (--write updates them)`)
}

/**
 * The full chain under steady load for `seconds`: tools/call and tools/list against the SDK
 * server, 10 connections, with RSS, heap and event-loop delay sampled every second. Fails on a
 * crash (a process exits: see start()), on any failed request, and when memory keeps growing:
 * the median RSS of the last quarter above that of the second quarter (after warm-up) by more
 * than 25 % and 32 MiB.
 */
async function sustainedRun (seconds) {
  const g = gatewayOf('full', 'sdk')
  progress('warm-up: 3 s…')
  await drive({ tier: 'full', kind: 'sdk', method: 'tools/list', connections: 1, seconds: 1 })
  await drive({ tier: 'full', kind: 'sdk', method: 'tools/call', connections: 4, seconds: 2 })
  await g.ask('vitals', 'vitals')
  const samples = []
  const t0 = Date.now()
  const sampler = setInterval(async () => {
    const { vitals } = await g.ask('vitals', 'vitals')
    const s = { t: Math.round((Date.now() - t0) / 1000), ...vitals }
    samples.push(s)
    if (s.t % 10 === 0) progress(`sustained ${s.t}/${seconds} s: RSS ${s.rssMiB} MiB, heap ${s.heapMiB} MiB, loop delay p99 ${s.loopP99ms} ms`)
  }, 1000)
  let result
  try {
    result = await drive({ tier: 'full', kind: 'sdk', connections: 10, seconds, bodyList: [bodies['tools/call'], bodies['tools/call'], bodies['tools/call'], bodies['tools/list']] })
  } finally {
    clearInterval(sampler)
  }
  await stopAll()
  const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)] }
  const q = Math.max(1, Math.floor(samples.length / 4))
  const early = median(samples.slice(q, 2 * q).map(s => s.rssMiB))
  const late = median(samples.slice(-q).map(s => s.rssMiB))
  const growing = late > early * 1.25 && late - early > 32
  const out = { ...header(), seconds, connections: 10, result, rss: { earlyMedianMiB: early, lateMedianMiB: late, growing }, loopDelayP99MaxMs: Math.max(...samples.map(s => s.loopP99ms)), samples }
  mkdirSync(resultsDir, { recursive: true })
  writeFileSync(join(resultsDir, 'sustained.json'), JSON.stringify(out, null, 2) + '\n')
  progress(`sustained: ${result.total} requests, ${result.rps} req/s, gateway ${result.gateway_cpu_us} µs CPU/request; RSS median ${early} → ${late} MiB; wrote ${shown(join(resultsDir, 'sustained.json'))}`)
  if (growing) {
    console.error(`bench: memory kept growing over the sustained run (RSS median ${early} → ${late} MiB)`)
    process.exit(1)
  }
}

async function stopAll () {
  stopping = true
  for (const p of procs) p.send('stop')
  await Promise.all(procs.map(p => new Promise(resolve => { if (p.exitCode !== null) resolve(); else p.once('exit', resolve) })))
}

function header () {
  const pkg = (name) => JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')).version
  return {
    id: randomUUID(),
    date: new Date().toISOString(),
    quick,
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, platform: process.platform },
    versions: { 'mcp-warden': JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version, fastify: pkg('fastify'), '@cedar-policy/cedar-wasm': pkg('@cedar-policy/cedar-wasm'), '@modelcontextprotocol/sdk': pkg('@modelcontextprotocol/sdk'), undici: pkg('undici'), autocannon: pkg('autocannon') }
  }
}
