/**
 * The tool metadata scanner: every string of a tool — name, title, description, inputSchema
 * and outputSchema (recursively: descriptions, titles, enums, defaults, examples, property
 * names), annotations — is checked against rules that are data (rules/tool-scan.json, which
 * an operator can extend). A tool with a finding is quarantined.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { PACKAGE_ROOT } from '../version.js'
import { mixedScriptWord, readings } from './text.js'

export type RuleKind = 'regex' | 'chars' | 'maxLength' | 'mixedScript' | 'foreignTool'
const KINDS: readonly RuleKind[] = ['regex', 'chars', 'maxLength', 'mixedScript', 'foreignTool']

export interface ScanRule {
  id: string
  kind: RuleKind
  pattern?: string
  flags?: string
  /** regex: `meaning` (default) matches every reading of a string (see text.ts); `raw` the string as sent. */
  on?: 'meaning' | 'raw'
  limit?: number
  /** maxLength: only strings at these keys (default: every string). */
  fields?: string[]
  /** Strings at these keys are not checked by this rule. */
  skipKeys?: string[]
  description: string
}

export interface Finding {
  readonly rule: string
  /** Where in the tool, e.g. `inputSchema.properties.path.description`. */
  readonly path: string
  /** The matched text, with invisible characters shown as \u{…}; at most 80 characters. Decoded text says how it was decoded. */
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
  [field: string]: unknown
}

/** The longest string of a definition that is scanned; a longer one quarantines the tool unread. */
export const MAX_SCANNED = 65_536
/** The most text of one definition, all its strings together, that is scanned. */
export const MAX_SCANNED_TOTAL = 262_144

export const DEFAULT_RULES_FILE = join(PACKAGE_ROOT, 'rules', 'tool-scan.json')

/** Reads rules files (the shipped one first, then the operator's), dropping disabled ids. */
export function loadRules (files: readonly string[], disabled: readonly string[] = []): ScanRule[] {
  const byId = new Map<string, ScanRule>()
  for (const file of files) {
    const data = JSON.parse(readFileSync(file, 'utf8')) as { rules?: unknown }
    if (!Array.isArray(data.rules)) throw new Error(`${file}: "rules" must be an array`)
    for (const r of data.rules as ScanRule[]) {
      if (typeof r.id !== 'string' || !KINDS.includes(r.kind)) {
        throw new Error(`${file}: rule ${JSON.stringify(r.id)} needs an id and a kind (${KINDS.join(', ')})`)
      }
      if ((r.kind === 'regex' || r.kind === 'chars') && typeof r.pattern === 'string') {
        try { RegExp(r.pattern, `${r.flags ?? ''}u`) } catch (err) { throw new Error(`${file}: rule ${r.id}: ${(err as Error).message}`) }
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

/**
 * Every string of a tool with its path and the key it sits at: values, and the keys of every
 * object (a property name is text the model reads too).
 */
function * strings (value: unknown, path: string, key: string): Generator<{ path: string, key: string, text: string }> {
  if (typeof value === 'string') { yield { path, key, text: value }; return }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) yield * strings(value[i], `${path}[${i}]`, key)
    return
  }
  if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      const at = path === '' ? k : `${path}.${k}`
      if (path !== '') yield { path: at, key: 'propertyName', text: k }
      yield * strings(v, at, k)
    }
  }
}

export interface ScanContext {
  /** The names of the tools listed beside this one by the same upstream (a Set is taken as already lower-cased). */
  ownTools?: readonly string[] | ReadonlySet<string>
  /** The names of other upstreams' tools (a Set is taken as already lower-cased). */
  otherTools?: readonly string[] | ReadonlySet<string>
}

/** Names, lower-cased, as a set: built once per list by a caller that scans many tools with one context. */
export function nameSet (names: Iterable<string>): Set<string> {
  const out = new Set<string>()
  for (const n of names) out.add(n.toLowerCase())
  return out
}
const asSet = (names: readonly string[] | ReadonlySet<string> | undefined): ReadonlySet<string> =>
  names === undefined ? new Set() : names instanceof Set ? names : nameSet(names as readonly string[])

