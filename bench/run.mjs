// npm run bench [-- --quick] [-- --write]: the gateway with its full chain against the same
// upstream directly, side by side in one run, with autocannon; per-stage timings from the
// gateway; then the micro-benches; then results/latest.json and RESULTS.md. With --write these
// are the committed bench/results/ and bench/RESULTS.md; without, the same under .scratch/bench/.
import { fork, execFileSync } from 'node:child_process'
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { join } from 'node:path'
import autocannon from 'autocannon'
import { createSigner } from 'fast-jwt'
import { freePort } from '../dist/lib/http-body.js'
import { outDir, progress, resultsDir, root, shown, write } from './out.mjs'

const quick = process.argv.includes('--quick')
const duration = quick ? 3 : 10
const concurrencies = quick ? [10] : [1, 10, 50]
progress(`${quick ? 'quick run' : 'full run'}, ${duration} s per autocannon run; results to ${shown(outDir)}/${write ? ' (--write: the committed files)' : ' (--write updates the committed bench/ files)'}`)

const { privateKey, publicKey } = generateKeyPairSync('ed25519')
const sign = createSigner({ key: privateKey.export({ type: 'pkcs8', format: 'pem' }), algorithm: 'EdDSA' })

// The upstream and the gateway each get a process (and so, on two cores, a core) of their own.
progress('starting upstream and gateway…')
const gatewayPort = await freePort()
const gatewayOrigin = `http://127.0.0.1:${gatewayPort}`
const upstreamProc = fork(join(root, 'bench/e2e/servers.mjs'), ['upstream', gatewayOrigin, `${gatewayOrigin}/.well-known/jwks.json`], { stdio: 'inherit' })
const askOf = (proc) => (msg, key) => new Promise(resolve => { const on = (m) => { if (key in m) { proc.off('message', on); resolve(m) } }; proc.on('message', on); if (msg !== undefined) proc.send(msg) })
const up = await askOf(upstreamProc)(undefined, 'ready')
const child = fork(join(root, 'bench/e2e/servers.mjs'), ['gateway', publicKey.export({ type: 'spki', format: 'pem' }).toString(), String(up.port), String(gatewayPort)], { stdio: 'inherit', execArgv: [...process.execArgv, ...(process.env.MCPW_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean)] })
const ask = askOf(child)
for (const [name, proc] of [['gateway', child], ['upstream', upstreamProc]]) {
  proc.on('exit', (code, signal) => {
    if (signal !== null || (code !== 0 && code !== null)) {
      console.error(`bench: the ${name} process died (${signal ?? `exit ${code}`}); no results are written`)
      process.exit(1)
    }
  })
}
const ready = { ...(await ask(undefined, 'ready')), direct: `http://127.0.0.1:${up.port}/direct` }
progress(`upstream on :${up.port}, gateway on :${gatewayPort}`)

