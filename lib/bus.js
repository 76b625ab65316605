'use strict'

// The typed event bus on top of the 0.3.2 API: the Publisher/Listener pair
// every node-nats-streaming TypeScript service wrote by hand, with a codec,
// optional Standard Schema validation, async handlers acked after they
// finish, and a per-listener concurrency cap.

const { EventEmitter } = require('node:events')
const { StanError } = require('./errors')

const BACKLOG_IN_FLIGHT = 64

/**
 * JSON with Dates and Buffers kept: a Date travels as `{"$date": ISO}` and a
 * Buffer as `{"$buffer": base64}`, and both come back as what they were.
 */
const jsonCodec = Object.freeze({
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

  /** Resolves with the guid once the server stored the event. */
  async publish (data) {
    const value = await validate(this.schema, data, this.subject)
    return this.client.publishAsync(this.subject, this.codec.encode(value))
  }
}

/**
 * Listens to one event type as a durable queue group (deliver all, manual
 * ack): subclass it with `subject`, `queueGroupName` and `onMessage(data, msg)`.
 * The message is acked after `onMessage` returns, or after its promise
 * resolves; a throw or rejection emits `error` and leaves the message for
 * redelivery after `ackWait`. A payload that fails to decode or validate is
 * reported as `error` (code INVALID_PAYLOAD, with `issues`) and terminated:
 * the server will not deliver it again.
 */
class Listener extends EventEmitter {
  constructor (client) {
    super()
    this.client = client
    this.ackWait = 5 * 1000
    this.maxConcurrent = 1
    this.codec = jsonCodec
    this.schema = undefined
    this.subscription = null
    this._running = 0
    this._backlog = []
  }

  subscriptionOptions () {
    return this.client.subscriptionOptions()
      .setDeliverAllAvailable()
      .setManualAckMode(true)
      .setAckWait(this.ackWait)
      .setDurableName(this.queueGroupName)
      // Bounds what waits in the backlog; the cap on running handlers is maxConcurrent.
      .setMaxInFlight(Math.max(BACKLOG_IN_FLIGHT, this.maxConcurrent))
  }

  /** Starts listening; resolves once the subscription is ready. */
  listen () {
    if (!Number.isInteger(this.maxConcurrent) || this.maxConcurrent < 1) {
      throw new StanError('BAD_OPTION', 'jetstan: maxConcurrent must be a positive integer')
    }
    const sub = this.client.subscribe(this.subject, this.queueGroupName, this.subscriptionOptions())
    this.subscription = sub
    sub.on('message', (msg) => this._admit(msg))
    sub.on('error', (err) => this.emit('error', err))
    return new Promise((resolve, reject) => {
      sub.once('ready', () => resolve(this))
      sub.once('timeout', reject)
    })
  }

  /** Stops listening; the durable queue group keeps its position. */
  close () {
    if (this.subscription !== null && !this.subscription.isClosed()) this.subscription.close()
  }

  _admit (msg) {
    // While draining, what has not started stays unacked and goes back to
    // the server when the subscription closes.
    if (this._running >= this.maxConcurrent || this.subscription._draining) {
      this._backlog.push(msg)
      return
    }
    this._running++
    this.subscription._track(this._handle(msg))
  }

  async _handle (msg) {
    try {
      let data
      try {
        data = await validate(this.schema, this.codec.decode(msg.getRawData()), this.subject)
      } catch (err) {
        msg._terminate()
        this.emit('error', err instanceof StanError ? err : invalidPayload(this.subject, undefined, err))
        return
      }
      try {
        await this.onMessage(data, msg)
        msg.ack()
      } catch (err) {
        this.emit('error', err)
      }
    } finally {
      this._running--
      const next = this._backlog.shift()
      if (next !== undefined) this._admit(next)
    }
  }
}

/**
 * A typed bus over a map of subject → payload type: `publish(subject, data)`
 * and `listen(subject, options, handler)` with the same guarantees as the
 * classes.
 */
function createBus (client, { codec = jsonCodec, schemas = {} } = {}) {
  return {
    client,
    publish (subject, data) {
      const publisher = new Publisher(client)
      publisher.subject = subject
      publisher.codec = codec
      publisher.schema = schemas[subject]
      return publisher.publish(data)
    },
    listen (subject, { queueGroupName, ackWait, maxConcurrent } = {}, handler) {
      const listener = new Listener(client)
      listener.subject = subject
      listener.queueGroupName = queueGroupName
      listener.codec = codec
      listener.schema = schemas[subject]
      if (ackWait !== undefined) listener.ackWait = ackWait
      if (maxConcurrent !== undefined) listener.maxConcurrent = maxConcurrent
      listener.onMessage = handler
      return listener.listen()
    }
  }
}

module.exports = { Publisher, Listener, createBus, jsonCodec }
