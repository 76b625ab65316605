'use strict'

// The typed event bus on top of the 0.3.2 API: the Publisher/Listener pair
// every node-nats-streaming TypeScript service wrote by hand, with a codec,
// optional Standard Schema validation, async handlers acked after they
// finish, and a per-listener concurrency cap.

const { EventEmitter } = require('node:events')
const { StanError, closedError, emitGuarded } = require('./errors')
const { traced, handled } = require('./otel')

/**
 * Plain JSON, byte for byte what `JSON.stringify` writes and `JSON.parse`
 * reads, so typed services and services that parse by hand read each
 * other's events. Values JSON has no type for arrive as JSON has them (a
 * Date as its ISO string): a schema with coercion turns them back.
 */
const jsonCodec = Object.freeze({
  encode (value) { return JSON.stringify(value) },
  decode (bytes) { return JSON.parse(bytes.toString('utf8')) }
})

/**
 * Opt-in JSON that keeps Dates and Buffers: a Date travels as
 * `{"$date": ISO}` and a Buffer as `{"$buffer": base64}`. Only jetstan
 * services using this codec on both sides read them back as such.
 */
const taggedJsonCodec = Object.freeze({
  encode (value) {
    return JSON.stringify(value, function (key, replaced) {
      const raw = this[key]
      if (raw instanceof Date) return { $date: raw.toISOString() }
      if (Buffer.isBuffer(raw)) return { $buffer: raw.toString('base64') }
      return replaced
    })
  },
  decode (bytes) {
    return JSON.parse(bytes.toString('utf8'), (key, value) => {
      if (value !== null && typeof value === 'object') {
        const keys = Object.keys(value)
        if (keys.length === 1 && typeof value.$date === 'string') return new Date(value.$date)
        if (keys.length === 1 && typeof value.$buffer === 'string') return Buffer.from(value.$buffer, 'base64')
      }
      return value
    })
  }
})

function invalidPayload (subject, issues, cause) {
  const detail = issues?.length ? issues.map((i) => i.message).join('; ') : cause?.message ?? 'undecodable'
  const err = new StanError('INVALID_PAYLOAD', `jetstan: invalid payload on '${subject}': ${detail}`)
  err.issues = issues ?? []
  if (cause !== undefined) err.cause = cause
  return err
}

/** Runs a Standard Schema v1 validator (zod, valibot, arktype...); returns the parsed value. */
async function validate (schema, value, subject) {
  if (schema === undefined || schema === null) return value
  const standard = schema['~standard']
  if (standard === undefined || typeof standard.validate !== 'function') {
    throw new StanError('BAD_OPTION', 'jetstan: schema must implement Standard Schema v1 (~standard)')
  }
  const result = await standard.validate(value)
  if (result.issues !== undefined) throw invalidPayload(subject, result.issues)
  return result.value
}

function encode (codec, value, subject) {
  let encoded
  try {
    encoded = codec.encode(value)
  } catch (err) {
    throw invalidPayload(subject, undefined, err)
  }
  if (typeof encoded !== 'string' && !(encoded instanceof Uint8Array)) {
    throw invalidPayload(subject, undefined, new TypeError('the codec gave neither a string nor bytes'))
  }
  return encoded
}

/**
 * Publishes one event type. Subclass it with `subject` (and optionally
 * `schema`, `codec`), then `await publisher.publish(data)`.
 */
class Publisher {
  constructor (client) {
    this.client = client
    this.codec = jsonCodec
    this.schema = undefined
  }

  /**
   * Resolves with the guid once the server stored the event. `headers`
   * (jetstream backend) travel with it, and so does the active trace
   * context when @opentelemetry/api is installed.
   */
  async publish (data, { headers } = {}) {
    const value = await validate(this.schema, data, this.subject)
    const payload = encode(this.codec, value, this.subject)
    const withHeaders = this.client.options.backend === 'jetstream'
    return traced(this.subject, withHeaders, (trace) => {
      const all = trace === undefined ? headers : { ...headers, ...trace }
      return this.client.publishAsync(this.subject, payload, all === undefined ? undefined : { headers: all })
    })
  }
}

