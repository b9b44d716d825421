/**
 * `mcp-warden approvals …`: the approver's side of human approvals, on the gateway's JSON API
 * (`<publicUrl>/approvals…`, see plugins/approvals.ts) with an approver token.
 *
 * Everything an approval holds came from an agent (tool, arguments, ids, names) or from other
 * people (reasons): it is printed through {@link terminalSafe}, so that no control character or
 * escape sequence of it reaches the approver's terminal.
 */
import { parseOptions } from './cli-args.js'
import { request } from 'undici'
import { APPROVAL_ID } from './approvals/binding.js'

export interface Io { out: (line: string) => void, err: (line: string) => void }
export class ApprovalsUsageError extends Error {}

export const APPROVALS_HELP = `Usage: mcp-warden approvals <command> [--url URL] [--token JWT] [options]

Human approvals: a call that a Cedar policy marks @approval is not forwarded; it waits until
a person approves it, and the agent's identical call then runs once. These commands are the
approver's side, on the gateway's approvals API (the same as the pages at URL/approvals).

Commands:
  list                          the pending approvals, oldest first
  show ID                       one approval: the call, its arguments, who asked, which
                                policies want an approval and who may give it
  approve ID [--reason TEXT]    approve the call: the agent's identical call runs once
  deny ID [--reason TEXT]       deny it: the call stays refused
ID is an approval id, or the approval's URL as the agent reported it.

Options:
  --url URL         the gateway's public URL (default: $MCP_WARDEN_URL)
  --token JWT       an approver token of the agents' identity provider, its aud the gateway's
                    approvals.approverAudience (default: $MCP_WARDEN_APPROVER_TOKEN; prefer the
                    variable: other users of the machine can read a command line)
  --reason TEXT     approve, deny: why (kept with the decision and audited; at most 500 characters)
  --json            print the gateway's JSON answer
  --timeout SECONDS how long to wait for the gateway (default 15)

Exit status: 0 done; 1 the gateway refused (not found, not allowed, bad token) or could not
be reached; 2 a usage error.

Example:
  export MCP_WARDEN_URL=http://127.0.0.1:8080 MCP_WARDEN_APPROVER_TOKEN="$APPROVER_GRACE"
  mcp-warden approvals list
  mcp-warden approvals show 4bQz…
  mcp-warden approvals approve 4bQz… --reason "ticket OPS-1"`

/** Characters that must not reach a terminal as they are: controls (C0, DEL, C1), invisible format characters (bidi controls, zero-width, tags), line and paragraph separators, lone surrogates. */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/gu

const hex4 = (n: number): string => `\\u${n.toString(16).padStart(4, '0')}`

/**
 * Text from an agent made safe to print on a terminal: every control character (C0, DEL, C1 —
 * so ESC and with it every escape sequence, BEL, CSI), invisible format character (bidi
 * overrides, zero-width characters, tag characters), line or paragraph separator and lone
 * surrogate is written as a visible `\uXXXX` escape (a pair of them above U+FFFF), as in JSON;
 * with `keepNewlines`, line feeds stay (pretty-printed arguments). Applied to JSON text, the
 * result is still the same JSON.
 */
export function terminalSafe (text: string, keepNewlines = false): string {
  return text.replace(UNSAFE, c => {
    if (c === '\n' && keepNewlines) return c
    const cp = c.codePointAt(0)!
    if (cp <= 0xffff) return hex4(cp)
    return hex4(0xd800 + ((cp - 0x10000) >> 10)) + hex4(0xdc00 + ((cp - 0x10000) & 0x3ff))
  })
}

/** What the gateway's API says of an approval (publicView in plugins/approvals.ts). */
interface View {
  id?: unknown
  url?: unknown
  status?: unknown
  server?: unknown
  tool?: unknown
  agentId?: unknown
  userId?: unknown
  department?: unknown
  arguments?: unknown
  argumentsSha256?: unknown
  policies?: unknown
  approvers?: unknown
  advice?: unknown
  policyVersion?: unknown
  requestedAt?: unknown
  expiresAt?: unknown
  approver?: unknown
  reason?: unknown
}

