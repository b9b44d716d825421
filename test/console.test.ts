/**
 * The operator console over HTTP, from the attacker's side, and the admin listener it lives on:
 * health and metrics leave the public port; sign-in takes only operator tokens (not agent
 * tokens, forged, unsigned or expired ones) through a form protected against login CSRF;
 * sessions cannot be forged and end on sign-out; Cedar decides each page from the token's
 * roles; every action needs its form's CSRF token and the console's origin, and is audited.
 * The decision index is rebuilt from the audit file on start; the live view streams decisions.
 */
import { mkdtempSync, writeFileSync, cpSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import type { AddressInfo } from 'node:net'
import { PUBLIC_URL, REFERENCE, startGateway, type TestGateway } from './fixtures/gateway.js'
import { makeIssuer, unsignedToken } from './fixtures/keys.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { cookieOf, fetchPage, type Page } from './fixtures/pages.js'
import { validateConfig } from '../lib/config.js'
import { buildGateway } from '../lib/gateway.js'
import type { AuditRecord } from '../plugins/decorations.js'

const issuer = makeIssuer('EdDSA')
const CONSOLE_AUD = `${PUBLIC_URL}/console`
let up: RecordingUpstream
let gw: TestGateway
let admin: string
const auditDir = mkdtempSync(join(tmpdir(), 'mcpw-console-audit-'))
const auditFile = join(auditDir, 'audit.jsonl')

/** Records a previous run of the gateway wrote: the index is rebuilt from them. */
const EARLIER: AuditRecord[] = Array.from({ length: 60 }, (_, i) => ({
  time: new Date(Date.UTC(2026, 10, 20, 10, 0, i)).toISOString(),
  requestId: `earlier-${i}`,
  decisionId: `decision-earlier-${i}`,
  agentId: i % 2 === 0 ? 'history-bot' : 'other-bot',
  userId: 'hank',
  server: 'echo',
  httpMethod: 'POST',
  method: 'tools/call',
  rpcId: i,
  tool: i % 3 === 0 ? 'echo' : 'add',
  outcome: i % 4 === 0 ? 'deny' : 'allow',
  reason: 'earlier',
  policies: [],
  policyVersion: 'old',
  status: 200,
  durationMs: 1
}))

/** The reference policies and one forbid that names itself. */
const policiesDir = join(auditDir, 'policies')
cpSync(REFERENCE.policies, policiesDir, { recursive: true })
writeFileSync(join(policiesDir, '90-test.cedar'), `@id("no-echo-for-readonly")
@advice("readonly agents never echo")
forbid (principal in Mcp::Role::"readonly", action == Mcp::Action::"call_tool", resource == Mcp::Tool::"echo/echo");
`)

t.before(async () => {
  writeFileSync(auditFile, EARLIER.map(r => JSON.stringify(r)).join('\n') + '\n{"time": "cut off')
  up = await startRecordingUpstream()
  gw = await startGateway({
    issuer,
    upstreams: { echo: { url: up.url } },
    extra: {
      authorization: { ...REFERENCE, policies: policiesDir },
      admin: { listen: { host: '127.0.0.1', port: 0 } },
      console: { enabled: true },
      // The fixture collects the records in memory; the console reads this file on start.
      audit: { destination: auditFile }
    }
  })
  const a = gw.app.mcpWarden.admin.server.address() as AddressInfo
  admin = `http://127.0.0.1:${a.port}`
})
t.teardown(async () => { await gw.close(); await up.close(); rmSync(auditDir, { recursive: true, force: true }) })

const operatorToken = (claims: Record<string, unknown> = {}): string => issuer.sign({ aud: CONSOLE_AUD, sub: 'olivia', agentId: 'olivia', userId: 'olivia', roles: ['operator', 'approver'], ...claims })

async function page (method: 'GET' | 'POST', path: string, o: { cookie?: string, form?: Record<string, string>, origin?: string } = {}): Promise<Page> {
  return await fetchPage(admin, method, path, o)
}
const csrfOf = (html: string, nth = 0): string => [...html.matchAll(/name="csrf" value="([^"]+)"/g)][nth]![1]!

/** Signs in through the form; returns the session cookie, or the refusal page. */
async function signIn (token: string): Promise<{ cookie?: string, page: Page }> {
  const form = await page('GET', '/console/sign-in')
  const pre = cookieOf(form, 'mcpw_console_sign_in')!
  const done = await page('POST', '/console/sign-in', { cookie: pre, form: { csrf: csrfOf(form.text), token } })
  const cookie = cookieOf(done, 'mcpw_console')
  return { ...(cookie !== undefined ? { cookie } : {}), page: done }
}

/** One MCP call by an agent through the public listener (stateless JSON). */
async function call (agentId: string, roles: string[], tool: string, args: Record<string, unknown> = {}): Promise<unknown> {
  const token = issuer.sign({ aud: gw.resource('echo'), agentId, sub: agentId, userId: 'ursula', roles })
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
  const init = await request(gw.url('echo'), { method: 'POST', headers, body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }) })
  const session = init.headers['mcp-session-id'] as string
  await init.body.dump()
  const res = await request(gw.url('echo'), { method: 'POST', headers: { ...headers, 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: tool, arguments: args } }) })
  const text = await res.body.text()
  return text.startsWith('{') ? JSON.parse(text) : text
}

