'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')
const { useServer } = require('./helpers')

const ctx = useServer()
const EXIT_DEADLINE_MS = 5000

/** Runs the fixture; resolves with its output once it exits, fails if it outlives the deadline. */
function runChild (args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'connect-and-close.js'), ...args],
      { stdio: ['ignore', 'pipe', 'inherit'] })
    let output = ''
    child.stdout.on('data', (chunk) => { output += chunk })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`child still running ${EXIT_DEADLINE_MS} ms after start; output so far: ${output}`))
    }, EXIT_DEADLINE_MS)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, output })
    })
  })
}

test('a process that connects, subscribes, publishes and closes exits by itself', async () => {
  const { code, output } = await runChild([ctx.url, 'full'])
  assert.equal(code, 0)
  assert.match(output, /received hello/)
  assert.match(output, /closed/)
})

test('a process that unsubscribes before closing exits by itself', async () => {
  const { code, output } = await runChild([ctx.url, 'unsubscribe-first'])
  assert.equal(code, 0)
  assert.match(output, /received hello\nclosed/)
})

test('a process that only connects and closes exits by itself', async () => {
  const { code, output } = await runChild([ctx.url, 'idle'])
  assert.equal(code, 0)
  assert.match(output, /closed/)
})

test('a process whose connect fails exits by itself', async () => {
  const { code, output } = await runChild(['nats://127.0.0.1:1', 'idle'])
  assert.equal(code, 0)
  assert.match(output, /error CONN_ERR\nclosed/)
})
