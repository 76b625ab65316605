'use strict'

// node-nats-streaming 0.3.2's module surface (version, connect,
// StartPosition), then what jetstan adds: promise forms, the typed bus and
// the error class.
const { connect, connectAsync } = require('./lib/stan')
const { StartPosition } = require('./lib/subscription')
const { StanError } = require('./lib/errors')
const { Publisher, Listener, createBus, jsonCodec, taggedJsonCodec } = require('./lib/bus')
const { migrate } = require('./lib/migrate')
const { jetstreamNames } = require('./lib/native')
const { version } = require('./package.json')

module.exports = { version, connect, StartPosition, connectAsync, Publisher, Listener, createBus, jsonCodec, taggedJsonCodec, StanError, migrate, jetstreamNames }
