/**
 * One scope grammar (RFC 6749 §3.3) everywhere: the STS's `scope` parameter, the agent token's
 * `scope`/`scp` claims, and so the Cedar entity and the list filter. Attacks: scope smuggling
 * with any whitespace or control character, and exchanging a token for another server's audience.
 */
import t from 'tap'
import { request } from 'undici'
import { parseScope, scopesOfClaims, ScopeSyntaxError } from '../lib/scope.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'

/** Every character outside the scope-token grammar that looks like a separator or is invisible. */
const SEPARATORS: string[] = [
  ...Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(i)), // C0 controls, TAB, LF, CR …
  '\x7f', ...Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(0x80 + i)), // DEL, C1 controls (NEL U+0085 …)
  '\u00a0', '\u1680', ...Array.from({ length: 11 }, (_, i) => String.fromCharCode(0x2000 + i)), // NBSP, Ogham, en quad … hair space
  '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\ufeff', '\u200b', '\u180e', '\u2060'
]

t.test('parseScope: the RFC 6749 §3.3 grammar, nothing else', async t => {
  t.same(parseScope('tool:echo'), ['tool:echo'])
  t.same(parseScope('tool:echo resource:file:///a?b=c#d prompt:p tool:echo'), ['tool:echo', 'resource:file:///a?b=c#d', 'prompt:p'], 'printable ASCII, duplicates once')
  t.same(parseScope('!#[]~'), ['!#[]~'], 'the edges of NQCHAR')
  for (const bad of ['', ' ', 'a  b', ' a', 'a ', 'a"b', 'a\\b', 'tool:é', 'tool:😀', 'x\ud800']) {
    t.throws(() => parseScope(bad), ScopeSyntaxError, JSON.stringify(bad))
  }
  for (const ch of SEPARATORS) {
    const hex = `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`
    t.throws(() => parseScope(`tool:database_drop${ch}approved:database_drop`), { message: new RegExp(`character ${hex.replace('+', '\\+')}`) }, `${hex} between two scopes is refused and named`)
    t.throws(() => parseScope(`tool:echo ${ch}`), ScopeSyntaxError, `${hex} as a token of its own`)
  }
})

t.test('scopesOfClaims: scope strings and scp arrays, each token checked', async t => {
  t.same(scopesOfClaims('a b', ['c', 'a']), ['a', 'b', 'c'])
  t.same(scopesOfClaims(undefined, 'x y'), ['x', 'y'], 'scp as a string')
  t.same(scopesOfClaims('', undefined), [])
  t.throws(() => scopesOfClaims('a\tb', undefined), { message: /"scope" claim: the character U\+0009/ })
  t.throws(() => scopesOfClaims(undefined, ['a b']), { message: /"scp" claim/ }, 'an scp entry with a space is not one scope')
  t.throws(() => scopesOfClaims(undefined, ['ok', 7]), { message: /not a string/ })
  t.throws(() => scopesOfClaims(['a'], undefined), { message: /"scope" claim must be a space-separated string/ })
})

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange'
const AT = 'urn:ietf:params:oauth:token-type:access_token'
const issuer = makeIssuer('ES256')
let up: RecordingUpstream
let gw: TestGateway

t.before(async () => {
  up = await startRecordingUpstream()
  gw = await startGateway({
    issuer,
    upstreams: { db: { url: up.url }, api: { url: up.url } },
    extra: { authorization: { schema: ALLOW_ALL.schema, policies: new URL('./fixtures/cedar/sts', import.meta.url).pathname, watch: false } }
  })
})
t.teardown(async () => { await gw.close(); await up.close() })

