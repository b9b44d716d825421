/** Finding a TCP port that is free right now (the demo, test fixtures and the package check). */
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'

/** A TCP port that is free on `host` right now. */
export async function freePort (host = '127.0.0.1'): Promise<number> {
  const probe = createServer()
  await new Promise<void>((resolve, reject) => { probe.once('error', reject); probe.listen(0, host, () => { resolve() }) })
  const { port } = probe.address() as AddressInfo
  await new Promise<void>(resolve => probe.close(() => { resolve() }))
  return port
}
