/**
 * The console's decision index: audit records (plugins/audit.ts, one JSON line per MCP request) in
 * an in-memory SQLite database (sql.js, SQLite compiled to WebAssembly), searchable by agent,
 * user, server, tool, outcome, time and id, newest first, a page at a time.
 *
 * Each row keeps the record's JSON text as written, so a record comes back exactly as the audit
 * log has it; the searched fields are copied into indexed columns beside it. Times are indexed as
 * milliseconds since the epoch (a record whose `time` does not parse is not a record). The target
 * of a call (its `tool`, else its `uri`, else its `prompt`) is one column: the `tool` filter, the
 * top tools of an agent and the tool picker all read it.
 *
 * Every value reaches SQLite as a bound parameter. The SQL text of a search is put together from
 * fixed fragments, chosen by which filters are present, and its prepared statement is kept for the
 * next search with the same filters; the insert statement is prepared once.
 *
 * The index holds at most `maxRecords` rows: past that, the oldest (by time) are deleted, one
 * hundredth of `maxRecords` at a time, so that a delete runs once per that many inserts. The JSON
 * text it holds is capped too (`maxTextLength`), and so is one record's: a flood of records with
 * huge values (a tool name as long as a request body may be) evicts older records rather than
 * growing the WebAssembly heap without end.
 *
 * The pickers' lists (agents, server and tool pairs) are tallies kept beside the table, counted
 * up on insert and down on delete, so that showing a picker scans nothing.
 */
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'
import type { Database, SqlValue, Statement } from 'sql.js'
import type { AuditRecord } from '../../plugins/decorations.js'

export interface DecisionQuery {
  /** Exact matches. `tool` matches a call's tool, resource uri or prompt name. */
  agent?: string
  user?: string
  server?: string
  tool?: string
  outcome?: 'allow' | 'deny' | 'error'
  /** ISO times: records at or after `from`, before `to`. */
  from?: string
  to?: string
  /** A decisionId or a requestId, exact. */
  id?: string
  /** Rows per page: default 50, clamped to 1..200. */
  limit?: number
  /** Opaque: the previous page's `next`. */
  cursor?: string
}

/** Newest first (time descending, then the order the records were added, latest first). */
export interface DecisionPage { rows: AuditRecord[], next?: string }

export interface AgentSummary {
  agentId: string
  /** Calls over time: equal-width buckets from `from` to `to`, every one present, oldest first. */
  buckets: Array<{ start: string, allow: number, deny: number, error: number }>
  /** The 10 targets with most calls; `denials` counts deny and error outcomes. */
  topTools: Array<{ tool: string, calls: number, denials: number }>
  /** The newest 20 deny and error records. */
  denials: AuditRecord[]
  /** Calls in the window. */
  total: number
}

const DEFAULT_MAX_RECORDS = 100_000
const DEFAULT_LIMIT = 50
const MAX_LIMIT = 200
const MAX_BUCKETS = 1000
const TOP_TOOLS = 10
const RECENT_DENIALS = 20
/** Lines of a file inserted in one transaction. */
const LOAD_BATCH = 500
/** A record (or a line of a file) whose JSON text is longer than this is not indexed. */
/** Audit lines longer than this are not read at all (a line holds at most two request bodies). */
const MAX_RECORD_LENGTH = 32 * 1024 * 1024
/** Longer text values of a record are cut to this many characters in the index (the audit file keeps them whole). */
export const MAX_INDEXED_VALUE = 1024
/** Records whose JSON is longer than this are compacted before they are indexed. */
const COMPACT_OVER = 4 * 1024

/**
 * A record as the index keeps it: text values longer than MAX_INDEXED_VALUE cut, with
 * `indexTruncated` naming them, and at most 64 policy ids, so that an agent sending huge names or
 * ids cannot push other agents' records out of the index or keep its own out of it.
 */
