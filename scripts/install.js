'use strict'

// npm's `install` script. A prebuilt binary (the jetstan-<platform> package
// npm picked by os, cpu and libc) usually loads, and then there is nothing to
// do. When none does and cargo is on PATH, the addon is built from the
// sources the package carries; without cargo, one line says which platform
// this is and the ways out, and the install fails. In a git checkout it does
// nothing: `npm run build` builds there. JETSTAN_BUILD_FROM_SOURCE=1 builds
// even when a prebuilt binary loads. Only Node's own modules: nothing else is
// installed yet.

const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { triple, describe, isCheckout, missingMessage, ROOT } = require('../lib/platform')

const LIBRARY = { darwin: 'libjetstan.dylib', win32: 'jetstan.dll' }[process.platform] ?? 'libjetstan.so'

function say (line) {
  console.error(`jetstan: ${line}`)
}

function prebuiltLoads () {
  const out = spawnSync(process.execPath, ['-e', "require('./binding.js')"], { cwd: ROOT, stdio: 'ignore' })
  return out.status === 0
}

function hasCargo () {
  return spawnSync('cargo', ['--version'], { stdio: 'ignore' }).status === 0
}

/** Crates the build compiles: packages in the resolved tree for this machine. */
function crateCount () {
  const out = spawnSync('cargo', ['tree', '--locked', '-e', 'normal,build', '--prefix', 'none', '--format', '{p}'],
    { cwd: ROOT, encoding: 'utf8' })
  if (out.status !== 0) return null
  return new Set(out.stdout.split('\n').filter(Boolean).map((line) => line.replace(/ \(\*\)$/, ''))).size
}

function duration (ms) {
  const s = Math.round(ms / 1000)
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`
}

/** cargo build, with a progress line per tenth of the crates. */
function cargoBuild (total) {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const cargo = spawn('cargo', ['build', '--release', '--locked', '--lib', '--message-format=json-render-diagnostics'],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
    const built = new Set()
    let library = null
    let reported = 0
    readline.createInterface({ input: cargo.stdout }).on('line', (line) => {
      let msg
      try { msg = JSON.parse(line) } catch { return }
      if (msg.reason !== 'compiler-artifact') return
      built.add(msg.package_id)
      if (msg.target?.kind?.includes('cdylib')) library = msg.filenames.find((f) => f.endsWith(LIBRARY)) ?? null
      if (!total) return
      if (built.size === total - 1 && reported < total - 1) {
        reported = total - 1
        say(`building: dependencies done after ${duration(Date.now() - started)}; jetstan itself and its link take about as long again`)
      } else if (built.size >= reported + total / 10 && built.size < total - 1) {
        reported = built.size
        say(`building: ${built.size}/${total} crates after ${duration(Date.now() - started)}`)
      }
    })
    cargo.on('error', reject)
    cargo.on('close', (code) => {
      if (code !== 0) reject(new Error(`cargo build failed (exit ${code}); its output is above`))
      else if (!library) reject(new Error(`cargo build made no ${LIBRARY}`))
      else resolve({ library, ms: Date.now() - started })
    })
  })
}

async function buildFromSource () {
  const total = crateCount()
  const size = total ? `${total} crates; ` : ''
  say(`building the native addon for ${describe()} from source with cargo ` +
    `(${size}about 2 min on 2 x86-64 cores, longer on smaller machines); npm shows this output with --foreground-scripts`)
  const { library, ms } = await cargoBuild(total)
  const target = path.join(ROOT, `jetstan.${triple()}.node`)
  fs.copyFileSync(library, target)
  // Cargo's build tree is hundreds of MB; keep it only where the user put it.
  if (!process.env.CARGO_TARGET_DIR) fs.rmSync(path.join(ROOT, 'target'), { recursive: true, force: true })
  if (!prebuiltLoads()) throw new Error(`the addon built at ${target} does not load`)
  say(`built ${path.basename(target)} in ${duration(ms)}`)
}

async function main () {
  if (isCheckout()) return
  const force = process.env.JETSTAN_BUILD_FROM_SOURCE === '1'
  if (!force && prebuiltLoads()) return
  if (!hasCargo()) {
    console.error(missingMessage())
    process.exitCode = 1
    return
  }
  await buildFromSource()
}

main().catch((err) => {
  say(err.message)
  process.exitCode = 1
})
