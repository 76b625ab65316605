'use strict'

const { StanError } = require('./errors')

// The generated loader picks the .node file for this platform. A missing
// build is the first thing a fresh clone hits, so say how to fix it.
function load () {
  try {
    return require('../binding.js')
  } catch (err) {
    const missing = new StanError(
      'NATIVE_MISSING',
      `jetstan: the native addon is not built or cannot load (${err.message}). Run \`npm run build\` in the jetstan checkout.`
    )
    missing.cause = err
    throw missing
  }
}

module.exports = load()
