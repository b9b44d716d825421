import t from 'tap'
import Fastify from 'fastify'
import { request } from 'undici'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { rotateKeys } from '../lib/tokens/keys.js'
import { messageBinding } from '../lib/tokens/binding.js'
import { createUpstreamVerifier, UpstreamTokenError } from '../lib/upstream.js'
import { MemorySessionStore } from '../lib/stores/memory.js'
import mcpContext from '../plugins/mcp-context.js'
import identity from '../plugins/identity.js'
import cedarAuthz from '../plugins/cedar-authz.js'
import mcpProxy from '../plugins/mcp-proxy.js'
import { makeIssuer } from './fixtures/keys.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream, type Received } from './fixtures/upstream.js'

const issuer = makeIssuer('EdDSA')
let up: RecordingUpstream
let plain: RecordingUpstream
let gw: TestGateway

t.before(async () => {
  up = await startRecordingUpstream()
  plain = await startRecordingUpstream()
  gw = await startGateway({ issuer, upstreams: { echo: { url: up.url, resource: 'https://echo.internal/mcp' }, plain: { url: plain.url, auth: { type: 'none' } } } })
})
t.teardown(async () => { await gw.close(); await up.close(); await plain.close() })

const decode = (token: string) => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>
const bearer = (r: Received) => String(r.headers.authorization).replace(/^Bearer /, '')

t.test('every forwarded message carries its own token: claims exactly as specified', async t => {
  const agentToken = issuer.sign({ aud: gw.resource('echo'), agentId: 'bot-1', userId: 'alice' })
  const before = up.received.length
  const client = new Client({ name: 't', version: '1' })
  const transport = new StreamableHTTPClientTransport(new URL(gw.url('echo')), { requestInit: { headers: { authorization: `Bearer ${agentToken}` } } })
  await client.connect(transport)
  await client.callTool({ name: 'echo', arguments: { text: 'hi' } })
  await client.readResource({ uri: 'memo://nothing' }).catch(() => {})
  await client.getPrompt({ name: 'nothing' }).catch(() => {})
  await client.ping()
  await transport.terminateSession()
  await client.close()

  const received = up.received.slice(before)
  t.ok(received.every(r => decode(bearer(r)).sub === 'bot-1'), 'every token is the caller\'s, the list the gateway read before the call included')
  const byScope = new Map(received.map(r => [String(decode(bearer(r)).scope), r]))
  for (const scope of ['mcp:initialize', 'mcp:notifications/initialized', 'mcp:tools/list', 'tool:echo', 'resource:memo://nothing', 'prompt:nothing', 'mcp:ping', 'mcp:GET', 'mcp:DELETE']) {
    t.ok(byScope.has(scope), `a token scoped ${scope} was received`)
  }
  const jtis = new Set<unknown>()
  for (const r of received) {
    const claims = decode(bearer(r))
    const binding = messageBinding(r.method, r.body)
    t.same(Object.keys(claims).sort(), ['aud', 'call_sha256', 'exp', 'iat', 'iss', 'jti', 'nbf', 'scope', 'sub', 'user_id'], `${binding.scope}: exactly the specified claims`)
    t.match(claims, { iss: 'http://gateway.test:8080', sub: 'bot-1', user_id: 'alice', aud: 'https://echo.internal/mcp', scope: binding.scope, call_sha256: binding.callSha256 })
    t.equal((claims.exp as number) - (claims.iat as number), 60, 'alive ttlSeconds')
    t.equal(claims.nbf, claims.iat)
    jtis.add(claims.jti)
    t.not(bearer(r), agentToken)
  }
  t.equal(jtis.size, received.length, 'one jti per message')

  // What the upstream received verifies with mcp-warden/upstream against the gateway's JWKS over HTTP.
  const verifier = createUpstreamVerifier({ issuer: 'http://gateway.test:8080', audience: 'https://echo.internal/mcp', jwksUri: `${gw.base}/.well-known/jwks.json` })
  t.teardown(async () => { await verifier.close() })
  for (const r of received) {
    await verifier.verify({ authorization: r.headers.authorization, httpMethod: r.method, body: r.body })
  }
  t.pass(`all ${received.length} tokens verify against the bodies received`)
  const replayed = received.find(r => r.method === 'POST')!
  await t.rejects(verifier.verify({ authorization: replayed.headers.authorization, httpMethod: 'POST', body: replayed.body }), { code: 'replay' })
  const other = createUpstreamVerifier({ issuer: 'http://gateway.test:8080', audience: 'https://file.internal/mcp', jwksUri: `${gw.base}/.well-known/jwks.json` })
  await t.rejects(other.verify({ authorization: replayed.headers.authorization, httpMethod: 'POST', body: replayed.body }), { code: 'audience' }, 'a token for one upstream is refused by another')
  await other.close()
  const call = byScope.get('tool:echo')!
  const tampered = { ...(call.body as object), params: { name: 'echo', arguments: { text: 'tampered' } } }
  const fresh = createUpstreamVerifier({ issuer: 'http://gateway.test:8080', audience: 'https://echo.internal/mcp', jwksUri: `${gw.base}/.well-known/jwks.json` })
  await t.rejects(fresh.verify({ authorization: call.headers.authorization, httpMethod: 'POST', body: tampered }), UpstreamTokenError, 'tampered arguments are refused')
  await fresh.close()
})

