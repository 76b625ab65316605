'use strict'

// The conformance scenarios of ../conformance/restart.test.js on the stan
// backend, against the STAN test double (testing/stan-double).
process.env.BACKEND = 'stan'
require('../conformance/restart.test.js')
