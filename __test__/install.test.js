'use strict'

// Installing jetstan the way a service does: the tarballs `npm run dist`
// makes (what a registry would hold), installed into a fresh project.
// - with the platform package and no Rust on PATH: CJS, ESM and the types work;
// - without a prebuilt binary and no Rust: the install fails with one line;
// - without a prebuilt binary and with cargo: the install builds it.
// Sizes and install times are printed as figures; sizes have a budget.

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { useServer, figure, unique } = require('./helpers')

const ROOT = path.join(__dirname, '..')
const BUDGET = { mainTarball: 300 * 1024, platformTarball: 4 * 1024 * 1024, binary: 8 * 1024 * 1024 }
const NPM_TIMEOUT_MS = 120000
// A cold source build took 1 min 45 s on 2 cores; slower CI machines get room.
const BUILD_TIMEOUT_MS = 15 * 60000

const ctx = useServer({ extraArgs: [] })
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'jetstan-install-'))
let dist

const withoutRust = (process.env.PATH || '').split(path.delimiter)
  .filter((dir) => !fs.existsSync(path.join(dir, 'cargo')) && !fs.existsSync(path.join(dir, 'rustc')))
  .join(path.delimiter)

before(() => {
  const out = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'dist.js'), '--out', path.join(work, 'dist')],
    { encoding: 'utf8', timeout: BUILD_TIMEOUT_MS })
  assert.equal(out.status, 0, out.stderr)
  dist = JSON.parse(out.stdout.trim().split('\n').pop())
})

after(() => fs.rmSync(work, { recursive: true, force: true }))

/** A fresh project with the given tarballs installed; optional dependencies are
 * omitted, so nothing unpublished is looked up on the registry. */
function install (name, tarballs, { env = {}, timeout = NPM_TIMEOUT_MS } = {}) {
  const dir = path.join(work, name)
  fs.mkdirSync(dir)
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, private: true }))
  const started = process.hrtime.bigint()
  const out = spawnSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--omit=optional', '--foreground-scripts', ...tarballs],
    { cwd: dir, encoding: 'utf8', timeout, env: { ...process.env, ...env } })
  return { dir, out, ms: Number(process.hrtime.bigint() - started) / 1e6 }
}

/** Runs a file in the project with Rust hidden; returns what it printed. */
function runIn (dir, file, source, args = []) {
  fs.writeFileSync(path.join(dir, file), source)
  const out = spawnSync(process.execPath, [file, ...args], { cwd: dir, encoding: 'utf8', timeout: 30000, env: { ...process.env, PATH: withoutRust } })
  assert.equal(out.status, 0, `${file}: ${out.stderr}`)
  return out.stdout.trim()
}

// Publishes three messages and receives them from the start; prints them
// once all three are acked and received.
const roundTrip = (load) => `${load}
const [url, subject] = process.argv.slice(2)
const sc = stan.connect('install-cluster', 'svc-' + process.pid, { url })
const got = []
let acked = 0
const done = () => { if (got.length === 3 && acked === 3) { console.log(JSON.stringify(got)); sc.close() } }
const fail = (err) => { console.error(err); process.exitCode = 1; sc.close() }
sc.on('error', fail)
sc.on('connect', () => {
  const sub = sc.subscribe(subject, sc.subscriptionOptions().setDeliverAllAvailable())
  sub.on('error', fail)
  sub.on('message', (msg) => { got.push([msg.getSequence(), msg.getData()]); done() })
  sub.on('ready', () => {
    for (const n of [1, 2, 3]) sc.publish(subject, 'm' + n, (err) => { if (err) fail(err); else { acked++; done() } })
  })
})
`

const expected = JSON.stringify([[1, 'm1'], [2, 'm2'], [3, 'm3']])

function assertRoundTrips (dir) {
  assert.equal(runIn(dir, 'svc.cjs', roundTrip("const stan = require('jetstan')"), [ctx.url, unique('cjs')]), expected)
  assert.equal(runIn(dir, 'svc.mjs', roundTrip("import stan from 'jetstan'"), [ctx.url, unique('esm')]), expected)
}

/** The one line the install script printed about a missing native addon. */
function missingLine (text) {
  return text.split('\n').map((line) => line.replace(/^npm error /, '')).find((line) => line.startsWith('jetstan: no native addon'))
}

test('the tarballs and the binary stay within their size budget', () => {
  figure('package sizes', { mainTarballBytes: dist.main.bytes, platformTarballBytes: dist.platform.bytes, binaryBytes: dist.platform.binaryBytes })
  assert.ok(dist.main.bytes <= BUDGET.mainTarball, `main tarball ${dist.main.bytes} B > ${BUDGET.mainTarball}`)
  assert.ok(dist.platform.bytes <= BUDGET.platformTarball, `platform tarball ${dist.platform.bytes} B > ${BUDGET.platformTarball}`)
  assert.ok(dist.platform.binaryBytes <= BUDGET.binary, `binary ${dist.platform.binaryBytes} B > ${BUDGET.binary}`)
})

