'use strict'

// Moving a nats-streaming-server's channels and durable positions into the
// streams and consumers the jetstream backend uses, so a service switched
// with JETSTAN_BACKEND=jetstream finds what it left on STAN.
//
// - Channels are listed by the server's monitoring endpoint
//   (/streaming/channelsz?subs=1: first/last sequence, subscriptions) and read
//   through the stan backend. Each goes into the stream the jetstream backend
//   would use (its name, its STAN-like limits), created with `first_seq` =
//   the channel's first sequence; every message is published with
//   `Nats-Expected-Last-Sequence` = its sequence − 1, so stream sequence =
//   STAN sequence or the publish fails, and a re-run cannot store anything
//   twice. A gap (messages the server no longer has) is kept as a gap: a
//   placeholder is stored and deleted. The original time goes in the
//   `Stan-Timestamp` header, which the jetstream backend's getTimestamp()
//   returns.
// - Resuming: the stream's last sequence says where the last run stopped.
// - Durables: an offline durable (or durable queue group with no member) with
//   nothing unacked starts at last_sent + 1. With `pending_count` unacked
//   messages, the migration resumes the durable on STAN with maxInFlight =
//   pending_count and no acks: the server redelivers exactly the unacked
//   messages first and sends nothing new; then it closes (the durable keeps
//   its state on STAN, for a roll back). The JetStream consumer starts at the
//   lowest of them, every other message up to last_sent is acked on it, and
//   the unacked ones are released, so the service gets exactly those (marked
//   redelivered, as STAN would). A durable that is online is not carried:
//   its position moves while it runs (with `follow`, it is carried once its
//   service stops).
// - Verification: per channel, count and SHA-256 over (sequence, payload) of
//   both sides over the range both hold.
//
// node:crypto is required where it is used: loading it adds 2 MB to the
// RSS of every process that requires jetstan.

const stan = require('./stan')
const { jetstreamNames } = require('./native')
const { StanError } = require('./errors')

const PAGE = 1024
const READ_IN_FLIGHT = 1024
const PUBLISH_WINDOW = 512
const STALL_MS = 10000
const REDELIVERY_WAIT_MS = 5000
const STAN_TIMESTAMP = 'Stan-Timestamp'

function fail (code, message) {
  return new StanError(code, `jetstan migrate: ${message}`)
}

async function getJson (url) {
  let res
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(5000) })
  } catch (err) {
    throw fail('MONITOR_UNREACHABLE', `cannot reach the STAN monitoring endpoint ${url}: ${err.cause?.message ?? err.message}`)
  }
  if (!res.ok) throw fail('MONITOR_UNREACHABLE', `${url} answered ${res.status}`)
  return res.json()
}

/** Every channel with its subscriptions, paging through channelsz. */
async function listChannels (monitor) {
  const channels = []
  for (let offset = 0; ; offset += PAGE) {
    const page = await getJson(`${monitor}/streaming/channelsz?subs=1&offset=${offset}&limit=${PAGE}`)
    channels.push(...(page.channels ?? []))
    if (channels.length >= (page.total ?? 0) || (page.channels ?? []).length === 0) return channels
  }
}

async function channelInfo (monitor, name) {
  return getJson(`${monitor}/streaming/channelsz?channel=${encodeURIComponent(name)}&subs=1`)
}

/** Count and SHA-256 over (sequence, length, payload) in sequence order. */
class Checksum {
  constructor () {
    this.hash = require('node:crypto').createHash('sha256')
    this.count = 0
  }

  add (sequence, data) {
    const head = Buffer.alloc(12)
    head.writeBigUInt64BE(BigInt(sequence))
    head.writeUInt32BE(data.length, 8)
    this.hash.update(head).update(data)
    this.count++
  }

  digest () {
    return { count: this.count, sha256: this.hash.digest('hex') }
  }
}