/**
 * Listens to one event type as a durable queue group (deliver all, manual
 * ack): subclass it with `subject`, `queueGroupName` and `onMessage(data, msg)`.
 *
 * The member is sent no more messages than it can start (`maxInFlight` =
 * `maxConcurrent`), so none waits while its ack clock runs; on JetStream a
 * handler that runs long keeps its message with "in progress" acks. A
 * redelivery of a message whose handler is still running is not handled
 * again: the running handler's ack settles it.
 */
class Listener extends EventEmitter {
  constructor (client) {
    super()
    this.client = client
    this.ackWait = 5 * 1000
    this.maxConcurrent = 1
    this.codec = jsonCodec
    this.schema = undefined
    this.deadLetterSubject = undefined
    this.subscription = null
    // Handlers running, by sequence.
    this._running = new Map()
    this._backlog = []
    this._stopped = false
    this._closing = null
    this._heartbeat = null
  }

  subscriptionOptions () {
    return this.client.subscriptionOptions()
      .setDeliverAllAvailable()
      .setManualAckMode(true)
      .setAckWait(this.ackWait)
      .setDurableName(this.queueGroupName)
      .setMaxInFlight(this.maxConcurrent)
  }

  /**
   * Starts listening; resolves once the subscription is ready, rejects with
   * the subscription's error (the code the `error` event would carry).
   */
  listen () {
    if (!Number.isInteger(this.maxConcurrent) || this.maxConcurrent < 1) {
      return Promise.reject(new StanError('BAD_OPTION', 'jetstan: maxConcurrent must be a positive integer'))
    }
    if (typeof this.queueGroupName !== 'string' || this.queueGroupName === '') {
      return Promise.reject(new StanError('BAD_OPTION', 'jetstan: a Listener needs a queueGroupName (its durable queue group)'))
    }
    if (this.subscription !== null) {
      return Promise.reject(new StanError('BAD_OPTION', 'jetstan: this Listener is already listening; create another to listen again'))
    }
    let sub
    try {
      sub = this.client.subscribe(this.subject, this.queueGroupName, this.subscriptionOptions())
    } catch (err) {
      return Promise.reject(err)
    }
    this.subscription = sub
    return new Promise((resolve, reject) => {
      let ready = false
      const ended = () => {
        cleanup()
        reject(this.client.isClosed()
          ? closedError()
          : new StanError('BAD_SUBSCRIPTION', 'jetstan: the Listener was closed before its subscription was ready'))
      }
      const cleanup = () => {
        sub.off('closed', ended)
        sub.off('unsubscribed', ended)
        this.client.off('close', ended)
      }
      sub.once('closed', ended)
      sub.once('unsubscribed', ended)
      this.client.once('close', ended)
      sub.on('message', (msg) => this._admit(msg))
      sub.once('ready', () => {
        ready = true
        cleanup()
        this._startHeartbeat()
        resolve(this)
      })
      const failed = (err) => {
        this._stop()
        if (ready) {
          this._report(err)
        } else {
          cleanup()
          reject(err)
        }
      }
      sub.on('error', failed)
      sub.once('timeout', failed)
    })
  }

  /**
   * Stops at once: no handler starts after this, and the subscription
   * closes, so messages not yet handled go back to the group now (the
   * durable keeps its position). A handler still running finishes, but its
   * ack no longer counts: its message is delivered again, to this group.
   * Use `drain()` to let running handlers finish first.
   */
  close () {
    this._stop()
    if (this._closing === null) this._closing = this._closeSubscription()
    return this._closing
  }

  /** Starts no more handlers, lets running ones finish and ack, then closes. */
  async drain () {
    this._stop()
    await Promise.allSettled([...this._running.values()].map((run) => run.done))
    return this.close()
  }

  _stop () {
    this._stopped = true
    this._backlog.length = 0
    if (this._heartbeat !== null) {
      clearInterval(this._heartbeat)
      this._heartbeat = null
    }
  }

  _closeSubscription () {
    const sub = this.subscription
    if (sub === null || sub.isClosed() || this.client.isClosed()) return Promise.resolve()
    return new Promise((resolve) => {
      const done = () => {
        sub.off('closed', done)
        sub.off('unsubscribed', done)
        this.client.off('close', done)
        resolve()
      }
      sub.once('closed', done)
      sub.once('unsubscribed', done)
      this.client.once('close', done)
      sub.close()
    })
  }