/** A word that says the sentence tells the model what to do. */
const INSTRUCTION_CUE = /\b(always|also|must|should|instead|whenever|every time|make sure|ensure|do not|don't|never|bcc|cc|redirect|replace|change|modify|override|first|before|after|prefer|only use|avoid)\b/i
/** Ways text names a tool: "the send_email tool", "tool `x`", "x()", or an identifier with a separator. */
const TOOL_REFERENCE = /[`'"]?\b([A-Za-z][A-Za-z0-9]*(?:[_.-][A-Za-z0-9]+)+|[a-z]+[A-Z][A-Za-z0-9]*)\b[`'"]?(?:\(\))?/g
/** Words about other tools being used: "whenever X is used", "from the GitHub server", "on any connected server". */
const SHADOW_CUE = /\b(whenever|every time|each time|(is|are) (used|called|invoked|run)|sent (through|via|with)|(from|on|in) (the |any )?[\w-]+ (mcp )?server|any connected server|(from|on) any server)\b/i
const sentences = (s: string): string[] => s.split(/(?<=[.!?;:])\s+|\n+/)

/**
 * A rule's pattern as a RegExp: in Unicode mode only where the pattern needs it (\p{…}, \u{…},
 * characters beyond the BMP); V8 matches case-insensitive patterns several times faster outside
 * it, and for the rest the two modes match the same text.
 */
function compile (pattern: string, flags = ''): RegExp {
  const unicode = /\\[pPu]\{|[\u{10000}-\u{10FFFF}]/u.test(pattern)
  return new RegExp(pattern, `${flags}g${unicode ? 'u' : ''}`)
}

export class ToolScanner {
  readonly #rules: Array<ScanRule & { re?: RegExp }>

  constructor (rules: readonly ScanRule[]) {
    this.#rules = rules.map(r => (r.kind === 'regex' || r.kind === 'chars') ? { ...r, re: compile(r.pattern!, r.flags) } : r)
  }

  get ruleIds (): string[] { return this.#rules.map(r => r.id) }

  /** The findings of one tool definition: at most one per rule, each with its path and excerpt. */
  scan (tool: ToolLike, ctx: ScanContext = {}): Finding[] {
    const findings: Finding[] = []
    const all = [...strings(tool, '', '')]
    // A string longer than MAX_SCANNED is a finding by itself and is not read further: the tool is
    // quarantined whatever else it says, and no rule's cost grows with text no tool needs.
    const tooLong = all.find(t => t.text.length > MAX_SCANNED)
    if (tooLong !== undefined) {
      return [{ rule: 'too-long-to-scan', path: tooLong.path, excerpt: show(`${tooLong.text.slice(0, 40)}... (${tooLong.text.length} characters)`), description: `a string longer than ${MAX_SCANNED} characters, which no tool definition needs` }]
    }
    // Likewise a definition whose text adds up to more than MAX_SCANNED_TOTAL (many long strings).
    let total = 0
    for (const t of all) total += t.text.length
    if (total > MAX_SCANNED_TOTAL) {
      return [{ rule: 'too-long-to-scan', path: '', excerpt: `${total} characters of text in one definition`, description: `a definition with more than ${MAX_SCANNED_TOTAL} characters of text, which no tool needs` }]
    }
    const texts = all.map(t => ({ ...t, readings: undefined as ReturnType<typeof readings> | undefined }))
    const params = new Set([...strings(tool.inputSchema, '', '')].filter(x => x.key === 'propertyName').map(x => x.text.toLowerCase()))
    // Looked up, never copied: a list of n tools scanned with one context costs n scans, not n².
    const self = tool.name.toLowerCase()
    const ownSet = asSet(ctx.ownTools)
    const own: Pick<ReadonlySet<string>, 'has'> = { has: n => n === self || ownSet.has(n) }
    const otherSet = asSet(ctx.otherTools)
    // Another server's tool named in this one's text. A name that reads as an identifier
    // ("send_email", "github.create_issue") counts wherever it stands; a plain word ("search",
    // "count") only where the text names it as a tool (foreignToolInstruction looks at how).
    const others: Pick<ReadonlySet<string>, 'has'> = { has: n => n.length >= 4 && !own.has(n) && otherSet.has(n) }
    for (const rule of this.#rules) {
      for (const t of texts) {
        if (rule.skipKeys?.includes(t.key) === true) continue
        let hit: string | undefined
        switch (rule.kind) {
          case 'chars':
            rule.re!.lastIndex = 0
            hit = rule.re!.exec(t.text)?.[0]
            break
          case 'regex':
            if (rule.on === 'raw') {
              rule.re!.lastIndex = 0
              hit = rule.re!.exec(t.text)?.[0]
              break
            }
            t.readings ??= readings(t.text)
            for (const r of t.readings) {
              rule.re!.lastIndex = 0
              const m = rule.re!.exec(r.text)?.[0]
              if (m !== undefined) { hit = r.how === '' || r.how === 'folded' ? m : `(${r.how}) ${m}`; break }
            }
            break
          case 'maxLength':
            if (t.text.length > rule.limit! && (rule.fields === undefined || rule.fields.includes(t.key))) hit = `${t.text.slice(0, 40)}... (${t.text.length} characters)`
            break
          case 'mixedScript':
            hit = mixedScriptWord(t.text)
            break
          case 'foreignTool':
            if (t.path === 'name' || t.key === 'propertyName') break
            hit = foreignToolInstruction(t.text, own, params, others)
            break
        }
        if (hit !== undefined) {
          findings.push({ rule: rule.id, path: t.path, excerpt: show(hit), description: rule.description })
          break
        }
      }
    }
    return findings
  }
}

/**
 * Whether a plain word at i is named as a tool: "the count tool", "count()". A word that is
 * another server's tool name is otherwise just a word ("a web search tool", "the `search` parameter").
 */
function namedAsTool (lower: string, i: number, length: number): boolean {
  const before = lower.slice(Math.max(0, i - 6), i)
  const after = lower.slice(i + length, i + length + 12)
  return (/\bthe\s[`'"]?$/.test(before) && /^[`'"]?\s(tool|function)\b/.test(after)) || /^\(\)/.test(after)
}

/**
 * A sentence that names a tool which is neither this one, nor one listed beside it, nor one of
 * its parameters, and tells the model what to do: instructions about another server's tool.
 */
function foreignToolInstruction (text: string, own: Pick<ReadonlySet<string>, 'has'>, params: ReadonlySet<string>, others: Pick<ReadonlySet<string>, 'has'>): string | undefined {
  for (const sentence of sentences(text)) {
    if (!INSTRUCTION_CUE.test(sentence)) continue
    // Another upstream's tool named in the sentence: each word that could be a tool name
    // (letters, digits, _ . -) is looked up, so the cost is the sentence's length, not the
    // number of other tools.
    const lower = sentence.toLowerCase()
    // A plain word counts in a sentence about when other tools run ("whenever count is needed, call this").
    const aboutOthers = SHADOW_CUE.test(sentence)
    for (const m of lower.matchAll(/[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?/g)) {
      const word = m[0]
      if (own.has(word) || params.has(word)) continue
      if (others.has(word) && (/[_.-]/.test(word) || aboutOthers || namedAsTool(lower, m.index, word.length))) return sentence
      // "github.create_issue": an identifier between dots or dashes is named too.
      if (/[.-]/.test(word) && word.split(/[.-]+/).some(part => part.includes('_') && others.has(part))) return sentence
    }
    for (const m of sentence.matchAll(TOOL_REFERENCE)) {
      const name = m[1]!.toLowerCase()
      if (own.has(name) || params.has(name) || /\.(com|org|io|net|json|js|ts|py|md|txt|csv|html?)$/.test(name) || /^[\d.]+$/.test(name)) continue
      const after = sentence.slice(m.index + m[0].length, m.index + m[0].length + 12).toLowerCase()
      const before = sentence.slice(Math.max(0, m.index - 10), m.index).toLowerCase()
      if (/^\s*(tool|function|command)\b/.test(after) || /\b(tool|function)\s*$/.test(before) || m[0].endsWith('()')) return sentence
      // A bare identifier that is no name of this server's, in a sentence about when other tools run.
      // (The cue is tested once per sentence, above: per reference it was quadratic.)
      if (aboutOthers && /^[a-z][a-z0-9]*([_.][a-z0-9]+)+$/.test(name)) return sentence
    }
  }
  return undefined
}
