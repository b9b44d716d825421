import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ALLOW_ALL } from './fixtures/gateway.js'
import t, { type Test } from 'tap'
import { loadConfig, validateConfig } from '../lib/config.js'
import { ConfigError } from '../lib/errors.js'
import { makeIssuer } from './fixtures/keys.js'
import { publicKeyFile } from './fixtures/gateway.js'

const base = { identity: { issuer: 'https://idp.test', jwksUri: 'https://idp.test/jwks' }, authorization: ALLOW_ALL, upstreams: { db: { url: 'http://127.0.0.1:9001/mcp' } } }
const dir = mkdtempSync(join(tmpdir(), 'mcpw-config-'))

function refuses (t: Test, input: unknown, field: RegExp, why: string): void {
  t.throws(() => validateConfig(input, dir), { code: 'MCPW_ERR_CONFIG_INVALID', message: field }, why)
}

t.test('defaults', async t => {
  const c = validateConfig(base)
  t.same(c.listen, { host: '127.0.0.1', port: 8080 })
  t.equal(c.publicUrl, 'http://127.0.0.1:8080')
  t.same(c.identity.algorithms, ['RS256', 'ES256', 'EdDSA'])
  t.equal(c.identity.clockToleranceSeconds, 5)
  t.equal(c.limits.maxBodyBytes, 1024 * 1024)
  t.equal(c.limits.maxJsonKeys, 10_000)
  t.equal(c.limits.maxJsonValues, 50_000)
  const db = c.upstreams.get('db')!
  t.equal(db.resource, 'http://127.0.0.1:9001/mcp', 'resource defaults to url')
  t.same(db.auth, { type: 'ephemeral' }, 'upstreams get ephemeral tokens by default')
  t.same(c.tokens, { issuer: 'http://127.0.0.1:8080', ttlSeconds: 60, exchangeTtlSeconds: 300, keysDir: join(process.cwd(), '.mcp-warden/keys') })
  t.equal(db.defaultSensitivity, 'high')
  t.equal(db.timeoutMs, 30_000)
  t.ok(Object.isFrozen(c) && Object.isFrozen(c.identity) && Object.isFrozen(db), 'the config is frozen')
  t.equal(validateConfig({ ...base, publicUrl: 'https://gw.example.com/' }).publicUrl, 'https://gw.example.com', 'trailing slash removed')
})

