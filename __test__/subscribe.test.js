'use strict'

const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { connect: natsConnect } = require('@nats-io/transport-node')
const { jetstreamManager } = require('@nats-io/jetstream')
const { useServer, once, unique, publish, collect, stan } = require('./helpers')

const ctx = useServer()

async function consumerCount (stream) {
  const nc = await natsConnect({ servers: ctx.url })
  try {
    const jsm = await jetstreamManager(nc)
    return (await jsm.streams.info(stream)).state.consumer_count
  } finally {
    await nc.close()
  }
}

describe('subscribe', () => {
  test('deliver-all replays stored messages in order with 0.3.2 metadata', async () => {
    const sc = await ctx.connect()
    const channel = unique('replay')
    const before = Date.now()
    for (const word of ['first', 'second', 'third']) await publish(sc, channel, word)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    const ready = once(sub, 'ready')
    const messages = await collect(sub, 3)
    await ready
    assert.deepEqual(messages.map((m) => m.getData()), ['first', 'second', 'third'])
    assert.deepEqual(messages.map((m) => m.getSequence()), [1, 2, 3])
    for (const msg of messages) {
      assert.equal(msg.getSubject(), channel)
      assert.equal(msg.isRedelivered(), false)
      assert.equal(msg.getRedeliveryCount(), 0)
      assert.equal(msg.getTimestamp().getTime(), Math.floor(msg.getTimestampRaw() / 1e6))
      assert.ok(msg.getTimestamp().getTime() >= before - 1000 && msg.getTimestamp().getTime() <= Date.now() + 1000)
      assert.ok(Buffer.isBuffer(msg.getRawData()) && msg.getRawData().length > 0)
    }
  })

  test('new-only (the default) skips stored messages and gets what is published after ready', async () => {
    const sc = await ctx.connect()
    const channel = unique('new')
    for (const word of ['first', 'second', 'third']) await publish(sc, channel, word)
    const sub = sc.subscribe(channel)
    await once(sub, 'ready')
    const received = collect(sub, 1)
    await publish(sc, channel, 'fourth')
    const [msg] = await received
    assert.equal(msg.getData(), 'fourth')
    assert.equal(msg.getSequence(), 4)
  })

  test('no message is emitted before ready', async () => {
    const sc = await ctx.connect()
    const channel = unique('order')
    await publish(sc, channel, 'stored')
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    const seen = []
    sub.on('ready', () => seen.push('ready'))
    sub.on('message', () => seen.push('message'))
    await collect(sub, 1)
    assert.deepEqual(seen, ['ready', 'message'])
  })

  test('two subscriptions on two channels each get only their own messages', async () => {
    const sc = await ctx.connect()
    const [a, b] = [unique('a'), unique('b')]
    const subA = sc.subscribe(a)
    const subB = sc.subscribe(b)
    await Promise.all([once(subA, 'ready'), once(subB, 'ready')])
    const gotA = collect(subA, 1)
    const gotB = collect(subB, 1)
    await publish(sc, b, 'for b')
    await publish(sc, a, 'for a')
    assert.equal((await gotA)[0].getData(), 'for a')
    assert.equal((await gotB)[0].getData(), 'for b')
  })

  test("stanEncoding 'binary' makes getData() return a Buffer", async () => {
    const sc = await ctx.connect({ stanEncoding: 'binary' })
    const channel = unique('bin')
    const sub = sc.subscribe(channel)
    await once(sub, 'ready')
    const got = collect(sub, 1)
    await publish(sc, channel, Buffer.from([1, 2, 3]))
    const data = (await got)[0].getData()
    assert.ok(Buffer.isBuffer(data))
    assert.deepEqual([...data], [1, 2, 3])
  })

  test('a throwing handler is reported on error and the rest of the batch is delivered', async () => {
    const sc = await ctx.connect()
    const channel = unique('throw')
    for (let i = 0; i < 5; i++) await publish(sc, channel, `m${i}`)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    const errors = []
    sub.on('error', (err) => errors.push(err.message))
    const collected = collect(sub, 5, { rejectOnError: false })
    sub.on('message', (msg) => { if (msg.getData() === 'm1') throw new Error('handler failed') })
    const messages = await collected
    assert.deepEqual(messages.map((m) => m.getData()), ['m0', 'm1', 'm2', 'm3', 'm4'])
    assert.deepEqual(errors, ['handler failed'])
  })

  test('all ten SubscriptionOptions setters chain', async () => {
    const sc = await ctx.connect()
    const opts = sc.subscriptionOptions()
    const same = opts.setMaxInFlight(10).setAckWait(60000).setStartAt(stan.StartPosition.NEW_ONLY)
      .setStartAtSequence(22).setStartTime(new Date(Date.now() - 1000)).setStartAtTimeDelta(1000)
      .setStartWithLastReceived().setDeliverAllAvailable().setManualAckMode(true)
      .setDurableName('my-durable').setStartAt(102)
    assert.equal(same, opts)
    assert.equal(opts.maxInFlight, 10)
    assert.equal(opts.ackWait, 60000)
    assert.equal(opts.startPosition, 102)
    assert.equal(opts.startSequence, 22)
    assert.equal(opts.startTime, 1000 * 1e6)
    assert.equal(opts.manualAcks, true)
    assert.equal(opts.durableName, 'my-durable')
  })
})

