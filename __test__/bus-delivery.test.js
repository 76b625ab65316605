'use strict'

// The typed Listener's delivery promise, on both backends: one event, one
// handler run, in order with maxConcurrent 1, across slow handlers,
// failures, reconnects and hand-overs; errors never silent; plain JSON both
// ways with services that parse by hand. Counts are asserted; timings are
// printed as JSON lines.

const { describe, test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { startProxy } = require('../testing/proxy')
const { once, unique, quietPeriod, useBothBackends, figure, stan } = require('./helpers')
const { PlainListener, PlainPublisher } = require('./fixtures/course-style')
const { Listener, Publisher, createBus } = stan

const CLUSTER = 'bus-cluster'
const WAIT_MS = 30000
const ctx = useBothBackends(CLUSTER)
const connect = ctx.connect

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

function sleep (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** A promise with its resolve, that rejects by itself after `ms`. */
function signal (what, ms = WAIT_MS) {
  let resolve
  const promise = new Promise((res, reject) => {
    resolve = res
    setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms).unref()
  })
  return { promise, resolve }
}

async function publishJobs (sc, subject, count) {
  for (let job = 0; job < count; job++) await sc.publishAsync(subject, JSON.stringify({ job }))
}

/** Resolves once `count` jobs ran to completion; `runs` counts every start. */
function tally (count) {
  const runs = []
  const completed = []
  const all = signal(`${count} completed jobs`)
  return {
    runs,
    completed,
    all: all.promise,
    start (job) { runs.push(job) },
    finish (job) {
      completed.push(job)
      if (completed.length === count) all.resolve()
    }
  }
}

const range = (n) => Array.from({ length: n }, (_, i) => i)

for (const backend of ['jetstream', 'stan']) {
  describe(`${backend}: each event handled once`, () => {
    test('default flow control: an async 100 ms handler runs each of 30 events once, in order', async () => {
      const sc = await connect(backend)
      const subject = unique('once')
      const jobs = tally(30)
      await publishJobs(sc, subject, 30)
      const startedAt = Date.now()
      const Worker = listenerClass(subject, 'workers', async ({ job }) => {
        jobs.start(job)
        await sleep(100)
        jobs.finish(job)
      }, { ackWait: 1000 })
      const listener = await new Worker(sc).listen()
      await jobs.all
      const msPerEvent = (Date.now() - startedAt) / 30
      // Longer than ackWait: a redelivery would show here.
      await quietPeriod(1500)
      figure('listener-once', { backend, events: 30, runs: jobs.runs.length, runs_per_event: jobs.runs.length / 30, ms_per_event: msPerEvent })
      assert.deepEqual(jobs.runs, range(30))
      assert.deepEqual(jobs.completed, range(30))
      await listener.close()
    })

    test('a handler running longer than ackWait keeps its message', async () => {
      const sc = await connect(backend)
      const subject = unique('long')
      const jobs = tally(2)
      await publishJobs(sc, subject, 2)
      const Slow = listenerClass(subject, 'workers', async ({ job }) => {
        jobs.start(job)
        await sleep(2500)
        jobs.finish(job)
      }, { ackWait: 1000 })
      const listener = await new Slow(sc).listen()
      await jobs.all
      await quietPeriod(1500)
      assert.deepEqual(jobs.runs, [0, 1])
      await listener.close()
    })

    test('a failed event comes back before the next one is handled', async () => {
      const sc = await connect(backend)
      const subject = unique('retry')
      const jobs = tally(6)
      const redelivered = []
      let failed = false
      await publishJobs(sc, subject, 6)
      const Flaky = listenerClass(subject, 'workers', async ({ job }, msg) => {
        jobs.start(job)
        await sleep(5)
        if (job === 2 && !failed) {
          failed = true
          throw new Error('job 2 fails once')
        }
        if (msg.isRedelivered()) redelivered.push(job)
        jobs.finish(job)
      }, { ackWait: 1000 })
      const listener = new Flaky(sc)
      const errors = []
      listener.on('error', (err) => errors.push(err.message))
      await listener.listen()
      await jobs.all
      await quietPeriod(1500)
      assert.deepEqual(jobs.completed, range(6))
      assert.deepEqual(jobs.runs, [0, 1, 2, 2, 3, 4, 5])
      assert.deepEqual(redelivered, [2])
      assert.deepEqual(errors, ['job 2 fails once'])
      await listener.close()
    })

    test('two members of a queue group share the work, each event once', async () => {
      const subject = unique('shared')
      const jobs = tally(20)
      const by = { first: 0, second: 0 }
      let running = 0
      let peak = 0
      const member = (name) => listenerClass(subject, 'workers', async ({ job }) => {
        jobs.start(job)
        by[name]++
        peak = Math.max(peak, ++running)
        await sleep(50)
        running--
        jobs.finish(job)
      })
      const First = member('first')
      const Second = member('second')
      await new First(await connect(backend)).listen()
      await new Second(await connect(backend)).listen()
      await publishJobs(await connect(backend), subject, 20)
      await jobs.all
      await quietPeriod(1500)
      figure('listener-group', { backend, events: 20, runs: jobs.runs.length, peak, ...by })
      assert.deepEqual([...jobs.runs].sort((x, y) => x - y), range(20))
      // maxConcurrent is each member's: the group runs two at once.
      assert.equal(peak, 2)
      assert.ok(by.first > 0 && by.second > 0, `both members worked: ${JSON.stringify(by)}`)
    })

    test('across a reconnect, each of 40 events runs once, in order', async () => {
      const proxy = await startProxy(Number(new URL(ctx.server.url).port))
      try {
        const publisher = await connect(backend)
        const sc = await connect(backend, { url: proxy.url, stanPingInterval: 60000 })
        const subject = unique('reconnect')
        const jobs = tally(40)
        const tenth = signal('ten jobs')
        await publishJobs(publisher, subject, 40)
        const Worker = listenerClass(subject, 'workers', async ({ job }) => {
          jobs.start(job)
          await sleep(20)
          jobs.finish(job)
          if (job === 9) tenth.resolve()
        })
        await new Worker(sc).listen()
        await tenth.promise
        const disconnected = once(sc, 'disconnect')
        proxy.cut()
        await disconnected
        // The outage itself.
        await sleep(500)
        const reconnected = once(sc, 'reconnect')
        proxy.restore()
        await reconnected
        await jobs.all
        await quietPeriod(1500)
        assert.deepEqual(jobs.runs, range(40))
        assert.deepEqual(jobs.completed, range(40))
        await sc.close()
      } finally {
        await proxy.stop()
      }
    })
  })

  describe(`${backend}: close and drain`, () => {
    async function handOver (leave) {
      const subject = unique('handover')
      const group = 'handover'
      const a = await connect(backend)
      const b = await connect(backend)
      const onA = []
      const onB = []
      const startedOnA = signal('a job on A')
      const gate = signal('the gate', 60000)
      const A = listenerClass(subject, group, async ({ job }) => {
        onA.push(job)
        startedOnA.resolve()
        await gate.promise
      })
      const first = await new A(a).listen()
      await publishJobs(a, subject, 8)
      await startedOnA.promise
      const left = leave(first)
      gate.resolve()
      await left
      const jobs = tally(onA.length === 1 && leave.drains ? 7 : 8)
      const B = listenerClass(subject, group, async ({ job }) => {
        onB.push(job)
        jobs.start(job)
        jobs.finish(job)
      })
      await new B(b).listen()
      await jobs.all
      await quietPeriod(1500)
      return { onA, onB }
    }

    test('after close() no handler starts; the running one\'s event is handled again elsewhere', async () => {
      const { onA, onB } = await handOver((listener) => listener.close())
      assert.deepEqual(onA, [0])
      assert.deepEqual([...onB].sort((x, y) => x - y), range(8))
    })

    test('drain() lets the running handler finish and ack; every event runs once', async () => {
      const drain = (listener) => listener.drain()
      drain.drains = true
      const { onA, onB } = await handOver(drain)
      assert.deepEqual(onA, [0])
      assert.deepEqual([...onB].sort((x, y) => x - y), range(8).slice(1))
    })
  })

  describe(`${backend}: failures are reported`, () => {
    test('listen() rejects with the subscription\'s code; createBus().listen likewise', async () => {
      const sc = await connect(backend)
      const Bad = listenerClass('bad subject', 'workers', () => {})
      await assert.rejects(new Bad(sc).listen(), { code: 'BAD_SUBJECT' })
      await assert.rejects(createBus(sc).listen('bad subject', { queueGroupName: 'g' }, () => {}), { code: 'BAD_SUBJECT' })
      await assert.rejects(createBus(sc).listen(unique('ok'), {}, () => {}), { code: 'BAD_OPTION' })
      await assert.rejects(createBus(sc).listen(unique('ok'), { queueGroupName: 'g', maxConcurrent: 0 }, () => {}), { code: 'BAD_OPTION' })
      // The connection is still usable.
      const fine = await createBus(sc).listen(unique('fine'), { queueGroupName: 'g' }, () => {})
      assert.ok(fine instanceof Listener)
      await fine.close()
    })

    test('an invalid payload is copied to deadLetterSubject, reported, and never redelivered', async () => {
      const sc = await connect(backend)
      const subject = unique('strict')
      const deadLetters = unique('dead')
      const copies = []
      const copied = signal('the dead letter')
      const dead = sc.subscribe(deadLetters, sc.subscriptionOptions().setDeliverAllAvailable())
      dead.on('message', (msg) => { copies.push(msg.getData()); copied.resolve() })
      await once(dead, 'ready')
      const handled = []
      const errors = []
      const reported = signal('the error')
      const Strict = listenerClass(subject, 'workers', (data) => { handled.push(data) }, { ackWait: 1000, deadLetterSubject: deadLetters })
      const listener = new Strict(sc)
      listener.on('error', (err) => { errors.push(err); reported.resolve() })
      await listener.listen()
      await sc.publishAsync(subject, 'not json {')
      await sc.publishAsync(subject, JSON.stringify({ ok: true }))
      await Promise.all([copied.promise, reported.promise])
      await quietPeriod(2000)
      assert.deepEqual(copies, ['not json {'])
      assert.equal(errors.length, 1)
      assert.equal(errors[0].code, 'INVALID_PAYLOAD')
      assert.equal(errors[0].data.toString(), 'not json {')
      assert.equal(typeof errors[0].deadLetterGuid, 'string')
      assert.deepEqual(handled, [{ ok: true }])
      await listener.close()
    })
  })
}

describe('errors without an error listener', () => {
  for (const mode of ['throw', 'invalid']) {
    test(`a ${mode === 'throw' ? 'throwing handler' : 'invalid payload'} surfaces as an uncaught exception`, async () => {
      const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'unwatched-listener.js'),
        ctx.server.url, 'jetstream', CLUSTER, unique('unwatched'), mode], { stdio: ['ignore', 'pipe', 'pipe'] })
      let stdout = ''
      let stderr = ''
      child.stdout.on('data', (chunk) => { stdout += chunk })
      child.stderr.on('data', (chunk) => { stderr += chunk })
      const code = await once(child, 'exit', { timeoutMs: 20000, rejectOnError: false })
      assert.notEqual(code, 0)
      assert.equal(stdout.includes('silent'), false)
      assert.match(stderr, mode === 'throw' ? /handler failed on job 1/ : /INVALID_PAYLOAD|invalid payload/)
    })
  }
})