t.test('every bad field refuses to boot and is named', async t => {
  refuses(t, { ...base, lisen: {} }, /lisen: unknown key \(allowed here: listen, /, 'a misspelt top-level key')
  refuses(t, { ...base, identity: { ...base.identity, isuer: 'x' } }, /identity\.isuer: unknown key/, 'a misspelt nested key')
  refuses(t, { ...base, upstreams: { db: { url: 'http://x/mcp', tols: {} } } }, /upstreams\.db\.tols: unknown key/, 'a key inside an upstream')
  refuses(t, { ...base, listen: { port: 'eighty' } }, /listen\.port: expected integer/, 'a wrong type')
  refuses(t, { ...base, listen: { port: 70000 } }, /listen\.port/, 'out of range')
  refuses(t, { ...base, identity: { ...base.identity, algorithms: ['RS256', 'HS256'] } }, /identity\.algorithms\[1\]: HS256 is never accepted/, 'HS256')
  refuses(t, { ...base, identity: { ...base.identity, algorithms: ['none'] } }, /identity\.algorithms\[0\]: none is never accepted/, 'none')
  refuses(t, { ...base, identity: { ...base.identity, algorithms: ['XX1'] } }, /identity\.algorithms\[0\]: must be one of "RS256"/, 'an unknown algorithm')
  refuses(t, { ...base, identity: { issuer: 'x' } }, /identity: set exactly one key source/, 'no key source')
  refuses(t, { ...base, identity: { ...base.identity, publicKeyFile: 'k.pem' } }, /identity: set exactly one key source/, 'two key sources')
  refuses(t, { ...base, identity: { issuer: 'x', publicKeyFile: 'missing.pem' } }, /identity\.publicKeyFile: cannot read .*missing\.pem \(ENOENT\)/, 'an unreadable key file')
  writeFileSync(join(dir, 'junk.pem'), 'not a key')
  refuses(t, { ...base, identity: { issuer: 'x', publicKeyFile: 'junk.pem' } }, /identity\.publicKeyFile: .* is not a PEM public key/, 'a file that is no key')
  const ed = makeIssuer('EdDSA')
  refuses(t, { ...base, identity: { issuer: 'x', publicKeyFile: publicKeyFile(ed), algorithms: ['RS256'] } }, /identity\.algorithms: none of RS256 can be verified with the ed25519 key/, 'algorithms that do not fit the key')
  refuses(t, { ...base, identity: { ...base.identity, jwksUri: 'not a url' } }, /identity\.jwksUri: "not a url" is not an absolute URL/, 'a bad JWKS URL')
  refuses(t, { ...base, identity: { ...base.identity, issuer: '' } }, /identity\.issuer/, 'an empty issuer')
  refuses(t, { ...base, upstreams: {} }, /upstreams: configure at least one/, 'no upstream')
  refuses(t, { ...base, upstreams: { 'Bad Name': { url: 'http://x/mcp' } } }, /upstreams\.Bad Name: a server name is/, 'a bad server name')
  refuses(t, { ...base, upstreams: { db: { url: 'ftp://x/mcp' } } }, /upstreams\.db\.url: must use http: or https:/, 'a non-HTTP upstream')
  refuses(t, { ...base, upstreams: { db: {} } }, /upstreams\.db: set exactly one of url \(Streamable HTTP\) and command \(stdio\)/, 'an upstream without url')
  refuses(t, { ...base, upstreams: { db: { url: 'http://x/mcp', auth: { type: 'passthrough' } } } }, /upstreams\.db\.auth\.type/, 'an auth type that does not exist')
  refuses(t, { ...base, upstreams: { db: { url: 'http://x/mcp', tools: { q: { sensitivity: 'huge' } } } } }, /upstreams\.db\.tools\.q\.sensitivity: must be one of "low", "medium", "high"/, 'a bad sensitivity')
  refuses(t, { ...base, publicUrl: 'http://gw/?x=1' }, /publicUrl: must not have a query/, 'a publicUrl with a query')
  refuses(t, { ...base, allowedOrigins: ['https://app.example.com/path'] }, /allowedOrigins\[0\]: must be an origin like https:\/\/app\.example\.com/, 'an origin with a path')
  refuses(t, { ...base, logLevel: 'loud' }, /logLevel: must be one of/, 'a bad log level')
  refuses(t, [], /the config must be an object/, 'not an object')
  refuses(t, { ...base, limits: { maxJsonValues: 10 } }, /limits\.maxJsonValues: expected integer to be greater or equal to 16/, 'a value limit too small')
  refuses(t, { ...base, limits: { maxJsonValues: '50k' } }, /limits\.maxJsonValues: expected integer/, 'a value limit that is no number')
  refuses(t, { ...base, tokens: { ttlSeconds: 301 } }, /tokens\.ttlSeconds: expected integer to be less or equal to 300/, 'a ttl over 300 s')
  refuses(t, { ...base, tokens: { ttlSeconds: 0 } }, /tokens\.ttlSeconds/, 'a ttl of 0')
  refuses(t, { ...base, tokens: { issuer: 'not a url' } }, /tokens\.issuer: "not a url" is not an absolute URL/, 'a bad token issuer')
  refuses(t, { identity: base.identity, upstreams: base.upstreams }, /authorization: expected required property/, 'no authorization section')
  refuses(t, { ...base, authorization: { ...ALLOW_ALL, timezone: 'Mars/Olympus' } }, /authorization\.timezone: "Mars\/Olympus" is not an IANA time zone/, 'a bad time zone')
  refuses(t, { ...base, authorization: { ...ALLOW_ALL, schema: 'nope.cedarschema' } }, /authorization\.schema: .*nope\.cedarschema does not exist/, 'a missing schema')
  refuses(t, { ...base, authorization: { ...ALLOW_ALL, policies: 'no-such-folder' } }, /authorization\.policies: .*no-such-folder is not a folder/, 'a missing policy folder')
})

t.test('store and rateLimit', async t => {
  t.equal(validateConfig(base).store, 'memory')
  t.equal(validateConfig(base).rateLimit, undefined, 'no limits unless configured')
  t.equal(validateConfig({ ...base, store: 'redis://127.0.0.1:6379/2' }).store, 'redis://127.0.0.1:6379/2')
  t.equal(validateConfig({ ...base, store: 'rediss://redis.internal:6380' }).store, 'rediss://redis.internal:6380')
  const c = validateConfig({ ...base, rateLimit: { max: 600, tools: { payment_process: { max: 5, timeWindow: '1 minute' }, 'db/drop': { max: 1, timeWindow: 3_600_000 } } } })
  t.equal(c.rateLimit!.max, 600)
  t.equal(c.rateLimit!.timeWindowMs, 60_000, 'the window defaults to a minute')
  t.same([...c.rateLimit!.tools], [['payment_process', { max: 5, timeWindowMs: 60_000 }], ['db/drop', { max: 1, timeWindowMs: 3_600_000 }]])
  refuses(t, { ...base, store: 'postgres://x' }, /store: must use redis: or rediss:/, 'a store that is not Redis')
  refuses(t, { ...base, store: 'redis' }, /store: is neither "memory" nor a Redis URL/, 'a store without a URL')
  t.equal(validateConfig({ ...base, store: 'rediss://mcpw:s3cret@redis.internal:6380/1' }).store, 'rediss://mcpw:s3cret@redis.internal:6380/1', 'credentials are allowed in a Redis URL')
  let message = ''
  try { validateConfig({ ...base, store: 'redis://:s3cret@h:6379/x' }) } catch (err) { message = (err as Error).message }
  t.match(message, /store: the path of a Redis URL is a database number/)
  t.notMatch(message, /s3cret/, 'and never repeated in an error')
  refuses(t, { ...base, store: 'redis://h:6379/cache' }, /store: the path of a Redis URL is a database number/, 'a bad database')
  refuses(t, { ...base, rateLimit: { timeWindow: '1 minute' } }, /rateLimit\.max: expected required property/, 'a limit without max')
  refuses(t, { ...base, rateLimit: { max: 0 } }, /rateLimit\.max: expected integer to be greater or equal to 1/, 'a max of 0')
  refuses(t, { ...base, rateLimit: { max: 10, timeWindow: 'a while' } }, /rateLimit\.timeWindow: "a while" is not a time window/, 'a window that is not a duration')
  refuses(t, { ...base, rateLimit: { max: 10, tools: { pay: { max: 2 } } } }, /rateLimit\.tools\.pay\.timeWindow: expected required property/, 'a tool limit without a window')
  refuses(t, { ...base, rateLimit: { max: 10, tools: { 'nope/pay': { max: 2, timeWindow: '1m' } } } }, /rateLimit\.tools\.nope\/pay: no upstream is named "nope"/, 'a tool limit on an unknown server')
  refuses(t, { ...base, rateLimit: { max: 10, burst: 3 } }, /rateLimit\.burst: unknown key/, 'an unknown key')
})

t.test('loadConfig reads YAML and JSON, resolving paths from the file\'s folder', async t => {
  const issuer = makeIssuer('ES256')
  writeFileSync(join(dir, 'issuer.pem'), issuer.publicKeyPem)
  writeFileSync(join(dir, 'gw.yaml'), `
listen: { host: 127.0.0.1, port: 9090 }
identity:
  issuer: https://idp.test
  publicKeyFile: ./issuer.pem
  algorithms: [ES256]
authorization: { schema: ${ALLOW_ALL.schema}, policies: ${ALLOW_ALL.policies}, timezone: Europe/Paris }
upstreams:
  db: { url: "http://127.0.0.1:9001/mcp", tools: { q: { sensitivity: low, readOnly: true } } }
audit: { destination: ./audit.log }
`)
  const y = loadConfig(join(dir, 'gw.yaml'))
  t.equal(y.listen.port, 9090)
  t.match(y.identity.publicKeyPem, /BEGIN PUBLIC KEY/)
  t.equal(y.audit.destination, join(dir, 'audit.log'))
  t.equal(y.authorization.timezone, 'Europe/Paris')
  t.same(y.upstreams.get('db')!.tools, { q: { sensitivity: 'low', readOnly: true } })
  writeFileSync(join(dir, 'gw.json'), JSON.stringify(base))
  t.equal(loadConfig(join(dir, 'gw.json')).upstreams.size, 1)
  writeFileSync(join(dir, 'bad.yaml'), 'identity: [unclosed')
  t.throws(() => loadConfig(join(dir, 'bad.yaml')), { message: /is not valid YAML/ })
  t.throws(() => loadConfig(join(dir, 'absent.yaml')), ConfigError)
})

t.test('the gateway\'s own issuer cannot be the agents\' issuer (a minted token would pass as an agent token)', async t => {
  refuses(t, { ...base, tokens: { issuer: 'https://idp.test' } }, /^Invalid configuration: tokens\.issuer: the gateway's own issuer/, 'tokens.issuer equal to identity.issuer')
  refuses(t, { ...base, publicUrl: 'https://idp.test', identity: { ...base.identity, issuer: 'https://idp.test' } }, /^Invalid configuration: identity\.issuer: the gateway's own issuer/, 'identity.issuer equal to publicUrl, the default tokens.issuer')
})

t.test('approvals: defaults, and each bad key refuses to boot naming it', async t => {
  const c = validateConfig(base)
  t.equal(c.approvals.ttlSeconds, 600)
  t.same(c.approvals.rateLimit, { max: 10, timeWindowMs: 600_000 })
  t.equal(c.approvals.approverAudience, `${c.publicUrl}/approvals`)
  t.equal(c.approvals.notify, undefined)
  t.equal(c.approvals.signIn, undefined)
  process.env.MCPW_CONFIG_TEST_HOOK = 'x'
  const full = validateConfig({ ...base, approvals: { ttlSeconds: 120, rateLimit: { max: 3, timeWindow: '1 hour' }, notify: { url: 'https://hooks.test/a', secret: 'env:MCPW_CONFIG_TEST_HOOK' }, signIn: { issuer: 'https://idp.test/', clientId: 'c', scopes: ['openid', 'roles'] } } })
  t.same(full.approvals.rateLimit, { max: 3, timeWindowMs: 3_600_000 })
  t.equal(full.approvals.notify?.timeoutMs, 5000)
  t.equal(full.approvals.signIn?.issuer, 'https://idp.test', 'the issuer without a trailing slash')
  refuses(t, { ...base, approvals: { ttlSeconds: 1 } }, /^Invalid configuration: approvals\.ttlSeconds:/, 'too short an approval life')
  refuses(t, { ...base, approvals: { sometimes: true } }, /^Invalid configuration: approvals\.sometimes: unknown key/, 'an unknown key')
  refuses(t, { ...base, approvals: { notify: { url: 'not a url', secret: 'env:MCPW_CONFIG_TEST_HOOK' } } }, /approvals\.notify\.url/, 'a webhook that is not a URL')
  refuses(t, { ...base, approvals: { notify: { url: 'https://hooks.test/a', secret: 'plain-text-secret' } } }, /approvals\.notify\.secret/, 'a webhook secret written into the config')
  refuses(t, { ...base, approvals: { notify: { url: 'https://hooks.test/a' } } }, /approvals\.notify\.secret/, 'a webhook without a secret')
  refuses(t, { ...base, approvals: { signIn: { issuer: 'https://idp.test', clientId: 'c', scopes: ['profile'] } } }, /approvals\.signIn\.scopes/, 'OIDC without openid')
  refuses(t, { ...base, approvals: { signIn: { issuer: 'idp', clientId: 'c' } } }, /approvals\.signIn\.issuer/, 'an issuer that is not a URL')
  refuses(t, { ...base, approvals: { rateLimit: { max: 0 } } }, /approvals\.rateLimit\.max/, 'a zero rate limit')
  refuses(t, { ...base, approvals: { rateLimit: { max: 1, timeWindow: 'soon' } } }, /approvals\.rateLimit\.timeWindow/, 'a window that is no duration')
})

t.test('telemetry, shadow mode and the audit chain: defaults, and each bad key refuses to boot naming it', async t => {
  const c = validateConfig(base)
  t.equal(c.telemetry, undefined, 'tracing is off unless configured')
  t.equal(c.authorization.mode, 'enforce')
  t.equal(c.upstreams.get('db')!.mode, 'enforce')
  t.equal(c.audit.checkpointEvery, 0)
  t.match(c.audit.replica, /^[A-Za-z0-9_.:-]+$/, 'the replica defaults to the host name')

  const on = validateConfig({ ...base, telemetry: { otlp: { endpoint: 'http://collector:4318/', headers: { 'x-team': 'a' } } } })
  t.same(on.telemetry, { serviceName: 'mcp-warden', sampleRatio: 1, otlp: { endpoint: 'http://collector:4318', tracesUrl: 'http://collector:4318/v1/traces', headers: { 'x-team': 'a' }, timeoutMs: 10_000 } })
  const prefixed = validateConfig({ ...base, telemetry: { otlp: { endpoint: 'https://otel.example.com/otlp' } } })
  t.equal(prefixed.telemetry?.otlp?.tracesUrl, 'https://otel.example.com/otlp/v1/traces', 'a base URL with a path keeps it')

  const shadow = validateConfig({ ...base, authorization: { ...ALLOW_ALL, mode: 'shadow' }, upstreams: { db: { url: 'http://127.0.0.1:9001/mcp' }, pay: { url: 'http://127.0.0.1:9002/mcp', mode: 'enforce' } } })
  t.equal(shadow.upstreams.get('db')!.mode, 'shadow', 'an upstream takes the global mode')
  t.equal(shadow.upstreams.get('pay')!.mode, 'enforce', 'or its own')

  refuses(t, { ...base, telemetry: { otlp: { endpoint: 'ftp://collector' } } }, /telemetry\.otlp\.endpoint/, 'not an http(s) URL')
  refuses(t, { ...base, telemetry: { otlp: { endpoint: 'http://collector:4318/?x=1' } } }, /telemetry\.otlp\.endpoint: is the OTLP\/HTTP base URL/, 'a query')
  refuses(t, { ...base, telemetry: { otlp: { endpoint: 'http://c', protocol: 'grpc' } } }, /telemetry\.otlp\.protocol: unknown key/, 'an unknown key')
  refuses(t, { ...base, telemetry: { sampleRatio: 2 } }, /telemetry\.sampleRatio/, 'a ratio above 1')
  refuses(t, { ...base, telemetry: { otlp: { endpoint: 'http://c', headers: { 'bad header': 'x' } } } }, /telemetry\.otlp\.headers\.bad header: is not an HTTP header name/, 'a header name with a space')
  refuses(t, { ...base, telemetry: { otlp: { endpoint: 'http://c', headers: { a: 'x\r\nInjected: 1' } } } }, /telemetry\.otlp\.headers\.a: a header value cannot hold a line break/, 'a header value with a line break')
  refuses(t, { ...base, authorization: { ...ALLOW_ALL, mode: 'dry-run' } }, /authorization\.mode/, 'an unknown mode')
  refuses(t, { ...base, upstreams: { db: { url: 'http://127.0.0.1:9001/mcp', mode: 'off' } } }, /upstreams\.db\.mode/, 'an unknown upstream mode')
  refuses(t, { ...base, audit: { rotate: { maxBytes: 1_000_000 } } }, /audit\.rotate: rotation needs a file destination/, 'rotating stdout')
  refuses(t, { ...base, audit: { destination: './a.log', rotate: { maxBytes: 10 } } }, /audit\.rotate\.maxBytes/, 'a tiny rotation size')
  refuses(t, { ...base, audit: { replica: 'has space' } }, /audit\.replica/, 'a replica name with a space')
  refuses(t, { ...base, audit: { checkpoint: { every: 0 } } }, /audit\.checkpoint\.every/, 'a checkpoint every 0 records')
})
