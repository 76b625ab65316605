'use strict'

const { EventEmitter } = require('node:events')
const { Connection } = require('./native')
const { guids } = require('./nuid')
const { Fifo, PublishTable } = require('./fifo')
const { parseConnectArgs } = require('./options')
const { Subscription, SubscriptionOptions } = require('./subscription')
const { stanError, closedError, fromNative, text, guarded, emitGuarded } = require('./errors')
const { Streams, Consumers, openKV } = require('./jetstream')

const CONNECTING = 0
const CONNECTED = 1
const CLOSING = 2
const CLOSED = 3
// A pack goes to the native side at the end of the tick, or once it holds
// this many publishes, so the session task writes the head of a long tick
// while JS makes the rest.
const PACK_PUBLISHES = 256
// ... or this many bytes; a pack buffer grown past twice this for large
// payloads is let go once sent.
const PACK_BYTES = 1024 * 1024
// Channels registered with the native side at most, before starting again.
const MAX_CHANNELS = 4096
// A guid is a NUID.
const GUID_LENGTH = 22
const NO_TOKENS = new Uint32Array(0)
const NO_FAILURES = []

function badData (data) {
  const kind = data === null ? 'null' : Array.isArray(data) ? 'array' : typeof data
  return stanError('BAD_DATA', `stan: data must be a string, Buffer or Uint8Array, got ${kind}`)
}

/** Normalises publish data as 0.3.2 accepts it; returns undefined for unsupported types. */
function payloadOf (data) {
  if (typeof data === 'string' || data instanceof Uint8Array) return data
  if (data === undefined || data === null) return ''
  return undefined
}

/**
 * A STAN connection: node-nats-streaming 0.3.2's `Stan` object. Its state
 * lives in Rust; this class keeps the JS-facing parts (callbacks, events,
 * subscriptions by id) and drains the native side once per wake.
 */
// Printable ASCII without ':' (a NATS header name), and values without line breaks.
const HEADER_NAME = /^[!-9;-~]+$/
const HEADER_VALUE = /^[^\r\n]*$/

/**
 * `{ headers }` of a publish as `[name, value, …]`; headers are an object
 * or a Map of names to a string or an array of strings.
 */
function headerList (options, backend) {
  if (typeof options !== 'object') throw stanError('BAD_OPTION', 'stan: publish options must be an object ({ headers })')
  for (const key of Object.keys(options)) {
    if (key !== 'headers') throw stanError('BAD_OPTION', `stan: publish option '${key}' is not supported (expected headers)`)
  }
  if (options.headers === undefined) return undefined
  if (backend !== 'jetstream') throw stanError('BAD_OPTION', 'stan: headers need the jetstream backend; STAN messages carry none')
  const entries = options.headers instanceof Map ? [...options.headers] : Object.entries(options.headers ?? {})
  const list = []
  for (const [name, value] of entries) {
    if (typeof name !== 'string' || !HEADER_NAME.test(name)) throw stanError('BAD_OPTION', `stan: invalid header name '${name}'`)
    if (name.toLowerCase() === 'nats-msg-id') throw stanError('BAD_OPTION', 'stan: Nats-Msg-Id is set by jetstan (the guid)')
    for (const one of Array.isArray(value) ? value : [value]) {
      if (typeof one !== 'string' || !HEADER_VALUE.test(one)) throw stanError('BAD_OPTION', `stan: header '${name}' must be a string without line breaks`)
      list.push(name, one)
    }
  }
  return list.length > 0 ? list : undefined
}

