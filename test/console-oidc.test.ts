/**
 * Console sign-in with OIDC against a real provider (oidc-provider): authorization code with
 * PKCE to the console's own callback on the admin listener; the roles of the ID token open the
 * pages Cedar allows; a callback without this browser's sign-in cookie or with another state is
 * refused, and a code is used once.
 */
import t from 'tap'
import { request } from 'undici'
import { freePort } from '../lib/free-port.js'
import { REFERENCE, startGateway, type TestGateway } from './fixtures/gateway.js'
import { makeIssuer } from './fixtures/keys.js'
import { startRecordingUpstream, type RecordingUpstream } from './fixtures/upstream.js'
import { startOidcProvider, OIDC_SCOPE, type OidcProviderFixture } from './fixtures/oidc-signin.js'

const issuer = makeIssuer('EdDSA')
let up: RecordingUpstream
let oidc: OidcProviderFixture
let gw: TestGateway
let admin: string
const OLIVIA = { sub: 'olivia-sub', userId: 'olivia', roles: ['viewer'], department: 'ops' }
process.env.MCPW_TEST_CONSOLE_OIDC_SECRET = 'set-below'

t.before(async () => {
  up = await startRecordingUpstream()
  // The console's callback names its port: the admin listener takes one chosen now.
  const port = await freePort('127.0.0.1')
  admin = `http://127.0.0.1:${port}`
  oidc = await startOidcProvider({ redirectUris: [`${admin}/console/callback`], users: [OLIVIA] })
  process.env.MCPW_TEST_CONSOLE_OIDC_SECRET = oidc.clientSecret
  gw = await startGateway({
    issuer,
    upstreams: { echo: { url: up.url } },
    extra: {
      authorization: REFERENCE,
      admin: { listen: { host: '127.0.0.1', port } },
      console: { enabled: true },
      approvals: { signIn: { issuer: oidc.issuer, clientId: oidc.clientId, clientSecret: 'env:MCPW_TEST_CONSOLE_OIDC_SECRET', scopes: ['openid', OIDC_SCOPE] } }
    }
  })
})
t.teardown(async () => { await gw.close(); await up.close(); await oidc.close() })

async function get (path: string, cookie?: string): Promise<{ status: number, location?: string, cookies: string[], text: string }> {
  const res = await request(`${admin}${path}`, { headers: cookie !== undefined ? { cookie } : {} })
  const set = res.headers['set-cookie']
  return { status: res.statusCode, ...(typeof res.headers.location === 'string' ? { location: res.headers.location } : {}), cookies: set === undefined ? [] : Array.isArray(set) ? set : [set], text: await res.body.text() }
}
const cookieOf = (cookies: string[], name: string): string | undefined => cookies.map(c => c.split(';', 1)[0]!).find(c => c.startsWith(`${name}=`) && c.length > name.length + 1)

t.test('OIDC sign-in opens the console with the ID token\'s roles', async t => {
  const form = await get('/console/sign-in')
  t.match(form.text, 'href="/console/sign-in?oidc=1"', 'the sign-in page offers the identity provider')
  const start = await get('/console/sign-in?oidc=1')
  t.equal(start.status, 303)
  const authorize = new URL(start.location!)
  t.equal(authorize.origin, new URL(oidc.issuer).origin)
  t.equal(authorize.searchParams.get('code_challenge_method'), 'S256')
  t.equal(authorize.searchParams.get('redirect_uri'), `${admin}/console/callback`)
  const stateCookie = cookieOf(start.cookies, 'mcpw_console_sign_in')!
  t.ok(stateCookie)

  const { callbackUrl } = await oidc.signIn(start.location!, OLIVIA, `${admin}/console/callback`)
  const callback = new URL(callbackUrl)
  const path = `${callback.pathname}${callback.search}`
  t.equal((await get(`/console/callback?code=${callback.searchParams.get('code')!}&state=not-the-state`, stateCookie)).status, 400, 'another state: refused')
  t.equal((await get(path)).status, 400, 'no sign-in cookie (another browser): refused')
  const ok = await get(path, stateCookie)
  t.equal(ok.status, 303)
  t.equal(ok.location, '/console/decisions')
  const session = cookieOf(ok.cookies, 'mcpw_console')!
  const decisions = await get('/console/decisions', session)
  t.equal(decisions.status, 200)
  t.match(decisions.text, /olivia <small>\(viewer\)<\/small>/)
  t.equal((await get('/console/approvals', session)).status, 403, 'a viewer: no approvals page')
  t.not((await get(path, stateCookie)).status, 303, 'the code is single use')
})
