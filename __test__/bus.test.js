'use strict'

const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')
const readline = require('node:readline')
const { useServer, unique, publish, quietPeriod, stan, CLUSTER } = require('./helpers')
const { Listener, Publisher, createBus, taggedJsonCodec, connectAsync } = stan

const ctx = useServer()

/** A tiny Standard Schema v1 validator, as zod or valibot would provide. */
const ticketSchema = {
  '~standard': {
    version: 1,
    vendor: 'jetstan-test',
    validate (value) {
      const issues = []
      if (typeof value?.id !== 'string') issues.push({ message: 'id must be a string', path: ['id'] })
      if (typeof value?.price !== 'number') issues.push({ message: 'price must be a number', path: ['price'] })
      return issues.length ? { issues } : { value }
    }
  }
}

function listenerClass (subject, group, onMessage, extra = {}) {
  return class extends Listener {
    constructor (client) {
      super(client)
      this.subject = subject
      this.queueGroupName = group
      Object.assign(this, extra)
    }

    onMessage (data, msg) { return onMessage(data, msg) }
  }
}

function deferred () {
  let resolve
  const promise = new Promise((res) => { resolve = res })
  return { promise, resolve }
}

describe('promise API', () => {
  test('connectAsync resolves connected, and rejects with the connect error', async () => {
    const sc = await connectAsync(CLUSTER, unique('async'), { url: ctx.url })
    assert.equal(sc.isClosed(), false)
    await sc.close()
    assert.equal(sc.isClosed(), true)
    await assert.rejects(connectAsync(CLUSTER, unique('async'), { url: 'nats://127.0.0.1:1' }), { code: 'CONN_ERR' })
  })

  test('publishAsync resolves with the guid and waits for room instead of throwing', async () => {
    const sc = await ctx.connect({ maxPubAcksInflight: 2 })
    const channel = unique('pa')
    const guids = await Promise.all(Array.from({ length: 20 }, (_, i) => sc.publishAsync(channel, `m${i}`)))
    assert.equal(new Set(guids).size, 20)
    await assert.rejects(sc.publishAsync('bad subject', 'x'), { code: 'BAD_SUBJECT' })
  })

  test('for await delivers in order, acks after each body, and ends on close', async () => {
    const sc = await ctx.connect()
    const channel = unique('iter')
    for (let i = 0; i < 5; i++) await publish(sc, channel, `m${i}`)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable().setAckWait(1000))
    const seen = []
    for await (const msg of sub) {
      seen.push(msg.getData())
      if (seen.length === 5) sc.close()
    }
    assert.deepEqual(seen, ['m0', 'm1', 'm2', 'm3', 'm4'])
  })

  test('for await ends when the subscription is unsubscribed', async () => {
    const sc = await ctx.connect()
    const channel = unique('iter2')
    await publish(sc, channel, 'only')
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    let count = 0
    for await (const msg of sub) {
      assert.equal(msg.getData(), 'only')
      count++
      sub.unsubscribe()
    }
    assert.equal(count, 1)
  })
})