const agents = [['reader-bot', 'readonly'], ['analyst-bot', 'analyst'], ['engineer-bot', 'engineer']]
const tokens = agents.map(([agentId, role]) => sign({ iss: 'https://idp.bench', sub: agentId, agentId, roles: [role], aud: ready.resource, exp: Math.floor(Date.now() / 1000) + 3600 }))
const bodies = {
  'tools/call': { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT * FROM customers' } } },
  'tools/list': { jsonrpc: '2.0', id: 1, method: 'tools/list' }
}
const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' }

async function drive (url, body, connections, withTokens) {
  const u = new URL(url)
  const result = await autocannon({
    url: u.origin,
    connections,
    duration,
    requests: (withTokens ? tokens : [undefined]).map(token => ({
      method: 'POST',
      path: u.pathname,
      headers: token !== undefined ? { ...headers, authorization: `Bearer ${token}` } : headers,
      body: JSON.stringify(body)
    }))
  })
  const bad = result.non2xx + result.errors + result.timeouts
  if (bad > 0) throw new Error(`${url}: ${bad} failed requests of ${result.requests.total}`)
  return { p50_ms: result.latency.p50, p99_ms: result.latency.p99, mean_ms: +result.latency.mean.toFixed(3), rps: Math.round(result.requests.average), total: result.requests.total }
}

// Warm-up: the gateway learns the tool list, the upstream verifier fetches the JWKS.
progress(`warm-up: tools/list and tools/call through the gateway, c=1 (2 × ${duration} s)…`)
await drive(ready.gateway, bodies['tools/list'], 1, true)
await drive(ready.gateway, bodies['tools/call'], 1, true)

const e2e = []
for (const [method, body] of Object.entries(bodies)) {
  for (const c of concurrencies) {
    await ask('reset', 'reset')
    progress(`${method} c=${c}: direct (${duration} s)…`)
    const direct = await drive(ready.direct, body, c, false)
    progress(`${method} c=${c}: gateway (${duration} s)…`)
    const gateway = await drive(ready.gateway, body, c, true)
    e2e.push({
      method, connections: c, direct, gateway,
      added_p50_ms: +(gateway.p50_ms - direct.p50_ms).toFixed(3),
      added_p99_ms: +(gateway.p99_ms - direct.p99_ms).toFixed(3),
      added_mean_ms: +(gateway.mean_ms - direct.mean_ms).toFixed(3),
      throughput_ratio: +(gateway.rps / direct.rps).toFixed(3)
    })
    console.log(`${method} c=${c}: direct p50 ${direct.p50_ms} ms, gateway p50 ${gateway.p50_ms} ms, mean +${(gateway.mean_ms - direct.mean_ms).toFixed(3)} ms, throughput x${(gateway.rps / direct.rps).toFixed(2)}`)
  }
}
// Per-stage timings of the last tools/call runs are gone with the reset; run one more, timed.
await ask('reset', 'reset')
progress(`per-stage timings: tools/call c=10 through the gateway (${duration} s)…`)
await drive(ready.gateway, bodies['tools/call'], 10, true)
const { stages } = await ask('stages', 'stages')
const pct = (a, p) => { const s = [...a].sort((x, y) => x - y); return +s[Math.min(s.length - 1, Math.floor(s.length * p))].toFixed(1) }
const hops = Object.fromEntries(Object.entries(stages).map(([k, a]) => [k, { p50_us: pct(a, 0.5), p99_us: pct(a, 0.99), n: a.length }]))
child.send('stop')
upstreamProc.send('stop')

// The micro-benches, each writing its own results file into resultsDir (same --write).
const flags = [...(quick ? ['--quick'] : []), ...(write ? ['--write'] : [])]
for (const m of ['cedar', 'tokens', 'filter', 'identity', 'sse', 'tool-scan']) {
  execFileSync(process.execPath, [join(root, `bench/micro/${m}.mjs`), ...flags], { stdio: 'inherit' })
}
const micro = Object.fromEntries(['cedar', 'tokens', 'filter', 'identity', 'sse'].map(m => [m, JSON.parse(readFileSync(join(resultsDir, `${m}.json`), 'utf8'))]))

const pkg = (name) => JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')).version
const latest = {
  id: randomUUID(),
  date: new Date().toISOString(),
  quick,
  machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, platform: process.platform },
  versions: { 'mcp-warden': JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version, fastify: pkg('fastify'), '@cedar-policy/cedar-wasm': pkg('@cedar-policy/cedar-wasm'), '@modelcontextprotocol/sdk': pkg('@modelcontextprotocol/sdk'), undici: pkg('undici'), autocannon: pkg('autocannon') },
  settings: { durationSeconds: duration, concurrencies, agents: agents.length },
  e2e,
  hops,
  micro
}
mkdirSync(resultsDir, { recursive: true })
writeFileSync(join(resultsDir, 'latest.json'), JSON.stringify(latest, null, 2) + '\n')
progress('report…')
execFileSync(process.execPath, [join(root, 'bench/report.mjs'), ...(write ? ['--write'] : [])], { stdio: 'inherit' })
if (!write) progress(`done; results in ${shown(outDir)}/ (RESULTS.md, results/); the committed bench/ files are untouched (--write updates them)`)
