import t, { type Test } from 'tap'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { abortedUpload } from './fixtures/aborted-upload.js'

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange'
const AT = 'urn:ietf:params:oauth:token-type:access_token'
const issuer = makeIssuer('ES256')
let up: RecordingUpstream
let gw: TestGateway

t.before(async () => {
  up = await startRecordingUpstream()
  gw = await startGateway({
    issuer,
    upstreams: { echo: { url: up.url }, other: { url: up.url } },
    extra: { authorization: { schema: ALLOW_ALL.schema, policies: new URL('./fixtures/cedar/sts', import.meta.url).pathname, watch: false } }
  })
})
t.teardown(async () => { await gw.close(); await up.close() })

const agentToken = (claims: Record<string, unknown> = {}) =>
  issuer.sign({ aud: [gw.config.publicUrl], agentId: 'bot-1', userId: 'alice', roles: ['reader'], department: 'support', ...claims })

async function exchange (params: Record<string, string | string[]>, contentType = 'application/x-www-form-urlencoded') {
  const form = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) for (const x of Array.isArray(v) ? v : [v]) form.append(k, x)
  const res = await request(`${gw.base}/oauth/token`, { method: 'POST', headers: { 'content-type': contentType }, body: contentType.includes('json') ? JSON.stringify(params) : form.toString() })
  return { status: res.statusCode, headers: res.headers, json: await res.body.json() as Record<string, any> }
}
const base = () => ({ grant_type: GRANT, subject_token: agentToken(), subject_token_type: AT, resource: gw.resource('echo'), scope: 'tool:echo' })
const decode = (token: string, part = 1) => JSON.parse(Buffer.from(token.split('.')[part]!, 'base64url').toString()) as Record<string, any>

t.test('every RFC 8693 / RFC 6749 error case', async t => {
  const expired = issuer.sign({ aud: [gw.config.publicUrl], roles: ['reader'], exp: Math.floor(Date.now() / 1000) - 60 })
  const cases: Array<[string, Record<string, string | string[]>, string, RegExp]> = [
    ['another grant type', { ...base(), grant_type: 'client_credentials' }, 'unsupported_grant_type', /token-exchange/],
    ['no grant type', { subject_token: agentToken() }, 'invalid_request', /"grant_type" is required/],
    ['no subject token', { ...base(), subject_token: '' }, 'invalid_request', /"subject_token" is required/],
    ['no subject token type', { ...base(), subject_token_type: '' }, 'invalid_request', /"subject_token_type" is required/],
    ['an unsupported subject token type', { ...base(), subject_token_type: 'urn:ietf:params:oauth:token-type:saml2' }, 'invalid_request', /subject_token_type must be/],
    ['a repeated parameter', { ...base(), scope: ['tool:echo', 'tool:count'] }, 'invalid_request', /only once/],
    ['an actor token type without actor token', { ...base(), actor_token_type: AT }, 'invalid_request', /actor_token_type without actor_token/],
    ['no resource', { ...base(), resource: '' }, 'invalid_request', /"resource" is required/],
    ['a resource of somebody else', { ...base(), resource: 'https://evil.example/mcp' }, 'invalid_target', /not a resource of this gateway/],
    ['two resources', { ...base(), resource: [gw.resource('echo'), gw.resource('other')] }, 'invalid_target', /only once/],
    ['a forged subject token', { ...base(), subject_token: makeIssuer('ES256', issuer.issuer, issuer.kid).sign({ aud: [gw.config.publicUrl] }) }, 'invalid_grant', /subject_token is not valid/],
    ['an expired subject token', { ...base(), subject_token: expired }, 'invalid_grant', /expired/],
    ['a subject token for another audience', { ...base(), subject_token: issuer.sign({ aud: 'https://elsewhere.example' }) }, 'invalid_grant', /audience is not this gateway/],
    ['no scope', { ...base(), scope: '' }, 'invalid_scope', /"scope" is required/],
    ['a scope of another kind', { ...base(), scope: 'admin' }, 'invalid_scope', /not a scope of this gateway/],
    ['a scope Cedar does not allow', { ...base(), scope: 'tool:echo tool:add_tool' }, 'invalid_scope', /tool:add_tool on echo is not allowed for this subject/]
  ]
  for (const [name, params, error, description] of cases) {
    const r = await exchange(params)
    t.equal(r.status, 400, `${name}: 400`)
    t.equal(r.json.error, error, `${name}: ${error}`)
    t.match(r.json.error_description, description, `${name}: ${r.json.error_description}`)
    t.equal(r.headers['cache-control'], 'no-store')
  }
  const json = await exchange(base(), 'application/json')
  t.match(json, { status: 400, json: { error: 'invalid_request' } }, 'JSON bodies are not the token endpoint\'s format')
})

