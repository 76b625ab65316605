'use strict'

// Leaving STAN: `jetstan migrate` from the STAN test double (on a nats-server
// without JetStream) to a JetStream server. Services on STAN leave durables
// with messages they did not ack; after the migration the same services on
// the jetstream backend get exactly those, with the same sequences and
// timestamps. Channels have a first sequence above 1 and a gap; one run is
// killed halfway and resumed; --follow copies what is published meanwhile;
// a corrupted copy fails verification.

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { spawn, spawnSync } = require('node:child_process')
const path = require('node:path')
const readline = require('node:readline')
const { startServer, freePort } = require('../testing/nats-server')
const { StanDouble } = require('../testing/stan-double/server')
const { once, collect, quietPeriod, figure, closeQuietly, stan } = require('./helpers')

const CLUSTER = 'legacy'
const CLI = path.join(__dirname, '..', 'bin', 'jetstan.js')
const ORDERS = 'orders.created'
const BULK = 'bulk'
const BULK_COUNT = 20000

const ctx = { stanServer: null, jsServer: null, double: null, open: new Set() }
const acked = { durable: new Set(), group: new Set() }
const timestamps = new Map() // sequence on ORDERS -> STAN timestamp (ns)

async function connect (url, clientID, backend) {
  const sc = stan.connect(CLUSTER, clientID, { url, backend })
  ctx.open.add(sc)
  sc.once('close', () => ctx.open.delete(sc))
  await once(sc, 'connect')
  return sc
}

async function publishAll (sc, channel, payloads) {
  await Promise.all(payloads.map((p) => sc.publishAsync(channel, p)))
}

function options (sc, { durable, maxInFlight }) {
  return sc.subscriptionOptions().setDeliverAllAvailable().setDurableName(durable).setManualAckMode(true)
    .setMaxInFlight(maxInFlight).setAckWait(30000)
}

/** The CLI as a child process; resolves with its exit code and output. */
function cli (args, { onLine } = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => { stdout += d })
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      stderr += line + '\n'
      onLine?.(line, child)
    })
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
}

function withDeadline (promise, ms, what) {
  let timer
  return Promise.race([promise, new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(what)), ms) })])
    .finally(() => clearTimeout(timer))
}

/** Acks and records what `subs` deliver until `count` arrived (bounded), then 500 ms more to see nothing extra comes. */
async function receive (subs, count) {
  const got = []
  let enough
  const arrived = new Promise((resolve) => { enough = resolve })
  for (const sub of subs) {
    sub.on('message', (msg) => {
      got.push(msg)
      msg.ack()
      if (got.length === count) enough()
    })
  }
  await Promise.all(subs.map((sub) => once(sub, 'ready')))
  await withDeadline(arrived, 10000, `${got.length} of ${count} messages arrived`).catch(() => {})
  await quietPeriod(500)
  return got
}

const from = () => ['--from', ctx.stanServer.url, '--cluster', CLUSTER, '--monitor', ctx.double.monitorUrl, '--to', ctx.jsServer.url]

before(async () => {
  ctx.stanServer = await startServer({ jetstream: false })
  ctx.jsServer = await startServer()
  ctx.double = await new StanDouble({ url: ctx.stanServer.url, clusterID: CLUSTER, monitor: true }).start()

  // 30 orders; the first 4 expire (first sequence 5), 12 is lost (a gap).
  const pub = await connect(ctx.stanServer.url, 'legacy-publisher', 'stan')
  await publishAll(pub, ORDERS, Array.from({ length: 30 }, (_, i) => `order-${i + 1}`))
  await publishAll(pub, BULK, Array.from({ length: BULK_COUNT }, (_, i) => `bulk-${i + 1}-${'x'.repeat(i % 100)}`))
  ctx.double.expire(ORDERS, 4)
  ctx.double.removeMessage(ORDERS, 12)

  const reader = await connect(ctx.stanServer.url, 'legacy-reader', 'stan')
  const all = await collect(reader.subscribe(ORDERS, reader.subscriptionOptions().setDeliverAllAvailable()), 25)
  for (const msg of all) timestamps.set(msg.getSequence(), msg.getTimestampRaw())

  // A durable that acks everything but 6 and 8, and stops after 20.
  const svc = await connect(ctx.stanServer.url, 'orders-svc', 'stan')
  const sub = svc.subscribe(ORDERS, options(svc, { durable: 'orders-dur', maxInFlight: 5 }))
  await new Promise((resolve) => {
    sub.on('message', (msg) => {
      const seq = msg.getSequence()
      if (seq <= 20 && seq !== 6 && seq !== 8) {
        msg.ack()
        acked.durable.add(seq)
      }
      if (seq === 20) resolve()
    })
  })
  await closeQuietly(svc)

  // A durable queue group of two that acks all but multiples of 7 among the first 14 it gets.
  const members = await Promise.all(['workers-1', 'workers-2'].map((id) => connect(ctx.stanServer.url, id, 'stan')))
  let seen = 0
  await new Promise((resolve) => {
    for (const m of members) {
      m.subscribe(ORDERS, 'workers', options(m, { durable: 'wq', maxInFlight: 3 })).on('message', (msg) => {
        const seq = msg.getSequence()
        // Nothing is acked once the members are being closed: such an ack may not reach the server.
        if (++seen > 14) return
        if (seq <= 25 && seq % 7 !== 0) {
          msg.ack()
          acked.group.add(seq)
        }
        if (seen === 14) resolve()
      })
    }
  })
  await Promise.all(members.map(closeQuietly))
})

