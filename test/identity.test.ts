import t from 'tap'
import { createPrivateKey } from 'node:crypto'
import { request } from 'undici'
import { makeIssuer, unsignedToken, hmacWithPublicKey, tamperedToken, jwk } from './fixtures/keys.js'
import { startGateway, withGateway, publicKeyFile as publicKeyFileOf, ALLOW_ALL, type TestGateway } from './fixtures/gateway.js'
import { validateConfig } from '../lib/config.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { startJwks } from './fixtures/jwks.js'

const issuer = makeIssuer('RS256')
const stranger = makeIssuer('RS256')
let up: RecordingUpstream
let gw: TestGateway

t.before(async () => {
  up = await startRecordingUpstream()
  gw = await startGateway({
    issuer,
    upstreams: { db: { url: up.url }, api: { url: up.url } }
  })
})
t.teardown(async () => { await gw.close(); await up.close() })

const init = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } })

async function call (g: TestGateway, server: string, authorization?: string) {
  const res = await request(g.url(server), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(authorization !== undefined ? { authorization } : {}) },
    body: init
  })
  const text = await res.body.text()
  return { status: res.statusCode, challenge: res.headers['www-authenticate'] as string | undefined, text }
}

const now = (): number => Math.floor(Date.now() / 1000)

t.test('attacker tokens are refused with 401 and forward nothing', async t => {
  const db = gw.resource('db')
  const metadata = 'resource_metadata="http://gateway.test:8080/.well-known/oauth-protected-resource/servers/db/mcp"'
  const valid = issuer.sign({ aud: db })
  const cases: Array<[string, string | undefined, RegExp, boolean]> = [
    ['no token', undefined, /Authentication required/, false],
    ['a Basic credential', 'Basic YWdlbnQ6cGFzcw==', /Authentication required/, false],
    ['a garbage token', 'Bearer not.a.jwt', /not a well-formed JWT/, true],
    ['an expired token', `Bearer ${issuer.sign({ aud: db, exp: now() - 60 })}`, /expired/, true],
    ['a not-yet-valid token', `Bearer ${issuer.sign({ aud: db, nbf: now() + 600 })}`, /not valid yet/, true],
    ['a token of another issuer name', `Bearer ${issuer.sign({ aud: db, iss: 'https://evil.test' })}`, /issuer/, true],
    ['a token for another server (wrong audience)', `Bearer ${issuer.sign({ aud: gw.resource('api') })}`, /audience does not include http:\/\/gateway\.test:8080\/servers\/db\/mcp/, true],
    ['a token with no audience', `Bearer ${issuer.sign({})}`, /lacks the required "aud" claim/, true],
    ['a token with no expiry', `Bearer ${issuer.sign({ aud: db, exp: undefined })}`, /lacks the required "exp" claim/, true],
    ['alg none', `Bearer ${unsignedToken({ iss: issuer.issuer, sub: 'a', aud: db, exp: now() + 300 })}`, /alg "none"|algorithm/, true],
    ['HS256 signed with the public key (key confusion)', `Bearer ${hmacWithPublicKey(issuer.publicKeyPem, { iss: issuer.issuer, sub: 'a', aud: db, exp: now() + 300 })}`, /algorithm/, true],
    ['a tampered payload', `Bearer ${tamperedToken(valid, { agentId: 'admin-bot' })}`, /signature/, true],
    ['a token signed by another key', `Bearer ${stranger.sign({ aud: db, iss: issuer.issuer })}`, /signature/, true],
    ['a token naming no agent', `Bearer ${issuer.sign({ aud: db, sub: undefined, agentId: undefined })}`, /naming the agent/, true]
  ]
  const n = up.received.length
  for (const [name, authorization, reason, sent] of cases) {
    const res = await call(gw, 'db', authorization)
    t.equal(res.status, 401, `${name}: 401`)
    t.match(res.challenge, new RegExp(`^Bearer ${metadata.replace(/[.?/]/g, '\\$&')}`), `${name}: WWW-Authenticate points at the RFC 9728 metadata`)
    if (sent) t.match(res.challenge, /error="invalid_token"/, `${name}: error="invalid_token"`)
    else t.notMatch(res.challenge, /error=/, `${name}: no error code without a token`)
    const body = JSON.parse(res.text)
    t.equal(body.error.code, -32001, `${name}: JSON-RPC -32001`)
    t.match(body.error.message, reason, `${name}: says why (${body.error.message})`)
    t.equal(gw.audit.at(-1)?.outcome, 'deny', `${name}: audited as a deny`)
  }
  t.equal(up.received.length, n, 'the upstream received nothing')
  t.notOk(gw.log.some(l => l.includes(valid.split('.')[2]!)), 'no token appears in the operational log')
})

