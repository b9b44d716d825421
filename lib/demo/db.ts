/**
 * Demo upstream `db`: a real SQLite database (better-sqlite3).
 * Tools: database_query (read-only SQL), database_insert (one row), database_drop (a table).
 */
import Database from 'better-sqlite3'
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

export function openDemoDatabase (file: string): Database.Database {
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.exec(SEED)
  return db
}

function tableExists (db: Database.Database, table: string): boolean {
  return db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(table) !== undefined
}

export function createDbServer (db: Database.Database): McpServer {
  const server = new McpServer({ name: 'demo-db', version: '1.0.0' })
  server.registerTool('database_query', {
    title: 'Query the database',
    description: 'Run one read-only SQL statement (SELECT) against the demo database and return the rows as JSON.',
    inputSchema: { sql: z.string().min(1).describe('A read-only SQL statement'), params: z.array(z.union([z.string(), z.number(), z.null()])).optional().describe('Positional parameters') },
    annotations: { readOnlyHint: true, destructiveHint: false }
  }, async ({ sql, params }) => {
    let stmt: Database.Statement
    try { stmt = db.prepare(sql) } catch (err) { return failure(`SQL error: ${(err as Error).message}`) }
    if (!stmt.readonly || !stmt.reader) return failure('database_query runs read-only statements only; use database_insert to add rows')
    const rows: unknown[] = []
    for (const row of stmt.iterate(...(params ?? []))) {
      rows.push(row)
      if (rows.length >= MAX_ROWS) break
    }
    return text(rows)
  })
  server.registerTool('database_insert', {
    title: 'Insert a row',
    description: 'Insert one row into a table of the demo database.',
    inputSchema: { table: z.string().min(1), values: z.record(z.string(), z.union([z.string(), z.number(), z.null()])) },
    annotations: { readOnlyHint: false, destructiveHint: false }
  }, async ({ table, values }) => {
    if (!tableExists(db, table)) return failure(`no table named ${table}`)
    const columns = new Set((db.prepare(`PRAGMA table_info(${ident(table)})`).all() as Array<{ name: string }>).map(c => c.name))
    const keys = Object.keys(values)
    const unknown = keys.filter(k => !columns.has(k))
    if (keys.length === 0 || unknown.length > 0) return failure(`columns of ${table}: ${[...columns].join(', ')}${unknown.length > 0 ? `; unknown: ${unknown.join(', ')}` : ''}`)
    try {
      const info = db.prepare(`INSERT INTO ${ident(table)} (${keys.map(ident).join(', ')}) VALUES (${keys.map(() => '?').join(', ')})`).run(...keys.map(k => values[k]))
      return text({ inserted: info.changes, rowid: Number(info.lastInsertRowid) })
    } catch (err) {
      return failure(`SQL error: ${(err as Error).message}`)
    }
  })
  server.registerTool('database_drop', {
    title: 'Drop a table',
    description: 'Drop a table of the demo database, with all its rows.',
    inputSchema: { table: z.string().min(1) },
    annotations: { readOnlyHint: false, destructiveHint: true }
  }, async ({ table }) => {
    if (!tableExists(db, table)) return failure(`no table named ${table}`)
    db.exec(`DROP TABLE ${ident(table)}`)
    return text({ dropped: table })
  })
  return server
}
