'use strict'

const { EventEmitter } = require('node:events')
const { Message } = require('./message')
const { stanError, closedError, fromNative, text, emitGuarded } = require('./errors')

const StartPosition = Object.freeze({
  NEW_ONLY: 0,
  LAST_RECEIVED: 1,
  TIME_DELTA_START: 2,
  SEQUENCE_START: 3,
  FIRST: 4
})

/** Values per message in a delivery batch's `meta` (see src/outbox.rs). */
const META_STRIDE = 5

/** Milliseconds from a number or a Date; anything else is BAD_OPTION, not a bare TypeError. */
function millisOf (value, what) {
  if (typeof value === 'number') return value
  if (value instanceof Date) return value.valueOf()
  throw stanError('BAD_OPTION', `stan: ${what} must be a number of milliseconds or a Date`)
}

/** 0.3.2's options object: setters store values as given and chain. */
class SubscriptionOptions {
  constructor () {
    this.durableName = undefined
    this.maxInFlight = 16384
    this.ackWait = 30000
    this.startPosition = undefined
    this.startSequence = undefined
    this.startTime = undefined
    this.manualAcks = undefined
  }

  setMaxInFlight (n) { this.maxInFlight = n; return this }
  setAckWait (millis) { this.ackWait = millis; return this }
  setStartAt (position) { this.startPosition = position; return this }
  setStartAtSequence (sequence) {
    this.startPosition = StartPosition.SEQUENCE_START
    this.startSequence = sequence
    return this
  }

  /** Frozen as a delta (ns) when called, as 0.3.2 does. */
  setStartTime (date) {
    this.startPosition = StartPosition.TIME_DELTA_START
    this.startTime = (Date.now() - millisOf(date, 'start time')) * 1e6
    return this
  }

  setStartAtTimeDelta (millis) {
    this.startPosition = StartPosition.TIME_DELTA_START
    this.startTime = millisOf(millis, 'start time delta') * 1e6
    return this
  }

  setStartWithLastReceived () { this.startPosition = StartPosition.LAST_RECEIVED; return this }
  setDeliverAllAvailable () { this.startPosition = StartPosition.FIRST; return this }
  setManualAckMode (manual) { this.manualAcks = manual; return this }
  setDurableName (name) { this.durableName = name; return this }
}

function isPositiveInteger (n) {
  return typeof n === 'number' && Number.isInteger(n) && n > 0
}

/** Checks what 0.3.2 left to the encoder or server; returns a StanError or null. */
function validate (opts) {
  if (!isPositiveInteger(opts.maxInFlight) || opts.maxInFlight > 0xffffffff) {
    return stanError('BAD_OPTION', 'stan: invalid MaxInflight, should be >= 1')
  }
  if (typeof opts.ackWait !== 'number' || !Number.isFinite(opts.ackWait) || opts.ackWait < 1000) {
    return stanError('BAD_OPTION', 'stan: invalid ack wait time, should be >= 1s')
  }
  const position = opts.startPosition ?? StartPosition.NEW_ONLY
  if (!Object.values(StartPosition).includes(position)) {
    return stanError('BAD_OPTION', 'stan: invalid start position')
  }
  if (opts.durableName !== undefined && opts.durableName !== null && typeof opts.durableName !== 'string') {
    return stanError('BAD_OPTION', 'stan: durable name must be a string')
  }
  if (position === StartPosition.SEQUENCE_START && opts.startSequence !== undefined &&
      (typeof opts.startSequence !== 'number' || Number.isNaN(opts.startSequence))) {
    return stanError('BAD_OPTION', 'stan: start sequence must be a number')
  }
  if (position === StartPosition.TIME_DELTA_START && opts.startTime !== undefined &&
      (typeof opts.startTime !== 'number' || !Number.isFinite(opts.startTime))) {
    return stanError('BAD_OPTION', 'stan: start time must be a finite number')
  }
  return null
}

function toNative (subject, qGroup, opts) {
  return {
    subject,
    queueGroup: qGroup || undefined,
    durableName: opts.durableName || undefined,
    maxInFlight: opts.maxInFlight,
    ackWaitMs: Math.ceil(opts.ackWait),
    startPosition: opts.startPosition ?? StartPosition.NEW_ONLY,
    startSequence: opts.startSequence,
    startTimeDeltaMs: opts.startTime === undefined ? undefined : opts.startTime / 1e6
  }
}