describe('typed bus', () => {
  test('with taggedJsonCodec, a Publisher/Listener pair round-trips Dates and Buffers', async () => {
    const sc = await ctx.connect()
    const subject = unique('ticket')
    const got = deferred()
    const TicketListener = listenerClass(subject, 'svc', (data, msg) => got.resolve({ data, msg }), { codec: taggedJsonCodec })
    const listener = await new TicketListener(sc).listen()
    class TicketPublisher extends Publisher { constructor (c) { super(c); this.subject = subject; this.codec = taggedJsonCodec } }
    const when = new Date('2026-01-02T03:04:05.678Z')
    await new TicketPublisher(sc).publish({ id: 't1', price: 20, when, blob: Buffer.from([1, 2, 3]) })
    const { data } = await got.promise
    assert.equal(data.id, 't1')
    assert.ok(data.when instanceof Date)
    assert.equal(data.when.getTime(), when.getTime())
    assert.deepEqual([...data.blob], [1, 2, 3])
    await listener.close()
  })

  test('taggedJsonCodec keeps ordinary objects that merely look alike', () => {
    const value = { a: { $date: 'x', other: 1 }, list: [1, 'two'] }
    assert.deepEqual(taggedJsonCodec.decode(Buffer.from(taggedJsonCodec.encode(value))), value)
  })

  test('a payload failing the schema is rejected before publishing', async () => {
    const sc = await ctx.connect()
    class P extends Publisher { constructor (c) { super(c); this.subject = 'tickets-validated'; this.schema = ticketSchema } }
    await assert.rejects(new P(sc).publish({ id: 7 }), (err) => err.code === 'INVALID_PAYLOAD' && err.issues.length === 2)
  })

  test('an invalid payload on the wire is reported as INVALID_PAYLOAD, not handled, and not redelivered', async () => {
    const sc = await ctx.connect()
    const subject = unique('strict')
    let handled = 0
    const errors = []
    const settled = deferred()
    const check = () => { if (handled === 1 && errors.length === 2) settled.resolve() }
    const Strict = listenerClass(subject, 'svc', () => { handled++; check() }, { schema: ticketSchema, ackWait: 1000 })
    const listener = new Strict(sc)
    listener.on('error', (err) => { errors.push(err); check() })
    await listener.listen()
    await publish(sc, subject, JSON.stringify({ id: 1 }))
    await publish(sc, subject, 'not json at all')
    await publish(sc, subject, JSON.stringify({ id: 'ok', price: 1 }))
    await settled.promise
    // Longer than ackWait: a redelivery of the invalid ones would show here.
    await quietPeriod(1500)
    assert.equal(handled, 1)
    assert.equal(errors.length, 2)
    assert.ok(errors.every((e) => e.code === 'INVALID_PAYLOAD'))
  })

  test('an async handler is acked only after it resolves; a rejection leaves the message for redelivery', async () => {
    const sc = await ctx.connect()
    const subject = unique('retry')
    const attempts = []
    const done = deferred()
    const Flaky = listenerClass(subject, 'svc', async (data, msg) => {
      attempts.push(msg.isRedelivered())
      if (attempts.length === 1) throw new Error('first attempt fails')
      done.resolve()
    }, { ackWait: 1000 })
    const listener = new Flaky(sc)
    const errors = []
    listener.on('error', (err) => errors.push(err.message))
    await listener.listen()
    await sc.publishAsync(subject, JSON.stringify({ n: 1 }))
    await done.promise
    assert.deepEqual(attempts, [false, true])
    assert.deepEqual(errors, ['first attempt fails'])
  })

  test('a message whose handler was killed mid-way is redelivered to another member', async () => {
    const subject = unique('killed')
    const group = 'workers'
    const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'stuck-listener.js'), ctx.url, subject, group],
      { stdio: ['ignore', 'pipe', 'inherit'] })
    const lines = readline.createInterface({ input: child.stdout })
    const saw = (text) => new Promise((resolve) => lines.on('line', (line) => { if (line === text) resolve() }))
    const listening = saw('listening')
    const handling = saw('handling')
    const exited = new Promise((resolve) => child.once('exit', resolve))
    try {
      await listening
      const sc = await ctx.connect()
      await sc.publishAsync(subject, JSON.stringify({ job: 1 }))
      await handling
      child.kill('SIGKILL')
      await exited
      const redelivered = deferred()
      const Rescuer = listenerClass(subject, group, (data, msg) => redelivered.resolve({ data, msg }), { ackWait: 1000 })
      await new Rescuer(sc).listen()
      const { data, msg } = await redelivered.promise
      assert.deepEqual(data, { job: 1 })
      assert.equal(msg.isRedelivered(), true)
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL')
    }
  })

  test('maxConcurrent caps handlers running at once, under load', async () => {
    const sc = await ctx.connect()
    const subject = unique('cap')
    let running = 0
    let peak = 0
    let finished = 0
    const all = deferred()
    const Capped = listenerClass(subject, 'svc', async () => {
      running++
      peak = Math.max(peak, running)
      await new Promise((resolve) => setImmediate(resolve))
      await new Promise((resolve) => setTimeout(resolve, 5))
      running--
      if (++finished === 40) all.resolve()
    }, { maxConcurrent: 3 })
    await new Capped(sc).listen()
    await Promise.all(Array.from({ length: 40 }, (_, i) => sc.publishAsync(subject, JSON.stringify({ i }))))
    await all.promise
    assert.equal(peak, 3)
  })

  test('drain finishes running handlers and their acks, then closes; nothing is lost or handled twice', async () => {
    const subject = unique('drain')
    const group = 'drainers'
    const clientID = unique('drainer')
    const handled = []
    const started = deferred()
    let release
    const gate = new Promise((resolve) => { release = resolve })
    const Slow = listenerClass(subject, group, async (data) => {
      started.resolve()
      await gate
      handled.push(data.n)
    }, { maxConcurrent: 2 })
    const sc = await ctx.connect({}, clientID)
    await new Slow(sc).listen()
    for (let n = 0; n < 10; n++) await sc.publishAsync(subject, JSON.stringify({ n }))
    await started.promise
    const drained = sc.drain()
    release()
    await drained
    assert.equal(sc.isClosed(), true)
    assert.ok(handled.length >= 1)

    const rest = []
    const all = deferred()
    const After = listenerClass(subject, group, (data) => {
      rest.push(data.n)
      if (handled.length + rest.length === 10) all.resolve()
    })
    const sc2 = await ctx.connect({}, clientID)
    await new After(sc2).listen()
    await all.promise
    assert.deepEqual([...handled, ...rest].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  })

  test('createBus publishes and listens by subject', async () => {
    const sc = await ctx.connect()
    const subject = unique('bus')
    const bus = createBus(sc, { schemas: { [subject]: ticketSchema } })
    const got = deferred()
    await bus.listen(subject, { queueGroupName: 'svc' }, (data) => got.resolve(data))
    await bus.publish(subject, { id: 'a', price: 3 })
    assert.deepEqual(await got.promise, { id: 'a', price: 3 })
    await assert.rejects(bus.publish(subject, { id: 'a' }), { code: 'INVALID_PAYLOAD' })
  })
})
