'use strict'

// Brings a fresh clone to a runnable state: npm dependencies (root and
// examples), the release build of the addon, and nats-server. Each step is
// skipped when its output is already newer than its inputs. Uses only Node's
// own modules, since it runs before anything is installed.

const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')

function run (cmd, args, cwd = ROOT, env = process.env) {
  console.error(`jetstan: ${path.relative(ROOT, cwd) || '.'}$ ${cmd} ${args.join(' ')}`)
  const out = spawnSync(cmd, args, { cwd, env, stdio: ['ignore', 'inherit', 'inherit'] })
  if (out.status !== 0) {
    throw new Error(`'${cmd} ${args.join(' ')}' failed with ${out.status ?? out.signal}`)
  }
}

function mtime (file) {
  try { return fs.statSync(file).mtimeMs } catch { return 0 }
}

function newestUnder (dir) {
  let newest = 0
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestUnder(full) : mtime(full))
  }
  return newest
}

function ensureNpm (dir) {
  const marker = path.join(dir, 'node_modules', '.package-lock.json')
  const inputs = Math.max(mtime(path.join(dir, 'package.json')), mtime(path.join(dir, 'package-lock.json')))
  if (mtime(marker) >= inputs && inputs > 0) return
  run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], dir)
}

function builtAddon () {
  const found = fs.readdirSync(ROOT).filter((f) => /^jetstan\..*\.node$/.test(f))
  return found.length === 0 ? 0 : Math.max(...found.map((f) => mtime(path.join(ROOT, f))))
}

function ensureBuild () {
  const inputs = Math.max(newestUnder(path.join(ROOT, 'src')),
    ...['Cargo.toml', 'Cargo.lock', 'build.rs'].map((f) => mtime(path.join(ROOT, f))))
  if (builtAddon() >= inputs) return
  run('npm', ['run', 'build', '--silent'])
}

function ensureNatsServer () {
  if (process.env.NATS_URL) return
  require('../testing/nats-server').findNatsServer()
}

function ensureAll ({ examples = true, natsServer = true } = {}) {
  ensureNpm(ROOT)
  ensureBuild()
  if (examples) ensureNpm(path.join(ROOT, 'examples'))
  if (natsServer) ensureNatsServer()
}

module.exports = { ensureAll, ensureNpm, ensureBuild, run, ROOT }

if (require.main === module) ensureAll()