t.test('a narrowed token: its resource and scope only, no longer than the subject, accepted nowhere else', async t => {
  const subjectExp = Math.floor(Date.now() / 1000) + 120
  const r = await exchange({ ...base(), subject_token: agentToken({ exp: subjectExp }), scope: 'tool:echo' })
  t.equal(r.status, 200)
  t.match(r.json, { issued_token_type: AT, token_type: 'Bearer', scope: 'tool:echo' })
  t.ok(r.json.expires_in <= 120 && r.json.expires_in > 100, 'TTL no longer than the subject token\'s remaining life')
  t.equal(r.headers['cache-control'], 'no-store')
  const token = r.json.access_token as string
  t.match(decode(token, 0), { alg: 'EdDSA', typ: 'at+jwt' })
  t.match(decode(token), { iss: gw.config.tokens.issuer, sub: 'bot-1', aud: gw.resource('echo'), scope: 'tool:echo', agentId: 'bot-1', userId: 'alice', roles: ['reader'], department: 'support' })
  t.ok(decode(token).exp <= subjectExp)

  const client = new Client({ name: 'narrowed', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('echo')), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
  t.teardown(async () => { await client.close() })
  t.same((await client.callTool({ name: 'echo', arguments: { text: 'narrow' } })).content, [{ type: 'text', text: 'narrow' }], 'the scoped tool works')
  const posts = () => up.received.filter(r => r.method === 'POST').length
  const n = posts()
  await t.rejects(client.callTool({ name: 'count', arguments: { n: 1 } }), { code: -32602, message: /Unknown tool: count/ }, 'a tool Cedar allows but the scope does not: hidden')
  t.equal(posts(), n, 'nothing forwarded')
  t.match(gw.audit.at(-1), { reason: "hidden: the token's scope does not include tool:count" })
  t.same((await client.listTools()).tools.map(x => x.name), ['echo'], 'lists show Cedar-allowed ∩ scope')
  const elsewhere = await request(gw.url('other'), { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }) })
  t.equal(elsewhere.statusCode, 401, 'refused on another server route (audience)')
  await elsewhere.body.dump()

  const wider = await exchange({ ...base(), subject_token: token, scope: 'tool:echo tool:count' })
  t.match(wider.json, { error: 'invalid_scope', error_description: /does not include tool:count/ }, 'a narrowed token cannot be exchanged for more')
  const same = await exchange({ ...base(), subject_token: token, scope: 'tool:echo' })
  t.equal(same.status, 200, 'but for the same or less')
})

t.test('delegation: act names the actor, and chains', async t => {
  const actor1 = issuer.sign({ aud: [gw.config.publicUrl], sub: 'orchestrator', agentId: 'orchestrator' })
  const first = await exchange({ ...base(), actor_token: actor1, actor_token_type: AT })
  t.equal(first.status, 200)
  t.same(decode(first.json.access_token).act, { sub: 'orchestrator' })
  const actor2 = issuer.sign({ aud: [gw.config.publicUrl], sub: 'planner', agentId: 'planner' })
  const second = await exchange({ ...base(), subject_token: first.json.access_token, actor_token: actor2, actor_token_type: AT })
  t.same(decode(second.json.access_token).act, { sub: 'planner', act: { sub: 'orchestrator' } }, 'the newest actor outermost')
  const badActor = await exchange({ ...base(), actor_token: 'garbage', actor_token_type: AT })
  t.match(badActor.json, { error: 'invalid_grant', error_description: /actor_token is not valid/ })
})

