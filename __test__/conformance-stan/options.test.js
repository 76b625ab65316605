'use strict'

// The conformance scenarios of ../conformance/options.test.js on the stan
// backend, against the STAN test double (testing/stan-double).
process.env.BACKEND = 'stan'
require('../conformance/options.test.js')
