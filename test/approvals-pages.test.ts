/**
 * The approval pages over HTTP, from the attacker's side: sign-in with an approver token through
 * the form (login CSRF), session cookies that cannot be forged or reused for another purpose,
 * CSRF tokens bound to one approval, cross-origin posts, open redirects, the OIDC callback's
 * state, what unauthenticated clients get, and the escaping of what agents send.
 */
import t from 'tap'
import { request } from 'undici'
import { PUBLIC_URL, startGateway, type TestGateway } from './fixtures/gateway.js'
import { makeIssuer } from './fixtures/keys.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { startOidcProvider, OIDC_SCOPE, type OidcProviderFixture } from './fixtures/oidc-signin.js'
import { cookieOf, fetchPage, type Page } from './fixtures/pages.js'

const POLICIES = { schema: new URL('../cedar/schema.cedarschema', import.meta.url).pathname, policies: new URL('./fixtures/cedar/needs-approval', import.meta.url).pathname, watch: false }
const issuer = makeIssuer('EdDSA')
let up: RecordingUpstream
let oidc: OidcProviderFixture
let gw: TestGateway
process.env.MCPW_TEST_OIDC_SECRET = 'set-below'

t.before(async () => {
  up = await startRecordingUpstream()
  oidc = await startOidcProvider({ redirectUris: [`${PUBLIC_URL}/approvals/callback`], users: [{ sub: 'grace-sub', userId: 'grace', roles: ['approver'], department: 'ops' }] })
  process.env.MCPW_TEST_OIDC_SECRET = oidc.clientSecret
  gw = await startGateway({
    issuer,
    upstreams: { echo: { url: up.url } },
    extra: { authorization: POLICIES, approvals: { signIn: { issuer: oidc.issuer, clientId: oidc.clientId, clientSecret: 'env:MCPW_TEST_OIDC_SECRET', scopes: ['openid', OIDC_SCOPE] } } }
  })
})
t.teardown(async () => { await gw.close(); await up.close(); await oidc.close() })

const agentToken = (): string => issuer.sign({ aud: gw.resource('echo'), agentId: 'echo-bot', sub: 'echo-bot', userId: 'ursula' })
const approverToken = (claims: Record<string, unknown> = {}): string => issuer.sign({ aud: `${PUBLIC_URL}/approvals`, sub: 'grace', agentId: 'grace', userId: 'grace', roles: ['approver'], ...claims })

