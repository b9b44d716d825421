// Reproduction, for reporting to V8/Node: with V8's inlining of JS-to-Wasm calls on (Node's
// default), a tight loop of Cedar decisions (the engine's authorize with its cache off, as
// bench/micro/cedar.mjs runs it) now and then kills the process with "unreachable code" in
// Deoptimizer::DoComputeBuiltinContinuation (SIGTRAP). With --no-turbo-inline-js-wasm-calls,
// which lib/cedar/engine.ts sets before any Cedar call is optimized, it does not.
//
// Run (after npm run build): node bench/repro/v8-wasm-inline-deopt.mjs [runs] [seconds]
// It runs the loop `runs` times (default 6) for `seconds` each (default 10) in fresh processes,
// with the inlining on and then off, and prints how many of each died.
import { spawnSync } from 'node:child_process'
import { setFlagsFromString } from 'node:v8'
import { join } from 'node:path'

const root = new URL('../../', import.meta.url).pathname
const [mode, a, b] = process.argv.slice(2)

if (mode === 'child') {
  // The engine switches the inlining off when it is imported; 'on' switches it back on before
  // any Cedar call is optimized, as Node's default would have it.
  const { CedarEngine, compilePolicySet, readPolicySource } = await import(join(root, 'dist/lib/cedar/engine.js'))
  const { validateConfig } = await import(join(root, 'dist/lib/config.js'))
  const { identityFromClaims } = await import(join(root, 'dist/lib/identity.js'))
  if (a === 'on') setFlagsFromString('--turbo-inline-js-wasm-calls')
  const authorization = { schema: join(root, 'cedar/schema.cedarschema'), policies: join(root, 'cedar/policies') }
  const config = validateConfig({ identity: { issuer: 'https://idp.repro', jwksUri: 'https://idp.repro/jwks' }, authorization, upstreams: { db: { url: 'http://127.0.0.1:1/mcp', tools: { database_query: { sensitivity: 'low', readOnly: true } } } } })
  // As bench/micro/cedar.mjs: the shipped set and a larger one, each with the cache off and on
  // (so authorize sees several policy sets and both paths), then tight timed loops of decisions.
  const shipped = compilePolicySet(readPolicySource(authorization.schema, authorization.policies))
  const engines = [new CedarEngine(shipped, 'Asia/Seoul', { cache: false }), new CedarEngine(shipped, 'Asia/Seoul')]
  const identity = identityFromClaims({ iss: 'https://idp.repro', sub: 'agent', roles: ['readonly'], department: 'd', userId: 'u' }, config.identity)
  const request = { identity, server: config.upstreams.get('db'), action: 'call_tool', method: 'tools/call', tool: 'database_query' }
  for (const e of engines) if (!e.authorize(request).allowed) throw new Error('the request should be allowed')
  const until = Date.now() + Number(b) * 1000
  let calls = 0
  const samples = []
  while (Date.now() < until) {
    for (const e of engines) {
      for (let i = 0; i < 500; i++, calls++) {
        const t0 = performance.now()
        e.authorize(request)
        samples.push(performance.now() - t0)
      }
      if (samples.length > 100_000) samples.length = 0
      await new Promise(resolve => setImmediate(resolve))
    }
  }
  console.log(`${calls} decisions`)
} else {
  const runs = Number(mode ?? 6)
  const seconds = Number(a ?? 10)
  console.log(`node ${process.version}: ${runs} runs of ${seconds} s each, JS-to-Wasm inlining on, then off`)
  for (const inlining of ['on', 'off']) {
    let died = 0
    for (let i = 0; i < runs; i++) {
      const r = spawnSync(process.execPath, [new URL(import.meta.url).pathname, 'child', inlining, String(seconds)], { encoding: 'utf8' })
      if (r.status !== 0) {
        died++
        const why = /unreachable code|Deoptimizer::\w+/.exec(r.stderr ?? '')?.[0] ?? (r.stderr ?? '').trim().split('\n').at(-1)
        console.log(`  inlining ${inlining}, run ${i + 1}: died (${r.signal ?? `exit ${r.status}`}): ${why}`)
      }
    }
    console.log(`inlining ${inlining}: ${died} of ${runs} runs died`)
  }
}