t.test('a valid token passes, within the clock tolerance too, and the identity is decorated', async t => {
  const db = gw.resource('db')
  let seen: unknown = null
  const ok = await call(gw, 'db', `Bearer ${issuer.sign({ aud: [db, 'https://other.example'], exp: now() - 2, userId: 'alice', roles: ['analyst'], agentId: 'bot-7' })}`)
  t.equal(ok.status, 200, 'expired 2 s ago is inside the 5 s tolerance')
  const rec = gw.audit.at(-1)!
  seen = { agentId: rec.agentId, userId: rec.userId, server: rec.server, outcome: rec.outcome }
  t.same(seen, { agentId: 'bot-7', userId: 'alice', server: 'db', outcome: 'allow' })
  const viaSub = await call(gw, 'api', `Bearer ${issuer.sign({ aud: gw.resource('api'), agentId: undefined, sub: 'sub-agent' })}`)
  t.equal(viaSub.status, 200)
  t.equal(gw.audit.at(-1)?.agentId, 'sub-agent', 'agentId falls back to sub')
})

t.test('identity.audiences adds accepted audiences', async t => {
  const g2 = await startGateway({
    issuer,
    upstreams: { db: { url: up.url } },
    identity: { issuer: issuer.issuer, publicKeyFile: (await import('./fixtures/gateway.js')).publicKeyFile(issuer), algorithms: ['RS256'], audiences: ['urn:mcp:all'] }
  })
  t.teardown(async () => { await g2.close() })
  t.equal((await call(g2, 'db', `Bearer ${issuer.sign({ aud: 'urn:mcp:all' })}`)).status, 200)
  t.equal((await call(g2, 'db', `Bearer ${issuer.sign({ aud: 'urn:mcp:other' })}`)).status, 401)
})

t.test('RFC 9728 metadata per server route', async t => {
  const res = await request(`${gw.base}/.well-known/oauth-protected-resource/servers/db/mcp`)
  t.equal(res.statusCode, 200)
  t.same(await res.body.json(), {
    resource: 'http://gateway.test:8080/servers/db/mcp',
    authorization_servers: [issuer.issuer],
    bearer_methods_supported: ['header'],
    resource_name: 'mcp-warden: db'
  })
  const unknown = await request(`${gw.base}/.well-known/oauth-protected-resource/servers/nope/mcp`)
  await unknown.body.dump()
  t.equal(unknown.statusCode, 404)
})

t.test('JWKS key source: kid lookup, unknown kid, issuer keys unreachable', async t => {
  const es = makeIssuer('ES256', 'https://jwks-idp.test', 'key-1')
  const jwks = await startJwks([jwk(es)])
  const g = await startGateway({
    upstreams: { db: { url: up.url } },
    identity: { issuer: es.issuer, jwksUri: jwks.url, algorithms: ['ES256', 'RS256'] }
  })
  t.teardown(async () => { await g.close(); await jwks.close() })
  const aud = g.resource('db')
  t.equal((await call(g, 'db', `Bearer ${es.sign({ aud })}`)).status, 200, 'a token whose kid is in the JWKS passes')

  const n = up.received.length
  const other = makeIssuer('ES256', es.issuer, 'key-unknown')
  const unknownKid = await call(g, 'db', `Bearer ${other.sign({ aud })}`)
  t.equal(unknownKid.status, 401)
  t.match(JSON.parse(unknownKid.text).error.message, /no signing key/)
  const fetches = jwks.fetches
  for (let i = 0; i < 5; i++) await call(g, 'db', `Bearer ${makeIssuer('ES256', es.issuer, `random-${i}`).sign({ aud })}`)
  t.ok(jwks.fetches <= fetches + 1, 'random kids do not make the gateway refetch the JWKS each time')

  const confused = await call(g, 'db', `Bearer ${hmacWithPublicKey(es.publicKeyPem, { iss: es.issuer, sub: 'a', aud, exp: now() + 60 }, 'key-1')}`)
  t.equal(confused.status, 401, 'HS256 with a JWKS key as secret is refused')
  const none = await call(g, 'db', `Bearer ${unsignedToken({ iss: es.issuer, sub: 'a', aud, exp: now() + 60 })}`)
  t.equal(none.status, 401, 'alg none is refused')
  t.equal(up.received.length, n, 'nothing forwarded')
})

