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

/** Native errors already carry `code`; give them our class so callers see one shape. */
function fromNative (err) {
  if (err instanceof StanError) return err
  const code = typeof err?.code === 'string' && err.code !== 'GenericFailure' ? err.code : 'INTERNAL'
  return new StanError(code, err?.message ?? String(err))
}

module.exports = { StanError, stanError, closedError, fromNative, text }