after(async () => {
  await Promise.all([...ctx.open].map(closeQuietly))
  await ctx.double?.stop()
  await Promise.all([ctx.stanServer?.stop(), ctx.jsServer?.stop()])
})

const ordersOnStan = () => [...timestamps.keys()].sort((a, b) => a - b)

test('bad input: unknown cluster, unreachable monitor, source or target, a conflicting target stream, nothing named', async () => {
  const unknown = await cli(['migrate', '--from', ctx.stanServer.url, '--cluster', 'nope', '--monitor', ctx.double.monitorUrl, '--to', ctx.jsServer.url, '--all'])
  assert.equal(unknown.code, 1)
  assert.match(unknown.stderr, /UNKNOWN_CLUSTER: .*serves cluster 'legacy', not 'nope'/)

  const closed = await freePort()
  const unreachable = await cli(['migrate', '--from', `nats://127.0.0.1:${closed}`, '--cluster', CLUSTER, '--monitor', `http://127.0.0.1:${closed}`, '--to', ctx.jsServer.url, '--all'])
  assert.equal(unreachable.code, 1)
  assert.match(unreachable.stderr, new RegExp(`MONITOR_UNREACHABLE: jetstan migrate: cannot reach the STAN monitoring endpoint http://127.0.0.1:${closed}/streaming/serverz`))

  const noSource = await cli(['migrate', '--from', `nats://127.0.0.1:${closed}`, '--cluster', CLUSTER, '--monitor', ctx.double.monitorUrl, '--to', ctx.jsServer.url, '--all'])
  assert.equal(noSource.code, 1)
  assert.match(noSource.stderr, new RegExp(`CONN_ERR: jetstan migrate: cannot connect to the source \\(nats://127.0.0.1:${closed}\\)`))
  const noTarget = await cli(['migrate', '--from', ctx.stanServer.url, '--cluster', CLUSTER, '--monitor', ctx.double.monitorUrl, '--to', `nats://127.0.0.1:${closed}`, '--all'])
  assert.equal(noTarget.code, 1)
  assert.match(noTarget.stderr, new RegExp(`CONN_ERR: jetstan migrate: cannot connect to the target \\(nats://127.0.0.1:${closed}\\)`))

  const usage = await cli(['migrate', ...from()])
  assert.equal(usage.code, 2)

  const pub = await connect(ctx.stanServer.url, 'conflict-publisher', 'stan')
  await pub.publishAsync('conflict.channel', 'one')
  const js = await connect(ctx.jsServer.url, 'conflict-admin', 'jetstream')
  await js.streams.add({ name: 'SOMEONE_ELSES', subjects: ['conflict.>'] })
  const conflict = await cli(['migrate', ...from(), '--channels', 'conflict.channel'])
  assert.equal(conflict.code, 1)
  assert.match(conflict.stderr, /TARGET_CONFLICT: jetstan migrate: cannot create stream '.*' for channel 'conflict.channel'/)
  await js.streams.delete('SOMEONE_ELSES')
})

test('a dry run changes nothing and says what it would do', async () => {
  const out = await cli(['migrate', ...from(), '--channels', ORDERS, '--dry-run', '--json'])
  assert.equal(out.code, 0, out.stderr)
  const report = JSON.parse(out.stdout)
  assert.equal(report.channels[0].copied, 26) // 5..30, of which 12 is a gap
  assert.deepEqual(report.durables.map((d) => [d.durable, d.status]).sort(), [['orders-dur', 'would carry'], ['wq', 'would carry']])
  const js = await connect(ctx.jsServer.url, 'dry-check', 'jetstream')
  await assert.rejects(js.streams.info(report.channels[0].stream), { code: 'STREAM_NOT_FOUND' })
})

