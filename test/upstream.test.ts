import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { createUpstreamVerifier, upstreamAuthPlugin, UpstreamTokenError, type VerifyInput } from '../lib/upstream.js'
import { KeyRing } from '../lib/tokens/keys.js'
import { TokenMinter } from '../lib/tokens/minter.js'
import { messageBinding } from '../lib/tokens/binding.js'
import { makeIssuer } from './fixtures/keys.js'
import { startJwks } from './fixtures/jwks.js'

const ring = new KeyRing(mkdtempSync(join(tmpdir(), 'mcpw-up-')), 60)
const minter = new TokenMinter(ring, { issuer: 'https://gw.test', ttlSeconds: 60 })
const DB = 'http://127.0.0.1:9001/mcp'
const FILE = 'http://127.0.0.1:9002/mcp'
const call = { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT 1' } } }
const agent = { agentId: 'bot', userId: 'alice' }
const mint = (body: unknown = call, audience = DB, now?: number) => minter.mint(agent, audience, messageBinding('POST', body), now).token
const verifier = (audience = DB) => createUpstreamVerifier({ issuer: 'https://gw.test', audience, jwks: ring.jwks() })

async function refused (t: Test, input: VerifyInput, code: string, message: RegExp, v = verifier()): Promise<void> {
  try {
    await v.verify(input)
    t.fail(`expected ${code}`)
  } catch (err) {
    t.type(err, UpstreamTokenError)
    t.equal((err as UpstreamTokenError).code, code, `${code}: ${(err as Error).message}`)
    t.match((err as Error).message, message)
  }
}

t.test('a valid token for this exact message passes, once', async t => {
  const v = verifier()
  const token = mint()
  const claims = await v.verify({ authorization: `Bearer ${token}`, httpMethod: 'POST', body: call })
  t.match(claims, { iss: 'https://gw.test', sub: 'bot', user_id: 'alice', aud: DB, scope: 'tool:database_query' })
  await refused(t, { authorization: `Bearer ${token}`, httpMethod: 'POST', body: call }, 'replay', /already used/, v)
})

t.test('every failure is refused with its own code', async t => {
  const token = mint()
  await refused(t, { authorization: undefined, httpMethod: 'POST', body: call }, 'missing', /no "Authorization: Bearer" token/)
  await refused(t, { authorization: `Basic ${token}`, httpMethod: 'POST', body: call }, 'missing', /Bearer/)
  await refused(t, { authorization: 'Bearer abc.def', httpMethod: 'POST', body: call }, 'malformed', /well-formed/)
  await refused(t, { authorization: `Bearer ${mint(call, DB)}`, httpMethod: 'POST', body: call }, 'audience', /another server/, verifier(FILE))
  const tampered = { ...call, params: { ...call.params, arguments: { sql: 'DROP TABLE customers' } } }
  await refused(t, { authorization: `Bearer ${mint()}`, httpMethod: 'POST', body: tampered }, 'call_hash', /does not match the call/)
  await refused(t, { authorization: `Bearer ${mint()}`, httpMethod: 'POST', body: { ...call, params: { ...call.params, name: 'database_drop' } } }, 'scope', /does not cover this message \(tool:database_drop\)/)
  await refused(t, { authorization: `Bearer ${mint()}`, httpMethod: 'GET' }, 'scope', /mcp:GET/)
  await refused(t, { authorization: `Bearer ${mint()}`, httpMethod: 'POST', body: undefined }, 'call_hash', /no JSON-RPC message/)
  await refused(t, { authorization: `Bearer ${mint(call, DB, Date.now() - 120_000)}`, httpMethod: 'POST', body: call }, 'expired', /expired/)
  await refused(t, { authorization: `Bearer ${mint(call, DB, Date.now() + 120_000)}`, httpMethod: 'POST', body: call }, 'not_yet_valid', /not valid yet/)
  const other = new TokenMinter(ring, { issuer: 'https://evil.test', ttlSeconds: 60 })
  await refused(t, { authorization: `Bearer ${other.mint(agent, DB, messageBinding('POST', call)).token}`, httpMethod: 'POST', body: call }, 'issuer', /not issued by the expected gateway/)
  const long = new TokenMinter(ring, { issuer: 'https://gw.test', ttlSeconds: 3600 })
  await refused(t, { authorization: `Bearer ${long.mint(agent, DB, messageBinding('POST', call)).token}`, httpMethod: 'POST', body: call }, 'claims', /longer than 300 s/)
  const foreign = makeIssuer('EdDSA', 'https://gw.test', ring.current().kid)
  await refused(t, { authorization: `Bearer ${foreign.sign({ iss: 'https://gw.test', aud: DB, scope: 'tool:database_query', jti: 'x', nbf: 0, call_sha256: messageBinding('POST', call).callSha256 })}`, httpMethod: 'POST', body: call }, 'signature', /signature, algorithm or key/)
  const rsa = makeIssuer('RS256', 'https://gw.test', ring.current().kid)
  await refused(t, { authorization: `Bearer ${rsa.sign({ aud: DB })}`, httpMethod: 'POST', body: call }, 'signature', /not accepted/)
  const unknownKid = makeIssuer('EdDSA', 'https://gw.test', 'not-a-gateway-key')
  await refused(t, { authorization: `Bearer ${unknownKid.sign({ aud: DB })}`, httpMethod: 'POST', body: call }, 'signature', /kid/)
})

t.test('JWKS over HTTP: keys fetched and cached; unreachable keys are a 503-class error', async t => {
  const jwks = await startJwks(ring.jwks().keys as Array<Record<string, unknown>>)
  t.teardown(async () => { await jwks.close() })
  const v = createUpstreamVerifier({ issuer: 'https://gw.test', audience: DB, jwksUri: jwks.url })
  t.teardown(async () => { await v.close() })
  await v.verify({ authorization: `Bearer ${mint()}`, httpMethod: 'POST', body: call })
  await v.verify({ authorization: `Bearer ${mint()}`, httpMethod: 'POST', body: call })
  t.equal(jwks.fetches, 1, 'fetched once')
  jwks.up = false
  const cold = createUpstreamVerifier({ issuer: 'https://gw.test', audience: DB, jwksUri: jwks.url })
  try {
    await cold.verify({ authorization: `Bearer ${mint()}`, httpMethod: 'POST', body: call })
    t.fail('should refuse')
  } catch (err) {
    t.equal((err as UpstreamTokenError).code, 'keys')
    t.equal((err as UpstreamTokenError).statusCode, 503)
  }
  t.throws(() => createUpstreamVerifier({ issuer: 'x', audience: 'y' }), /exactly one of jwksUri and jwks/)
})

t.test('the Fastify plugin for MCP servers', async t => {
  const app = Fastify()
  await app.register(upstreamAuthPlugin, { issuer: 'https://gw.test', audience: DB, jwks: ring.jwks() })
  app.post('/mcp', async (request) => ({ jsonrpc: '2.0', id: 1, result: { by: request.gatewayToken?.sub } }))
  t.teardown(async () => { await app.close() })
  const ok = await app.inject({ method: 'POST', url: '/mcp', headers: { authorization: `Bearer ${mint()}` }, payload: call })
  t.equal(ok.statusCode, 200)
  t.same(ok.json().result, { by: 'bot' })
  const bad = await app.inject({ method: 'POST', url: '/mcp', headers: { authorization: `Bearer ${mint()}` }, payload: { ...call, params: { name: 'database_query', arguments: { sql: 'x' } } } })
  t.equal(bad.statusCode, 401)
  t.match(bad.headers['www-authenticate'], /error="invalid_token"/)
  t.match(bad.json(), { error: { code: -32001, message: /call_sha256/, data: { reason: 'call_hash' } } })
})
