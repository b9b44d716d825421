/**
 * The OIDC sign-in fixture end to end without the gateway: a minimal relying party starts an
 * authorization code + PKCE request, the fixture drives the provider's login and consent pages,
 * and the code is exchanged for an ID token that carries the user's claims.
 */
import t from 'tap'
import { createServer } from 'node:http'
import { createHash, randomBytes } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { createRemoteJWKSet, jwtVerify } from 'jose'
import { startOidcProvider, type OidcUser } from './fixtures/oidc-signin.js'

const alice: OidcUser = { sub: 'alice', userId: 'u-alice', roles: ['approver', 'admin'], department: 'security' }

t.test('sign in through the provider and exchange the code for an ID token', async t => {
  const rpServer = createServer()
  await new Promise<void>(resolve => rpServer.listen(0, '127.0.0.1', () => { resolve() }))
  const rpOrigin = `http://127.0.0.1:${(rpServer.address() as AddressInfo).port}`
  const redirectUri = `${rpOrigin}/callback`
  const op = await startOidcProvider({ redirectUris: [redirectUri], users: [alice] })
  t.teardown(async () => {
    rpServer.closeAllConnections()
    await new Promise<void>(resolve => rpServer.close(() => { resolve() }))
    await op.close()
  })

  const discovery = await (await fetch(`${op.issuer}/.well-known/openid-configuration`)).json() as Record<string, string>
  t.equal(discovery.issuer, op.issuer)
  const pending = new Map<string, { verifier: string, nonce: string }>()
  rpServer.on('request', (req, res) => {
    if (req.url !== '/start') { res.writeHead(404).end(); return }
    const state = randomBytes(12).toString('base64url')
    const nonce = randomBytes(12).toString('base64url')
    const verifier = randomBytes(32).toString('base64url')
    pending.set(state, { verifier, nonce })
    const auth = new URL(discovery.authorization_endpoint ?? '')
    auth.search = new URLSearchParams({
      client_id: op.clientId, redirect_uri: redirectUri, response_type: 'code', scope: 'openid mcp-warden', state, nonce,
      code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256'
    }).toString()
    res.writeHead(302, { location: auth.href, 'set-cookie': 'rp=1; Path=/; HttpOnly' }).end()
  })

  const { callbackUrl, rpCookie } = await op.signIn(`${rpOrigin}/start`, alice, redirectUri, 'earlier=x')
  const callback = new URL(callbackUrl)
  t.equal(`${callback.origin}${callback.pathname}`, redirectUri)
  const code = callback.searchParams.get('code')
  const state = callback.searchParams.get('state') ?? ''
  t.ok(code, 'callback carries a code')
  t.ok(pending.has(state), 'callback carries the state the RP issued')
  t.match(rpCookie, /(^|; )rp=1(;|$)/)
  t.match(rpCookie, /(^|; )earlier=x(;|$)/)

  const tokenRes = await fetch(discovery.token_endpoint ?? '', {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`${op.clientId}:${op.clientSecret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code: code ?? '', redirect_uri: redirectUri, code_verifier: pending.get(state)?.verifier ?? '' })
  })
  t.equal(tokenRes.status, 200)
  const tokens = await tokenRes.json() as { id_token: string }
  const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri ?? ''))
  const { payload, protectedHeader } = await jwtVerify(tokens.id_token, jwks, { issuer: op.issuer, audience: op.clientId })
  t.equal(protectedHeader.alg, 'RS256')
  t.match(payload, { sub: 'alice', userId: 'u-alice', roles: ['approver', 'admin'], department: 'security', nonce: pending.get(state)?.nonce })

  await t.rejects(op.signIn(`${rpOrigin}/start`, { ...alice, sub: 'mallory' }, redirectUri), /mallory/)

  const noPkce = await fetch(`${op.issuer}/auth?${new URLSearchParams({ client_id: op.clientId, redirect_uri: redirectUri, response_type: 'code', scope: 'openid' })}`, { redirect: 'manual' })
  const denied = new URL(noPkce.headers.get('location') ?? '', op.issuer)
  t.equal(denied.searchParams.get('error'), 'invalid_request', 'PKCE is required of the confidential client too')
})

t.test('a public client signs in with PKCE alone; http redirect URIs on other hosts are accepted', async t => {
  const rpServer = createServer()
  await new Promise<void>(resolve => rpServer.listen(0, '127.0.0.1', () => { resolve() }))
  const rpOrigin = `http://127.0.0.1:${(rpServer.address() as AddressInfo).port}`
  const redirectUri = `${rpOrigin}/callback`
  const op = await startOidcProvider({ redirectUris: ['http://gateway.test:8080/approvals/callback', redirectUri], users: [alice], publicClient: true })
  t.teardown(async () => {
    rpServer.closeAllConnections()
    await new Promise<void>(resolve => rpServer.close(() => { resolve() }))
    await op.close()
  })
  const verifier = randomBytes(32).toString('base64url')
  rpServer.on('request', (_req, res) => {
    const auth = new URL(`${op.issuer}/auth`)
    auth.search = new URLSearchParams({
      client_id: op.clientId, redirect_uri: redirectUri, response_type: 'code', scope: 'openid mcp-warden', state: 's1',
      code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256'
    }).toString()
    res.writeHead(302, { location: auth.href }).end()
  })
  const { callbackUrl, rpCookie } = await op.signIn(`${rpOrigin}/start`, alice, redirectUri)
  t.equal(rpCookie, '')
  const callback = new URL(callbackUrl)
  t.equal(callback.searchParams.get('state'), 's1')
  const tokenRes = await fetch(`${op.issuer}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', client_id: op.clientId, code: callback.searchParams.get('code') ?? '', redirect_uri: redirectUri, code_verifier: verifier })
  })
  t.equal(tokenRes.status, 200)
  const { id_token: idToken } = await tokenRes.json() as { id_token: string }
  const { payload } = await jwtVerify(idToken, createRemoteJWKSet(new URL(`${op.issuer}/jwks`)), { issuer: op.issuer, audience: op.clientId })
  t.match(payload, { sub: 'alice', roles: ['approver', 'admin'] })
  t.notOk('nonce' in payload, 'no nonce when the RP sent none')
})
