/**
 * Configuration: schema, defaults, validation and normalisation.
 *
 * A config is YAML or JSON (DESIGN.md §5). Unknown keys and wrong types refuse to
 * boot with a ConfigError that names the key, e.g. `identity.algorithms[1]`.
 * The result is deep-frozen: nothing changes it after boot.
 *
 * The parts live in lib/config/: schema.ts (the schema and its check), types.ts (the types),
 * normalise.ts (checked input → frozen config), load.ts (reading the file), urls.ts (route URLs).
 * This module re-exports their public names.
 */
export type {
  RawConfig,
  Sensitivity,
  SecretRef,
  UpstreamAuthConfig,
  StdioConfig,
  UpstreamConfig,
  IdentityConfig,
  AuthorizationConfig,
  TokensConfig,
  JudgeConfig,
  RateLimitConfig,
  GatewayConfig,
  ConsoleConfig
} from './config/types.js'
export { secretRef, windowMs, validateConfig } from './config/normalise.js'
export { loadConfig } from './config/load.js'
export { resourceUrl, metadataUrl } from './config/urls.js'