t.test('JWKS route and rotation: old tokens stay valid until they expire', async t => {
  const res = await request(`${gw.base}/.well-known/jwks.json`)
  const jwks = await res.body.json() as { keys: Array<{ kid: string, kty: string, d?: string }> }
  t.equal(res.statusCode, 200)
  t.equal(jwks.keys.length, 1)
  t.equal(jwks.keys[0]!.kty, 'OKP')
  t.equal(jwks.keys[0]!.d, undefined, 'no private key material')
  const oldKid = jwks.keys[0]!.kid

  const body = { jsonrpc: '2.0', id: 1, method: 'ping' }
  const before = gw.app.mcpWarden.tokens.minter.mint({ agentId: 'a', userId: null }, 'https://echo.internal/mcp', messageBinding('POST', body))
  t.equal(before.kid, oldKid)
  rotateKeys(gw.config.tokens.keysDir, gw.config.tokens.ttlSeconds, 0)
  process.emit('SIGHUP')
  const after = gw.app.mcpWarden.tokens.minter.mint({ agentId: 'a', userId: null }, 'https://echo.internal/mcp', messageBinding('POST', body))
  t.not(after.kid, oldKid, 'new tokens are signed with the new key')
  const published = (await (await request(`${gw.base}/.well-known/jwks.json`)).body.json() as { keys: Array<{ kid: string }> }).keys.map(k => k.kid)
  t.same(published.sort(), [oldKid, after.kid].sort(), 'both keys are published')
  const verifier = createUpstreamVerifier({ issuer: 'http://gateway.test:8080', audience: 'https://echo.internal/mcp', jwksUri: `${gw.base}/.well-known/jwks.json` })
  t.teardown(async () => { await verifier.close() })
  t.match(await verifier.verify({ authorization: `Bearer ${before.token}`, httpMethod: 'POST', body }), { jti: before.claims.jti }, 'a token of the old key still verifies')
  t.match(await verifier.verify({ authorization: `Bearer ${after.token}`, httpMethod: 'POST', body }), { jti: after.claims.jti })
})

t.test('no credential, nothing forwarded: a failing minter, a missing credential plugin', async t => {
  const token = issuer.sign({ aud: gw.resource('echo') })
  const init = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } })
  const minter = gw.app.mcpWarden.tokens.minter
  const original = minter.mint.bind(minter)
  minter.mint = () => { throw new Error('signing key unreadable') }
  t.teardown(() => { minter.mint = original })
  const n = up.received.length
  const res = await request(gw.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: init })
  t.equal(res.statusCode, 503)
  t.match(await res.body.json(), { error: { code: -32014, message: /could not obtain a credential for MCP server "echo"/ } })
  t.equal(up.received.length, n, 'nothing forwarded')
  t.match(gw.audit.at(-1), { outcome: 'error', status: 503 })
  minter.mint = original

  // A host that forgot the ephemeral-token plugin: it does not boot, and says what to register.
  const app = Fastify({ logger: false })
  await app.register(mcpContext, { config: gw.config })
  await app.register(identity, { config: gw.config })
  await app.register(cedarAuthz, { config: gw.config })
  await app.register(mcpProxy, { config: gw.config, sessions: new MemorySessionStore() })
  t.teardown(async () => { await app.close() })
  await t.rejects(async () => { await app.ready() }, { code: 'MCPW_ERR_PLUGIN_MISSING', message: /upstream "echo" \(auth\.type ephemeral\) needs ephemeralTokenPlugin/ })
  t.equal(up.received.length, n, 'still nothing forwarded')
})

t.test('an upstream with auth none gets no Authorization header at all', async t => {
  const token = issuer.sign({ aud: gw.resource('plain') })
  const res = await request(gw.url('plain'), { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }) })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(plain.received.at(-1)?.headers.authorization, undefined)
})