t.test('JWKS unreachable: 503 and nothing forwarded (fail closed)', async t => {
  const es = makeIssuer('ES256', 'https://down-idp.test', 'k')
  const jwks = await startJwks([jwk(es)])
  jwks.up = false
  const g = await withGateway(t, { upstreams: { db: { url: up.url } }, identity: { issuer: es.issuer, jwksUri: jwks.url, algorithms: ['ES256'] } }, jwks)
  const n = up.received.length
  const res = await call(g, 'db', `Bearer ${es.sign({ aud: g.resource('db') })}`)
  t.equal(res.status, 503)
  t.equal(JSON.parse(res.text).error.code, -32014)
  t.equal(up.received.length, n)
  t.equal(g.audit.at(-1)?.outcome, 'error')
})

/** A JWT with this header and claims and a signature of garbage: it never gets to verification. */
const withHeader = (header: Record<string, unknown>, claims: Record<string, unknown>): string =>
  [header, claims].map(p => Buffer.from(JSON.stringify(p)).toString('base64url')).join('.') + '.c2ln'

t.test('whatever a token\'s header holds, the 401 says why in a valid WWW-Authenticate and a JSON-RPC error', async t => {
  const claims = { iss: issuer.issuer, aud: gw.resource('db'), exp: now() + 60 }
  const n = up.received.length
  for (const alg of ['\u0001', 'RS256\r\nX-Evil: 1', 'ЯS256', '"', '\\', 'x'.repeat(300), '\u{1F600}']) {
    const r = await call(gw, 'db', `Bearer ${withHeader({ alg, typ: 'JWT' }, claims)}`)
    t.equal(r.status, 401, `alg ${JSON.stringify(alg.slice(0, 12))}: 401`)
    t.match(r.challenge, /^Bearer resource_metadata="[^"]+", error="invalid_token", error_description="[\x20-\x7e]*"$/, 'a valid challenge')
    t.equal(JSON.parse(r.text).error.code, -32001, 'JSON-RPC -32001')
  }
  t.equal(up.received.length, n, 'nothing forwarded')
})

t.test('a JWKS that publishes a private key verifies nothing', async t => {
  const leaky = makeIssuer('ES256', 'https://leaky-idp.test', 'leaked')
  const priv = createPrivateKey(leaky.privateKeyPem).export({ format: 'jwk' })
  const jwks = await startJwks([{ ...priv, kid: leaky.kid, alg: 'ES256', use: 'sig' }])
  const g = await withGateway(t, { upstreams: { db: { url: up.url } }, identity: { issuer: leaky.issuer, jwksUri: jwks.url, algorithms: ['ES256'] } }, jwks)
  const n = up.received.length
  const r = await call(g, 'db', `Bearer ${leaky.sign({ aud: g.resource('db') })}`)
  t.equal(r.status, 401)
  t.match(JSON.parse(r.text).error.message, /publishes the private part/)
  t.equal(up.received.length, n, 'nothing forwarded')
})

t.test('while the issuer\'s JWKS is down, tokens cannot make the gateway fetch it on every request', async t => {
  const es = makeIssuer('ES256', 'https://flaky-idp.test', 'k')
  const jwks = await startJwks([jwk(es)])
  jwks.up = false
  const g = await withGateway(t, { upstreams: { db: { url: up.url } }, identity: { issuer: es.issuer, jwksUri: jwks.url, algorithms: ['ES256'] } }, jwks)
  const forged = makeIssuer('ES256', es.issuer, 'random')
  const statuses = await Promise.all(Array.from({ length: 40 }, async (_, i) => (await call(g, 'db', `Bearer ${forged.sign({ aud: g.resource('db'), jti: String(i) })}`)).status))
  t.same([...new Set(statuses)], [503], 'each is 503 (the keys are unavailable)')
  t.ok(jwks.fetches <= 3, `40 requests made ${jwks.fetches} fetches (one per retry interval)`)
  jwks.up = true
  await new Promise(resolve => setTimeout(resolve, 1100))
  t.equal((await call(g, 'db', `Bearer ${es.sign({ aud: g.resource('db') })}`)).status, 200, 'once it is back, a valid token passes')
})

