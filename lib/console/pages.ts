/**
 * The operator console's pages (DESIGN §13), rendered on the server. Everything that came from
 * an agent, an upstream or a token (ids, tool names and definitions, reasons, claims) is
 * escaped; the pages load one style sheet and, on the live view only, one script, both from the
 * console itself (the Content-Security-Policy allows nothing else).
 */
import { escapeHtml } from '../approvals/page.js'
import type { AuditRecord } from '../../plugins/decorations.js'
import type { ApprovalRecord } from '../approvals/types.js'
import type { AgentSummary, DecisionQuery } from './decision-index.js'
import type { QuarantinedTool } from '../tools/guard.js'
import type { Finding } from '../tools/scanner.js'

const e = (text: unknown): string => escapeHtml(String(text ?? ''))
/** A form field's value: HTML-escaped only, so that the form sends back exactly what it was given (invisible characters included). */
const attr = (text: string): string => text.replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`)

/** What every page knows of the signed-in person. */
export interface Viewer {
  readonly who: string
  readonly roles: readonly string[]
  readonly signOutCsrf: string
  /** The pages their roles open (Cedar decided each one). */
  readonly may: { readonly operate: boolean, readonly approve: boolean }
}

const NAV: Array<[string, string, keyof Viewer['may'] | null]> = [
  ['/console/decisions', 'Decisions', null],
  ['/console/live', 'Live', null],
  ['/console/quarantine', 'Quarantine', null],
  ['/console/approvals', 'Approvals', 'approve'],
  ['/console/playground', 'Playground', null]
]

export function layout (title: string, body: string, viewer?: Viewer, options: { script?: string, current?: string } = {}): string {
  const nav = viewer === undefined
    ? ''
    : `<header class="bar"><a class="brand" href="/console/decisions">mcp-warden</a><nav aria-label="Console">${NAV.filter(([, , need]) => need === null || viewer.may[need])
      .map(([href, label]) => `<a href="${href}"${options.current === href ? ' aria-current="page"' : ''}>${label}</a>`).join('')}</nav>
<form class="who" method="post" action="/console/sign-out"><span>${e(viewer.who)} <small>(${e(viewer.roles.join(', ') || 'no roles')})</small></span><input type="hidden" name="csrf" value="${e(viewer.signOutCsrf)}"><button type="submit">Sign out</button></form></header>`
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="same-origin"><title>${e(title)} · mcp-warden console</title>
<link rel="stylesheet" href="/console/assets/console.css">${options.script !== undefined ? `<script src="${options.script}" defer></script>` : ''}</head>
<body>${nav}<main id="main">${body}</main></body></html>`
}

export function messagePage (title: string, text: string, viewer?: Viewer): string {
  return layout(title, `<h1>${e(title)}</h1><p>${e(text)}</p>`, viewer)
}

export function signInPage (o: { oidc: boolean, csrf: string, audience: string, error?: string }): string {
  return layout('Sign in', `<h1>Sign in to the console</h1>
${o.error !== undefined ? `<p class="note" role="alert">${e(o.error)}</p>` : ''}
${o.oidc ? '<p><a class="button" href="/console/sign-in?oidc=1">Sign in with your identity provider</a></p><p>Or paste an operator token:</p>' : '<p>Paste an operator token: a JWT of the identity provider whose <code>aud</code> is <code>' + e(o.audience) + '</code>.</p>'}
<form method="post" action="/console/sign-in" class="stack">
<input type="hidden" name="csrf" value="${e(o.csrf)}">
<label for="token">Operator token</label><input type="password" id="token" name="token" autocomplete="off" required>
<button type="submit">Sign in</button></form>`)
}

// ---- decision log ------------------------------------------------------------------------

const OUTCOMES = ['allow', 'deny', 'error'] as const

function target (r: AuditRecord): string {
  return r.tool ?? r.uri ?? r.prompt ?? ''
}

function time (iso: string): string {
  return e(iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z'))
}

function outcomeBadge (outcome: string): string {
  return `<span class="badge ${OUTCOMES.includes(outcome as typeof OUTCOMES[number]) ? outcome : 'error'}">${e(outcome)}</span>`
}

function query (q: Record<string, string | undefined>): string {
  const p = new URLSearchParams()
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== '') p.set(k, v)
  const s = p.toString()
  return s === '' ? '' : `?${s}`
}

