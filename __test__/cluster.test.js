'use strict'

// Failover in a 3-node JetStream cluster on loopback ports: SIGKILL of the
// stream's leader, then of the node the client is connected to, while
// publishing and consuming. The promise: no error callback, nothing acked is
// lost; duplicates (a resend whose first copy was stored) are counted.

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { startCluster } = require('../testing/nats-server')
const { once, unique, closeQuietly, stan } = require('./helpers')

const CLUSTER = 'cluster-test'
let cluster
const open = new Set()

before(async () => { cluster = await startCluster() })
after(async () => {
  await Promise.all([...open].filter((sc) => !sc.isClosed()).map(closeQuietly))
  await cluster?.stop()
})

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Retries `fn` until it resolves: the cluster elects its leaders after it starts. */
async function eventually (what, fn, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      return await fn()
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${err.message}`)
      await sleep(250)
    }
  }
}

async function connect (servers, clientID = unique('cluster')) {
  const sc = stan.connect(CLUSTER, clientID, { servers, noRandomize: true, reconnectTimeWait: 250 })
  open.add(sc)
  await once(sc, 'connect', { timeoutMs: 15000 })
  return sc
}

test('streamDefaults replicas: 3: an auto-created channel survives the loss of its leader', async () => {
  const sc = await eventually('connecting', async () => {
    const c = stan.connect(CLUSTER, unique('r3'), { servers: cluster.urls, reconnectTimeWait: 250, streamDefaults: { replicas: 3 } })
    open.add(c)
    await once(c, 'connect', { timeoutMs: 15000 })
    return c
  })
  const channel = unique('r3')
  const publishAll = (from, to) => Promise.all(Array.from({ length: to - from }, (_, i) => sc.publishAsync(channel, `m${from + i}`)))
  await eventually('the first publishes', () => publishAll(0, 50))
  const stream = `${CLUSTER}_${channel}`
  const info = await sc.streams.info(stream)
  assert.equal(info.config.num_replicas, 3)
  assert.equal(info.config.max_msgs, 1000000)
  const leader = cluster.nodes.findIndex((_, i) => info.cluster?.leader === `n${i}`)
  assert.ok(leader >= 0, 'the stream has a leader')
  await cluster.nodes[leader].kill()
  try {
    // Publishes wait out the election (resent until acked or ackTimeout).
    await publishAll(50, 100)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    const seen = new Set()
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${seen.size} of 100 messages after the kill`)), 30000)
      sub.on('message', (msg) => {
        seen.add(msg.getData())
        if (seen.size === 100) { clearTimeout(timer); resolve() }
      })
    })
    console.log(JSON.stringify({ test: 'r3-auto-created', published: 100, received: seen.size }))
    assert.equal(seen.size, 100)
  } finally {
    await cluster.nodes[leader].start()
    // The next test kills nodes too: the cluster must be whole again first.
    await eventually('the restarted node catching up', async () => {
      const healed = await sc.streams.info(stream)
      const peers = healed.cluster?.replicas ?? []
      if (peers.length < 2 || peers.some((peer) => !peer.current || peer.offline)) throw new Error('replicas not current yet')
    })
    await sc.close()
  }
})

test('killing the stream leader, then the client\'s node, gives no error callback and loses no acked message', async () => {
  const admin = await eventually('connecting', () => connect(cluster.urls))
  const channel = unique('failover')
  const stream = unique('failover').replace(/[^A-Za-z0-9_-]/g, '_')
  await eventually('creating an R3 stream', () => admin.streams.add({ name: stream, subjects: [channel], num_replicas: 3 }))
  const leaderIndex = async () => {
    const info = await admin.streams.info(stream)
    const index = cluster.nodes.findIndex((_, i) => info.cluster?.leader === `n${i}`)
    if (index < 0) throw new Error('no leader yet')
    return index
  }
  const leader = await eventually('finding the leader', leaderIndex)
  // The client talks to a node that is not the leader, so the two kills hit different nodes.
  const clientNode = (leader + 1) % cluster.nodes.length
  const order = [clientNode, ...cluster.nodes.keys()].filter((v, i, all) => all.indexOf(v) === i)
  const sc = await connect(order.map((i) => cluster.urls[i]))
  admin.close()

  const sub = sc.subscribe(channel, sc.subscriptionOptions().setDurableName('failover').setDeliverAllAvailable())
  await once(sub, 'ready')
  const received = new Map()
  let lastDelivery = Date.now()
  let longestPause = 0
  sub.on('message', (msg) => {
    const now = Date.now()
    longestPause = Math.max(longestPause, now - lastDelivery)
    lastDelivery = now
    const data = msg.getData()
    received.set(data, (received.get(data) ?? 0) + 1)
  })
  const acked = new Set()
  const errors = []
  const settled = []
  let published = 0
  const timer = setInterval(() => {
    const data = `m${published++}`
    settled.push(new Promise((resolve) => sc.publish(channel, data, (err) => {
      if (err) errors.push(`${err.code}: ${err.message}`)
      else acked.add(data)
      resolve()
    })))
  }, 5)

  await sleep(3000)
  const killedAt = Date.now()
  await cluster.nodes[leader].kill()
  await sleep(5000)
  await cluster.nodes[leader].start()
  // A second kill before the restarted node has caught up would leave the
  // cluster without a quorum: a test of the cluster, not of the client.
  await eventually('the restarted node catching up', async () => {
    const info = await sc.streams.info(stream)
    const peers = info.cluster?.replicas ?? []
    if (!info.cluster?.leader || peers.length < 2 || peers.some((peer) => !peer.current || peer.offline)) {
      throw new Error('replicas not current yet')
    }
  })
  await sleep(1000)
  await cluster.nodes[clientNode].kill()
  await sleep(6000)
  clearInterval(timer)
  await Promise.all(settled)
  const deadline = Date.now() + 30000
  while ([...acked].some((d) => !received.has(d)) && Date.now() < deadline) await sleep(100)

  const lost = [...acked].filter((d) => !received.has(d)).length
  const duplicated = [...received.values()].filter((n) => n > 1).length
  console.log(JSON.stringify({
    test: 'cluster-failover',
    published,
    acked: acked.size,
    errors: errors.length,
    error_codes: [...new Set(errors)],
    received: received.size,
    lost,
    duplicated,
    longest_delivery_pause_ms: longestPause,
    ms_from_first_kill_to_end: Date.now() - killedAt
  }))
  assert.equal(errors.length, 0, `error callbacks: ${[...new Set(errors)]}`)
  assert.equal(acked.size, published)
  assert.equal(lost, 0)
})
