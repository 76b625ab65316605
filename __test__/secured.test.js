'use strict'

// Secured servers: real nats-servers configured for each NATS auth mode and
// TLS form, with certificates, nkeys and JWTs made here. Each mode connects
// and publishes with an ack where the server requires it, and fails with its
// code where the server refuses; permission errors land on the callback or
// event they concern, and leave the connection usable.

const { describe, test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { credsAuthenticator } = require('@nats-io/transport-node')
const { StanDouble } = require('../testing/stan-double/server')
const { makeCertificates, nkeyUser, jwtChain, startSecuredServer } = require('../testing/secure')
const { once, unique, closeQuietly, stan } = require('./helpers')

const CLUSTER = 'secured-cluster'
const open = new Set()
const stops = []
let certs
let nkey
let chain

before(async () => {
  certs = await makeCertificates()
  nkey = nkeyUser()
  chain = await jwtChain()
})
after(async () => {
  await Promise.all([...open].filter((sc) => !sc.isClosed()).map(closeQuietly))
  for (const stop of stops.reverse()) await stop()
})

async function secured (config, files) {
  const { server, paths } = await startSecuredServer(config, files)
  stops.push(() => server.stop())
  return { server, paths, port: new URL(server.url).port }
}

async function withDouble (url, natsOptions) {
  const double = await new StanDouble({ url, clusterID: CLUSTER, natsOptions }).start()
  stops.push(() => double.stop())
  return double
}

/** Connects, publishes one message with its ack, and closes; resolves with the guid. */
async function roundTrip (opts, backend = 'jetstream') {
  const sc = await stan.connectAsync(CLUSTER, unique('sec'), { backend, ...opts })
  open.add(sc)
  try {
    return await sc.publishAsync(unique('ch'), 'hello')
  } finally {
    await sc.close()
  }
}

async function refused (opts, backend = 'jetstream') {
  try {
    const sc = await stan.connectAsync(CLUSTER, unique('sec'), { backend, connectTimeout: 3000, ...opts })
    open.add(sc)
    await sc.close()
  } catch (err) {
    return err
  }
  assert.fail('the server accepted the connection')
}

describe('user and password, token, nkey', () => {
  let userServer
  let tokenServer
  before(async () => {
    userServer = await secured(`
      authorization {
        users: [
          { user: alice, password: "s3cr#t", permissions: { publish: { deny: [
            "forbidden", "_STAN.pub.*.forbidden", "$JS.API.CONSUMER.CREATE.*.*.secret"
          ] } } },
          { user: double, password: "d0uble" },
          { nkey: ${nkey.publicKey} }
        ]
      }`)
    tokenServer = await secured('authorization { token: "t0ken" }')
    await withDouble(userServer.server.url, { user: 'double', pass: 'd0uble' })
    await withDouble(tokenServer.server.url, { token: 't0ken' })
  })

  for (const backend of ['jetstream', 'stan']) {
    test(`${backend}: user/pass from options, from the URL, and per server in servers[]`, async () => {
      const { port } = userServer
      assert.equal(typeof await roundTrip({ url: `nats://127.0.0.1:${port}`, user: 'alice', pass: 's3cr#t' }, backend), 'string')
      assert.equal(typeof await roundTrip({ url: `nats://alice:s3cr%23t@127.0.0.1:${port}` }, backend), 'string')
      assert.equal(typeof await roundTrip({ servers: [`nats://alice:s3cr%23t@127.0.0.1:${port}`] }, backend), 'string')
    })

    test(`${backend}: a wrong password or none is AUTH_FAILED, naming the server, never the password`, async () => {
      const { port } = userServer
      const wrong = await refused({ url: `nats://alice:wr0ng-pa55@127.0.0.1:${port}` }, backend)
      assert.equal(wrong.code, 'AUTH_FAILED')
      assert.match(wrong.message, new RegExp(`127\\.0\\.0\\.1:${port}`))
      assert.match(wrong.message, /user 'alice'/)
      assert.equal(wrong.message.includes('wr0ng-pa55'), false)
      // Who and where, as fields: the server list without the credentials.
      assert.deepEqual([wrong.clusterID, wrong.servers], [CLUSTER, [`nats://127.0.0.1:${port}`]])
      assert.match(wrong.clientID, /^sec-/)
      const none = await refused({ url: `nats://127.0.0.1:${port}` }, backend)
      assert.equal(none.code, 'AUTH_FAILED')
    })

    test(`${backend}: a publish the user may not make is PERMISSION_DENIED on its callback; the connection stays usable`, async () => {
      const sc = await stan.connectAsync(CLUSTER, unique('perm'), { backend, url: userServer.server.url, user: 'alice', pass: 's3cr#t' })
      open.add(sc)
      await assert.rejects(sc.publishAsync('forbidden', 'no'), { code: 'PERMISSION_DENIED' })
      const denied = await new Promise((resolve) => sc.publish('forbidden', 'no', (err) => resolve(err)))
      assert.equal(denied?.code, 'PERMISSION_DENIED')
      assert.equal(typeof await sc.publishAsync(unique('allowed'), 'yes'), 'string')
      assert.equal(sc.isClosed(), false)
      await sc.close()
    })
  }

  test('jetstream: a subscription the user may not make is PERMISSION_DENIED on its error event', async () => {
    const sc = await stan.connectAsync(CLUSTER, unique('perm'), { url: userServer.server.url, user: 'alice', pass: 's3cr#t' })
    open.add(sc)
    const sub = sc.subscribe('secret')
    const err = await once(sub, 'error', { timeoutMs: 5000 })
    assert.equal(err.code, 'PERMISSION_DENIED')
    const ok = sc.subscribe(unique('open'))
    await once(ok, 'ready')
    await sc.close()
  })

  for (const backend of ['jetstream', 'stan']) {
    test(`${backend}: a token from options and from the URL; a wrong one is AUTH_FAILED`, async () => {
      const { port } = tokenServer
      assert.equal(typeof await roundTrip({ url: `nats://127.0.0.1:${port}`, token: 't0ken' }, backend), 'string')
      assert.equal(typeof await roundTrip({ url: `nats://t0ken@127.0.0.1:${port}` }, backend), 'string')
      const wrong = await refused({ url: `nats://127.0.0.1:${port}`, token: 'nope' }, backend)
      assert.equal(wrong.code, 'AUTH_FAILED')
      assert.match(wrong.message, /with a token/)
      assert.equal(wrong.message.includes('nope'), false)
    })
  }

  test('an nkey seed signs the nonce; an unknown key is AUTH_FAILED', async () => {
    const url = userServer.server.url
    assert.equal(typeof await roundTrip({ url, nkeySeed: nkey.seed }), 'string')
    assert.equal(typeof await roundTrip({ url, nkeySeed: nkey.seed }, 'stan'), 'string')
    const stranger = nkeyUser()
    assert.equal((await refused({ url, nkeySeed: stranger.seed })).code, 'AUTH_FAILED')
  })
})

describe('decentralised auth: a .creds file', () => {
  let server
  let paths
  before(async () => {
    ({ server, paths } = await secured(`
      operator: "${chain.operatorJwt}"
      system_account: ${chain.systemPublicKey}
      resolver: MEMORY
      resolver_preload: {
        ${chain.systemPublicKey}: "${chain.systemJwt}"
        ${chain.accountPublicKey}: "${chain.accountJwt}"
      }
    `, { 'app.creds': chain.creds, 'stranger.creds': chain.strangerCreds }))
    await withDouble(server.url, { authenticator: credsAuthenticator(new TextEncoder().encode(chain.creds)) })
  })

  for (const backend of ['jetstream', 'stan']) {
    test(`${backend}: userCreds connects and publishes with an ack`, async () => {
      assert.equal(typeof await roundTrip({ url: server.url, userCreds: paths['app.creds'] }, backend), 'string')
    })
  }

  test('a user the operator does not know is AUTH_FAILED; a missing file is BAD_OPTION', async () => {
    assert.equal((await refused({ url: server.url, userCreds: paths['stranger.creds'] })).code, 'AUTH_FAILED')
    assert.throws(() => stan.connect(CLUSTER, unique('sec'), { url: server.url, userCreds: '/nonexistent/app.creds' }), { code: 'BAD_OPTION' })
  })
})

describe('TLS', () => {
  let tlsServer
  let mutualServer
  let firstServer
  const files = () => ({ 'ca.pem': certs.ca, 'server.pem': certs.server.cert, 'server-key.pem': certs.server.key })
  const tlsBlock = (extra) => (paths) => `
    tls {
      cert_file: "${paths['server.pem']}"
      key_file: "${paths['server-key.pem']}"
      ca_file: "${paths['ca.pem']}"
      ${extra}
    }`
  before(async () => {
    tlsServer = await secured(tlsBlock(''), files())
    mutualServer = await secured(tlsBlock('verify: true'), files())
    firstServer = await secured(tlsBlock('handshake_first: true'), files())
    await withDouble(tlsServer.server.url, { tls: { ca: certs.ca } })
  })

  for (const backend of ['jetstream', 'stan']) {
    test(`${backend}: a private CA as PEM text`, async () => {
      assert.equal(typeof await roundTrip({ url: tlsServer.server.url, tls: { ca: certs.ca } }, backend), 'string')
    })
  }

  test('a CA file path, and a tls:// URL', async () => {
    const { port, paths } = tlsServer
    assert.equal(typeof await roundTrip({ url: `tls://127.0.0.1:${port}`, tls: { ca: paths['ca.pem'] } }), 'string')
  })

  test('without the CA the handshake fails: TLS_ERROR; rejectUnauthorized: false lets it through', async () => {
    const { port } = tlsServer
    const err = await refused({ url: `tls://127.0.0.1:${port}` })
    assert.equal(err.code, 'TLS_ERROR')
    assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port}`))
    assert.equal(typeof await roundTrip({ url: `tls://127.0.0.1:${port}`, tls: { rejectUnauthorized: false } }), 'string')
  })

  test('mutual TLS: a client certificate connects; without one the server refuses', async () => {
    const url = mutualServer.server.url
    assert.equal(typeof await roundTrip({ url, tls: { ca: certs.ca, cert: certs.client.cert, key: certs.client.key } }), 'string')
    const err = await refused({ url, tls: { ca: certs.ca } })
    assert.ok(['TLS_ERROR', 'CONN_ERR'].includes(err.code), err.code)
  })

  test('handshakeFirst with a server that expects it; against one that does not, TLS_ERROR', async () => {
    assert.equal(typeof await roundTrip({ url: firstServer.server.url, tls: { ca: certs.ca, handshakeFirst: true } }), 'string')
    const err = await refused({ url: tlsServer.server.url, tls: { ca: certs.ca, handshakeFirst: true } })
    assert.equal(err.code, 'TLS_ERROR')
  })
})

describe('options jetstan does not take are refused, naming the alternative', () => {
  for (const [opts, pattern] of [
    [{ nkey: 'UABC', nonceSigner: () => '' }, /nkeySeed/],
    [{ userJWT: 'eyJ...' }, /userCreds/],
    [{ tokenHandler: () => 't' }, /'token'/],
    [{ maxPingOut: 3 }, /pingInterval/],
    [{ pedantic: true }, /pedantic/],
    [{ tls: { cert: 'x.pem' } }, /tls.cert/],
    [{ tls: { ca: '/nonexistent/ca.pem' } }, /cannot read/],
    [{ tls: { servername: 'x' } }, /tls.servername/],
    [{ nkeySeed: 'not-a-seed' }, /nkeySeed/]
  ]) {
    test(`${JSON.stringify(Object.keys(opts))} → BAD_OPTION`, () => {
      assert.throws(() => stan.connect(CLUSTER, unique('bad'), { url: 'nats://127.0.0.1:1', ...opts }),
        (err) => err.code === 'BAD_OPTION' && pattern.test(err.message))
    })
  }
})
