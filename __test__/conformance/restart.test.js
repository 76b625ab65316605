'use strict'

// A real nats-server process is restarted (same port, same file store) and
// stopped under live connections. These need a server of their own.

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { startServer } = require('../../testing/nats-server')
const { once, unique, publish, collect, stan, startBackend, CLUSTER, BACKEND_OPTIONS, ON_DOUBLE, ORIGINAL } = require('../helpers')

let server
let backend
const open = new Set()

before(async () => {
  server = await startServer()
  backend = await startBackend(server.url)
})
after(async () => {
  for (const sc of open) {
    if (!sc.isClosed()) {
      const closed = once(sc, 'close', { rejectOnError: false })
      sc.close()
      await closed
    }
  }
  await backend.stop()
  await server.stop()
})

async function connect (opts = {}) {
  // A STAN server is a NATS client too: after a restart it may be back after us.
  await backend.reachable()
  const sc = stan.connect(CLUSTER, unique('restart'), { url: server.url, reconnectTimeWait: 50, ...BACKEND_OPTIONS, ...opts })
  open.add(sc)
  await once(sc, 'connect')
  return sc
}

test('every kind of subscription keeps receiving after the server restarts, and nothing acked is lost', async () => {
  const sc = await connect()
  const channel = unique('survivor')
  const before = ['b1', 'b2', 'b3']
  for (const word of before) await publish(sc, channel, word)

  const kinds = {
    plain: sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable()),
    durable: sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable().setDurableName('d')),
    queue: sc.subscribe(channel, 'q', sc.subscriptionOptions().setDeliverAllAvailable()),
    durableQueue: sc.subscribe(channel, 'dq', sc.subscriptionOptions().setDeliverAllAvailable().setDurableName('d'))
  }
  const seen = {}
  for (const [kind, sub] of Object.entries(kinds)) {
    seen[kind] = []
    sub.on('message', (msg) => seen[kind].push(msg.getData()))
  }
  await Promise.all(Object.values(kinds).map((sub) => collect(sub, 3)))

  const disconnected = once(sc, 'disconnect')
  const reconnected = once(sc, 'reconnect')
  await server.restart()
  await disconnected
  await reconnected
  // On the stan backend the STAN server is a NATS client too, and may be back after us.
  await backend.reachable()
  const restartedAt = Date.now()

  const after = ['a1', 'a2']
  const arrivals = Object.values(kinds).map((sub) => collect(sub, 2, { timeoutMs: 20000 }))
  for (const word of after) await publish(sc, channel, word)
  await Promise.all(arrivals)
  const recoveryMs = Date.now() - restartedAt
  console.log(`# recovery after restart: ${recoveryMs} ms until every subscription had the new messages`)

  for (const [kind, words] of Object.entries(seen)) {
    assert.deepEqual(words.filter((w) => w.startsWith('a')), after, kind)
    assert.deepEqual(words.filter((w) => w.startsWith('b')), before, kind)
  }
  const replay = await collect(sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable()), 5)
  assert.deepEqual(replay.map((m) => m.getData()), [...before, ...after])
})

test('reconnecting events are emitted while the server is down', async () => {
  const sc = await connect()
  let reconnecting = 0
  sc.on('reconnecting', () => reconnecting++)
  const reconnected = once(sc, 'reconnect')
  const down = once(sc, 'disconnect')
  await server.stopProcess()
  await down
  const seenReconnecting = once(sc, 'reconnecting')
  await seenReconnecting
  await server.start()
  await reconnected
  assert.ok(reconnecting >= 1)
})

test('a publish whose ack does not come within ackTimeout fails with PUB_ACK_TIMEOUT', async () => {
  const sc = await connect({ ackTimeout: 300 })
  const channel = unique('ackto')
  await publish(sc, channel, 'stream exists')
  await server.freeze()
  try {
    const err = await new Promise((resolve) => sc.publish(channel, 'lost in a frozen server', resolve))
    assert.equal(err.code, 'PUB_ACK_TIMEOUT')
    assert.equal(err.message, 'stan: publish ack timeout')
  } finally {
    server.thaw()
  }
  await publish(sc, channel, 'works again')
})

test('L1: connection_lost when pings go unanswered, between (M+1)·I and (M+2)·I, then close', async () => {
  // STAN carries the ping interval in whole seconds (0.3.2 rounds up).
  const interval = ON_DOUBLE ? 1000 : 300
  const maxOut = 2
  const sc = await connect({ stanPingInterval: interval, stanMaxPingOut: maxOut })
  const closed = once(sc, 'close', { rejectOnError: false })
  const lost = once(sc, 'connection_lost', { rejectOnError: false, timeoutMs: 15000 })
  sc.on('error', () => {})
  await server.freeze()
  const frozenAt = Date.now()
  try {
    const err = await lost
    const elapsed = Date.now() - frozenAt
    assert.equal(err.code, 'CONNECTION_LOST')
    assert.equal(err.message, 'stan: connection lost due to PING failure')
    assert.ok(elapsed >= maxOut * interval, `lost after ${elapsed} ms`)
    assert.ok(elapsed <= (maxOut + 3) * interval, `lost after ${elapsed} ms`)
  } finally {
    server.thaw()
  }
  await closed
  // 0.3.2's isClosed() looks at a NATS connection it keeps after connection_lost.
  if (!ORIGINAL) assert.equal(sc.isClosed(), true)
})

test('B18: a subscription request the server cannot answer within connectTimeout emits timeout', async () => {
  const sc = await connect({ connectTimeout: 300 })
  const down = once(sc, 'disconnect')
  await server.stopProcess()
  await down
  try {
    const sub = sc.subscribe(unique('unanswered'))
    const err = await once(sub, 'timeout')
    assert.equal(err.code, 'SUBSCRIBE_TIMEOUT')
    assert.equal(err.message, 'stan: subscribe request timeout')
  } finally {
    const back = once(sc, 'reconnect')
    await server.start()
    await back
  }
})

test('C9: when reconnect attempts run out, the connection emits close', async () => {
  const sc = await connect({ maxReconnectAttempts: 3, reconnectTimeWait: 20 })
  const events = []
  for (const name of ['disconnect', 'reconnecting']) sc.on(name, () => events.push(name))
  const closed = once(sc, 'close', { rejectOnError: false, timeoutMs: 15000 })
  await server.stopProcess()
  try {
    await closed
    if (!ORIGINAL) assert.equal(sc.isClosed(), true)
    assert.ok(events.includes('disconnect'))
    assert.ok(events.includes('reconnecting'))
  } finally {
    await server.start()
  }
})

// 0.3.2 sends its one connect request the moment NATS is up; the STAN
// server, reconnecting too, may not be listening yet.
const C6_SKIP = ORIGINAL && 'the original does not retry its connect request'
test('C6: waitOnFirstConnect keeps trying an absent server, then connects when it appears', { skip: C6_SKIP }, async () => {
  await server.stopProcess()
  const sc = stan.connect(CLUSTER, unique('patient'), {
    url: server.url, waitOnFirstConnect: true, reconnectTimeWait: 50, ...BACKEND_OPTIONS
  })
  open.add(sc)
  let errored = false
  sc.on('error', () => { errored = true })
  await once(sc, 'reconnecting', { rejectOnError: false })
  const connected = once(sc, 'connect', { rejectOnError: false })
  await server.start()
  assert.equal(await connected, sc)
  assert.equal(errored, false)
})
