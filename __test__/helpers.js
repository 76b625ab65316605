'use strict'

// Shared by the test files: one real nats-server per file (or NATS_URL),
// connections that are closed after each test, and event waits with a
// deadline instead of sleeps.

const { after, before } = require('node:test')
const crypto = require('node:crypto')
// BACKEND=original: the original node-nats-streaming 0.3.2 (error shapes
// adapted, see testing/original.js) on the STAN test double.
const ORIGINAL = process.env.BACKEND === 'original'
const stan = ORIGINAL ? require('../testing/original') : require('..')
const { startServer } = require('../testing/nats-server')
const { StanDouble } = require('../testing/stan-double/server')

const CLUSTER = 'test-cluster'
// The conformance files run against whichever backend BACKEND names.
const BACKEND_OPTIONS = process.env.BACKEND && !ORIGINAL ? { backend: process.env.BACKEND } : {}
/** Runs on the STAN test double (jetstan's stan backend, or the original client). */
const ON_DOUBLE = process.env.BACKEND === 'stan' || ORIGINAL
const EVENT_TIMEOUT_MS = 10000

function unique (prefix) {
  return `${prefix}-${crypto.randomBytes(6).toString('hex')}`
}

/** Resolves with the event's first argument; rejects on `error` or after the deadline. */
function once (emitter, event, { timeoutMs = EVENT_TIMEOUT_MS, rejectOnError = true } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup()
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'`))
    }, timeoutMs)
    const onEvent = (value) => { cleanup(); resolve(value) }
    const onError = (err) => { cleanup(); reject(err) }
    const cleanup = () => {
      clearTimeout(timer)
      emitter.off(event, onEvent)
      if (rejectOnError && event !== 'error') emitter.off('error', onError)
    }
    emitter.once(event, onEvent)
    if (rejectOnError && event !== 'error') emitter.once('error', onError)
  })
}

/** Resolves once `ms` passed: only for checking that nothing else arrives. */
function quietPeriod (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Collects `count` messages from a subscription. */
function collect (sub, count, { timeoutMs = EVENT_TIMEOUT_MS, rejectOnError = true } = {}) {
  return new Promise((resolve, reject) => {
    const messages = []
    const timer = setTimeout(() => {
      sub.off('message', onMessage)
      reject(new Error(`timed out with ${messages.length} of ${count} messages`))
    }, timeoutMs)
    const onMessage = (msg) => {
      messages.push(msg)
      if (messages.length === count) {
        clearTimeout(timer)
        sub.off('message', onMessage)
        resolve(messages)
      }
    }
    sub.on('message', onMessage)
    if (rejectOnError) sub.once('error', (err) => { clearTimeout(timer); reject(err) })
  })
}

/** Promise form of a publish with callback. */
function publish (sc, subject, data) {
  return new Promise((resolve, reject) => {
    sc.publish(subject, data, (err, guid) => (err ? reject(err) : resolve(guid)))
  })
}

/**
 * What the backend under test needs on top of nats-server at `url`: for
 * BACKEND=stan and BACKEND=original the STAN test double (a JS server-side of the protocol,
 * independent of jetstan's Rust client); nothing for jetstream.
 */
async function startBackend (url) {
  if (!ON_DOUBLE) return { reachable: async () => {}, stop: async () => {} }
  return new StanDouble({ url, clusterID: CLUSTER }).start()
}

/**
 * Starts a server for the calling test file (unless NATS_URL is set) and
 * returns a context whose `url` is valid inside tests. Every connection made
 * through `ctx.connect` is closed after the file.
 */
function useServer ({ extraArgs } = {}) {
  const ctx = { url: process.env.NATS_URL, server: null, backend: null, open: new Set() }
  before(async () => {
    if (ctx.url === undefined || extraArgs !== undefined) {
      ctx.server = await startServer({ extraArgs })
      ctx.url = ctx.server.url
    }
    ctx.backend = await startBackend(ctx.url)
  })
  after(async () => {
    await Promise.all([...ctx.open].map(closeQuietly))
    await ctx.backend?.stop()
    if (ctx.server !== null) await ctx.server.stop()
  })
  ctx.connect = async (opts = {}, clientID = unique('client')) => {
    const sc = stan.connect(CLUSTER, clientID, { url: ctx.url, ...BACKEND_OPTIONS, ...opts })
    ctx.open.add(sc)
    sc.once('close', () => ctx.open.delete(sc))
    await once(sc, 'connect')
    return sc
  }
  return ctx
}

/**
 * For files that test both backends side by side: a nats-server of their
 * own (JetStream unless `jetstream: false`) with the STAN test double for
 * `cluster` on it. `ctx.connect(backend, opts, clientID)` resolves once
 * connected; `ctx.track(sc)` has a connection made otherwise closed after the
 * file too.
 */
function useBothBackends (cluster, { jetstream = true } = {}) {
  const ctx = { server: null, double: null, open: new Set() }
  before(async () => {
    ctx.server = await startServer({ jetstream })
    ctx.double = await new StanDouble({ url: ctx.server.url, clusterID: cluster }).start()
  })
  after(async () => {
    await Promise.all([...ctx.open].filter((sc) => !sc.isClosed()).map(closeQuietly))
    await ctx.double?.stop()
    await ctx.server?.stop()
  })
  ctx.track = (sc) => {
    ctx.open.add(sc)
    return sc
  }
  ctx.connect = async (backend, opts = {}, clientID = unique(backend)) => {
    const sc = ctx.track(stan.connect(cluster, clientID, { url: ctx.server.url, backend, ...opts }))
    await once(sc, 'connect')
    return sc
  }
  return ctx
}

/** A timing or count a test reports without asserting on it: one JSON line. */
function figure (name, fields) {
  console.log(JSON.stringify({ test: name, ...fields }))
}

/** Closes a connection that has not emitted `close` yet and waits for it. */
async function closeQuietly (sc) {
  const closed = once(sc, 'close', { rejectOnError: false })
  sc.close()
  await closed
}

module.exports = { CLUSTER, BACKEND_OPTIONS, ORIGINAL, ON_DOUBLE, startBackend, unique, once, collect, publish, quietPeriod, useServer, useBothBackends, figure, closeQuietly, stan }