function streamConfig (name, channel, firstSeq, defaults = {}) {
  return {
    name,
    subjects: [channel],
    storage: defaults.storage ?? 'file',
    max_msgs: defaults.maxMsgs ?? 1000000,
    max_bytes: defaults.maxBytes ?? 1024 * 1024 * 1024,
    max_age: (defaults.maxAge ?? 0) * 1e6,
    num_replicas: defaults.replicas ?? 1,
    discard: defaults.discard ?? 'old',
    ...(firstSeq > 1 ? { first_seq: firstSeq } : {})
  }
}

function neverStored (info) {
  return info.state.messages === 0 && String(info.state.last_ts).startsWith('0001-')
}

/** `durable:group` as channelsz shows a durable queue group. */
function identityOf (sub) {
  if (sub.queue_name) {
    const colon = sub.queue_name.indexOf(':')
    return colon < 0 ? null : { durable: sub.queue_name.slice(0, colon), group: sub.queue_name.slice(colon + 1) }
  }
  return sub.is_durable ? { durable: sub.durable_name, group: null } : null
}

class Migration {
  constructor (opts) {
    this.opts = opts
    this.progress = opts.onProgress ?? (() => {})
    this.channels = new Map() // name -> report row
    this.durables = new Map() // key -> report row
    this.tails = new Map() // channel -> { sub, ... } while following
    this.copied = 0
    this.copyMs = 0
    this.src = null
    this.dst = null
  }

  id (what) {
    return `jetstan-migrate-${what}-${require('node:crypto').randomBytes(4).toString('hex')}`
  }

  async open () {
    const { from, to, cluster, monitor } = this.opts
    const serverz = await getJson(`${monitor}/streaming/serverz`)
    if (serverz.cluster_id !== cluster) {
      throw fail('UNKNOWN_CLUSTER', `the STAN server at ${monitor} serves cluster '${serverz.cluster_id}', not '${cluster}'`)
    }
    const connect = (url, backend, what) => stan.connectAsync(cluster, this.id(what), { url, backend, connectTimeout: 5000, ...this.opts.connectOptions })
      .catch((err) => { throw fail(err.code ?? 'CONN_ERR', `cannot connect to the ${what} (${url}): ${err.message}`) })
    this.src = await connect(from, 'stan', 'source')
    try {
      this.dst = await connect(to, 'jetstream', 'target')
    } catch (err) {
      await this.src.close().catch(() => {})
      throw err
    }
  }

  async close () {
    for (const tail of this.tails.values()) tail.sub.close()
    await Promise.allSettled([this.src?.close(), this.dst?.close()])
  }

  async selected () {
    const all = await listChannels(this.opts.monitor)
    if (this.opts.all) return all
    const byName = new Map(all.map((c) => [c.name, c]))
    return this.opts.channels.map((name) => {
      const channel = byName.get(name)
      if (channel === undefined) throw fail('UNKNOWN_CHANNEL', `the STAN server has no channel '${name}'`)
      return channel
    })
  }

  row (channel) {
    let row = this.channels.get(channel.name)
    if (row === undefined) {
      const { stream } = jetstreamNames(this.opts.cluster, '', channel.name)
      row = { channel: channel.name, stream, firstSeq: channel.first_seq, lastSeq: channel.last_seq, copied: 0, resumedAt: null, gaps: 0, expired: 0, verified: null }
      this.channels.set(channel.name, row)
    }
    return row
  }

  /**
   * The target stream, created if missing; resolves with its last sequence
   * and whether nothing was ever stored in it.
   */
  async prepareStream (channel, row) {
    let info = null
    try {
      info = await this.dst.streams.info(row.stream)
    } catch (err) {
      if (err.code !== 'STREAM_NOT_FOUND') throw err
    }
    if (info !== null) {
      const subjects = info.config.subjects ?? []
      if (subjects.length !== 1 || subjects[0] !== channel.name) {
        throw fail('TARGET_CONFLICT', `stream '${row.stream}' exists with subjects [${subjects.join(', ')}], not [${channel.name}]; delete or rename it`)
      }
      return { last: info.state.last_seq, fresh: neverStored(info) }
    }
    if (this.opts.dryRun) return { last: Math.max(0, channel.first_seq - 1), fresh: true }
    try {
      info = await this.dst.streams.add(streamConfig(row.stream, channel.name, channel.first_seq, this.opts.streamDefaults))
    } catch (err) {
      throw fail('TARGET_CONFLICT', `cannot create stream '${row.stream}' for channel '${channel.name}' (another stream may capture the subject): ${err.message}`)
    }
    return { last: info.state.last_seq, fresh: true }
  }