describe('unsubscribe and close', () => {
  test('unsubscribe emits unsubscribed, is closed at once, and removes the consumer', async () => {
    const sc = await ctx.connect()
    const channel = unique('unsub')
    await publish(sc, channel, 'x')
    const sub = sc.subscribe(channel)
    await once(sub, 'ready')
    assert.equal(await consumerCount(`test-cluster_${channel}`), 1)
    const done = once(sub, 'unsubscribed')
    sub.unsubscribe()
    assert.equal(sub.isClosed(), true)
    await done
    assert.equal(await consumerCount(`test-cluster_${channel}`), 0)
  })

  test('Subscription.close() emits closed', async () => {
    const sc = await ctx.connect()
    const sub = sc.subscribe(unique('close'))
    await once(sub, 'ready')
    const closed = once(sub, 'closed')
    sub.close()
    await closed
  })

  test('a second unsubscribe emits BAD_SUBSCRIPTION', async () => {
    const sc = await ctx.connect()
    const sub = sc.subscribe(unique('twice'))
    await once(sub, 'ready')
    const done = once(sub, 'unsubscribed')
    sub.unsubscribe()
    await done
    const err = await new Promise((resolve) => { sub.once('error', resolve); sub.unsubscribe() })
    assert.equal(err.code, 'BAD_SUBSCRIPTION')
    assert.equal(err.message, 'stan: invalid subscription')
  })

  test('unsubscribing inside the first handler stops delivery after that message', async () => {
    const sc = await ctx.connect()
    const channel = unique('stop')
    for (let i = 0; i < 3; i++) await publish(sc, channel, `m${i}`)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    let count = 0
    sub.on('message', () => { count++; sub.unsubscribe() })
    await once(sub, 'unsubscribed')
    assert.equal(count, 1)
  })

  test('unsubscribe after the connection closed emits CONNECTION_CLOSED', async () => {
    const sc = await ctx.connect()
    const sub = sc.subscribe(unique('late'))
    await once(sub, 'ready')
    const closed = once(sc, 'close')
    sc.close()
    await closed
    const err = await new Promise((resolve) => { sub.once('error', resolve); sub.unsubscribe() })
    assert.equal(err.code, 'CONNECTION_CLOSED')
    assert.match(err.message, /Connection closed/)
  })
})

describe('bad subscribe input', () => {
  for (const [name, subject, code] of [
    ['a missing subject', undefined, 'BAD_SUBJECT'],
    ['an empty subject', '', 'BAD_SUBJECT'],
    ['a wildcard subject', 'foo.*', 'BAD_SUBJECT'],
    ['a subject with spaces', 'foo bar', 'BAD_SUBJECT']
  ]) {
    test(`${name} emits ${code} and the connection stays usable`, async () => {
      const sc = await ctx.connect()
      const sub = sc.subscribe(subject)
      const err = await once(sub, 'error')
      assert.equal(err.code, code)
      const good = sc.subscribe(unique('ok'))
      await once(good, 'ready')
    })
  }

  test("a missing subject keeps 0.3.2's message", async () => {
    const sc = await ctx.connect()
    const err = await once(sc.subscribe(undefined), 'error')
    assert.equal(err.message, 'stan: subject must be supplied')
  })

  for (const [name, configure] of [
    ['maxInFlight 0', (o) => o.setMaxInFlight(0)],
    ['a fractional maxInFlight', (o) => o.setMaxInFlight(1.5)],
    ['ackWait under a second', (o) => o.setAckWait(500)],
    ['an unknown start position', (o) => o.setStartAt(102)]
  ]) {
    test(`${name} emits BAD_OPTION`, async () => {
      const sc = await ctx.connect()
      const sub = sc.subscribe(unique('opt'), configure(sc.subscriptionOptions()))
      const err = await once(sub, 'error')
      assert.equal(err.code, 'BAD_OPTION')
    })
  }

  test('subscribe after close emits CONNECTION_CLOSED', async () => {
    const sc = await ctx.connect()
    const closed = once(sc, 'close')
    sc.close()
    await closed
    const err = await once(sc.subscribe('foo'), 'error')
    assert.equal(err.code, 'CONNECTION_CLOSED')
    assert.equal(err.message, 'stan: Connection closed')
  })
})