export function compactRecord (record: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  const cut: string[] = []
  for (const [k, v] of Object.entries(record)) {
    if (typeof v === 'string' && v.length > MAX_INDEXED_VALUE) {
      out[k] = `${v.slice(0, MAX_INDEXED_VALUE)}…`
      cut.push(k)
    } else if (Array.isArray(v) && k === 'policies') {
      const ids = v.slice(0, 64).map(p => typeof p === 'string' && p.length > MAX_INDEXED_VALUE ? `${p.slice(0, MAX_INDEXED_VALUE)}…` : p)
      if (v.length > 64 || ids.some((p, i) => p !== v[i])) cut.push(k)
      out[k] = ids
    } else if (v !== null && typeof v === 'object') {
      const text = JSON.stringify(v)
      if (text.length > MAX_INDEXED_VALUE) { out[k] = `${text.slice(0, MAX_INDEXED_VALUE)}…`; cut.push(k) } else out[k] = v
    } else {
      out[k] = v
    }
  }
  if (cut.length > 0) out.indexTruncated = cut
  return out
}
const DEFAULT_MAX_TEXT_LENGTH = 256 * 1024 * 1024
const DAY_MS = 24 * 60 * 60 * 1000
const OUTCOMES = new Set(['allow', 'deny', 'error'])

// sql.js keeps its main database in a file of Emscripten's in-memory file system: every page
// written goes through that file layer. The index lives in an attached `:memory:` database
// instead, SQLite's own page cache, which costs a third as much per insert. The agent index
// also holds outcome and target, so that an agent's summary reads no row.
const SCHEMA = `
ATTACH DATABASE ':memory:' AS mem;
PRAGMA mem.journal_mode = OFF;
PRAGMA mem.synchronous = OFF;
PRAGMA temp_store = MEMORY;
CREATE TABLE mem.decisions (
  id INTEGER PRIMARY KEY,
  ms INTEGER NOT NULL,
  request_id TEXT NOT NULL,
  dedupe TEXT NOT NULL,
  decision_id TEXT,
  agent_id TEXT,
  user_id TEXT,
  server TEXT,
  target TEXT,
  outcome TEXT NOT NULL,
  json TEXT NOT NULL
);
CREATE UNIQUE INDEX mem.decisions_key ON decisions (request_id, dedupe);
CREATE INDEX mem.decisions_ms ON decisions (ms);
CREATE INDEX mem.decisions_decision ON decisions (decision_id);
CREATE INDEX mem.decisions_agent ON decisions (agent_id, ms, outcome, target);
CREATE INDEX mem.decisions_user ON decisions (user_id, ms);
CREATE INDEX mem.decisions_server ON decisions (server, ms);
CREATE INDEX mem.decisions_target ON decisions (target, ms);
CREATE INDEX mem.decisions_outcome ON decisions (outcome, ms);
`

