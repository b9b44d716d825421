// Agent JWT verification (identity stage): EdDSA and RS256, side by side.
// Results in .scratch/bench/results/identity.json, or bench/results/identity.json with --write.
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Bench } from 'tinybench'
import { benchOptions, report } from './common.mjs'
import { createSigner } from 'fast-jwt'
import { validateConfig } from '../../dist/lib/config.js'
import { createBearerVerifier } from '../../dist/lib/identity.js'

const root = new URL('../../', import.meta.url).pathname
const dir = mkdtempSync(join(tmpdir(), 'mcpw-bench-id-'))
const bench = new Bench(benchOptions)
for (const [alg, pair] of [['EdDSA', generateKeyPairSync('ed25519')], ['RS256', generateKeyPairSync('rsa', { modulusLength: 2048 })]]) {
  writeFileSync(join(dir, `${alg}.pem`), pair.publicKey.export({ type: 'spki', format: 'pem' }))
  const config = validateConfig({
    identity: { issuer: 'https://idp.bench', publicKeyFile: join(dir, `${alg}.pem`), algorithms: [alg] },
    authorization: { schema: join(root, 'cedar/schema.cedarschema'), policies: join(root, 'cedar/policies') },
    upstreams: { db: { url: 'http://127.0.0.1:1/mcp' } }
  })
  const verify = createBearerVerifier(config.identity, config.tokens.issuer, () => undefined)
  const token = createSigner({ key: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }), algorithm: alg })({ iss: 'https://idp.bench', sub: 'bench', aud: 'http://127.0.0.1:8080/servers/db/mcp', roles: ['readonly'], exp: Math.floor(Date.now() / 1000) + 3600 })
  await verify(token)
  bench.add(`agent JWT verify (${alg})`, async () => { await verify(token) })
}
await bench.run()
report('identity', bench)
