'use strict'

// One measurement in a fresh process, so CPU and RSS figures belong to one
// client alone: `node bench/worker.js <client> <workload> <payloadBytes> <count> <url>`.
// Prints one JSON object with the figures on stdout.

const crypto = require('node:crypto')
const [client, workload, payloadArg, countArg, url] = process.argv.slice(2)
const payloadBytes = Number(payloadArg)
const count = Number(countArg)
const WINDOW = 1024
const CONSUME_WINDOW = 1000
const LATENCY_RATE = 1000
const PACED_RATE = 5000

const channel = `bench-${workload}-${crypto.randomBytes(4).toString('hex')}`
const payload = crypto.randomBytes(payloadBytes)

function cpuMicros (since) {
  const now = process.cpuUsage(since)
  return now.user + now.system
}

function percentile (sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
}

// ---------------------------------------------------------------- jetstan
// Also the STAN rows: jetstan's stan backend (`jetstan-stan`) and the
// original node-nats-streaming 0.3.2 (`original`) have the same API, on the
// STAN test double the bench starts for STAN_CLUSTER.
const STAN_CLUSTER = 'jetstan-bench-double'
const jetstan = {
  async connect (opts = {}) {
    const stan = require(client === 'original' ? 'node-nats-streaming' : '..')
    const [cluster, backend] = client === 'jetstan' ? ['bench', {}] : [STAN_CLUSTER, client === 'jetstan-stan' ? { backend: 'stan' } : {}]
    const sc = stan.connect(cluster, `bench-${process.pid}-${crypto.randomBytes(3).toString('hex')}`,
      { url, maxPubAcksInflight: WINDOW, ...backend, ...opts })
    await new Promise((resolve, reject) => { sc.once('connect', resolve); sc.once('error', reject) })
    return sc
  },
  close (sc) { return new Promise((resolve) => { sc.once('close', resolve); sc.close() }) },
  // jetstan queues a publish beyond the window until an ack frees room;
  // 0.3.2 throws `max in flight reached` instead, so it is fed as acks come.
  publishMany (sc, subject, n, data) {
    return new Promise((resolve, reject) => {
      let acked = 0
      let sent = 0
      const onAck = (err) => {
        if (err) return reject(err)
        if (++acked === n) resolve()
        else if (client === 'original' && sent < n) send()
      }
      const send = () => { sent++; sc.publish(subject, data, onAck) }
      const first = client === 'original' ? Math.min(n, WINDOW) : n
      while (sent < first) send()
    })
  },
  publishOne (sc, subject, data) {
    return new Promise((resolve, reject) => sc.publish(subject, data, (err) => (err ? reject(err) : resolve())))
  },
  subscribe (sc, subject, { all = false, manual = false, window = CONSUME_WINDOW } = {}, onMessage) {
    const opts = sc.subscriptionOptions().setMaxInFlight(window).setManualAckMode(manual)
    if (all) opts.setDeliverAllAvailable()
    const sub = sc.subscribe(subject, opts)
    sub.on('message', (msg) => onMessage(msg.getRawData(), () => msg.ack()))
    return new Promise((resolve, reject) => { sub.once('ready', () => resolve(sub)); sub.once('error', reject) })
  }
}

// ---------------------------------------------------------------- nats.js v3
// Publishes carry a Nats-Msg-Id (`msgID`) as jetstan's do, so both pay for
// the server's duplicate window.
const { nuid } = require('@nats-io/nuid')
const natsjs = {
  async connect () {
    const { connect } = require('@nats-io/transport-node')
    const { jetstream, jetstreamManager } = require('@nats-io/jetstream')
    const fast = client === 'natsjs-fast'
    const nc = await connect({ servers: url, noAsyncTraces: fast })
    const conn = { nc, js: jetstream(nc), jsm: await jetstreamManager(nc), streams: new Set() }
    return conn
  },
  async close (conn) { await conn.nc.close() },
  async ensureStream (conn, subject) {
    if (conn.streams.has(subject)) return
    await conn.jsm.streams.add({ name: subject.replace(/[^A-Za-z0-9_-]/g, '_'), subjects: [subject] })
    conn.streams.add(subject)
  },
  async publishMany (conn, subject, n, data) {
    await natsjs.ensureStream(conn, subject)
    let inFlight = 0
    let sent = 0
    let acked = 0
    await new Promise((resolve, reject) => {
      const pump = () => {
        while (inFlight < WINDOW && sent < n) {
          inFlight++
          sent++
          conn.js.publish(subject, data, { msgID: nuid.next() }).then(() => {
            inFlight--
            if (++acked === n) resolve()
            else pump()
          }, reject)
        }
      }
      pump()
    })
  },
  async publishOne (conn, subject, data) {
    await natsjs.ensureStream(conn, subject)
    await conn.js.publish(subject, data, { msgID: nuid.next() })
  },
  async subscribe (conn, subject, { all = false, manual = false, window = CONSUME_WINDOW } = {}, onMessage) {
    await natsjs.ensureStream(conn, subject)
    const { AckPolicy, DeliverPolicy } = require('@nats-io/jetstream')
    const stream = subject.replace(/[^A-Za-z0-9_-]/g, '_')
    const name = `c${crypto.randomBytes(4).toString('hex')}`
    await conn.jsm.consumers.add(stream, {
      durable_name: name,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: all ? DeliverPolicy.All : DeliverPolicy.New,
      max_ack_pending: window
    })
    const consumer = await conn.js.consumers.get(stream, name)
    const messages = await consumer.consume({ max_messages: window })
    ;(async () => {
      for await (const m of messages) {
        onMessage(m.data, () => m.ack())
        if (!manual) m.ack()
      }
    })()
    return messages
  }
}

