'use strict'

// The original node-nats-streaming 0.3.2 behind the shape the conformance
// scenarios assert on, so the same files can run it against the STAN test
// double (BACKEND=original) and prove the double and the scenarios right.
//
// Only error *shapes* are adapted: 0.3.2 hands some errors over as plain
// strings and none carries a code, so each error becomes an Error whose
// `code` is the one jetstan documents for that exact 0.3.2 text. Behaviour
// (events, ordering, timing, delivery) is the original's, untouched.

const original = require('node-nats-streaming')

const CODES = new Map([
  ['stan: clientID already registered', 'CLIENT_ID_IN_USE'],
  ['stan: invalid clientID: only alphanumeric and `-` or `_` characters allowed', 'BAD_CLIENT_ID'],
  ['stan: duplicate durable registration', 'DUPLICATE_DURABLE'],
  ['stan: connect request timeout', 'CONNECT_TIMEOUT'],
  ['stan: subscribe request timeout', 'SUBSCRIBE_TIMEOUT'],
  ['stan: publish ack timeout', 'PUB_ACK_TIMEOUT'],
  ['stan: connection lost due to PING failure', 'CONNECTION_LOST'],
  ['stan: Connection closed', 'CONNECTION_CLOSED'],
  ['stan: invalid subscription', 'BAD_SUBSCRIPTION']
])

function adapt (err) {
  if (err === undefined || err === null) return err
  const error = err instanceof Error ? err : new Error(String(err))
  // Some 0.3.2 errors carry their text as `code`; those get the real one.
  if (typeof error.code !== 'string' || !/^[A-Z_]+$/.test(error.code)) {
    error.code = CODES.get(error.message) ?? 'UNMAPPED'
  }
  return error
}

const ERROR_EVENTS = new Set(['error', 'connection_lost', 'timeout'])

function adaptEmitter (emitter) {
  const emit = emitter.emit
  emitter.emit = function (event, ...args) {
    if (ERROR_EVENTS.has(event) && args.length > 0) args[0] = adapt(args[0])
    return emit.call(this, event, ...args)
  }
  return emitter
}

function connect (clusterID, clientID, opts) {
  const sc = adaptEmitter(original.connect(clusterID, clientID, opts))
  const subscribe = sc.subscribe
  sc.subscribe = function (...args) { return adaptEmitter(subscribe.apply(this, args)) }
  const publish = sc.publish
  sc.publish = function (subject, data, callback) {
    if (typeof callback !== 'function') return publish.call(this, subject, data, callback)
    return publish.call(this, subject, data, (err, guid) => callback(adapt(err), guid))
  }
  return sc
}

module.exports = { ...original, connect }
