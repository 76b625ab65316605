'use strict'

// The stan backend where the conformance suite cannot reach: what a broken
// or absent nats-streaming-server does to it. Malformed frames, error
// strings and silence come from the STAN test double's fault knobs; every
// case ends in an Error with a stable code, never a crash or a hang, and the
// connection stays usable where the protocol allows.

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { startServer } = require('../testing/nats-server')
const { StanDouble } = require('../testing/stan-double/server')
const { once, unique, publish, collect, stan } = require('./helpers')

const CLUSTER = 'stan-backend-cluster'
let server
let double
const open = new Set()

before(async () => {
  server = await startServer()
  double = await new StanDouble({ url: server.url, clusterID: CLUSTER }).start()
})
after(async () => {
  for (const sc of open) {
    if (sc.isClosed()) continue
    const closed = once(sc, 'close', { rejectOnError: false })
    sc.close()
    await closed
  }
  await double.stop()
  await server.stop()
})

function start (opts = {}, clientID = unique('stan')) {
  const sc = stan.connect(CLUSTER, clientID, { url: server.url, backend: 'stan', ...opts })
  open.add(sc)
  return sc
}

async function connect (opts, clientID) {
  const sc = start(opts, clientID)
  await once(sc, 'connect')
  return sc
}

test('a cluster ID nobody serves fails the connect with CONNECT_TIMEOUT within connectTimeout', async () => {
  const sc = stan.connect('no-such-cluster', unique('lonely'), { url: server.url, backend: 'stan', connectTimeout: 300 })
  open.add(sc)
  const closed = once(sc, 'close', { rejectOnError: false })
  const startedAt = Date.now()
  const err = await once(sc, 'error')
  assert.equal(err.code, 'CONNECT_TIMEOUT')
  assert.equal(err.message, 'stan: connect request timeout')
  assert.ok(Date.now() - startedAt < 3000)
  await closed
})

test('a truncated ConnectResponse fails the connect with SERVER_ERROR, then close', async () => {
  // Field 1 (pubPrefix) announces 10 bytes and brings 2.
  double.injectNext('ConnectResponse', { raw: Buffer.from([0x0a, 0x0a, 0x41, 0x42]) })
  const sc = start()
  const closed = once(sc, 'close', { rejectOnError: false })
  const err = await once(sc, 'error')
  assert.equal(err.code, 'SERVER_ERROR')
  await closed
})

test('a connect refused by the server carries its text and code', async () => {
  double.injectNext('ConnectResponse', { error: 'stan: clientID already registered' })
  const sc = start()
  const err = await once(sc, 'error')
  assert.equal(err.code, 'CLIENT_ID_IN_USE')
  assert.equal(err.message, 'stan: clientID already registered')
})

test('a malformed PubAck is ignored: that publish times out with PUB_ACK_TIMEOUT, the next one succeeds', async () => {
  const sc = await connect({ ackTimeout: 300 })
  const channel = unique('garbled')
  double.injectNext('PubAck', { raw: Buffer.from([0xff, 0xff, 0xff]) })
  await assert.rejects(publish(sc, channel, 'lost ack'), (err) => err.code === 'PUB_ACK_TIMEOUT')
  assert.equal(typeof await publish(sc, channel, 'fine'), 'string')
})

test('a publish the server refuses fails with PUBLISH_FAILED and the server text', async () => {
  const sc = await connect()
  double.injectNext('PubAck', { error: 'too many channels' })
  await assert.rejects(publish(sc, unique('full'), 'x'), (err) => {
    assert.equal(err.code, 'PUBLISH_FAILED')
    assert.equal(err.message, 'too many channels')
    return true
  })
  assert.equal(typeof await publish(sc, unique('fine'), 'x'), 'string')
})

test('a malformed MsgProto is reported on the connection; the subscription keeps delivering', async () => {
  const sc = await connect()
  const channel = unique('noisy')
  const sub = sc.subscribe(channel)
  await once(sub, 'ready')
  const reported = once(sc, 'error', { rejectOnError: false })
  double.injectNext('MsgProto', { raw: Buffer.from([0x08]) })
  await publish(sc, channel, 'swallowed')
  assert.equal((await reported).code, 'SERVER_ERROR')
  const next = collect(sub, 1)
  await publish(sc, channel, 'delivered')
  assert.equal((await next)[0].getData(), 'delivered')
})