t.test('the token endpoint answers a JWKS outage with 503, not invalid_grant, and spends no failure budget', async t => {
  const es = makeIssuer('ES256', 'https://sts-idp.test', 'k')
  const jwks = await startJwks([jwk(es)])
  const g = await withGateway(t, {
    upstreams: { db: { url: up.url } },
    identity: { issuer: es.issuer, jwksUri: jwks.url, algorithms: ['ES256'] },
    extra: { rateLimit: { max: 100, timeWindow: '1 minute', unauthenticated: { max: 2, timeWindow: '1 minute' } } }
  }, jwks)
  jwks.up = false
  const form = new URLSearchParams({
    grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
    subject_token: es.sign({ aud: [g.config.publicUrl] }),
    subject_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    resource: g.resource('db'),
    scope: 'tool:echo'
  })
  for (let i = 0; i < 4; i++) {
    const r = await request(`${g.base}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() })
    t.equal(r.statusCode, 503, `request ${i + 1}: 503`)
    t.match(await r.body.json(), { error: 'temporarily_unavailable' })
  }
  t.match(g.audit.at(-1), { event: 'token-exchange', outcome: 'error', status: 503 })
  jwks.up = true
  await new Promise(resolve => setTimeout(resolve, 1100))
  t.equal((await call(g, 'db', `Bearer ${es.sign({ aud: g.resource('db') })}`)).status, 200, 'the address was not locked out by the outage')
})

t.test('a verified token is remembered by its bytes, and still checked for expiry and audience on every request', async t => {
  const g = await withGateway(t, {
    issuer,
    upstreams: { db: { url: up.url }, api: { url: up.url } },
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFileOf(issuer), algorithms: ['RS256'], clockToleranceSeconds: 0 }
  })
  const db = g.resource('db')
  const exp = now() + 2
  const token = issuer.sign({ aud: db, exp })
  const n = up.received.length
  t.equal((await call(g, 'db', `Bearer ${token}`)).status, 200, 'verified')
  t.equal((await call(g, 'db', `Bearer ${token}`)).status, 200, 'remembered')
  const wrongRoute = await call(g, 'api', `Bearer ${token}`)
  t.equal(wrongRoute.status, 401, 'a remembered token on a route outside its audience is refused')
  t.match(JSON.parse(wrongRoute.text).error.message, /audience/)
  // Same header and claims, another signature: another token, verified on its own (and refused).
  const [h, p, s] = token.split('.')
  const forged = `${h}.${p}.${s!.slice(0, -4)}${s!.slice(-4) === 'AAAA' ? 'BBBB' : 'AAAA'}`
  const res = await call(g, 'db', `Bearer ${forged}`)
  t.equal(res.status, 401, 'a token with the claims of a remembered one and another signature is refused')
  t.match(JSON.parse(res.text).error.message, /signature/)
  await new Promise(resolve => setTimeout(resolve, exp * 1000 - Date.now() + 1100))
  const expired = await call(g, 'db', `Bearer ${token}`)
  t.equal(expired.status, 401, 'once it expires, a remembered token is refused')
  t.match(JSON.parse(expired.text).error.message, /expired/)
  const big = issuer.sign({ aud: db, padding: 'p'.repeat(5000) })
  t.equal((await call(g, 'db', `Bearer ${big}`)).status, 200, 'a token too long to be remembered is verified')
  t.equal((await call(g, 'db', `Bearer ${big}`)).status, 200, 'and verified again')
  t.equal(up.received.length, n + 4, 'only the valid calls were forwarded')
})

t.test('identity.verifiedTokenCacheSeconds: 0 verifies every request; out of range refuses to boot, naming the field', async t => {
  const g = await withGateway(t, { issuer, upstreams: { db: { url: up.url } }, identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFileOf(issuer), algorithms: ['RS256'], verifiedTokenCacheSeconds: 0 } })
  const token = issuer.sign({ aud: g.resource('db') })
  t.equal((await call(g, 'db', `Bearer ${token}`)).status, 200)
  t.equal((await call(g, 'db', `Bearer ${token}`)).status, 200)
  t.equal((await call(g, 'db', `Bearer ${tamperedToken(token, { agentId: 'admin-bot' })}`)).status, 401)
  for (const bad of [-1, 3601, 1.5]) {
    t.throws(() => validateConfig({ identity: { issuer: 'https://i.test', jwksUri: 'https://i.test/jwks', verifiedTokenCacheSeconds: bad }, authorization: ALLOW_ALL, upstreams: { db: { url: 'http://127.0.0.1:1/mcp' } } }), /identity\.verifiedTokenCacheSeconds/)
  }
})

t.test('MCP routes write no per-request log lines unless logRequests; other routes do', async t => {
  for (const logRequests of [false, true]) {
    const g = await withGateway(t, { issuer, upstreams: { db: { url: up.url } }, ...(logRequests ? { extra: { logRequests } } : {}) })
    const from = g.log.length
    t.equal((await call(g, 'db', `Bearer ${issuer.sign({ aud: g.resource('db') })}`)).status, 200)
    // The MCP call is the only request in this window.
    const mcpLines = g.log.slice(from).filter(l => /"msg":"(incoming request|request completed)"/.test(l))
    t.equal(mcpLines.length, logRequests ? 2 : 0, `logRequests ${String(logRequests)}: ${logRequests ? 'two lines' : 'no line'} for an MCP call`)
    const before = g.log.length
    await request(`${g.base}/.well-known/oauth-protected-resource/servers/db/mcp`)
    t.ok(g.log.slice(before).some(l => /incoming request/.test(l)), 'a metadata request is logged either way')
  }
})
