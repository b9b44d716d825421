/** Command-line options of the CLI's commands: one parser, `--help`/`-h` on each, errors as each command's usage error. */
import { parseArgs, type ParseArgsConfig } from 'node:util'

export function parseOptions (args: string[], options: NonNullable<ParseArgsConfig['options']>, usageError: (message: string) => Error): ReturnType<typeof parseArgs> {
  try {
    return parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true })
  } catch (err) {
    throw usageError((err as Error).message)
  }
}