const INSERT = `INSERT OR IGNORE INTO decisions (ms, request_id, dedupe, decision_id, agent_id, user_id, server, target, outcome, json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
const PRUNE = 'DELETE FROM decisions WHERE id IN (SELECT id FROM decisions ORDER BY ms, id LIMIT ?) RETURNING json'
const GET = 'SELECT json FROM decisions WHERE decision_id = ? OR request_id = ? ORDER BY ms DESC, id DESC LIMIT 1'
// sql.js binds a number beyond 32 bits as a double: the casts keep the division an integer one.
const BUCKETS = `SELECT (ms - CAST(? AS INTEGER)) * CAST(? AS INTEGER) / CAST(? AS INTEGER) AS bucket, outcome, COUNT(*) FROM decisions
WHERE agent_id = ? AND ms >= ? AND ms < ? GROUP BY bucket, outcome`
const TOP = `SELECT MIN(id), COUNT(*) AS calls, SUM(outcome <> 'allow') FROM decisions
WHERE agent_id = ? AND ms >= ? AND ms < ? AND target IS NOT NULL
GROUP BY target ORDER BY calls DESC, target LIMIT ${TOP_TOOLS}`
const DENIALS = `SELECT json FROM decisions
WHERE agent_id = ? AND ms >= ? AND ms < ? AND outcome IN ('deny', 'error')
ORDER BY ms DESC, id DESC LIMIT ${RECENT_DENIALS}`
const BY_ID = 'SELECT json FROM decisions WHERE id = ?'

/** The exact-match filters of a search: the query field and its condition, bound to one value. */
const EXACT: ReadonlyArray<readonly [keyof DecisionQuery, string]> = [
  ['agent', 'agent_id = ?'],
  ['user', 'user_id = ?'],
  ['server', 'server = ?'],
  ['tool', 'target = ?'],
  ['outcome', 'outcome = ?']
]

type SqlJs = Awaited<ReturnType<typeof import('sql.js')['default']>>
let sqlJs: Promise<SqlJs> | undefined

/** sql.js is an optional peer dependency: loaded (and its WebAssembly compiled) on first use only, once. */
async function loadSqlJs (): Promise<SqlJs> {
  sqlJs ??= import('sql.js').then(async m => await m.default())
  try {
    return await sqlJs
  } catch (err) {
    sqlJs = undefined
    throw err
  }
}

const str = (v: unknown): string | null => typeof v === 'string' ? v : null
/** What a call acts on: its tool, else its resource uri, else its prompt. */
const targetOf = (r: Record<string, unknown>): string | null => str(r.tool) ?? str(r.uri) ?? str(r.prompt)

/** Milliseconds since the epoch of an ISO time, or NaN. */
function timeMs (v: unknown): number {
  if (typeof v !== 'string') return NaN
  return Date.parse(v)
}

/**
 * A query value that does not parse (`from`, `to`, `cursor`): its message names the field and
 * holds nothing of the value; `statusCode` 400 makes Fastify's error handler answer 400.
 */
export class DecisionQueryError extends RangeError {
  readonly statusCode = 400
  override name = 'DecisionQueryError'
}

/** A time of a query, in ms since the epoch. */
function queryTime (field: string, v: string): number {
  const ms = timeMs(v)
  if (!Number.isFinite(ms)) throw new DecisionQueryError(`${field}: not an ISO time`)
  return ms
}

function clamp (v: number | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined || typeof v !== 'number' || !Number.isFinite(v)) return dflt
  return Math.min(max, Math.max(min, Math.floor(v)))
}

function encodeCursor (ms: number, id: number): string {
  return Buffer.from(JSON.stringify([ms, id])).toString('base64url')
}

function decodeCursor (cursor: string): [number, number] {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
  } catch {
    value = null
  }
  if (!Array.isArray(value) || value.length !== 2 || !value.every(n => Number.isSafeInteger(n))) {
    throw new DecisionQueryError('cursor: not a cursor of this index')
  }
  return [value[0] as number, value[1] as number]
}

/** ms, requestId, dedupe key, decisionId, agentId, userId, server, target, outcome. */
type Columns = [number, string, string, string | null, string | null, string | null, string | null, string | null, string]

/** The indexed columns of a record (without its JSON), or null when it is not an audit record. */
function columns (record: unknown): Columns | null {
  if (typeof record !== 'object' || record === null || Array.isArray(record)) return null
  const r = record as Record<string, unknown>
  const ms = timeMs(r.time)
  if (!Number.isFinite(ms)) return null
  const requestId = r.requestId
  if (typeof requestId !== 'string' || requestId === '') return null
  const outcome = r.outcome
  if (typeof outcome !== 'string' || !OUTCOMES.has(outcome)) return null
  const dedupe = JSON.stringify([r.decisionId ?? null, r.method ?? null, r.event ?? null])
  return [ms, requestId, dedupe, str(r.decisionId), str(r.agentId), str(r.userId), str(r.server), targetOf(r), outcome]
}

interface AgentTally { calls: number, lastMs: number, lastSeq: number, lastTime: string }

/** An in-memory, searchable index of audit records, for the console. */
export class DecisionIndex {
  readonly #db: Database
  readonly #insert: Statement
  readonly #prune: Statement
  readonly #statements = new Map<string, Statement>()
  readonly #maxRecords: number
  readonly #maxTextLength: number
  readonly #pruneBatch: number
  #size = 0
  /** Characters of JSON text held. */
  #textLength = 0
  #closed = false
  /** Insertions so far: the order of records with the same time. */
  #seq = 0
  readonly #agents = new Map<string, AgentTally>()
  /** server → target → rows. */
  readonly #pairs = new Map<string, Map<string, number>>()

  private constructor (db: Database, maxRecords: number, maxTextLength: number) {
    this.#db = db
    this.#maxRecords = maxRecords
    this.#maxTextLength = maxTextLength
    this.#pruneBatch = Math.max(1, Math.ceil(maxRecords / 100))
    db.exec(SCHEMA)
    this.#insert = db.prepare(INSERT)
    this.#prune = db.prepare(PRUNE)
  }

  /**
   * `maxRecords` (default 100 000): the most records kept; `maxTextLength` (default 256 Mi): the
   * most JSON text kept, in characters. Past either, the oldest records go first.
   */
  static async create (opts: { maxRecords?: number, maxTextLength?: number } = {}): Promise<DecisionIndex> {
    const max = opts.maxRecords ?? DEFAULT_MAX_RECORDS
    if (!Number.isSafeInteger(max) || max < 1) throw new RangeError('maxRecords: a positive integer')
    const maxText = opts.maxTextLength ?? DEFAULT_MAX_TEXT_LENGTH
    if (!Number.isSafeInteger(maxText) || maxText < 1) throw new RangeError('maxTextLength: a positive integer')
    const SQL = await loadSqlJs()
    return new DecisionIndex(new SQL.Database(), max, maxText)
  }

  /** How many records the index holds. */
  get size (): number { return this.#size }

  /**
   * Indexes one record. False when it is already indexed (same requestId, decisionId, method and
   * event) or is not an audit record (no time, requestId or outcome); never throws.
   */
  add (record: AuditRecord): boolean {
    try {
      return this.#add(record, undefined)
    } catch {
      return false
    }
  }

  #add (given: unknown, json: string | undefined): boolean {
    if (this.#closed) return false
    let record = given
    let text = json ?? JSON.stringify(given)
    if (text.length > COMPACT_OVER && record !== null && typeof record === 'object' && !Array.isArray(record)) {
      record = compactRecord(record as Record<string, unknown>)
      text = JSON.stringify(record)
    }
    const cols = columns(record)
    if (cols === null) return false
    this.#insert.run([...cols, text])
    if (this.#db.getRowsModified() !== 1) return false
    this.#size++
    this.#textLength += text.length
    this.#tally(cols, (record as { time: string }).time)
    if (this.#size > this.#maxRecords) this.#deleteOldest(this.#size - this.#maxRecords + this.#pruneBatch - 1)
    // A hundredth of the rows at a time: when records are large, few of them fill the budget.
    while (this.#textLength > this.#maxTextLength && this.#size > 0) this.#deleteOldest(Math.ceil(this.#size / 100))
    return true
  }

  #tally ([ms, , , , agentId, , server, target]: Columns, time: string): void {
    const seq = ++this.#seq
    if (agentId !== null) {
      const a = this.#agents.get(agentId)
      if (a === undefined) this.#agents.set(agentId, { calls: 1, lastMs: ms, lastSeq: seq, lastTime: time })
      else {
        a.calls++
        if (ms >= a.lastMs) { a.lastMs = ms; a.lastSeq = seq; a.lastTime = time }
      }
    }
    if (server !== null && target !== null) {
      let targets = this.#pairs.get(server)
      if (targets === undefined) { targets = new Map(); this.#pairs.set(server, targets) }
      targets.set(target, (targets.get(target) ?? 0) + 1)
    }
  }

  /**
   * Deletes the `count` oldest rows and counts them out of the tallies. An agent's newest record
   * is deleted only with all its older ones, so a tally that keeps a row keeps its `last`.
   */
  #deleteOldest (count: number): void {
    const s = this.#prune
    try {
      s.bind([count])
      while (s.step()) {
        const text = s.get()[0] as string
        this.#size--
        this.#textLength -= text.length
        const cols = columns(JSON.parse(text))
        if (cols === null) continue
        const [, , , , agentId, , server, target] = cols
        const a = agentId === null ? undefined : this.#agents.get(agentId)
        if (a !== undefined && --a.calls === 0) this.#agents.delete(agentId!)
        const targets = server === null ? undefined : this.#pairs.get(server)
        const rows = target === null ? undefined : targets?.get(target)
        if (rows === undefined) continue
        if (rows > 1) targets!.set(target!, rows - 1)
        else {
          targets!.delete(target!)
          if (targets!.size === 0) this.#pairs.delete(server!)
        }
      }
    } finally {
      s.reset()
    }
  }

  /**
   * Indexes the records of an audit file, one JSON line each, read as a stream. Lines that are not
   * records (cut off, garbage, already indexed) count as skipped; a missing file loads nothing.
   */
  async loadFile (path: string): Promise<{ loaded: number, skipped: number }> {
    const counts = { loaded: 0, skipped: 0 }
    const input = createReadStream(path)
    const missing = await new Promise<boolean>((resolve, reject) => {
      input.once('open', () => { resolve(false) })
      input.once('error', (err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') resolve(true); else reject(err) })
    })
    if (missing) return counts
    const lines = createInterface({ input, crlfDelay: Infinity })
    let batch: string[] = []
    try {
      for await (const line of lines) {
        // Closed while loading (the gateway stops): the rest of the file is not read.
        if (this.#closed) break
        if (line.trim() === '') continue
        batch.push(line)
        if (batch.length >= LOAD_BATCH) { this.#loadLines(batch, counts); batch = [] }
      }
      this.#loadLines(batch, counts)
    } finally {
      lines.close()
      input.destroy()
    }
    return counts
  }

  /**
   * Indexes many records in one transaction (a transaction per row costs more than the row);
   * returns how many were new.
   */
  addMany (records: readonly AuditRecord[]): number {
    if (records.length === 0 || this.#closed) return 0
    let added = 0
    this.#db.exec('BEGIN')
    try {
      for (const r of records) {
        try { if (this.#add(r, undefined)) added++ } catch { /* not a record: skipped, like add() */ }
      }
    } finally {
      this.#db.exec('COMMIT')
    }
    return added
  }

  /** One transaction per batch: a transaction per row would cost more than the row. */
  #loadLines (batch: string[], counts: { loaded: number, skipped: number }): void {
    if (batch.length === 0 || this.#closed) { counts.skipped += batch.length; return }
    this.#db.exec('BEGIN')
    try {
      for (const line of batch) {
        let ok = false
        if (line.length <= MAX_RECORD_LENGTH) {
          try { ok = this.#add(JSON.parse(line), line) } catch { ok = false }
        }
        if (ok) counts.loaded++
        else counts.skipped++
      }
    } finally {
      this.#db.exec('COMMIT')
    }
  }

  #statement (sql: string): Statement {
    let s = this.#statements.get(sql)
    if (s === undefined) {
      s = this.#db.prepare(sql)
      this.#statements.set(sql, s)
    }
    return s
  }

  /** Rows of a statement, each as its values; the statement is reset for its next use. */
  #all (sql: string, params: SqlValue[]): SqlValue[][] {
    if (this.#closed) return []
    const s = this.#statement(sql)
    const rows: SqlValue[][] = []
    try {
      s.bind(params)
      while (s.step()) rows.push(s.get())
    } finally {
      s.reset()
    }
    return rows
  }

  /**
   * One page of the records that match every filter given, newest first. `next`, when there is
   * more, fetches the following page. A `from`, `to` or `cursor` that does not parse throws a
   * DecisionQueryError naming it.
   */
  search (q: DecisionQuery): DecisionPage {
    const where: string[] = []
    const params: SqlValue[] = []
    for (const [field, condition] of EXACT) {
      const v = q[field]
      if (v === undefined) continue
      where.push(condition)
      params.push(String(v))
    }
    if (q.id !== undefined) {
      where.push('(decision_id = ? OR request_id = ?)')
      params.push(String(q.id), String(q.id))
    }
    if (q.from !== undefined) { where.push('ms >= ?'); params.push(queryTime('from', q.from)) }
    if (q.to !== undefined) { where.push('ms < ?'); params.push(queryTime('to', q.to)) }
    if (q.cursor !== undefined) {
      const [ms, id] = decodeCursor(q.cursor)
      where.push('ms <= ? AND (ms < ? OR id < ?)')
      params.push(ms, ms, id)
    }
    const limit = clamp(q.limit, DEFAULT_LIMIT, 1, MAX_LIMIT)
    params.push(limit + 1)
    const sql = `SELECT id, ms, json FROM decisions${where.length > 0 ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY ms DESC, id DESC LIMIT ?`
    const found = this.#all(sql, params)
    const page = found.slice(0, limit)
    const rows = page.map(r => JSON.parse(r[2] as string) as AuditRecord)
    const last = page[page.length - 1]
    return found.length > limit && last !== undefined ? { rows, next: encodeCursor(last[1] as number, last[0] as number) } : { rows }
  }

  /**
   * The stored record of a row. A string a summary shows is read from here rather than from its
   * column: sql.js reads a text column up to its first NUL character, and the JSON text has none.
   */
  #row (id: SqlValue | undefined): Record<string, unknown> {
    const json = this.#all(BY_ID, [id ?? null])[0]?.[0]
    return typeof json === 'string' ? JSON.parse(json) as Record<string, unknown> : {}
  }

  /** The newest record with this decisionId or requestId. */
  get (id: string): AuditRecord | undefined {
    const row = this.#all(GET, [String(id), String(id)])[0]
    return row === undefined ? undefined : JSON.parse(row[0] as string) as AuditRecord
  }

  /**
   * One agent's calls from `from` to `to` (default: the last 24 hours) in `buckets` equal parts
   * (default 24, at most 1000), its most called targets, its newest denials and its total, all
   * over that window.
   */
  agentSummary (agentId: string, opts: { from?: string, to?: string, buckets?: number } = {}): AgentSummary {
    const to = opts.to !== undefined ? queryTime('to', opts.to) : Date.now()
    const from = opts.from !== undefined ? queryTime('from', opts.from) : to - DAY_MS
    if (to <= from) throw new DecisionQueryError('to: must be later than from')
    const n = clamp(opts.buckets, 24, 1, MAX_BUCKETS)
    const span = to - from
    const agent = String(agentId)
    const buckets = Array.from({ length: n }, (_, i) => ({ start: new Date(from + Math.ceil(i * span / n)).toISOString(), allow: 0, deny: 0, error: 0 }))
    let total = 0
    // Integer arithmetic in SQLite: the bucket of a row is floor((ms - from) * n / span).
    for (const [b, outcome, count] of this.#all(BUCKETS, [from, n, span, agent, from, to])) {
      const bucket = buckets[b as number]
      if (bucket === undefined || (outcome !== 'allow' && outcome !== 'deny' && outcome !== 'error')) continue
      bucket[outcome] += count as number
      total += count as number
    }
    const window = [agent, from, to]
    const topTools = this.#all(TOP, window).map(([id, calls, denials]) => ({ tool: targetOf(this.#row(id)) ?? '', calls: calls as number, denials: (denials as number | null) ?? 0 }))
    const denials = this.#all(DENIALS, window).map(r => JSON.parse(r[0] as string) as AuditRecord)
    return { agentId: agent, buckets, topTools, denials, total }
  }

  /**
   * The agents of the records indexed, the most recently seen first (default 50, at most 1000):
   * `last` is the time of the agent's newest record, as written, `calls` its records.
   */
  agents (limit?: number): Array<{ agentId: string, last: string, calls: number }> {
    return [...this.#agents]
      .sort(([, x], [, y]) => y.lastMs - x.lastMs || y.lastSeq - x.lastSeq)
      .slice(0, clamp(limit, 50, 1, 1000))
      .map(([agentId, a]) => ({ agentId, last: a.lastTime, calls: a.calls }))
  }

  /** The distinct (server, target) pairs of the records indexed, sorted by server, then target. */
  tools (): Array<{ server: string, tool: string }> {
    const byCodeUnit = (a: string, b: string): number => a < b ? -1 : a > b ? 1 : 0
    const out: Array<{ server: string, tool: string }> = []
    for (const server of [...this.#pairs.keys()].sort(byCodeUnit)) {
      for (const tool of [...this.#pairs.get(server)!.keys()].sort(byCodeUnit)) out.push({ server, tool })
    }
    return out
  }

  /** Frees the database; afterwards add() returns false and searches find nothing. */
  close (): void {
    if (this.#closed) return
    this.#closed = true
    for (const s of this.#statements.values()) s.free()
    this.#statements.clear()
    this.#insert.free()
    this.#prune.free()
    this.#db.close()
    this.#size = 0
    this.#textLength = 0
    this.#agents.clear()
    this.#pairs.clear()
  }
}