interface Answer { status: number, body: Record<string, unknown> }

interface Target { base: string, token: string, timeoutMs: number }

/** A one-line field of a view, safe to print ('' when absent). */
function field (v: unknown): string {
  if (v === undefined || v === null) return ''
  if (Array.isArray(v)) return terminalSafe(v.map(x => typeof x === 'string' ? x : JSON.stringify(x)).join(', '))
  return terminalSafe(typeof v === 'string' ? v : JSON.stringify(v))
}

/** The call's arguments (JSON text) pretty-printed and safe to print, as text when they are not JSON. */
function prettyArguments (v: unknown): string {
  if (typeof v !== 'string') return terminalSafe(JSON.stringify(v ?? null, null, 2) ?? 'null', true)
  try { return terminalSafe(JSON.stringify(JSON.parse(v), null, 2), true) } catch { return terminalSafe(v) }
}

/** How long until an ISO time, as "in 9m 58s"; "expired" once it has passed. */
function until (iso: unknown, now = Date.now()): string {
  const at = typeof iso === 'string' ? Date.parse(iso) : NaN
  if (Number.isNaN(at)) return '?'
  let s = Math.round((at - now) / 1000)
  if (s <= 0) return 'expired'
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  s %= 60
  return `in ${h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${s}s` : `${s}s`}`
}

const clip = (text: string, max: number): string => text.length > max ? `${text.slice(0, max - 1)}…` : text
const call = (v: View): string => `${field(v.server)}/${field(v.tool)}`

function table (rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map(r => r[i]!.length)))
  return rows.map(r => r.map((cell, i) => i === r.length - 1 ? cell : cell.padEnd(widths[i]!)).join('  ').trimEnd())
}

function describe (v: View): string[] {
  const rows: Array<[string, unknown]> = [
    ['status', v.status],
    ['call', `${typeof v.server === 'string' ? v.server : ''}/${typeof v.tool === 'string' ? v.tool : ''}`],
    ['agent', v.agentId],
    ['user', v.userId === '' ? '(none)' : v.userId],
    ['department', v.department === '' ? '(none)' : v.department],
    ['policies', v.policies],
    ['why', Array.isArray(v.advice) ? v.advice.join('; ') : v.advice],
    ['who may approve', Array.isArray(v.approvers) ? v.approvers.join('; ') : v.approvers],
    ['requested', v.requestedAt],
    ['expires', `${typeof v.expiresAt === 'string' ? v.expiresAt : ''} (${until(v.expiresAt)})`],
    ['arguments sha256', v.argumentsSha256],
    ['policy version', v.policyVersion],
    ['page', v.url]
  ]
  if (v.approver !== null && v.approver !== undefined) rows.push(['approver', v.approver])
  if (v.reason !== null && v.reason !== undefined) rows.push(['reason', v.reason])
  const width = Math.max(...rows.map(([k]) => k.length))
  return [
    `approval ${field(v.id)}`,
    ...rows.map(([k, val]) => `  ${k.padEnd(width)}  ${field(val)}`),
    'arguments:',
    ...prettyArguments(v.arguments).split('\n').map(l => `  ${l}`)
  ]
}

/** The approval id of `ID` or of an approval URL `…/approvals/ID`. */
function approvalId (arg: string | undefined, sub: string): string {
  if (arg === undefined) throw new ApprovalsUsageError(`${sub} needs the approval id (mcp-warden approvals ${sub} ID)`)
  const m = /\/approvals\/([^/?#]*)\/?(?:[?#].*)?$/.exec(arg)
  const id = m !== null ? m[1]! : arg
  if (!APPROVAL_ID.test(id)) throw new ApprovalsUsageError(`${JSON.stringify(terminalSafe(arg.slice(0, 80)))} is not an approval id (22 characters: letters, digits, - and _) nor an approval's URL`)
  return id
}

