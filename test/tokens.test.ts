import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import t from 'tap'
import { createVerifier } from 'fast-jwt'
import { createPublicKey } from 'node:crypto'
import { canonicalHash, messageBinding } from '../lib/tokens/binding.js'
import { ensureKeys, KeyRing, retentionSeconds, rotateKeys } from '../lib/tokens/keys.js'
import { TokenMinter } from '../lib/tokens/minter.js'

const keysDir = () => mkdtempSync(join(tmpdir(), 'mcpw-keys-test-'))

t.test('message bindings: scope per message type and the RFC 8785 hash of {method, params}', async t => {
  const call = { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'database_query', arguments: { sql: 'SELECT 1', b: 2, a: 1 } } }
  const b = messageBinding('POST', call)
  t.equal(b.scope, 'tool:database_query')
  const canonical = '{"method":"tools/call","params":{"arguments":{"a":1,"b":2,"sql":"SELECT 1"},"name":"database_query"}}'
  t.equal(b.callSha256, createHash('sha256').update(canonical).digest('base64url'), 'keys sorted, id and jsonrpc left out')
  t.equal(messageBinding('POST', { ...call, id: 8 }).callSha256, b.callSha256, 'the id is not part of the call')
  t.not(messageBinding('POST', { ...call, params: { ...call.params, arguments: { sql: 'SELECT 2' } } }).callSha256, b.callSha256, 'other arguments, other hash')
  t.equal(messageBinding('POST', { jsonrpc: '2.0', id: 1, method: 'resources/read', params: { uri: 'file:///a' } }).scope, 'resource:file:///a')
  t.equal(messageBinding('POST', { jsonrpc: '2.0', id: 1, method: 'resources/subscribe', params: { uri: 'file:///a' } }).scope, 'resource:file:///a')
  t.equal(messageBinding('POST', { jsonrpc: '2.0', id: 1, method: 'prompts/get', params: { name: 'p' } }).scope, 'prompt:p')
  const ping = messageBinding('POST', { jsonrpc: '2.0', id: 1, method: 'ping' })
  t.same(ping, { scope: 'mcp:ping', callSha256: canonicalHash({ method: 'ping' }) }, 'params left out when there are none')
  t.equal(messageBinding('POST', { jsonrpc: '2.0', method: 'notifications/initialized' }).scope, 'mcp:notifications/initialized')
  t.same(messageBinding('POST', { jsonrpc: '2.0', id: 3, result: { ok: true } }), { scope: 'mcp:response', callSha256: canonicalHash({ id: 3, result: { ok: true } }) })
  t.same(messageBinding('GET'), { scope: 'mcp:GET', callSha256: canonicalHash({ method: 'GET' }) })
  t.equal(messageBinding('DELETE').scope, 'mcp:DELETE')
  t.throws(() => messageBinding('POST', undefined))
})

t.test('keys: created 0600 in a 0700 folder, once, even when replicas race', async t => {
  const dir = join(keysDir(), 'nested')
  ensureKeys(dir)
  ensureKeys(dir)
  const list = JSON.parse(readFileSync(join(dir, 'keys.json'), 'utf8')) as { keys: Array<{ kid: string }> }
  t.equal(list.keys.length, 1)
  t.equal(statSync(dir).mode & 0o777, 0o700)
  t.equal(statSync(join(dir, `${list.keys[0]!.kid}.key.pem`)).mode & 0o777, 0o600)
  const ring = new KeyRing(dir, 60)
  t.equal(ring.current().kid, list.keys[0]!.kid)
  t.match(ring.jwks(), { keys: [{ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', use: 'sig', kid: list.keys[0]!.kid, x: String }] })
  t.notOk(JSON.stringify(ring.jwks()).includes('"d"'), 'the JWKS has no private part')
  writeFileSync(join(dir, 'keys.json'), '{"keys": "nope"}')
  t.throws(() => new KeyRing(dir, 60), /not a valid key list/)
})

t.test('rotation: published at once, signs after the delay, the old key stays until its tokens expired', async t => {
  const dir = keysDir()
  const ring = new KeyRing(dir, 60)
  const first = ring.current().kid
  const t0 = Date.now()
  const { kid: second } = rotateKeys(dir, 60, 60, t0)
  t.ok(ring.reload(), 'the ring sees the change')
  t.equal(ring.current(t0).kid, first, 'the new key does not sign before it activates')
  t.same(ring.jwks(t0).keys.map(k => k.kid), [first, second], 'but it is published at once')
  const at = t0 + 61_000
  t.equal(ring.current(at).kid, second)
  t.same(ring.jwks(at).keys.map(k => k.kid), [first, second], 'the previous key is still published after the switch')
  const later = t0 + 60_000 + retentionSeconds(60) * 1000 + 1000
  t.same(ring.jwks(later).keys.map(k => k.kid), [second], 'and dropped once every token it signed has expired')
  const third = rotateKeys(dir, 60, 0, later)
  t.same(third.removed, [first], 'a later rotation deletes keys past their window')
  ring.reload()
  t.same(ring.list().map(k => k.kid), [second, third.kid])
  t.equal(ring.reload(), false, 'no change, no reload')
})

t.test('the minter: claims of DESIGN.md §8, signed with the current key', async t => {
  const ring = new KeyRing(keysDir(), 60)
  const minter = new TokenMinter(ring, { issuer: 'https://gw.test', ttlSeconds: 60 })
  const binding = messageBinding('POST', { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { text: 'hi' } } })
  const now = Date.now()
  const { token, claims, kid } = minter.mint({ agentId: 'bot-1', userId: 'alice' }, 'http://127.0.0.1:9001/mcp', binding, now)
  const jwk = ring.jwks().keys[0]!
  const verify = createVerifier({ key: createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString(), algorithms: ['EdDSA'], complete: true })
  const decoded = verify(token) as { header: Record<string, unknown>, payload: Record<string, unknown> }
  t.same(decoded.header, { alg: 'EdDSA', typ: 'JWT', kid })
  const iat = Math.floor(now / 1000)
  t.same(decoded.payload, {
    iss: 'https://gw.test', sub: 'bot-1', user_id: 'alice', aud: 'http://127.0.0.1:9001/mcp', scope: 'tool:echo',
    iat, nbf: iat, exp: iat + 60, jti: claims.jti, call_sha256: binding.callSha256
  })
  t.not(minter.mint({ agentId: 'bot-1', userId: null }, 'a', binding).claims.jti, claims.jti, 'each token has its own jti')
  t.notOk('user_id' in minter.mint({ agentId: 'bot-1', userId: null }, 'a', binding).claims, 'no user_id when the agent acts for nobody')
})
