/**
 * Text as a model reads it, for the tool scanner: the readings of one string that rules about
 * meaning are matched against. A string is read
 *  - as written, after NFKC and without invisible format characters;
 *  - with look-alike letters folded to Latin ("іgnоrе" with Cyrillic letters reads "ignore"),
 *    identifiers split into words ("Ignore_all_previousInstructions"), spaced-out letters and
 *    split words joined ("i g n o r e", "ig-nore"), and digits in words read as letters ("1gn0r3");
 *  - decoded, where it carries text in another form: Unicode tag characters (invisible ASCII),
 *    base64, hex, percent-encoding, and ROT13 or reversed text where the text asks for it.
 */

/** Cyrillic and Greek letters that look like Latin ones. */
const LOOKALIKES: Record<string, string> = {
  а: 'a', в: 'b', е: 'e', ё: 'e', к: 'k', м: 'm', н: 'h', о: 'o', р: 'p', с: 'c', т: 't', у: 'y', х: 'x', ѕ: 's', і: 'i', ї: 'i', ј: 'j', ԁ: 'd', һ: 'h', ӏ: 'l', ԛ: 'q', ԝ: 'w', ɡ: 'g', ո: 'n', ս: 'u',
  А: 'a', В: 'b', Е: 'e', К: 'k', М: 'm', Н: 'h', О: 'o', Р: 'p', С: 'c', Т: 't', У: 'y', Х: 'x', Ѕ: 's', І: 'i', Ј: 'j',
  α: 'a', β: 'b', ε: 'e', ι: 'i', κ: 'k', ν: 'v', ο: 'o', ρ: 'p', τ: 't', υ: 'u', χ: 'x', γ: 'y',
  Α: 'a', Β: 'b', Ε: 'e', Ζ: 'z', Η: 'h', Ι: 'i', Κ: 'k', Μ: 'm', Ν: 'n', Ο: 'o', Ρ: 'p', Τ: 't', Υ: 'y', Χ: 'x'
}
const LOOKALIKE_RE = new RegExp(`[${Object.keys(LOOKALIKES).join('')}]`, 'gu')
const LEET: Record<string, string> = { 0: 'o', 1: 'i', 3: 'e', 4: 'a', 5: 's', 7: 't', '@': 'a', $: 's' }

/** Invisible format characters (zero-width, joiners, bidi controls, tag characters, soft hyphen …). */
const FORMAT = /[\p{Cf}\u180E]/gu
/** Unicode tag characters that spell ASCII (U+E0020–U+E007E). */
const TAGS = /[\u{E0020}-\u{E007E}]+/gu

export interface Reading {
  /** What produced this reading: "", "folded", "tag characters", "base64", "hex", "percent-encoding", "rot13", "reversed". */
  readonly how: string
  readonly text: string
}

const words = (s: string): string => s
  .replace(/([a-z])([A-Z])/g, '$1 $2') // camelCase
  .replace(/[_]+/g, ' ')
  .replace(/\s+/g, ' ')

/** Look-alikes to Latin, spaced-out letters and split words joined, digits in words as letters. */
function fold (s: string): string {
  let out = s.replace(LOOKALIKE_RE, c => LOOKALIKES[c] ?? c)
  out = words(out)
  // "i g n o r e" → "ignore" (four or more single letters in a row)
  out = out.replace(/\b(?:\p{L} ){3,}\p{L}\b/gu, m => m.replace(/ /g, ''))
  // "ig-nore", "ig.nore", "ig·nore" inside a word → "ignore"
  out = out.replace(/(\p{L})[-.·•*](?=\p{L})/gu, '$1')
  // "1gn0r3" → "ignore": digits inside a word that has letters
  // (every word is matched once and tested, so the cost stays linear in the text's length)
  out = out.replace(/[\p{L}\d@$]+/gu, w => w.length >= 4 && /\d/.test(w) && (w.match(/\p{L}/gu)?.length ?? 0) >= 2 ? w.replace(/[013457@$]/g, c => LEET[c] ?? c) : w)
  return out
}

const printable = (s: string): boolean => {
  if (s.length < 8) return false
  let ok = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if ((c >= 0x20 && c < 0x7f) || c === 0x0a || c === 0x0d || c === 0x09) ok++
  }
  return ok / s.length >= 0.9 && /(?<![a-z])[a-z]{2,} [a-z]{2}/i.test(s)
}

function decoded (s: string): Reading[] {
  const out: Reading[] = []
  const tags = s.match(TAGS)
  if (tags !== null) out.push({ how: 'tag characters', text: tags.map(t => [...t].map(c => String.fromCharCode(c.codePointAt(0)! - 0xE0000)).join('')).join(' ') })
  for (const m of s.matchAll(/[A-Za-z0-9+/_-]{20,}={0,2}/g)) {
    const text = Buffer.from(m[0].replace(/-/g, '+').replace(/_/g, '/'), 'base64').toString('utf8')
    if (printable(text)) out.push({ how: 'base64', text })
  }
  for (const m of s.matchAll(/\b(?:[0-9a-fA-F]{2}[\s:]?){12,}/g)) {
    const text = Buffer.from(m[0].replace(/[\s:]/g, ''), 'hex').toString('utf8')
    if (printable(text)) out.push({ how: 'hex', text })
  }
  if (/(?:%[0-9A-Fa-f]{2}){4,}/.test(s)) {
    try {
      const text = decodeURIComponent(s)
      if (text !== s) out.push({ how: 'percent-encoding', text })
    } catch { /* not valid percent-encoding */ }
  }
  if (/\b(backwards?|reversed?|in reverse|right[- ]to[- ]left)\b/i.test(s)) out.push({ how: 'reversed', text: [...s].reverse().join('') })
  if (/\brot[- ]?13\b|\bcaesar\b/i.test(s)) {
    out.push({ how: 'rot13', text: s.replace(/[a-z]/gi, c => String.fromCharCode((c <= 'Z' ? 65 : 97) + ((c.toLowerCase().charCodeAt(0) - 97 + 13) % 26))) })
  }
  return out
}

/** The readings of one string that rules about meaning are matched against. */
export function readings (raw: string): Reading[] {
  const plain = raw.replace(FORMAT, '').normalize('NFKC')
  const out: Reading[] = [{ how: '', text: plain }]
  const folded = fold(plain)
  if (folded !== plain) out.push({ how: 'folded', text: folded })
  for (const d of decoded(raw)) {
    out.push(d)
    const f = fold(d.text)
    if (f !== d.text) out.push({ how: `${d.how}, folded`, text: f })
  }
  return out
}

/** A word that mixes Latin letters with Cyrillic or Greek ones: a look-alike, never a real word. */
export function mixedScriptWord (raw: string): string | undefined {
  for (const m of raw.normalize('NFKC').matchAll(/[\p{L}\p{M}]+/gu)) {
    const w = m[0]
    if (/\p{Script=Latin}/u.test(w) && /[\p{Script=Cyrillic}\p{Script=Greek}]/u.test(w)) return w
  }
  return undefined
}