t.test('the admin listener serves health and metrics; the public listener answers 404 for them', async t => {
  for (const path of ['/healthz', '/readyz', '/metrics']) {
    t.equal((await request(`${admin}${path}`).then(async r => { await r.body.dump(); return r.statusCode })), 200, `admin ${path}`)
    t.equal((await request(`${gw.base}${path}`).then(async r => { await r.body.dump(); return r.statusCode })), 404, `public ${path}`)
  }
  t.equal((await request(`${gw.base}/console/sign-in`).then(async r => { await r.body.dump(); return r.statusCode })), 404, 'the console is not on the public listener')
})

t.test('a bad console config refuses to boot and names the field', async t => {
  const base = { identity: { issuer: issuer.issuer, publicKeyFile: writePem(auditDir) }, authorization: REFERENCE, upstreams: { echo: { url: 'http://127.0.0.1:1/mcp' } } }
  t.throws(() => validateConfig({ ...base, console: { enabled: true } }), /console\.enabled: .*admin\.listen/)
  t.throws(() => validateConfig({ ...base, admin: { listen: { port: 8080 } }, console: { enabled: true } }), /admin\.listen: must differ from listen/)
  t.throws(() => validateConfig({ ...base, admin: { listen: { port: 9090 } }, console: { enabled: true, url: 'http://console.test/x' } }), /console\.url: must be an origin only/)
  t.throws(() => validateConfig({ ...base, console: { enabeld: true } }), /console\.enabeld: unknown key/)
})

t.test('a policy set whose schema lacks the console actions refuses to boot', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-console-schema-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const schema = (await import('node:fs')).readFileSync(REFERENCE.schema, 'utf8')
  const cut = schema.slice(0, schema.indexOf('  // A person signed in to the operator console')) + '}\n'
  writeFileSync(join(dir, 'schema.cedarschema'), cut)
  cpSync(new URL('./fixtures/cedar/allow-all', import.meta.url).pathname, join(dir, 'policies'), { recursive: true })
  const config = validateConfig({
    identity: { issuer: issuer.issuer, publicKeyFile: gw.config.identity.publicKeyPem !== undefined ? writePem(dir) : '' },
    authorization: { schema: join(dir, 'schema.cedarschema'), policies: join(dir, 'policies'), watch: false },
    tokens: { keysDir: join(dir, 'keys') },
    toolScan: { pins: join(dir, 'pins.json') },
    upstreams: { echo: { url: up.url } },
    admin: { listen: { port: 0 } },
    console: { enabled: true }
  })
  await t.rejects(buildGateway(config, { logger: false }), /console\.enabled: the Cedar schema does not declare the console/)
})

function writePem (dir: string): string {
  const file = join(dir, 'issuer.pem')
  writeFileSync(file, gw.config.identity.publicKeyPem!)
  return file
}

