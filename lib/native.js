'use strict'

const { StanError } = require('./errors')
const { missingMessage } = require('./platform')

// The generated loader picks the .node file or jetstan-<platform> package for
// this platform. When none loads, say in one line which platform this is and
// the ways out; the loader's own account is kept as `cause`.
function load () {
  try {
    return require('../binding.js')
  } catch (err) {
    const missing = new StanError('NATIVE_MISSING', missingMessage())
    missing.cause = err
    throw missing
  }
}

module.exports = load()
