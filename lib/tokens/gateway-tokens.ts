/**
 * The gateway's own tokens: its signing keys (tokens.keysDir) and the minter of ephemeral
 * upstream tokens. Created once per gateway and handed to the plugins that need them (the
 * ephemeral-token plugin mints with them, the identity plugin accepts tokens the gateway issued,
 * the tool filter reads ephemeral upstreams' lists with them).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { TokensConfig } from '../config.js'
import { ConfigError } from '../errors.js'
import { KeyRing } from './keys.js'
import { TokenMinter } from './minter.js'

export interface GatewayTokens {
  readonly minter: TokenMinter
  readonly keys: KeyRing
  /** Re-reads the signing keys; keeps the previous ones when the folder cannot be read. */
  readonly reload: () => void
}

/** Opens (creating on first start) the signing keys of `tokens.keysDir`; a folder it cannot use refuses the boot. */
export function createGatewayTokens (tokens: TokensConfig, log: FastifyBaseLogger): GatewayTokens {
  let keys: KeyRing
  try {
    keys = new KeyRing(tokens.keysDir, tokens.ttlSeconds)
  } catch (err) {
    throw new ConfigError(`tokens.keysDir: cannot use ${tokens.keysDir} for the signing keys: ${(err as Error).message}`)
  }
  const minter = new TokenMinter(keys, { issuer: tokens.issuer, ttlSeconds: tokens.ttlSeconds })
  const reload = (): void => {
    try {
      if (keys.reload()) log.info({ kid: keys.current().kid }, 'signing keys reloaded')
    } catch (err) {
      log.error({ error: (err as Error).message }, 'signing keys could not be reloaded; the previous keys stay in use')
    }
  }
  return { minter, keys, reload }
}
