'use strict'

/**
 * Every error jetstan hands to application code is an `Error` with a stable
 * `code`; `message` keeps node-nats-streaming 0.3.2's text where it had one.
 */
class StanError extends Error {
  constructor (code, message) {
    super(message)
    this.name = 'StanError'
    this.code = code
  }
}

const text = Object.freeze({
  BAD_CLUSTER_ID: 'stan: cluster ID must be supplied',
  BAD_CLIENT_ID: 'stan: client ID must be supplied',
  BINARY_ENCODING_REQUIRED: "stan: NATS connection encoding must be 'binary'.",
  BAD_SUBJECT: 'stan: subject must be supplied',
  CONNECTION_CLOSED: 'stan: Connection closed',
  MAX_IN_FLIGHT: 'stan: max in flight reached.',
  BAD_SUBSCRIPTION: 'stan: invalid subscription'
})

function stanError (code, message) {
  return new StanError(code, message)
}

function closedError () {
  return new StanError('CONNECTION_CLOSED', text.CONNECTION_CLOSED)
}

const CODE = /^[A-Z][A-Z_]*$/

/**
 * Native errors carry their stable code in `code` (sync calls and events) or,
 * for rejected native promises, in `cause.message` (napi's async rejections
 * only allow its own status codes). Either way callers get one shape.
 */
function fromNative (err) {
  if (err instanceof StanError) return err
  let code = 'INTERNAL'
  if (typeof err?.code === 'string' && CODE.test(err.code)) code = err.code
  else if (typeof err?.cause?.message === 'string' && CODE.test(err.cause.message)) code = err.cause.message
  return new StanError(code, err?.message ?? String(err))
}

/**
 * Runs a user callback so that a throw cannot cut short the work around it
 * (the rest of a poll, the other pending callbacks): the error is rethrown
 * on the next tick, where it surfaces as `uncaughtException` would have.
 */
function guarded (fn, a, b) {
  try {
    fn(a, b)
  } catch (err) {
    process.nextTick(rethrow, err)
  }
}

function rethrow (err) { throw err }

function emitGuarded (emitter, event, value) {
  try {
    if (value === undefined) emitter.emit(event)
    else emitter.emit(event, value)
  } catch (err) {
    process.nextTick(rethrow, err)
  }
}

module.exports = { StanError, stanError, closedError, fromNative, text, guarded, emitGuarded }