export function decisionRows (rows: readonly AuditRecord[]): string {
  if (rows.length === 0) return '<p>No decision matches.</p>'
  return `<div class="scroll"><table class="log"><thead><tr><th>Time</th><th>Outcome</th><th>Agent</th><th>User</th><th>Server</th><th>Method</th><th>Tool / target</th><th>Status</th></tr></thead><tbody>${rows.map(r => {
    const id = r.decisionId ?? r.requestId
    return `<tr><td class="time"><a href="/console/decisions/${encodeURIComponent(id)}">${time(r.time)}</a></td><td>${outcomeBadge(r.outcome)}</td><td>${r.agentId !== null ? `<a href="/console/agents/${encodeURIComponent(r.agentId)}">${e(r.agentId)}</a>` : ''}</td><td>${e(r.userId ?? '')}</td><td>${e(r.server ?? '')}</td><td>${e(r.method ?? r.event ?? r.httpMethod)}</td><td>${e(target(r))}</td><td>${e(r.status)}</td></tr>`
  }).join('')}</tbody></table></div>`
}

export function decisionsPage (v: Viewer, q: DecisionQuery, rows: readonly AuditRecord[], next: string | undefined, indexed: number, rebuilding = false): string {
  const field = (name: keyof DecisionQuery, label: string, type = 'text'): string =>
    `<label>${label}<input type="${type}" name="${name}" value="${e(q[name] ?? '')}"></label>`
  const filters = `<form method="get" action="/console/decisions" class="filters" role="search">
${field('agent', 'Agent')}${field('user', 'User')}${field('server', 'Server')}${field('tool', 'Tool')}
<label>Outcome<select name="outcome"><option value="">any</option>${OUTCOMES.map(o => `<option${q.outcome === o ? ' selected' : ''}>${o}</option>`).join('')}</select></label>
${field('from', 'From (ISO time)')}${field('to', 'To (ISO time)')}${field('id', 'Decision or request id')}
<button type="submit">Search</button> <a href="/console/decisions">Clear</a></form>`
  const { cursor: _c, limit: _l, ...kept } = q
  const more = next !== undefined ? `<p><a class="button" href="/console/decisions${query({ ...kept as Record<string, string>, cursor: next })}" rel="next">Older decisions</a></p>` : ''
  return layout('Decisions', `<h1>Decisions</h1><p class="muted">${indexed} records indexed, newest first.${rebuilding ? ' The index is still being rebuilt from the audit file: older records are still coming in.' : ''}</p>${filters}${decisionRows(rows)}${more}`, v, { current: '/console/decisions' })
}

export interface PolicyShown { readonly id: string, readonly text?: string, readonly advice?: string }

export function decisionPage (v: Viewer, r: AuditRecord, policies: readonly PolicyShown[], sameVersion: boolean): string {
  const fields: Array<[string, unknown]> = [
    ['Outcome', r.outcome], ['Reason', r.reason], ['Time', r.time], ['Decision id', r.decisionId ?? '(none)'], ['Request id', r.requestId],
    ['Agent', r.agentId ?? '(none)'], ['User', r.userId ?? '(none)'], ['Server', r.server ?? ''], ['HTTP method', r.httpMethod],
    ['MCP method', r.method ?? ''], ['JSON-RPC id', r.rpcId ?? ''], ['Tool / target', target(r)], ['Event', r.event ?? ''],
    ['Ephemeral token id (jti)', r.upstreamTokenId ?? '(none minted)'], ['Approval', r.approvalId ?? ''], ['Approver', r.approver ?? ''],
    ['Operator', r.operator ?? ''], ['Status', r.status], ['Duration (ms)', r.durationMs], ['Policy version', r.policyVersion ?? '']
  ]
  const dl = fields.filter(([, val]) => val !== '').map(([k, val]) => `<dt>${e(k)}</dt><dd>${k === 'Outcome' ? outcomeBadge(String(val)) : e(val)}</dd>`).join('')
  const pol = policies.length === 0
    ? '<p>No policy determined this decision (no permit applied, so the default deny; or the request was refused before Cedar).</p>'
    : policies.map(p => `<section class="policy"><h3 id="policy-${e(p.id)}"><code>${e(p.id)}</code></h3>${p.advice !== undefined ? `<p class="advice">${e(p.advice)}</p>` : ''}${p.text !== undefined ? `<pre>${escapeHtml(p.text, true)}</pre>` : '<p class="muted">Not in the live policy set any more.</p>'}</section>`).join('')
  const truncated = (r as { indexTruncated?: unknown }).indexTruncated
  const cut = Array.isArray(truncated) && truncated.length > 0 ? `<p class="note">Long values (${e(truncated.join(', '))}) are cut short in the console; the audit file has them whole.</p>` : ''
  return layout('Decision', `<h1>Decision ${outcomeBadge(r.outcome)}</h1>${cut}<dl>${dl}</dl>
<h2>Deciding policies</h2>${sameVersion ? '' : '<p class="note">The policy set has changed since this decision; the text shown is the live one.</p>'}${pol}
${r.agentId !== null ? `<p><a href="/console/agents/${encodeURIComponent(r.agentId)}">Everything agent ${e(r.agentId)} did</a></p>` : ''}`, v, { current: '/console/decisions' })
}