test('a run killed halfway, then resumed with --follow: everything once, verified, durables carried', async () => {
  // The first run is killed once it has copied a few hundred of the bulk channel.
  const killed = await cli(['migrate', ...from(), '--channels', `${BULK},${ORDERS}`], {
    onLine: (line, child) => {
      if (/migrate: bulk: copied/.test(line)) child.kill('SIGKILL')
    }
  })
  assert.equal(killed.signal, 'SIGKILL', killed.stderr)
  const js = await connect(ctx.jsServer.url, 'migrate-check', 'jetstream')
  const bulkStream = stan.jetstreamNames(CLUSTER, '', BULK).stream
  const partial = (await js.streams.info(bulkStream)).state
  assert.ok(partial.last_seq > 0 && partial.last_seq < BULK_COUNT, `killed run stored ${partial.last_seq}`)

  // Resumed with follow; messages published meanwhile are copied too.
  const abort = new AbortController()
  const pub = await connect(ctx.stanServer.url, 'late-publisher', 'stan')
  let lateCopied
  const allLateCopied = new Promise((resolve) => { lateCopied = resolve })
  const running = stan.migrate({
    from: ctx.stanServer.url, to: ctx.jsServer.url, cluster: CLUSTER, monitor: ctx.double.monitorUrl,
    channels: [BULK, ORDERS], follow: true, signal: abort.signal, pollMs: 200,
    onProgress: (event) => { if (event.type === 'copy' && event.channel === ORDERS && event.sequence === 40) lateCopied() }
  })
  for (const payload of Array.from({ length: 10 }, (_, i) => `late-${i + 1}`)) await pub.publishAsync(ORDERS, payload)
  await withDeadline(allLateCopied, 30000, 'the 10 messages published during the run were not copied')
  abort.abort()
  const report = await running
  figure('migrate resumed run', { copied: report.copied, messagesPerSecond: report.messagesPerSecond })

  assert.equal(report.ok, true, JSON.stringify(report, null, 2))
  const bulk = report.channels.find((c) => c.channel === BULK)
  assert.equal(bulk.resumedAt, partial.last_seq + 1)
  assert.equal(bulk.verified.source.count, BULK_COUNT)
  assert.equal(bulk.verified.target.sha256, bulk.verified.source.sha256)
  const orders = report.channels.find((c) => c.channel === ORDERS)
  assert.equal(orders.verified.source.count, 35) // 5..40 without 12
  assert.equal(orders.verified.match, true)
  const bulkState = (await js.streams.info(bulkStream)).state
  assert.deepEqual([bulkState.messages, bulkState.first_seq, bulkState.last_seq], [BULK_COUNT, 1, BULK_COUNT])
  const ordersState = (await js.streams.info(stan.jetstreamNames(CLUSTER, '', ORDERS).stream)).state
  assert.deepEqual([ordersState.messages, ordersState.first_seq, ordersState.last_seq, ordersState.num_deleted], [35, 5, 40, 1])
  assert.deepEqual(report.durables.map((d) => [d.durable, d.status]).sort(), [['orders-dur', 'carried'], ['wq', 'carried']])
  const durable = report.durables.find((d) => d.durable === 'orders-dur')
  assert.equal(durable.startSeq, 6)
  assert.deepEqual(durable.unacked.slice(0, 2), [6, 8])
})

test('the same service on the jetstream backend gets exactly what it had not acked, with the same sequences and times', async () => {
  const expected = ordersOnStan().filter((seq) => !acked.durable.has(seq)).concat(Array.from({ length: 10 }, (_, i) => 31 + i))
  const svc = await connect(ctx.jsServer.url, 'orders-svc', 'jetstream')
  const got = await receive([svc.subscribe(ORDERS, options(svc, { durable: 'orders-dur', maxInFlight: 5 }))], expected.length)
  assert.deepEqual(got.map((m) => m.getSequence()), expected)
  for (const msg of got) {
    if (timestamps.has(msg.getSequence())) assert.equal(msg.getTimestampRaw(), timestamps.get(msg.getSequence()), `time of ${msg.getSequence()}`)
    assert.equal(msg.getHeaders?.()['Stan-Timestamp'], undefined)
  }
  figure('durable carried over', { unackedOnStan: expected.length - 10, received: got.length })
})

test('the durable queue group continues on the jetstream backend with what the group had not acked', async () => {
  const expected = ordersOnStan().filter((seq) => !acked.group.has(seq)).concat(Array.from({ length: 10 }, (_, i) => 31 + i))
  const members = await Promise.all(['workers-1', 'workers-2'].map((id) => connect(ctx.jsServer.url, id, 'jetstream')))
  const got = (await receive(members.map((m) => m.subscribe(ORDERS, 'workers', options(m, { durable: 'wq', maxInFlight: 3 }))), expected.length))
    .map((msg) => msg.getSequence())
  assert.deepEqual([...got].sort((a, b) => a - b), expected)
})

