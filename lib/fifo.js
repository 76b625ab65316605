'use strict'

const { format } = require('./nuid')

// Queues that live as long as the connection and see an entry per publish.
// Both keep backing arrays that grow by doubling and clear what they
// release; a very large one is let go once empty. A Map or a pushed-and-
// sliced array would reallocate its store as entries come and go; once V8
// has moved a store to the old generation, each replaced one stays behind
// until the next full GC still pointing at young entries (a Map's even
// chains every later table), so the young generation fills with garbage it
// must copy, and V8 grows it to its maximum (+30 MB RSS in the bench's rss
// workload after a `gc()`).

/** First in, first out; O(1) push and shift on a ring. */
class Fifo {
  constructor () {
    this._items = new Array(16).fill(undefined)
    this._head = 0
    this.length = 0
  }

  push (item) {
    if (this.length === this._items.length) this._grow()
    this._items[(this._head + this.length) & (this._items.length - 1)] = item
    this.length++
  }

  shift () {
    if (this.length === 0) return undefined
    const item = this._items[this._head]
    this._items[this._head] = undefined
    this._head = (this._head + 1) & (this._items.length - 1)
    if (--this.length === 0 && this._items.length > 16) {
      this._items = new Array(16).fill(undefined)
      this._head = 0
    }
    return item
  }

  /** Removes and returns everything, oldest first. */
  drain () {
    const items = new Array(this.length)
    for (let i = 0; i < items.length; i++) items[i] = this.shift()
    return items
  }

  _grow () {
    const items = new Array(2 * this._items.length).fill(undefined)
    for (let i = 0; i < this.length; i++) items[i] = this._items[(this._head + i) & (this._items.length - 1)]
    this._items = items
    this._head = 0
  }
}

const MIN_SLOTS = 1024
// A ring up to this size (1.8 MB) is kept when it empties: reallocating one
// for every burst would churn V8's young generation with live arrays.
const KEPT_SLOTS = 65536

/**
 * Publishes awaiting their ack, by token (a counter): slot `token & mask` of
 * a ring that doubles while it is at least half full. A slot is the
 * callback (null for none), the token and the guid's parts, in arrays, so a
 * pending publish allocates nothing. A publish whose slot a newer one needs
 * (it has outlived a ring's worth of later tokens) moves to a Map of such
 * stragglers, so one slow ack does not grow the ring.
 */
class PublishTable {
  constructor () {
    this._alloc(MIN_SLOTS)
    this._stragglers = null
    this.size = 0
    // What `take` found.
    this.cb = null
    this.guid = undefined
  }

  add (token, cb, prefix, seq) {
    let slot = token & (this._cbs.length - 1)
    if (this._cbs[slot] !== undefined && 2 * this.size >= this._cbs.length) {
      this._resize(2 * this._cbs.length)
      slot = token & (this._cbs.length - 1)
    }
    if (this._cbs[slot] !== undefined) this._straggle(slot)
    this._put(slot, token, cb ?? null, prefix, seq)
    this.size++
  }

  /**
   * Removes the publish with `token`; false if there is none. Its callback
   * (null for none) and, with a callback, its guid are left in `cb` and
   * `guid`.
   */
  take (token) {
    const slot = token & (this._cbs.length - 1)
    const cb = this._cbs[slot]
    if (cb !== undefined && this._tokens[slot] === token) {
      this._found(cb, this._prefixes[slot], this._seqs[slot])
      this._cbs[slot] = undefined
      this._prefixes[slot] = undefined
      if (--this.size === 0 && this._cbs.length > KEPT_SLOTS) this._alloc(MIN_SLOTS)
      return true
    }
    const straggler = this._stragglers?.get(token)
    if (straggler === undefined) return false
    this._stragglers.delete(token)
    if (this._stragglers.size === 0) this._stragglers = null
    this._found(straggler.cb, straggler.prefix, straggler.seq)
    this.size--
    return true
  }

  /** Removes everything; returns the callbacks and guids, in token order (across a wrap at 2^32). */
  drain () {
    const all = []
    for (let slot = 0; slot < this._cbs.length; slot++) {
      if (this._cbs[slot] !== undefined) all.push({ token: this._tokens[slot], cb: this._cbs[slot], prefix: this._prefixes[slot], seq: this._seqs[slot] })
    }
    if (this._stragglers !== null) all.push(...this._stragglers.values())
    this._alloc(MIN_SLOTS)
    this._stragglers = null
    this.size = 0
    all.sort((a, b) => (a.token - b.token) | 0)
    return all.map(({ cb, prefix, seq }) => ({ cb, guid: format(prefix, seq) }))
  }

  _alloc (length) {
    this._cbs = new Array(length).fill(undefined)
    this._tokens = new Uint32Array(length)
    this._seqs = new Float64Array(length)
    this._prefixes = new Array(length).fill(undefined)
  }

  _put (slot, token, cb, prefix, seq) {
    this._cbs[slot] = cb
    this._tokens[slot] = token
    this._prefixes[slot] = prefix
    this._seqs[slot] = seq
  }

  _found (cb, prefix, seq) {
    this.cb = cb
    this.guid = cb === null ? undefined : format(prefix, seq)
  }

  _straggle (slot) {
    if (this._stragglers === null) this._stragglers = new Map()
    const token = this._tokens[slot]
    this._stragglers.set(token, { token, cb: this._cbs[slot], prefix: this._prefixes[slot], seq: this._seqs[slot] })
  }

  /** Moves the ring's publishes to one of `length` slots. */
  _resize (length) {
    const { _cbs: cbs, _tokens: tokens, _prefixes: prefixes, _seqs: seqs } = this
    this._alloc(length)
    const mask = this._cbs.length - 1
    for (let old = 0; old < cbs.length; old++) {
      if (cbs[old] === undefined) continue
      const slot = tokens[old] & mask
      // Tokens a ring's length apart: the older one straggles (the ring's
      // tokens span less than 2^31).
      if (this._cbs[slot] !== undefined) {
        if (((tokens[old] - this._tokens[slot]) | 0) < 0) {
          this._stragglers ??= new Map()
          this._stragglers.set(tokens[old], { token: tokens[old], cb: cbs[old], prefix: prefixes[old], seq: seqs[old] })
          continue
        }
        this._straggle(slot)
      }
      this._put(slot, tokens[old], cbs[old], prefixes[old], seqs[old])
    }
  }
}

module.exports = { Fifo, PublishTable }
