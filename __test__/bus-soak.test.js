'use strict'

// Soak: 10,000 events through one maxConcurrent 1 Listener whose handler
// does 1–20 ms of async work. Every event must run exactly once, in order.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { useServer, unique, quietPeriod, stan } = require('./helpers')
const { Listener } = stan

const ctx = useServer()
const EVENTS = 10000

test(`${EVENTS} events through a maxConcurrent 1 Listener run once each, in order`, { timeout: 600000 }, async () => {
  const sc = await ctx.connect()
  const subject = unique('soak')
  const publishing = []
  for (let job = 0; job < EVENTS; job++) publishing.push(sc.publishAsync(subject, JSON.stringify({ job })))
  await Promise.all(publishing)

  let runs = 0
  let outOfOrder = 0
  let expected = 0
  let finish
  const finished = new Promise((resolve) => { finish = resolve })
  // A seeded generator, so a failure can be replayed: 1–20 ms per event.
  let seed = 20261129
  const workMs = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648
    return 1 + (seed % 20)
  }
  class Soak extends Listener {
    constructor (client) {
      super(client)
      this.subject = subject
      this.queueGroupName = 'soak'
    }

    async onMessage ({ job }) {
      runs++
      if (job !== expected) outOfOrder++
      expected = job + 1
      await new Promise((resolve) => setTimeout(resolve, workMs()))
      if (job === EVENTS - 1) finish()
    }
  }
  const startedAt = Date.now()
  const listener = await new Soak(sc).listen()
  const timer = setTimeout(() => finish(), 540000)
  await finished
  clearTimeout(timer)
  const elapsed = Date.now() - startedAt
  // A redelivery already on its way would arrive within this.
  await quietPeriod(1500)
  console.log(JSON.stringify({ test: 'listener-soak', events: EVENTS, runs, runs_per_event: runs / EVENTS, out_of_order: outOfOrder, ms_per_event: elapsed / EVENTS }))
  assert.equal(outOfOrder, 0)
  assert.equal(runs, EVENTS)
  await listener.close()
})
