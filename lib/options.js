'use strict'

// Maps node-nats-streaming 0.3.2's `connect()` inputs (a port, a URL, or an
// options object with aliases) onto the effective options (`sc.options`) and
// the native ConnectOptions. Bad values throw a StanError with code BAD_OPTION.

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
const STRING_OPTIONS = ['url', 'name', 'user', 'pass', 'token', 'discoverPrefix', 'stanEncoding', 'backend']
const BOOLEAN_OPTIONS = ['noRandomize', 'reconnect', 'waitOnFirstConnect', 'autoCreateStreams']
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
  if (options.servers !== undefined &&
      (!Array.isArray(options.servers) || options.servers.some((s) => typeof s !== 'string'))) {
    throw badOption("option 'servers' must be an array of strings")
  }
}

function effectiveOptions (opts) {
  const options = { ...DEFAULTS }
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
  if (options.tls !== undefined && options.tls !== false) {
    throw badOption("option 'tls' is not supported yet")
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
    connectTimeoutMs: Math.ceil(options.connectTimeout),
    ackTimeoutMs: Math.ceil(options.ackTimeout),
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

module.exports = { parseConnectArgs, DEFAULTS }