t.test('tokens the gateway minted for upstreams are not bearer tokens', async t => {
  const r = await request(gw.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${agentToken({ aud: gw.resource('echo') })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }) })
  await r.body.dump()
  const ephemeral = String(up.received.at(-1)!.headers.authorization).replace('Bearer ', '')
  t.equal(decode(ephemeral).iss, gw.config.tokens.issuer)
  const replayed = await request(gw.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${ephemeral}`, 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }) })
  t.equal(replayed.statusCode, 401)
  t.match(await replayed.body.json(), { error: { message: /minted for upstreams are not accepted/ } })
  const asSubject = await exchange({ ...base(), subject_token: ephemeral })
  t.match(asSubject.json, { error: 'invalid_grant' })
})

/** A gateway whose STS policies allow tool:echo and whose address budget is 3 failures a minute. */
async function budgetedGateway (t: Test): Promise<TestGateway> {
  const g = await startGateway({
    issuer,
    upstreams: { echo: { url: up.url } },
    extra: {
      authorization: { schema: ALLOW_ALL.schema, policies: new URL('./fixtures/cedar/sts', import.meta.url).pathname, watch: false },
      rateLimit: { max: 100, unauthenticated: { max: 3, timeWindow: '1 minute' } }
    }
  })
  t.teardown(() => g.close())
  return g
}

t.test('failed token requests spend the per-address budget of failed authentications; beyond it: 429 slow_down, nothing issued', async t => {
  const g = await budgetedGateway(t)
  const post = async (params: Record<string, string>, contentType = 'application/x-www-form-urlencoded') => {
    const res = await request(`${g.base}/oauth/token`, { method: 'POST', headers: { 'content-type': contentType }, body: contentType.includes('json') ? JSON.stringify(params) : new URLSearchParams(params).toString() })
    return { status: res.statusCode, headers: res.headers, json: await res.body.json() as Record<string, any> }
  }
  const valid = () => ({ grant_type: GRANT, subject_token: agentToken(), subject_token_type: AT, resource: g.resource('echo'), scope: 'tool:echo' })
  // Refusals of a verified subject (a scope Cedar does not allow, another resource) are not failed authentications.
  for (let i = 0; i < 5; i++) t.match(await post({ ...valid(), scope: 'tool:add_tool' }), { status: 400, json: { error: 'invalid_scope' } }, `a scope the subject may not have (${i + 1})`)
  t.equal((await post(valid())).status, 200, 'they spent nothing')

  const forged = makeIssuer('ES256', issuer.issuer, issuer.kid).sign({ aud: [g.config.publicUrl], roles: ['reader'] })
  t.match(await post({ ...valid(), subject_token: forged }), { status: 400, json: { error: 'invalid_grant' } }, 'a forged subject token')
  t.match(await post({ ...valid(), actor_token: 'garbage', actor_token_type: AT }), { status: 400, json: { error: 'invalid_grant' } }, 'an actor token that is not valid')
  t.match(await post({ subject_token: 'guess' }), { status: 400, json: { error: 'invalid_request' } }, 'a request refused before any token was verified')
  const over = await post(valid())
  t.equal(over.status, 429, 'three failures spent the budget of three: a valid request from that address waits')
  t.match(over.json, { error: 'slow_down', error_description: /too many failed token requests from this client address \(3 per window\); retry after \d+ seconds/ })
  t.notOk('access_token' in over.json, 'nothing issued')
  t.ok(Number(over.headers['retry-after']) >= 1 && Number(over.headers['retry-after']) <= 60, 'Retry-After')
  t.equal(over.headers['cache-control'], 'no-store')
  t.match(await post({ ...valid(), subject_token: forged }), { status: 429, json: { error: 'slow_down' } }, 'a forged token is not even read')
  t.match(await post(valid(), 'application/json'), { status: 429, json: { error: 'slow_down' } }, 'whatever the body')
  t.match(g.audit.at(-1), { event: 'token-exchange', outcome: 'deny', status: 429, reason: /^slow_down: / })
  t.equal(g.audit.filter(r => r.event === 'token-exchange' && r.outcome === 'allow').length, 1, 'one token issued in all: the one before the budget was spent')

  const mcp = await request(g.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${agentToken({ aud: g.resource('echo') })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }) })
  await mcp.body.dump()
  t.equal(mcp.statusCode, 429, 'the MCP routes share the budget: the address waits there too')
})

t.test('token requests aborted mid-upload spend the per-address budget', async t => {
  const g = await budgetedGateway(t)
  const partial = `grant_type=${encodeURIComponent(GRANT)}&subject_token=${agentToken().slice(0, 40)}`
  for (let i = 0; i < 3; i++) await abortedUpload(`${g.base}/oauth/token`, { 'content-type': 'application/x-www-form-urlencoded' }, partial)
  const form = new URLSearchParams({ grant_type: GRANT, subject_token: agentToken(), subject_token_type: AT, resource: g.resource('echo'), scope: 'tool:echo' }).toString()
  const exchangeNow = async () => {
    const res = await request(`${g.base}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form })
    return { status: res.statusCode, json: await res.body.json() as Record<string, any> }
  }
  // The aborts are counted as the gateway sees the connections go.
  let r = await exchangeNow()
  for (let i = 0; i < 50 && r.status === 200; i++) {
    await new Promise(resolve => setTimeout(resolve, 20))
    r = await exchangeNow()
  }
  t.equal(r.status, 429, 'three aborted uploads spent the budget of three')
  t.match(r.json, { error: 'slow_down' })
})
