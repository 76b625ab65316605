'use strict'

const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { connect: natsConnect } = require('@nats-io/transport-node')
const { jetstreamManager } = require('@nats-io/jetstream')
const { useServer, once, unique, publish, collect } = require('./helpers')

const ctx = useServer()

async function withManager (fn) {
  const nc = await natsConnect({ servers: ctx.url })
  try {
    return await fn(await jetstreamManager(nc))
  } finally {
    await nc.close()
  }
}

describe('publish', () => {
  test('returns the guid that the callback receives, after the server stored it', async () => {
    const sc = await ctx.connect()
    const channel = unique('orders')
    let returned
    const acked = new Promise((resolve, reject) => {
      returned = sc.publish(channel, 'hello', (err, guid) => (err ? reject(err) : resolve(guid)))
    })
    assert.match(returned, /^[0-9A-Za-z]{22}$/)
    assert.equal(await acked, returned)
    const streamInfo = await withManager((jsm) => jsm.streams.info(`test-cluster_${channel}`))
    assert.equal(streamInfo.state.messages, 1)
    assert.deepEqual(streamInfo.config.subjects, [channel])
  })

  test('the guid is the Nats-Msg-Id: a retried publish with the same id is stored once', async () => {
    const sc = await ctx.connect()
    const channel = unique('dedup')
    const guid = await publish(sc, channel, 'once')
    const nc = await natsConnect({ servers: ctx.url })
    try {
      const { jetstream } = require('@nats-io/jetstream')
      const ack = await jetstream(nc).publish(channel, 'once', { msgID: guid })
      assert.equal(ack.duplicate, true)
    } finally {
      await nc.close()
    }
    const info = await withManager((jsm) => jsm.streams.info(`test-cluster_${channel}`))
    assert.equal(info.state.messages, 1)
  })

  test('publishing with nobody subscribed still gets an ack', async () => {
    const sc = await ctx.connect()
    assert.match(await publish(sc, unique('nobody'), 'x'), /^[0-9A-Za-z]{22}$/)
  })

  test('string, Buffer, Uint8Array and empty data arrive byte for byte', async () => {
    const sc = await ctx.connect()
    const channel = unique('data')
    const sub = sc.subscribe(channel)
    await once(sub, 'ready')
    const received = collect(sub, 5)
    await publish(sc, channel, 'héllo')
    await publish(sc, channel, Buffer.from([0, 1, 2, 255]))
    await publish(sc, channel, new Uint8Array([9, 8, 7]))
    await publish(sc, channel, null)
    await publish(sc, channel)
    const messages = await received
    assert.equal(messages[0].getData(), 'héllo')
    assert.deepEqual([...messages[1].getRawData()], [0, 1, 2, 255])
    assert.deepEqual([...messages[2].getRawData()], [9, 8, 7])
    assert.equal(messages[3].getData(), '')
    assert.equal(messages[4].getRawData().length, 0)
  })

  test('publishes made together, mixed and large, arrive byte for byte and in order', async () => {
    const sc = await ctx.connect({ stanEncoding: 'binary' })
    const channel = unique('mixed')
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    await once(sub, 'ready')
    // Past the pack's 1 MiB, and strings with multi-byte characters between.
    const sent = [
      Buffer.alloc(700 * 1024, 1), 'ünïcødé ✓', Buffer.alloc(700 * 1024, 2), new Uint8Array([3, 4]),
      Buffer.alloc(900 * 1024, 5), '', 'end'
    ]
    const received = collect(sub, sent.length, { timeoutMs: 20000 })
    await Promise.all(sent.map((data) => publish(sc, channel, data)))
    const messages = await received
    assert.deepEqual(messages.map((m) => Buffer.from(m.getRawData())), sent.map((data) => Buffer.from(data)))
  })

  test('uses an existing stream that captures the subject instead of creating one', async () => {
    const sc = await ctx.connect()
    const prefix = unique('shop')
    await withManager((jsm) => jsm.streams.add({ name: `SHOP_${prefix.slice(-12)}`, subjects: [`${prefix}.>`] }))
    await publish(sc, `${prefix}.new`, 'order')
    const info = await withManager((jsm) => jsm.streams.info(`SHOP_${prefix.slice(-12)}`))
    assert.equal(info.state.messages, 1)
    const names = await withManager(async (jsm) => {
      const list = []
      for await (const s of jsm.streams.list()) list.push(s.config.name)
      return list
    })
    assert.equal(names.filter((n) => n.includes(prefix.replace(/[^A-Za-z0-9_-]/g, '_'))).length, 0)
  })

  test('with a callback, publishes beyond maxPubAcksInflight wait for room and all succeed', async () => {
    const sc = await ctx.connect({ maxPubAcksInflight: 3 })
    const channel = unique('flow')
    const guids = await Promise.all(Array.from({ length: 10 }, (_, i) => publish(sc, channel, `m${i}`)))
    assert.equal(new Set(guids).size, 10)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    const messages = await collect(sub, 10)
    assert.deepEqual(messages.map((m) => m.getData()), guids.map((_, i) => `m${i}`))
  })

  test('without a callback, a publish beyond maxPubAcksInflight throws MAX_IN_FLIGHT', async () => {
    const sc = await ctx.connect({ maxPubAcksInflight: 3 })
    const channel = unique('flow')
    await publish(sc, channel, 'warm up the stream lookup')
    let thrown
    for (let i = 0; i < 10 && thrown === undefined; i++) {
      try { sc.publish(channel, Buffer.from('x')) } catch (err) { thrown = err }
    }
    assert.ok(thrown instanceof Error)
    assert.equal(thrown.code, 'MAX_IN_FLIGHT')
    assert.equal(thrown.message, 'stan: max in flight reached.')
  })
})

