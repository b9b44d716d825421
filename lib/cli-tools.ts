/**
 * `mcp-warden tools …`: the operator's side of tool pinning.
 */
import { resolve } from 'node:path'
import { parseOptions } from './cli-args.js'
import { loadConfig, type GatewayConfig } from './config.js'
import { listUpstreamTools } from './cedar/schema-gen.js'
import { KeyRing } from './tokens/keys.js'
import { TokenMinter } from './tokens/minter.js'
import { mintingFetch } from './tokens/fetch.js'
import { FilePinStore, type PinStore } from './tools/pins.js'
import { definitionDiff, type DefinitionDiffLine } from './tools/diff.js'
import { DEFAULT_RULES_FILE, loadRules, ToolScanner } from './tools/scanner.js'
import { RedisStore } from './stores/redis.js'
import { startStdioBridges } from './stdio-bridge.js'

export interface Io { out: (line: string) => void, err: (line: string) => void }
export class ToolsUsageError extends Error {}

export const TOOLS_HELP = `Usage: mcp-warden tools <command> [--config FILE | --pins FILE]

Tool pinning: the gateway pins each tool's definition the first time it sees it. A tool
whose definition changes later (a "rug pull") is quarantined — hidden and not callable —
until the change is approved; so is a new tool with toolScan.newTools: quarantine.

Commands:
  list                      pinned tools, each with its definition hash; a definition waiting
                            for approval is marked, and every finding of the scanner's rules is
                            shown (rule, where, excerpt)
  diff                      what changed, pinned (-) against new (+); exit 1 when changes wait
  approve SERVER/TOOL HASH  accept the waiting definition of one tool; HASH (or its first 12
                            characters, as list and diff show it) must be the definition you
                            reviewed, so that a later change is not approved unseen
  pin                       ask every upstream (--config) for its tools and pin them as they are now

Options:
  --config FILE   a gateway config (toolScan.pins, and the upstreams for pin)
  --pins FILE     the pins file (default ./.mcp-warden/pins.json)`

/** Unchanged lines shown around each change. */
const CONTEXT_LINES = 2

/** The changed lines of a diff with a little context, as `- `, `+ ` and `  ` lines; `  …` where lines are left out. */
function shownDiff (diff: readonly DefinitionDiffLine[]): string[] {
  const near = (i: number): boolean => diff.slice(Math.max(0, i - CONTEXT_LINES), i + CONTEXT_LINES + 1).some(l => l.op !== ' ')
  const out: string[] = []
  let skipped = false
  for (const [i, line] of diff.entries()) {
    if (line.op === ' ' && !near(i)) { skipped = true; continue }
    if (skipped && out.length > 0) out.push('  …')
    skipped = false
    out.push(`${line.op} ${line.text}`)
  }
  return out
}

export async function toolsCommand (args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args
  const { values, positionals } = parseOptions(rest, { config: { type: 'string' }, pins: { type: 'string' } }, m => new ToolsUsageError(m))
  if (sub === undefined || sub === 'help' || sub === '--help' || values.help === true) { io.out(TOOLS_HELP); return sub === undefined ? 1 : 0 }
  const config = typeof values.config === 'string' ? loadConfig(values.config) : undefined
  const file = typeof values.pins === 'string' ? resolve(values.pins) : config?.toolScan.pins ?? resolve('.mcp-warden/pins.json')
  // With `store: redis://…` the pins live in Redis, shared by every replica.
  const shared = typeof values.pins !== 'string' && config !== undefined && config.store !== 'memory' ? new RedisStore(config.store) : undefined
  try {
    if (shared !== undefined) await shared.ready()
    return await run(sub, shared?.pins ?? new FilePinStore(file), shared !== undefined ? 'the shared store' : file, config, positionals, io)
  } finally {
    await shared?.close()
  }
}