async function exchange (params: Record<string, string>): Promise<{ status: number, json: Record<string, any> }> {
  const res = await request(`${gw.base}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(params).toString() })
  return { status: res.statusCode, json: await res.body.json() as Record<string, any> }
}
const agent = (aud: string | string[], claims: Record<string, unknown> = {}) => issuer.sign({ aud, agentId: 'bot-1', userId: 'alice', roles: ['reader'], ...claims })

t.test('the STS refuses a scope with any character outside the grammar, and issues nothing', async t => {
  const issuedBefore = gw.audit.length
  for (const ch of SEPARATORS) {
    const r = await exchange({ grant_type: GRANT, subject_token: agent(gw.config.publicUrl), subject_token_type: AT, resource: gw.resource('db'), scope: `tool:echo${ch}approved:echo` })
    const hex = ch.codePointAt(0)!.toString(16)
    t.equal(r.status, 400, `U+${hex}: 400`)
    t.equal(r.json.error, 'invalid_scope', `U+${hex}: invalid_scope`)
    t.notOk('access_token' in r.json, `U+${hex}: no token issued`)
  }
  t.ok(gw.audit.length >= issuedBefore, 'the gateway kept answering')
  const ok = await exchange({ grant_type: GRANT, subject_token: agent(gw.config.publicUrl), subject_token_type: AT, resource: gw.resource('db'), scope: 'tool:echo' })
  t.equal(ok.status, 200, 'a well-formed scope is still exchanged')
})

t.test('identity refuses an agent token whose scope claim is outside the grammar (nothing forwarded)', async t => {
  const n = up.received.length
  const init = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } })
  for (const claims of [{ scope: 'tool:echo\tapproved:database_drop' }, { scope: 'a\u00a0b' }, { scp: ['tool:echo approved:x'] }, { scope: 'a\u2028b' }]) {
    const res = await request(gw.url('db'), { method: 'POST', headers: { authorization: `Bearer ${agent(gw.resource('db'), claims)}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: init })
    const body = await res.body.json() as { error: { message: string } }
    // The label is kept to printable ASCII: a raw U+2028 would split the TAP line.
    const label = JSON.stringify(claims).replace(/[^\x20-\x7e]/g, c => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
    t.equal(res.statusCode, 401, `${label}: 401`)
    t.match(body.error.message, /scope syntax/)
    t.match(String(res.headers['www-authenticate']), /invalid_token/)
  }
  t.equal(up.received.length, n, 'nothing forwarded')
})

t.test('audience escape: a token for one server is exchanged for that server only (DESIGN §8a)', async t => {
  const cases: Array<[string, string | string[], 'db' | 'api', number]> = [
    ['db-only → db', gw.resource('db'), 'db', 200],
    ['db-only → api', gw.resource('db'), 'api', 400],
    ['api-only → db', gw.resource('api'), 'db', 400],
    ['api-only → api', gw.resource('api'), 'api', 200],
    ['db and api → api', [gw.resource('db'), gw.resource('api')], 'api', 200],
    ['the gateway (publicUrl) → db', gw.config.publicUrl, 'db', 200],
    ['the gateway (publicUrl) → api', gw.config.publicUrl, 'api', 200],
    ['the token endpoint → api', `${gw.config.publicUrl}/oauth/token`, 'api', 200]
  ]
  for (const [what, aud, target, status] of cases) {
    const r = await exchange({ grant_type: GRANT, subject_token: agent(aud), subject_token_type: AT, resource: gw.resource(target), scope: 'tool:echo' })
    t.equal(r.status, status, `${what}: ${status}`)
    if (status === 400) {
      t.equal(r.json.error, 'invalid_target', `${what}: invalid_target`)
      t.notOk('access_token' in r.json, `${what}: nothing issued`)
    }
  }
  // A token the STS issued for db (audience db only) cannot be re-exchanged for api either.
  const first = await exchange({ grant_type: GRANT, subject_token: agent(gw.config.publicUrl), subject_token_type: AT, resource: gw.resource('db'), scope: 'tool:echo' })
  const second = await exchange({ grant_type: GRANT, subject_token: first.json.access_token, subject_token_type: AT, resource: gw.resource('api'), scope: 'tool:echo' })
  t.equal(second.status, 400)
  t.equal(second.json.error, 'invalid_target', 'an issued token stays on its resource')
})
