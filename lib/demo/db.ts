/**
 * Demo upstream `db`: a real SQLite database (SQLite compiled to WebAssembly, sql.js), kept in
 * one file. Tools: database_query (read-only SQL), database_insert (one row), database_drop (a table).
 *
 * sql.js holds the database in memory; every change is written back to the file at once
 * (a temporary file renamed over the old one, so a crash leaves the old or the new database,
 * never half of one).
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
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
const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`
const text = (value: unknown) => ({ content: [{ type: 'text' as const, text: typeof value === 'string' ? value : JSON.stringify(value, null, 2) }] })
const failure = (message: string) => ({ isError: true, content: [{ type: 'text' as const, text: message }] })

/** A tool's outcome: rows or a change on success, a message a person can act on otherwise. */
export type DbResult<T> = { ok: true, value: T } | { ok: false, message: string }

let engine: Promise<initSqlJs.SqlJsStatic> | undefined

export class DemoDatabase {
  readonly #db: Database
  readonly #file: string

  private constructor (db: Database, file: string) {
    this.#db = db
    this.#file = file
  }

  /** Opens (or creates and seeds) the database file. */
  static async open (file: string): Promise<DemoDatabase> {
    engine ??= initSqlJs()
    const SQL = await engine
    const db = new SQL.Database(existsSync(file) ? readFileSync(file) : undefined)
    db.exec('PRAGMA foreign_keys = ON')
    const demo = new DemoDatabase(db, file)
    db.exec(SEED)
    demo.#persist()
    return demo
  }

  /**
   * Runs one statement that returns rows and changes nothing. More than one statement, a
   * statement without a result, and any write (INSERT … RETURNING included) are refused:
   * the statement runs under `PRAGMA query_only`, so SQLite itself refuses every change.
   */
  query (sql: string, params: SqlValue[] = []): DbResult<Array<Record<string, SqlValue>>> {
    const readOnly = 'database_query runs one read-only statement (SELECT); use database_insert to add rows'
    let count = 0
    try {
      for (const s of this.#db.iterateStatements(sql)) { count++; s.free() }
    } catch (err) {
      return { ok: false, message: `SQL error: ${(err as Error).message}` }
    }
    if (count !== 1) return { ok: false, message: count === 0 ? 'SQL error: no statement' : readOnly }
    let stmt
    try { stmt = this.#db.prepare(sql) } catch (err) { return { ok: false, message: `SQL error: ${(err as Error).message}` } }
    try {
      if (stmt.getColumnNames().length === 0) return { ok: false, message: readOnly }
      stmt.bind(params)
      this.#db.exec('PRAGMA query_only = ON')
      const rows: Array<Record<string, SqlValue>> = []
      while (rows.length < MAX_ROWS && stmt.step()) rows.push(stmt.getAsObject())
      return { ok: true, value: rows }
    } catch (err) {
      const message = (err as Error).message
      return { ok: false, message: /readonly|read-only/i.test(message) ? readOnly : `SQL error: ${message}` }
    } finally {
      stmt.free()
      this.#db.exec('PRAGMA query_only = OFF')
    }
  }

  tableExists (table: string): boolean {
    const stmt = this.#db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
    try {
      stmt.bind([table])
      return stmt.step()
    } finally {
      stmt.free()
    }
  }

  columns (table: string): string[] {
    const result = this.#db.exec(`PRAGMA table_info(${ident(table)})`)
    const names = result[0]?.columns.indexOf('name') ?? -1
    return (result[0]?.values ?? []).map(row => String(row[names]))
  }

  insert (table: string, values: Record<string, SqlValue>): DbResult<{ inserted: number, rowid: number }> {
    const keys = Object.keys(values)
    try {
      this.#db.run(`INSERT INTO ${ident(table)} (${keys.map(ident).join(', ')}) VALUES (${keys.map(() => '?').join(', ')})`, keys.map(k => values[k] ?? null))
      const inserted = this.#db.getRowsModified()
      const rowid = Number(this.#db.exec('SELECT last_insert_rowid()')[0]?.values[0]?.[0] ?? 0)
      this.#persist()
      return { ok: true, value: { inserted, rowid } }
    } catch (err) {
      return { ok: false, message: `SQL error: ${(err as Error).message}` }
    }
  }

  drop (table: string): void {
    this.#db.run(`DROP TABLE ${ident(table)}`)
    this.#persist()
  }

  close (): void {
    this.#db.close()
  }

  #persist (): void {
    const tmp = `${this.#file}.${process.pid}.tmp`
    writeFileSync(tmp, this.#db.export())
    renameSync(tmp, this.#file)
    // export() reopens the connection, which resets pragmas.
    this.#db.exec('PRAGMA foreign_keys = ON')
  }
}

export async function openDemoDatabase (file: string): Promise<DemoDatabase> {
  return await DemoDatabase.open(file)
}

export function createDbServer (db: DemoDatabase): McpServer {
  const server = new McpServer({ name: 'demo-db', version: '1.0.0' })
  server.registerTool('database_query', {
    title: 'Query the database',
    description: 'Run one read-only SQL statement (SELECT) against the demo database and return the rows as JSON.',
    inputSchema: { sql: z.string().min(1).describe('A read-only SQL statement'), params: z.array(z.union([z.string(), z.number(), z.null()])).optional().describe('Positional parameters') },
    annotations: { readOnlyHint: true, destructiveHint: false }
  }, async ({ sql, params }) => {
    const r = db.query(sql, params ?? [])
    return r.ok ? text(r.value) : failure(r.message)
  })
  server.registerTool('database_insert', {
    title: 'Insert a row',
    description: 'Insert one row into a table of the demo database.',
    inputSchema: { table: z.string().min(1), values: z.record(z.string(), z.union([z.string(), z.number(), z.null()])) },
    annotations: { readOnlyHint: false, destructiveHint: false }
  }, async ({ table, values }) => {
    if (!db.tableExists(table)) return failure(`no table named ${table}`)
    const columns = new Set(db.columns(table))
    const keys = Object.keys(values)
    const unknown = keys.filter(k => !columns.has(k))
    if (keys.length === 0 || unknown.length > 0) return failure(`columns of ${table}: ${[...columns].join(', ')}${unknown.length > 0 ? `; unknown: ${unknown.join(', ')}` : ''}`)
    const r = db.insert(table, values)
    return r.ok ? text(r.value) : failure(r.message)
  })
  server.registerTool('database_drop', {
    title: 'Drop a table',
    description: 'Drop a table of the demo database, with all its rows.',
    inputSchema: { table: z.string().min(1) },
    annotations: { readOnlyHint: false, destructiveHint: true }
  }, async ({ table }) => {
    if (!db.tableExists(table)) return failure(`no table named ${table}`)
    db.drop(table)
    return text({ dropped: table })
  })
  return server
}
