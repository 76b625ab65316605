'use strict'

// `npm run demo`: the example listener and publisher talking through a
// nats-server this script starts (or the one at NATS_URL), then everything
// stops and the script exits 0 if every event arrived.
// `npm run demo -- --backend stan` runs them on the stan backend; with no
// NATS_URL the STAN server is the test double (testing/stan-double) on the
// nats-server the script starts, with NATS_URL it is whatever serves there.

const { spawn } = require('node:child_process')
const path = require('node:path')
const readline = require('node:readline')
const { ensureAll, ROOT } = require('./ensure')

const EXAMPLES = path.join(ROOT, 'examples')
const EVENTS = 10
const CLUSTER_ID = 'ticketing'
const DEADLINE_MS = 60000

function start (script, env, label) {
  const child = spawn('npm', ['run', '--silent', script], {
    cwd: EXAMPLES,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const lines = readline.createInterface({ input: child.stdout })
  lines.on('line', (line) => {
    console.log(`[${label}] ${line}`)
    child.emit('line', line)
  })
  child.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
  return child
}

function waitForLine (child, pattern) {
  return new Promise((resolve, reject) => {
    const onLine = (line) => { if (pattern.test(line)) { child.off('line', onLine); resolve() } }
    child.on('line', onLine)
    child.exited.then((code) => reject(new Error(`exited with ${code} before printing ${pattern}`)))
  })
}

function backendArg () {
  const at = process.argv.indexOf('--backend')
  const backend = at === -1 ? 'jetstream' : process.argv[at + 1]
  if (backend !== 'jetstream' && backend !== 'stan') {
    throw new Error(`--backend must be jetstream or stan, got ${backend}`)
  }
  return backend
}

async function main () {
  const backend = backendArg()
  ensureAll({ natsServer: !process.env.NATS_URL })
  let server = null
  let double = null
  let url = process.env.NATS_URL
  if (url === undefined) {
    server = await require('../testing/nats-server').startServer()
    url = server.url
    console.log(`demo: started nats-server ${server.pid} at ${url}`)
    if (backend === 'stan') {
      const { StanDouble } = require('../testing/stan-double/server')
      double = await new StanDouble({ url, clusterID: CLUSTER_ID }).start()
      console.log(`demo: started the STAN test double for cluster '${CLUSTER_ID}' (a test double, not a production server)`)
    }
  } else {
    console.log(`demo: using the server at NATS_URL=${url}`)
  }
  const env = { NATS_URL: url, JETSTAN_BACKEND: backend, STAN_CLUSTER_ID: CLUSTER_ID }
  const deadline = setTimeout(() => {
    console.error(`demo: not finished within ${DEADLINE_MS} ms`)
    for (const child of children) child.kill()
  }, DEADLINE_MS)
  const children = []
  try {
    const listener = start('listen', { ...env, EXIT_AFTER: String(EVENTS) }, 'listener')
    children.push(listener)
    await waitForLine(listener, /^Listening on/)
    const publisher = start('publish', { ...env, COUNT: String(EVENTS) }, 'publisher')
    children.push(publisher)
    const [published, listened] = await Promise.all([publisher.exited, listener.exited])
    if (published !== 0 || listened !== 0) {
      throw new Error(`publisher exited with ${published}, listener with ${listened}`)
    }
    console.log(`demo: ${EVENTS} ticket:created and ${EVENTS} order:created events published and received (${backend} backend)`)
  } finally {
    clearTimeout(deadline)
    if (double !== null) await double.stop()
    if (server !== null) {
      await server.stop()
      console.log(`demo: stopped nats-server ${server.pid}`)
    }
  }
}

main().catch((err) => {
  console.error(`demo failed: ${err.message}`)
  process.exitCode = 1
})