describe('bad publish input leaves the connection usable', () => {
  for (const [name, subject] of [
    ['an empty subject', ''],
    ['a wildcard subject', 'orders.*'],
    ['a full wildcard', 'orders.>'],
    ['a subject with spaces', 'bad subject'],
    ['a subject with an empty token', 'a..b']
  ]) {
    test(`${name} fails the callback with BAD_SUBJECT`, async () => {
      const sc = await ctx.connect()
      const err = await new Promise((resolve) => sc.publish(subject, 'x', resolve))
      assert.ok(err instanceof Error)
      assert.equal(err.code, 'BAD_SUBJECT')
      assert.match(await publish(sc, unique('after'), 'still works'), /^[0-9A-Za-z]{22}$/)
    })
  }

  test('a pack of publishes the native side refuses fails their callbacks on the next tick; later ones go through', async () => {
    const sc = await ctx.connect()
    const channel = unique('refused-pack')
    const packed = sc._native.publishPacked.bind(sc._native)
    sc._native.publishPacked = () => { throw Object.assign(new Error('stan: a packed publish is out of bounds'), { code: 'BAD_DATA' }) }
    let returned = false
    const errors = Promise.all([1, 2, 3].map((i) => new Promise((resolve) => {
      sc.publish(channel, `m${i}`, (err) => resolve({ err, afterReturn: returned }))
    })))
    returned = true
    const results = await Promise.race([errors, new Promise((resolve, reject) => {
      setTimeout(() => reject(new Error('the refused publishes got no callback within 10 s')), 10000).unref()
    })])
    assert.deepEqual(results.map(({ err }) => err?.code), ['BAD_DATA', 'BAD_DATA', 'BAD_DATA'])
    assert.ok(results.every(({ afterReturn }) => afterReturn))
    sc._native.publishPacked = packed
    assert.match(await publish(sc, channel, 'still works'), /^[0-9A-Za-z]{22}$/)
    assert.equal(sc.stats().publishesPending, 0)
  })

  test('a bad subject without a callback throws BAD_SUBJECT', async () => {
    const sc = await ctx.connect()
    assert.throws(() => sc.publish('a b', 'x'), { code: 'BAD_SUBJECT' })
  })

  for (const [name, data] of [['a number', 42], ['a plain object', { a: 1 }], ['an ArrayBuffer', new ArrayBuffer(4)], ['a boolean', true]]) {
    test(`${name} as data fails with BAD_DATA`, async () => {
      const sc = await ctx.connect()
      assert.throws(() => sc.publish(unique('d'), data), { code: 'BAD_DATA' })
      const err = await new Promise((resolve) => sc.publish(unique('d'), data, resolve))
      assert.equal(err.code, 'BAD_DATA')
      assert.match(await publish(sc, unique('after'), 'ok'), /^[0-9A-Za-z]{22}$/)
    })
  }

  test("a payload over the server's max_payload fails with MAX_PAYLOAD", async () => {
    const sc = await ctx.connect()
    const channel = unique('big')
    const tooBig = Buffer.alloc(1024 * 1024 + 1)
    const err = await new Promise((resolve) => sc.publish(channel, tooBig, resolve))
    assert.equal(err.code, 'MAX_PAYLOAD')
    assert.throws(() => sc.publish(channel, tooBig), { code: 'MAX_PAYLOAD' })
    assert.match(await publish(sc, channel, Buffer.alloc(1000)), /^[0-9A-Za-z]{22}$/)
  })

  test('after close, publish fails the callback and throws without one', async () => {
    const sc = await ctx.connect()
    const closed = once(sc, 'close')
    sc.close()
    const err = await new Promise((resolve) => sc.publish('x', 'y', resolve))
    assert.equal(err.code, 'CONNECTION_CLOSED')
    assert.equal(err.message, 'stan: Connection closed')
    assert.throws(() => sc.publish('x', 'y'), { code: 'CONNECTION_CLOSED' })
    await closed
  })

  test('close() fails pending publishes with CONNECTION_CLOSED synchronously', async () => {
    const sc = await ctx.connect()
    const results = []
    for (let i = 0; i < 20; i++) sc.publish(unique('p'), 'x', (err) => results.push(err ? err.code : 'ok'))
    const closed = once(sc, 'close')
    sc.close()
    assert.equal(results.length, 20)
    assert.ok(results.every((r) => r === 'ok' || r === 'CONNECTION_CLOSED'))
    await closed
  })
})