/** Calls over time as stacked bars (inline SVG, no script). */
function chart (s: AgentSummary): string {
  const w = 720
  const h = 160
  const n = s.buckets.length
  const max = Math.max(1, ...s.buckets.map(b => b.allow + b.deny + b.error))
  const bw = w / Math.max(1, n)
  const bars = s.buckets.map((b, i) => {
    let y = h
    const parts: string[] = []
    for (const [k, cls] of [['allow', 'a'], ['deny', 'd'], ['error', 'x']] as const) {
      const bh = (b[k] / max) * (h - 10)
      if (bh <= 0) continue
      y -= bh
      parts.push(`<rect class="${cls}" x="${(i * bw + 1).toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(1, bw - 2).toFixed(1)}" height="${bh.toFixed(1)}"><title>${time(b.start)}: ${b[k]} ${k}</title></rect>`)
    }
    return parts.join('')
  }).join('')
  const first = s.buckets[0]?.start ?? ''
  // The end of the period: the last bucket's start plus one bucket's width.
  const width = n >= 2 ? Date.parse(s.buckets[1]!.start) - Date.parse(first) : 0
  const last = n === 0 ? '' : new Date(Date.parse(s.buckets[n - 1]!.start) + width).toISOString()
  return `<figure class="chart"><svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img" aria-label="Calls over time: allowed, denied, errors">${bars}</svg>
<figcaption><span class="key a"></span>allowed <span class="key d"></span>denied <span class="key x"></span>error · ${time(first)} to ${time(last)} · highest bar ${max}</figcaption></figure>`
}

export function agentPage (v: Viewer, s: AgentSummary): string {
  const tools = s.topTools.length === 0
    ? '<p>No calls.</p>'
    : `<table class="tools"><thead><tr><th>Tool</th><th>Calls</th><th>Denied</th></tr></thead><tbody>${s.topTools.map(t => `<tr><td><a href="/console/decisions${query({ agent: s.agentId, tool: t.tool })}">${e(t.tool)}</a></td><td>${t.calls}</td><td>${t.denials}</td></tr>`).join('')}</tbody></table>`
  return layout(`Agent ${s.agentId}`, `<h1>Agent <code>${e(s.agentId)}</code></h1>
<p class="muted">${s.total} records in this period. <a href="/console/decisions${query({ agent: s.agentId })}">Search its decisions</a></p>
${chart(s)}<div class="cols"><section><h2>Top tools</h2>${tools}</section><section><h2>Latest denials</h2>${decisionRows(s.denials)}</section></div>`, v, { current: '/console/decisions' })
}

// ---- quarantine --------------------------------------------------------------------------

/** The tool's definition with each finding's excerpt marked. */
function highlighted (definition: unknown, findings: readonly Finding[]): string {
  const text = JSON.stringify(definition, null, 2)
  let html = escapeHtml(text, true)
  for (const f of findings) {
    const needle = escapeHtml(f.excerpt, true)
    if (needle.length < 3) continue
    const at = html.indexOf(needle)
    if (at >= 0) html = `${html.slice(0, at)}<mark title="${e(f.rule)}">${needle}</mark>${html.slice(at + needle.length)}`
  }
  return html
}

