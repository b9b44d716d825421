// The bench's servers, each in a child process of its own:
// - `upstream`: two MCP upstreams on one port. `/sdk/direct` and `/sdk/mcp` are the SDK server
//   (stateless Streamable HTTP, a fresh McpServer per request as the SDK's stateless example
//   does); `/sdk/mcp` checks the gateway's ephemeral token with mcp-warden/upstream, `/sdk/direct`
//   checks nothing. `/raw` is a minimal node:http responder that answers initialize, tools/list
//   and tools/call from prepared bytes and checks nothing, so that the gateway, not the
//   upstream, is the bottleneck.
// - `gateway <tier> <raw|sdk>`: the gateway at one rung of the ladder, in front of one of them
//   as server `db` (the name the shipped policies give the database tools):
//     bare      mcp-context + mcp-proxy, with a fixed identity and an allow-all decision
//               (stand-ins registered under the identity and Cedar plugins' names);
//     identity  + the identity plugin (JWT verified, audience per server);
//     cedar     + the Cedar plugin with the shipped policies;
//     full      buildGateway: + tool filter, rate limits, ephemeral token per call, audit to a file;
//     traced    the full chain with OpenTelemetry traces on: every request's spans exported over
//               OTLP/HTTP (to the upstream process's `/v1/traces`, which accepts and drops them);
//     console   the full chain with the admin listener and the operator console enabled (each
//               record indexed, each agent's identity remembered for the playground);
//     baseline  the full chain of another build (bench/run.mjs --baseline DIR: a checkout of an
//               earlier commit with its dist/ built), to compare two builds side by side.
// Each process reports its address, and, when asked, the CPU time it spent since the last
// `reset`; the gateway also reports the per-stage timings it recorded, and its memory.
import { createServer } from 'node:http'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Session } from 'node:inspector/promises'
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { z } from 'zod'
import {
  buildGateway, validateConfig, mcpContextPlugin, mcpProxyPlugin, identityPlugin, cedarAuthzPlugin, storePlugin,
  identityFromClaims, createGatewayTokens, stagesOf
} from '../../dist/lib/index.js'
import { checkNodeRequest, createUpstreamVerifier } from '../../dist/lib/upstream.js'

const root = new URL('../../', import.meta.url).pathname
const [role, ...args] = process.argv.slice(2) // see each role's argv below

const ROWS = [{ id: 1, name: 'Ada Lovelace', tier: 'gold' }, { id: 2, name: 'Alan Turing', tier: 'silver' }, { id: 3, name: 'Grace Hopper', tier: 'gold' }]
export const REPORT_TOOLS = 20
/** MCPW_BENCH_RAW_DELAY_MS: the raw responder answers this much later (to compare load levels). */
const RAW_DELAY_MS = Number(process.env.MCPW_BENCH_RAW_DELAY_MS ?? 0)

/** CPU time of this process (all threads) since the last reset, in µs. */
function cpuMeter () {
  let start = process.cpuUsage()
  return {
    reset () { start = process.cpuUsage() },
    read () { const d = process.cpuUsage(start); return d.user + d.system }
  }
}

function mcpServer () {
  const server = new McpServer({ name: 'bench-db', version: '1.0.0' })
  server.registerTool('database_query', { description: 'Run a read-only SQL statement.', inputSchema: { sql: z.string() }, annotations: { readOnlyHint: true } },
    async () => ({ content: [{ type: 'text', text: JSON.stringify(ROWS) }] }))
  for (let i = 0; i < REPORT_TOOLS; i++) {
    server.registerTool(`report_${i}`, { description: `Report number ${i}.`, inputSchema: { month: z.string() } }, async () => ({ content: [{ type: 'text', text: 'ok' }] }))
  }
  return server
}

/** The raw responder's answers, by method, as bytes once: `{"jsonrpc":"2.0","id":` + id + rest. */
function rawAnswers () {
  const tools = [{ name: 'database_query', description: 'Run a read-only SQL statement.', inputSchema: { type: 'object', properties: { sql: { type: 'string' } }, required: ['sql'] }, annotations: { readOnlyHint: true } }]
  for (let i = 0; i < REPORT_TOOLS; i++) tools.push({ name: `report_${i}`, description: `Report number ${i}.`, inputSchema: { type: 'object', properties: { month: { type: 'string' } }, required: ['month'] } })
  const tail = (result) => `,"result":${JSON.stringify(result)}}`
  return {
    initialize: tail({ protocolVersion: '2025-06-18', capabilities: { tools: {} }, serverInfo: { name: 'bench-raw', version: '1.0.0' } }),
    'tools/list': tail({ tools }),
    'tools/call': tail({ content: [{ type: 'text', text: JSON.stringify(ROWS) }] }),
    ping: tail({})
  }
}

