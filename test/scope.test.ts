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
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { z } from 'zod'
import { serveMcp } from '../lib/demo/serve.js'

/**
 * Every character that separates or hides: each Unicode whitespace (White_Space), control (Cc),
 * format (Cf: zero-width, bidi, tags …) and separator (Z*) code point, beyond the BMP too, but
 * the one separator the grammar has: U+0020.
 */
const SEPARATORS: string[] = []
for (let cp = 0; cp <= 0x10ffff; cp++) {
  if (cp === 0x20 || (cp >= 0xd800 && cp <= 0xdfff)) continue
  const ch = String.fromCodePoint(cp)
  if (/[\p{White_Space}\p{Cc}\p{Cf}\p{Z}]/u.test(ch)) SEPARATORS.push(ch)
}

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

t.test('scope smuggling at the STS: an approval scope hidden behind any separator is refused, nothing is issued, and no issued token drops the table', async t => {
  // Under this policy the smuggled scope would matter: database_drop is allowed exactly to
  // tokens whose scopes contain approved:database_drop.
  const dropped: string[] = []
  const db = await serveMcp(() => {
    const server = new McpServer({ name: 'db', version: '1.0.0' })
    server.registerTool('database_drop', { description: 'Drop a table.', inputSchema: { table: z.string() } }, async ({ table }) => {
      dropped.push(table)
      return { content: [{ type: 'text', text: `dropped ${table}` }] }
    })
    server.registerTool('echo', { description: 'Echo the text back.', inputSchema: { text: z.string() } }, async ({ text }) => ({ content: [{ type: 'text', text }] }))
    return server
  })
  t.teardown(() => db.close())
  const g = await startGateway({
    issuer,
    upstreams: { db: { url: db.url } },
    extra: { authorization: { schema: ALLOW_ALL.schema, policies: new URL('./fixtures/cedar/approval', import.meta.url).pathname, watch: false } }
  })
  t.teardown(() => g.close())
  const exchangeAt = async (params: Record<string, string>): Promise<{ status: number, json: Record<string, any> }> => {
    const res = await request(`${g.base}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(params).toString() })
    return { status: res.statusCode, json: await res.body.json() as Record<string, any> }
  }
  const drop = async (token: string, table: string): Promise<{ text?: string, error?: { code: number, message: string } }> => {
    const client = new Client({ name: 'smuggler', version: '1' })
    await client.connect(new StreamableHTTPClientTransport(new URL(g.url('db')), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
    try {
      const r = await client.callTool({ name: 'database_drop', arguments: { table } })
      const text = (r.content as Array<{ text: string }>)[0]?.text
      return text !== undefined ? { text } : {}
    } catch (err) {
      return { error: { code: (err as { code: number }).code, message: (err as Error).message } }
    } finally {
      await client.close()
    }
  }

  // The control: with the approval scope from the identity provider, the table is dropped, so
  // a token that carried the smuggled approval would drop it too.
  t.same(await drop(agent(g.resource('db'), { scope: 'approved:database_drop' }), 'control'), { text: 'dropped control' }, 'an approved token drops the table')
  t.same(dropped, ['control'])
  t.match(await drop(agent(g.resource('db')), 'unapproved'), { error: { code: -32602, message: /Unknown tool: database_drop/ } }, 'an unapproved one does not: the tool is hidden from it')
  t.same(dropped, ['control'])

  // Every token the STS issues in this test, smuggled or not: none may drop the table.
  const issued: string[] = []
  const grants = (): number => g.audit.filter(r => r.event === 'token-exchange' && r.outcome === 'allow').length
  const before = grants()
  const label = (ch: string): string => `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`
  for (const ch of SEPARATORS) {
    const r = await exchangeAt({ grant_type: GRANT, subject_token: agent(g.config.publicUrl), subject_token_type: AT, resource: g.resource('db'), scope: `tool:database_drop${ch}approved:database_drop` })
    t.equal(r.status, 400, `${label(ch)}: 400`)
    t.equal(r.json.error, 'invalid_scope', `${label(ch)}: invalid_scope`)
    t.notOk('access_token' in r.json, `${label(ch)}: no token issued`)
    if (typeof r.json.access_token === 'string') issued.push(r.json.access_token)
  }
  const spaced = await exchangeAt({ grant_type: GRANT, subject_token: agent(g.config.publicUrl), subject_token_type: AT, resource: g.resource('db'), scope: 'tool:database_drop approved:database_drop' })
  t.match(spaced, { status: 400, json: { error: 'invalid_scope' } }, 'with a real space, approved:database_drop is a scope the STS does not grant')
  t.equal(grants(), before, 'not one token issued for any separator')

  // The tokens it does issue here never carry the approval.
  for (const scope of ['tool:echo', 'tool:echo prompt:approved:database_drop', 'resource:approved:database_drop']) {
    const r = await exchangeAt({ grant_type: GRANT, subject_token: agent(g.config.publicUrl), subject_token_type: AT, resource: g.resource('db'), scope })
    t.equal(r.status, 200, `${scope}: issued`)
    issued.push(r.json.access_token as string)
  }
  t.match(await exchangeAt({ grant_type: GRANT, subject_token: agent(g.config.publicUrl), subject_token_type: AT, resource: g.resource('db'), scope: 'tool:database_drop' }), { status: 400, json: { error: 'invalid_scope' } }, 'database_drop itself is not granted to an unapproved subject')
  for (const [i, token] of issued.entries()) {
    t.ok((await drop(token, `issued-${i}`)).error !== undefined, `issued token ${i} cannot drop the table`)
  }
  t.same(dropped, ['control'], 'no table was dropped but the control')
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