export function quarantinePage (v: Viewer, tools: readonly QuarantinedTool[], diffs: ReadonlyMap<QuarantinedTool, ReadonlyArray<{ op: string, text: string }>>, csrf: (t: QuarantinedTool) => string, done?: string): string {
  const items = tools.map((t, i) => {
    const findings = t.findings.length === 0
      ? ''
      : `<ul class="findings">${t.findings.map(f => `<li><strong>${e(f.rule)}</strong> at <code>${e(f.path || '(whole tool)')}</code>: <mark>${e(f.excerpt)}</mark> <span class="muted">${e(f.description)}</span></li>`).join('')}</ul>`
    const diff = diffs.get(t)
    const diffHtml = diff !== undefined && t.pinned !== undefined
      ? `<h4>Change against the pinned definition</h4><pre class="diff">${diff.map(l => `<span class="${l.op === '+' ? 'add' : l.op === '-' ? 'del' : 'ctx'}">${l.op === ' ' ? '&nbsp;' : e(l.op)} ${escapeHtml(l.text)}</span>`).join('\n')}</pre>`
      : ''
    const actions = v.may.operate
      ? `<form method="post" action="/console/quarantine" class="actions">
<input type="hidden" name="csrf" value="${attr(csrf(t))}"><input type="hidden" name="server" value="${attr(t.server)}"><input type="hidden" name="tool" value="${attr(t.tool)}"><input type="hidden" name="hash" value="${attr(t.hash)}">
<label for="note-${i}">Note (optional)</label><input type="text" id="note-${i}" name="note" maxlength="300">
<button class="approve" type="submit" name="action" value="approve">Approve this definition</button><button type="submit" name="action" value="keep">Keep quarantined</button></form>`
      : '<p class="muted">Operators decide on quarantined tools.</p>'
    return `<article class="card" id="q-${i}"><h2><code>${e(t.server)}/${e(t.tool)}</code> <span class="badge deny">${e(t.kind)}</span></h2>
<p>${e(t.reason)}</p>${findings}<p class="muted">Definition ${e(t.hash.slice(0, 12))}${t.seenAt !== undefined ? `, seen ${time(t.seenAt)}` : ''}</p>
<details${t.pinned === undefined ? ' open' : ''}><summary>Held definition</summary><pre>${highlighted(t.definition, t.findings)}</pre></details>${diffHtml}${actions}</article>`
  }).join('')
  return layout('Quarantine', `<h1>Quarantined tools</h1>${done !== undefined ? `<p class="note" role="status">${e(done)}</p>` : ''}
${tools.length === 0 ? '<p>No tool is quarantined.</p>' : items}`, v, { current: '/console/quarantine' })
}

// ---- approvals ---------------------------------------------------------------------------

export function approvalsPage (v: Viewer, pending: readonly ApprovalRecord[], pageUrl: (id: string) => string): string {
  const rows = pending.map(r => `<tr><td><a href="${e(pageUrl(r.id))}">${e(r.server)}/${e(r.tool)}</a></td><td>${e(r.agentId)}</td><td>${e(r.userId)}</td><td>${e(r.policies.join(', '))}</td><td>${e(r.approvers.join('; '))}</td><td>${time(new Date(r.expiresAt).toISOString())}</td></tr>`).join('')
  return layout('Approvals', `<h1>Calls waiting for approval</h1>
<p>Each call opens its approval page, where you sign in as an approver and see the exact arguments. Whether you may approve it is decided there.</p>
${pending.length === 0 ? '<p>Nothing is waiting for approval.</p>' : `<div class="scroll"><table><thead><tr><th>Call</th><th>Agent</th><th>User</th><th>Policy</th><th>Who may approve</th><th>Expires</th></tr></thead><tbody>${rows}</tbody></table></div>`}`, v, { current: '/console/approvals' })
}

// ---- playground --------------------------------------------------------------------------

export interface PlaygroundForm {
  readonly agent: string
  readonly claims: string
  readonly server: string
  readonly tool: string
  readonly args: string
  readonly at: string
  readonly policies: string
}

export interface PlaygroundResult {
  readonly title: string
  readonly outcome?: string
  readonly lines: readonly string[]
  readonly error?: string
}

