'use strict'

// node-nats-streaming 0.3.2's module surface: exactly these three exports at
// runtime, plus the error class for `instanceof` checks.
const { connect } = require('./lib/stan')
const { StartPosition } = require('./lib/subscription')
const { StanError } = require('./lib/errors')
const { version } = require('./package.json')

module.exports = { version, connect, StartPosition, StanError }