function api () {
  if (client === 'jetstan' || client === 'jetstan-stan' || client === 'original') return jetstan
  if (client === 'natsjs' || client === 'natsjs-fast') return natsjs
  throw new Error(`unknown client ${client}`)
}

/**
 * Calls `send` `count` times at `rate` per second, paced by a 1 ms timer, not
 * a busy loop: spinning the event loop would take a core from the client
 * under test on a small machine.
 */
function paced (rate, send) {
  const begin = process.hrtime.bigint()
  let sent = 0
  return new Promise((resolve) => {
    const tick = setInterval(() => {
      const elapsedMs = Number(process.hrtime.bigint() - begin) / 1e6
      const due = Math.min(count, Math.floor(elapsedMs * rate / 1000) + 1)
      for (; sent < due; sent++) send()
      if (sent >= count) {
        clearInterval(tick)
        resolve()
      }
    }, 1)
  })
}

// ---------------------------------------------------------------- workloads
const workloads = {
  async pub () {
    const c = api()
    const conn = await c.connect()
    await c.publishOne(conn, channel, payload)
    const cpu = process.cpuUsage()
    const start = process.hrtime.bigint()
    await c.publishMany(conn, channel, count, payload)
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    const cpuUs = cpuMicros(cpu)
    await c.close(conn)
    return { rate: count / seconds, cpu_s_per_100k: (cpuUs / 1e6) * (100000 / count) }
  },

  async syncpub () {
    const c = api()
    const conn = await c.connect()
    await c.publishOne(conn, channel, payload)
    const start = process.hrtime.bigint()
    for (let i = 0; i < count; i++) await c.publishOne(conn, channel, payload)
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    await c.close(conn)
    return { rate: count / seconds }
  },

  // Auto-ack (jetstan's default mode: acked after the handler); the other
  // clients have no such mode, so this row is jetstan's alone.
  consumeauto () { return workloads.consume({ manual: false }) },

  // Manual acks with 100 messages in flight, a service's usual setting.
  consume100 () { return workloads.consume({ window: 100 }) },

  async consume ({ manual = true, window = CONSUME_WINDOW } = {}) {
    const c = api()
    const conn = await c.connect()
    await c.publishMany(conn, channel, count, payload)
    let received = 0
    let done
    const finished = new Promise((resolve) => { done = resolve })
    const cpu = process.cpuUsage()
    const start = process.hrtime.bigint()
    await c.subscribe(conn, channel, { all: true, manual, window }, (data, ack) => {
      if (manual) ack()
      if (++received === count) done()
    })
    await finished
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    const cpuUs = cpuMicros(cpu)
    await c.close(conn)
    return { rate: count / seconds, cpu_s_per_100k: (cpuUs / 1e6) * (100000 / count) }
  },

  async latency () {
    const c = api()
    const conn = await c.connect()
    const samples = []
    let done
    const finished = new Promise((resolve) => { done = resolve })
    await c.subscribe(conn, channel, {}, (data) => {
      const sent = data.readDoubleLE(0)
      samples.push(Number(process.hrtime.bigint()) / 1e3 - sent)
      if (samples.length === count) done()
    })
    const body = Buffer.alloc(Math.max(8, payloadBytes))
    await paced(LATENCY_RATE, () => {
      const data = Buffer.from(body)
      data.writeDoubleLE(Number(process.hrtime.bigint()) / 1e3, 0)
      c.publishMany(conn, channel, 1, data).catch(() => {})
    })
    await finished
    await c.close(conn)
    samples.sort((a, b) => a - b)
    return { p50_us: percentile(samples, 0.5), p99_us: percentile(samples, 0.99), p999_us: percentile(samples, 0.999) }
  },

  // The common case: a few messages per wake. 5,000 msgs/s published and
  // received in one process; what it costs in CPU per message.
  async paced () {
    const c = api()
    const conn = await c.connect()
    let received = 0
    let done
    const finished = new Promise((resolve) => { done = resolve })
    await c.subscribe(conn, channel, {}, () => { if (++received === count) done() })
    const cpu = process.cpuUsage()
    const start = process.hrtime.bigint()
    await paced(PACED_RATE, () => { c.publishMany(conn, channel, 1, payload).catch(() => {}) })
    await finished
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    const cpuUs = cpuMicros(cpu)
    await c.close(conn)
    return { rate: count / seconds, cpu_s_per_100k: (cpuUs / 1e6) * (100000 / count) }
  },

  async rss () {
    const c = api()
    const conn = await c.connect()
    let received = 0
    let target = 0
    let done
    await c.subscribe(conn, channel, {}, () => { if (++received === target) done() })
    const through = async (n) => {
      target += n
      const finished = new Promise((resolve) => { done = resolve })
      const chunk = 10000
      for (let sent = 0; sent < n; sent += chunk) await c.publishMany(conn, channel, Math.min(chunk, n - sent), payload)
      await finished
    }
    // Warm up until the allocators reach their working set (about 200k
    // messages here), so the comparison shows growth, not start-up.
    await through(Math.min(200000, Math.ceil(count / 2)))
    global.gc?.()
    const before = process.memoryUsage().rss
    await through(count)
    global.gc?.()
    const after = process.memoryUsage().rss
    await c.close(conn)
    return { rss_before_mb: before / 2 ** 20, rss_after_mb: after / 2 ** 20, rss_growth_pct: 100 * (after - before) / before }
  },

  async subs () {
    const c = api()
    const conn = await c.connect()
    const prefix = `${channel}.s`
    if (client === 'jetstan') {
      // One stream captures all the channels, as a team would configure it.
      const { connect } = require('@nats-io/transport-node')
      const { jetstreamManager } = require('@nats-io/jetstream')
      const nc = await connect({ servers: url })
      await (await jetstreamManager(nc)).streams.add({ name: channel, subjects: [`${prefix}.>`] })
      await nc.close()
    } else {
      await conn.jsm.streams.add({ name: channel, subjects: [`${prefix}.>`] })
      conn.streams.add(`${prefix}.>`)
      for (let i = 0; i < count; i++) conn.streams.add(`${prefix}.${i}`)
    }
    const got = new Array(count).fill(null)
    let received = 0
    let done
    const finished = new Promise((resolve) => { done = resolve })
    const start = process.hrtime.bigint()
    const subs = []
    for (let i = 0; i < count; i++) {
      subs.push(subscribeFiltered(c, conn, `${prefix}.${i}`, (data) => {
        got[i] = data.toString()
        if (++received === count) done()
      }))
    }
    await Promise.all(subs)
    const createMs = Number(process.hrtime.bigint() - start) / 1e6
    for (let i = 0; i < count; i++) await c.publishOne(conn, `${prefix}.${i}`, `m${i}`)
    await finished
    const correct = got.every((value, i) => value === `m${i}`)
    await c.close(conn)
    return { create_ms: createMs, correct: correct ? 1 : 0 }
  }
}

function subscribeFiltered (c, conn, subject, onMessage) {
  if (client === 'jetstan') return c.subscribe(conn, subject, {}, onMessage)
  const { AckPolicy, DeliverPolicy } = require('@nats-io/jetstream')
  return (async () => {
    const name = `c${crypto.randomBytes(5).toString('hex')}`
    await conn.jsm.consumers.add(channel, {
      name, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.New, filter_subject: subject, inactive_threshold: 60e9
    })
    const consumer = await conn.js.consumers.get(channel, name)
    const messages = await consumer.consume({ max_messages: 100 })
    ;(async () => { for await (const m of messages) { onMessage(m.data); m.ack() } })()
  })()
}

workloads[workload]().then((result) => {
  process.stdout.write(JSON.stringify(result) + '\n')
  // nats.js keeps consumer iterators alive; end the worker explicitly once measured.
  if (client !== 'jetstan') setImmediate(() => process.exit(0))
}, (err) => {
  console.error(`${client} ${workload}: ${err.stack || err}`)
  process.exit(1)
})
