/**
 * Every grant and refusal is audited: the token endpoint's (both outcomes, with the subject and
 * the actor when known), and the requests an upstream sends the agent on a stream.
 */
import t from 'tap'
import { request } from 'undici'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, startGateway, type TestGateway } from './fixtures/gateway.js'
import { startScriptedUpstream, type ScriptedUpstream } from './fixtures/scripted-upstream.js'

const issuer = makeIssuer('EdDSA')
let up: ScriptedUpstream
let gw: TestGateway

t.before(async () => {
  up = await startScriptedUpstream((req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.write('data: {"jsonrpc":"2.0","id":"s-1","method":"sampling/createMessage","params":{"messages":[],"maxTokens":5}}\n\n')
    res.end(`data: ${JSON.stringify({ jsonrpc: '2.0', id: req.body?.id ?? null, result: { content: [] } })}\n\n`)
  })
  gw = await startGateway({
    issuer,
    upstreams: { up: { url: up.url, auth: { type: 'none' } } },
    extra: { authorization: { schema: ALLOW_ALL.schema, policies: new URL('./fixtures/cedar/sts', import.meta.url).pathname, watch: false } }
  })
})
t.teardown(async () => { await gw.close(); await up.close() })

const exchange = async (params: Record<string, string>) => {
  const res = await request(`${gw.base}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(params).toString() })
  return { status: res.statusCode, json: await res.body.json() as Record<string, unknown> }
}
const base = (subject: string) => ({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: subject, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token', resource: gw.resource('up'), scope: 'tool:echo' })

t.test('the token endpoint audits each grant and each refusal, never the tokens', async t => {
  const subject = issuer.sign({ aud: [gw.config.publicUrl], agentId: 'audited-bot', userId: 'alice', roles: ['reader'] })
  const actor = issuer.sign({ aud: [gw.config.publicUrl], agentId: 'helper-bot', roles: ['reader'] })
  const before = gw.audit.length
  t.equal((await exchange({ ...base(subject), actor_token: actor, actor_token_type: 'urn:ietf:params:oauth:token-type:access_token' })).status, 200)
  t.equal((await exchange({ ...base(subject), scope: 'tool:echo tool:add_tool' })).status, 400)
  t.equal((await exchange({ ...base('not-a-token') })).status, 400)
  t.equal((await exchange({ ...base(subject), actor_token: 'forged.actor.token', actor_token_type: 'urn:ietf:params:oauth:token-type:access_token' })).status, 400, 'a bad actor_token is refused, not ignored')
  const records = gw.audit.slice(before)
  t.match(records, [
    { event: 'token-exchange', outcome: 'allow', status: 200, agentId: 'audited-bot', userId: 'alice', actor: 'helper-bot', resource: gw.resource('up'), scope: 'tool:echo' },
    { event: 'token-exchange', outcome: 'deny', status: 400, agentId: 'audited-bot', reason: /^invalid_scope: tool:add_tool/ },
    { event: 'token-exchange', outcome: 'deny', status: 400, agentId: null, reason: /^invalid_grant/ },
    { event: 'token-exchange', outcome: 'deny', status: 400, agentId: 'audited-bot', reason: /^invalid_grant: the actor_token is not valid/ }
  ])
  const text = JSON.stringify(records)
  t.notOk(text.includes(subject) || text.includes(actor), 'no token in any record')
})

t.test('a request an upstream sends the agent on a stream is audited as it passes', async t => {
  const before = gw.audit.length
  const res = await request(gw.url('up'), {
    method: 'POST',
    headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('up'), agentId: 'sampled-bot', roles: ['reader'] })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 4, method: 'ping' })
  })
  t.match(await res.body.text(), /sampling\/createMessage/, 'relayed')
  t.match(gw.audit.slice(before), [{ event: 'upstream-request', method: 'sampling/createMessage', rpcId: 's-1', server: 'up', agentId: 'sampled-bot' }])
})
