'use strict'

// What a secured nats-server needs, made at test time: a CA with a server
// certificate for 127.0.0.1 and a client certificate (@peculiar/x509), nkey
// users, and an operator → account → user JWT chain with its .creds file
// (@nats-io/jwt). No external CLI, nothing kept between runs.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { webcrypto } = require('node:crypto')
// @peculiar/x509 needs the Reflect metadata API loaded first.
require('reflect-metadata')
const x509 = require('@peculiar/x509')
const jwt = require('@nats-io/jwt')
const { startServer } = require('./nats-server')

x509.cryptoProvider.set(webcrypto)

const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
const DAY = 24 * 3600 * 1000

async function keyPem (keys) {
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY')
}

async function newKeys () {
  return webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])
}

/** A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM. */
async function makeCertificates () {
  const notBefore = new Date(Date.now() - DAY)
  const notAfter = new Date(Date.now() + DAY)
  const caKeys = await newKeys()
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=jetstan test CA',
    keys: caKeys,
    notBefore,
    notAfter,
    signingAlgorithm: EC,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey)
    ]
  })
  const issue = async (cn, usage, names) => {
    const keys = await newKeys()
    const extensions = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([usage]),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey)
    ]
    if (names) extensions.push(new x509.SubjectAlternativeNameExtension(names))
    const cert = await x509.X509CertificateGenerator.create({
      subject: `CN=${cn}`,
      issuer: ca.subject,
      notBefore,
      notAfter,
      signingAlgorithm: EC,
      publicKey: keys.publicKey,
      signingKey: caKeys.privateKey,
      extensions
    })
    return { cert: cert.toString('pem'), key: await keyPem(keys) }
  }
  const server = await issue('127.0.0.1', x509.ExtendedKeyUsage.serverAuth,
    [{ type: 'ip', value: '127.0.0.1' }, { type: 'dns', value: 'localhost' }])
  const client = await issue('jetstan test client', x509.ExtendedKeyUsage.clientAuth)
  return { ca: ca.toString('pem'), server, client }
}

const text = (bytes) => new TextDecoder().decode(bytes)

/** An nkey user: its public key for the server, its seed for the client. */
function nkeyUser () {
  const user = jwt.createUser()
  return { publicKey: user.getPublicKey(), seed: text(user.getSeed()) }
}

/**
 * Operator mode: the operator, system and account JWTs for the server (the
 * account with JetStream), and a .creds file for a user of that account.
 */
async function jwtChain () {
  const operator = jwt.createOperator()
  // JetStream in operator mode needs a system account.
  const system = jwt.createAccount()
  const account = jwt.createAccount()
  const user = jwt.createUser()
  const operatorJwt = await jwt.encodeOperator('jetstan-test', operator, { system_account: system.getPublicKey() })
  const systemJwt = await jwt.encodeAccount('SYS', system, {}, { signer: operator })
  const accountJwt = await jwt.encodeAccount('APP', account, {
    limits: {
      conn: -1, subs: -1, data: -1, payload: -1, imports: -1, exports: -1, leaf: -1, wildcards: true,
      mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1
    }
  }, { signer: operator })
  const userJwt = await jwt.encodeUser('app-user', user, account)
  // Signed by a stranger: a well-formed credential the server must refuse.
  const strangerJwt = await jwt.encodeUser('stranger', jwt.createUser(), jwt.createAccount())
  return {
    operatorJwt,
    systemPublicKey: system.getPublicKey(),
    systemJwt,
    accountPublicKey: account.getPublicKey(),
    accountJwt,
    creds: text(jwt.fmtCreds(userJwt, user)),
    strangerCreds: text(jwt.fmtCreds(strangerJwt, jwt.createUser()))
  }
}

/**
 * Starts a nats-server with `config` (the text of a server config file)
 * written into a temporary directory along with `files` ({ name: text }).
 * Resolves with the server and the directory's paths.
 */
async function startSecuredServer (config, files = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jetstan-secure-'))
  const paths = {}
  for (const [name, content] of Object.entries(files)) {
    paths[name] = path.join(dir, name)
    fs.writeFileSync(paths[name], content, { mode: 0o600 })
  }
  const configPath = path.join(dir, 'server.conf')
  fs.writeFileSync(configPath, typeof config === 'function' ? config(paths) : config)
  const server = await startServer({ extraArgs: ['-c', configPath] })
  const stop = server.stop.bind(server)
  server.stop = async () => {
    await stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return { server, paths }
}

module.exports = { makeCertificates, nkeyUser, jwtChain, startSecuredServer }
