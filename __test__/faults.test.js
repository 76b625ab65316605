'use strict'

// Faults, on both backends where they apply: a TCP proxy between client and
// server that cuts or black-holes the connection, operators deleting what
// the client relies on, throwing handlers, and hostile arguments. Each test
// counts what was published, acked, received and duplicated, and asserts on
// the counts; timings are printed as JSON lines, never asserted.

const { describe, test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { startProxy } = require('../testing/proxy')
const { once, unique, publish, useBothBackends, figure, stan } = require('./helpers')

const CLUSTER = 'faults-cluster'
const ctx = useBothBackends(CLUSTER)
const connect = ctx.connect

function start (backend, opts = {}, clientID = unique(backend)) {
  return ctx.track(stan.connect(CLUSTER, clientID, { url: ctx.ctx.server.url, backend, ...opts }))
}

/** Runs a scenario in a child process of its own; resolves with its exit code and last JSON line. */
async function runFixture (name, args, timeoutMs) {
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', name), ...args],
    { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (chunk) => { out += chunk })
  const code = await once(child, 'exit', { timeoutMs, rejectOnError: false })
  return { code, result: JSON.parse(out.trim().split('\n').pop()) }
}

/** Resolves once `count` callbacks ran (or rejects after `timeoutMs`), with what they said. */
function publishMany (sc, channel, count, { timeoutMs = 20000 } = {}) {
  return new Promise((resolve, reject) => {
    const codes = new Map()
    let done = 0
    const timer = setTimeout(() => reject(new Error(`${done} of ${count} publish callbacks after ${timeoutMs} ms`)), timeoutMs)
    for (let i = 0; i < count; i++) {
      sc.publish(channel, `m${i}`, (err) => {
        const code = err ? err.code : 'OK'
        codes.set(code, (codes.get(code) ?? 0) + 1)
        if (++done === count) {
          clearTimeout(timer)
          resolve(Object.fromEntries(codes))
        }
      })
    }
  })
}

for (const backend of ['jetstream', 'stan']) {
  describe(`${backend}: the server goes away`, () => {
    test('every publish gets its callback within ackTimeout while the server is unreachable', async () => {
      const proxy = await startProxy(ctx.server.port)
      try {
        const sc = await connect(backend, { url: proxy.url, ackTimeout: 1000, stanPingInterval: 60000 })
        await publish(sc, unique('down'), 'warm-up')
        proxy.blackhole()
        const startedAt = Date.now()
        const codes = await publishMany(sc, unique('down'), 5000)
        figure('callbacks-while-down', { backend, publishes: 5000, ms_to_last_callback: Date.now() - startedAt, codes })
        assert.deepEqual(codes, { PUB_ACK_TIMEOUT: 5000 })
        proxy.restore()
        await publish(sc, unique('down'), 'after')
      } finally {
        await proxy.stop()
      }
    })

    test('close() ends with a close event while the server is unreachable, holding unacked messages', async () => {
      const proxy = await startProxy(ctx.server.port)
      try {
        const sc = await connect(backend, { url: proxy.url, stanPingInterval: 60000 })
        const channel = unique('held')
        const opts = sc.subscriptionOptions().setDurableName('held').setManualAckMode(true)
          .setMaxInFlight(5000).setDeliverAllAvailable()
        const sub = sc.subscribe(channel, opts)
        await once(sub, 'ready')
        let received = 0
        const all = new Promise((resolve) => sub.on('message', () => { if (++received === 2000) resolve() }))
        const codes = await publishMany(sc, channel, 2000)
        assert.deepEqual(codes, { OK: 2000 })
        await all
        proxy.blackhole()
        const closed = once(sc, 'close', { rejectOnError: false, timeoutMs: 15000 })
        const startedAt = Date.now()
        sc.close()
        await closed
        figure('close-while-down', { backend, unacked: received, ms_to_close: Date.now() - startedAt })
      } finally {
        await proxy.stop()
      }
    })
  })

  describe(`${backend}: leaving while the server is unreachable`, () => {
    test('subscription close() and drain() end, with acks and unacked messages pending', async () => {
      const proxy = await startProxy(ctx.server.port)
      try {
        const sc = await connect(backend, { url: proxy.url, stanPingInterval: 60000 })
        const channel = unique('leave')
        const held = sc.subscribe(channel, sc.subscriptionOptions().setManualAckMode(true).setDeliverAllAvailable())
        const plain = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
        await Promise.all([once(held, 'ready'), once(plain, 'ready')])
        const messages = []
        const all = new Promise((resolve) => held.on('message', (msg) => { messages.push(msg); if (messages.length === 200) resolve() }))
        assert.deepEqual(await publishMany(sc, channel, 200), { OK: 200 })
        await all
        proxy.blackhole()
        for (const msg of messages) msg.ack()
        let startedAt = Date.now()
        const left = new Promise((resolve) => { held.once('closed', resolve); held.once('error', resolve) })
        held.close()
        await Promise.race([left, new Promise((resolve, reject) => setTimeout(() => reject(new Error('close() of a subscription did not end')), 20000).unref())])
        const subscriptionMs = Date.now() - startedAt
        startedAt = Date.now()
        const drained = sc.drain()
        await Promise.race([drained, new Promise((resolve, reject) => setTimeout(() => reject(new Error('drain() did not end')), 30000).unref())])
        figure('leave-while-down', { backend, subscription_close_ms: subscriptionMs, drain_ms: Date.now() - startedAt })
        assert.equal(sc.isClosed(), true)
      } finally {
        await proxy.stop()
      }
    })
  })

  describe(`${backend}: hostile arguments`, () => {
    test('a 70,000-letter client or cluster ID fails the connect once with a code, no reconnect storm', async () => {
      for (const [cluster, client] of [[CLUSTER, 'a'.repeat(70000)], ['c'.repeat(70000), 'client']]) {
        const sc = stan.connect(cluster, client, { url: ctx.server.url, backend })
        ctx.track(sc)
        let errors = 0
        sc.on('error', () => { errors++ })
        const closed = once(sc, 'close', { rejectOnError: false })
        const err = await once(sc, 'error', { timeoutMs: 5000 })
        await closed
        assert.ok(['BAD_OPTION', 'BAD_CLIENT_ID'].includes(err.code), err.code)
        assert.equal(errors, 1)
      }
      const sc = await connect(backend)
      await assert.rejects(sc.publishAsync('x'.repeat(70000), 'data'), { code: 'BAD_SUBJECT' })
      await publish(sc, unique('after'), 'still fine')
    })

    test('10,000 seeded calls with hostile arguments: no crash, every error has a code, still publishing', async () => {
      const { code, result } = await runFixture('fuzz.js', [ctx.server.url, backend, CLUSTER, '10000', '20261129'], 120000)
      figure('fuzz', { backend, ...result })
      assert.equal(code, 0)
      assert.equal(result.uncoded, 0, `errors without a code: ${JSON.stringify(result.examples)}`)
      assert.equal(result.stillPublishing, true)
      assert.equal(result.closed, true)
    })
  })

  describe(`${backend}: throwing handlers`, () => {
    test('a throwing ready handler costs no publish callback and drain() still ends', async () => {
      const { code, result } = await runFixture('throwing-handlers.js', [ctx.server.url, backend, CLUSTER], 60000)
      figure('throwing-handlers', { backend, ...result })
      assert.equal(code, 0)
      assert.equal(result.callbacks, 20000)
      assert.equal(result.drained, true)
      assert.ok(result.reported >= 1, 'the throw is reported as an uncaught exception')
    })
  })
}

describe('jetstream: operators and failed subscribes', () => {
  test('a subscribe that failed leaves no handle behind: the durable can be taken once the stream exists', async () => {
    const sc = await connect('jetstream', { autoCreateStreams: false })
    const channel = unique('late')
    const opts = () => sc.subscriptionOptions().setDurableName('late').setDeliverAllAvailable()
    const first = sc.subscribe(channel, opts())
    const err = await once(first, 'error')
    assert.equal(err.code, 'STREAM_NOT_FOUND')
    await sc.streams.add({ name: unique('late-stream').replace(/[^A-Za-z0-9_-]/g, '_'), subjects: [channel] })
    const second = sc.subscribe(channel, opts())
    await once(second, 'ready')
  })

  test('a consumer an operator deleted comes back from its ack floor: unacked messages are delivered again', async () => {
    const sc = await connect('jetstream')
    const channel = unique('floor')
    const opts = sc.subscriptionOptions().setDurableName('floor').setManualAckMode(true).setDeliverAllAvailable()
    const sub = sc.subscribe(channel, opts)
    await once(sub, 'ready')
    const seen = new Map()
    let firstRound
    const gotTen = new Promise((resolve) => { firstRound = resolve })
    let later
    const gotAgain = new Promise((resolve) => { later = resolve })
    const within = (promise, ms, what) => Promise.race([promise, new Promise((resolve, reject) =>
      setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms).unref())])
    sub.on('message', (msg) => {
      const seq = msg.getSequence()
      seen.set(seq, (seen.get(seq) ?? 0) + 1)
      if (seq <= 3) msg.ack()
      if (seen.size === 10 && [...seen.values()].every((n) => n === 1)) firstRound()
      if ([4, 5, 6, 7, 8, 9, 10].every((s) => seen.get(s) >= 2)) later()
    })
    for (let i = 1; i <= 10; i++) await publish(sc, channel, `m${i}`)
    await within(gotTen, 10000, 'the first ten deliveries')
    const [stream] = (await sc.streams.list()).filter((s) => s.config.subjects.includes(channel))
    const [consumer] = await sc.consumers.list(stream.config.name)
    await sc.consumers.delete(stream.config.name, consumer.name)
    await within(gotAgain, 15000, 'the unacked messages again')
    const redelivered = [4, 5, 6, 7, 8, 9, 10].filter((s) => seen.get(s) >= 2).length
    figure('ack-floor', { unacked: 7, redelivered, acked_redelivered: [1, 2, 3].filter((s) => seen.get(s) >= 2).length })
    assert.equal(redelivered, 7)
  })

  test('a channel whose stream an operator deleted is resolved again: recreated, or STREAM_NOT_FOUND', async () => {
    const sc = await connect('jetstream')
    const channel = unique('gone')
    await publish(sc, channel, 'first')
    const [stream] = (await sc.streams.list()).filter((s) => s.config.subjects.includes(channel))
    await sc.streams.delete(stream.config.name)
    await publish(sc, channel, 'second')
    const info = await sc.streams.info(stream.config.name)
    assert.equal(info.state.messages, 1)

    const strict = await connect('jetstream', { autoCreateStreams: false })
    const other = unique('gone-strict')
    await sc.streams.add({ name: unique('strict').replace(/[^A-Za-z0-9_-]/g, '_'), subjects: [other] })
    await publish(strict, other, 'first')
    const [strictStream] = (await sc.streams.list()).filter((s) => s.config.subjects.includes(other))
    await sc.streams.delete(strictStream.config.name)
    await assert.rejects(strict.publishAsync(other, 'second'), { code: 'STREAM_NOT_FOUND' })
  })
})

