/**
 * Upstream credentials, one provider per `auth.type`, shared by the request path (the credential
 * plugins) and the gateway's own reads of an upstream (the tool guard reading a tool list):
 * - `secret`: the vaulted secret in one header;
 * - `ephemeral`: a token minted per message (here for the gateway's own reads, subject mcp-warden);
 * - `none`: no header;
 * - `exchange`: no credential of the gateway's own (only an agent's token can be exchanged).
 */
import type { UpstreamConfig } from '../config.js'
import { createSecretProvider, describeRef } from '../secrets.js'
import { mintingFetch } from '../tokens/fetch.js'
import type { TokenMinter } from '../tokens/minter.js'

/** What a credential provider gives the proxy for one message: headers that authenticate the gateway to the upstream. */
export interface UpstreamAuth {
  readonly headers: Readonly<Record<string, string>>
}

type SecretAuth = Extract<UpstreamConfig['auth'], { type: 'secret' }>

/** The header a `secret` upstream takes, with the secret read (cached by the provider) when asked. */
export interface SecretCredential {
  /** The header's name and value. */
  headers: () => Promise<Record<string, string>>
  /** Where the secret comes from, for logs (never the secret). */
  readonly ref: string
}

const credentials = new WeakMap<SecretAuth, SecretCredential>()

/** The credential of one `secret` upstream: one per upstream configuration, whoever asks (one cache, one vault read). */
export function secretCredential (auth: SecretAuth): SecretCredential {
  let credential = credentials.get(auth)
  if (credential === undefined) {
    const provider = createSecretProvider(auth.secret)
    credential = {
      headers: async () => ({ [auth.header]: auth.format.replace('{secret}', await provider.get()) }),
      ref: describeRef(auth.secret)
    }
    credentials.set(auth, credential)
  }
  return credential
}

/** A fetch that carries the gateway's own credential for this upstream; undefined where it has none (exchange). */
export function ownFetch (server: UpstreamConfig, minter: () => TokenMinter): typeof fetch | undefined {
  const auth = server.auth
  switch (auth.type) {
    case 'none': return fetch
    case 'ephemeral': return mintingFetch(minter(), server.resource, { agentId: 'mcp-warden', userId: null })
    case 'secret': {
      const secret = secretCredential(auth)
      return async (input, init = {}) => {
        const headers = new Headers(init.headers)
        for (const [k, v] of Object.entries(await secret.headers())) headers.set(k, v)
        return await fetch(input, { ...init, headers })
      }
    }
    case 'exchange': return undefined
  }
}
