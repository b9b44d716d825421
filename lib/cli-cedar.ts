/**
 * `mcp-warden cedar …`: tools for policy authors — validate, test, explain, format, schema.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { parseOptions } from './cli-args.js'
import * as cedar from '@cedar-policy/cedar-wasm/nodejs'
import { loadConfig, type GatewayConfig } from './config.js'
import { compilePolicySet, CedarEngine, readPolicySource, type AuthzRequest } from './cedar/engine.js'
import { runCedarTests } from './cedar/run-tests.js'
import { listUpstreamTools, schemaWithToolActions } from './cedar/schema-gen.js'
import { explainLines } from './cedar/explain.js'
import { demoConfig } from './demo/config.js'
import { identityFromClaims, verifyAgentToken } from './identity.js'
import { PACKAGE_ROOT } from './version.js'
import { KeyRing } from './tokens/keys.js'
import { TokenMinter } from './tokens/minter.js'
import { mintingFetch } from './tokens/fetch.js'
import { startStdioBridges } from './stdio-bridge.js'
import { targetRequest, type TargetKind } from './mcp-methods.js'

export interface Io { out: (line: string) => void, err: (line: string) => void }

export class CedarUsageError extends Error {}

export const CEDAR_HELP = `Usage: mcp-warden cedar <command> [options]

Tools for policy authors. Policy files are read from --policies (a folder of *.cedar),
the schema from --schema; --config FILE takes both from a gateway config. With neither,
the shipped reference schema and policies are used.

Commands:
  validate                  parse and validate (strict) the policy set against the schema
  test [FILES...]           run Cedar test files (Cedar CLI run-tests format);
                            default: the tests folder beside the policy folder
  explain --token JWT --server NAME (--tool T [--args JSON] | --uri U | --prompt P | --method M)
          [--at ISO-TIME] [--json]
                            decide one request and show the determining policies and advice
  format [FILES...] [--check | --write]
                            format policy files (default: print them formatted)
  schema --config FILE [--out FILE]
                            ask each upstream for its tools and write a schema with one action
                            per tool, typed arguments included, for argument-level policies

Options:
  --config FILE     a gateway config (authorization.schema / .policies, identity, upstreams)
  --schema FILE     a Cedar schema (.cedarschema)
  --policies DIR    a folder of .cedar files`

const SHIPPED = { schema: join(PACKAGE_ROOT, 'cedar', 'schema.cedarschema'), policies: join(PACKAGE_ROOT, 'cedar', 'policies') }

function files (paths: string[], fallbackDir: string, ext: string): string[] {
  if (paths.length > 0) return paths.map(p => resolve(p))
  let names: string[]
  try { names = readdirSync(fallbackDir).filter(n => n.endsWith(ext)).sort() } catch {
    throw new CedarUsageError(`no files given and ${fallbackDir} cannot be read`)
  }
  return names.map(n => join(fallbackDir, n))
}

export async function cedarCommand (args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args
  const { values: v, positionals } = parseOptions(rest, {
    config: { type: 'string' }, schema: { type: 'string' }, policies: { type: 'string' },
    token: { type: 'string' }, server: { type: 'string' }, tool: { type: 'string' }, args: { type: 'string' },
    uri: { type: 'string' }, prompt: { type: 'string' }, method: { type: 'string' }, at: { type: 'string' },
    json: { type: 'boolean' }, check: { type: 'boolean' }, write: { type: 'boolean' }, out: { type: 'string' },
    'data-dir': { type: 'string' }
  }, m => new CedarUsageError(m))
  if (sub === undefined || sub === 'help' || sub === '--help' || v.help === true) { io.out(CEDAR_HELP); return sub === undefined ? 1 : 0 }

  const str = (k: string): string | undefined => typeof v[k] === 'string' ? v[k] : undefined
  let config: GatewayConfig | undefined
  if (str('config') !== undefined) config = loadConfig(str('config')!)
  const schemaFile = str('schema') !== undefined ? resolve(str('schema')!) : config?.authorization.schema ?? SHIPPED.schema
  const policiesDir = str('policies') !== undefined ? resolve(str('policies')!) : config?.authorization.policies ?? SHIPPED.policies

  switch (sub) {
    case 'validate': {
      const set = compilePolicySet(readPolicySource(schemaFile, policiesDir))
      for (const w of set.warnings) io.out(`warning: ${w}`)
      io.out(`ok: ${set.policyIds.length} policies valid against ${schemaFile} (version ${set.version})`)
      return 0
    }
    case 'test': {
      const source = readPolicySource(schemaFile, policiesDir)
      const testFiles = files(positionals, join(policiesDir, '..', 'tests'), '.json')
      let passed = 0
      let failed = 0
      for (const file of testFiles) {
        let cases: unknown
        try { cases = JSON.parse(readFileSync(file, 'utf8')) } catch (err) {
          throw new CedarUsageError(`${file}: ${(err as Error).message}`)
        }
        if (!Array.isArray(cases)) throw new CedarUsageError(`${file}: a test file is a JSON array of test cases`)
        io.out(`${file}: running ${cases.length} test(s)`)
        for (const r of runCedarTests(source, cases)) {
          io.out(`  test ${r.name} ... ${r.ok ? 'ok' : `fail: ${r.message}`}`)
          if (r.ok) passed++
          else failed++
        }
      }
      io.out(`results: ${passed} passed, ${failed} failed`)
      return failed === 0 ? 0 : 1
    }
    case 'explain': {
      const cfg = config ?? demoConfig({ dataDir: resolve(str('data-dir') ?? join('.mcp-warden', 'demo')), urls: { db: 'http://127.0.0.1:1/mcp', file: 'http://127.0.0.1:1/mcp', api: 'http://127.0.0.1:1/mcp' } })
      const token = str('token')
      const serverName = str('server')
      if (token === undefined || serverName === undefined) throw new CedarUsageError('explain needs --token and --server')
      const server = cfg.upstreams.get(serverName)
      if (server === undefined) throw new CedarUsageError(`no upstream named ${serverName} (configured: ${[...cfg.upstreams.keys()].join(', ')})`)
      const identity = identityFromClaims(await verifyAgentToken(token, cfg.identity), cfg.identity)
      let args: Record<string, unknown> | undefined
      if (str('args') !== undefined) {
        try { args = JSON.parse(str('args')!) as Record<string, unknown> } catch { throw new CedarUsageError('--args must be a JSON object') }
      }
      const now = str('at') !== undefined ? new Date(str('at')!) : new Date()
      if (Number.isNaN(now.getTime())) throw new CedarUsageError('--at must be an ISO date-time, e.g. 2026-11-26T10:00:00+09:00')
      const kind: TargetKind | undefined = str('tool') !== undefined ? 'tool' : str('uri') !== undefined ? 'resource' : str('prompt') !== undefined ? 'prompt' : undefined
      const target = kind !== undefined ? targetRequest(kind, str(kind === 'resource' ? 'uri' : kind)!) : { action: 'connect' as const, method: 'tools/list' }
      const request: AuthzRequest = {
        identity, server, now, ...target,
        ...(str('method') !== undefined ? { method: str('method')! } : {}),
        ...(args !== undefined ? { arguments: args } : {})
      }
      const engine = new CedarEngine(compilePolicySet(readPolicySource(schemaFile, policiesDir)), cfg.authorization.timezone)
      const decision = engine.authorize(request)
      if (v.json === true) {
        io.out(JSON.stringify(decision, null, 2))
      } else {
        for (const line of explainLines(engine, request, decision)) io.out(line)
      }
      return decision.allowed ? 0 : 3
    }
    case 'format': {
      const targets = files(positionals, policiesDir, '.cedar')
      let changed = 0
      for (const file of targets) {
        const text = readFileSync(file, 'utf8')
        const answer = cedar.formatPolicies({ policyText: text, lineWidth: 100, indentWidth: 2 })
        if (answer.type === 'failure') throw new CedarUsageError(`${file}: ${answer.errors.map(e => e.message).join('; ')}`)
        const formatted = answer.formatted_policy.endsWith('\n') ? answer.formatted_policy : answer.formatted_policy + '\n'
        if (formatted === text) continue
        changed++
        if (v.check === true) io.out(`${file}: not formatted`)
        else if (v.write === true) { writeFileSync(file, formatted); io.out(`${file}: formatted`) } else io.out(`// ${file}\n${formatted}`)
      }
      if (v.check === true) { io.out(changed === 0 ? `ok: ${targets.length} file(s) formatted` : `${changed} file(s) need formatting`); return changed === 0 ? 0 : 1 }
      return 0
    }
    case 'schema': {
      if (config === undefined) throw new CedarUsageError('schema needs --config (the upstreams to ask for their tools)')
      const tools = new Map<string, Awaited<ReturnType<typeof listUpstreamTools>>>()
      // Upstreams that expect the gateway's ephemeral tokens get them, minted with its keys.
      const needsTokens = [...config.upstreams.values()].some(u => u.auth.type === 'ephemeral')
      const minter = needsTokens ? new TokenMinter(new KeyRing(config.tokens.keysDir, config.tokens.ttlSeconds), config.tokens) : null
      // stdio upstreams are spawned for the time of the listing.
      const bridged = await startStdioBridges(config, { info () {}, warn () {} })
      try {
        for (const u of bridged.config.upstreams.values()) {
          try {
            tools.set(u.name, await listUpstreamTools(u.url, u.auth.type === 'ephemeral' ? mintingFetch(minter!, u.resource, { agentId: 'mcp-warden-cli', userId: null }) : undefined))
          } catch (err) {
            throw new CedarUsageError(`upstream ${u.name} (${u.stdio !== undefined ? u.stdio.command.join(' ') : u.url}): cannot list its tools: ${(err as Error).message}`)
          }
        }
      } finally {
        await bridged.close()
      }
      const text = schemaWithToolActions(readFileSync(schemaFile, 'utf8'), tools)
      if (str('out') !== undefined) {
        writeFileSync(resolve(str('out')!), text)
        io.out(`wrote ${resolve(str('out')!)}: ${[...tools].map(([s, t]) => `${s} (${t.length} tools)`).join(', ')}`)
      } else {
        io.out(text)
      }
      return 0
    }
    default:
      throw new CedarUsageError(`unknown cedar command "${sub}"\n\n${CEDAR_HELP}`)
  }
}
