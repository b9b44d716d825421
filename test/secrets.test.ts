// Vault: no Vault server can run on this machine; these tests use test/fixtures/vault.ts,
// which speaks the documented KV v2 and AppRole HTTP API.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { validateConfig, secretRef } from '../lib/config.js'
import { createSecretProvider, SecretUnavailableError, VaultKvSecret } from '../lib/secrets.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, startGateway } from './fixtures/gateway.js'
import { startRecordingUpstream } from './fixtures/upstream.js'
import { startVault, type VaultFixture } from './fixtures/vault.js'

const dir = mkdtempSync(join(tmpdir(), 'mcpw-secrets-'))
let vault: VaultFixture
t.before(async () => {
  vault = await startVault()
  vault.kv.set('secret/legacy/billing', { apiKey: 'vault-key-7d41e2', other: 'x' })
})
t.teardown(async () => { await vault.close() })

t.test('env: and file: secrets', async t => {
  process.env.MCPW_TEST_SECRET = 'env-secret-93a1'
  t.equal(await createSecretProvider(secretRef('f', 'env:MCPW_TEST_SECRET', dir)).get(), 'env-secret-93a1')
  writeFileSync(join(dir, 'key.txt'), 'file-secret-5be0\n')
  t.equal(await createSecretProvider(secretRef('f', 'file:key.txt', dir)).get(), 'file-secret-5be0', 'trimmed')
  t.throws(() => secretRef('upstreams.x.auth.secret', 'env:MCPW_NOT_SET_ANYWHERE', dir), { message: /upstreams\.x\.auth\.secret: the environment variable MCPW_NOT_SET_ANYWHERE is not set/ })
  t.throws(() => secretRef('upstreams.x.auth.secret', 'file:missing.txt', dir), { message: /cannot read .*missing\.txt \(ENOENT\)/ })
  t.throws(() => secretRef('upstreams.x.auth.secret', 'hunter2', dir), { message: /never the value itself/ }, 'a literal secret in the config is refused')
})

t.test('Vault KV v2 with AppRole: login, cache, re-login on expiry and revocation', async t => {
  process.env.MCPW_TEST_SECRET_ID = vault.secretId
  const ref = secretRef('s', { vault: { address: vault.address, appRole: { roleId: vault.roleId, secretId: 'env:MCPW_TEST_SECRET_ID', mount: 'approle' }, mount: 'secret', path: 'legacy/billing', field: 'apiKey', cacheSeconds: 0, timeoutSeconds: 2 } }, dir)
  const provider = createSecretProvider(ref) as VaultKvSecret
  t.equal(await provider.get(), 'vault-key-7d41e2')
  t.equal(await provider.get(), 'vault-key-7d41e2')
  t.equal(provider.stats.logins, 1, 'one login for several reads while the token lives')
  vault.revokeAll()
  t.equal(await provider.get(), 'vault-key-7d41e2', 'a revoked token: log in again and retry')
  t.equal(provider.stats.logins, 2)
  vault.leaseSeconds = 1
  await provider.get() // a fresh login with a 1 s lease happens on the next renewal
  vault.revokeAll()
  await provider.get()
  const logins = provider.stats.logins
  await new Promise(resolve => setTimeout(resolve, 900))
  await provider.get()
  t.ok(provider.stats.logins > logins, 'a login is renewed before its lease ends')
  vault.leaseSeconds = 3600

  process.env.MCPW_TEST_VAULT_TOKEN = vault.rootToken
  const cached = createSecretProvider(secretRef('s', { vault: { address: vault.address, token: 'env:MCPW_TEST_VAULT_TOKEN', path: 'legacy/billing', field: 'apiKey', cacheSeconds: 60 } }, dir))
  const reads = vault.reads
  await cached.get(); await cached.get(); await cached.get()
  t.equal(vault.reads, reads + 1, 'a short cache: one read for three gets')

  const missing = createSecretProvider(secretRef('s', { vault: { address: vault.address, token: 'env:MCPW_TEST_VAULT_TOKEN', path: 'legacy/billing', field: 'nope' } }, dir))
  await t.rejects(missing.get(), { message: /has no string field "nope"/ })
  vault.up = false
  const sealed = createSecretProvider(secretRef('s', { vault: { address: vault.address, token: 'env:MCPW_TEST_VAULT_TOKEN', path: 'legacy/billing', field: 'apiKey' } }, dir))
  await t.rejects(sealed.get(), SecretUnavailableError)
  vault.up = true
  t.throws(() => secretRef('upstreams.x.auth.secret', { vault: { address: vault.address, path: 'p', field: 'f' } } as never, dir), { message: /upstreams\.x\.auth\.secret\.vault: set exactly one of token and appRole/ })
})

