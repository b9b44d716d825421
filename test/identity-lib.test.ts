import { ALLOW_ALL } from './fixtures/gateway.js'
import t from 'tap'
import { identityFromClaims, principalKey, remoteKeyResolver } from '../lib/identity.js'
import { validateConfig } from '../lib/config.js'
import { KeysUnavailableError, TokenInvalidError } from '../lib/errors.js'
import { makeIssuer, jwk } from './fixtures/keys.js'
import { startJwks } from './fixtures/jwks.js'

const config = validateConfig({ identity: { issuer: 'https://idp.test', jwksUri: 'http://127.0.0.1:1/jwks' }, authorization: ALLOW_ALL, upstreams: { db: { url: 'http://127.0.0.1:1/mcp' } } })

t.test('claims map to an identity', async t => {
  const id = identityFromClaims({ iss: 'https://idp.test', sub: 's', agentId: 'bot', userId: 'alice', role: 'analyst', roles: ['engineer', 'analyst'], department: 'finance', scope: 'tool:a tool:b', scp: ['tool:c'], exp: 99 }, config.identity)
  t.equal(id.agentId, 'bot')
  t.equal(id.userId, 'alice')
  t.same(id.roles, ['analyst', 'engineer'])
  t.equal(id.department, 'finance')
  t.same(id.scopes, ['tool:a', 'tool:b', 'tool:c'])
  t.equal(id.expiresAt, 99)
  t.ok(Object.isFrozen(id))
  t.equal(identityFromClaims({ iss: 'x', sub: 'only-sub' }, config.identity).agentId, 'only-sub')
  t.throws(() => identityFromClaims({ iss: 'x' }, config.identity), TokenInvalidError)
  t.not(principalKey(identityFromClaims({ iss: 'x', sub: 'a', userId: 'u1' }, config.identity)), principalKey(identityFromClaims({ iss: 'x', sub: 'a', userId: 'u2' }, config.identity)),
    'the same agent for two users is two principals')
})

t.test('custom claim names', async t => {
  const c = validateConfig({ identity: { issuer: 'i', jwksUri: 'http://127.0.0.1:1/j', claims: { agentId: 'client_id', role: 'grp' } }, authorization: ALLOW_ALL, upstreams: { db: { url: 'http://127.0.0.1:1/mcp' } } })
  const id = identityFromClaims({ iss: 'i', client_id: 'c-1', grp: 'readonly' }, c.identity)
  t.equal(id.agentId, 'c-1')
  t.same(id.roles, ['readonly'])
})

t.test('remote key resolver: rotation, unknown kid, JWKS down', async t => {
  const k1 = makeIssuer('EdDSA', 'i', 'k1')
  const k2 = makeIssuer('EdDSA', 'i', 'k2')
  const jwks = await startJwks([jwk(k1)])
  t.teardown(async () => { await jwks.close() })
  const resolve = remoteKeyResolver(jwks.url, ['EdDSA'], { cooldownMs: 0 })
  t.match(await resolve({ alg: 'EdDSA', kid: 'k1' }), /BEGIN PUBLIC KEY/)
  await t.rejects(resolve({ alg: 'EdDSA', kid: 'k2' }), TokenInvalidError, 'k2 is not published yet')
  jwks.keys = [jwk(k2), jwk(k1)]
  t.match(await resolve({ alg: 'EdDSA', kid: 'k2' }), /BEGIN PUBLIC KEY/, 'a rotated-in key is picked up on its first use')
  await t.rejects(resolve({ alg: 'RS256', kid: 'k1' }), TokenInvalidError, 'an algorithm outside the allow-list is refused before any lookup')
  await t.rejects(resolve({ alg: 'none' }), TokenInvalidError)
  jwks.up = false
  const cold = remoteKeyResolver(jwks.url, ['EdDSA'])
  await t.rejects(cold({ alg: 'EdDSA', kid: 'k1' }), KeysUnavailableError)
})
