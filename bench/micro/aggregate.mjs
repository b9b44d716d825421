// One tools/call through the aggregated endpoint POST /mcp against the same call through the
// server's own route, side by side in one run (one gateway, one upstream, the SDK client).
// /mcp answers each message by calling the server route in-process, so the difference is
// its own cost: a stateless MCP server per request, the name lookup, the in-process call.
// Run: npm run bench:aggregate   (builds first; results in .scratch/bench/results/aggregate.json,
// or bench/results/aggregate.json with `npm run bench:aggregate -- --write`)
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Bench } from 'tinybench'
import { z } from 'zod'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { benchOptions, report } from './common.mjs'
import { buildGateway } from '../../dist/lib/gateway.js'
import { validateConfig } from '../../dist/lib/config.js'
import { signAgentToken } from '../../dist/lib/dev-tokens.js'
import { serveMcp } from '../../dist/lib/demo/serve.js'

const root = new URL('../../', import.meta.url).pathname
const dir = mkdtempSync(join(tmpdir(), 'mcpw-bench-aggregate-'))
const upstream = await serveMcp(() => {
  const s = new McpServer({ name: 'bench-upstream', version: '1.0.0' })
  s.registerTool('echo', { description: 'Echo the text back.', inputSchema: { text: z.string() } }, async ({ text }) => ({ content: [{ type: 'text', text }] }))
  return s
}, { json: true })
const { privateKey, publicKey } = generateKeyPairSync('ed25519')
writeFileSync(join(dir, 'issuer.pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }))
const config = validateConfig({
  listen: { host: '127.0.0.1', port: 0 },
  publicUrl: 'http://127.0.0.1:1',
  identity: { issuer: 'https://idp.bench', publicKeyFile: join(dir, 'issuer.pub.pem'), algorithms: ['EdDSA'] },
  authorization: { schema: join(root, 'cedar/schema.cedarschema'), policies: join(root, 'test/fixtures/cedar/allow-all'), watch: false },
  tokens: { keysDir: join(dir, 'keys') },
  toolScan: { pins: join(dir, 'pins.json') },
  upstreams: { rec: { url: upstream.url, auth: { type: 'none' }, defaultSensitivity: 'low' } },
  logLevel: 'silent'
})
const app = await buildGateway(config, { logger: false, auditStream: { write () {} } })
await app.listen({ host: '127.0.0.1', port: 0 })
const base = `http://127.0.0.1:${app.server.address().port}`
const token = signAgentToken(privateKey.export({ type: 'pkcs8', format: 'pem' }), {
  issuer: 'https://idp.bench', audience: [`${config.publicUrl}/servers/rec/mcp`, `${config.publicUrl}/mcp`], agentId: 'bench-agent', ttlSeconds: 3600
})
async function connect (url) {
  const client = new Client({ name: 'bench', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { authorization: `Bearer ${token}` } } }))
  return client
}
const direct = await connect(`${base}/servers/rec/mcp`)
const aggregated = await connect(`${base}/mcp`)
await aggregated.listTools()

const bench = new Bench(benchOptions)
bench.add('tools/call via /servers/rec/mcp', async () => { await direct.callTool({ name: 'echo', arguments: { text: 'hi' } }) })
bench.add('tools/call via /mcp (rec__echo)', async () => { await aggregated.callTool({ name: 'rec__echo', arguments: { text: 'hi' } }) })
bench.add('tools/list via /servers/rec/mcp', async () => { await direct.listTools() })
bench.add('tools/list via /mcp', async () => { await aggregated.listTools() })
await bench.run()
report('aggregate', bench)
await direct.close()
await aggregated.close()
await app.close()
await upstream.close()