class Subscription extends EventEmitter {
  constructor (stan, sid, subject, qGroup, opts) {
    super()
    this.stanConnection = stan
    this.subject = subject
    // As given: 0.3.2 keeps '' (which means no group) as ''.
    this.qGroup = qGroup
    this.opts = opts
    this.inbox = `_JSTAN.${stan.clientID}.${sid}`
    this.ackInbox = undefined
    this.inboxSub = sid
    this._sid = sid
    this._native = null
    this._closed = false
    this._binary = stan.options.stanEncoding === 'binary'
    this._acks = []
    this._ackScheduled = false
    this._flushAcks = () => this._sendAcks()
    this._draining = false
    this._work = new Set()
  }

  /**
   * `for await (const msg of sub)`: messages in order. Unless the
   * subscription is in manual-ack mode, a message is acked when the loop
   * asks for the next one (so after its body ran); the loop ends when the
   * subscription or connection closes, and throws the subscription's errors.
   */
  [Symbol.asyncIterator] () {
    const queue = []
    let waiting = null
    let finished = false
    let failure = null
    let previous = null
    const wake = () => {
      if (waiting === null) return
      const { resolve, reject } = waiting
      waiting = null
      if (failure !== null) reject(failure)
      else if (queue.length > 0) resolve({ value: queue.shift(), done: false })
      else resolve({ value: undefined, done: true })
    }
    const onMessage = (msg) => { msg._deferAck = true; queue.push(msg); wake() }
    const onEnd = () => { finished = true; cleanup(); wake() }
    const onError = (err) => { failure = err; cleanup(); wake() }
    const stan = this.stanConnection
    const cleanup = () => {
      this.off('message', onMessage)
      this.off('unsubscribed', onEnd)
      this.off('closed', onEnd)
      this.off('timeout', onError)
      this.off('error', onError)
      stan.off('close', onEnd)
    }
    this.on('message', onMessage)
    this.once('unsubscribed', onEnd)
    this.once('closed', onEnd)
    this.once('timeout', onError)
    this.once('error', onError)
    stan.once('close', onEnd)
    const settlePrevious = () => {
      if (previous !== null && !this.opts.manualAcks) previous.ack()
      previous = null
    }
    return {
      next: () => {
        settlePrevious()
        if (queue.length > 0) {
          previous = queue.shift()
          return Promise.resolve({ value: previous, done: false })
        }
        if (failure !== null) return Promise.reject(failure)
        if (finished) return Promise.resolve({ value: undefined, done: true })
        return new Promise((resolve, reject) => {
          waiting = {
            resolve: (result) => { previous = result.done ? null : result.value; resolve(result) },
            reject
          }
        })
      },
      return: () => {
        settlePrevious()
        cleanup()
        return Promise.resolve({ value: undefined, done: true })
      },
      [Symbol.asyncIterator] () { return this }
    }
  }

  /** Keeps `drain()` waiting until `promise` settles (a handler still running). */
  _track (promise) {
    this._work.add(promise)
    const done = () => this._work.delete(promise)
    promise.then(done, done)
    return promise
  }

  isClosed () { return this._closed }

  /** Ends the subscription and removes durable state. */
  unsubscribe () { this._end(false) }

  /** Ends the subscription but keeps durable state. */
  close () { this._end(true) }

  _end (keepDurable) {
    if (this._closed) {
      this.emit('error', stanError('BAD_SUBSCRIPTION', text.BAD_SUBSCRIPTION))
      return
    }
    // Acks made before unsubscribe/close still count (a durable resumes after them).
    this._sendAcks()
    this._closed = true
    const stan = this.stanConnection
    if (stan.isClosed()) {
      this.emit('error', closedError())
      return
    }
    if (this._native === null) {
      // Never reached the server (still waiting for the connection).
      stan._forgetSubscription(this)
      process.nextTick(() => this.emit(keepDurable ? 'closed' : 'unsubscribed'))
      return
    }
    try {
      this._native.unsubscribe(this._sid, keepDurable)
    } catch (err) {
      this.emit('error', fromNative(err))
    }
  }