describe('jetstream: a 10 s network cut while publishing and consuming', () => {
  test('loses no acked message', async () => {
    const proxy = await startProxy(ctx.server.port)
    try {
      const sc = await connect('jetstream', { url: proxy.url, reconnectTimeWait: 250 })
      const channel = unique('cut')
      const sub = sc.subscribe(channel, sc.subscriptionOptions().setDurableName('cut').setDeliverAllAvailable())
      await once(sub, 'ready')
      const received = new Map()
      sub.on('message', (msg) => {
        const data = msg.getData()
        received.set(data, (received.get(data) ?? 0) + 1)
      })
      const acked = new Set()
      const failed = new Map()
      let published = 0
      const settled = []
      const timer = setInterval(() => {
        const data = `m${published++}`
        settled.push(new Promise((resolve) => sc.publish(channel, data, (err) => {
          if (err) failed.set(err.code, (failed.get(err.code) ?? 0) + 1)
          else acked.add(data)
          resolve()
        })))
      }, 5)
      await new Promise((resolve) => setTimeout(resolve, 2000))
      proxy.cut()
      await new Promise((resolve) => setTimeout(resolve, 10000))
      proxy.restore()
      await new Promise((resolve) => setTimeout(resolve, 2000))
      clearInterval(timer)
      await Promise.all(settled)
      const deadline = Date.now() + 20000
      while ([...acked].some((d) => !received.has(d)) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      const lost = [...acked].filter((d) => !received.has(d)).length
      const duplicated = [...received.values()].filter((n) => n > 1).length
      figure('network-cut-10s', { published, acked: acked.size, failed: Object.fromEntries(failed), received: received.size, lost, duplicated })
      assert.equal(lost, 0)
      assert.equal(acked.size + [...failed.values()].reduce((a, b) => a + b, 0), published)
      assert.equal(failed.size, 0, `failed publishes: ${JSON.stringify(Object.fromEntries(failed))}`)
    } finally {
      await proxy.stop()
    }
  })
})

describe('jetstream: a connection cut in the middle of fast-ingest batches', () => {
  // With a window of 200 most publishes are held in the session task, not
  // on the wire, when the cut comes.
  for (const window of [undefined, 200]) {
    test(`stores every publish once: what the cut left unacked is sent again, alone${window ? `; maxPubAcksInflight ${window}` : ''}`, async () => {
      const proxy = await startProxy(ctx.server.port)
      try {
        const sc = await connect('jetstream', { url: proxy.url, reconnectTimeWait: 100, ...(window && { maxPubAcksInflight: window }) })
        const channel = unique('batch-cut')
        const acked = new Set()
        const failed = new Map()
        let published = 0
        const settled = []
        // Bursts of 300 every 10 ms: each goes out as a batch (or two).
        const burst = () => {
          for (let i = 0; i < 300; i++) {
            const data = `m${published++}`
            settled.push(new Promise((resolve) => sc.publish(channel, data, (err) => {
              if (err) failed.set(err.code, (failed.get(err.code) ?? 0) + 1)
              else acked.add(data)
              resolve()
            })))
          }
        }
        const timer = setInterval(burst, 10)
        await new Promise((resolve) => setTimeout(resolve, 500))
        proxy.cut()
        await once(sc, 'reconnecting', { timeoutMs: 5000 })
        proxy.restore()
        await once(sc, 'reconnect', { timeoutMs: 10000 })
        await new Promise((resolve) => setTimeout(resolve, 500))
        clearInterval(timer)
        await Promise.all(settled)
        const { msgsOutBatched } = sc.stats()
        const reader = await connect('jetstream')
        const stream = (await reader.streams.list()).find((s) => s.config.subjects.includes(channel))
        const stored = new Map()
        const sub = reader.subscribe(channel, reader.subscriptionOptions().setDeliverAllAvailable())
        sub.on('message', (msg) => stored.set(msg.getData(), (stored.get(msg.getData()) ?? 0) + 1))
        const deadline = Date.now() + 20000
        while ([...stored.values()].reduce((a, b) => a + b, 0) < stream.state.messages && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 50))
        }
        const duplicated = [...stored.values()].filter((n) => n > 1).length
        const lost = [...acked].filter((d) => !stored.has(d)).length
        figure('batch-cut', { window, published, acked: acked.size, failed: Object.fromEntries(failed), stored: stream.state.messages, batched: msgsOutBatched, lost, duplicated })
        assert.equal(failed.size, 0, `failed publishes: ${JSON.stringify(Object.fromEntries(failed))}`)
        assert.equal(acked.size, published)
        assert.equal(stream.state.messages, published)
        assert.equal(lost, 0)
        assert.equal(duplicated, 0)
        if (stream.config.allow_batched) assert.ok(msgsOutBatched > 0)
      } finally {
        await proxy.stop()
      }
    })
  }
})