  /**
   * Copies the channel from `next` on and resolves once the stream holds
   * `through`. With `follow` the subscription stays for the tail (see
   * `tails`); its later failures land in the channel's row.
   */
  copy (channel, row, next, through, { follow, fresh }) {
    return new Promise((resolve, reject) => {
      const started = Date.now()
      const tail = { sub: null, expected: next, stored: next - 1, error: null }
      const queue = []
      let busy = false
      let caughtUp = false
      let stallTimer = null
      // The server checks the expected last sequence against 0 until a
      // stream created with first_seq stores its first message.
      let unchecked = fresh
      const publish = (seq, data, headers) => {
        const expect = unchecked ? {} : { 'Nats-Expected-Last-Sequence': String(seq - 1) }
        unchecked = false
        return this.dst.publishAsync(channel.name, data, { headers: { ...headers, ...expect } })
      }

      const finish = (err) => {
        clearTimeout(stallTimer)
        if (!caughtUp) {
          caughtUp = true
          this.copyMs += Date.now() - started
          if (err || !follow) tail.sub.close()
          else this.tails.set(channel.name, tail)
          return err ? reject(err) : resolve()
        }
        if (err) {
          // A failure while following: stop this channel, report it.
          tail.error = err
          row.error = err.message
          tail.sub.close()
        }
      }
      const check = () => {
        if (!caughtUp && tail.stored >= through) return finish()
        if (caughtUp) return
        clearTimeout(stallTimer)
        stallTimer = setTimeout(() => {
          channelInfo(this.opts.monitor, channel.name).then((now) => {
            // Messages from `expected` on expired at the STAN side: keep the gap.
            if (now.first_seq > tail.expected) {
              row.expired += now.first_seq - tail.expected
              queue.unshift({ gapTo: now.first_seq - 1 })
              pump()
            } else {
              finish(fail('STALLED', `channel '${channel.name}' delivered nothing after sequence ${tail.expected - 1} for ${STALL_MS} ms (last is ${through})`))
            }
          }, finish)
        }, STALL_MS)
      }
      // Publishes are pipelined in sequence order (the server checks each
      // one's expected last sequence); a gap waits for what is ahead of it.
      const inflight = []
      const settle = async (all) => {
        while (inflight.length > (all ? 0 : PUBLISH_WINDOW)) await inflight.shift()
      }
      const pump = async () => {
        if (busy) return
        busy = true
        try {
          while (queue.length > 0 && tail.error === null) {
            const item = queue.shift()
            const to = item.gapTo ?? item.msg.getSequence() - 1
            if (item.msg !== undefined && item.msg.getSequence() < tail.expected) { // a redelivery of what is copied
              item.msg.ack()
              continue
            }
            if (tail.expected <= to) {
              if (item.msg !== undefined) row.gaps += to - tail.expected + 1
              await settle(true)
              for (; tail.expected <= to; tail.expected++) await this.gap(row, tail.expected, publish)
            }
            if (item.msg === undefined) continue
            const msg = item.msg
            const seq = msg.getSequence()
            tail.expected = seq + 1
            inflight.push(publish(seq, msg.getRawData(), { [STAN_TIMESTAMP]: String(msg.getTimestampRaw()) }).then(() => {
              msg.ack()
              tail.stored = Math.max(tail.stored, seq)
              row.lastSeq = Math.max(row.lastSeq, seq)
              row.copied++
              this.copied++
              this.progress({ type: 'copy', channel: channel.name, sequence: seq, lastSeq: Math.max(through, row.lastSeq), copied: row.copied })
            }))
            await settle(queue.length === 0)
          }
        } catch (err) {
          await Promise.allSettled(inflight.splice(0))
          finish(fail(err.code ?? 'COPY_FAILED', `copying channel '${channel.name}' at sequence ${tail.stored + 1}: ${err.message}`))
        } finally {
          busy = false
        }
        check()
      }
      const opts = this.src.subscriptionOptions().setManualAckMode(true).setMaxInFlight(READ_IN_FLIGHT).setAckWait(60000)
        .setStartAtSequence(next)
      tail.sub = this.src.subscribe(channel.name, opts)
      tail.sub.on('error', (err) => finish(fail(err.code ?? 'COPY_FAILED', `reading channel '${channel.name}': ${err.message}`)))
      tail.sub.on('message', (msg) => {
        queue.push({ msg })
        pump()
      })
      tail.sub.on('ready', check)
    })
  }

