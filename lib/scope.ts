/**
 * The one scope parser (RFC 6749 §3.3): `scope = scope-token *( SP scope-token )`,
 * `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`. Read by the STS (the `scope` parameter),
 * identity (the `scope` and `scp` claims) and so by the Cedar entity and the list filter,
 * which only ever see its output. Anything outside the grammar — a tab, a newline, any other
 * Unicode space or control character, a double, leading or trailing space, `"` or `\` — is
 * refused whole, never split some other way.
 */

/** One scope token: printable ASCII without space, `"` and `\`. */
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/

export class ScopeSyntaxError extends Error {
  override name = 'ScopeSyntaxError'
}

function describe (ch: string): string {
  const cp = ch.codePointAt(0)!
  return `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`
}

/** Why a scope token is not one, or null when it is. */
function tokenProblem (token: string): string | null {
  if (token === '') return 'an empty scope token (scopes are separated by single spaces)'
  if (SCOPE_TOKEN.test(token)) return null
  for (const ch of token) {
    if (!SCOPE_TOKEN.test(ch)) return `the character ${describe(ch)} is not allowed in a scope`
  }
  return 'not a scope token'
}

/** Parses a space-separated scope string; throws ScopeSyntaxError naming the first offending character. */
export function parseScope (value: string): string[] {
  const tokens = value.split(' ')
  for (const token of tokens) {
    const problem = tokenProblem(token)
    if (problem !== null) throw new ScopeSyntaxError(problem)
  }
  return [...new Set(tokens)]
}

/**
 * The scopes of a token's claims: `scope` (a space-separated string) and `scp` (such a string,
 * or an array of scope tokens). Throws ScopeSyntaxError when either is malformed.
 */
export function scopesOfClaims (scope: unknown, scp: unknown): string[] {
  const out: string[] = []
  for (const [name, v] of [['scope', scope], ['scp', scp]] as const) {
    if (v === undefined || v === null) continue
    if (typeof v === 'string') {
      if (v === '') continue
      try { out.push(...parseScope(v)) } catch (err) { throw new ScopeSyntaxError(`the "${name}" claim: ${(err as Error).message}`) }
    } else if (Array.isArray(v) && name === 'scp') {
      for (const item of v) {
        const problem = typeof item === 'string' ? tokenProblem(item) : 'an entry that is not a string'
        if (problem !== null) throw new ScopeSyntaxError(`the "scp" claim: ${problem}`)
        out.push(item as string)
      }
    } else {
      throw new ScopeSyntaxError(`the "${name}" claim must be a space-separated string${name === 'scp' ? ' or an array of scopes' : ''}`)
    }
  }
  return [...new Set(out)]
}
