/**
 * The tool metadata scanner: every string of a tool — name, title, description, inputSchema
 * and outputSchema (recursively: descriptions, titles, enums, defaults, examples, property
 * names), annotations — is checked against rules that are data (rules/tool-scan.json, which
 * an operator can extend). A tool with a finding is quarantined.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { PACKAGE_ROOT } from '../version.js'

export interface ScanRule {
  id: string
  kind: 'regex' | 'chars' | 'maxLength' | 'otherToolNames' | 'shadowName'
  pattern?: string
  flags?: string
  limit?: number
  /** maxLength: only strings at these keys (default: every string). */
  fields?: string[]
  /** Strings at these keys are not checked by this rule (e.g. "$schema" for urls). */
  skipKeys?: string[]
  description: string
}

export interface Finding {
  readonly rule: string
  /** Where in the tool, e.g. `inputSchema.properties.path.description`. */
  readonly path: string
  /** The matched text, with invisible characters shown as \u{…}; at most 80 characters. */
  readonly excerpt: string
  readonly description: string
}

export interface ToolLike {
  name: string
  title?: unknown
  description?: unknown
  inputSchema?: unknown
  outputSchema?: unknown
  annotations?: unknown
}

export const DEFAULT_RULES_FILE = join(PACKAGE_ROOT, 'rules', 'tool-scan.json')

/** Reads rules files (the shipped one first, then the operator's), dropping disabled ids. */
export function loadRules (files: readonly string[], disabled: readonly string[] = []): ScanRule[] {
  const byId = new Map<string, ScanRule>()
  for (const file of files) {
    const data = JSON.parse(readFileSync(file, 'utf8')) as { rules?: unknown }
    if (!Array.isArray(data.rules)) throw new Error(`${file}: "rules" must be an array`)
    for (const r of data.rules as ScanRule[]) {
      if (typeof r.id !== 'string' || !['regex', 'chars', 'maxLength', 'otherToolNames', 'shadowName'].includes(r.kind)) {
        throw new Error(`${file}: rule ${JSON.stringify(r.id)} needs an id and a kind (regex, chars, maxLength, otherToolNames, shadowName)`)
      }
      if ((r.kind === 'regex' || r.kind === 'chars') && typeof r.pattern === 'string') {
        try { new RegExp(r.pattern, `${r.flags ?? ''}u`) } catch (err) { throw new Error(`${file}: rule ${r.id}: ${(err as Error).message}`) }
      } else if (r.kind === 'regex' || r.kind === 'chars') {
        throw new Error(`${file}: rule ${r.id} needs a pattern`)
      }
      byId.set(r.id, r)
    }
  }
  return [...byId.values()].filter(r => !disabled.includes(r.id))
}

const show = (s: string): string => {
  const out = s.replace(/[^\x20-\x7E\u00A0-\u02FF\u0370-\u1FFF\u3000-\u9FFF]/gu, c => `\\u{${c.codePointAt(0)!.toString(16)}}`)
  return out.length > 80 ? `${out.slice(0, 77)}...` : out
}

/** Every string of a tool with its path and the key it sits at. */
function * strings (value: unknown, path: string, key: string): Generator<{ path: string, key: string, text: string }> {
  if (typeof value === 'string') { yield { path, key, text: value }; return }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) yield * strings(value[i], `${path}[${i}]`, key)
    return
  }
  if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      // Property names are text the model reads too.
      if (path.endsWith('.properties')) yield { path: `${path}.${k}`, key: 'propertyName', text: k }
      yield * strings(v, path === '' ? k : `${path}.${k}`, k)
    }
  }
}

export interface ScanContext {
  /** Names of the other upstreams and of their tools. */
  otherServers: readonly string[]
  otherTools: readonly string[]
}

const norm = (s: string): string => s.toLowerCase().replace(/[^a-z0-9]/g, '')

export class ToolScanner {
  readonly #rules: Array<ScanRule & { re?: RegExp }>

  constructor (rules: readonly ScanRule[]) {
    this.#rules = rules.map(r => (r.kind === 'regex' || r.kind === 'chars') ? { ...r, re: new RegExp(r.pattern!, `${r.flags ?? ''}gu`) } : r)
  }

  get ruleIds (): string[] { return this.#rules.map(r => r.id) }

  scan (tool: ToolLike, ctx: ScanContext = { otherServers: [], otherTools: [] }): Finding[] {
    const findings: Finding[] = []
    const fields = { name: tool.name, title: tool.title, description: tool.description, inputSchema: tool.inputSchema, outputSchema: tool.outputSchema, annotations: tool.annotations }
    const texts = [...strings(fields, '', '')]
    const others = ctx.otherTools.filter(n => norm(n) !== norm(tool.name) && n.length >= 4)
    for (const rule of this.#rules) {
      if (rule.kind === 'shadowName') {
        const twin = ctx.otherTools.find(n => norm(n) === norm(tool.name))
        if (twin !== undefined) findings.push({ rule: rule.id, path: 'name', excerpt: show(tool.name), description: rule.description })
        continue
      }
      for (const { path, key, text } of texts) {
        if (rule.skipKeys?.includes(key) === true) continue
        let hit: string | undefined
        switch (rule.kind) {
          case 'regex':
          case 'chars': {
            rule.re!.lastIndex = 0
            hit = rule.re!.exec(text)?.[0]
            break
          }
          case 'maxLength':
            if (text.length > rule.limit! && (rule.fields === undefined || rule.fields.includes(key))) hit = `${text.slice(0, 40)}... (${text.length} characters)`
            break
          case 'otherToolNames': {
            if (path === 'name') break
            const lower = text.toLowerCase()
            hit = others.find(n => new RegExp(`(^|[^a-z0-9_])${n.toLowerCase().replace(/[^a-z0-9_]/g, '\\$&')}($|[^a-z0-9_])`).test(lower)) ??
              ctx.otherServers.find(s => s.length >= 3 && new RegExp(`\\b${s.toLowerCase()}\\b (server|tool)`).test(lower))
            break
          }
        }
        if (hit !== undefined) {
          findings.push({ rule: rule.id, path, excerpt: show(hit), description: rule.description })
          break
        }
      }
    }
    return findings
  }
}
