'use strict'

const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')
const { useServer, once, unique, stan, CLUSTER } = require('./helpers')

const ctx = useServer()

function portOf (url) {
  return Number(new URL(url).port)
}

describe('module surface', () => {
  test('exports version, connect and StartPosition as 0.3.2 does', () => {
    assert.equal(stan.version, require('../package.json').version)
    assert.equal(typeof stan.connect, 'function')
    assert.deepEqual({ ...stan.StartPosition },
      { NEW_ONLY: 0, LAST_RECEIVED: 1, TIME_DELTA_START: 2, SEQUENCE_START: 3, FIRST: 4 })
    assert.equal(stan.Stan, undefined)
  })

  test('ESM import exposes the same functions', async () => {
    const esm = await import('jetstan')
    assert.equal(esm.connect, stan.connect)
    assert.equal(esm.default.connect, stan.connect)
  })
})

describe('connect', () => {
  test('emits connect with the Stan object, and close with no error on close()', async () => {
    const sc = stan.connect(CLUSTER, unique('c'), { url: ctx.url })
    const connected = await once(sc, 'connect')
    assert.equal(connected, sc)
    assert.equal(sc.isClosed(), false)
    const closed = once(sc, 'close')
    sc.close()
    assert.equal(sc.isClosed(), true)
    assert.ok(!(await closed))
  })

  test('a second close() from the close handler is harmless', async () => {
    const sc = await ctx.connect()
    const closed = once(sc, 'close')
    sc.once('close', () => sc.close())
    sc.close()
    await closed
  })

  for (const [shape, opts] of [
    ['a URL string', (url) => url],
    ['an http:// URL from an old config', (url) => url.replace('nats://', 'http://')],
    ['host:port without a scheme', (url) => url.replace('nats://', '')],
    ['the uri alias', (url) => ({ uri: url })],
    ['a servers list', (url) => ({ servers: [url] })]
  ]) {
    test(`accepts ${shape}`, async () => {
      const sc = stan.connect(CLUSTER, unique('c'), opts(ctx.url))
      await once(sc, 'connect')
      const closed = once(sc, 'close')
      sc.close()
      await closed
    })
  }

  test('accepts a port number', async () => {
    const sc = stan.connect(CLUSTER, unique('c'), portOf(ctx.url))
    // 0.3.2 means localhost:<port>; our server listens on 127.0.0.1.
    await once(sc, 'connect')
    const closed = once(sc, 'close')
    sc.close()
    await closed
  })

  test('an unreachable server gives CONN_ERR, then close', async () => {
    const listener = net.createServer()
    await new Promise((resolve) => listener.listen(0, '127.0.0.1', resolve))
    const port = listener.address().port
    await new Promise((resolve) => listener.close(resolve))
    const sc = stan.connect(CLUSTER, unique('c'), { url: `nats://127.0.0.1:${port}` })
    const closed = once(sc, 'close', { rejectOnError: false })
    const err = await once(sc, 'error')
    assert.ok(err instanceof Error)
    assert.equal(err.code, 'CONN_ERR')
    await closed
    assert.equal(sc.isClosed(), true)
  })

  test('a server that never answers gives CONNECT_TIMEOUT after connectTimeout', async () => {
    const sockets = new Set()
    const silent = net.createServer((socket) => sockets.add(socket))
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
    try {
      const sc = stan.connect(CLUSTER, unique('c'), {
        url: `nats://127.0.0.1:${silent.address().port}`,
        connectTimeout: 300
      })
      const closed = once(sc, 'close', { rejectOnError: false })
      const err = await once(sc, 'error')
      assert.equal(err.code, 'CONNECT_TIMEOUT')
      assert.equal(err.message, 'stan: connect request timeout')
      assert.deepEqual([err.clusterID, err.servers], [CLUSTER, [`nats://127.0.0.1:${silent.address().port}`]])
      await closed
    } finally {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => silent.close(resolve))
    }
  })

  test('close() while still connecting emits only close', async () => {
    const sc = stan.connect(CLUSTER, unique('c'), { url: ctx.url })
    let errored = false
    sc.on('error', () => { errored = true })
    const closed = once(sc, 'close', { rejectOnError: false })
    sc.close()
    await closed
    assert.equal(errored, false)
  })
})

describe('bad connect arguments throw BAD_OPTION', () => {
  const cases = [
    ['a missing cluster ID', () => stan.connect(undefined, 'c')],
    ['an empty client ID', () => stan.connect(CLUSTER, '')],
    ['a non-numeric connectTimeout', () => stan.connect(CLUSTER, 'c', { connectTimeout: 'soon' })],
    ['a negative ackTimeout', () => stan.connect(CLUSTER, 'c', { ackTimeout: -1 })],
    ['servers that are not strings', () => stan.connect(CLUSTER, 'c', { servers: [4222] })],
    ['a non-binary encoding', () => stan.connect(CLUSTER, 'c', { encoding: 'utf8' })],
    ['a JS NATS connection in nc', () => stan.connect(CLUSTER, 'c', { nc: {} })],
    ['an unknown backend', () => stan.connect(CLUSTER, 'c', { backend: 'kafka' })],
    ['a discoverPrefix that is not a string', () => stan.connect(CLUSTER, 'c', { backend: 'stan', discoverPrefix: 5 })],
    ['an unsupported URL scheme', () => stan.connect(CLUSTER, 'c', 'ftp://host:21')],
    ['options of the wrong type', () => stan.connect(CLUSTER, 'c', true)]
  ]
  for (const [name, call] of cases) {
    test(name, () => {
      assert.throws(call, (err) => err instanceof Error && err.code === 'BAD_OPTION')
    })
  }

  test('keeps 0.3.2 message texts for the ID checks', () => {
    assert.throws(() => stan.connect('', 'c'), { message: 'stan: cluster ID must be supplied' })
    assert.throws(() => stan.connect(CLUSTER, 7), { message: 'stan: client ID must be supplied' })
  })
})

test('when no native addon loads, one line says which platform and the ways out', () => {
  const { execFileSync } = require('node:child_process')
  const script = `
    const Module = require('node:module')
    const load = Module._load
    Module._load = function (request, ...rest) {
      if (request.endsWith('binding.js')) throw new Error('Cannot find module jetstan-linux-x64-musl')
      return load.call(this, request, ...rest)
    }
    try { require(${JSON.stringify(require('node:path').join(__dirname, '..', 'lib', 'native.js'))}) } catch (err) {
      console.log(JSON.stringify({ code: err.code, message: err.message, cause: err.cause?.message }))
    }`
  const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }))
  assert.equal(out.code, 'NATIVE_MISSING')
  assert.equal(out.message.includes('\n'), false)
  assert.match(out.message, new RegExp(`on ${process.platform}-${process.arch}`))
  assert.match(out.message, /\((glibc [0-9.]+|musl libc)\), Node .*: in this checkout run `npm run build` \(needs Rust: https:\/\/rustup\.rs\)$/)
  assert.match(out.cause, /jetstan-linux-x64-musl/)
})
