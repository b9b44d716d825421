/**
 * What changed between two tool definitions, line by line: both are printed as JSON (two-space
 * indent, keys sorted at every level, so that the order an upstream sends its keys in is no
 * change) and compared with jsdiff. Used by `mcp-warden tools diff` and by the console.
 */
import { diffArrays } from 'diff'
import { pinnedPart } from './pins.js'
import type { ToolLike } from './scanner.js'

export interface DefinitionDiffLine {
  /** ' ' the same in both, '-' only in the first, '+' only in the second. */
  readonly op: ' ' | '-' | '+'
  readonly text: string
}

/**
 * The most edits looked for, and the longest time spent: definitions come from upstreams, and two
 * large, wholly different ones would otherwise cost time that grows with their product. Beyond
 * either, the diff is the whole of the first removed and the whole of the second added.
 */
const MAX_EDITS = 2000
const MAX_MS = 500

function sortedKeys (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortedKeys)
  if (value === null || typeof value !== 'object') return value
  const object = value as Record<string, unknown>
  return Object.fromEntries(Object.keys(object).sort().map(k => [k, sortedKeys(object[k])]))
}

/** A definition as the diff prints it: pretty JSON, keys sorted, one array item per line. */
export function definitionLines (tool: ToolLike): string[] {
  return JSON.stringify(sortedKeys(pinnedPart(tool)), null, 2).split('\n')
}

/** The lines of `after` against those of `before` (a definition with no earlier one: every line added). */
export function definitionDiff (before: ToolLike | undefined, after: ToolLike): DefinitionDiffLine[] {
  const old = before === undefined ? [] : definitionLines(before)
  const now = definitionLines(after)
  const changes = diffArrays(old, now, { maxEditLength: MAX_EDITS, timeout: MAX_MS })
  if (changes === undefined) return [...old.map(text => ({ op: '-' as const, text })), ...now.map(text => ({ op: '+' as const, text }))]
  const out: DefinitionDiffLine[] = []
  for (const change of changes) {
    const op = change.added ? '+' : change.removed ? '-' : ' '
    for (const text of change.value) out.push({ op, text })
  }
  return out
}
