/**
 * The console's two static files, served from the console itself (no CDN, no remote fonts):
 * its style sheet and the live view's script. The script builds rows with textContent only,
 * so what an agent or upstream sent is never parsed as HTML.
 */
export const CONSOLE_CSS = `:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#f6f7f9;--card:#fff;--allow:#1a7f37;--deny:#cf222e;--error:#9a6700;--focus:#0969da}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:var(--bg);color:var(--fg)}
a{color:#0550ae}a:focus,button:focus,input:focus,select:focus,textarea:focus,summary:focus{outline:3px solid var(--focus);outline-offset:2px}
main{max-width:1240px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:22px;margin:8px 0 12px}h2{font-size:18px;margin:20px 0 8px}h3{font-size:15px;margin:12px 0 6px}
.bar{display:flex;flex-wrap:wrap;align-items:center;gap:8px 18px;padding:10px 20px;background:#24292f;color:#fff}
.bar a{color:#fff;text-decoration:none;padding:4px 2px}.bar a[aria-current=page]{border-bottom:2px solid #fff}
.bar nav{display:flex;flex-wrap:wrap;gap:4px 16px;flex:1}.brand{font-weight:700}
.who{display:flex;align-items:center;gap:8px;margin:0}.who small{color:#d0d7de}.who button{margin:0;padding:4px 10px;background:#fff;color:var(--fg)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 16px;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:14px}
dt{font-weight:600}dd{margin:0;word-break:break-word}
pre{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px;overflow:auto;max-height:420px;white-space:pre-wrap;word-break:break-word;font-size:13px}
table{border-collapse:collapse;width:100%;background:var(--card)}td,th{border:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
td{overflow-wrap:break-word}td.time{white-space:nowrap}th{background:#eef1f4;font-weight:600;white-space:nowrap}
.scroll{overflow-x:auto}
label{display:block;font-weight:600;font-size:13px;margin:8px 0 2px}
input[type=text],input[type=password],select,textarea{width:100%;font:inherit;padding:7px;border:1px solid var(--line);border-radius:6px;background:#fff}
textarea{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
button,.button{display:inline-block;font:inherit;padding:7px 16px;border-radius:6px;border:1px solid var(--fg);margin:10px 8px 0 0;cursor:pointer;background:#fff;color:var(--fg);text-decoration:none}
.approve{background:var(--allow);color:#fff;border-color:var(--allow)}
.filters{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:0 12px;align-items:end;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px 12px 12px;margin-bottom:12px}
.filters label{margin-top:4px}.filters button{margin-top:8px}
.stack{max-width:760px}.inline{display:inline}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:700;color:#fff;background:var(--muted)}
.badge.allow{background:var(--allow)}.badge.deny{background:var(--deny)}.badge.error{background:var(--error)}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px}
.muted{color:var(--muted)}.advice{font-style:italic}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:12px 16px;margin:12px 0}
.card h2{margin-top:4px}
mark{background:#ffd8b5;color:inherit;border-bottom:2px solid var(--deny)}
.diff .add{background:#dafbe1;display:block}.diff .del{background:#ffebe9;display:block}.diff .ctx{display:block;color:var(--muted)}
.chart{margin:8px 0 16px;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px}
.chart svg{width:100%;height:160px;display:block}
.chart rect.a,.key.a{fill:var(--allow);background:var(--allow)}.chart rect.d,.key.d{fill:var(--deny);background:var(--deny)}.chart rect.x,.key.x{fill:var(--error);background:var(--error)}
.key{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
figcaption{font-size:13px;color:var(--muted)}
.cols{display:grid;grid-template-columns:minmax(0,1fr);gap:8px}.cols table.tools{max-width:640px}
.result pre.explain{background:#0d1117;color:#e6edf3}
.findings{margin:6px 0}
@media (max-width:760px){
  main{padding:10px}
  dl{grid-template-columns:1fr}dt{margin-top:6px}
  .bar{padding:8px 10px}.who{width:100%;justify-content:space-between}
  table.log th:nth-child(4),table.log td:nth-child(4),table.log th:nth-child(6),table.log td:nth-child(6),table.log th:nth-child(8),table.log td:nth-child(8){display:none}
}
`

export const LIVE_JS = `'use strict'
;(function () {
  var status = document.getElementById('live-status')
  var rows = document.getElementById('live-rows')
  if (status === null || rows === null) return
  var MAX_ROWS = 500
  // Control and invisible characters (bidi overrides, zero-width) shown as marks, as on the other pages.
  function marked (text) { return String(text).replace(/[\\p{Cc}\\p{Cf}\\u2028\\u2029]/gu, function (c) { return '\\\\u{' + c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0') + '}' }) }
  function cell (tr, text) { var td = document.createElement('td'); td.textContent = text == null ? '' : marked(text); tr.appendChild(td); return td }
  function link (td, href, text) { td.textContent = ''; var a = document.createElement('a'); a.href = href; a.textContent = marked(text); td.appendChild(a) }
  var source = new EventSource(status.getAttribute('data-events'))
  source.addEventListener('open', function () { status.textContent = 'Connected: new decisions appear at the top.' })
  source.addEventListener('error', function () { status.textContent = 'Disconnected; reconnecting…' })
  source.addEventListener('decision', function (event) {
    var r
    try { r = JSON.parse(event.data) } catch (err) { return }
    var tr = document.createElement('tr')
    link(cell(tr, ''), '/console/decisions/' + encodeURIComponent(r.decisionId || r.requestId), String(r.time || '').replace('T', ' '))
    var badge = document.createElement('span')
    badge.className = 'badge ' + (r.outcome === 'allow' || r.outcome === 'deny' ? r.outcome : 'error')
    badge.textContent = String(r.outcome)
    cell(tr, '').appendChild(badge)
    var agent = cell(tr, r.agentId)
    if (typeof r.agentId === 'string') link(agent, '/console/agents/' + encodeURIComponent(r.agentId), r.agentId)
    cell(tr, r.userId); cell(tr, r.server); cell(tr, r.method || r.event || r.httpMethod)
    cell(tr, r.tool || r.uri || r.prompt || ''); cell(tr, r.status)
    rows.insertBefore(tr, rows.firstChild)
    while (rows.childNodes.length > MAX_ROWS) rows.removeChild(rows.lastChild)
  })
})()
`
