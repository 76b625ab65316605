'use strict'

// STAN semantics through the public 0.3.2 API only, so the file can run on
// any backend (BACKEND=jetstream|stan). Scenario numbers refer to the
// node-nats-streaming test suite (reference doc §13).

const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { useServer, once, unique, publish, collect, quietPeriod } = require('../helpers')

const ctx = useServer()

function durableOpts (sc, name) {
  return sc.subscriptionOptions().setDurableName(name).setManualAckMode(true).setDeliverAllAvailable()
}

describe('durable subscriptions', () => {
  test('B29: a new connection with the same client ID resumes after the acked messages', async () => {
    const clientID = unique('durable-client')
    const channel = unique('durable')
    let sc = await ctx.connect({}, clientID)
    for (const word of ['one', 'two', 'three']) await publish(sc, channel, word)
    let sub = sc.subscribe(channel, durableOpts(sc, 'my-durable'))
    const first = await collect(sub, 3)
    first[0].ack()
    first[1].ack()
    let closed = once(sc, 'close')
    sc.close()
    await closed

    sc = await ctx.connect({}, clientID)
    sub = sc.subscribe(channel, durableOpts(sc, 'my-durable'))
    const [resumed] = await collect(sub, 1)
    assert.equal(resumed.getSequence(), 3)
    assert.equal(resumed.getData(), 'three')
    closed = once(sc, 'close')
    sc.close()
    await closed
  })

  test('B31: Subscription.close() keeps the durable; re-subscribing resumes at the first unacked', async () => {
    const sc = await ctx.connect()
    const channel = unique('durable-close')
    for (const word of ['one', 'two', 'three']) await publish(sc, channel, word)
    const sub = sc.subscribe(channel, durableOpts(sc, 'keep'))
    const got = await collect(sub, 3)
    got[0].ack()
    got[1].ack()
    const closed = once(sub, 'closed')
    sub.close()
    await closed
    const again = sc.subscribe(channel, durableOpts(sc, 'keep'))
    const [resumed] = await collect(again, 1)
    assert.equal(resumed.getSequence(), 3)
  })

  test('unsubscribe() deletes the durable: re-subscribing starts over from the start position', async () => {
    const sc = await ctx.connect()
    const channel = unique('durable-unsub')
    for (const word of ['one', 'two']) await publish(sc, channel, word)
    const sub = sc.subscribe(channel, durableOpts(sc, 'gone'))
    for (const msg of await collect(sub, 2)) msg.ack()
    const done = once(sub, 'unsubscribed')
    sub.unsubscribe()
    await done
    const again = sc.subscribe(channel, durableOpts(sc, 'gone'))
    const [first] = await collect(again, 1)
    assert.equal(first.getSequence(), 1)
  })

  test('start options apply only when the durable is created', async () => {
    const sc = await ctx.connect()
    const channel = unique('durable-start')
    for (const word of ['one', 'two', 'three']) await publish(sc, channel, word)
    const sub = sc.subscribe(channel, durableOpts(sc, 'once'))
    for (const msg of await collect(sub, 3)) msg.ack()
    const closed = once(sub, 'closed')
    sub.close()
    await closed
    await publish(sc, channel, 'four')
    const opts = sc.subscriptionOptions().setDurableName('once').setManualAckMode(true).setStartAtSequence(1)
    const [next] = await collect(sc.subscribe(channel, opts), 1)
    assert.equal(next.getSequence(), 4)
  })

  test('one durable name on two channels gives two independent durables', async () => {
    const sc = await ctx.connect()
    const [a, b] = [unique('dur-a'), unique('dur-b')]
    await publish(sc, a, 'a1')
    await publish(sc, b, 'b1')
    const subA = sc.subscribe(a, durableOpts(sc, 'shared-name'))
    const subB = sc.subscribe(b, durableOpts(sc, 'shared-name'))
    const [[ma], [mb]] = await Promise.all([collect(subA, 1), collect(subB, 1)])
    assert.equal(ma.getData(), 'a1')
    assert.equal(mb.getData(), 'b1')
  })

  test('an active durable registered twice on one connection fails with DUPLICATE_DURABLE', async () => {
    const sc = await ctx.connect()
    const channel = unique('dup')
    const first = sc.subscribe(channel, durableOpts(sc, 'dup'))
    await once(first, 'ready')
    const err = await once(sc.subscribe(channel, durableOpts(sc, 'dup')), 'error')
    assert.equal(err.code, 'DUPLICATE_DURABLE')
    assert.equal(err.message, 'stan: duplicate durable registration')
  })
})

