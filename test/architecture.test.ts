/**
 * docs/architecture.md's pipeline table says, per stage, which plugin runs it, in which hook and
 * what it decorates. This test registers every plugin the way buildGateway does, records which
 * request hooks each one adds and what it decorates, and holds the table to it: a hook added or
 * moved without the table (or the table without the code) fails here.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { validateConfig } from '../lib/config.js'
import metricsPlugin from '../plugins/metrics.js'
import auditPlugin from '../plugins/audit.js'
import mcpContextPlugin from '../plugins/mcp-context.js'
import storePlugin from '../plugins/store.js'
import identityPlugin from '../plugins/identity.js'
import cedarAuthzPlugin from '../plugins/cedar-authz.js'
import toolFilterPlugin from '../plugins/tool-filter.js'
import rateLimitPlugin from '../plugins/rate-limit.js'
import ephemeralTokenPlugin from '../plugins/ephemeral-token.js'
import tokenExchangePlugin from '../plugins/token-exchange.js'
import upstreamSecretPlugin from '../plugins/upstream-secret.js'
import mcpProxyPlugin from '../plugins/mcp-proxy.js'
import { makeIssuer } from './fixtures/keys.js'
import { ALLOW_ALL, publicKeyFile } from './fixtures/gateway.js'

const ROOT = new URL('../', import.meta.url).pathname
process.env.MCPW_TEST_ARCH_SECRET = 'arch-test-secret'
const REQUEST_HOOKS = ['onRequest', 'preParsing', 'preValidation', 'preHandler', 'preSerialization', 'onSend', 'onResponse', 'onError', 'onTimeout', 'onRequestAbort'] as const

/** plugin name → hooks, decorations written, decorations read and lib modules, as the pipeline table states them. */
function documented (): { hooks: Map<string, Set<string>>, decorates: Map<string, Set<string>>, reads: Map<string, Set<string>>, libs: Set<string> } {
  const text = readFileSync(join(ROOT, 'docs', 'architecture.md'), 'utf8')
  const section = text.slice(text.indexOf('## The pipeline of an MCP route'), text.indexOf('## Composing the plugins'))
  const hooks = new Map<string, Set<string>>()
  const decorates = new Map<string, Set<string>>()
  const reads = new Map<string, Set<string>>()
  const libs = new Set<string>()
  for (const line of section.split('\n')) {
    const cells = line.split('|').map(c => c.trim())
    const plugin = /^`(mcp-warden-[a-z-]+)`$/.exec(cells[2] ?? '')?.[1]
    if (plugin === undefined) continue
    const h = hooks.get(plugin) ?? new Set<string>()
    for (const name of REQUEST_HOOKS) if (new RegExp(`\\b${name}\\b`).test(cells[3] ?? '')) h.add(name)
    if (/\bhandler\b/.test(cells[3] ?? '')) h.add('handler')
    hooks.set(plugin, h)
    const d = decorates.get(plugin) ?? new Set<string>()
    for (const m of (cells[4] ?? '').matchAll(/`((?:request|app\.mcpWarden)\.[A-Za-z]+)`/g)) d.add(m[1]!)
    decorates.set(plugin, d)
    const r = reads.get(plugin) ?? new Set<string>()
    for (const m of (cells[5] ?? '').matchAll(/`((?:request|app\.mcpWarden)\.[A-Za-z]+)`/g)) r.add(m[1]!)
    reads.set(plugin, r)
    for (const m of (cells[6] ?? '').matchAll(/`(lib\/[a-z/-]+\.ts)`/g)) libs.add(m[1]!)
  }
  return { hooks, decorates, reads, libs }
}