export function playgroundPage (v: Viewer, o: {
  form: PlaygroundForm
  agents: ReadonlyArray<{ agentId: string, label: string }>
  servers: readonly string[]
  csrf: string
  reloadCsrf: string
  results: readonly PlaygroundResult[]
  liveVersion: string
  notice?: string
}): string {
  const f = o.form
  const results = o.results.map(r => `<section class="result" aria-live="polite"><h2>${e(r.title)}${r.outcome !== undefined ? ` ${outcomeBadge(r.outcome)}` : ''}</h2>${r.error !== undefined ? `<p class="note" role="alert">${e(r.error)}</p>` : ''}${r.lines.length > 0 ? `<pre class="explain">${r.lines.map(l => escapeHtml(l)).join('\n')}</pre>` : ''}</section>`).join('')
  return layout('Policy playground', `<h1>Policy playground</h1>
<p>A request in, the decision and the deciding policies out: against the live policy set (version <code>${e(o.liveVersion)}</code>) and, when you give one, against an edited policy text, which is validated against the schema and never saved.</p>
${o.notice !== undefined ? `<p class="note" role="status">${e(o.notice)}</p>` : ''}
${results}
<form method="post" action="/console/playground" class="stack">
<input type="hidden" name="csrf" value="${e(o.csrf)}">
<label for="agent">Agent seen recently</label><select id="agent" name="agent"><option value="">(use the claims below)</option>${o.agents.map(a => `<option value="${e(a.agentId)}"${a.agentId === f.agent ? ' selected' : ''}>${e(a.label)}</option>`).join('')}</select>
<label for="claims">Or the agent's token claims (JSON)</label><textarea id="claims" name="claims" rows="4" spellcheck="false">${attr(f.claims)}</textarea>
<label for="server">Server</label><select id="server" name="server">${o.servers.map(s => `<option${s === f.server ? ' selected' : ''}>${e(s)}</option>`).join('')}</select>
<label for="tool">Tool (empty: connect, as tools/list)</label><input type="text" id="tool" name="tool" value="${e(f.tool)}">
<label for="args">Arguments (JSON object)</label><textarea id="args" name="args" rows="3" spellcheck="false">${attr(f.args)}</textarea>
<label for="at">At (ISO time; empty: now)</label><input type="text" id="at" name="at" value="${e(f.at)}" placeholder="2026-11-26T10:00:00+09:00">
<label for="policies">Edited policy text (optional; replaces the whole policy set for this try; <a href="/console/playground?edit=1">start from the live text</a>)</label><textarea id="policies" name="policies" rows="10" spellcheck="false">${attr(f.policies)}</textarea>
<button type="submit">Decide</button></form>
${v.may.operate ? `<form method="post" action="/console/policies/reload" class="inline"><input type="hidden" name="csrf" value="${e(o.reloadCsrf)}"><button type="submit">Reload the live policies from disk</button></form>` : ''}`, v, { current: '/console/playground' })
}

// ---- live view ---------------------------------------------------------------------------

export function livePage (v: Viewer, q: { agent?: string, server?: string, tool?: string, outcome?: string }): string {
  const field = (name: 'agent' | 'server' | 'tool', label: string): string => `<label>${label}<input type="text" name="${name}" value="${e(q[name] ?? '')}"></label>`
  return layout('Live decisions', `<h1>Live decisions</h1>
<form method="get" action="/console/live" class="filters" role="search">${field('agent', 'Agent')}${field('server', 'Server')}${field('tool', 'Tool')}
<label>Outcome<select name="outcome"><option value="">any</option>${OUTCOMES.map(o => `<option${q.outcome === o ? ' selected' : ''}>${o}</option>`).join('')}</select></label><button type="submit">Filter</button></form>
<p id="live-status" class="muted" role="status" data-events="/console/live/events${e(query(q))}">Connecting…</p>
<div class="scroll"><table class="log"><thead><tr><th>Time</th><th>Outcome</th><th>Agent</th><th>User</th><th>Server</th><th>Method</th><th>Tool / target</th><th>Status</th></tr></thead><tbody id="live-rows"></tbody></table></div>
<noscript><p>The live view needs JavaScript; the <a href="/console/decisions">decision log</a> does not.</p></noscript>`, v, { script: '/console/assets/live.js', current: '/console/live' })
}
