/**
 * `mcp-warden audit …`: the operator's side of the tamper-evident audit log (docs/audit.md).
 */
import { parseOptions } from './cli-args.js'
import { loadCheckpointKeys, type CheckpointKeys } from './audit/keys.js'
import { MAX_LINE_BYTES, MAX_LINE_BYTES_LIMIT, formatReport, verifyAuditFiles } from './audit/verify.js'

export interface Io { out: (line: string) => void, err: (line: string) => void }
export class AuditUsageError extends Error {}

export const AUDIT_HELP = `Usage: mcp-warden audit verify FILE [FILE …] [--key PEM_FILE | --jwks FILE_OR_URL | --keys-dir DIR] [--max-line-bytes N] [--json]

Checks the hash chain of audit files: every record must follow the previous record of its
replica (seq + 1, prev = the SHA-256 of that record's line). Give rotated files oldest first:
  mcp-warden audit verify audit.log.2 audit.log.1 audit.log

Prints one OK line (records, each replica's seq range and last hash, checkpoints) and exits 0;
or the first broken link (file:line, replica, seq, and what was done: edited, deleted,
reordered, inserted, duplicate, cut-off, malformed, forged-genesis, bad-signature, unknown-key,
missing-checkpoint, no-checkpoint, too-long) and exits 1. Exits 2 on a usage error or an
unreadable file.

Options (repeatable), to check the signatures of checkpoint records (audit.checkpoint.every):
  --key PEM_FILE       the gateway's Ed25519 public key (or private key) as PEM
  --jwks FILE_OR_URL   a JWKS: the gateway's /.well-known/jwks.json, or an archived copy
  --keys-dir DIR       the gateway's keys folder (tokens.keysDir)
With any of them, every chain must start with a signed checkpoint and keep the interval it
promises, a chain-resume must be followed by the signed resume checkpoint, and nothing unsigned
may follow a close checkpoint. Without them, checkpoints are reported unchecked.

  --max-line-bytes N   a longer line is a broken link (too-long); default ${MAX_LINE_BYTES} (64 MiB),
                       above the longest line a gateway with the default limits writes
  --json               the report as JSON`

export async function auditCommand (args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args
  const { values, positionals } = parseOptions(rest, {
    key: { type: 'string', multiple: true },
    jwks: { type: 'string', multiple: true },
    'keys-dir': { type: 'string', multiple: true },
    'max-line-bytes': { type: 'string' },
    json: { type: 'boolean' }
  }, m => new AuditUsageError(m))
  if (sub === 'help' || sub === '--help' || sub === '-h' || values.help === true) { io.out(AUDIT_HELP); return 0 }
  if (sub === undefined) throw new AuditUsageError(`a command is required\n\n${AUDIT_HELP}`)
  if (sub !== 'verify') throw new AuditUsageError(`unknown audit command "${sub}"\n\n${AUDIT_HELP}`)
  if (positionals.length === 0) throw new AuditUsageError('verify needs the audit files, oldest first (e.g. audit.log.1 audit.log)')
  const pem = values.key as string[] | undefined
  const jwks = values.jwks as string[] | undefined
  const keysDirs = values['keys-dir'] as string[] | undefined
  let keys: CheckpointKeys | undefined
  if (pem !== undefined || jwks !== undefined || keysDirs !== undefined) {
    try {
      keys = await loadCheckpointKeys({ ...(pem !== undefined ? { pem } : {}), ...(jwks !== undefined ? { jwks } : {}), ...(keysDirs !== undefined ? { keysDirs } : {}) })
    } catch (err) {
      // A key source that cannot be read or used is the operator's to fix, like a wrong option.
      throw new AuditUsageError((err as Error).message)
    }
  }
  const maxLine = values['max-line-bytes'] as string | undefined
  const maxLineBytes = maxLine === undefined ? MAX_LINE_BYTES : /^\d{1,10}$/.test(maxLine) ? Number(maxLine) : NaN
  if (!(maxLineBytes >= 1024 && maxLineBytes <= MAX_LINE_BYTES_LIMIT)) {
    throw new AuditUsageError(`--max-line-bytes: a whole number of bytes from 1024 to ${MAX_LINE_BYTES_LIMIT}, not ${JSON.stringify(maxLine)}`)
  }
  let report
  try {
    report = await verifyAuditFiles(positionals, { maxLineBytes, ...(keys !== undefined ? { keys } : {}) })
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    throw new AuditUsageError(`cannot read ${e.path ?? 'the audit files'}: ${e.code ?? e.message}`)
  }
  if (values.json === true) io.out(JSON.stringify(report, null, 2))
  else for (const line of formatReport(report)) io.out(line)
  return report.ok ? 0 : 1
}
