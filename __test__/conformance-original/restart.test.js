'use strict'

// The conformance scenarios of ../conformance/restart.test.js run by the
// original node-nats-streaming 0.3.2 against the STAN test double: what
// proves the double (and the scenarios) right. See testing/original.js.
process.env.BACKEND = 'original'
require('../conformance/restart.test.js')