class Stan extends EventEmitter {
  constructor (clusterID, clientID, opts) {
    super()
    const { options, native } = parseConnectArgs(clusterID, clientID, opts)
    this.clusterID = clusterID
    this.clientID = clientID
    this.options = options
    // For error messages: the servers without any credentials in their URLs.
    this._servers = native.servers.map((url) => url.replace(/^([a-z]+:\/\/)?[^@/]*@/i, '$1'))
    this._state = CONNECTING
    this._maxInFlight = native.maxPubAcksInflight
    this._pending = new PublishTable()
    this._waiting = new Fifo()
    this._nextToken = 0
    this._subs = new Map()
    this._nextSid = 0
    this._whenClosed = new Promise((resolve) => this.once('close', () => resolve()))
    // 0.3.2's readable settings; the stan backend adds the server's subjects on connect.
    this.stanPingInterval = options.stanPingInterval
    this.stanMaxPingOut = options.stanMaxPingOut
    this._stats = { msgsIn: 0, bytesIn: 0, redelivered: 0, acked: 0, reconnects: 0 }
    this._settledListeners = []
    this._closeError = undefined
    // Publishes cross to the native side packed, once per tick (or every
    // PACK_PUBLISHES): one call and one copy for all of them, channels named
    // by an index registered once, one wake of the session task, and one
    // fast-ingest batch per channel.
    this._flushQueued = false
    this._flushPublishes = () => {
      this._flushQueued = false
      this._flushPack()
      if (this._nativeHolds) {
        this._nativeHolds = false
        this._native.flush()
      }
    }
    // A publish with headers is held on the native side until flushed.
    this._nativeHolds = false
    this._channels = new Map()
    this._maxPayload = 0
    this._pack = Buffer.allocUnsafe(64 * 1024)
    this._packUsed = 0
    this._packMeta = new Uint32Array(4 * PACK_PUBLISHES)
    this._packCount = 0
    try {
      this._native = new Connection(native, () => this._onWake())
    } catch (err) {
      throw fromNative(err)
    }
  }

  isClosed () { return this._state >= CLOSING }

  /**
   * Counters since connect, cheap enough to read every second: messages and
   * payload bytes published and received, publishes acked in fast-ingest
   * batches, publishes awaiting their ack (or room), received messages not
   * yet acked, redeliveries, reconnects.
   */
  stats () {
    const [msgsOut, bytesOut, msgsOutBatched] = this._native.published()
    const { msgsIn, bytesIn, redelivered, acked, reconnects } = this._stats
    return {
      msgsOut,
      bytesOut,
      msgsOutBatched,
      msgsIn,
      bytesIn,
      publishesPending: this._pending.size + this._waiting.length,
      acksPending: Math.max(0, msgsIn - acked),
      redelivered,
      reconnects
    }
  }

  /** Stream management (JetStream): `add`, `update`, `info`, `list`, `delete`. */
  get streams () { return new Streams(this) }

  /** Consumer management (JetStream): `add`, `info`, `list`, `delete`. */
  get consumers () { return new Consumers(this) }

  /** Opens a KV bucket, creating it (with `history`, `ttl`, ...) unless `create: false`. */
  kv (bucket, options) { return openKV(this, bucket, options) }

  subscriptionOptions () { return new SubscriptionOptions() }

  /**
   * Publishes `data` to channel `subject` and returns the guid. `callback(err, guid)`
   * runs once the server stored the message (or it failed). Beyond
   * `maxPubAcksInflight` unacked publishes, publishes with a callback wait
   * for room; publishes without one throw `stan: max in flight reached.`.
   */
  publish (subject, data, options, callback) {
    if (typeof data === 'function' && options === undefined) {
      callback = data
      data = undefined
    } else if (typeof options === 'function' && callback === undefined) {
      callback = options
      options = undefined
    }
    const cb = typeof callback === 'function' ? callback : undefined
    if (this._state >= CLOSING) return this._failNow(closedError(), cb)
    const payload = payloadOf(data)
    if (payload === undefined) return this._failNow(badData(data), cb)
    if (typeof subject !== 'string' || subject.length === 0) {
      return this._failNow(stanError('BAD_SUBJECT', text.BAD_SUBJECT), cb)
    }
    let headers
    if (options !== undefined && options !== null) {
      try {
        headers = headerList(options, this.options.backend)
      } catch (err) {
        return this._failNow(err, cb)
      }
    }
    const guid = guids.next()
    if (this._state === CONNECTED && this._waiting.length === 0) {
      if (cb === undefined && this._pending.size >= this._maxInFlight) throw stanError('MAX_IN_FLIGHT', text.MAX_IN_FLIGHT)
      // Beyond maxPubAcksInflight, the session task holds it until acks free room.
      return this._send(subject, payload, cb, guid, guids.prefix, guids.seq, headers) ? guid : undefined
    }
    if (cb === undefined && this._state === CONNECTED) throw stanError('MAX_IN_FLIGHT', text.MAX_IN_FLIGHT)
    this._waiting.push({ subject, payload, cb, guid, prefix: guids.prefix, seq: guids.seq, headers })
    return guid
  }