if (role === 'upstream') {
  // argv: upstream <gateway issuer> <gateway JWKS URL>; /sdk/mcp's audience is its own URL.
  const cpu = cpuMeter()
  const answers = rawAnswers()
  let sessions = 0
  const upstream = createServer((req, res) => {
    const chunks = []
    req.on('data', c => chunks.push(c))
    req.on('end', async () => {
      const path = req.url.split('?')[0]
      const body = chunks.length > 0 && req.url !== '/v1/traces' ? JSON.parse(Buffer.concat(chunks).toString()) : undefined
      if (path === '/v1/traces') { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); return }
      if (path === '/raw') {
        if (req.method !== 'POST' || body === undefined || Array.isArray(body)) { res.writeHead(405); res.end(); return }
        if (body.id === undefined) { res.writeHead(202); res.end(); return } // a notification
        const tail = answers[body.method]
        if (tail === undefined) { res.writeHead(200, { 'content-type': 'application/json' }); res.end(`{"jsonrpc":"2.0","id":${JSON.stringify(body.id)},"error":{"code":-32601,"message":"Method not found"}}`); return }
        const headers = { 'content-type': 'application/json' }
        // initialize opens a session (the bench's memory phase counts them in the gateway).
        if (body.method === 'initialize') headers['mcp-session-id'] = `s-${++sessions}-${randomUUID()}`
        const answer = () => { res.writeHead(200, headers); res.end(`{"jsonrpc":"2.0","id":${JSON.stringify(body.id)}${tail}`) }
        if (RAW_DELAY_MS > 0) setTimeout(answer, RAW_DELAY_MS)
        else answer()
        return
      }
      if (path === '/sdk/mcp') {
        const refusal = await checkNodeRequest(verifier, req, body)
        if (refusal !== undefined) { res.writeHead(refusal.status, { 'content-type': 'application/json' }); res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32001, message: refusal.message } })); return }
      } else if (path !== '/sdk/direct') { res.writeHead(404); res.end(); return }
      if (req.method !== 'POST') { res.writeHead(405); res.end(); return }
      const server = mcpServer()
      const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true })
      res.on('close', () => { void transport.close(); void server.close() })
      await server.connect(transport)
      await transport.handleRequest(req, res, body)
    })
  })
  upstream.keepAliveTimeout = 60_000
  let connections = 0
  upstream.on('connection', () => { connections++ })
  await new Promise(resolve => upstream.listen(0, '127.0.0.1', resolve))
  const verifier = createUpstreamVerifier({ issuer: args[0], audience: `http://127.0.0.1:${upstream.address().port}/sdk/mcp`, jwksUri: args[1] })
  process.on('message', (msg) => {
    if (msg === 'reset') { cpu.reset(); connections = 0; process.send({ reset: true }) }
    if (msg === 'cpu') process.send({ cpu: cpu.read(), connections })
    if (msg === 'stop') { upstream.closeAllConnections(); upstream.close(); process.exit(0) }
  })
  process.send({ ready: true, port: upstream.address().port })
} else if (role === 'gateway') {
  // argv: gateway <tier> <raw|sdk> <issuer public key PEM> <upstream port> <gateway port>
  const [tier, kind, publicKeyPem, upstreamPort, gatewayPort] = args
  const dir = mkdtempSync(join(tmpdir(), `mcpw-bench-${tier}-${kind}-`))
  writeFileSync(join(dir, 'issuer.pub.pem'), publicKeyPem)
  const full = tier === 'full' || tier === 'console' || tier === 'traced' || tier === 'baseline'
  const auth = full ? { type: 'ephemeral' } : { type: 'none' }
  const up = `http://127.0.0.1:${upstreamPort}`
  const tools = { database_query: { sensitivity: 'low', readOnly: true } }
  // The baseline rung builds its gateway with the other build's code, from the same config.
  const lib = tier === 'baseline' ? await import(join(process.env.MCPW_BENCH_BASELINE, 'dist/lib/index.js')) : { buildGateway, validateConfig }
  const config = lib.validateConfig({
    listen: { host: '127.0.0.1', port: Number(gatewayPort) },
    publicUrl: `http://127.0.0.1:${gatewayPort}`,
    identity: { issuer: 'https://idp.bench', publicKeyFile: join(dir, 'issuer.pub.pem'), algorithms: ['EdDSA'] },
    authorization: { schema: join(root, 'cedar/schema.cedarschema'), policies: join(root, 'cedar/policies'), watch: false },
    tokens: { keysDir: join(dir, 'keys') },
    toolScan: { pins: join(dir, 'pins.json') },
    // Only the full rung's tokens are checked by the SDK upstream (it knows that gateway's JWKS).
    upstreams: { db: { url: kind === 'raw' ? `${up}/raw` : `${up}/sdk/${tier === 'full' ? 'mcp' : 'direct'}`, auth, tools } },
    limits: { maxSessionsPerAgent: 100_000 },
    audit: { destination: join(dir, 'audit.log') },
    ...(tier === 'console' ? { admin: { listen: { host: '127.0.0.1', port: 0 } }, console: { enabled: true } } : {}),
    ...(tier === 'traced' ? { telemetry: { otlp: { endpoint: up } } } : {}),
    logLevel: 'silent'
  })
  const app = full ? await lib.buildGateway(config, { logger: false }) : await ladderGateway(tier, config)
  const samples = new Map()
  app.addHook('onResponse', async (request) => {
    for (const [stage, ns] of stagesOf(request)) {
      let a = samples.get(stage)
      if (a === undefined) { a = []; samples.set(stage, a) }
      a.push(Number(ns) / 1000)
    }
  })
  await app.listen({ host: '127.0.0.1', port: Number(gatewayPort) })
  const cpu = cpuMeter()
  let profiler
  const loop = monitorEventLoopDelay({ resolution: 10 })
  loop.enable()
  process.on('message', async (msg) => {
    if (msg === 'reset') { samples.clear(); cpu.reset(); loop.reset(); process.send({ reset: true }) }
    if (msg === 'cpu') process.send({ cpu: cpu.read() })
    if (msg === 'stages') process.send({ stages: Object.fromEntries(samples) })
    if (msg === 'vitals') {
      // Event-loop delay since the last `vitals`, in ms; memory now, in MiB.
      const m = process.memoryUsage()
      process.send({ vitals: { rssMiB: +(m.rss / 2 ** 20).toFixed(1), heapMiB: +(m.heapUsed / 2 ** 20).toFixed(1), loopP50ms: +(loop.percentile(50) / 1e6).toFixed(2), loopP99ms: +(loop.percentile(99) / 1e6).toFixed(2), loopMaxMs: +(loop.max / 1e6).toFixed(2) } })
      loop.reset()
    }
    if (msg === 'gc') { globalThis.gc?.(); process.send({ gc: true }) }
    // A CPU profile of the measured window only (not the start-up and warm-up).
    if (msg === 'profile-start') {
      profiler = new Session()
      profiler.connect()
      await profiler.post('Profiler.enable')
      await profiler.post('Profiler.start')
      process.send({ profiling: true })
    }
    if (typeof msg === 'object' && msg !== null && 'profileTo' in msg) {
      const { profile } = await profiler.post('Profiler.stop')
      profiler.disconnect()
      writeFileSync(msg.profileTo, JSON.stringify(profile))
      process.send({ profiled: msg.profileTo })
    }
    if (msg === 'stop') { await app.close(); process.exit(0) }
  })
  process.send({ ready: true, origin: `http://127.0.0.1:${gatewayPort}`, publicUrl: config.publicUrl })
}

