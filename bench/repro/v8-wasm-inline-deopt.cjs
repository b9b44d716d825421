// Reproduction attempt, for reporting to V8/Node: the Cedar hot path under sustained load with
// V8's inlining of JS-to-Wasm calls on (Node's default) or off (--no-turbo-inline-js-wasm-calls).
// The gateway once died under the bench's load with "unreachable code" in
// Deoptimizer::DoComputeBuiltinContinuation (Node 20 and 22); this drives the same calls the
// engine makes (cedar-wasm's statefulIsAuthorized with preparsed policies), with request
// objects of changing shapes and a call now and then that fails inside the module, so that
// optimized callers deoptimize while Wasm calls are inlined into them.
// Run: node [--no-turbo-inline-js-wasm-calls] bench/repro/v8-wasm-inline-deopt.cjs [seconds]
// Prints "survived" with the number of calls, or the process dies (exit by signal).
'use strict'
const { readFileSync, readdirSync } = require('node:fs')
const { join } = require('node:path')
const cedar = require('@cedar-policy/cedar-wasm/nodejs')

const root = join(__dirname, '../..')
const schemaText = readFileSync(join(root, 'cedar/schema.cedarschema'), 'utf8')
const dir = join(root, 'cedar/policies')
const texts = {}
for (const f of readdirSync(dir).filter(n => n.endsWith('.cedar'))) {
  const parts = cedar.policySetTextToParts(readFileSync(join(dir, f), 'utf8'))
  parts.policies.forEach((p, i) => { texts[`${f}#${i}`] = p })
}
if (cedar.preparseSchema('s', schemaText).type !== 'success') throw new Error('schema')
if (cedar.preparsePolicySet('p', { staticPolicies: texts }).type !== 'success') throw new Error('policies')

const seconds = Number(process.argv[2] ?? 60)
const flags = process.execArgv.join(' ') || '(none)'
console.log(`node ${process.version}, cedar-wasm ${cedar.getCedarVersion?.() ?? ''}, flags ${flags}, ${seconds} s`)
const roles = ['readonly', 'analyst', 'engineer', 'readwrite', 'super_admin']
const tools = ['database_query', 'database_insert', 'file_read', 'user_delete', 'report_1']
function request (i) {
  const role = roles[i % roles.length]
  const tool = tools[(i >> 2) % tools.length]
  const principal = { type: 'Mcp::Agent', id: `agent-${i % 7}` }
  const server = { type: 'Mcp::Server', id: 'db' }
  const entities = [
    { uid: principal, attrs: { userId: i % 3 === 0 ? '' : `u-${i % 5}`, department: 'eng', roles: [role], scopes: i % 11 === 0 ? ['approved:user_delete'] : [], issuer: 'https://idp' }, parents: [{ type: 'Mcp::Role', id: role }] },
    { uid: server, attrs: {}, parents: [] }
  ]
  const connect = i % 5 === 0
  const resource = connect ? server : { type: 'Mcp::Tool', id: `db/${tool}` }
  if (!connect) entities.push({ uid: resource, attrs: { name: tool, server: 'db', sensitivity: i % 2 ? 'low' : 'high', readOnly: i % 3 === 0, destructive: false }, parents: [server] })
  const context = { now: { __extn: { fn: 'datetime', arg: new Date(1764547200000 + i * 1000).toISOString() } }, localHour: i % 24, localWeekday: 1 + (i % 7), timezone: 'UTC', method: connect ? 'ping' : 'tools/call' }
  // Changing shapes: an extra member, a member of another type, a context the schema refuses.
  if (i % 13 === 0) context.extra = 'x'
  if (i % 17 === 0) context.localHour = String(context.localHour)
  const call = { principal, action: { type: 'Mcp::Action', id: connect ? 'connect' : 'call_tool' }, resource, context, entities, preparsedSchemaName: 's', preparsedPolicySetId: 'p', validateRequest: true }
  if (i % 19 === 0) call.entities = entities.map(e => ({ ...e, attrs: { ...e.attrs, more: i } }))
  return call
}
const until = Date.now() + seconds * 1000
let calls = 0
let failures = 0
const outcomes = { allow: 0, deny: 0 }
while (Date.now() < until) {
  for (let k = 0; k < 1000; k++) {
    const answer = cedar.statefulIsAuthorized(request(calls++))
    if (answer.type === 'success') outcomes[answer.response.decision]++
    else failures++
  }
}
console.log(`survived: ${calls} calls (${outcomes.allow} allow, ${outcomes.deny} deny, ${failures} refused requests)`)