  /**
   * Promise form of `publish`: resolves with the guid once the server stored
   * the message. Beyond `maxPubAcksInflight` it waits for room, never throws.
   */
  publishAsync (subject, data, options) {
    return new Promise((resolve, reject) => {
      this.publish(subject, data, options, (err, guid) => (err ? reject(err) : resolve(guid)))
    })
  }

  _failNow (err, cb) {
    if (cb === undefined) throw err
    process.nextTick(cb, err)
    return undefined
  }

  /**
   * Returns false when the native side refused the publish: the callback
   * gets the error, or, without one, it is thrown.
   */
  _send (subject, payload, cb, guid, prefix, seq, headers) {
    const token = this._nextToken
    this._nextToken = (token + 1) >>> 0
    try {
      if (headers !== undefined) {
        this._flushPack()
        const bytes = typeof payload === 'string' ? Buffer.from(payload) : payload
        this._native.publishWithHeaders(subject, bytes, token, guid, headers)
        this._nativeHolds = true
      } else {
        this._packPublish(subject, payload, guid, token)
      }
    } catch (err) {
      const error = fromNative(err)
      if (cb === undefined) throw error
      process.nextTick(cb, error, guid)
      return false
    }
    this._pending.add(token, cb, prefix, seq)
    if (!this._flushQueued) {
      // The first publish of a tick goes at once, so a lone publish waits
      // for nothing (latency p50 −14 µs); the rest of the tick follows
      // packed at its end.
      this._flushQueued = true
      queueMicrotask(this._flushPublishes)
      this._flushPack(true)
    }
    return true
  }

  /** Adds a publish to this tick's pack; throws as the native side would. */
  _packPublish (subject, payload, guid, token) {
    let channel = this._channels.get(subject)
    if (channel === undefined) {
      if (this._channels.size >= MAX_CHANNELS) {
        this._flushPack()
        this._channels.clear()
        this._native.forgetChannels()
      }
      const [index, envelope] = this._native.registerChannel(subject)
      channel = { index, envelope }
      this._channels.set(subject, channel)
    }
    const text = typeof payload === 'string'
    const length = text ? Buffer.byteLength(payload) : payload.byteLength
    if (this._maxPayload === 0) this._maxPayload = this._native.maxPayload()
    if (length + channel.envelope > this._maxPayload) {
      throw stanError('MAX_PAYLOAD', `stan: payload of ${length} bytes exceeds the server's max_payload of ${Math.max(0, this._maxPayload - channel.envelope)} bytes`)
    }
    const at = this._packUsed
    const end = at + GUID_LENGTH + length
    if (end > this._pack.length) {
      const grown = Buffer.allocUnsafe(Math.max(2 * this._pack.length, end))
      this._pack.copy(grown, 0, 0, at)
      this._pack = grown
    }
    this._pack.write(guid, at, GUID_LENGTH, 'latin1')
    if (text) this._pack.write(payload, at + GUID_LENGTH, length, 'utf8')
    else this._pack.set(payload, at + GUID_LENGTH)
    const meta = this._packMeta
    const slot = 4 * this._packCount
    meta[slot] = channel.index
    meta[slot + 1] = token
    meta[slot + 2] = at
    meta[slot + 3] = length
    this._packUsed = end
    if (++this._packCount === PACK_PUBLISHES || end >= PACK_BYTES) this._flushPack(true)
  }

  /**
   * `now`: written before the call returns (a tick's first publish, or a
   * full pack in a long synchronous burst, which would otherwise wait for
   * the burst to end); the rest is written on the loop's next turn, with
   * whatever else the tick made.
   */
  _flushPack (now = false) {
    if (this._packCount === 0) return
    const count = this._packCount
    const used = this._packUsed
    this._packCount = 0
    this._packUsed = 0
    // A connection that closed meanwhile fails the pending callbacks itself.
    if (this._state >= CLOSING) return
    try {
      this._native.publishPacked(this._pack.subarray(0, used), this._packMeta.subarray(0, 4 * count), now)
      if (this._pack.length > 2 * PACK_BYTES) this._pack = Buffer.allocUnsafe(64 * 1024)
    } catch (err) {
      // The native side closed under us or refused the pack: each callback
      // gets the error, on the next tick as publish errors always do.
      const error = fromNative(err)
      for (let i = 0; i < count; i++) {
        const token = this._packMeta[4 * i + 1]
        if (this._pending.take(token) && this._pending.cb !== null) process.nextTick(this._pending.cb, error, this._pending.guid)
      }
      this._notifySettled()
    }
  }

