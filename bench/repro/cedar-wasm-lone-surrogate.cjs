// Minimal reproduction, for reporting upstream: @cedar-policy/cedar-wasm (nodejs build) given a
// JavaScript string with a lone UTF-16 surrogate ("x\ud800") fails that call; after enough such
// calls the module's memory is corrupted and every later call, however ordinary, fails
// ("memory access out of bounds" or similar) until the process restarts.
// Run: node bench/repro/cedar-wasm-lone-surrogate.cjs [calls]   (no build needed)
'use strict'
const cedar = require('@cedar-policy/cedar-wasm/nodejs')

const schema = 'entity User; entity Doc; action read appliesTo { principal: User, resource: Doc, context: { note: String } };'
const policies = { staticPolicies: 'permit (principal, action == Action::"read", resource);' }
const request = (note) => ({
  principal: { type: 'User', id: 'alice' },
  action: { type: 'Action', id: 'read' },
  resource: { type: 'Doc', id: 'd1' },
  context: { note },
  schema,
  validateRequest: true,
  policies,
  entities: []
})

const calls = Number(process.argv[2] ?? 5000)
console.log(`cedar-wasm ${cedar.getCedarVersion?.() ?? ''}, node ${process.version}`)
const ok = (answer) => answer.type === 'success' && answer.response.decision === 'allow'
console.log('before: an ordinary call', ok(cedar.isAuthorized(request('hello'))) ? 'allows' : 'FAILS')
let firstBroken = -1
for (let i = 1; i <= calls; i++) {
  try { cedar.isAuthorized(request('x\ud800')) } catch (err) { if (i === 1) console.log(`a lone surrogate throws: ${err.message}`) }
  if (firstBroken < 0 && i % 50 === 0) {
    let fine = false
    try { fine = ok(cedar.isAuthorized(request('hello'))) } catch (err) { console.log(`  ordinary call throws: ${err.message}`) }
    if (!fine) { firstBroken = i; break }
  }
}
if (firstBroken > 0) console.log(`BROKEN: after ${firstBroken} calls with a lone surrogate, an ordinary call no longer succeeds`)
else console.log(`not reproduced: ordinary calls still succeed after ${calls} calls with a lone surrogate`)
