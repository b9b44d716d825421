/**
 * The approval pages, rendered on the server: plain HTML forms that work without JavaScript.
 * Everything that came from an agent or a token (arguments, ids, names, claims) is escaped;
 * the pages are served with a Content-Security-Policy that allows no script at all.
 */
import type { FastifyReply } from 'fastify'
import type { ApprovalRecord } from './types.js'

/** The Content-Security-Policy of every approval page: no script, no frames, forms post only here. */
export const PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

/** The headers of a page for people: its CSP, never cached, never framed, no referrer off-site. */
export function htmlPage (reply: FastifyReply, csp: string): FastifyReply {
  return reply
    .header('content-security-policy', csp)
    .header('cache-control', 'no-store')
    .header('x-content-type-options', 'nosniff')
    .header('referrer-policy', 'same-origin')
    .header('x-frame-options', 'DENY')
    .type('text/html; charset=utf-8')
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }
/**
 * HTML-escapes text from an agent, and shows what a reader could not see: control and invisible
 * format characters (bidi overrides, zero-width characters, tags) and line separators become
 * `\u{…}` marks, so "\u202Epmt_sgol" cannot pass for "logs_tmp". `keepNewlines` keeps line
 * feeds (the pretty-printed arguments).
 */
export function escapeHtml (text: string, keepNewlines = false): string {
  return text
    .replace(/[\p{Cc}\p{Cf}\u2028\u2029]/gu, c => keepNewlines && c === '\n' ? c : `\\u{${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}}`)
    .replace(/[&<>"']/g, c => ESCAPES[c]!)
}
const e = (text: string): string => escapeHtml(text)

const STYLE = `body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}
main{max-width:860px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 16px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 16px;background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:16px}
dt{font-weight:600}dd{margin:0;word-break:break-word}
pre{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px;overflow:auto;max-height:420px;white-space:pre-wrap;word-break:break-all}
textarea,input[type=text],input[type=password]{width:100%;box-sizing:border-box;font:inherit;padding:8px;border:1px solid #d0d7de;border-radius:6px}
button{font:inherit;padding:8px 18px;border-radius:6px;border:1px solid #1b1f24;margin:8px 8px 0 0;cursor:pointer}
.approve{background:#1a7f37;color:#fff;border-color:#1a7f37}.deny{background:#cf222e;color:#fff;border-color:#cf222e}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:10px 14px;margin:12px 0}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border:1px solid #d0d7de;padding:6px 10px;text-align:left}
header{display:flex;justify-content:space-between;align-items:center;margin-bottom:12px;gap:12px}
form.inline{display:inline}`

export function layout (title: string, body: string, who?: string, signOutCsrf?: string): string {
  const bar = who === undefined
    ? ''
    : `<header><span>Signed in as <strong>${e(who)}</strong></span><form class="inline" method="post" action="/approvals/sign-out"><input type="hidden" name="csrf" value="${e(signOutCsrf ?? '')}"><button type="submit">Sign out</button></form></header>`
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="same-origin"><title>${e(title)} · mcp-warden</title><style>${STYLE}</style></head>
<body><main>${bar}${body}</main></body></html>`
}

/** Arguments as the agent sent them, pretty-printed (as text when they are not JSON). */
function prettyArguments (text: string): string {
  try { return JSON.stringify(JSON.parse(text), null, 2) } catch { return text }
}

export interface ApprovalView {
  readonly record: ApprovalRecord
  readonly csrf: string
  readonly who: string
  readonly signOutCsrf: string
}

export function approvalPage (v: ApprovalView): string {
  const r = v.record
  const rows: Array<[string, string]> = [
    ['Server', r.server],
    ['Tool', r.tool],
    ['Agent', r.agentId],
    ['On behalf of user', r.userId === '' ? '(none)' : r.userId],
    ['Department', r.department === '' ? '(none)' : r.department],
    ['Asked for by policy', r.policies.join(', ')],
    ['Why', r.advice.join('; ')],
    ['Who may approve', r.approvers.join('; ')],
    ['Requested', new Date(r.requestedAt).toISOString()],
    ['Expires', new Date(r.expiresAt).toISOString()],
    ['Arguments SHA-256', r.argumentsSha256],
    ['Policy version', r.policyVersion],
    ['Approval id', r.id]
  ]
  const form = `<form method="post" action="/approvals/${e(r.id)}">
<input type="hidden" name="csrf" value="${e(v.csrf)}">
<label for="reason">Reason (optional)</label>
<textarea id="reason" name="reason" rows="3" maxlength="500"></textarea>
<button class="approve" type="submit" name="decision" value="approve">Approve this call</button>
<button class="deny" type="submit" name="decision" value="deny">Deny</button>
</form>`
  return layout(`Approve ${r.server}/${r.tool}?`, `<h1>Approve one call of <code>${e(r.server)}/${e(r.tool)}</code>?</h1>
<p>An agent asks to run the call below. Approving lets exactly this call, with exactly these arguments, run once, for this agent and user.</p>
<dl>${rows.map(([k, val]) => `<dt>${e(k)}</dt><dd>${e(val)}</dd>`).join('')}</dl>
<h2>Arguments</h2>
<pre id="arguments">${escapeHtml(prettyArguments(r.arguments), true)}</pre>
${form}
<p><a href="/approvals">All pending approvals</a></p>`, v.who, v.signOutCsrf)
}

export function listPage (records: readonly ApprovalRecord[], who: string, signOutCsrf: string): string {
  const rows = records.map(r => `<tr><td><a href="/approvals/${e(r.id)}">${e(r.server)}/${e(r.tool)}</a></td><td>${e(r.agentId)}</td><td>${e(r.userId)}</td><td>${e(r.policies.join(', '))}</td><td>${e(new Date(r.expiresAt).toISOString())}</td></tr>`).join('')
  return layout('Pending approvals', `<h1>Pending approvals</h1>
${records.length === 0 ? '<p>Nothing is waiting for approval.</p>' : `<table><thead><tr><th>Call</th><th>Agent</th><th>User</th><th>Policy</th><th>Expires</th></tr></thead><tbody>${rows}</tbody></table>`}`, who, signOutCsrf)
}

export function decidedPage (r: ApprovalRecord, who: string, signOutCsrf: string): string {
  const verb = r.status === 'approved' ? 'approved' : 'denied'
  return layout(`Call ${verb}`, `<h1>You ${verb} the call of <code>${e(r.server)}/${e(r.tool)}</code></h1>
<p>${r.status === 'approved' ? 'The agent may now run this exact call once, until ' + e(new Date(r.expiresAt).toISOString()) + '.' : 'The agent is refused; a new request would need a new approval.'}</p>
<p><a href="/approvals">All pending approvals</a></p>`, who, signOutCsrf)
}

export function signInPage (o: { next: string, oidc: boolean, csrf: string, error?: string }): string {
  return layout('Sign in', `<h1>Sign in to approve calls</h1>
${o.error !== undefined ? `<p class="note">${e(o.error)}</p>` : ''}
${o.oidc ? `<p><a href="/approvals/sign-in?next=${encodeURIComponent(o.next)}&amp;oidc=1">Sign in with your identity provider</a></p><p>Or paste an approver token:</p>` : '<p>Paste an approver token (a JWT of the identity provider for this gateway\'s approvals):</p>'}
<form method="post" action="/approvals/sign-in">
<input type="hidden" name="csrf" value="${e(o.csrf)}"><input type="hidden" name="next" value="${e(o.next)}">
<label for="token">Approver token</label><input type="password" id="token" name="token" autocomplete="off">
<button type="submit">Sign in</button></form>`)
}

export function messagePage (title: string, text: string, who?: string, signOutCsrf?: string): string {
  return layout(title, `<h1>${e(title)}</h1><p>${e(text)}</p><p><a href="/approvals">All pending approvals</a></p>`, who, signOutCsrf)
}
