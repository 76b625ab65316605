'use strict'

// Maps node-nats-streaming 0.3.2's `connect()` inputs (a port, a URL, or an
// options object with aliases) onto the effective options (`sc.options`) and
// the native ConnectOptions. Bad values throw a StanError with code BAD_OPTION.

const fs = require('node:fs')
const { stanError, text } = require('./errors')

const DEFAULTS = Object.freeze({
  url: 'nats://localhost:4222',
  connectTimeout: 2000,
  ackTimeout: 30000,
  discoverPrefix: '_STAN.discover',
  maxPubAcksInflight: 16384,
  stanEncoding: 'utf8',
  stanMaxPingOut: 3,
  stanPingInterval: 5000,
  maxReconnectAttempts: -1,
  reconnect: true,
  reconnectTimeWait: 2000,
  backend: 'jetstream'
})

// Alias → canonical, copied after the canonical key so the alias wins (0.3.2).
const ALIASES = [
  ['uri', 'url'],
  ['urls', 'servers'],
  ['client', 'name'],
  ['password', 'pass'],
  ['maxPubAcksInFlight', 'maxPubAcksInflight'],
  ['dontRandomize', 'noRandomize'],
  ['NoRandomize', 'noRandomize']
]

const NUMBER_OPTIONS = ['connectTimeout', 'ackTimeout', 'maxPubAcksInflight', 'stanMaxPingOut',
  'stanPingInterval', 'maxReconnectAttempts', 'reconnectTimeWait', 'port', 'pingInterval', 'maxPingOut']
const STRING_OPTIONS = ['url', 'name', 'user', 'pass', 'token', 'discoverPrefix', 'stanEncoding', 'backend',
  'nkeySeed', 'userCreds']
const BOOLEAN_OPTIONS = ['noRandomize', 'reconnect', 'waitOnFirstConnect', 'autoCreateStreams']

// Options of the NATS 1.x client that 0.3.2 passed through and jetstan does
// not take: each with what to use instead. Ignoring one silently would let a
// service believe it has what it asked for.
const REFUSED = {
  nkey: "pass the nkey's seed as 'nkeySeed': jetstan signs the server's nonce itself",
  nonceSigner: "pass the nkey's seed as 'nkeySeed': jetstan signs the server's nonce itself",
  userJWT: "pass a credentials file (JWT and seed) as 'userCreds'",
  tokenHandler: "pass the token as 'token'",
  maxPingOut: "the NATS link drops a connection after 2 unanswered pings; tune 'pingInterval', or 'stanMaxPingOut' for the STAN-level check",
  yieldTime: 'jetstan parses messages off the JS thread, so there is nothing to yield',
  useOldRequestStyle: 'jetstan always uses one inbox subscription for requests'
}
// Debug modes of the NATS protocol: accepted when off.
const ONLY_OFF = ['pedantic', 'verbose']
const TLS_KEYS = ['ca', 'cert', 'key', 'rejectUnauthorized', 'handshakeFirst']
const STREAM_DEFAULT_KEYS = ['maxMsgs', 'maxBytes', 'maxAge', 'replicas', 'storage', 'discard']
const BACKENDS = ['jetstream', 'stan']

function badOption (message) {
  return stanError('BAD_OPTION', `stan: ${message}`)
}

function checkTypes (options) {
  for (const key of NUMBER_OPTIONS) {
    const value = options[key]
    if (value === undefined) continue
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw badOption(`option '${key}' must be a number, got ${typeof value}`)
    }
    if (key !== 'maxReconnectAttempts' && value <= 0) {
      throw badOption(`option '${key}' must be greater than 0`)
    }
  }
  for (const key of STRING_OPTIONS) {
    if (options[key] !== undefined && typeof options[key] !== 'string') {
      throw badOption(`option '${key}' must be a string, got ${typeof options[key]}`)
    }
  }
  for (const key of BOOLEAN_OPTIONS) {
    if (options[key] !== undefined && typeof options[key] !== 'boolean') {
      throw badOption(`option '${key}' must be a boolean, got ${typeof options[key]}`)
    }
  }
  if (options.logger !== undefined && typeof options.logger !== 'function') {
    throw badOption("option 'logger' must be a function taking one log line")
  }
  if (options.servers !== undefined &&
      (!Array.isArray(options.servers) || options.servers.some((s) => typeof s !== 'string'))) {
    throw badOption("option 'servers' must be an array of strings")
  }
}

