'use strict'

// `npm test`: install what is missing, lint (rustfmt, clippy, tsc), Rust unit
// tests, the node:test suite against real nats-servers it starts, and the
// benchmark's quick smoke run.

const path = require('node:path')
const { ensureAll, run, ROOT } = require('./ensure')

function main () {
  ensureAll()
  run('cargo', ['fmt', '--check'])
  run('cargo', ['clippy', '--all-targets', '--quiet', '--', '-D', 'warnings'])
  run('cargo', ['test', '--quiet', '--lib'])
  run(path.join(ROOT, 'node_modules', '.bin', 'tsc'), ['--noEmit', '-p', 'tsconfig.json'])
  // The benchmark's smoke run: proves it still works, measures nothing.
  run(process.execPath, [path.join(ROOT, 'bench', 'run.js'), '--quick'])
  // Last, so the test runner's summary closes the output.
  run(process.execPath, ['--test', '--test-concurrency=2', '__test__/'])
}

try {
  main()
} catch (err) {
  console.error(`jetstan: ${err.message}`)
  process.exitCode = 1
}