  /** Keeps sequence `seq` a gap in the stream: a placeholder, stored and deleted. */
  async gap (row, seq, publish) {
    await publish(seq, Buffer.alloc(0), { 'Jetstan-Gap': '1' })
    await this.dst.streams.deleteMessage(row.stream, seq)
  }

  async copyChannel (channel) {
    const row = this.row(channel)
    const { last, fresh } = await this.prepareStream(channel, row)
    // Messages the STAN side dropped since `last` become a gap when the copy meets them.
    const next = last + 1
    if (!fresh) row.resumedAt = next
    this.progress({ type: 'channel', channel: channel.name, firstSeq: channel.first_seq, lastSeq: channel.last_seq, next })
    if (this.opts.dryRun) {
      row.copied = Math.max(0, channel.last_seq - next + 1)
      return
    }
    await this.copy(channel, row, next, channel.last_seq, { follow: this.opts.follow, fresh })
  }

  durableRow (channel, sub, identity) {
    const key = `${channel.name}\u0000${identity.group === null ? sub.client_id : ''}\u0000${identity.durable}\u0000${identity.group ?? ''}`
    let row = this.durables.get(key)
    if (row === undefined) {
      const names = jetstreamNames(this.opts.cluster, identity.group === null ? sub.client_id : '', channel.name, identity.durable, identity.group)
      row = {
        channel: channel.name,
        clientID: identity.group === null ? sub.client_id : null,
        durable: identity.durable,
        queueGroup: identity.group,
        stream: names.stream,
        consumer: names.consumer,
        status: 'pending',
        startSeq: null,
        unacked: []
      }
      this.durables.set(key, row)
    }
    return row
  }

  /** Carries each durable of `channel` that is offline and not carried yet. */
  async carryDurables (channel) {
    for (const sub of channel.subscriptions ?? []) {
      const identity = identityOf(sub)
      if (identity === null || !sub.is_durable) continue
      const row = this.durableRow(channel, sub, identity)
      if (row.status === 'carried' || row.status === 'exists') continue
      if (!sub.is_offline) {
        if (row.status !== 'online') this.progress({ type: 'durable', ...row, status: 'online' })
        row.status = 'online'
        continue
      }
      try {
        await this.carry(channel, sub, row)
        delete row.error
      } catch (err) {
        row.status = 'failed'
        row.error = `${err.code ?? 'ERROR'}: ${err.message}`
      }
      this.progress({ type: 'durable', ...row })
    }
  }