// JETSTAN_BACKEND flips a deployment between servers without code changes;
// a `backend` option still wins.
function defaults () {
  const fromEnv = process.env.JETSTAN_BACKEND
  if (fromEnv === undefined || fromEnv === '') return { ...DEFAULTS }
  if (!BACKENDS.includes(fromEnv)) {
    throw badOption(`JETSTAN_BACKEND='${fromEnv}' is not a backend (expected ${BACKENDS.join(' or ')})`)
  }
  return { ...DEFAULTS, backend: fromEnv }
}

function effectiveOptions (opts) {
  const options = defaults()
  if (opts === undefined || opts === null) return options
  if (typeof opts === 'number') {
    options.url = `nats://localhost:${opts}`
    return options
  }
  if (typeof opts === 'string') {
    options.url = opts
    return options
  }
  if (typeof opts !== 'object') {
    throw badOption(`options must be an object, a URL or a port, got ${typeof opts}`)
  }
  for (const [key, value] of Object.entries(opts)) {
    if (value !== undefined) options[key] = value
  }
  if (opts.port !== undefined && opts.url === undefined && opts.uri === undefined) {
    options.url = `nats://localhost:${opts.port}`
  }
  for (const [alias, canonical] of ALIASES) {
    if (opts[alias] !== undefined) options[canonical] = opts[alias]
  }
  return options
}

/** Returns `{ options, native }` or throws a StanError. */
function parseConnectArgs (clusterID, clientID, opts) {
  if (typeof clusterID !== 'string' || clusterID.length === 0) {
    throw stanError('BAD_OPTION', text.BAD_CLUSTER_ID)
  }
  if (typeof clientID !== 'string' || clientID.length === 0) {
    throw stanError('BAD_OPTION', text.BAD_CLIENT_ID)
  }
  const options = effectiveOptions(opts)
  checkTypes(options)
  if (options.encoding !== undefined && options.encoding !== 'binary') {
    throw stanError('BAD_OPTION', text.BINARY_ENCODING_REQUIRED)
  }
  if (options.nc !== undefined) {
    throw badOption("option 'nc' is not supported: jetstan owns its NATS connection in Rust; pass 'url' or 'servers' instead")
  }
  if (!BACKENDS.includes(options.backend)) {
    throw badOption(`unknown backend '${options.backend}' (expected one of ${BACKENDS.join(', ')})`)
  }
  for (const [key, instead] of Object.entries(REFUSED)) {
    if (options[key] !== undefined && options[key] !== false) {
      throw badOption(`option '${key}' is not supported: ${instead}`)
    }
  }
  for (const key of ONLY_OFF) {
    if (options[key] !== undefined && options[key] !== false) {
      throw badOption(`option '${key}' is not supported (a NATS protocol debug mode); leave it off`)
    }
  }
  const servers = options.servers !== undefined && options.servers.length > 0
    ? options.servers
    : [options.url]
  const native = {
    clusterId: clusterID,
    clientId: clientID,
    servers,
    name: options.name,
    user: options.user,
    pass: options.pass,
    token: options.token,
    nkeySeed: nkeySeed(options.nkeySeed),
    credentials: options.userCreds === undefined ? undefined : readFile(options.userCreds, 'userCreds'),
    tls: tlsOptions(options.tls),
    pingIntervalMs: options.pingInterval === undefined ? undefined : Math.ceil(options.pingInterval),
    streamDefaults: streamDefaults(options.streamDefaults, options.backend),
    logger: options.logger !== undefined,
    connectTimeoutMs: Math.ceil(options.connectTimeout),
    ackTimeoutMs: Math.ceil(options.ackTimeout),
    // Whole, 1 to 2^32 - 1: what the native side takes.
    maxPubAcksInflight: Math.min(2 ** 32 - 1, Math.max(1, Math.trunc(options.maxPubAcksInflight))),
    maxReconnectAttempts: options.reconnect === false ? 0 : Math.trunc(options.maxReconnectAttempts),
    reconnectTimeWaitMs: Math.ceil(options.reconnectTimeWait),
    noRandomize: options.noRandomize,
    autoCreateStreams: options.autoCreateStreams,
    stanPingIntervalMs: Math.ceil(options.stanPingInterval),
    stanMaxPingOut: Math.max(1, Math.trunc(options.stanMaxPingOut)),
    waitOnFirstConnect: options.waitOnFirstConnect,
    backend: options.backend,
    discoverPrefix: options.discoverPrefix
  }
  return { options, native }
}

