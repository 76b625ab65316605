'use strict'

// What a native binary must match on this machine, and the one line that says
// so when none loads. Shared by the loader (lib/native.js) and the install
// script (scripts/install.js), which must agree on names and advice.

const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.join(__dirname, '..')

// Platforms a jetstan-<name> package is built for (package.json napi.targets).
const PREBUILT = 'linux x64/arm64 with glibc ≥ 2.17 or musl, macOS x64/arm64, Windows x64'

function glibc () {
  if (process.platform !== 'linux') return null
  return process.report?.getReport?.().header?.glibcVersionRuntime ?? null
}

/** The napi-rs name of this platform: `linux-x64-musl`, `darwin-arm64`, `win32-x64-msvc`. */
function triple () {
  const { platform, arch } = process
  if (platform === 'linux') return `${platform}-${arch}-${glibc() ? 'gnu' : 'musl'}`
  if (platform === 'win32') return `${platform}-${arch}-msvc`
  return `${platform}-${arch}`
}

/** `linux-x64-gnu (glibc 2.36)`, `linux-arm64-musl (musl libc)`, `darwin-arm64`. */
function describe () {
  if (process.platform !== 'linux') return triple()
  const version = glibc()
  return `${triple()} (${version ? `glibc ${version}` : 'musl libc'})`
}

/** A git checkout builds with `npm run build`; an installed package builds on (re)install. */
function isCheckout () {
  return fs.existsSync(path.join(ROOT, '.git'))
}

/** One line: which platform, and the ways out. */
function missingMessage () {
  const where = `jetstan: no native addon loads on ${describe()}, Node ${process.versions.node}`
  if (isCheckout()) {
    return `${where}: in this checkout run \`npm run build\` (needs Rust: https://rustup.rs)`
  }
  return `${where}: install Rust (https://rustup.rs; on Alpine \`apk add cargo\`) and run ` +
    '`npm rebuild jetstan` to build it from source, or use a base image with a prebuilt ' +
    `jetstan-<platform> package (${PREBUILT}; e.g. node:20-slim) and keep npm's optional dependencies`
}

module.exports = { triple, describe, isCheckout, missingMessage, ROOT }