  async carry (channel, sub, row) {
    try {
      await this.dst.consumers.info(row.stream, row.consumer)
      row.status = 'exists'
      return
    } catch (err) {
      if (err.code !== 'CONSUMER_NOT_FOUND' && err.code !== 'STREAM_NOT_FOUND') throw err
    }
    const unacked = sub.pending_count > 0 ? await this.unackedOf(channel, sub, row) : []
    row.unacked = unacked
    row.startSeq = unacked.length > 0 ? unacked[0] : sub.last_sent + 1
    if (this.opts.dryRun) {
      row.status = 'would carry'
      return
    }
    // The stream must hold what the durable was sent before it can be acked there.
    const tail = this.tails.get(channel.name)
    if (tail !== undefined) await this.until(() => tail.stored >= sub.last_sent, `channel '${channel.name}' copied up to ${sub.last_sent}`)
    await this.dst.consumers.add(row.stream, {
      durable_name: row.consumer,
      name: row.consumer,
      deliver_policy: 'by_start_sequence',
      opt_start_seq: row.startSeq,
      ack_policy: 'explicit',
      ack_wait: Math.max(1, sub.ack_wait) * 1e9,
      // One more than the unacked it holds back, so the others can pass while it settles.
      max_ack_pending: row.queueGroup !== null ? Math.max(sub.max_inflight, 1000) : Math.max(sub.max_inflight, unacked.length + 1),
      filter_subject: channel.name
    })
    if (unacked.length > 0) {
      row.settled = await this.dst.consumers.settle(row.stream, row.consumer, sub.last_sent, unacked)
    }
    row.status = 'carried'
  }