  /**
   * JetStream redelivers a message when its ack clock runs out; while a
   * handler runs, its clock is restarted every quarter of `ackWait`.
   */
  _startHeartbeat () {
    if (this.client.options.backend !== 'jetstream') return
    const every = Math.max(250, Math.floor(this.ackWait / 4))
    this._heartbeat = setInterval(() => {
      const due = Date.now() - every
      const ids = []
      for (const run of this._running.values()) {
        if (run.clock <= due) {
          run.clock = Date.now()
          ids.push(run.msg._ackId)
        }
      }
      this.subscription._progress(ids)
    }, every)
    this._heartbeat.unref()
  }

  _admit (msg) {
    const sub = this.subscription
    // Not started, a message stays unacked and goes back to the server when
    // the subscription closes.
    if (this._stopped || sub._draining || sub.isClosed() || this.client.isClosed()) return
    const sequence = msg.getSequence()
    // A copy of a message being handled: its ack settles both.
    if (this._running.has(sequence) || this._backlog.some((waiting) => waiting.getSequence() === sequence)) return
    msg._arrived ??= Date.now()
    if (this._running.size >= this.maxConcurrent) {
      this._backlog.push(msg)
      return
    }
    // The ack clock started when the message arrived.
    const run = { msg, clock: msg._arrived, done: null }
    this._running.set(sequence, run)
    run.done = sub._track(this._handle(msg))
  }

  async _handle (msg) {
    try {
      const data = await this._decode(msg)
      if (data === INVALID) return
      try {
        await handled(this.subject, this.queueGroupName, msg, () => this.onMessage(data, msg))
      } catch (err) {
        // Left unacked: the server delivers it again after ackWait.
        this._report(err)
        return
      }
      msg.ack()
    } finally {
      this._running.delete(msg.getSequence())
      const next = this._backlog.shift()
      if (next !== undefined) this._admit(next)
    }
  }

  async _decode (msg) {
    try {
      return await validate(this.schema, this.codec.decode(msg.getRawData()), this.subject)
    } catch (cause) {
      const err = cause instanceof StanError ? cause : invalidPayload(this.subject, undefined, cause)
      err.sequence = msg.getSequence()
      err.data = Buffer.from(msg.getRawData())
      await this._setAside(msg, err)
      return INVALID
    }
  }

  /**
   * A payload that cannot be decoded or validated cannot be fixed by
   * retrying: it is reported, copied to `deadLetterSubject` when set, and
   * terminated so it never blocks the group. If the copy fails, the message
   * stays unacked and comes back after ackWait.
   */
  async _setAside (msg, err) {
    if (this.deadLetterSubject !== undefined) {
      try {
        err.deadLetterGuid = await this.client.publishAsync(this.deadLetterSubject, err.data)
      } catch (failure) {
        this._report(err)
        this._report(failure)
        return
      }
    }
    msg._terminate()
    this._report(err)
  }

  /**
   * To `error` listeners; without any, to the connection's; without those,
   * as an uncaught exception, where Node reports errors nobody handled.
   */
  _report (err) {
    const target = this.listenerCount('error') > 0
      ? this
      : this.client.listenerCount('error') > 0 ? this.client : null
    if (target === null) process.nextTick(() => { throw err })
    else emitGuarded(target, 'error', err)
  }
}

const INVALID = Symbol('invalid payload')

/**
 * A typed bus over a map of subject → payload type: `publish(subject, data)`
 * and `listen(subject, options, handler)` with the same guarantees as the
 * classes.
 */
function createBus (client, { codec = jsonCodec, schemas = {} } = {}) {
  return {
    client,
    publish (subject, data, options) {
      const publisher = new Publisher(client)
      publisher.subject = subject
      publisher.codec = codec
      publisher.schema = schemas[subject]
      return publisher.publish(data, options)
    },
    listen (subject, { queueGroupName, ackWait, maxConcurrent, deadLetterSubject } = {}, handler) {
      const listener = new Listener(client)
      listener.subject = subject
      listener.queueGroupName = queueGroupName
      listener.codec = codec
      listener.schema = schemas[subject]
      listener.deadLetterSubject = deadLetterSubject
      if (ackWait !== undefined) listener.ackWait = ackWait
      if (maxConcurrent !== undefined) listener.maxConcurrent = maxConcurrent
      listener.onMessage = handler
      return listener.listen()
    }
  }
}

module.exports = { Publisher, Listener, createBus, jsonCodec, taggedJsonCodec }
