'use strict'

// NUIDs as node-nats-streaming uses for publish guids: 12 random prefix
// characters plus a 10-character sequence with a random increment. Made in
// JS because `publish` returns the guid before its pack crosses. The prefix is the random part of a NUID from the
// native side (node:crypto would add 2 MB to the process's RSS); the
// sequence's start and increment only spread guids, as in the NUID
// reference, so Math.random serves.
const { nuid } = require('./native')

// The base-62 digits' character codes.
const CODES = Array.from('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz', (digit) => digit.charCodeAt(0))
const BASE = 62
const PREFIX_LEN = 12
// Kept within exact doubles; 10 base-62 digits hold it with room to spare.
const MAX_SEQ = 2 ** 47
const MIN_INC = 33
const MAX_INC = 333

function randomInt (limit) {
  return Math.floor(Math.random() * limit)
}

class Nuid {
  constructor () {
    this.resetPrefix()
    this.seq = randomInt(MAX_SEQ)
    this.inc = MIN_INC + randomInt(MAX_INC - MIN_INC)
  }

  resetPrefix () {
    this.prefix = nuid().slice(0, PREFIX_LEN)
  }

  /** The next guid; `prefix` and `seq` are then its parts, for `format`. */
  next () {
    this.seq += this.inc
    if (this.seq >= MAX_SEQ) {
      this.resetPrefix()
      this.seq = randomInt(MAX_SEQ)
      this.inc = MIN_INC + randomInt(MAX_INC - MIN_INC)
    }
    return format(this.prefix, this.seq)
  }
}

/**
 * A guid from its parts: kept as parts, a pending publish holds no string.
 * Made at publish and again for its callback, so unrolled into one
 * `fromCharCode` (70 ns against 250 for a tail grown a character at a time).
 */
function format (prefix, seq) {
  let n = seq
  const d9 = CODES[n % BASE]; n = Math.floor(n / BASE)
  const d8 = CODES[n % BASE]; n = Math.floor(n / BASE)
  const d7 = CODES[n % BASE]; n = Math.floor(n / BASE)
  const d6 = CODES[n % BASE]; n = Math.floor(n / BASE)
  const d5 = CODES[n % BASE]; n = Math.floor(n / BASE)
  const d4 = CODES[n % BASE]; n = Math.floor(n / BASE)
  const d3 = CODES[n % BASE]; n = Math.floor(n / BASE)
  const d2 = CODES[n % BASE]; n = Math.floor(n / BASE)
  const d1 = CODES[n % BASE]; n = Math.floor(n / BASE)
  return prefix + String.fromCharCode(CODES[n % BASE], d1, d2, d3, d4, d5, d6, d7, d8, d9)
}

module.exports = { guids: new Nuid(), format }