t.test('sign-in refuses every token that is not an operator token of the identity provider', async t => {
  const other = makeIssuer('EdDSA', issuer.issuer)
  const cases: Array<[string, string, RegExp]> = [
    ['an agent token for an MCP route', issuer.sign({ aud: gw.resource('echo'), sub: 'echo-bot', roles: ['operator'] }), /not for the console/],
    ['a token for the console and an MCP route', issuer.sign({ aud: [CONSOLE_AUD, gw.resource('echo')], sub: 'olivia', roles: ['operator'] }), /also an agent token/],
    ['an approver token', issuer.sign({ aud: `${PUBLIC_URL}/approvals`, sub: 'olivia', roles: ['operator'] }), /not for the console/],
    ['alg none', unsignedToken({ iss: issuer.issuer, aud: CONSOLE_AUD, sub: 'olivia', roles: ['operator'], exp: Math.floor(Date.now() / 1000) + 600 }), /Sign-in refused/],
    ['another key', other.sign({ aud: CONSOLE_AUD, sub: 'olivia', roles: ['operator'] }), /Sign-in refused/],
    ['expired', issuer.sign({ aud: CONSOLE_AUD, sub: 'olivia', roles: ['operator'], iat: Math.floor(Date.now() / 1000) - 7200, exp: Math.floor(Date.now() / 1000) - 3600 }), /Sign-in refused/],
    ['nothing', '', /no token was given/]
  ]
  for (const [what, token, why] of cases) {
    const { cookie, page: p } = await signIn(token)
    t.equal(p.status, 401, what)
    t.equal(cookie, undefined, `${what}: no session`)
    t.match(p.text, why, what)
  }
})

t.test('login CSRF: a sign-in post without the form\'s token or from another origin starts no session', async t => {
  const form = await page('GET', '/console/sign-in')
  const pre = cookieOf(form, 'mcpw_console_sign_in')!
  const noCsrf = await page('POST', '/console/sign-in', { cookie: pre, form: { token: operatorToken() } })
  t.equal(noCsrf.status, 403)
  t.equal(cookieOf(noCsrf, 'mcpw_console'), undefined)
  const foreign = await page('POST', '/console/sign-in', { cookie: pre, origin: 'https://evil.example', form: { csrf: csrfOf(form.text), token: operatorToken() } })
  t.equal(foreign.status, 403)
  t.equal(cookieOf(foreign, 'mcpw_console'), undefined)
})

t.test('sessions: a forged or edited cookie is no session; sign-out ends a copied one too', async t => {
  for (const forged of ['mcpw_console=x.y', 'mcpw_console=' + Buffer.from(JSON.stringify({ v: { userId: 'mallory', roles: ['operator'], nonce: 'n' }, exp: 2e9 })).toString('base64url') + '.AAAA']) {
    const p = await page('GET', '/console/decisions', { cookie: forged })
    t.equal(p.status, 303, 'sent to sign in')
    t.equal(p.headers.location, '/console/sign-in')
  }
  const cookie = (await signIn(operatorToken())).cookie!
  t.ok(cookie)
  const [name, value] = cookie.split('=') as [string, string]
  const [payload, mac] = value.split('.') as [string, string]
  const edited = JSON.parse(Buffer.from(payload, 'base64url').toString()) as { v: { roles: string[] } }
  edited.v.roles = ['operator', 'approver', 'viewer', 'admin']
  t.equal((await page('GET', '/console/decisions', { cookie: `${name}=${Buffer.from(JSON.stringify(edited)).toString('base64url')}.${mac}` })).status, 303, 'edited payload refused')
  const ok = await page('GET', '/console/decisions', { cookie })
  t.equal(ok.status, 200)
  const out = await page('POST', '/console/sign-out', { cookie, form: { csrf: csrfOf(ok.text) } })
  t.equal(out.status, 303)
  t.equal((await page('GET', '/console/decisions', { cookie })).status, 303, 'the copied cookie is signed out too')
})

t.test('Cedar decides each page from the token\'s roles', async t => {
  const viewer = (await signIn(operatorToken({ sub: 'victor', agentId: 'victor', userId: 'victor', roles: ['viewer'] }))).cookie!
  const nobody = (await signIn(operatorToken({ sub: 'nora', agentId: 'nora', userId: 'nora', roles: [] }))).cookie!
  const operator = (await signIn(operatorToken())).cookie!
  t.ok(viewer !== undefined && nobody !== undefined && operator !== undefined, 'all three sign in: the token is theirs, the roles decide')
  const v = await page('GET', '/console/decisions', { cookie: viewer })
  t.equal(v.status, 200)
  t.notMatch(v.text, /href="\/console\/approvals"/, 'no approvals link for a viewer')
  t.equal((await page('GET', '/console/approvals', { cookie: viewer })).status, 403)
  for (const path of ['/console/decisions', '/console/quarantine', '/console/playground', '/console/live']) {
    const p = await page('GET', path, { cookie: nobody })
    t.equal(p.status, 403, `no roles: ${path}`)
    t.match(p.text, /no policy lets nora view the console/)
  }
  const o = await page('GET', '/console/decisions', { cookie: operator })
  t.match(o.text, /href="\/console\/approvals"/)
  t.equal((await page('GET', '/console/approvals', { cookie: operator })).status, 200)
  // A viewer's form post to an operator action: refused by Cedar and audited.
  const q = await page('GET', '/console/playground', { cookie: viewer })
  t.notMatch(q.text, /policies\/reload/, 'no reload button for a viewer')
  const before = gw.audit.length
  const reload = await page('POST', '/console/policies/reload', { cookie: viewer, form: { csrf: 'x' } })
  t.equal(reload.status, 403, 'no CSRF token of the reload form: refused')
  t.equal(gw.audit.length, before)
})

