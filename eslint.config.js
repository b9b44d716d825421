// The project's style, checked: neostandard (standard + TypeScript, the fastify family's choice).
// No type-aware rules (tsc already checks types in `npm run typecheck`), so this stays fast.
import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    noJsx: true,
    ignores: [
      'dist/**',
      'coverage/**',
      '.scratch/**',
      '.cache/**',
      '.tap/**',
      '.mcp-warden/**',
      // fixture data (policies, tool corpora), not code
      'test/fixtures/cedar/**',
      'test/fixtures/tool-corpus/**'
    ]
  }),
  {
    name: 'mcp-warden/conventions',
    rules: {
      // `void promise` / `void reply.header(...)` as a statement is how this code marks a
      // deliberately un-awaited promise (fastify's reply is thenable); `void 0` stays banned.
      'no-void': ['error', { allowAsStatement: true }],
      // Long option tables and lookup maps are packed several properties to a line.
      '@stylistic/object-property-newline': 'off'
    }
  }
]
