'use strict'

// NUIDs as node-nats-streaming uses for publish guids: 12 random prefix
// characters plus a 10-character sequence with a random increment. Made in
// JS because the guid must exist before a publish that waits for capacity
// reaches the native side.
const crypto = require('node:crypto')

const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
const BASE = 62
const PREFIX_LEN = 12
const SEQ_LEN = 10
// Kept within exact doubles; 10 base-62 digits hold it with room to spare.
const MAX_SEQ = 2 ** 47
const MIN_INC = 33
const MAX_INC = 333

function randomInt (limit) {
  return crypto.randomInt(limit)
}

class Nuid {
  constructor () {
    this.resetPrefix()
    this.seq = randomInt(MAX_SEQ)
    this.inc = MIN_INC + randomInt(MAX_INC - MIN_INC)
  }

  resetPrefix () {
    const bytes = crypto.randomBytes(PREFIX_LEN)
    let prefix = ''
    for (let i = 0; i < PREFIX_LEN; i++) prefix += DIGITS[bytes[i] % BASE]
    this.prefix = prefix
  }

  next () {
    this.seq += this.inc
    if (this.seq >= MAX_SEQ) {
      this.resetPrefix()
      this.seq = randomInt(MAX_SEQ)
      this.inc = MIN_INC + randomInt(MAX_INC - MIN_INC)
    }
    let n = this.seq
    let tail = ''
    for (let i = 0; i < SEQ_LEN; i++) {
      tail = DIGITS[n % BASE] + tail
      n = Math.floor(n / BASE)
    }
    return this.prefix + tail
  }
}

const shared = new Nuid()

module.exports = { next: () => shared.next() }