/** Asks for an approval of echo(text) with a stateless JSON request; returns the approval id. */
async function ask (text: string): Promise<string> {
  const init = await request(gw.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${agentToken()}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }) })
  const session = init.headers['mcp-session-id'] as string
  await init.body.dump()
  const res = await request(gw.url('echo'), { method: 'POST', headers: { authorization: `Bearer ${agentToken()}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { text } } }) })
  const body = await res.body.json() as { error: { data: { approvalId: string } } }
  return body.error.data.approvalId
}

async function page (method: 'GET' | 'POST', path: string, o: { cookie?: string, form?: Record<string, string>, origin?: string } = {}): Promise<Page> {
  return await fetchPage(gw.base, method, path, o)
}
/** The CSRF token of the first form in `html` (or of the form posting to `action`). */
const csrfOf = (html: string, action?: string): string => {
  const from = action === undefined ? 0 : html.indexOf(`action="${action}"`)
  return /name="csrf" value="([^"]+)"/.exec(html.slice(from))![1]!
}

async function signIn (token: string, next = '/approvals'): Promise<{ cookie: string, result: Page }> {
  const form = await page('GET', `/approvals/sign-in?next=${encodeURIComponent(next)}`)
  const pre = cookieOf(form, 'mcpw_sign_in')!
  const result = await page('POST', '/approvals/sign-in', { cookie: pre, origin: new URL(PUBLIC_URL).origin, form: { token, csrf: csrfOf(form.text), next } })
  return { cookie: cookieOf(result, 'mcpw_approver') ?? '', result }
}

t.test('signed out: pages redirect to sign-in, the API answers 401, the sign-in page is locked down', async t => {
  const id = await ask('signed out')
  const p = await page('GET', `/approvals/${id}`)
  t.equal(p.status, 303)
  t.equal(p.headers.location, `/approvals/sign-in?next=%2Fapprovals%2F${id}`)
  const api = await request(`${gw.base}/approvals`, { headers: { accept: 'application/json' } })
  t.equal(api.statusCode, 401)
  t.match(await api.body.json(), { error: 'unauthorized' })
  const form = await page('GET', '/approvals/sign-in')
  t.equal(form.status, 200)
  t.match(form.headers['content-security-policy'], /default-src 'none'/)
  t.match(form.headers['content-security-policy'], /form-action 'self'/)
  t.equal(form.headers['x-frame-options'], 'DENY')
  t.equal(form.headers['cache-control'], 'no-store')
  t.match(form.text, /Sign in with your identity provider/)
  t.match(cookieOf(form, 'mcpw_sign_in'), /^mcpw_sign_in=/)
  t.match(form.cookies.join('\n'), /HttpOnly; SameSite=Lax/)
})

t.test('token sign-in: login CSRF, wrong tokens, open redirects; then the session cookie works and cannot be forged', async t => {
  const form = await page('GET', '/approvals/sign-in')
  const pre = cookieOf(form, 'mcpw_sign_in')!
  const noCsrf = await page('POST', '/approvals/sign-in', { cookie: pre, form: { token: approverToken() } })
  t.equal(noCsrf.status, 403, 'no CSRF token: refused')
  const noCookie = await page('POST', '/approvals/sign-in', { form: { token: approverToken(), csrf: csrfOf(form.text) } })
  t.equal(noCookie.status, 403, 'a CSRF token without its cookie (another browser): refused')
  const foreign = await page('POST', '/approvals/sign-in', { cookie: pre, origin: 'https://evil.example', form: { token: approverToken(), csrf: csrfOf(form.text) } })
  t.equal(foreign.status, 403, 'posted from another origin: refused')
  for (const [what, token] of [
    ['an agent token (another audience)', agentToken()],
    ['an expired approver token', approverToken({ exp: Math.floor(Date.now() / 1000) - 60 })],
    ['a forged signature', approverToken().slice(0, -6) + 'AAAAAA'],
    ['alg none', `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ iss: issuer.issuer, aud: `${PUBLIC_URL}/approvals`, sub: 'grace', exp: 9999999999 })).toString('base64url')}.`]
  ] as const) {
    const r = await signIn(token)
    t.equal(r.result.status, 401, `${what}: refused`)
    t.equal(r.cookie, '', `${what}: no session`)
    t.match(r.result.text, /Sign-in refused/)
  }
  const evil = await signIn(approverToken(), '//evil.example/approvals')
  t.equal(evil.result.status, 303)
  t.equal(evil.result.headers.location, '/approvals', 'next outside the approval pages: back to the list, never elsewhere')

  const { cookie, result } = await signIn(approverToken(), '/approvals')
  t.equal(result.status, 303)
  t.match(cookie, /^mcpw_approver=/)
  const list = await page('GET', '/approvals', { cookie })
  t.equal(list.status, 200)
  t.match(list.text, /Signed in as <strong>grace<\/strong>/)

  const [name, value] = [cookie.slice(0, cookie.indexOf('=')), cookie.slice(cookie.indexOf('=') + 1)]
  const [payload, mac] = value.split('.') as [string, string]
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
  claims.v.roles = ['approver', 'super_admin']
  claims.v.userId = 'someone-else'
  const forged = `${name}=${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${mac}`
  t.equal((await page('GET', '/approvals', { cookie: forged })).status, 303, 'an edited session cookie is no session')
  const preAsSession = `mcpw_approver=${pre.slice(pre.indexOf('=') + 1)}`
  t.equal((await page('GET', '/approvals', { cookie: preAsSession })).status, 303, 'a sign-in cookie is not a session cookie (sealed for another purpose)')
})

t.test('approve through the page: the CSRF token is bound to one approval, and what the agent sent is escaped', async t => {
  const hostile = '<script>alert(1)</script>"\'&<img src=x onerror=alert(2)>\u202Epmt_sgol\u200b'
  const first = await ask(hostile)
  const second = await ask('another call')
  const { cookie } = await signIn(approverToken())
  const view = await page('GET', `/approvals/${first}`, { cookie })
  t.equal(view.status, 200)
  t.notOk(view.text.includes('<script>alert(1)'), 'no script from the arguments in the page')
  t.notOk(view.text.includes('<img src=x'), 'no element from the arguments in the page')
  t.match(view.text, /&lt;script&gt;alert\(1\)&lt;\/script&gt;/, 'the arguments are shown as text')
  t.notOk(/[\u202E\u200B]/.test(view.text), 'no bidi override or zero-width character reaches the page')
  t.match(view.text, /\\u\{202E\}pmt_sgol\\u\{200B\}/, 'they are shown as marks instead')
  const csrfFirst = csrfOf(view.text, `/approvals/${first}`)
  const origin = new URL(PUBLIC_URL).origin

  const crossed = await page('POST', `/approvals/${second}`, { cookie, origin, form: { decision: 'approve', csrf: csrfFirst } })
  t.equal(crossed.status, 403, 'the CSRF token of one approval does not decide another')
  const foreign = await page('POST', `/approvals/${first}`, { cookie, origin: 'https://evil.example', form: { decision: 'approve', csrf: csrfFirst } })
  t.equal(foreign.status, 403, 'a post from another origin decides nothing')
  const nothing = await page('POST', `/approvals/${first}`, { cookie, origin, form: { csrf: csrfFirst } })
  t.equal(nothing.status, 400, 'no decision: nothing decided')
  t.equal(up.methods().filter(m => m === 'tools/call').length, 0, 'nothing forwarded')

  const done = await page('POST', `/approvals/${first}`, { cookie, origin, form: { decision: 'approve', reason: '<b>ok</b>', csrf: csrfFirst } })
  t.equal(done.status, 200)
  t.match(done.text, /You approved the call/)
  t.ok(gw.audit.some(r => r.event === 'approval' && r.approvalId === first && r.outcome === 'allow' && r.reason.includes('<b>ok</b>')), 'audited, with the reason as given')
  const again = await page('POST', `/approvals/${first}`, { cookie, origin, form: { decision: 'deny', csrf: csrfFirst } })
  t.equal(again.status, 404, 'decided once')
  t.match(again.text, /No approval is waiting under this address/)

  const out = await page('POST', '/approvals/sign-out', { cookie, origin, form: { csrf: csrfOf(view.text, '/approvals/sign-out') } })
  t.equal(out.status, 303)
  t.match(out.cookies.join('\n'), /mcpw_approver=; .*Max-Age=0/)
  t.equal((await page('GET', '/approvals', { cookie })).status, 303, 'a copy of the signed-out cookie is no session')
})

t.test('OIDC sign-in against a real provider; a callback whose state is not this browser\'s is refused', async t => {
  const id = await ask('oidc')
  const start = await page('GET', `/approvals/sign-in?next=${encodeURIComponent(`/approvals/${id}`)}&oidc=1`)
  t.equal(start.status, 303)
  const authorize = new URL(start.headers.location as string)
  t.equal(authorize.origin, new URL(oidc.issuer).origin)
  t.equal(authorize.searchParams.get('code_challenge_method'), 'S256')
  t.equal(authorize.searchParams.get('redirect_uri'), `${PUBLIC_URL}/approvals/callback`)
  const stateCookie = cookieOf(start, 'mcpw_sign_in')!

  // The provider signs grace in and sends the browser back with a code.
  const { callbackUrl } = await oidc.signIn(start.headers.location as string, { sub: 'grace-sub', userId: 'grace', roles: ['approver'], department: 'ops' }, `${PUBLIC_URL}/approvals/callback`)
  const callback = new URL(callbackUrl)
  const wrongState = await page('GET', `/approvals/callback?code=${callback.searchParams.get('code')!}&state=not-the-state`, { cookie: stateCookie })
  t.equal(wrongState.status, 400, 'a state that is not this sign-in\'s: refused')
  const noCookie = await page('GET', `${callback.pathname}${callback.search}`)
  t.equal(noCookie.status, 400, 'a callback in another browser (no sign-in cookie): refused')
  const ok = await page('GET', `${callback.pathname}${callback.search}`, { cookie: stateCookie })
  t.equal(ok.status, 303)
  t.equal(ok.headers.location, `/approvals/${id}`)
  const session = cookieOf(ok, 'mcpw_approver')!
  const view = await page('GET', `/approvals/${id}`, { cookie: session })
  t.equal(view.status, 200)
  t.match(view.text, /Signed in as <strong>grace<\/strong>/)
  const replay = await page('GET', `${callback.pathname}${callback.search}`, { cookie: stateCookie })
  t.not(replay.status, 303, 'the code is single use')
})
