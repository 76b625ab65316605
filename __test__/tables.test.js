'use strict'

// The publish queues (lib/fifo.js) against a Map and an array doing the
// same: every entry comes back once, in order, through growth, wrap-around
// and stragglers.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { Fifo, PublishTable } = require('../lib/fifo')
const { format } = require('../lib/nuid')

test('a Fifo gives back what it was given, in order, across growth and wrap-around', () => {
  const fifo = new Fifo()
  const model = []
  let next = 0
  for (let round = 0; round < 200; round++) {
    const pushes = (round * 7) % 40
    for (let i = 0; i < pushes; i++) { fifo.push(next); model.push(next++) }
    const shifts = (round * 11) % 45
    for (let i = 0; i < shifts; i++) assert.equal(fifo.shift(), model.shift())
    assert.equal(fifo.length, model.length)
  }
  assert.ok(fifo._items.length > 16)
  while (model.length > 0) assert.equal(fifo.shift(), model.shift())
  assert.equal(fifo._items.length, 16, 'empty, it lets its array go')
  fifo.push('a')
  fifo.push('b')
  assert.deepEqual(fifo.drain(), ['a', 'b'])
  assert.equal(fifo.length, 0)
  assert.equal(fifo.shift(), undefined)
})

test('a PublishTable finds each publish once, keeps stragglers, and drains by token', () => {
  const table = new PublishTable()
  const model = new Map()
  const prefix = 'ABCDEFGHIJKL'
  let token = 0xffffff00 // wraps past 2^32 on the way
  const add = () => {
    // Every third publish has no callback.
    const cb = token % 3 === 0 ? undefined : () => {}
    table.add(token, cb, prefix, token * 7)
    model.set(token, { cb: cb ?? null, guid: format(prefix, token * 7) })
    token = (token + 1) >>> 0
  }
  const take = (t) => {
    assert.equal(table.take(t), true)
    assert.equal(table.cb, model.get(t).cb)
    assert.equal(table.guid, table.cb === null ? undefined : model.get(t).guid)
    model.delete(t)
    assert.equal(table.take(t), false, 'taken twice')
  }
  // One publish that outlives many ring lengths of later ones.
  add()
  const straggler = token - 1 >>> 0
  for (let round = 0; round < 300; round++) {
    for (let i = 0; i < 50 + (round % 7) * 20; i++) add()
    // Settle all but the straggler and the oldest few, newest first.
    const tokens = [...model.keys()].filter((t) => t !== straggler)
    for (let i = tokens.length - 1; i >= 5; i--) take(tokens[i])
    assert.equal(table.size, model.size)
  }
  assert.equal(table._cbs.length, 1024, 'the ring stayed small')
  assert.ok(table._stragglers.has(straggler), 'the straggler left the ring')
  // A burst bigger than the ring grows it.
  for (let i = 0; i < 5000; i++) add()
  assert.equal(table.size, model.size)
  assert.ok(table._cbs.length >= 8192)
  take(straggler)
  const drained = table.drain()
  assert.deepEqual(drained, [...model.values()], 'everything, in token order')
  assert.equal(table.size, 0)
  assert.equal(table.take(token - 1 >>> 0), false)
  model.clear()
  // A ring grown past 65,536 slots is let go once empty; a smaller one is kept.
  for (let i = 0; i < 20000; i++) add()
  for (const t of [...model.keys()]) take(t)
  assert.equal(table._cbs.length, 32768)
  for (let i = 0; i < 70000; i++) add()
  assert.equal(table._cbs.length, 131072)
  for (const t of [...model.keys()]) take(t)
  assert.equal(table._cbs.length, 1024)
})