async function run (sub: string, store: PinStore, file: string, config: GatewayConfig | undefined, positionals: string[], io: Io): Promise<number> {
  switch (sub) {
    case 'list': {
      const entries = await store.entries()
      if (entries.size === 0) io.out(`no pinned tools in ${file}`)
      const scanner = new ToolScanner(loadRules([DEFAULT_RULES_FILE, ...(config?.toolScan.rules !== undefined ? [config.toolScan.rules] : [])], config?.toolScan.disable ?? []))
      for (const [key, e] of entries) {
        const state = e.pinned === undefined
          ? `NEW, waiting for approval: ${e.pending!.hash.slice(0, 12)} (seen ${e.pending!.at})`
          : `${e.pinned.hash.slice(0, 12)}  pinned ${e.pinned.at}${e.pending !== undefined ? `  CHANGED, waiting for approval: ${e.pending.hash.slice(0, 12)}` : ''}`
        io.out(`${key}  ${state}`)
        const shown = e.pending ?? e.pinned
        const findings = shown === undefined ? [] : scanner.scan(shown.definition)
        const waived = e.waived !== undefined && e.waived.hash === shown?.hash ? e.waived : undefined
        if (waived !== undefined && findings.length > 0) io.out(`    accepted despite its findings by ${waived.by} at ${waived.at}:`)
        for (const f of findings) io.out(`    ${waived !== undefined ? 'waived' : 'quarantined by'} ${f.rule} at ${f.path}: ${f.excerpt}`)
      }
      return 0
    }
    case 'diff': {
      let pending = 0
      for (const [key, e] of await store.entries()) {
        if (e.pending === undefined) continue
        pending++
        io.out(e.pinned === undefined
          ? `${key}: new since the upstream's tools were first pinned (${e.pending.hash.slice(0, 12)}, seen ${e.pending.at})`
          : `${key}: changed since pinned (${e.pinned.hash.slice(0, 12)} -> ${e.pending.hash.slice(0, 12)}, seen ${e.pending.at})`)
        for (const l of shownDiff(definitionDiff(e.pinned?.definition, e.pending.definition))) io.out(l)
      }
      if (pending === 0) io.out('no changes waiting for approval')
      return pending === 0 ? 0 : 1
    }
    case 'approve': {
      const [target, hash] = positionals
      const m = target === undefined ? null : /^([^/]+)\/(.+)$/.exec(target)
      if (target === undefined || m === null || hash === undefined || !/^[A-Za-z0-9_-]{8,}$/.test(hash)) {
        throw new ToolsUsageError('approve needs SERVER/TOOL and the definition hash you reviewed (at least 8 characters, as tools list or diff show it), e.g. approve db/database_query 3kJx9aQ0bT2c')
      }
      const waiting = (await store.entries()).get(target)?.pending
      if (waiting === undefined) { io.err(`nothing to approve for ${target}: no definition is waiting`); return 1 }
      if (!waiting.hash.startsWith(hash)) {
        io.err(`not approved: the definition waiting for ${target} is ${waiting.hash.slice(0, 12)}, not ${hash}; review it again (tools diff) before approving`)
        return 1
      }
      if (!await store.approve(m[1]!, m[2]!, waiting.hash)) { io.err(`not approved: the definition waiting for ${target} changed meanwhile; review it again`); return 1 }
      io.out(`approved ${target} (${waiting.hash.slice(0, 12)}): this definition is pinned; running gateways list it again`)
      return 0
    }
    case 'pin': {
      if (config === undefined) throw new ToolsUsageError('pin needs --config (the upstreams to ask)')
      const minter = new TokenMinter(new KeyRing(config.tokens.keysDir, config.tokens.ttlSeconds), config.tokens)
      const bridged = await startStdioBridges(config, { info () {}, warn () {} })
      try {
        for (const u of bridged.config.upstreams.values()) {
          if (u.auth.type === 'exchange' || u.auth.type === 'secret') { io.out(`${u.name}: skipped (auth ${u.auth.type}); its tools are pinned when the gateway first lists them`); continue }
          const tools = await listUpstreamTools(u.url, u.auth.type === 'ephemeral' ? mintingFetch(minter, u.resource, { agentId: 'mcp-warden-cli', userId: null }) : undefined)
          for (const tool of tools) await store.pin(u.name, tool)
          io.out(`${u.name}: pinned ${tools.length} tools`)
        }
      } finally {
        await bridged.close()
      }
      return 0
    }
    default:
      throw new ToolsUsageError(`unknown tools command "${sub}"\n\n${TOOLS_HELP}`)
  }
}
