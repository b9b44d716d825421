/**
 * Demo upstream `db`: a real SQLite database (SQLite compiled to WebAssembly, sql.js), kept in
 * one file. Tools: database_query (read-only SQL), database_insert (one row), database_drop (a table).
 *
 * The database runs in a worker thread of its own, so that no statement can stall the process
 * that hosts it (the demo runs it beside the gateway): a statement that runs longer than
 * `timeoutMs` is stopped by ending the worker, and a fresh one reopens the file. Inside, SQLite's
 * heap is capped (`PRAGMA hard_heap_limit`) and so is the size of a result.
 *
 * sql.js holds the database in memory; every change is written back to the file at once
 * (a temporary file renamed over the old one, so a crash leaves the old or the new database,
 * never half of one).
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import initSqlJs, { type Database, type SqlValue } from 'sql.js'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { z } from 'zod'

const SEED = `
CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, tier TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), amount REAL NOT NULL, status TEXT NOT NULL);
INSERT INTO customers (id, name, email, tier) SELECT 1, 'Ada Lovelace', 'ada@example.com', 'gold' WHERE NOT EXISTS (SELECT 1 FROM customers);
INSERT INTO customers (id, name, email, tier) SELECT 2, 'Alan Turing', 'alan@example.com', 'silver' WHERE NOT EXISTS (SELECT 1 FROM customers WHERE id = 2);
INSERT INTO customers (id, name, email, tier) SELECT 3, 'Grace Hopper', 'grace@example.com', 'gold' WHERE NOT EXISTS (SELECT 1 FROM customers WHERE id = 3);
INSERT INTO orders (id, customer_id, amount, status) SELECT 1, 1, 120.5, 'paid' WHERE NOT EXISTS (SELECT 1 FROM orders);
INSERT INTO orders (id, customer_id, amount, status) SELECT 2, 3, 42.0, 'pending' WHERE NOT EXISTS (SELECT 1 FROM orders WHERE id = 2);
`

const MAX_ROWS = 200
/** The largest result database_query returns, as JSON. */
const MAX_RESULT_BYTES = 1024 * 1024
/** SQLite's own heap inside the worker. */
const HEAP_LIMIT_BYTES = 64 * 1024 * 1024
const WORKER_ROLE = 'mcp-warden-demo-db'
const READ_ONLY = 'database_query runs one read-only statement (SELECT, WITH … SELECT or VALUES); use database_insert to add rows'