t.test('every action needs its own form\'s CSRF token and the console\'s origin', async t => {
  const operator = (await signIn(operatorToken())).cookie!
  const play = await page('GET', '/console/playground', { cookie: operator })
  const playCsrf = csrfOf(play.text, 1)
  const reloadCsrf = csrfOf(play.text, 2)
  const versionBefore = gw.app.mcpWarden.cedar.version
  const audited = (): AuditRecord[] => gw.audit.filter(r => r.event === 'console' && r.method === 'console/policies-reload')
  t.equal((await page('POST', '/console/policies/reload', { cookie: operator, form: { csrf: playCsrf } })).status, 403, 'the playground\'s token does not reload')
  t.equal((await page('POST', '/console/policies/reload', { cookie: operator, origin: 'https://evil.example', form: { csrf: reloadCsrf } })).status, 403, 'another origin')
  t.equal(audited().length, 0, 'nothing reloaded, nothing to audit')
  const ok = await page('POST', '/console/policies/reload', { cookie: operator, origin: admin, form: { csrf: reloadCsrf } })
  t.equal(ok.status, 200)
  t.match(ok.text, /Policies reloaded: version/)
  t.equal(gw.app.mcpWarden.cedar.version, versionBefore, 'the same files: the same version')
  t.match(audited()[0], { event: 'console', operator: 'olivia', outcome: 'allow', policies: ['console-operator'] })
  const noCsrf = await page('POST', '/console/quarantine', { cookie: operator, form: { server: 'echo', tool: 'echo', hash: 'x', action: 'approve' } })
  t.equal(noCsrf.status, 403)
})

t.test('the decision log: rebuilt from the audit file, searched, paged, one decision with its policies', async t => {
  const operator = (await signIn(operatorToken())).cookie!
  const all = await page('GET', '/console/decisions?agent=history-bot', { cookie: operator })
  t.equal(all.status, 200)
  const rows = (html: string): string[] => [...html.matchAll(/href="\/console\/decisions\/([^"]+)"/g)].map(m => decodeURIComponent(m[1]!))
  t.equal(rows(all.text).length, 30, 'the 30 records of history-bot from the file (the cut-off line skipped)')
  t.equal(rows(all.text)[0], 'decision-earlier-58', 'newest first')
  const denied = await page('GET', '/console/decisions?agent=history-bot&outcome=deny&tool=echo', { cookie: operator })
  t.same(rows(denied.text), ['decision-earlier-48', 'decision-earlier-36', 'decision-earlier-24', 'decision-earlier-12', 'decision-earlier-0'])
  const ranged = await page('GET', `/console/decisions?from=${encodeURIComponent('2026-11-20T10:00:50Z')}&to=${encodeURIComponent('2026-11-20T10:00:55Z')}`, { cookie: operator })
  t.same(rows(ranged.text), ['decision-earlier-54', 'decision-earlier-53', 'decision-earlier-52', 'decision-earlier-51', 'decision-earlier-50'])
  const bad = await page('GET', '/console/decisions?from=yesterday', { cookie: operator })
  t.equal(bad.status, 400)
  t.match(bad.text, /from: not an ISO time/)
  // Pages of 50: the older page continues where the first ended.
  const first = await page('GET', '/console/decisions?user=hank', { cookie: operator })
  const next = /href="(\/console\/decisions\?[^"]*cursor=[^"]+)"/.exec(first.text)![1]!.replace(/&amp;/g, '&')
  const second = await page('GET', next, { cookie: operator })
  t.equal(rows(first.text).length, 50)
  t.equal(rows(second.text).length, 10)
  t.equal(new Set([...rows(first.text), ...rows(second.text)]).size, 60, 'no record twice, none missing')

  // A live denial (a forbid of this test's policy set): its decision page names the deciding
  // policy, with its text and advice.
  const answer = await call('reader-bot', ['readonly'], 'echo', { text: 'hi' }) as { error: { code: number } }
  t.equal(answer.error.code, -32602, 'a tool the agent may not call is hidden from it')
  const record = gw.audit.findLast(r => r.agentId === 'reader-bot' && r.method === 'tools/call')!
  t.ok(record.policies.includes('no-echo-for-readonly'), 'the forbid decided it')
  const detail = await page('GET', `/console/decisions/${record.decisionId!}`, { cookie: operator })
  t.equal(detail.status, 200)
  t.match(detail.text, 'id="policy-no-echo-for-readonly"')
  t.match(detail.text, 'readonly agents never echo')
  t.match(detail.text, 'resource == Mcp::Tool::&quot;echo/echo&quot;')
  t.match(detail.text, /reader-bot/)
  t.equal((await page('GET', '/console/decisions/no-such-id', { cookie: operator })).status, 404)
})