  /** Starts the subscription on the native connection (once it is connected). */
  _start (native) {
    const invalid = validate(this.opts)
    if (invalid !== null) {
      this._closed = true
      this.stanConnection._forgetSubscription(this)
      process.nextTick(() => this.emit('error', invalid))
      return
    }
    try {
      native.subscribe(this._sid, toNative(this.subject, this.qGroup, this.opts))
      this._native = native
    } catch (err) {
      this._closed = true
      this.stanConnection._forgetSubscription(this)
      const error = fromNative(err)
      process.nextTick(() => this.emit('error', error))
    }
  }

  _onEvent (event) {
    switch (event.kind) {
      case 'ready':
        this.ackInbox = `${this.inbox}.acks`
        this.emit('ready')
        break
      case 'timeout':
        // The request went unanswered within connectTimeout; the native
        // side gave the subscription up.
        this._closed = true
        this.emit('timeout', fromNative(event))
        break
      case 'sub_error':
        this._closed = true
        this.emit('error', fromNative(event))
        break
      case 'unsubscribed':
        this._closed = true
        this.emit('unsubscribed')
        break
      case 'closed':
        this._closed = true
        this.emit('closed')
        break
    }
  }

  /** Emits one `message` per delivered message; auto-acks the batch once. */
  _deliver (batch, meta, headerIndex, headerText) {
    const stats = this.stanConnection._stats
    stats.msgsIn += meta.length / META_STRIDE
    stats.bytesIn += batch.length
    let offset = 0
    let withHeaders = 0
    for (let i = 0; i < meta.length; i += META_STRIDE) {
      if (this._closed || this._draining) return
      const length = meta[i + 4]
      const msg = new Message(this, meta[i], meta[i + 1], meta[i + 2], meta[i + 3], batch, offset, length)
      offset += length
      if (meta[i + 3] > 0) stats.redelivered++
      if (headerIndex !== undefined && headerIndex !== null && headerIndex[withHeaders] === i / META_STRIDE) {
        msg._headerText = headerText[withHeaders++]
      }
      let handled = true
      try {
        this.emit('message', msg)
      } catch (err) {
        handled = false
        this._reportHandlerError(err)
      }
      // Read per message: 0.3.2 honours a change of manualAcks mid-stream.
      if (handled && !this.opts.manualAcks && !msg._deferAck) this._queueAck(meta[i])
    }
  }

  _reportHandlerError (err) {
    // A throwing handler leaves its message unacked for redelivery, and never
    // stops the rest of the batch.
    if (this.listenerCount('error') > 0) {
      emitGuarded(this, 'error', err)
    } else if (this.stanConnection.listenerCount('error') > 0) {
      emitGuarded(this.stanConnection, 'error', err)
    } else {
      process.nextTick(() => { throw err })
    }
  }

  _queueAck (ackId) {
    if (this._closed || this._native === null) return
    this.stanConnection._stats.acked++
    this._acks.push(ackId)
    if (!this._ackScheduled) {
      this._ackScheduled = true
      queueMicrotask(this._flushAcks)
    }
  }

  _terminate (ackId) {
    if (this._closed || this._native === null || this.stanConnection.isClosed()) return
    this.stanConnection._stats.acked++
    this._native.terminate(this._sid, Float64Array.of(ackId))
  }

  /** Restarts the ack clocks of messages still being handled (JetStream; STAN ignores it). */
  _progress (ackIds) {
    if (this._closed || this._native === null || this.stanConnection.isClosed() || ackIds.length === 0) return
    this._native.progress(this._sid, Float64Array.from(ackIds))
  }

  _sendAcks () {
    this._ackScheduled = false
    if (this._acks.length === 0 || this._closed || this._native === null || this.stanConnection.isClosed()) {
      this._acks.length = 0
      return
    }
    const ids = Float64Array.from(this._acks)
    this._acks.length = 0
    this._native.ack(this._sid, ids)
  }
}

module.exports = { Subscription, SubscriptionOptions, StartPosition }