function readFile (file, what) {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch (err) {
    throw badOption(`option '${what}': cannot read '${file}': ${err.code ?? err.message}`)
  }
}

function nkeySeed (seed) {
  if (seed === undefined) return undefined
  // A user seed: never echo it back in a message.
  if (!/^SU[A-Z2-7]{56}$/.test(seed.trim())) throw badOption("option 'nkeySeed' must be a user nkey seed (SU…)")
  return seed.trim()
}

/** A PEM string as given, or the contents of the file it names. */
function pem (value, what) {
  if (Buffer.isBuffer(value)) return value.toString('utf8')
  if (typeof value !== 'string' || value === '') {
    throw badOption(`option 'tls.${what}' must be PEM text or a file path`)
  }
  return value.includes('-----BEGIN') ? value : readFile(value, `tls.${what}`)
}

/** `tls: true | { ca, cert, key, rejectUnauthorized, handshakeFirst }`, as nats.js takes it. */
function tlsOptions (tls) {
  if (tls === undefined || tls === false) return undefined
  if (tls === true) return {}
  if (typeof tls !== 'object' || tls === null) throw badOption("option 'tls' must be true or an object")
  for (const key of Object.keys(tls)) {
    if (!TLS_KEYS.includes(key)) throw badOption(`option 'tls.${key}' is not supported (expected ${TLS_KEYS.join(', ')})`)
  }
  for (const key of ['rejectUnauthorized', 'handshakeFirst']) {
    if (tls[key] !== undefined && typeof tls[key] !== 'boolean') throw badOption(`option 'tls.${key}' must be a boolean`)
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) throw badOption("options 'tls.cert' and 'tls.key' go together")
  return {
    ca: tls.ca === undefined ? undefined : pem(tls.ca, 'ca'),
    cert: tls.cert === undefined ? undefined : pem(tls.cert, 'cert'),
    key: tls.key === undefined ? undefined : pem(tls.key, 'key'),
    verify: tls.rejectUnauthorized !== false,
    handshakeFirst: tls.handshakeFirst === true
  }
}

/** A whole number of at least 1, or -1 for no limit. */
function limit (value, what) {
  if (value === undefined) return undefined
  if (!Number.isSafeInteger(value) || (value < 1 && value !== -1)) {
    throw badOption(`option 'streamDefaults.${what}' must be a whole number ≥ 1, or -1 for no limit`)
  }
  return value
}

function streamDefaults (defaults, backend) {
  if (defaults === undefined) return undefined
  if (backend !== 'jetstream') {
    throw badOption("option 'streamDefaults' applies to the jetstream backend; a nats-streaming-server's channel limits are its own configuration")
  }
  if (typeof defaults !== 'object' || defaults === null) throw badOption("option 'streamDefaults' must be an object")
  for (const key of Object.keys(defaults)) {
    if (!STREAM_DEFAULT_KEYS.includes(key)) {
      throw badOption(`option 'streamDefaults.${key}' is not supported (expected ${STREAM_DEFAULT_KEYS.join(', ')})`)
    }
  }
  const { maxAge, replicas, storage, discard } = defaults
  if (maxAge !== undefined && (!Number.isSafeInteger(maxAge) || maxAge < 0)) {
    throw badOption("option 'streamDefaults.maxAge' must be milliseconds ≥ 0 (0: no limit)")
  }
  if (replicas !== undefined && (!Number.isInteger(replicas) || replicas < 1 || replicas > 5)) {
    throw badOption("option 'streamDefaults.replicas' must be 1 to 5")
  }
  if (storage !== undefined && !['file', 'memory'].includes(storage)) {
    throw badOption("option 'streamDefaults.storage' must be 'file' or 'memory'")
  }
  if (discard !== undefined && !['old', 'new'].includes(discard)) {
    throw badOption("option 'streamDefaults.discard' must be 'old' or 'new'")
  }
  return {
    maxMsgs: limit(defaults.maxMsgs, 'maxMsgs'),
    maxBytes: limit(defaults.maxBytes, 'maxBytes'),
    maxAgeMs: maxAge,
    replicas,
    storage,
    discard
  }
}

module.exports = { parseConnectArgs, DEFAULTS }
