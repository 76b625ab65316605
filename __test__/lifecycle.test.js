'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')
const { useServer } = require('./helpers')

const ctx = useServer()
const EXIT_DEADLINE_MS = 5000

/** Runs the fixture; resolves with its output once it exits, fails if it outlives the deadline. */
function runChild (args, env = process.env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'connect-and-close.js'), ...args],
      { stdio: ['ignore', 'pipe', 'inherit'], env })
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

function workerThreads (output) {
  const line = output.split('\n').find((l) => l.startsWith('threads '))
  assert.ok(line, `no thread list in: ${output}`)
  return line.slice('threads '.length).split(',').filter((name) => name === 'jetstan-io').length
}

test('by default the JS thread runs the I/O: no worker thread, a round trip, and the process exits by itself', async () => {
  const env = { ...process.env }
  delete env.JETSTAN_WORKER_THREADS
  const { code, output } = await runChild([ctx.url, 'threads'], env)
  assert.equal(code, 0)
  assert.match(output, /received hello/)
  assert.equal(workerThreads(output), 0)
  assert.match(output, /closed/)
})

test('JETSTAN_WORKER_THREADS=2 runs the I/O on two worker threads, and the process still exits by itself', async () => {
  const { code, output } = await runChild([ctx.url, 'threads'], { ...process.env, JETSTAN_WORKER_THREADS: '2' })
  assert.equal(code, 0)
  assert.match(output, /received hello/)
  assert.equal(workerThreads(output), 2)
  assert.match(output, /closed/)
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
