/**
 * A bound on the shape of policy text, checked before Cedar parses it. Cedar's parser and
 * validator recurse over the expression tree, and in the Wasm build a deep enough tree (about 128
 * nested brackets, or a few thousand chained operators) overflows the stack and leaves the shared
 * Wasm instance unusable: every decision of the process would fail until it is replaced. Policy
 * text that anyone can submit (the console's playground) and text from disk are held to bounds
 * far below that and far above what policies need.
 */
export const MAX_POLICY_NESTING = 32
export const MAX_POLICY_OPERATORS = 500

/** Why the text is refused, or undefined. Strings and comments are skipped; policies end at a top-level `;`. */
export function policyTextProblem (text: string): string | undefined {
  let depth = 0
  let operators = 0
  let policy = 1
  let line = 1
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!
    if (c === '\n') { line++; continue }
    if (c === '"') {
      for (i++; i < text.length && text[i] !== '"'; i++) {
        if (text[i] === '\\') i++
        else if (text[i] === '\n') line++
      }
      continue
    }
    if (c === '/' && text[i + 1] === '/') {
      while (i < text.length && text[i] !== '\n') i++
      line++
      continue
    }
    if (c === '(' || c === '[' || c === '{') {
      if (++depth > MAX_POLICY_NESTING) return `line ${line}: brackets nested deeper than ${MAX_POLICY_NESTING}`
      continue
    }
    if (c === ')' || c === ']' || c === '}') { depth = Math.max(0, depth - 1); continue }
    if (c === ';' && depth === 0) { policy++; operators = 0; continue }
    // Operators and the keywords that nest: each one can add a level to the expression tree.
    let counted = false
    if ('&|=!<>+-*.'.includes(c)) {
      counted = true
      if ((c === '&' || c === '|' || c === '=') && text[i + 1] === c) i++
    } else if (/[a-z]/.test(c) && (i === 0 || !/[\w:]/.test(text[i - 1]!))) {
      const word = /^[a-z]+/.exec(text.slice(i, i + 8))![0]
      if (word === 'if' || word === 'has' || word === 'like' || word === 'in' || word === 'is') counted = true
      i += word.length - 1
    }
    if (counted && ++operators > MAX_POLICY_OPERATORS) return `policy ${policy} (line ${line}): more than ${MAX_POLICY_OPERATORS} operators in one policy`
  }
  return undefined
}