describe('queue groups', () => {
  test('B28: members of a group share the messages, each message to one member', async () => {
    const sc = await ctx.connect()
    const channel = unique('queue')
    const opts = sc.subscriptionOptions().setMaxInFlight(1)
    const members = [sc.subscribe(channel, 'workers', opts), sc.subscribe(channel, 'workers', opts)]
    await Promise.all(members.map((m) => once(m, 'ready')))
    const seen = [[], []]
    let total = 0
    const all = new Promise((resolve) => members.forEach((m, i) => m.on('message', (msg) => {
      seen[i].push(msg.getSequence())
      if (++total === 10) resolve()
    })))
    for (let i = 0; i < 10; i++) await publish(sc, channel, `m${i}`)
    await all
    await quietPeriod(200)
    const sequences = [...seen[0], ...seen[1]].sort((x, y) => x - y)
    assert.deepEqual(sequences, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert.ok(seen[0].length > 0 && seen[1].length > 0, `split ${seen[0].length}/${seen[1].length}`)
  })

  test('a durable queue group survives all members leaving, and resumes', async () => {
    const channel = unique('dq')
    let sc = await ctx.connect()
    const opts = (c) => c.subscriptionOptions().setDurableName('dq').setManualAckMode(true).setDeliverAllAvailable()
    await publish(sc, channel, 'one')
    const member = sc.subscribe(channel, 'group', opts(sc))
    const [m1] = await collect(member, 1)
    m1.ack()
    const closed = once(sc, 'close')
    sc.close()
    await closed
    sc = await ctx.connect()
    await publish(sc, channel, 'two')
    const [m2] = await collect(sc.subscribe(channel, 'group', opts(sc)), 1)
    assert.equal(m2.getData(), 'two')
  })

  test('a non-durable group starts over once its last member has left', async () => {
    const sc = await ctx.connect()
    const channel = unique('nq')
    await publish(sc, channel, 'one')
    const opts = () => sc.subscriptionOptions().setDeliverAllAvailable()
    const member = sc.subscribe(channel, 'group', opts())
    assert.equal((await collect(member, 1))[0].getData(), 'one')
    const gone = once(member, 'unsubscribed')
    member.unsubscribe()
    await gone
    const [again] = await collect(sc.subscribe(channel, 'group', opts()), 1)
    assert.equal(again.getData(), 'one')
  })

  test('B34: a member that leaves without acking hands its message to another member, marked redelivered', async () => {
    const sc = await ctx.connect()
    const channel = unique('redeliver')
    const opts = () => sc.subscriptionOptions().setDurableName('my-durable').setManualAckMode(true).setMaxInFlight(1)
    const first = sc.subscribe(channel, 'q', opts())
    await once(first, 'ready')
    const gotFirst = collect(first, 1)
    await publish(sc, channel, 'hot potato')
    await gotFirst
    const second = sc.subscribe(channel, 'q', opts())
    await once(second, 'ready')
    const redelivered = collect(second, 1, { timeoutMs: 15000 })
    const closed = once(first, 'closed')
    first.close()
    await closed
    const [msg] = await redelivered
    assert.equal(msg.getData(), 'hot potato')
    assert.equal(msg.isRedelivered(), true)
    assert.ok(msg.getRedeliveryCount() > 0)
    msg.ack()
  })
})

describe('acks and flow control', () => {
  test('an unacked message comes back after ackWait, marked redelivered', async () => {
    const sc = await ctx.connect()
    const channel = unique('ackwait')
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setManualAckMode(true).setAckWait(1000))
    await once(sub, 'ready')
    const two = collect(sub, 2, { timeoutMs: 10000 })
    await publish(sc, channel, 'again')
    const [first, second] = await two
    assert.equal(first.isRedelivered(), false)
    assert.equal(second.getSequence(), first.getSequence())
    assert.equal(second.isRedelivered(), true)
    assert.equal(second.getRedeliveryCount(), 1)
    second.ack()
  })

  test('maxInFlight bounds unacked messages; acking lets more through', async () => {
    const sc = await ctx.connect()
    const channel = unique('inflight')
    for (let i = 0; i < 10; i++) await publish(sc, channel, `m${i}`)
    const sub = sc.subscribe(channel,
      sc.subscriptionOptions().setDeliverAllAvailable().setManualAckMode(true).setMaxInFlight(3))
    const received = []
    sub.on('message', (msg) => received.push(msg))
    await collect(sub, 3)
    await quietPeriod(500)
    assert.equal(received.length, 3)
    const next = collect(sub, 3)
    for (const msg of received) msg.ack()
    await next
    assert.equal(received.length, 6)
  })

  test('auto-ack: a message whose handler returned is not redelivered', async () => {
    const sc = await ctx.connect()
    const channel = unique('autoack')
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setAckWait(1000))
    await once(sub, 'ready')
    const got = collect(sub, 1)
    await publish(sc, channel, 'once')
    await got
    let extra = 0
    sub.on('message', () => extra++)
    await quietPeriod(1800)
    assert.equal(extra, 0)
  })
})