  _sendWaiting () {
    while (this._waiting.length > 0 && this._state === CONNECTED) {
      const { subject, payload, cb, guid, prefix, seq, headers } = this._waiting.shift()
      try {
        this._send(subject, payload, cb, guid, prefix, seq, headers)
      } catch {
        // Refused (too large for this server, say) and made before connect
        // without a callback: there is no one to tell.
      }
    }
  }

  /**
   * `subscribe(subject, [qGroup], [opts])`: messages arrive as `message`
   * events, never before `ready`.
   */
  subscribe (subject, qGroup, opts) {
    let group
    let options
    if (typeof qGroup === 'string') {
      group = qGroup
      if (opts !== null && typeof opts === 'object') options = opts
    } else if (qGroup !== null && typeof qGroup === 'object') {
      options = qGroup
    } else if (opts !== null && typeof opts === 'object') {
      options = opts
    }
    options = options ?? new SubscriptionOptions()
    const sid = ++this._nextSid
    const sub = new Subscription(this, sid, subject, group, options)
    if (typeof subject !== 'string' || subject.length === 0) {
      sub._closed = true
      process.nextTick(() => sub.emit('error', stanError('BAD_SUBJECT', text.BAD_SUBJECT)))
      return sub
    }
    if (this._state >= CLOSING) {
      sub._closed = true
      process.nextTick(() => sub.emit('error', closedError()))
      return sub
    }
    this._subs.set(sid, sub)
    // Publishes made before it reach the server first, as they were made first.
    this._flushPack()
    if (this._state === CONNECTED) sub._start(this._native)
    return sub
  }

  _forgetSubscription (sub) {
    this._subs.delete(sub._sid)
  }

  /**
   * Stops deliveries, waits for running handlers (of Listeners and for-await
   * loops) and their acks, waits for every publish to be acknowledged, then
   * closes. Subscriptions are closed, so durables keep their position.
   */
  async drain () {
    if (this._state >= CLOSING) return this._whenClosed
    const subs = [...this._subs.values()]
    for (const sub of subs) sub._draining = true
    await Promise.allSettled(subs.flatMap((sub) => [...sub._work]))
    for (const sub of subs) sub._sendAcks()
    await this._publishesSettled()
    for (const sub of subs) {
      if (!sub._closed && sub._native !== null) {
        // The connection may end first (connection_lost): then so does the wait.
        const ended = new Promise((resolve) => {
          const done = () => { sub.off('closed', done); sub.off('error', done); this.off('close', done); resolve() }
          sub.once('closed', done)
          sub.once('error', done)
          this.once('close', done)
        })
        sub.close()
        await ended
      }
    }
    return this.close()
  }

  _publishesSettled () {
    if (this._pending.size === 0 && this._waiting.length === 0) return Promise.resolve()
    return new Promise((resolve) => this._settledListeners.push(resolve))
  }

  /**
   * Closes the connection; `close` follows once the native side has
   * stopped. Returns a promise of that moment (it never rejects), so
   * `await sc.close()` works too.
   */
  close () {
    if (this._state >= CLOSING) return this._whenClosed
    // Publishes and acks made in this tick (say, just before close() in a
    // handler) go first.
    this._flushPack()
    for (const sub of this._subs.values()) sub._sendAcks()
    this._state = CLOSING
    this._failPending(closedError())
    this._native.close()
    return this._whenClosed
  }

  _failPending (err) {
    const pending = [...this._pending.drain(), ...this._waiting.drain()]
    for (const { cb, guid } of pending) {
      if (cb !== null && cb !== undefined) guarded(cb, err, guid)
    }
    this._notifySettled()
  }