test('the linux-x64-gnu binary needs no glibc symbol newer than 2.17', { skip: process.platform !== 'linux' || process.arch !== 'x64' }, () => {
  const binary = path.join(ROOT, 'jetstan.linux-x64-gnu.node')
  const out = spawnSync('objdump', ['-T', binary], { encoding: 'utf8' })
  assert.equal(out.status, 0, `objdump -T (binutils) is needed to check the glibc floor: ${out.error?.message ?? out.stderr}`)
  const versions = [...new Set(out.stdout.match(/GLIBC_[0-9.]+/g))].map((v) => v.slice(6).split('.').map(Number))
  const newest = versions.sort((a, b) => a[0] - b[0] || (a[1] ?? 0) - (b[1] ?? 0)).pop()
  figure('glibc floor', { newest: `GLIBC_${newest.join('.')}` })
  assert.ok(newest[0] === 2 && (newest[1] ?? 0) <= 17, `needs GLIBC_${newest.join('.')}`)
})

test('with the platform package and no Rust, it installs and runs: CJS, ESM, types', async (t) => {
  const { dir, out, ms } = install('prebuilt', [dist.main.file, dist.platform.file], { env: { PATH: withoutRust } })
  assert.equal(out.status, 0, out.stderr)
  figure('install with the prebuilt binary', { ms: Math.round(ms) })
  const installed = fs.readdirSync(path.join(dir, 'node_modules', 'jetstan'))
  assert.deepEqual(installed.filter((f) => f.endsWith('.node')), [], 'the main package carries no binary')
  assert.ok(fs.existsSync(path.join(dir, 'node_modules', dist.platform.name, `jetstan.${dist.platform.name.slice('jetstan-'.length)}.node`)))
  assertRoundTrips(dir)

  await t.test('the types check with tsc', () => {
    fs.writeFileSync(path.join(dir, 'svc.ts'), `
import { connect, Publisher, Listener, Message, Stan, StanError } from 'jetstan'
interface Created { subject: 'thing:created'; data: { id: string } }
class CreatedPublisher extends Publisher<Created> { readonly subject = 'thing:created' as const }
class CreatedListener extends Listener<Created> {
  readonly subject = 'thing:created' as const
  readonly queueGroupName = 'things'
  onMessage (data: Created['data'], msg: Message): void { console.log(data.id, msg.getSequence()) }
}
const sc: Stan = connect('c', 'svc', { url: 'nats://127.0.0.1:4222', ackTimeout: 1000 })
sc.on('connect', () => {
  void new CreatedPublisher(sc).publish({ id: 'a' })
  new CreatedListener(sc).listen()
})
sc.on('error', (err: StanError) => console.log(err.code))
// @ts-expect-error: the data of the event is typed
void new CreatedPublisher(sc).publish({ id: 1 })
`)
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', types: ['node'], typeRoots: [path.join(ROOT, 'node_modules', '@types')] },
      files: ['svc.ts']
    }))
    const tsc = spawnSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir], { encoding: 'utf8', timeout: 60000 })
    assert.equal(tsc.status, 0, tsc.stdout + tsc.stderr)
  })

  await t.test('without the platform package, require() says what to do in one line', () => {
    fs.rmSync(path.join(dir, 'node_modules', dist.platform.name), { recursive: true })
    const err = JSON.parse(runIn(dir, 'missing.cjs',
      "try { require('jetstan') } catch (err) { console.log(JSON.stringify({ code: err.code, message: err.message })) }"))
    assert.equal(err.code, 'NATIVE_MISSING')
    assert.equal(err.message.includes('\n'), false)
    assert.match(err.message, /npm rebuild jetstan/)
  })
})

test('without a prebuilt binary or Rust, the install fails with one line naming the platform and the ways out', () => {
  const { out } = install('unsupported', [dist.main.file], { env: { PATH: withoutRust } })
  assert.notEqual(out.status, 0)
  const line = missingLine(out.stderr)
  assert.ok(line, out.stderr)
  figure('unsupported-platform line', { line })
  assert.match(line, new RegExp(`on ${process.platform}-${process.arch}-(gnu|musl) \\((glibc [0-9.]+|musl libc)\\), Node ${process.versions.node}`))
  assert.match(line, /install Rust \(https:\/\/rustup\.rs.*\) and run `npm rebuild jetstan`/)
  assert.match(line, /or use a base image with a prebuilt jetstan-<platform> package/)
})

test('without a prebuilt binary and with cargo, the install builds it from the sources in the tarball', { timeout: BUILD_TIMEOUT_MS + 60000 }, () => {
  // The build tree is kept across runs in the checkout's target/ (cargo
  // reuses what it can); the install itself is the user's.
  const cache = path.join(ROOT, 'target', 'install-fallback')
  const { dir, out, ms } = install('from-source', [dist.main.file], { env: { CARGO_TARGET_DIR: cache }, timeout: BUILD_TIMEOUT_MS })
  assert.equal(out.status, 0, out.stderr)
  figure('install with the source build', { ms: Math.round(ms), progressLines: out.stderr.split('\n').filter((l) => l.includes('jetstan: building:')).length })
  assert.match(out.stderr, /jetstan: building the native addon for .* from source with cargo/)
  assert.match(out.stderr, /jetstan: built jetstan\..+\.node in /)
  assert.equal(fs.existsSync(path.join(dir, 'node_modules', dist.platform.name)), false)
  assertRoundTrips(dir)
})