describe('start positions', () => {
  async function storedChannel (sc, words) {
    const channel = unique('start')
    for (const word of words) await publish(sc, channel, word)
    return channel
  }

  test('B22: at a sequence', async () => {
    const sc = await ctx.connect()
    const channel = await storedChannel(sc, ['first', 'second', 'third'])
    const [msg] = await collect(sc.subscribe(channel, sc.subscriptionOptions().setStartAtSequence(2)), 1)
    assert.equal(msg.getData(), 'second')
  })

  test('B23: with the last received', async () => {
    const sc = await ctx.connect()
    const channel = await storedChannel(sc, ['first', 'second', 'third'])
    const [msg] = await collect(sc.subscribe(channel, sc.subscriptionOptions().setStartWithLastReceived()), 1)
    assert.equal(msg.getData(), 'third')
  })

  test('B24/B25: at a time delta and at a start time', async () => {
    const sc = await ctx.connect()
    const channel = await storedChannel(sc, ['first', 'second', 'third'])
    // The scenario is about time itself: older messages must be older than the delta.
    await quietPeriod(1100)
    for (const word of ['fourth', 'fifth', 'sixth']) await publish(sc, channel, word)
    const [byDelta] = await collect(sc.subscribe(channel, sc.subscriptionOptions().setStartAtTimeDelta(1000)), 1)
    assert.equal(byDelta.getData(), 'fourth')
    const [byTime] = await collect(sc.subscribe(channel, sc.subscriptionOptions().setStartTime(new Date(Date.now() - 1000))), 1)
    assert.ok(['fourth', 'fifth', 'sixth'].includes(byTime.getData()))
  })

  test('B26: new-only gets the first message published after ready', async () => {
    const sc = await ctx.connect()
    const channel = await storedChannel(sc, ['first', 'second', 'third'])
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setStartAt(0))
    await once(sub, 'ready')
    const got = collect(sub, 1)
    await publish(sc, channel, 'fourth')
    assert.equal((await got)[0].getData(), 'fourth')
  })

  test('sequences increase by one per channel', async () => {
    const sc = await ctx.connect()
    const channel = await storedChannel(sc, ['a', 'b', 'c', 'd'])
    const other = await storedChannel(sc, ['x'])
    const msgs = await collect(sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable()), 4)
    assert.deepEqual(msgs.map((m) => m.getSequence()), [1, 2, 3, 4])
    const [x] = await collect(sc.subscribe(other, sc.subscriptionOptions().setDeliverAllAvailable()), 1)
    assert.equal(x.getSequence(), 1)
  })
})

describe('client IDs', () => {
  test('B7: a second live connection with the same client ID fails with CLIENT_ID_IN_USE, then close', async () => {
    const clientID = unique('taken')
    const first = await ctx.connect({}, clientID)
    const { stan, CLUSTER, BACKEND_OPTIONS } = require('../helpers')
    const second = stan.connect(CLUSTER, clientID, { url: ctx.url, ...BACKEND_OPTIONS })
    const closed = once(second, 'close', { rejectOnError: false })
    const err = await once(second, 'error')
    assert.equal(err.code, 'CLIENT_ID_IN_USE')
    assert.equal(err.message, 'stan: clientID already registered')
    await closed
    const done = once(first, 'close')
    first.close()
    await done
    const third = await ctx.connect({}, clientID)
    assert.equal(third.isClosed(), false)
  })

  test('a client ID with characters STAN forbids is refused with BAD_CLIENT_ID', async () => {
    const { stan, CLUSTER, BACKEND_OPTIONS } = require('../helpers')
    const sc = stan.connect(CLUSTER, 'bad.client id', { url: ctx.url, ...BACKEND_OPTIONS })
    const closed = once(sc, 'close', { rejectOnError: false })
    const err = await once(sc, 'error')
    assert.equal(err.code, 'BAD_CLIENT_ID')
    await closed
  })
})
