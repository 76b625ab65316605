'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')
const { useServer, once, unique, publish, collect, quietPeriod, stan, CLUSTER, BACKEND_OPTIONS, ORIGINAL } = require('../helpers')

const ctx = useServer()

async function deadUrl () {
  const probe = net.createServer()
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve))
  const { port } = probe.address()
  await new Promise((resolve) => probe.close(resolve))
  return `nats://127.0.0.1:${port}`
}

async function connectWith (opts) {
  const sc = stan.connect(CLUSTER, unique('opts'), { ...BACKEND_OPTIONS, ...opts })
  await once(sc, 'connect')
  return sc
}

async function closeIt (sc) {
  const closed = once(sc, 'close')
  sc.close()
  await closed
}

test('B1: a ready subscription has its subject, no group, and inbox fields', async () => {
  const sc = await ctx.connect()
  const sub = sc.subscribe('foo-b1', sc.subscriptionOptions().setStartAt(stan.StartPosition.FIRST))
  await once(sub, 'ready')
  assert.equal(sub.subject, 'foo-b1')
  assert.equal(sub.qGroup, undefined)
  assert.ok(sub.inbox && sub.ackInbox && sub.inboxSub)
  const done = once(sub, 'unsubscribed')
  sub.unsubscribe()
  await done
})

test('C2: { port } means localhost:<port>', async () => {
  const sc = await connectWith({ port: Number(new URL(ctx.url).port) })
  await closeIt(sc)
})

test('C7/C8: a servers list with dead entries still connects, randomized or not', async () => {
  for (const noRandomize of [false, true]) {
    const servers = [await deadUrl(), ctx.url, await deadUrl()]
    const pub = await connectWith({ servers, noRandomize })
    const sub = await connectWith({ servers, noRandomize })
    const channel = unique('pool')
    const s = sub.subscribe(channel, sub.subscriptionOptions().setStartAt(stan.StartPosition.FIRST))
    await once(s, 'ready')
    const got = collect(s, 1)
    await publish(pub, channel, 'bar')
    const [msg] = await got
    assert.equal(msg.getSubject(), channel)
    assert.equal(msg.getData(), 'bar')
    await closeIt(pub)
    await closeIt(sub)
  }
})

// The original keeps retrying an absent localhost:4222 and never emits close.
test('S5: with no options the URL is nats://localhost:4222', { skip: ORIGINAL && 'the original never gives up here' }, () => {
  const sc = stan.connect(CLUSTER, unique('defaults'), { ...BACKEND_OPTIONS, connectTimeout: 100 })
  sc.on('error', () => {})
  assert.equal(sc.options.url, 'nats://localhost:4222')
  assert.equal(sc.options.maxPubAcksInflight, 16384)
  assert.equal(sc.options.ackTimeout, 30000)
  assert.equal(sc.options.stanMaxPingOut, 3)
  return once(sc, 'close', { rejectOnError: false })
})

test('maxPubAcksInFlight (capital F) is accepted as jetstan spelling', { skip: ORIGINAL && 'a jetstan alias' }, async () => {
  const sc = await ctx.connect({ maxPubAcksInFlight: 7 })
  assert.equal(sc.options.maxPubAcksInflight, 7)
})

test('B30: an empty group string means no group; after close() nothing more arrives', async () => {
  const sc = await ctx.connect()
  const channel = unique('b30')
  const sub = sc.subscribe(channel, '', sc.subscriptionOptions())
  assert.equal(sub.qGroup, '')
  await once(sub, 'ready')
  let count = 0
  sub.on('message', () => {
    count++
    if (count === 1) sub.close()
  })
  const closed = once(sub, 'closed')
  await publish(sc, channel, 'one')
  await closed
  await publish(sc, channel, 'two')
  await quietPeriod(300)
  assert.equal(count, 1)
})

test('B20: unsubscribing again from the unsubscribed handler emits invalid subscription', async () => {
  const sc = await ctx.connect()
  const sub = sc.subscribe(unique('b20'))
  await once(sub, 'ready')
  const err = new Promise((resolve) => {
    sub.once('unsubscribed', () => {
      sub.once('error', resolve)
      sub.unsubscribe()
    })
  })
  sub.unsubscribe()
  assert.equal((await err).message, 'stan: invalid subscription')
})
