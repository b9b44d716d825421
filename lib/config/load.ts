/** Loading: reads a YAML or JSON config file and hands its content to validateConfig. */
import { readFileSync } from 'node:fs'
import { dirname, extname, resolve } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from '../errors.js'
import { validateConfig } from './normalise.js'
import type { GatewayConfig } from './types.js'

/** Reads a YAML or JSON config file and validates it. */
export function loadConfig (file: string): GatewayConfig {
  const path = resolve(file)
  let text: string
  try { text = readFileSync(path, 'utf8') } catch (err) {
    throw new ConfigError(`cannot read config file ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let data: unknown
  try {
    data = extname(path) === '.json' ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    throw new ConfigError(`${path} is not valid ${extname(path) === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message}`)
  }
  return validateConfig(data, dirname(path))
}