/** The API's base from --url: no trailing slash, and no /approvals when the list page's URL was given. */
function baseUrl (raw: string | undefined): string {
  if (raw === undefined || raw === '') throw new ApprovalsUsageError('the gateway\'s URL is required: --url URL or MCP_WARDEN_URL')
  let url: URL
  try { url = new URL(raw) } catch { throw new ApprovalsUsageError(`--url ${JSON.stringify(terminalSafe(raw))} is not a URL`) }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ApprovalsUsageError(`--url must be an http or https URL, not ${url.protocol}`)
  if (url.username !== '' || url.password !== '') throw new ApprovalsUsageError('--url must not carry a user name or password; the approver token is the credential')
  if (url.search !== '' || url.hash !== '') throw new ApprovalsUsageError('--url is the gateway\'s public URL, without a query or fragment')
  return `${url.origin}${url.pathname.replace(/\/+$/, '').replace(/\/approvals$/, '')}`
}

const isLoopback = (hostname: string): boolean => hostname === 'localhost' || hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(hostname)

/** One call of the approvals API; throws with the URL when the gateway cannot be reached or does not answer JSON. */
async function api (t: Target, method: 'GET' | 'POST', path: string, payload?: unknown): Promise<Answer> {
  const url = `${t.base}${path}`
  let status: number
  let text: string
  try {
    const res = await request(url, {
      method,
      headers: {
        authorization: `Bearer ${t.token}`,
        accept: 'application/json',
        ...(payload !== undefined ? { 'content-type': 'application/json' } : {})
      },
      ...(payload !== undefined ? { body: JSON.stringify(payload) } : {}),
      signal: AbortSignal.timeout(t.timeoutMs)
    })
    status = res.statusCode
    text = await res.body.text()
  } catch (err) {
    const e = err as Error & { code?: string, cause?: { code?: string, message?: string } }
    const why = e.name === 'TimeoutError' || e.name === 'AbortError'
      ? `no answer within ${t.timeoutMs / 1000} s`
      : e.code ?? e.cause?.code ?? e.cause?.message ?? e.message
    throw new Error(`cannot reach the gateway at ${url}: ${terminalSafe(why)}`)
  }
  let body: unknown
  try { body = JSON.parse(text) } catch { body = undefined }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new Error(`${url} answered ${status} without the approvals API's JSON: is ${t.base} the gateway's public URL?`)
  }
  return { status, body: body as Record<string, unknown> }
}

/** The gateway's message of a refusal, safe to print. */
const messageOf = (a: Answer): string => field(typeof a.body.message === 'string' ? a.body.message : `HTTP ${a.status}`)

/** A line on stderr, named like the errors main prints. */
const complain = (io: Io, line: string): void => { io.err(`mcp-warden approvals: ${line}`) }

/** A refusal the gateway answered: its message on stderr; exit status 1. */
function refused (a: Answer, io: Io, what: string): number {
  if (a.status === 401) complain(io, `the gateway refused the approver token: ${messageOf(a)}`)
  else if (a.status === 404 && a.body.error !== 'not_found') complain(io, `${what}: the gateway has no approvals API here (${messageOf(a)})`)
  else complain(io, `${what}: ${messageOf(a)}`)
  return 1
}