describe('fast-ingest batches (nats-server 2.14 and later)', () => {
  /** The server takes fast-ingest batches. */
  async function serverBatches () {
    const nc = await natsConnect({ servers: ctx.url })
    try {
      const [major, minor] = nc.info.version.split('.').map(Number)
      return major > 2 || (major === 2 && minor >= 14)
    } finally {
      await nc.close()
    }
  }

  /** Publishes `count` messages in one tick; resolves with the callbacks' error codes. */
  function burst (sc, channel, count, from = 0) {
    return Promise.all(Array.from({ length: count }, (_, i) => new Promise((resolve) => {
      sc.publish(channel, `m${from + i}`, (err) => resolve(err ? err.code : 'OK'))
    })))
  }

  test('publishes made together are acked as a batch: each callback once, each message stored once, in order', async () => {
    const batches = await serverBatches()
    const sc = await ctx.connect()
    const channel = unique('burst')
    await publish(sc, channel, 'm-first')
    const codes = await burst(sc, channel, 2000)
    assert.deepEqual([...new Set(codes)], ['OK'])
    const { msgsOut, msgsOutBatched } = sc.stats()
    assert.equal(msgsOut, 2001)
    if (batches) assert.ok(msgsOutBatched >= 1900, `${msgsOutBatched} of 2000 acked in batches`)
    const [stream] = await sc.streams.list().then((list) => list.filter((s) => s.config.subjects.includes(channel)))
    assert.equal(stream.config.allow_batched === true, batches)
    assert.equal(stream.state.messages, 2001)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    const messages = await collect(sub, 2001)
    assert.deepEqual(messages.map((m) => m.getData()), ['m-first', ...Array.from({ length: 2000 }, (_, i) => `m${i}`)])
  })

  test('a stream that takes no batches gets the same publishes one by one', async () => {
    const sc = await ctx.connect()
    const channel = unique('plain')
    await sc.streams.add({ name: channel.replace(/[^A-Za-z0-9_-]/g, '_'), subjects: [channel] })
    const first = await burst(sc, channel, 500)
    const second = await burst(sc, channel, 500, 500)
    assert.deepEqual([...new Set([...first, ...second])], ['OK'])
    assert.equal(sc.stats().msgsOutBatched, 0)
    const info = await withManager((jsm) => jsm.streams.info(channel.replace(/[^A-Za-z0-9_-]/g, '_')))
    assert.equal(info.state.messages, 1000)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    const messages = await collect(sub, 1000)
    assert.equal(new Set(messages.map((m) => m.getData())).size, 1000)
  })
})
