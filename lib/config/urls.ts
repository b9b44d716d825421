/** The URLs derived from a config's publicUrl: a server route's resource and its metadata. */
import type { GatewayConfig } from './types.js'

/** The RFC 8707 resource URL of a server's route: `<publicUrl>/servers/<name>/mcp`. */
export function resourceUrl (config: Pick<GatewayConfig, 'publicUrl'>, server: string): string {
  return `${config.publicUrl}/servers/${server}/mcp`
}

/** The RFC 9728 metadata URL of a server's route. */
export function metadataUrl (config: Pick<GatewayConfig, 'publicUrl'>, server: string): string {
  return `${config.publicUrl}/.well-known/oauth-protected-resource/servers/${server}/mcp`
}
