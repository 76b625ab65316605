'use strict'

// The STAN test double (testing/stan-double) proven by the original
// node-nats-streaming 0.3.2 client: the same scenarios the package's own
// suite runs against a real nats-streaming-server. Also the double's codec
// against the reference's test vectors, and a decoder fuzz run.

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const original = require('node-nats-streaming')
const { startServer } = require('../testing/nats-server')
const { StanDouble, STAN_ERRORS } = require('../testing/stan-double/server')
const { encode, decode, DecodeError } = require('../testing/stan-double/codec')
const { unique, once, quietPeriod } = require('./helpers')

const CLUSTER = 'double-cluster'
let server
let double
const open = new Set()

before(async () => {
  server = await startServer()
  double = await new StanDouble({ url: server.url, clusterID: CLUSTER, probeTimeoutMs: 250 }).start()
})
after(async () => {
  for (const sc of open) {
    const closed = once(sc, 'close', { rejectOnError: false })
    sc.close()
    await closed
  }
  await double.stop()
  await server.stop()
})

async function connect (clientID = unique('orig'), opts = {}) {
  const sc = original.connect(CLUSTER, clientID, { url: server.url, ...opts })
  await once(sc, 'connect')
  open.add(sc)
  sc.once('close', () => open.delete(sc))
  return sc
}

function publish (sc, subject, data) {
  return new Promise((resolve, reject) => {
    const returned = sc.publish(subject, data, (err, guid) => (err ? reject(err) : resolve({ guid, returned })))
  })
}

function messages (sub, count) {
  return new Promise((resolve) => {
    const got = []
    sub.on('message', (m) => { got.push(m); if (got.length === count) resolve(got) })
  })
}

async function closeConn (sc) {
  const closed = once(sc, 'close', { rejectOnError: false })
  sc.close()
  await closed
}

describe('node-nats-streaming 0.3.2 against the double', () => {
  test('B4/B5: publish returns the guid its callback gets, with no subscriber', async () => {
    const sc = await connect()
    const { guid, returned } = await publish(sc, unique('ch'), 'x')
    assert.equal(guid, returned)
  })

  test('B27: deliver-all from sequence 1 with ms timestamps', async () => {
    const sc = await connect()
    const ch = unique('ch')
    for (const w of ['first', 'second', 'third']) await publish(sc, ch, w)
    const sub = sc.subscribe(ch, sc.subscriptionOptions().setDeliverAllAvailable())
    const got = await messages(sub, 3)
    assert.deepEqual(got.map((m) => m.getData()), ['first', 'second', 'third'])
    assert.deepEqual(got.map((m) => m.getSequence()), [1, 2, 3])
    for (const m of got) {
      assert.equal(m.getTimestamp().getTime(), parseInt(m.getTimestampRaw() / 1e6))
      assert.equal(m.isRedelivered(), false)
    }
  })

  test('B22/B23/B26: at a sequence, last received, new only', async () => {
    const sc = await connect()
    const ch = unique('ch')
    for (const w of ['first', 'second', 'third']) await publish(sc, ch, w)
    const [bySeq] = await messages(sc.subscribe(ch, sc.subscriptionOptions().setStartAtSequence(2)), 1)
    assert.equal(bySeq.getData(), 'second')
    const [last] = await messages(sc.subscribe(ch, sc.subscriptionOptions().setStartWithLastReceived()), 1)
    assert.equal(last.getData(), 'third')
    const fresh = sc.subscribe(ch)
    await once(fresh, 'ready')
    const next = messages(fresh, 1)
    await publish(sc, ch, 'fourth')
    assert.equal((await next)[0].getData(), 'fourth')
  })

  test('B29: a durable resumes on a new connection after the acked messages', async () => {
    const id = unique('dur')
    const ch = unique('ch')
    let sc = await connect(id)
    for (const w of ['one', 'two', 'three']) await publish(sc, ch, w)
    const opts = (c) => c.subscriptionOptions().setDurableName('my-durable').setManualAckMode(true).setDeliverAllAvailable()
    const got = await messages(sc.subscribe(ch, opts(sc)), 3)
    got[0].ack()
    got[1].ack()
    await closeConn(sc)
    sc = await connect(id)
    const [resumed] = await messages(sc.subscribe(ch, opts(sc)), 1)
    assert.equal(resumed.getSequence(), 3)
    assert.equal(resumed.isRedelivered(), true)
  })

  test('B28: a queue group shares the messages', async () => {
    const sc = await connect()
    const ch = unique('ch')
    const members = [sc.subscribe(ch, 'queue'), sc.subscribe(ch, 'queue')]
    await Promise.all(members.map((m) => once(m, 'ready')))
    const counts = [0, 0]
    members.forEach((m, i) => m.on('message', () => counts[i]++))
    for (let i = 0; i < 10; i++) await publish(sc, ch, `m${i}`)
    await quietPeriod(200)
    assert.equal(counts[0] + counts[1], 10)
    assert.ok(counts[0] > 0 && counts[1] > 0)
  })

  test('B34: a durable queue member leaving without acking hands the message over, redelivered', async () => {
    const sc = await connect()
    const ch = unique('ch')
    const opts = () => sc.subscriptionOptions().setDurableName('my-durable').setManualAckMode(true).setMaxInFlight(1)
    const first = sc.subscribe(ch, 'q', opts())
    await once(first, 'ready')
    const gotFirst = messages(first, 1)
    await publish(sc, ch, 'hot potato')
    await gotFirst
    const second = sc.subscribe(ch, 'q', opts())
    await once(second, 'ready')
    const redelivered = messages(second, 1)
    first.close()
    const [m] = await redelivered
    assert.equal(m.isRedelivered(), true)
    assert.ok(m.getRedeliveryCount() > 0)
  })

  test('an unacked message comes back after ackWait with a redelivery count', async () => {
    const sc = await connect()
    const ch = unique('ch')
    const sub = sc.subscribe(ch, sc.subscriptionOptions().setManualAckMode(true).setAckWait(1000))
    await once(sub, 'ready')
    const two = messages(sub, 2)
    await publish(sc, ch, 'again')
    const [a, b] = await two
    assert.equal(a.getSequence(), b.getSequence())
    assert.equal(b.isRedelivered(), true)
    assert.equal(b.getRedeliveryCount(), 1)
    b.ack()
  })

  test('B7: a live client ID is refused with the server string', async () => {
    const id = unique('taken')
    await connect(id)
    const second = original.connect(CLUSTER, id, { url: server.url })
    const err = await once(second, 'error', { rejectOnError: false })
    assert.equal(String(err), STAN_ERRORS.CLIENT_ID_TAKEN)
  })

  test('B19/B20: unsubscribe, then a second one is an invalid subscription', async () => {
    const sc = await connect()
    const sub = sc.subscribe(unique('ch'))
    await once(sub, 'ready')
    const done = once(sub, 'unsubscribed')
    sub.unsubscribe()
    await done
    const err = await new Promise((resolve) => { sub.once('error', resolve); sub.unsubscribe() })
    assert.equal(err.message, 'stan: invalid subscription')
  })

  test('a wildcard channel is refused by the server with stan: invalid subject', async () => {
    const sc = await connect()
    const sub = sc.subscribe('foo.*')
    const err = await once(sub, 'error', { rejectOnError: false })
    assert.equal(err.message, STAN_ERRORS.INVALID_SUBJECT)
  })

  test('a client the server forgot gets connection_lost from its pings', async () => {
    const id = unique('forgotten')
    const sc = await connect(id, { stanPingInterval: 1000, stanMaxPingOut: 3 })
    const lost = once(sc, 'connection_lost', { rejectOnError: false, timeoutMs: 5000 })
    double._dropClient(double.clients.get(id))
    assert.equal(String(await lost), STAN_ERRORS.REPLACED)
  })
})

