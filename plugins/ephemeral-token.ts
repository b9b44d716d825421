/**
 * ephemeral-token: for upstreams with `auth.type: ephemeral`, mints one token per
 * forwarded message after the Cedar decision allowed it (DESIGN.md §8) and hands it to the
 * proxy as `Authorization: Bearer`. No allow decision, or a failure to mint: nothing is
 * forwarded (fail closed). Also serves the signer's public keys at /.well-known/jwks.json.
 *
 * Keys live in tokens.keysDir (created, 0600, on first start; shared by replicas) and are
 * re-read when the folder changes, every 30 s, and on SIGHUP (wired by buildGateway), so `mcp-warden keys rotate`
 * takes effect without a restart.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../lib/config.js'
import { ConfigError, CredentialError } from '../lib/errors.js'
import { KeyRing } from '../lib/tokens/keys.js'
import { messageBinding } from '../lib/tokens/binding.js'
import { TokenMinter, type MintedToken } from '../lib/tokens/minter.js'
import { startStage } from '../lib/timing.js'
import { watchAndReload } from '../lib/reload.js'
import type {} from './cedar-authz.js'
import type {} from './mcp-proxy.js'

declare module 'fastify' {
  interface FastifyInstance {
    tokens: { readonly minter: TokenMinter, readonly keys: KeyRing, /** Re-reads the signing keys (the folder is also watched, and re-read every 30 s). */ readonly reload: () => void }
  }
  interface FastifyRequest {
    /** The claims of the token minted for this request's upstream call. */
    upstreamToken: MintedToken['claims'] | null
  }
}

export interface EphemeralTokenOptions {
  config: GatewayConfig
}

async function ephemeralToken (app: FastifyInstance, opts: EphemeralTokenOptions): Promise<void> {
  const { tokens } = opts.config
  let keys: KeyRing
  try {
    keys = new KeyRing(tokens.keysDir, tokens.ttlSeconds)
  } catch (err) {
    throw new ConfigError(`tokens.keysDir: cannot use ${tokens.keysDir} for the signing keys: ${(err as Error).message}`)
  }
  const minter = new TokenMinter(keys, { issuer: tokens.issuer, ttlSeconds: tokens.ttlSeconds })
  const reload = (): void => {
    try {
      if (keys.reload()) app.log.info({ kid: keys.current().kid }, 'signing keys reloaded')
    } catch (err) {
      app.log.error({ error: (err as Error).message }, 'signing keys could not be reloaded; the previous keys stay in use')
    }
  }
  app.decorate('tokens', { minter, keys, reload })
  app.decorateRequest('upstreamToken', null)

  // The folder is watched and re-read every 30 s (the interval and SIGHUP still reload where it cannot be watched).
  const watching = watchAndReload({ paths: [tokens.keysDir], reload, debounceMs: 0, everyMs: 30_000 })
  app.addHook('onClose', async () => { watching.close() })

  app.get('/.well-known/jwks.json', async (_request, reply) => {
    void reply.header('cache-control', 'public, max-age=30')
    return keys.jwks()
  })

  app.addHook('preHandler', async (request) => {
    const target = request.mcpTarget
    if (target === null || target.server.auth.type !== 'ephemeral' || request.identity === null) return
    if (request.decision?.allowed !== true) throw new CredentialError(target.server.name)
    const done = startStage(request, 'mint')
    try {
      const binding = messageBinding(request.method, request.mcp?.message)
      const minted = minter.mint(request.identity, target.server.resource, binding)
      request.upstreamToken = minted.claims
      request.upstreamAuth = { headers: { authorization: `Bearer ${minted.token}` } }
    } catch (err) {
      request.log.error({ error: (err as Error).message, server: target.server.name }, 'minting an ephemeral token failed')
      throw new CredentialError(target.server.name)
    } finally {
      done()
    }
  })
}

export default fp(ephemeralToken, {
  name: 'mcp-warden-ephemeral-token',
  fastify: '5.x',
  dependencies: ['mcp-warden-context', 'mcp-warden-identity', 'mcp-warden-cedar-authz']
})
export { ephemeralToken }