test('a subscription the server refuses emits error with its code; one it never answers emits timeout', async () => {
  const sc = await connect({ connectTimeout: 300 })
  double.injectNext('SubscriptionResponse', { error: 'too many subscriptions per channel' })
  const refused = sc.subscribe(unique('crowded'))
  const err = await once(refused, 'error')
  assert.equal(err.code, 'SUBSCRIBE_FAILED')
  assert.equal(err.message, 'too many subscriptions per channel')
  double.injectNext('SubscriptionResponse', { silent: true })
  const ignored = sc.subscribe(unique('ignored'))
  assert.equal((await once(ignored, 'timeout')).code, 'SUBSCRIBE_TIMEOUT')
  const fine = sc.subscribe(unique('fine'))
  await once(fine, 'ready')
})

test('server-side validation errors map to the codes jetstream gives', async () => {
  const sc = await connect()
  double.injectNext('SubscriptionResponse', { error: 'stan: invalid subject' })
  const err = await once(sc.subscribe(unique('x')), 'error')
  assert.equal(err.code, 'BAD_SUBJECT')
})

test('an unanswered unsubscribe emits error with SUBSCRIBE_TIMEOUT', async () => {
  const sc = await connect({ connectTimeout: 300 })
  const sub = sc.subscribe(unique('sticky'))
  await once(sub, 'ready')
  double.injectNext('SubscriptionResponse', { silent: true })
  sub.unsubscribe()
  const err = await once(sub, 'error')
  assert.equal(err.code, 'SUBSCRIBE_TIMEOUT')
  assert.equal(err.message, 'stan: unsubscribe request timeout')
})

test('a close the server refuses passes its error to close, as 0.3.2 does', async () => {
  const clientID = unique('refused-close')
  const sc = await connect({}, clientID)
  // Only this client's close: another test's connection may close meanwhile.
  double.injectNext('CloseResponse', { error: 'stan: unknown clientID', clientID })
  const closed = once(sc, 'close', { rejectOnError: false })
  sc.close()
  const err = await closed
  assert.equal(err.code, 'SERVER_ERROR')
  assert.equal(err.message, 'stan: unknown clientID')
})

test('a refused close whose error and close come in separate polls still passes its error to close', async () => {
  const clientID = unique('split-close')
  const sc = await connect({}, clientID)
  // The native side pushes the error, then the close: a poll may fall between.
  const poll = sc._native.poll.bind(sc._native)
  let rest = null
  sc._native.poll = () => {
    if (rest !== null) {
      const next = rest
      rest = null
      return next
    }
    const got = poll()
    const events = got.events ?? []
    const at = events.findIndex((event) => event.kind === 'close')
    if (at > 0 && events.some((event) => event.kind === 'close_error')) {
      rest = { events: events.slice(at) }
      setImmediate(() => sc._onWake())
      return { ...got, events: events.slice(0, at) }
    }
    return got
  }
  double.injectNext('CloseResponse', { error: 'stan: unknown clientID', clientID })
  const closed = once(sc, 'close', { rejectOnError: false })
  sc.close()
  const err = await closed
  assert.equal(err?.code, 'SERVER_ERROR')
  assert.equal(err.message, 'stan: unknown clientID')
})

test('a server that forgot the client answers pings with an error: connection_lost with its text, then close', async () => {
  const clientID = unique('forgotten')
  const sc = await connect({ stanPingInterval: 1000 }, clientID)
  const lost = once(sc, 'connection_lost', { rejectOnError: false })
  const closed = once(sc, 'close', { rejectOnError: false })
  double.forget(clientID)
  const err = await lost
  assert.equal(err.code, 'CONNECTION_LOST')
  assert.equal(err.message, 'client has been replaced or is no longer registered')
  await closed
})

test('streams, consumers and KV need JetStream: NOT_SUPPORTED', async () => {
  const sc = await connect()
  await assert.rejects(sc.streams.list(), (err) => err.code === 'NOT_SUPPORTED')
  await assert.rejects(sc.kv('bucket'), (err) => err.code === 'NOT_SUPPORTED')
  assert.equal(typeof await publish(sc, unique('still'), 'usable'), 'string')
})