describe('the double codec', () => {
  const hex = (b) => Buffer.from(b).toString('hex')
  test('encodes the reference test vectors', () => {
    assert.equal(hex(encode('ConnectResponse', { publicKey: 'k' })), 'a206016b')
    assert.equal(hex(encode('PubAck', { guid: 'g1', error: 'e' })), '0a0267311201' + '65')
    assert.equal(hex(encode('MsgProto', { sequence: 1, subject: 'foo', data: Buffer.from('hi'), timestamp: 1700000000000000000n, redelivered: true, redeliveryCount: 2 })),
      '08011203666f6f2202686928' + '8080a8b1e39fe7cb17' + '30013802')
    assert.equal(hex(encode('SubscriptionResponse', { ackInbox: '_INBOX.a' })), '12085f494e424f582e61')
    assert.equal(encode('CloseResponse', {}).length, 0)
  })

  test('decodes the reference test vectors', () => {
    const req = decode('SubscriptionRequest', Buffer.from('0a026d651203666f6f22085f494e424f582e73288008301e50035805', 'hex'))
    assert.deepEqual([req.clientID, req.subject, req.inbox, req.maxInFlight, req.ackWaitInSecs, req.startPosition, req.startSequence],
      ['me', 'foo', '_INBOX.s', 1024, 30, 3, 5])
    assert.equal(decode('SubscriptionRequest', Buffer.from('50026080' + '94ebdc03', 'hex')).startTimeDelta, 1e9)
    const ping = decode('Ping', Buffer.from('0a026331', 'hex'))
    assert.equal(ping.connID.toString(), 'c1')
  })

  test('random and mutated frames decode or fail with DecodeError, never anything else', () => {
    const valid = encode('SubscriptionRequest', { clientID: 'me', subject: 'foo', inbox: '_INBOX.s', maxInFlight: 1024, ackWaitInSecs: 30, startPosition: 3, startSequence: 5 })
    let decoded = 0
    let rejected = 0
    for (let i = 0; i < 5000; i++) {
      let frame
      if (i % 2 === 0) {
        frame = crypto.randomBytes(i % 64)
      } else {
        frame = Buffer.from(valid)
        frame[i % frame.length] ^= 1 + (i % 255)
        if (i % 3 === 0) frame = frame.subarray(0, i % frame.length)
      }
      try {
        decode('SubscriptionRequest', frame)
        decoded++
      } catch (err) {
        assert.ok(err instanceof DecodeError, `unexpected ${err}`)
        rejected++
      }
    }
    assert.ok(decoded > 0 && rejected > 0)
  })
})