describe('plain JSON, both ways, with services that parse by hand', () => {
  /** Standard Schema with coercion, as zod's z.coerce.date() does it. */
  const withDate = {
    '~standard': {
      version: 1,
      vendor: 'jetstan-test',
      validate (value) {
        const when = new Date(value?.when)
        if (Number.isNaN(when.getTime())) return { issues: [{ message: 'when must be a date' }] }
        return { value: { ...value, when } }
      }
    }
  }

  test('a typed Publisher writes what JSON.stringify writes; a hand-parsing Listener reads it', async () => {
    const sc = await connect('jetstream')
    const subject = unique('typed-out')
    const event = { id: 't1', title: 'concert', price: 20, when: new Date('2026-01-02T03:04:05.678Z') }
    const got = signal('the plain listener')
    new PlainListener(sc, subject, 'plain', (data, msg) => { got.resolve({ data, raw: msg.getData() }); msg.ack() }).listen()
    class TicketPublisher extends Publisher { constructor (c) { super(c); this.subject = subject } }
    await new TicketPublisher(sc).publish(event)
    const { data, raw } = await got.promise
    assert.equal(raw, JSON.stringify(event))
    assert.deepEqual(data, JSON.parse(JSON.stringify(event)))
    assert.equal(data.when, '2026-01-02T03:04:05.678Z')
  })

  test('a hand-written Publisher\'s event reaches a typed Listener; a coercing schema restores the Date', async () => {
    const sc = await connect('jetstream')
    const subject = unique('typed-in')
    const when = new Date('2026-03-04T05:06:07.089Z')
    const plain = signal('the typed listener without schema')
    const coerced = signal('the typed listener with schema')
    const Untyped = listenerClass(subject, 'untyped', (data) => plain.resolve(data))
    const Typed = listenerClass(subject, 'typed', (data) => coerced.resolve(data), { schema: withDate })
    await new Untyped(sc).listen()
    await new Typed(sc).listen()
    await new PlainPublisher(sc, subject).publish({ id: 't2', when })
    assert.deepEqual(await plain.promise, { id: 't2', when: when.toISOString() })
    const data = await coerced.promise
    assert.ok(data.when instanceof Date)
    assert.equal(data.when.getTime(), when.getTime())
  })

  test('what JSON cannot carry is refused before publishing', async () => {
    const sc = await connect('jetstream')
    class P extends Publisher { constructor (c) { super(c); this.subject = unique('bigint') } }
    await assert.rejects(new P(sc).publish({ n: 1n }), { code: 'INVALID_PAYLOAD' })
    await assert.rejects(new P(sc).publish(undefined), { code: 'INVALID_PAYLOAD' })
  })
})