/** Registers the plugins in buildGateway's order on an instance whose addHook records the plugin adding each hook. */
async function registered (): Promise<{ app: FastifyInstance, hooks: Map<string, Set<string>>, requestDecorations: Map<string, Set<string>> }> {
  const issuer = makeIssuer('EdDSA')
  const config = validateConfig({
    publicUrl: 'http://127.0.0.1:1',
    identity: { issuer: issuer.issuer, publicKeyFile: publicKeyFile(issuer), algorithms: ['EdDSA'] },
    authorization: ALLOW_ALL,
    tokens: { keysDir: mkdtempSync(join(tmpdir(), 'mcpw-keys-')) },
    toolScan: { pins: join(mkdtempSync(join(tmpdir(), 'mcpw-pins-')), 'pins.json') },
    rateLimit: { max: 100, timeWindow: '1 minute' },
    // One upstream of each credential type, so that every credential plugin adds its hook.
    upstreams: {
      up: { url: 'http://127.0.0.1:1/mcp', auth: { type: 'ephemeral' } },
      exchanged: { url: 'http://127.0.0.1:1/mcp', auth: { type: 'exchange', tokenEndpoint: 'http://127.0.0.1:1/token', clientId: 'gateway', clientSecret: 'env:MCPW_TEST_ARCH_SECRET' } },
      vaulted: { url: 'http://127.0.0.1:1/mcp', auth: { type: 'secret', secret: 'env:MCPW_TEST_ARCH_SECRET' } }
    }
  })
  const app = Fastify()
  const hooks = new Map<string, Set<string>>()
  const requestDecorations = new Map<string, Set<string>>()
  const current = (instance: FastifyInstance, inherit = false): string => {
    // The innermost mcp-warden plugin of the chain that is adding the hook. An encapsulated scope
    // a plugin registers starts a chain of its own: its hooks apply to its own routes only (the
    // token endpoint's), not to the MCP routes, so only a route looks in its parents.
    for (let i: FastifyInstance | null = instance; i !== null; i = inherit ? Object.getPrototypeOf(i) as FastifyInstance | null : null) {
      const chain = typeof i.pluginName === 'string' ? i.pluginName.split(' -> ') : []
      const found = [...chain].reverse().find(n => n.startsWith('mcp-warden-'))
      if (found !== undefined) return found
    }
    return ''
  }
  const addHook = app.addHook
  const decorateRequest = app.decorateRequest
  const patch = (instance: FastifyInstance): void => {
    instance.addHook = function (this: FastifyInstance, name: string, fn: unknown) {
      const set = hooks.get(current(this)) ?? new Set<string>()
      set.add(name)
      hooks.set(current(this), set)
      return (addHook as (this: FastifyInstance, n: string, f: unknown) => FastifyInstance).call(this, name, fn)
    } as FastifyInstance['addHook']
    instance.decorateRequest = function (this: FastifyInstance, name: string | symbol, value: unknown) {
      const set = requestDecorations.get(current(this)) ?? new Set<string>()
      set.add(`request.${String(name)}`)
      requestDecorations.set(current(this), set)
      return (decorateRequest as (this: FastifyInstance, n: string | symbol, v: unknown) => FastifyInstance).call(this, name, value)
    } as FastifyInstance['decorateRequest']
  }
  patch(app)
  // The plugin whose scope registers the MCP route's handler.
  app.addHook('onRoute', function (this: FastifyInstance, opts) {
    if (opts.config?.mcp !== true) return
    const set = hooks.get(current(this, true)) ?? new Set<string>()
    set.add('handler')
    hooks.set(current(this, true), set)
  })
  await app.register(metricsPlugin, { config })
  await app.register(auditPlugin, { config })
  await app.register(mcpContextPlugin, { config })
  await app.register(storePlugin, { config })
  await app.register(identityPlugin, { config })
  await app.register(cedarAuthzPlugin, { config })
  await app.register(toolFilterPlugin, { config })
  await app.register(rateLimitPlugin, { config })
  await app.register(ephemeralTokenPlugin, { config })
  await app.register(tokenExchangePlugin, { config })
  await app.register(upstreamSecretPlugin, { config })
  await app.register(mcpProxyPlugin, { config })
  await app.ready()
  return { app, hooks, requestDecorations }
}

t.test('the pipeline table names each plugin\'s request hooks, and only those', async t => {
  const doc = documented()
  const { app, hooks } = await registered()
  t.teardown(async () => { await app.close() })
  t.ok(doc.hooks.size >= 10, `the table lists the plugins (${[...doc.hooks.keys()].join(', ')})`)
  for (const [plugin, stated] of doc.hooks) {
    // The store's check runs only with a shared (Redis) store, as its row says; test/redis-store.test.ts covers it.
    if (plugin === 'mcp-warden-store') continue
    const actual = new Set([...(hooks.get(plugin) ?? [])].filter(h => h === 'handler' || (REQUEST_HOOKS as readonly string[]).includes(h)))
    t.same([...actual].sort(), [...stated].sort(), `${plugin}: the hooks in docs/architecture.md are the hooks it adds`)
  }
  for (const [plugin, added] of hooks) {
    const request = [...added].filter(h => (REQUEST_HOOKS as readonly string[]).includes(h))
    if (plugin.startsWith('mcp-warden-') && request.length > 0 && plugin !== 'mcp-warden-metrics') {
      t.ok(doc.hooks.has(plugin), `${plugin} adds request hooks (${request.join(', ')}), so the table has a row for it`)
    }
  }
})

t.test('what the table says a plugin decorates, it decorates', async t => {
  const doc = documented()
  const { app, requestDecorations } = await registered()
  t.teardown(async () => { await app.close() })
  for (const [plugin, stated] of doc.decorates) {
    for (const d of stated) {
      if (d.startsWith('request.')) {
        // Written (or, for the proxy, read) by this stage: a request decoration; one this plugin
        // writes is declared by it (the fields several plugins share are declared by the first).
        t.ok(app.hasRequestDecorator(d.slice('request.'.length)), `${plugin}: ${d} is a request decoration`)
        const shared = ['request.upstreamAuth', 'request.mcpResponseTransform', 'request.mcpListAnswer'].includes(d)
        if (plugin !== 'mcp-warden-proxy' && !shared) t.ok(requestDecorations.get(plugin)?.has(d), `${plugin} declares ${d}`)
      } else {
        const key = d.slice('app.mcpWarden.'.length) as keyof FastifyInstance['mcpWarden']
        t.not(app.mcpWarden[key], undefined, `${plugin}: ${d} is provided`)
      }
    }
  }
})

t.test('what the table says a stage reads is declared, and the lib modules it names exist', async t => {
  const doc = documented()
  const { app } = await registered()
  t.teardown(async () => { await app.close() })
  for (const [plugin, read] of doc.reads) {
    for (const d of read) {
      if (d.startsWith('request.')) t.ok(app.hasRequestDecorator(d.slice('request.'.length)), `${plugin} reads ${d}, a request decoration`)
      else t.not(app.mcpWarden[d.slice('app.mcpWarden.'.length) as keyof FastifyInstance['mcpWarden']], undefined, `${plugin} reads ${d}, which is provided`)
    }
  }
  t.ok(doc.libs.size >= 10, 'the table names the lib modules')
  for (const lib of doc.libs) t.ok(existsSync(join(ROOT, lib)), `${lib} exists`)
})