const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`
const text = (value: unknown) => ({ content: [{ type: 'text' as const, text: typeof value === 'string' ? value : JSON.stringify(value, null, 2) }] })
const failure = (message: string) => ({ isError: true, content: [{ type: 'text' as const, text: message }] })

/** A tool's outcome: rows or a change on success, a message a person can act on otherwise. */
export type DbResult<T> = { ok: true, value: T } | { ok: false, message: string }
export type Row = Record<string, string | number | null | { $blob: string }>

/** SQL text without comments, for the checks that must not prepare a statement. */
function stripComments (sql: string): string {
  return sql.replace(/--[^\n]*(\n|$)/g, ' ').replace(/\/\*[\s\S]*?(\*\/|$)/g, ' ')
}

/** The database itself, used inside the worker only. */
class SqlDatabase {
  constructor (private readonly db: Database, private readonly file: string) {}

  static async open (file: string): Promise<SqlDatabase> {
    const SQL = await initSqlJs()
    const db = new SQL.Database(existsSync(file) ? readFileSync(file) : undefined)
    const d = new SqlDatabase(db, file)
    d.pragmas()
    db.exec(SEED)
    d.persist()
    return d
  }

  private pragmas (): void {
    this.db.exec(`PRAGMA foreign_keys = ON; PRAGMA hard_heap_limit = ${HEAP_LIMIT_BYTES}`)
  }

  /**
   * Runs one statement that returns rows and changes nothing. Only SELECT, WITH and VALUES are
   * prepared at all (a PRAGMA can act while it is prepared); text after the first statement is
   * refused without being prepared; the statement runs under `PRAGMA query_only`, so SQLite
   * itself refuses every write (`DELETE … RETURNING`, `WITH … INSERT`).
   */
  query (sql: string, params: SqlValue[]): DbResult<Row[]> {
    const first = /^[\s;]*([A-Za-z]+)/.exec(stripComments(sql))?.[1]?.toUpperCase()
    if (first === undefined) return { ok: false, message: 'SQL error: no statement' }
    if (first !== 'SELECT' && first !== 'WITH' && first !== 'VALUES') return { ok: false, message: READ_ONLY }
    let stmt
    try {
      const it = this.db.iterateStatements(sql)
      const next = it.next()
      if (next.done === true) return { ok: false, message: 'SQL error: no statement' }
      stmt = next.value
      if (stripComments(it.getRemainingSQL()).replace(/[\s;]/g, '') !== '') return { ok: false, message: READ_ONLY }
    } catch (err) {
      stmt?.free()
      return { ok: false, message: `SQL error: ${(err as Error).message}` }
    }
    try {
      if (stmt.getColumnNames().length === 0) return { ok: false, message: READ_ONLY }
      stmt.bind(params)
      this.db.exec('PRAGMA query_only = ON')
      const rows: Row[] = []
      let bytes = 2
      while (rows.length < MAX_ROWS && stmt.step()) {
        const row: Row = {}
        for (const [k, v] of Object.entries(stmt.getAsObject())) row[k] = v instanceof Uint8Array ? { $blob: Buffer.from(v).toString('base64') } : v
        bytes += JSON.stringify(row).length + 1
        if (bytes > MAX_RESULT_BYTES) return { ok: false, message: `the result is larger than ${MAX_RESULT_BYTES} bytes; select fewer rows or columns (LIMIT, substr())` }
        rows.push(row)
      }
      return { ok: true, value: rows }
    } catch (err) {
      const message = (err as Error).message
      return { ok: false, message: /readonly|read-only/i.test(message) ? READ_ONLY : `SQL error: ${message}` }
    } finally {
      stmt.free()
      this.db.exec('PRAGMA query_only = OFF')
    }
  }

  tableExists (table: string): boolean {
    const stmt = this.db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
    try {
      stmt.bind([table])
      return stmt.step()
    } finally {
      stmt.free()
    }
  }

  columns (table: string): string[] {
    const result = this.db.exec(`PRAGMA table_info(${ident(table)})`)
    const names = result[0]?.columns.indexOf('name') ?? -1
    return (result[0]?.values ?? []).map(row => String(row[names]))
  }

  insert (table: string, values: Record<string, SqlValue>): DbResult<{ inserted: number, rowid: number }> {
    if (!this.tableExists(table)) return { ok: false, message: `no table named ${table}` }
    const columns = new Set(this.columns(table))
    const keys = Object.keys(values)
    const unknown = keys.filter(k => !columns.has(k))
    if (keys.length === 0 || unknown.length > 0) return { ok: false, message: `columns of ${table}: ${[...columns].join(', ')}${unknown.length > 0 ? `; unknown: ${unknown.join(', ')}` : ''}` }
    try {
      this.db.run(`INSERT INTO ${ident(table)} (${keys.map(ident).join(', ')}) VALUES (${keys.map(() => '?').join(', ')})`, keys.map(k => values[k] ?? null))
      const inserted = this.db.getRowsModified()
      const rowid = Number(this.db.exec('SELECT last_insert_rowid()')[0]?.values[0]?.[0] ?? 0)
      this.persist()
      return { ok: true, value: { inserted, rowid } }
    } catch (err) {
      return { ok: false, message: `SQL error: ${(err as Error).message}` }
    }
  }

  drop (table: string): DbResult<{ dropped: string }> {
    if (!this.tableExists(table)) return { ok: false, message: `no table named ${table}` }
    try {
      this.db.run(`DROP TABLE ${ident(table)}`)
      this.persist()
      return { ok: true, value: { dropped: table } }
    } catch (err) {
      return { ok: false, message: `SQL error: ${(err as Error).message}` }
    }
  }

  private persist (): void {
    const tmp = `${this.file}.${process.pid}.tmp`
    writeFileSync(tmp, this.db.export())
    renameSync(tmp, this.file)
    // export() reopens the connection, which resets pragmas.
    this.pragmas()
  }
}

type Op = { op: 'query', sql: string, params: SqlValue[] } | { op: 'insert', table: string, values: Record<string, SqlValue> } | { op: 'drop', table: string }
type Reply = { id: number, ok: true, value: unknown } | { id: number, ok: false, message: string }

// Inside the worker: open the file, then answer one message at a time.
if (!isMainThread && (workerData as { role?: string } | null)?.role === WORKER_ROLE) {
  const { file } = workerData as { file: string }
  const opened = SqlDatabase.open(file)
  parentPort!.on('message', (m: Op & { id: number }) => {
    void opened.then(db => {
      const r = m.op === 'query' ? db.query(m.sql, m.params) : m.op === 'insert' ? db.insert(m.table, m.values) : db.drop(m.table)
      parentPort!.postMessage({ id: m.id, ...r } satisfies Reply)
    }, (err: unknown) => {
      parentPort!.postMessage({ id: m.id, ok: false, message: `the database cannot be opened: ${(err as Error).message}` } satisfies Reply)
    })
  })
  opened.then(() => { parentPort!.postMessage({ id: 0, ok: true, value: 'open' } satisfies Reply) }, (err: unknown) => {
    parentPort!.postMessage({ id: 0, ok: false, message: (err as Error).message } satisfies Reply)
  })
}

export interface DemoDatabaseOptions {
  /** Longest a statement may run before it is stopped (default 2000 ms). */
  timeoutMs?: number
}

/** The demo database, seen from the MCP server: each call runs in the worker, one at a time. */
export class DemoDatabase {
  #worker: Worker | undefined
  #queue: Promise<unknown> = Promise.resolve()
  #closed = false
  readonly #file: string
  readonly #timeoutMs: number

  private constructor (file: string, timeoutMs: number) {
    this.#file = file
    this.#timeoutMs = timeoutMs
  }

  /** Opens (or creates and seeds) the database file. */
  static async open (file: string, options: DemoDatabaseOptions = {}): Promise<DemoDatabase> {
    const d = new DemoDatabase(file, options.timeoutMs ?? 2000)
    await d.#start()
    return d
  }

  async #start (): Promise<Worker> {
    const worker = new Worker(new URL(import.meta.url), {
      workerData: { role: WORKER_ROLE, file: this.#file },
      resourceLimits: { maxOldGenerationSizeMb: 256 },
      stdout: false,
      stderr: false
    })
    worker.unref()
    await new Promise<void>((resolve, reject) => {
      const onMessage = (m: Reply): void => {
        if (m.id !== 0) return
        worker.off('message', onMessage)
        worker.off('error', reject)
        if (m.ok) resolve()
        else reject(new Error(`the demo database ${this.#file} cannot be opened: ${m.message}`))
      }
      worker.on('message', onMessage)
      worker.once('error', reject)
    }).catch(async (err: unknown) => { await worker.terminate(); throw err })
    this.#worker = worker
    return worker
  }

  #call<T> (op: Op): Promise<DbResult<T>> {
    const run = async (): Promise<DbResult<T>> => {
      if (this.#closed) return { ok: false, message: 'the demo database is closed' }
      const worker = this.#worker ?? await this.#start()
      const id = Math.floor(Math.random() * 2 ** 31) + 1
      let timer: NodeJS.Timeout | undefined
      const answer = await new Promise<DbResult<T> | 'timeout' | 'died'>(resolve => {
        const onMessage = (m: Reply): void => { if (m.id === id) done(m.ok ? { ok: true, value: m.value as T } : { ok: false, message: m.message }) }
        const onExit = (): void => { done('died') }
        const done = (r: DbResult<T> | 'timeout' | 'died'): void => {
          clearTimeout(timer)
          worker.off('message', onMessage)
          worker.off('exit', onExit)
          worker.off('error', onExit)
          resolve(r)
        }
        worker.on('message', onMessage)
        worker.once('exit', onExit)
        worker.once('error', onExit)
        timer = setTimeout(() => { done('timeout') }, this.#timeoutMs)
        worker.postMessage({ id, ...op })
      })
      if (answer !== 'timeout' && answer !== 'died') return answer
      // The statement is stopped with its worker; the next call reopens the file (every change
      // was written to it already).
      this.#worker = undefined
      await worker.terminate()
      return answer === 'timeout'
        ? { ok: false, message: `the statement ran longer than ${this.#timeoutMs} ms and was stopped` }
        : { ok: false, message: 'the statement used more memory than the database may and was stopped' }
    }
    const result = this.#queue.then(run, run)
    this.#queue = result.catch(() => {})
    return result
  }

  async query (sql: string, params: SqlValue[] = []): Promise<DbResult<Row[]>> { return await this.#call({ op: 'query', sql, params }) }
  async insert (table: string, values: Record<string, SqlValue>): Promise<DbResult<{ inserted: number, rowid: number }>> { return await this.#call({ op: 'insert', table, values }) }
  async drop (table: string): Promise<DbResult<{ dropped: string }>> { return await this.#call({ op: 'drop', table }) }

  async close (): Promise<void> {
    this.#closed = true
    await this.#queue
    await this.#worker?.terminate()
    this.#worker = undefined
  }
}

export async function openDemoDatabase (file: string, options: DemoDatabaseOptions = {}): Promise<DemoDatabase> {
  return await DemoDatabase.open(file, options)
}

export function createDbServer (db: DemoDatabase): McpServer {
  const server = new McpServer({ name: 'demo-db', version: '1.0.0' })
  const answer = (r: DbResult<unknown>) => r.ok ? text(r.value) : failure(r.message)
  server.registerTool('database_query', {
    title: 'Query the database',
    description: 'Run one read-only SQL statement (SELECT) against the demo database and return the rows as JSON.',
    inputSchema: { sql: z.string().min(1).describe('A read-only SQL statement'), params: z.array(z.union([z.string(), z.number(), z.null()])).optional().describe('Positional parameters') },
    annotations: { readOnlyHint: true, destructiveHint: false }
  }, async ({ sql, params }) => answer(await db.query(sql, params ?? [])))
  server.registerTool('database_insert', {
    title: 'Insert a row',
    description: 'Insert one row into a table of the demo database.',
    inputSchema: { table: z.string().min(1), values: z.record(z.string(), z.union([z.string(), z.number(), z.null()])) },
    annotations: { readOnlyHint: false, destructiveHint: false }
  }, async ({ table, values }) => answer(await db.insert(table, values)))
  server.registerTool('database_drop', {
    title: 'Drop a table',
    description: 'Drop a table of the demo database, with all its rows.',
    inputSchema: { table: z.string().min(1) },
    annotations: { readOnlyHint: false, destructiveHint: true }
  }, async ({ table }) => answer(await db.drop(table)))
  return server
}
