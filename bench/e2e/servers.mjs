// The bench's servers, each in a child process of its own (`upstream` or `gateway`):
// a real MCP upstream (stateless Streamable HTTP, the SDK server) with two doors — /mcp checks
// the gateway's ephemeral token with mcp-warden/upstream, /direct checks nothing (the
// baseline) — and the full gateway in front of /mcp (identity, Cedar with the shipped
// policies, tool filter, ephemeral tokens, audit to a file). Each reports its address; the
// gateway also reports, when asked, the per-stage timings it recorded.
import { createServer } from 'node:http'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { z } from 'zod'
import { buildGateway } from '../../dist/lib/gateway.js'
import { validateConfig } from '../../dist/lib/config.js'
import { checkNodeRequest, createUpstreamVerifier } from '../../dist/lib/upstream.js'
import { stagesOf } from '../../dist/lib/timing.js'

const root = new URL('../../', import.meta.url).pathname
const [role, arg1, arg2, arg3] = process.argv.slice(2) // see each role's argv below

const ROWS = [{ id: 1, name: 'Ada Lovelace', tier: 'gold' }, { id: 2, name: 'Alan Turing', tier: 'silver' }, { id: 3, name: 'Grace Hopper', tier: 'gold' }]
function mcpServer () {
  const server = new McpServer({ name: 'bench-db', version: '1.0.0' })
  server.registerTool('database_query', { description: 'Run a read-only SQL statement.', inputSchema: { sql: z.string() }, annotations: { readOnlyHint: true } },
    async () => ({ content: [{ type: 'text', text: JSON.stringify(ROWS) }] }))
  for (let i = 0; i < 20; i++) {
    server.registerTool(`report_${i}`, { description: `Report number ${i}.`, inputSchema: { month: z.string() } }, async () => ({ content: [{ type: 'text', text: 'ok' }] }))
  }
  return server
}

if (role === 'upstream') {
  // argv: upstream <gateway issuer> <gateway JWKS URL>; the audience is this server's own URL.
  const upstream = createServer((req, res) => {
    const chunks = []
    req.on('data', c => chunks.push(c))
    req.on('end', async () => {
      const path = new URL(req.url, 'http://x').pathname
      const body = chunks.length > 0 ? JSON.parse(Buffer.concat(chunks).toString()) : undefined
      if (path === '/mcp') {
        const refusal = await checkNodeRequest(verifier, req, body)
        if (refusal !== undefined) { res.writeHead(refusal.status, { 'content-type': 'application/json' }); res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32001, message: refusal.message } })); return }
      } else if (path !== '/direct') { res.writeHead(404); res.end(); return }
      if (req.method !== 'POST') { res.writeHead(405); res.end(); return }
      const server = mcpServer()
      const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true })
      res.on('close', () => { void transport.close(); void server.close() })
      await server.connect(transport)
      await transport.handleRequest(req, res, body)
    })
  })
  await new Promise(resolve => upstream.listen(0, '127.0.0.1', resolve))
  const verifier = createUpstreamVerifier({ issuer: arg1, audience: `http://127.0.0.1:${upstream.address().port}/mcp`, jwksUri: arg2 })
  process.on('message', (msg) => { if (msg === 'stop') { upstream.closeAllConnections(); upstream.close(); process.exit(0) } })
  process.send({ ready: true, port: upstream.address().port })
} else {
  // argv: gateway <issuer public key PEM> <upstream port> <gateway port>
  const dir = mkdtempSync(join(tmpdir(), 'mcpw-bench-e2e-'))
  writeFileSync(join(dir, 'issuer.pub.pem'), arg1)
  const upstreamPort = Number(arg2)
  const gatewayPort = Number(arg3)
  const config = validateConfig({
    listen: { host: '127.0.0.1', port: gatewayPort },
    identity: { issuer: 'https://idp.bench', publicKeyFile: join(dir, 'issuer.pub.pem'), algorithms: ['EdDSA'] },
    authorization: { schema: join(root, 'cedar/schema.cedarschema'), policies: join(root, 'cedar/policies'), watch: false },
    tokens: { keysDir: join(dir, 'keys') },
    toolScan: { pins: join(dir, 'pins.json') },
    upstreams: { db: { url: `http://127.0.0.1:${upstreamPort}/mcp`, tools: { database_query: { sensitivity: 'low', readOnly: true } } } },
    audit: { destination: join(dir, 'audit.log') },
    logLevel: 'silent'
  })
  const app = await buildGateway(config, { logger: false })
  const samples = new Map()
  app.addHook('onResponse', async (request) => {
    for (const [stage, ns] of stagesOf(request)) {
      let a = samples.get(stage)
      if (a === undefined) { a = []; samples.set(stage, a) }
      a.push(Number(ns) / 1000)
    }
  })
  await app.listen({ host: '127.0.0.1', port: gatewayPort })
  process.on('message', async (msg) => {
    if (msg === 'reset') { samples.clear(); process.send({ reset: true }) }
    if (msg === 'stages') process.send({ stages: Object.fromEntries(samples) })
    if (msg === 'stop') { await app.close(); process.exit(0) }
  })
  process.send({ ready: true, gateway: `http://127.0.0.1:${gatewayPort}/servers/db/mcp`, resource: `${config.publicUrl}/servers/db/mcp`, issuer: config.tokens.issuer })
}