t.test('through the gateway: injected upstream, redacted everywhere, fail closed', async t => {
  const issuer = makeIssuer('EdDSA')
  const up = await startRecordingUpstream()
  process.env.MCPW_TEST_VAULT_TOKEN = vault.rootToken
  const gw = await startGateway({
    issuer,
    upstreams: {
      billing: { url: up.url, auth: { type: 'secret', header: 'X-API-Key', secret: { vault: { address: vault.address, token: 'env:MCPW_TEST_VAULT_TOKEN', path: 'legacy/billing', field: 'apiKey' } } } },
      bearer: { url: up.url, auth: { type: 'secret', secret: 'env:MCPW_TEST_SECRET' } }
    }
  })
  t.teardown(async () => { await gw.close(); await up.close() })
  const responses: string[] = []
  const post = async (server: string) => {
    const res = await request(gw.url(server), { method: 'POST', headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource(server) })}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }) })
    const text = await res.body.text()
    responses.push(JSON.stringify(res.headers) + text)
    return res.statusCode
  }
  t.equal(await post('billing'), 200)
  t.equal(up.received.at(-1)!.headers['x-api-key'], 'vault-key-7d41e2', 'the Vault secret reached the upstream in its header')
  t.equal(up.received.at(-1)!.headers.authorization, undefined, 'and nothing else')
  t.equal(await post('bearer'), 200)
  t.equal(up.received.at(-1)!.headers.authorization, 'Bearer env-secret-93a1', 'the default format for Authorization is Bearer')

  const everything = [...gw.log, ...gw.audit.map(r => JSON.stringify(r)), ...responses].join('\n')
  for (const secret of ['vault-key-7d41e2', 'env-secret-93a1', vault.rootToken]) {
    t.notOk(everything.includes(secret), `${secret.slice(0, 9)}… appears in no log line, audit record or response`)
  }
})

t.test('a secret that cannot be had: 503 and nothing forwarded', async t => {
  const issuer = makeIssuer('EdDSA')
  const up = await startRecordingUpstream()
  process.env.MCPW_TEST_VAULT_TOKEN = vault.rootToken
  const gw = await startGateway({
    issuer,
    upstreams: { billing: { url: up.url, auth: { type: 'secret', header: 'X-API-Key', secret: { vault: { address: vault.address, token: 'env:MCPW_TEST_VAULT_TOKEN', path: 'legacy/missing', field: 'apiKey', cacheSeconds: 0 } } } } }
  })
  t.teardown(async () => { await gw.close(); await up.close() })
  const res = await request(gw.url('billing'), { method: 'POST', headers: { authorization: `Bearer ${issuer.sign({ aud: gw.resource('billing') })}`, 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }) })
  t.equal(res.statusCode, 503)
  t.match(await res.body.json(), { error: { code: -32014 } })
  t.equal(up.received.length, 0)
  t.ok(gw.log.some(l => l.includes('the upstream secret is unavailable') && l.includes('vault:')), 'the log names the reference, not the value')
})

t.test('config errors name the field', async t => {
  const base = { identity: { issuer: 'i', jwksUri: 'https://i/j' }, authorization: ALLOW_ALL }
  const bad = (auth: unknown) => () => validateConfig({ ...base, upstreams: { x: { url: 'http://127.0.0.1:1/mcp', auth } } })
  t.throws(bad({ type: 'exchange', clientId: 'c', clientSecret: 'env:MCPW_TEST_SECRET' }), { message: /upstreams\.x\.auth\.tokenEndpoint: required for auth type exchange/ })
  t.throws(bad({ type: 'exchange', tokenEndpoint: 'http://as/token', clientId: 'c' }), { message: /upstreams\.x\.auth\.clientSecret: required for client_secret_basic/ })
  t.throws(bad({ type: 'exchange', tokenEndpoint: 'http://as/token', clientId: 'c', clientAuth: 'private_key_jwt' }), { message: /upstreams\.x\.auth\.privateKeyFile: required for private_key_jwt/ })
  t.throws(bad({ type: 'ephemeral', header: 'x' }), { message: /upstreams\.x\.auth\.header: not used by auth type ephemeral/ })
  t.throws(bad({ type: 'secret' }), { message: /upstreams\.x\.auth\.secret: required for auth type secret/ })
  t.throws(bad({ type: 'secret', secret: 'env:MCPW_TEST_SECRET', format: 'Token' }), { message: /upstreams\.x\.auth\.format: must contain \{secret\}/ })
  t.throws(bad({ type: 'secret', secret: 'env:MCPW_TEST_SECRET', header: 'host' }), { message: /upstreams\.x\.auth\.header: "host" cannot carry a secret/ })
  t.throws(bad({ type: 'secret', secret: { vault: { address: 'http://v', token: 'env:MCPW_TEST_SECRET', path: 'p', feild: 'f' } } }), { message: /upstreams\.x\.auth\.secret\.vault\.(feild: unknown key|field: expected required property)/ }, 'a typo inside a Vault reference is named')
  t.throws(bad({ type: 'secret', secret: 42 }), { message: /upstreams\.x\.auth\.secret: must be "env:NAME", "file:PATH" or \{ vault/ })
  t.throws(bad({ type: 'passthrough' }), { message: /upstreams\.x\.auth\.type: must be one of "ephemeral", "exchange", "secret", "none"/ }, 'there is no passthrough mode')
})
