'use strict'

// Moving a service between a nats-streaming-server and JetStream by
// configuration: JETSTAN_BACKEND picks the backend (the option still wins),
// and connecting with the jetstream backend to a server that only runs STAN
// says so and how to switch.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { once, unique, useBothBackends, stan } = require('./helpers')

const CLUSTER = 'switch-cluster'
const ctx = useBothBackends(CLUSTER, { jetstream: false })

/** `stan.connect` with JETSTAN_BACKEND set for the (synchronous) option parsing only. */
function connectWithEnv (backend, cluster, opts) {
  process.env.JETSTAN_BACKEND = backend
  try {
    return ctx.track(stan.connect(cluster, unique('switch'), { url: ctx.server.url, ...opts }))
  } finally {
    delete process.env.JETSTAN_BACKEND
  }
}

test('the jetstream backend against a STAN-only server says how to switch', async () => {
  const err = await stan.connectAsync(CLUSTER, unique('switch'), { url: ctx.server.url }).catch((e) => e)
  assert.equal(err.code, 'JETSTREAM_NOT_ENABLED')
  assert.match(err.message, /a nats-streaming-server serves cluster 'switch-cluster' there: connect with backend: 'stan', or set JETSTAN_BACKEND=stan/)
  const elsewhere = await stan.connectAsync('no-stan-here', unique('switch'), { url: ctx.server.url }).catch((e) => e)
  assert.equal(elsewhere.code, 'JETSTREAM_NOT_ENABLED')
  assert.match(elsewhere.message, /enable JetStream on the server \(nats-server -js\)/)
})

test('JETSTAN_BACKEND=stan switches the same connect call; the backend option still wins', async () => {
  const sc = connectWithEnv('stan', CLUSTER)
  await once(sc, 'connect')
  assert.equal(sc.options.backend, 'stan')
  assert.equal(typeof await sc.publishAsync(unique('switched'), 'x'), 'string')
  await sc.close()
  const explicit = connectWithEnv('stan', CLUSTER, { backend: 'jetstream' })
  const err = await once(explicit, 'error', { rejectOnError: false })
  assert.equal(err.code, 'JETSTREAM_NOT_ENABLED')
  assert.throws(() => connectWithEnv('kafka', CLUSTER), { code: 'BAD_OPTION', message: /JETSTAN_BACKEND='kafka'/ })
})