  _onWake () {
    // A field the poll has nothing for is absent.
    const poll = this._native.poll()
    let closed = false
    if (poll.events !== undefined) {
      for (const event of poll.events) {
        if (event.kind === 'close') closed = true
        // Kept across polls: the close may come in the next one.
        else if (event.kind === 'close_error') this._closeError = fromNative(event)
        else guarded(() => this._onEvent(event))
      }
    }
    if (poll.deliveries !== undefined) {
      for (const delivery of poll.deliveries) {
        const sub = this._subs.get(delivery.sid)
        if (sub !== undefined && !sub._closed) guarded(() => sub._deliver(delivery.data, delivery.meta, delivery.headerIndex, delivery.headerText))
      }
    }
    if (poll.acked !== undefined || poll.failed !== undefined) this._settle(poll.acked, poll.failed)
    if (closed) this._onClosed(this._closeError)
  }

  /**
   * 0.3.2's message text stays as it was (applications compare it); who and
   * where go in fields, which Node prints with the error.
   */
  _withContext (err) {
    err.clusterID = this.clusterID
    err.clientID = this.clientID
    err.servers = this._servers
    return err
  }

  _onEvent (event) {
    switch (event.kind) {
      case 'connect':
        if (this._state !== CONNECTING) return
        this._state = CONNECTED
        this._maxPayload = this._native.maxPayload()
        Object.assign(this, this._native.protocolSubjects() ?? {})
        for (const sub of this._subs.values()) sub._start(this._native)
        this._sendWaiting()
        this.emit('connect', this)
        break
      case 'connect_error': {
        this._state = CLOSING
        const err = this._withContext(fromNative(event))
        this._failPending(err)
        this.emit('error', err)
        break
      }
      case 'connection_lost': {
        // 0.3.2: pending publishes get the same error, then `close` follows.
        const err = fromNative(event)
        this._state = CLOSING
        this._failPending(err)
        this.emit('connection_lost', err)
        break
      }
      case 'log':
        if (this.options.logger !== undefined) guarded(this.options.logger, event.message)
        break
      case 'disconnect':
        this.emit('disconnect')
        break
      case 'reconnecting':
        this.emit('reconnecting')
        break
      case 'reconnect':
        this._stats.reconnects++
        this.emit('reconnect', this)
        break
      case 'error':
        this.emit('error', fromNative(event))
        break
      default: {
        const sub = this._subs.get(event.sid)
        if (sub === undefined) return
        if (event.kind === 'unsubscribed' || event.kind === 'closed' || event.kind === 'timeout') this._subs.delete(event.sid)
        sub._onEvent(event)
      }
    }
  }

  _settle (acked = NO_TOKENS, failed = NO_FAILURES) {
    for (let i = 0; i < acked.length; i++) {
      if (this._pending.take(acked[i]) && this._pending.cb !== null) guarded(this._pending.cb, undefined, this._pending.guid)
    }
    for (const failure of failed) {
      if (this._pending.take(failure.token) && this._pending.cb !== null) guarded(this._pending.cb, fromNative(failure), this._pending.guid)
    }
    this._notifySettled()
  }

  _notifySettled () {
    if (this._pending.size > 0 || this._waiting.length > 0 || this._settledListeners.length === 0) return
    const listeners = this._settledListeners
    this._settledListeners = []
    for (const resolve of listeners) resolve()
  }

  /** `closeError`: the server refused the close request (0.3.2 passes it to `close`). */
  _onClosed (closeError) {
    this._state = CLOSED
    this._failPending(closedError())
    this._subs.clear()
    if (closeError === undefined) emitGuarded(this, 'close')
    else emitGuarded(this, 'close', closeError)
  }
}

function connect (clusterID, clientID, opts) {
  return new Stan(clusterID, clientID, opts)
}

/** Promise form of `connect`: resolves once connected, rejects with the connect error. */
function connectAsync (clusterID, clientID, opts) {
  return new Promise((resolve, reject) => {
    const sc = new Stan(clusterID, clientID, opts)
    const onError = (err) => { sc.off('connect', onConnect); reject(err) }
    const onConnect = () => { sc.off('error', onError); resolve(sc) }
    sc.once('connect', onConnect)
    sc.once('error', onError)
  })
}

module.exports = { connect, connectAsync, Stan }