test('--follow carries a durable once its service stops on STAN, and the service continues on JetStream', async () => {
  const channel = 'flip.channel'
  const pub = await connect(ctx.stanServer.url, 'flip-publisher', 'stan')
  await publishAll(pub, channel, Array.from({ length: 10 }, (_, i) => `f-${i + 1}`))
  // The service runs on STAN and acks all but 3 and 13.
  const svc = await connect(ctx.stanServer.url, 'flip-svc', 'stan')
  let seen = 0
  let reached
  const arrivedAt = new Map()
  svc.subscribe(channel, options(svc, { durable: 'flip-dur', maxInFlight: 10 })).on('message', (msg) => {
    if (msg.getSequence() !== 3 && msg.getSequence() !== 13) msg.ack()
    seen++
    arrivedAt.get(seen)?.()
  })
  const received = (n) => seen >= n ? Promise.resolve() : new Promise((resolve) => arrivedAt.set(n, resolve))
  await withDeadline(received(10), 10000, 'the STAN service did not get the first 10')

  const abort = new AbortController()
  const statuses = new Map()
  const status = (wanted) => new Promise((resolve) => statuses.set(wanted, resolve))
  const online = status('online')
  const carried = status('carried')
  const running = stan.migrate({
    from: ctx.stanServer.url, to: ctx.jsServer.url, cluster: CLUSTER, monitor: ctx.double.monitorUrl,
    channels: [channel], follow: true, signal: abort.signal, pollMs: 200,
    onProgress: (event) => { if (event.type === 'durable' && event.durable === 'flip-dur') statuses.get(event.status)?.(event) }
  })
  await withDeadline(online, 10000, 'migrate did not see the durable online')
  await publishAll(pub, channel, Array.from({ length: 5 }, (_, i) => `f-${i + 11}`))
  await withDeadline(received(15), 10000, 'the STAN service did not get 11..15')
  await closeQuietly(svc) // the service stops on STAN ...
  const event = await withDeadline(carried, 15000, 'migrate did not carry the durable after its service stopped')
  assert.deepEqual([event.startSeq, event.unacked], [3, [3, 13]])
  await publishAll(pub, channel, ['f-16', 'f-17']) // ... its publisher is still on STAN
  // ... and starts on JetStream.
  const js = await connect(ctx.jsServer.url, 'flip-svc', 'jetstream')
  const got = await receive([js.subscribe(channel, options(js, { durable: 'flip-dur', maxInFlight: 10 }))], 4)
  assert.deepEqual(got.map((m) => [m.getSequence(), m.getData(), m.isRedelivered()]),
    [[3, 'f-3', true], [13, 'f-13', true], [16, 'f-16', false], [17, 'f-17', false]])
  abort.abort()
  const report = await running
  assert.equal(report.ok, true, JSON.stringify(report, null, 2))
  assert.equal(report.channels[0].verified.source.count, 17)
})

test('messages that expire at the STAN side during the copy are kept as a gap and reported; the rest verifies', async () => {
  const pub = await connect(ctx.stanServer.url, 'expiring-publisher', 'stan')
  await publishAll(pub, 'expiring', Array.from({ length: 100 }, (_, i) => `e-${i + 1}`))
  const report = await stan.migrate({
    from: ctx.stanServer.url, to: ctx.jsServer.url, cluster: CLUSTER, monitor: ctx.double.monitorUrl, channels: ['expiring'],
    // The channel's limits drop its oldest 40 after the migration listed it.
    onProgress: (event) => { if (event.type === 'channel') ctx.double.expire('expiring', 40) }
  })
  assert.equal(report.ok, true, JSON.stringify(report, null, 2))
  const [row] = report.channels
  assert.deepEqual([row.copied, row.gaps, row.expired], [60, 40, 40])
  assert.deepEqual([row.verified.first, row.verified.last, row.verified.source.count], [41, 100, 60])
})

test('verification catches a corrupted copy', async () => {
  const js = await connect(ctx.jsServer.url, 'corrupter', 'jetstream')
  await js.streams.deleteMessage(stan.jetstreamNames(CLUSTER, '', BULK).stream, 1234)
  const out = await cli(['migrate', ...from(), '--channels', BULK])
  assert.equal(out.code, 1, out.stdout + out.stderr)
  assert.match(out.stdout, /bulk .* MISMATCH/)
  const json = await cli(['migrate', ...from(), '--channels', BULK, '--json'])
  const report = JSON.parse(json.stdout)
  assert.equal(report.ok, false)
  assert.equal(report.channels[0].verified.source.count, BULK_COUNT)
  assert.equal(report.channels[0].verified.target.count, BULK_COUNT - 1)
  assert.equal(spawnSync(process.execPath, [CLI, 'migrate', ...from(), '--channels', BULK, '--json']).status, 1)
})
