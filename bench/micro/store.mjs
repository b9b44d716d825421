// The shared store: what a request costs in memory and in Redis, side by side in one run.
// Per tools/call in a session the gateway makes one session lookup and one rate-limit
// increment (two with a tool limit); pins are read from the local copy.
// Run: npm run bench:store   (needs redis-server on the PATH; results in .scratch/bench/results/store.json,
// or bench/results/store.json with `npm run bench:store -- --write`)
import { spawn, execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Bench } from 'tinybench'
import { benchOptions, report } from './common.mjs'
import { MemoryStore } from '../../dist/lib/stores/memory.js'
import { RedisStore } from '../../dist/lib/stores/redis.js'

const require = createRequire(import.meta.url)
const LocalStore = require('@fastify/rate-limit/store/LocalStore.js')
const RateLimitRedisStore = require('@fastify/rate-limit/store/RedisStore.js')

const port = 20000 + Math.floor(Math.random() * 20000)
const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
for (let i = 0; ; i++) {
  try { execFileSync('redis-cli', ['-p', String(port), 'ping'], { stdio: 'ignore' }); break } catch { if (i > 100) throw new Error('redis-server did not start'); await new Promise(resolve => setTimeout(resolve, 50)) }
}

const memory = new MemoryStore(join(mkdtempSync(join(tmpdir(), 'mcpw-bench-')), 'pins.json'))
const redis = new RedisStore(`redis://127.0.0.1:${port}`)
await redis.ready()
const tool = { name: 'database_query', description: 'Run a read-only SQL query', inputSchema: { type: 'object', properties: { sql: { type: 'string' } } } }
for (const s of [memory, redis]) {
  await s.sessions.bind('db', 'session-1', 'https://idp\nagent-1', 3600)
  await s.pins.check('db', tool)
}
const localLimit = new LocalStore(false, false)
const redisLimit = new RateLimitRedisStore(false, false, redis.rateLimitRedis, 'mcpw:ratelimit:')
const incr = (store) => new Promise((resolve, reject) => { store.incr('agent:bench', (err, r) => err ? reject(err) : resolve(r), 60_000, 1e12) })

let n = 0
const exp = Math.floor(Date.now() / 1000) + 3600
const bench = new Bench(benchOptions)
bench.add('memory: session owner', async () => { await memory.sessions.owner('db', 'session-1', 3600) })
bench.add('redis:  session owner (GETEX)', async () => { await redis.sessions.owner('db', 'session-1', 3600) })
bench.add('memory: rate-limit increment', async () => { await incr(localLimit) })
bench.add('redis:  rate-limit increment (Lua)', async () => { await incr(redisLimit) })
bench.add('memory: jti first use', async () => { await memory.replay.use(`m${n++}`, exp) })
bench.add('redis:  jti first use (SET NX EXAT)', async () => { await redis.replay.use(`r${n++}`, exp) })
bench.add('memory: pin check, unchanged tool', async () => { await memory.pins.check('db', tool) })
bench.add('redis:  pin check, unchanged tool (local copy)', async () => { await redis.pins.check('db', tool) })
await bench.run()
report('store', bench)

await memory.close()
await redis.close()
server.kill('SIGKILL')