/**
 * The lower rungs: the same plugins buildGateway registers, fewer of them. Where a rung leaves
 * identity or Cedar out, a stand-in registered under that plugin's name gives every request a
 * fixed identity or an allow decision, which is what the proxy needs to run; nothing is verified
 * or decided on those rungs.
 */
async function ladderGateway (tier, config) {
  const app = Fastify({ logger: false, bodyLimit: config.limits.maxBodyBytes, genReqId: () => randomUUID() })
  await app.register(mcpContextPlugin, { config })
  await app.register(storePlugin, { config })
  if (tier === 'bare') {
    const fixed = identityFromClaims({ iss: 'https://idp.bench', sub: 'bench-agent', agentId: 'bench-agent', roles: ['analyst'] }, config.identity)
    await app.register(fp(async (a) => {
      a.decorateRequest('identity', null)
      a.addHook('onRequest', async (request) => { if (request.mcpTarget !== null) request.identity = fixed })
    }, { name: 'mcp-warden-identity', fastify: '5.x' }))
  } else {
    await app.register(identityPlugin, { config, tokens: createGatewayTokens(config.tokens, app.log) })
  }
  if (tier === 'cedar') {
    await app.register(cedarAuthzPlugin, { config })
  } else {
    const allow = Object.freeze({ decisionId: 'bench', outcome: 'allow', allowed: true, policies: [], advice: [], errors: [], reason: 'bench: no policy on this rung', policyVersion: 'bench' })
    await app.register(fp(async (a) => {
      a.decorateRequest('decision', null)
      a.addHook('preHandler', async (request) => { if (request.mcpTarget !== null) request.decision = allow })
    }, { name: 'mcp-warden-cedar-authz', fastify: '5.x' }))
  }
  await app.register(mcpProxyPlugin, { config })
  return app
}
