import t from 'tap'
import { MemorySessionStore } from '../lib/stores/memory.js'

t.test('memory session store: bind, owner, conflict, unbind, expiry', async t => {
  const s = new MemorySessionStore()
  t.teardown(async () => { await s.close() })
  t.equal(await s.owner('db', 'sid', 60), null)
  t.equal(await s.bind('db', 'sid', 'alice', 60), true)
  t.equal(await s.owner('db', 'sid', 60), 'alice')
  t.equal(await s.owner('api', 'sid', 60), null, 'bindings are per server')
  t.equal(await s.bind('db', 'sid', 'mallory', 60), false, 'a bound session cannot be taken over')
  t.equal(await s.owner('db', 'sid', 60), 'alice')
  t.equal(await s.bind('db', 'sid', 'alice', 60), true, 'rebinding to the same principal is fine')
  await s.unbind('db', 'sid')
  t.equal(await s.owner('db', 'sid', 60), null)
  t.equal(await s.bind('db', 'short', 'bob', 0.05), true)
  await new Promise(resolve => setTimeout(resolve, 80))
  t.equal(await s.owner('db', 'short', 60), null, 'an idle session expires')
  t.equal(await s.bind('db', 'short', 'carol', 60), true, 'and its id can be bound again')
})
