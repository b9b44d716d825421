/**
 * The approval pages in a real browser (the distribution's Chromium driven by playwright-core)
 * against a real gateway: the demo's MCP servers, the reference policies, OIDC sign-in through a
 * real provider (oidc-provider's login and consent pages). An agent's call that needs approval
 * carries an HTML-injection attempt in its arguments; the approver signs in, sees the call with
 * the arguments shown as text only, approves it, and the identical retry runs. Forms without
 * their CSRF token decide nothing, and nobody approves a call made for their own user.
 * With MCPW_SCREENSHOTS=1 it also writes the screenshots of docs/images at a 1280×800 viewport: the sign-in page, and the
 * approval page in full.
 *
 * Needs Chromium (`chromium` or `chromium-browser` on PATH, or /usr/bin/chromium); with
 * MCPW_SKIP_BROWSER=1 the test is skipped instead.
 */
import { mkdirSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { chromium, type Browser, type BrowserContext, type Page, type Response } from 'playwright-core'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { demoConfig, startDemo, type Demo } from '../lib/demo/index.js'
import { REFERENCE, startWithConfig, type TestGateway } from './fixtures/gateway.js'
import { OIDC_SCOPE, startOidcProvider, type OidcProviderFixture, type OidcUser } from './fixtures/oidc-signin.js'
import { inBusinessHours } from './fixtures/time.js'
import { refused } from './fixtures/refused.js'
import { withChromium } from './fixtures/browser.js'

const IMAGES = new URL('../docs/images/', import.meta.url).pathname
const VIEWPORT = { width: 1280, height: 800 }
const SECRET_ENV = 'MCPW_TEST_APPROVALS_OIDC_SECRET'

const OPS = { agentId: 'ops-bot', userId: 'frank', roles: ['super_admin'], department: 'platform-ops' }
const GRACE: OidcUser = { sub: 'grace', userId: 'grace', roles: ['super_admin'], department: 'platform-ops' }
const FRANK: OidcUser = { sub: 'frank', userId: 'frank', roles: ['super_admin'], department: 'platform-ops' }
/** Markup an agent could put into its arguments to run script on the approver's page. */
const INJECTION = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script></pre><b id="injected">bold</b>'

withChromium('the approval pages in a real browser', browserTests)

function browserTests (executablePath: string): void {
  let demo: Demo
  let op: OidcProviderFixture
  let gw: TestGateway
  let browser: Browser
  /** POSTs the demo's api server received. */
  let apiHits = 0

  t.before(async () => {
    demo = await startDemo({ dataDir: mkdtempSync(join(tmpdir(), 'mcpw-approval-page-')), port: 0 })
    demo.upstreams.api.server.on('request', (req) => { if (req.method === 'POST') apiHits++ })
    // The gateway is served at its publicUrl (http://127.0.0.1:<port>): the browser follows the
    // redirects and cookies the gateway issues there, and the provider sends it back there.
    const port = demo.config.listen.port
    op = await startOidcProvider({ redirectUris: [`http://127.0.0.1:${port}/approvals/callback`], users: [GRACE, FRANK] })
    process.env[SECRET_ENV] = op.clientSecret
    gw = await startWithConfig(demoConfig({
      dataDir: demo.dataDir,
      port,
      urls: { db: demo.upstreams.db.url, file: demo.upstreams.file.url, api: demo.upstreams.api.url },
      overrides: {
        authorization: { ...REFERENCE, timezone: inBusinessHours() },
        approvals: { signIn: { issuer: op.issuer, clientId: op.clientId, clientSecret: `env:${SECRET_ENV}`, scopes: ['openid', OIDC_SCOPE] } }
      }
    }))
    browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] })
  })
  t.teardown(async () => {
    await browser?.close()
    await gw?.close()
    await op?.close()
    await demo?.close()
  })

  async function connect (): Promise<Client> {
    const client = new Client({ name: 'approval-page-test', version: '1' })
    await client.connect(new StreamableHTTPClientTransport(new URL(gw.url('api')), { requestInit: { headers: { authorization: `Bearer ${demo.token(OPS)}` } } }))
    return client
  }

  /** The approval the agent's call asks for: its id and page URL (the call is not forwarded). */
  async function askApproval (t: Test, client: Client, args: Record<string, unknown>): Promise<{ id: string, url: string }> {
    const before = apiHits
    const e = await refused(client.callTool({ name: 'user_delete', arguments: args }))
    t.equal(e.code, -32003, 'the agent is told a person must approve the call')
    t.match(e.message, /Approval required: /)
    const data = e.data as { approvalId: string, approvalUrl: string }
    t.equal(data.approvalUrl, `${gw.config.publicUrl}/approvals/${data.approvalId}`, 'with the address of the approval page')
    t.equal(apiHits, before, 'nothing was forwarded')
    return { id: data.approvalId, url: data.approvalUrl }
  }

  async function newPage (): Promise<{ context: BrowserContext, page: Page }> {
    const context = await browser.newContext({ viewport: VIEWPORT })
    context.setDefaultTimeout(10_000)
    return { context, page: await context.newPage() }
  }

  /**
   * From the gateway's sign-in page: "Sign in with your identity provider", the provider's login
   * form as `login` (any password), its consent page; resolves with the gateway's answer at `landing`.
   */
  async function signInWithProvider (t: Test, page: Page, login: string, landing: string): Promise<Response> {
    await page.getByRole('link', { name: 'Sign in with your identity provider' }).click()
    await page.waitForURL(u => u.origin === op.issuer && u.pathname.startsWith('/interaction/'))
    t.equal(await page.locator('input[name="prompt"]').inputValue(), 'login', 'the provider asks for a login')
    await page.locator('input[name="login"]').fill(login)
    await page.locator('input[name="password"]').fill('any-password')
    await page.getByRole('button', { name: 'Sign-in' }).click()
    await page.locator('input[name="prompt"][value="consent"]').waitFor({ state: 'attached' })
    const answer = page.waitForResponse(r => r.url() === landing && r.request().method() === 'GET')
    await page.getByRole('button', { name: 'Continue' }).click()
    const response = await answer
    await page.waitForURL(landing)
    return response
  }

  /** The approval page's facts: label → value. */
  async function facts (page: Page): Promise<Record<string, string>> {
    const labels = await page.locator('dl > dt').allTextContents()
    const values = await page.locator('dl > dd').allTextContents()
    return Object.fromEntries(labels.map((k, i) => [k, values[i] ?? '']))
  }

  /** The approval as the JSON API shows it to an approver with a token. */
  async function stateOf (id: string): Promise<{ status: number, approval?: { status: string } }> {
    const res = await request(`${gw.base}/approvals/${id}`, { headers: { authorization: `Bearer ${demo.approverToken(GRACE)}` } })
    const json = await res.body.json() as { approval?: { status: string } }
    return { status: res.statusCode, ...(json.approval !== undefined ? { approval: json.approval } : {}) }
  }

  t.test('an approver signs in with OIDC, sees the call with its arguments as text only, and approves it; the retry runs', async t => {
    t.equal(gw.config.publicUrl, gw.base, 'the gateway listens at its publicUrl')
    const client = await connect()
    t.teardown(async () => { await client.close() })
    const args = { userId: INJECTION }
    const { id, url } = await askApproval(t, client, args)

    const { context, page } = await newPage()
    t.teardown(async () => { await context.close() })
    const first = await page.goto(url)
    t.equal(first?.status(), 200)
    const signInUrl = new URL(page.url())
    t.equal(`${signInUrl.origin}${signInUrl.pathname}`, `${gw.config.publicUrl}/approvals/sign-in`, 'not signed in: the sign-in page')
    t.equal(signInUrl.searchParams.get('next'), `/approvals/${id}`, 'which goes back to the approval afterwards')
    t.match(first?.headers()['content-security-policy'] ?? '', /default-src 'none'/)
    mkdirSync(IMAGES, { recursive: true })
    if (process.env.MCPW_SCREENSHOTS === '1') await page.screenshot({ path: join(IMAGES, 'approval-sign-in.png') })

    const shown = await signInWithProvider(t, page, 'grace', url)
    t.equal(shown.status(), 200, 'signed in as grace: the approval page')
    t.match(shown.headers()['content-security-policy'] ?? '', /default-src 'none'/, 'served with a CSP that allows no script')
    t.match(await page.locator('header').textContent(), /Signed in as grace/)
    const f = await facts(page)
    t.equal(f.Server, 'api')
    t.equal(f.Tool, 'user_delete')
    t.equal(f.Agent, 'ops-bot')
    t.equal(f['On behalf of user'], 'frank')
    t.match(f['Asked for by policy'], /admin-tool-user-delete/)
    t.equal(f['Approval id'], id)

    const shownArgs = await page.locator('pre#arguments').textContent() ?? ''
    t.ok(shownArgs.includes(JSON.stringify(INJECTION)), 'the arguments show the injection attempt as text (JSON-encoded)')
    t.ok(shownArgs.includes('</pre><b id=\\"injected\\">bold</b>'), 'including the markup that tries to close the <pre>')
    t.same(JSON.parse(shownArgs), args, 'the text is exactly the arguments the agent sent')
    t.equal(await page.locator('#injected').count(), 0, 'no element of the injected markup exists')
    t.equal(await page.locator('img').count(), 0, 'no img element exists')
    t.equal(await page.locator('script').count(), 0, 'no script element exists')
    t.equal(await page.evaluate(() => typeof (globalThis as { __pwned?: unknown }).__pwned), 'undefined', 'no injected script ran')
    t.equal(await page.getByRole('button', { name: 'Approve this call' }).count(), 1)

    const reason = 'Ticket OPS-7: the account is confirmed for deletion.'
    await page.locator('textarea#reason').fill(reason)
    // The whole page (1280 wide), from its header to the buttons.
    if (process.env.MCPW_SCREENSHOTS === '1') await page.screenshot({ path: join(IMAGES, 'approval-page.png'), fullPage: true })
    const decided = page.waitForResponse(r => r.url() === url && r.request().method() === 'POST')
    await page.getByRole('button', { name: 'Approve this call' }).click()
    const answer = await decided
    // A page served with Referrer-Policy: no-referrer posts its forms with `Origin: null` (Fetch
    // standard), so the same-origin check has to accept what the browser sends for its own form.
    t.equal(answer.status(), 200, `the browser's own approval form is accepted (it was sent with Origin: ${await answer.request().headerValue('origin') ?? '(none)'})`)
    if (answer.status() !== 200) {
      t.fail(`the approval form was refused: ${(await page.locator('main').textContent() ?? '').trim()}`)
      return
    }
    t.match(await page.locator('h1').textContent(), /You approved the call of api\/user_delete/)
    t.equal(await page.evaluate(() => typeof (globalThis as { __pwned?: unknown }).__pwned), 'undefined')

    const before = apiHits
    const ran = await client.callTool({ name: 'user_delete', arguments: args })
    t.ok(apiHits > before, 'the approved retry was forwarded')
    t.same(ran.content, [{ type: 'text', text: `no user ${INJECTION}` }], 'and the tool answered for exactly those arguments')
    const record = gw.audit.find(r => r.tool === 'user_delete' && r.event === undefined && r.outcome === 'allow')
    t.equal(record?.approvalId, id, 'the call\'s audit record names the approval')
    t.equal(record?.approver, 'grace', 'and the approver')
    t.ok(gw.audit.some(r => r.event === 'approval' && r.approvalId === id && r.method === 'approvals/approve' && r.outcome === 'allow' && r.approver === 'grace' && r.reason.includes('OPS-7')),
      'the approval is audited with its reason')
    t.equal((await stateOf(id)).status, 404, 'used: the approval is no longer waiting')
  })

  t.test('a form without its CSRF token decides nothing; the caller\'s own user sees a 403 page without a form', async t => {
    const client = await connect()
    t.teardown(async () => { await client.close() })
    const args = { userId: 'u-200' }
    const { id, url } = await askApproval(t, client, args)

    const grace = await newPage()
    t.teardown(async () => { await grace.context.close() })
    await grace.page.goto(url)
    t.equal((await signInWithProvider(t, grace.page, 'grace', url)).status(), 200)

    // The browser posts the approval form with its CSRF field removed.
    await grace.page.locator(`form[action="/approvals/${id}"] input[name="csrf"]`).evaluate(input => { input.remove() })
    const posted = grace.page.waitForResponse(r => r.url() === url && r.request().method() === 'POST')
    await grace.page.getByRole('button', { name: 'Approve this call' }).click()
    const refusedPost = await posted
    t.equal(refusedPost.status(), 403, 'a form without its CSRF token is refused')
    t.match(refusedPost.headers()['content-security-policy'] ?? '', /default-src 'none'/)
    t.equal(await grace.page.locator('h1').textContent(), 'Refused')
    t.match(await grace.page.locator('main').textContent(), /did not come from this gateway/)

    // The same session's cookies with a wrong token, and with the right token from another origin.
    await grace.page.goto(url)
    const csrf = await grace.page.locator(`form[action="/approvals/${id}"] input[name="csrf"]`).inputValue()
    const wrong = await grace.context.request.post(url, { form: { decision: 'approve', csrf: `${csrf.slice(0, -2)}AA` }, maxRedirects: 0 })
    t.equal(wrong.status(), 403, 'a wrong CSRF token is refused')
    const foreign = await grace.context.request.post(url, { form: { decision: 'approve', csrf }, headers: { origin: 'http://attacker.test' }, maxRedirects: 0 })
    t.equal(foreign.status(), 403, 'a POST from another origin is refused')
    t.equal((await stateOf(id)).approval?.status, 'pending', 'nothing was decided')
    t.notOk(gw.audit.some(r => r.event === 'approval' && r.approvalId === id && (r.method === 'approvals/approve' || r.method === 'approvals/deny')), 'no decision was audited')
    const before = apiHits
    const again = await refused(client.callTool({ name: 'user_delete', arguments: args }))
    t.equal((again.data as { approvalId: string }).approvalId, id, 'the agent still waits for the same approval')
    t.equal(apiHits, before, 'nothing was forwarded')

    // frank signs in: the call was made for frank.
    const frank = await newPage()
    t.teardown(async () => { await frank.context.close() })
    await frank.page.goto(url)
    const own = await signInWithProvider(t, frank.page, 'frank', url)
    t.equal(own.status(), 403, 'the caller\'s own user gets a 403 page')
    t.match(await frank.page.locator('header').textContent(), /Signed in as frank/)
    t.match(await frank.page.locator('main').textContent(), /You cannot approve a call made for your own user\./)
    t.equal(await frank.page.getByRole('button', { name: 'Approve this call' }).count(), 0, 'no approve button')
    t.equal(await frank.page.getByRole('button', { name: 'Deny' }).count(), 0, 'no deny button')
    t.equal(await frank.page.locator('textarea, input[name="decision"]').count(), 0, 'no decision form')
    t.ok(gw.audit.some(r => r.event === 'approval' && r.approvalId === id && r.method === 'approvals/view' && r.outcome === 'deny' && r.approver === 'frank'), 'the refused view is audited')
    t.equal((await stateOf(id)).approval?.status, 'pending', 'still nothing decided')

    // The session's own request with the page's CSRF token is accepted: the refusals above were the token's.
    const accepted = await grace.context.request.post(url, { form: { decision: 'approve', csrf }, maxRedirects: 0 })
    t.equal(accepted.status(), 200, 'the right CSRF token from the session decides')
    t.match(await accepted.text(), /You approved the call of/)
    const ran = await client.callTool({ name: 'user_delete', arguments: args })
    t.same(ran.content, [{ type: 'text', text: JSON.stringify({ deleted: 'u-200' }, null, 2) }], 'the approved retry ran')
  })
}
