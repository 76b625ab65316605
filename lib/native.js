'use strict'

const { StanError } = require('./errors')

/** `linux-x64-gnu (glibc 2.36)`, `linux-arm64-musl`, `darwin-arm64`: what a binary must match. */
function platformName () {
  const { platform, arch } = process
  if (platform !== 'linux') return `${platform}-${arch}`
  const glibc = process.report?.getReport?.().header?.glibcVersionRuntime
  return glibc ? `${platform}-${arch}-gnu (glibc ${glibc})` : `${platform}-${arch}-musl`
}

// The generated loader picks the .node file for this platform. When none
// loads, say in one line which platform this is and the ways out; the
// loader's own account is kept as `cause`.
function load () {
  try {
    return require('../binding.js')
  } catch (err) {
    const missing = new StanError(
      'NATIVE_MISSING',
      `jetstan: no native addon loads on ${platformName()}, Node ${process.versions.node}: ` +
        'in a jetstan checkout run `npm run build` (needs Rust: https://rustup.rs); ' +
        'a binary built here needs linux-x64 with glibc ≥ 2.34 (e.g. the node:22-slim image)'
    )
    missing.cause = err
    throw missing
  }
}

module.exports = load()
