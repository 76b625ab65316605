'use strict'

// JetStream beyond STAN, on a connected Stan object: stream and consumer
// management from the JSON configs the NATS CLI uses, and KV buckets.
// Every call returns a promise; failures are StanErrors with a code.

const { fromNative, StanError, stanError } = require('./errors')
const { jsonCodec } = require('./bus')

async function call (promise) {
  try {
    return await promise
  } catch (err) {
    throw fromNative(err)
  }
}

function configText (config) {
  if (typeof config === 'string') return config
  if (config === null || typeof config !== 'object') {
    throw new StanError('BAD_CONFIG', 'jetstan: a config must be an object or a JSON string')
  }
  return JSON.stringify(config)
}

function bytes (value) {
  if (typeof value === 'string') return Buffer.from(value)
  if (Buffer.isBuffer(value)) return value
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  throw new StanError('BAD_DATA', 'jetstan: a KV value must be a string, Buffer or Uint8Array')
}

function toEntry (raw) {
  if (raw === null || raw === undefined) return null
  return {
    bucket: raw.bucket,
    key: raw.key,
    value: raw.value,
    revision: raw.revision,
    created: new Date(raw.created),
    operation: raw.operation
  }
}

/** Streams: add / update / info / list / delete, configs as the NATS CLI writes them. */
class Streams {
  constructor (stan) { this._stan = stan }
  async add (config) { return JSON.parse(await call(this._stan._native.streamAdd(configText(config), false))) }
  async update (config) { return JSON.parse(await call(this._stan._native.streamAdd(configText(config), true))) }
  async info (name) { return JSON.parse(await call(this._stan._native.streamInfo(name))) }
  async list () { return JSON.parse(await call(this._stan._native.streamList())) }
  async delete (name) { await call(this._stan._native.streamDelete(name)) }
  /** Removes every message; resolves with how many. */
  async purge (name) { return JSON.parse(await call(this._stan._native.streamPurge(name))).purged }
  /** Removes one message by sequence, leaving a gap. */
  async deleteMessage (name, sequence) { await call(this._stan._native.streamDeleteMessage(name, sequence)) }
  /** One stored message by sequence: `{ subject, seq, time, data: Buffer }`; `MESSAGE_NOT_FOUND` when there is none. */
  async get (name, sequence) {
    const message = JSON.parse(await call(this._stan._native.streamGet(name, sequence)))
    return { subject: message.subject, seq: message.seq, time: message.time, data: Buffer.from(message.data ?? '', 'base64') }
  }
}

class Consumers {
  constructor (stan) { this._stan = stan }
  async add (stream, config) { return JSON.parse(await call(this._stan._native.consumerAdd(stream, configText(config)))) }
  async info (stream, name) { return JSON.parse(await call(this._stan._native.consumerInfo(stream, name))) }
  async list (stream) { return JSON.parse(await call(this._stan._native.consumerList(stream))) }
  async delete (stream, name) { await call(this._stan._native.consumerDelete(stream, name)) }
  /**
   * Gives a durable consumer an acknowledgement state: every message up to
   * `through` is acked except `unacked`, which are released to the next
   * subscriber. Resolves with `{ acked, released }`.
   */
  async settle (stream, name, through, unacked) {
    return JSON.parse(await call(this._stan._native.consumerSettle(stream, name, through, unacked)))
  }
  /** The next message of a pull consumer, acked: `{ subject, seq, delivered, pending, data }`, or null after `wait` ms. */
  async next (stream, name, { wait = 5000 } = {}) {
    const next = await call(this._stan._native.consumerNext(stream, name, wait))
    return next === null ? null : JSON.parse(next)
  }
}

/** A KV bucket. Values are Buffers; `typed(codec)` gives a view that puts and gets values of one type. */
class KV {
  constructor (native, bucket) {
    this._native = native
    this.bucket = bucket
  }

  put (key, value) { return call(this._native.put(key, bytes(value))) }
  create (key, value) { return call(this._native.create(key, bytes(value))) }
  update (key, value, revision) { return call(this._native.update(key, bytes(value), revision)) }
  async get (key) { return toEntry(await call(this._native.get(key))) }
  delete (key) { return call(this._native.delete(key)) }
  purge (key) { return call(this._native.purge(key)) }
  keys () { return call(this._native.keys()) }
  async history (key) { return (await call(this._native.history(key))).map(toEntry) }
  async status () {
    const info = JSON.parse(await call(this._native.status()))
    return {
      bucket: this.bucket,
      values: info.state.messages,
      bytes: info.state.bytes,
      history: info.config.max_msgs_per_subject,
      ttl: Math.round((info.config.max_age ?? 0) / 1e6),
      storage: info.config.storage,
      replicas: info.config.num_replicas,
      streamInfo: info
    }
  }

  /**
   * `for await (const entry of kv.watch({ keys: 'orders.>' }))`: the current
   * values, then every change, until `stop()` or the connection closes.
   */
  watch ({ keys } = {}) {
    const started = call(this._native.watch(keys ?? null))
    let watcher = null
    const iterator = {
      async next () {
        watcher = watcher ?? await started
        const entry = await call(watcher.next())
        return entry === null ? { value: undefined, done: true } : { value: toEntry(entry), done: false }
      },
      async return () {
        watcher = watcher ?? await started
        await watcher.stop()
        return { value: undefined, done: true }
      },
      stop () { return iterator.return() },
      [Symbol.asyncIterator] () { return iterator }
    }
    return iterator
  }

  typed (codec = jsonCodec) { return new TypedKV(this, codec) }
}

class TypedKV {
  constructor (kv, codec) {
    this.raw = kv
    this.codec = codec
  }

  put (key, value) { return this.raw.put(key, this.codec.encode(value)) }
  create (key, value) { return this.raw.create(key, this.codec.encode(value)) }
  update (key, value, revision) { return this.raw.update(key, this.codec.encode(value), revision) }
  async get (key) {
    const entry = await this.raw.get(key)
    return entry === null ? null : { ...entry, value: this.codec.decode(entry.value) }
  }
}

/** Opens (by default creating) a KV bucket on a connected Stan object. */
async function openKV (stan, bucket, given) {
  if (given !== undefined && (given === null || typeof given !== 'object')) {
    throw stanError('BAD_OPTION', 'stan: KV options must be an object')
  }
  const { create = true, ...options } = given ?? {}
  const native = await call(stan._native.keyValue(bucket, {
    description: options.description,
    history: options.history,
    ttlMs: options.ttl,
    maxValueSize: options.maxValueSize,
    maxBytes: options.maxBytes,
    storage: options.storage,
    replicas: options.replicas
  }, create))
  return new KV(native, bucket)
}

module.exports = { Streams, Consumers, KV, openKV }