t.test('what agents send is escaped on every page', async t => {
  const operator = (await signIn(operatorToken())).cookie!
  const evil = '<img src=x onerror=alert(1)>'
  await call(evil, ['readonly'], '<script>alert(2)</script>')
  const log = await page('GET', `/console/decisions?agent=${encodeURIComponent(evil)}`, { cookie: operator })
  t.match(log.text, /&lt;img src=x onerror=alert\(1\)&gt;/)
  t.notMatch(log.text, /<img src=x/)
  t.notMatch(log.text, /<script>alert/)
  const agent = await page('GET', `/console/agents/${encodeURIComponent(evil)}`, { cookie: operator })
  t.equal(agent.status, 200)
  t.notMatch(agent.text, /<img src=x/)
  t.match(String(agent.headers['content-security-policy']), /script-src 'self'/)
  t.notMatch(String(agent.headers['content-security-policy']), /unsafe-inline/)
})

t.test('the playground: bad claims, arguments and policy text get a message; a valid edit is decided beside the live set', async t => {
  const operator = (await signIn(operatorToken())).cookie!
  const form = await page('GET', '/console/playground', { cookie: operator })
  const csrf = csrfOf(form.text, 1)
  const post = async (fields: Record<string, string>): Promise<Page> => await page('POST', '/console/playground', { cookie: operator, form: { csrf, server: 'echo', tool: 'echo', args: '', at: '', claims: '', agent: '', policies: '', ...fields } })
  t.match((await post({})).text, /Pick an agent seen recently or type its token claims/)
  t.match((await post({ claims: '[1]' })).text, /claims are not usable: the claims must be a JSON object/)
  t.match((await post({ claims: '{"sub":"x"}', args: 'nope' })).text, /arguments must be a JSON object/)
  t.match((await post({ claims: '{"sub":"x"}', at: 'noon' })).text, /At must be an ISO date-time/)
  const invalid = await post({ claims: '{"sub":"x"}', policies: 'permit (principal, action == Mcp::Action::"fly", resource);' })
  t.match(invalid.text, /does not validate against the schema/)
  const edited = await post({ claims: '{"sub":"x","roles":["nobody"]}', policies: '@id("everything") permit (principal, action, resource);' })
  const outcomes = [...edited.text.matchAll(/<h2>(Live policy set|Edited policy text \(not saved\)) <span class="badge (\w+)">/g)].map(m => [m[1], m[2]])
  t.same(outcomes, [['Live policy set', 'deny'], ['Edited policy text (not saved)', 'allow']])
  t.match(edited.text, /determining policies: everything/)
})

t.test('the live view streams each new decision to signed-in people only, filtered', async t => {
  const operator = (await signIn(operatorToken())).cookie!
  const anonymous = await request(`${admin}/console/live/events`)
  t.equal(anonymous.statusCode, 403)
  await anonymous.body.dump()
  const controller = new AbortController()
  const res = await request(`${admin}/console/live/events?agent=live-bot`, { headers: { cookie: operator }, signal: controller.signal })
  t.equal(res.statusCode, 200)
  t.match(String(res.headers['content-type']), /^text\/event-stream/)
  let seen = ''
  const got = new Promise<AuditRecord>((resolve) => {
    res.body.on('data', (chunk: Buffer) => {
      seen += chunk.toString()
      const m = /event: decision\ndata: (.*)\n\n/.exec(seen)
      if (m !== null) resolve(JSON.parse(m[1]!) as AuditRecord)
    })
  })
  await call('other-live-bot', ['readonly'], 'echo')
  await call('live-bot', ['readonly'], 'database_query')
  const record = await got
  t.equal(record.agentId, 'live-bot', 'only the filtered agent\'s decisions')
  t.notMatch(seen, /other-live-bot/)
  controller.abort()
  res.body.on('error', () => {})
})