  async until (test, what) {
    const deadline = Date.now() + 60000
    while (!test()) {
      if (Date.now() > deadline) throw fail('STALLED', `waited 60 s for ${what}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  /**
   * The sequences a durable has not acked: resumed on STAN with maxInFlight
   * = pending_count and without acking, the server redelivers exactly those
   * and sends nothing new; closing keeps the durable as it was.
   */
  async unackedOf (channel, sub, row) {
    const clientID = row.queueGroup === null ? sub.client_id : this.id('queue')
    let sc
    try {
      sc = await stan.connectAsync(this.opts.cluster, clientID, { url: this.opts.from, backend: 'stan', connectTimeout: 5000, ...this.opts.connectOptions })
    } catch (err) {
      if (err.code === 'CLIENT_ID_IN_USE') throw fail('DURABLE_ONLINE', `client '${clientID}' is connected to STAN; stop it to carry its durable '${row.durable}'`)
      throw err
    }
    try {
      const opts = sc.subscriptionOptions().setDurableName(row.durable).setManualAckMode(true)
        .setMaxInFlight(sub.pending_count).setAckWait(Math.max(sub.ack_wait, 60) * 1000)
      const s = row.queueGroup === null ? sc.subscribe(channel.name, opts) : sc.subscribe(channel.name, row.queueGroup, opts)
      const seen = new Set()
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(fail('DURABLE_STATE', `durable '${row.durable}' on '${channel.name}' redelivered ${seen.size} of its ${sub.pending_count} unacked messages within ${REDELIVERY_WAIT_MS} ms`)), REDELIVERY_WAIT_MS)
        s.on('error', (err) => { clearTimeout(timer); reject(err) })
        s.on('message', (msg) => {
          if (msg.isRedelivered()) seen.add(msg.getSequence())
          if (seen.size >= sub.pending_count) { clearTimeout(timer); resolve() }
        })
      })
      await new Promise((resolve) => { s.once('closed', resolve); s.close() })
      return [...seen].sort((a, b) => a - b)
    } finally {
      await sc.close().catch(() => {})
    }
  }

  /** Count and checksum of both sides over the range both hold. */
  async verify (name) {
    const row = this.channels.get(name)
    const channel = await channelInfo(this.opts.monitor, name)
    const info = await this.dst.streams.info(row.stream)
    const first = Math.max(channel.first_seq, info.state.first_seq)
    const last = Math.min(channel.last_seq, info.state.last_seq)
    const [source, target] = await Promise.all([
      this.read(this.src, name, first, last),
      this.read(this.dst, name, first, last)
    ])
    row.verified = { first, last, source, target, match: source.count === target.count && source.sha256 === target.sha256 }
    if (channel.first_seq > row.firstSeq) row.expired = Math.max(row.expired, channel.first_seq - row.firstSeq)
    return row.verified
  }

  /** Reads `first..last` of a channel through `sc` into a checksum. */
  read (sc, channel, first, last) {
    const sum = new Checksum()
    if (last < first || last === 0) return Promise.resolve(sum.digest())
    return new Promise((resolve, reject) => {
      const opts = sc.subscriptionOptions().setStartAtSequence(first).setMaxInFlight(READ_IN_FLIGHT)
      const sub = sc.subscribe(channel, opts)
      let timer = null
      const arm = () => {
        clearTimeout(timer)
        timer = setTimeout(() => { sub.close(); resolve(sum.digest()) }, STALL_MS)
      }
      sub.on('ready', arm)
      sub.on('error', (err) => { clearTimeout(timer); reject(err) })
      sub.on('message', (msg) => {
        const seq = msg.getSequence()
        if (seq > last) return
        sum.add(seq, msg.getRawData())
        if (seq === last) {
          clearTimeout(timer)
          sub.close()
          resolve(sum.digest())
        } else {
          arm()
        }
      })
    })
  }

  report () {
    const channels = [...this.channels.values()]
    const durables = [...this.durables.values()]
    const ok = channels.every((c) => c.error === undefined && (c.verified === null ? this.opts.dryRun : c.verified.match)) &&
      durables.every((d) => d.status === 'carried' || d.status === 'exists' || d.status === 'would carry')
    return {
      ok,
      dryRun: Boolean(this.opts.dryRun),
      copied: this.copied,
      messagesPerSecond: this.copyMs > 0 ? Math.round(this.copied / (this.copyMs / 1000)) : null,
      channels,
      durables
    }
  }
}

/**
 * Copies channels and durable positions from a STAN server to JetStream; see
 * the top of this file. Resolves with the report (`ok` false on any
 * mismatch or durable not carried).
 */
async function migrate (opts) {
  const options = { ...opts }
  if (!options.from || !options.to || !options.cluster) throw fail('BAD_OPTION', 'from, to and cluster are required')
  if (!options.all && !(Array.isArray(options.channels) && options.channels.length > 0)) {
    throw fail('BAD_OPTION', 'name the channels to migrate, or all: true')
  }
  if (options.follow && options.dryRun) throw fail('BAD_OPTION', 'follow and dryRun do not go together')
  options.monitor = (options.monitor ?? defaultMonitor(options.from)).replace(/\/+$/, '')
  const migration = new Migration(options)
  await migration.open()
  try {
    const channels = await migration.selected()
    for (const channel of channels) await migration.copyChannel(channel)
    for (const channel of channels) await migration.carryDurables(channel)
    if (options.follow) await follow(migration, options)
    if (!options.dryRun) {
      for (const name of migration.channels.keys()) {
        migration.progress({ type: 'verify', channel: name })
        await migration.verify(name)
      }
    }
    return migration.report()
  } finally {
    await migration.close()
  }
}

/** Keeps copying and carrying durables as they go offline, until `signal` aborts. */
async function follow (migration, options) {
  const signal = options.signal
  const pollMs = options.pollMs ?? 1000
  while (!signal?.aborted) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, pollMs)
      signal?.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
    })
    // A run that follows for days outlives a monitoring endpoint that
    // blinks or a channel that fails: say so and keep going.
    try {
      const channels = await migration.selected()
      for (const channel of channels) {
        if (!migration.channels.has(channel.name)) await migration.copyChannel(channel)
        await migration.carryDurables(channel)
      }
    } catch (err) {
      migration.progress({ type: 'error', channel: null, code: err.code, message: err.message })
    }
  }
  // A last catch-up: what was published before the stop is in the stream.
  for (const [name, tail] of migration.tails) {
    const channel = await channelInfo(options.monitor, name)
    await migration.until(() => tail.stored >= channel.last_seq || tail.error !== null, `channel '${name}' copied up to ${channel.last_seq}`)
  }
}

function defaultMonitor (from) {
  const url = new URL(from.replace(/^nats:/, 'http:'))
  return `http://${url.hostname}:8222`
}

module.exports = { migrate, Checksum }