export async function approvalsCommand (args: string[], io: Io, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [sub, ...rest] = args
  const { values: v, positionals } = parseOptions(rest, {
    url: { type: 'string' }, token: { type: 'string' }, reason: { type: 'string' }, json: { type: 'boolean' }, timeout: { type: 'string' }
  }, m => new ApprovalsUsageError(m))
  if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h' || v.help === true) { io.out(APPROVALS_HELP); return sub === undefined ? 1 : 0 }
  if (!['list', 'show', 'approve', 'deny'].includes(sub)) throw new ApprovalsUsageError(`unknown approvals command "${terminalSafe(sub)}"\n\n${APPROVALS_HELP}`)
  const decides = sub === 'approve' || sub === 'deny'
  if (positionals.length > (sub === 'list' ? 0 : 1)) throw new ApprovalsUsageError(`${sub} takes ${sub === 'list' ? 'no arguments' : 'one approval id'}, not ${positionals.length}`)
  const reason = typeof v.reason === 'string' ? v.reason : undefined
  if (reason !== undefined && !decides) throw new ApprovalsUsageError('--reason is for approve and deny')
  if (reason !== undefined && reason.length > 500) throw new ApprovalsUsageError('--reason must be at most 500 characters')
  const id = sub === 'list' ? '' : approvalId(positionals[0], sub)

  const base = baseUrl(typeof v.url === 'string' ? v.url : env.MCP_WARDEN_URL)
  const token = (typeof v.token === 'string' ? v.token : env.MCP_WARDEN_APPROVER_TOKEN ?? '').trim()
  if (token === '') throw new ApprovalsUsageError('an approver token is required: --token JWT or MCP_WARDEN_APPROVER_TOKEN')
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token)) throw new ApprovalsUsageError('the approver token (--token or MCP_WARDEN_APPROVER_TOKEN) is not a JWT')
  const seconds = v.timeout === undefined ? 15 : Number(v.timeout)
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 600) throw new ApprovalsUsageError('--timeout must be a number of seconds, more than 0 and at most 600')
  const target: Target = { base, token, timeoutMs: Math.round(seconds * 1000) }
  const json = v.json === true
  const printJson = (a: Answer): void => { io.out(terminalSafe(JSON.stringify(a.body, null, 2), true)) }

  const { protocol, hostname } = new URL(base)
  if (protocol === 'http:' && !isLoopback(hostname)) complain(io, `warning: ${base} is plain http: the approver token crosses the network unencrypted`)

  try {
    switch (sub) {
      case 'list': {
        const a = await api(target, 'GET', '/approvals')
        if (json) printJson(a)
        if (a.status !== 200) return refused(a, io, 'cannot list the approvals')
        if (json) return 0
        const list = (Array.isArray(a.body.approvals) ? a.body.approvals : []) as View[]
        if (list.length === 0) { io.out('nothing is waiting for approval'); return 0 }
        io.out(`${list.length} waiting for approval, oldest first:`)
        const now = Date.now()
        for (const line of table([
          ['ID', 'CALL', 'AGENT', 'USER', 'POLICY', 'EXPIRES'],
          ...list.map(x => [field(x.id), clip(call(x), 48), clip(field(x.agentId), 24), clip(field(x.userId), 24), clip(field(x.policies), 40), until(x.expiresAt, now)])
        ])) io.out(line)
        io.out('')
        io.out('Before deciding, read the call\'s arguments: mcp-warden approvals show ID')
        return 0
      }
      case 'show': {
        const a = await api(target, 'GET', `/approvals/${id}`)
        if (json) printJson(a)
        const view = a.body.approval as View | undefined
        if (a.status === 200 && view !== undefined && !json) for (const line of describe(view)) io.out(line)
        if (a.status === 403) { complain(io, `you may not decide on this approval: ${messageOf(a)}`); return 1 }
        if (a.status !== 200) return refused(a, io, `approval ${id}`)
        return 0
      }
      default: {
        const a = await api(target, 'POST', `/approvals/${id}`, { decision: sub, ...(reason !== undefined ? { reason } : {}) })
        if (json) printJson(a)
        if (a.status !== 200) return refused(a, io, `not ${sub === 'approve' ? 'approved' : 'denied'}`)
        if (json) return 0
        const view = (a.body.approval ?? {}) as View
        const approved = view.status === 'approved'
        io.out(`${approved ? 'approved' : 'denied'} ${field(view.id)}: ${call(view)} for agent ${field(view.agentId)}${field(view.userId) !== '' ? `, user ${field(view.userId)}` : ''}`)
        io.out('arguments:')
        for (const l of prettyArguments(view.arguments).split('\n')) io.out(`  ${l}`)
        io.out(`arguments sha256: ${field(view.argumentsSha256)}`)
        if (view.reason !== null && view.reason !== undefined) io.out(`reason: ${field(view.reason)}`)
        io.out(approved
          ? `The agent's identical call runs once when it is made again, until ${field(view.expiresAt)}.`
          : 'The call stays refused; asking again starts a new approval.')
        return 0
      }
    }
  } catch (err) {
    if (err instanceof ApprovalsUsageError) throw err
    complain(io, (err as Error).message)
    return 1
  }
}