t.test('the admin listener answers only loopback Host names (DNS rebinding)', async t => {
  for (const [host, status] of [['evil.example', 403], ['evil.example:80', 403], [`localhost:${new URL(admin).port}`, 200], [new URL(admin).host, 200]] as const) {
    const res = await request(`${admin}/healthz`, { headers: { host } })
    await res.body.dump()
    t.equal(res.statusCode, status, host)
  }
})

t.test('playground: policy text nested too deep is refused before Cedar, and agents\' calls go on', async t => {
  const { engineHealth } = await import('../lib/cedar/engine.js')
  const operator = (await signIn(operatorToken())).cookie!
  const csrf = csrfOf((await page('GET', '/console/playground', { cookie: operator })).text, 1)
  const before = engineHealth().replacements
  for (const text of [
    `permit (principal, action, resource) when { ${'{a:'.repeat(5000)}1${'}'.repeat(5000)} == {} };`,
    `permit (principal, action, resource) when { ${Array(3000).fill('true').join(' && ')} };`
  ]) {
    const p = await page('POST', '/console/playground', { cookie: operator, form: { csrf, server: 'echo', tool: 'echo', args: '', at: '', claims: '{"sub":"x"}', agent: '', policies: text } })
    t.equal(p.status, 200)
    t.match(p.text, /does not validate against the schema: .*(brackets nested deeper than 32|more than 500 operators in one policy)/)
  }
  t.equal(engineHealth().replacements, before, 'the Cedar instance was never broken')
  t.equal(engineHealth().healthy, true)
  const answer = await call('lister-bot', ['readonly'], 'database_query') as { error?: { message: string } }
  t.notMatch(answer.error?.message ?? '', /policy engine error/, 'the next decision is Cedar\'s own')
})

t.test('sign-in and sign-out are audited; bad search values are refused', async t => {
  const refusedBefore = gw.audit.filter(r => r.method === 'console/sign-in' && r.outcome === 'deny').length
  await signIn('not-a-token')
  t.equal(gw.audit.filter(r => r.method === 'console/sign-in' && r.outcome === 'deny').length, refusedBefore + 1)
  const operator = (await signIn(operatorToken({ sub: 'audited', userId: 'audited' }))).cookie!
  t.match(gw.audit.findLast(r => r.method === 'console/sign-in'), { outcome: 'allow', operator: 'audited', event: 'console' })
  for (const [q, why] of [['outcome=maybe', /outcome: must be allow, deny or error/], ['from=1', /from: not an ISO time/], ['to=2026-02-30T25:00', /to: not an ISO time/]] as const) {
    const p = await page('GET', `/console/decisions?${q}`, { cookie: operator })
    t.equal(p.status, 400, q)
    t.match(p.text, why)
  }
  const ok = await page('GET', '/console/decisions', { cookie: operator })
  await page('POST', '/console/sign-out', { cookie: operator, form: { csrf: csrfOf(ok.text) } })
  t.match(gw.audit.findLast(r => r.method === 'console/sign-out'), { outcome: 'allow', operator: 'audited' })
})

t.test('live views: a few per person, and each ends when its session is signed out', async t => {
  const operator = (await signIn(operatorToken({ sub: 'streamer', userId: 'streamer' }))).cookie!
  const controllers: AbortController[] = []
  t.teardown(() => { for (const c of controllers) c.abort() })
  const open = async (): Promise<Awaited<ReturnType<typeof request>>> => {
    const c = new AbortController()
    controllers.push(c)
    const res = await request(`${admin}/console/live/events`, { headers: { cookie: operator }, signal: c.signal })
    res.body.on('error', () => {})
    return res
  }
  const streams = [await open(), await open(), await open(), await open()]
  t.same(streams.map(s => s.statusCode), [200, 200, 200, 200])
  const fifth = await open()
  t.equal(fifth.statusCode, 429, 'a fifth live view of one person is refused')
  const ended = new Promise<void>(resolve => { streams[0]!.body.on('end', resolve).on('close', resolve).resume() })
  const ok = await page('GET', '/console/decisions', { cookie: operator })
  await page('POST', '/console/sign-out', { cookie: operator, form: { csrf: csrfOf(ok.text) } })
  const t0 = Date.now()
  await ended
  t.ok(Date.now() - t0 < 8000, 'the open stream ended within its next session check')
})
