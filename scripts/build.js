'use strict'

// `npm run build`: the release build of the addon. On a fresh clone the
// build tools (@napi-rs/cli) are not installed yet, so install them first.

const path = require('node:path')
const { ensureNpm, run, ROOT } = require('./ensure')

ensureNpm(ROOT)
run(path.join(ROOT, 'node_modules', '.bin', 'napi'), ['build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])
