'use strict'

// A STAN (nats-streaming-server) test double: the server side of the
// protocol in shared/reference/stan-protocol.md, as a core-NATS client of a
// real nats-server. Memory store only. It is a test double for jetstan's
// tests, not a production server.
//
// Everything a client sends is handled in arrival order on one NATS
// connection, which gives the ordering guarantees of §10.4 for free.

const crypto = require('node:crypto')
const http = require('node:http')
const { connect } = require('@nats-io/transport-node')
const { encode, decode } = require('./codec')

const STAN_ERRORS = Object.freeze({
  INVALID_CONN_REQ: 'stan: invalid connection request',
  INVALID_CLIENT_ID: 'stan: invalid clientID: only alphanumeric and `-` or `_` characters allowed',
  CLIENT_ID_TAKEN: 'stan: clientID already registered',
  INVALID_PUB_REQ: 'stan: invalid publish request',
  INVALID_SUB_REQ: 'stan: invalid subscription request',
  CLIENT_ID_MISSING: 'stan: clientID missing',
  INVALID_ACK_WAIT: 'stan: invalid ack wait time, should be >= 1s',
  INVALID_MAX_INFLIGHT: 'stan: invalid MaxInflight, should be >= 1',
  INVALID_START: 'stan: invalid start position',
  INVALID_SUBJECT: 'stan: invalid subject',
  UNKNOWN_CLIENT: 'stan: unknown clientID',
  DURABLE_QUEUE_COLON: "stan: durable name of a durable queue subscriber can't contain the character ':'",
  DUPLICATE_DURABLE: 'stan: duplicate durable registration',
  INVALID_UNSUB_REQ: 'stan: invalid unsubscribe request',
  UNKNOWN_CHANNEL: 'stan: unknown channel',
  INVALID_SUB: 'stan: invalid subscription',
  INVALID_CLOSE_REQ: 'stan: invalid close request',
  REPLACED: 'client has been replaced or is no longer registered'
})

const CLIENT_ID = /^[a-zA-Z0-9_-]+$/

function validChannel (name) {
  return typeof name === 'string' && name.length > 0 && !name.startsWith('.') && !name.endsWith('.') &&
    !name.includes('..') && !/[/*>\s]/.test(name)
}

function nowNs () {
  return BigInt(Date.now()) * 1000000n + BigInt(process.hrtime.bigint() % 1000000n)
}

function nuid () {
  return crypto.randomBytes(11).toString('hex').toUpperCase()
}

class StanDouble {
  /**
   * @param {object} opts
   * @param {string} opts.url           the nats-server to run on
   * @param {string} [opts.clusterID]   default 'test-cluster'
   * @param {number} [opts.probeTimeoutMs] duplicate-client-ID probe (default 500)
   * @param {number} [opts.heartbeatIntervalMs] 0 disables heartbeats (default)
   * @param {object} [opts.natsOptions] more nats.js connect options (credentials, tls) for a secured server
   * @param {boolean} [opts.monitor] serve the monitoring endpoints (/streaming/serverz, /streaming/channelsz) on
   *   127.0.0.1 at a free port; `monitorUrl` is set after start()
   */
  constructor ({ url, clusterID = 'test-cluster', discoverPrefix = '_STAN.discover', probeTimeoutMs = 500, heartbeatIntervalMs = 0, natsOptions = {}, monitor = false }) {
    this.url = url
    this.monitor = monitor
    this.monitorUrl = null
    this.http = null
    this.serverID = nuid()
    this.natsOptions = natsOptions
    this.clusterID = clusterID
    this.discoverSubject = `${discoverPrefix}.${clusterID}`
    this.subjects = {
      pubPrefix: `_STAN.pub.${clusterID}`,
      subRequests: `_STAN.sub.${clusterID}`,
      unsubRequests: `_STAN.unsub.${clusterID}`,
      subCloseRequests: `_STAN.subclose.${clusterID}`,
      closeRequests: `_STAN.close.${clusterID}`,
      pingRequests: `${this.discoverSubject}.pings`
    }
    this.probeTimeoutMs = probeTimeoutMs
    this.heartbeatIntervalMs = heartbeatIntervalMs
    this.clients = new Map() // clientID -> client
    this.channels = new Map() // name -> { msgs: [], first, last, subs: Set, groups: Map }
    this.durables = new Map() // `${clientID}-${channel}-${durable}` -> offline sub state
    this.faults = new Map() // frame type -> fault for the next such frame
    this.nc = null
  }

  async start () {
    // Like a real streaming server's embedded client: reconnect for as long
    // as it takes, so tests may stop and restart nats-server under it.
    this.nc = await connect({
      ...this.natsOptions,
      servers: this.url,
      name: `stan-double-${this.clusterID}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 50
    })
    this._watchConnection()
    const handle = (subject, fn) => this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return
        Promise.resolve(fn(msg)).catch((e) => console.error(`stan double: ${subject}: ${e.stack}`))
      }
    })
    handle(this.discoverSubject, (m) => this._connect(m))
    handle(this.subjects.pingRequests, (m) => this._ping(m))
    handle(`${this.subjects.pubPrefix}.>`, (m) => this._publish(m))
    handle(this.subjects.subRequests, (m) => this._subscribe(m))
    handle(this.subjects.unsubRequests, (m) => this._unsubscribe(m, false))
    handle(this.subjects.subCloseRequests, (m) => this._unsubscribe(m, true))
    handle(this.subjects.closeRequests, (m) => this._close(m))
    await this.nc.flush()
    if (this.monitor) await this._serveMonitoring()
    return this
  }

  /** Resolves once the double's own NATS connection is up (after a server restart). */
  async reachable () {
    await this._up
    await this.nc.flush()
  }

  _watchConnection () {
    let markUp = () => {}
    this._up = Promise.resolve()
    const watch = async () => {
      for await (const status of this.nc.status()) {
        if (status.type === 'disconnect') this._up = new Promise((resolve) => { markUp = resolve })
        else if (status.type === 'reconnect') markUp()
      }
    }
    watch().catch(() => {})
  }

  async stop () {
    for (const client of this.clients.values()) clearInterval(client.heartbeat)
    for (const channel of this.channels.values()) {
      for (const sub of channel.subs) this._stopTimers(sub)
    }
    await this.nc?.close()
    if (this.http !== null) await new Promise((resolve) => this.http.close(resolve))
  }

  /**
   * Test knob (§11.2): the next frame of `type` (a reply or a MsgProto) is
   * replaced: `{ raw }` sends those bytes instead (malformed frames),
   * `{ error }` sets its error field, `{ silent: true }` drops it. With
   * `clientID`, only a close response to that client is replaced (other
   * clients' frames pass as they are).
   */
  injectNext (type, fault) {
    this.faults.set(type, fault)
  }

  _reply (msg, type, body, clientID) {
    if (msg.reply) this._sendFrame(msg.reply, type, body, clientID)
  }

  _sendFrame (subject, type, body, clientID) {
    const fault = this.faults.get(type)
    if (fault === undefined || (fault.clientID !== undefined && fault.clientID !== clientID)) {
      return this.nc.publish(subject, encode(type, body))
    }
    this.faults.delete(type)
    if (fault.silent) return
    this.nc.publish(subject, fault.raw ?? encode(type, { ...body, error: fault.error }))
  }

  // ---------------------------------------------------------------- connect
  async _connect (msg) {
    let req
    try { req = decode('ConnectRequest', msg.data) } catch { return this._reply(msg, 'ConnectResponse', { error: STAN_ERRORS.INVALID_CONN_REQ }) }
    if (req.heartbeatInbox === '') return this._reply(msg, 'ConnectResponse', { error: STAN_ERRORS.INVALID_CONN_REQ })
    if (!CLIENT_ID.test(req.clientID)) return this._reply(msg, 'ConnectResponse', { error: STAN_ERRORS.INVALID_CLIENT_ID })
    const existing = this.clients.get(req.clientID)
    if (existing !== undefined) {
      if (existing.probing || await this._alive(existing)) {
        return this._reply(msg, 'ConnectResponse', { error: STAN_ERRORS.CLIENT_ID_TAKEN })
      }
      this._dropClient(existing)
    }
    const client = {
      clientID: req.clientID,
      heartbeatInbox: req.heartbeatInbox,
      connID: Buffer.from(req.connID),
      subs: new Set(),
      probing: false,
      heartbeat: null
    }
    this.clients.set(client.clientID, client)
    if (this.heartbeatIntervalMs > 0) {
      client.heartbeat = setInterval(() => this.nc.publish(client.heartbeatInbox, Buffer.alloc(0)), this.heartbeatIntervalMs)
    }
    const response = { ...this.subjects, protocol: 1 }
    if (req.protocol >= 1) {
      response.pingInterval = req.pingInterval
      response.pingMaxOut = req.pingMaxOut
    } else {
      delete response.pingRequests
    }
    this._reply(msg, 'ConnectResponse', response)
  }

  async _alive (client) {
    client.probing = true
    try {
      await this.nc.request(client.heartbeatInbox, Buffer.alloc(0), { timeout: this.probeTimeoutMs })
      return true
    } catch {
      return false
    } finally {
      client.probing = false
    }
  }

  _clientByConnID (connID) {
    for (const client of this.clients.values()) {
      if (client.connID.equals(connID)) return client
    }
    return undefined
  }

  // ---------------------------------------------------------------- ping
  _ping (msg) {
    if (msg.data.length === 0) return
    let req
    try { req = decode('Ping', msg.data) } catch { return }
    const known = this._clientByConnID(req.connID) !== undefined
    this._reply(msg, 'PingResponse', known ? {} : { error: STAN_ERRORS.REPLACED })
  }

  // ---------------------------------------------------------------- publish
  _channel (name) {
    let channel = this.channels.get(name)
    if (channel === undefined) {
      channel = { name, msgs: [], last: 0, lastTs: 0n, subs: new Set(), groups: new Map() }
      this.channels.set(name, channel)
    }
    return channel
  }

  _publish (msg) {
    let req
    try { req = decode('PubMsg', msg.data) } catch { return this._reply(msg, 'PubAck', { error: STAN_ERRORS.INVALID_PUB_REQ }) }
    const ack = (error) => this._reply(msg, 'PubAck', { guid: req.guid, error })
    if (req.guid === '' || !validChannel(req.subject)) return ack(STAN_ERRORS.INVALID_PUB_REQ)
    const publisher = req.connID.length > 0 ? this._clientByConnID(req.connID) : this.clients.get(req.clientID)
    if (publisher === undefined) return ack(STAN_ERRORS.INVALID_PUB_REQ)
    const channel = this._channel(req.subject)
    let ts = nowNs()
    if (ts < channel.lastTs) ts = channel.lastTs
    channel.lastTs = ts
    const stored = { sequence: ++channel.last, subject: channel.name, reply: req.reply, data: req.data, timestamp: ts }
    channel.msgs.push(stored)
    this._deliverChannel(channel)
    ack(undefined)
  }

  // ---------------------------------------------------------------- subscribe
  _subscribe (msg) {
    let req
    try { req = decode('SubscriptionRequest', msg.data) } catch { return this._reply(msg, 'SubscriptionResponse', { error: STAN_ERRORS.INVALID_SUB_REQ }) }
    const fail = (error) => this._reply(msg, 'SubscriptionResponse', { error })
    if (req.clientID === '') return fail(STAN_ERRORS.CLIENT_ID_MISSING)
    if (req.ackWaitInSecs === 0) return fail(STAN_ERRORS.INVALID_ACK_WAIT)
    if (req.maxInFlight <= 0) return fail(STAN_ERRORS.INVALID_MAX_INFLIGHT)
    if (req.startPosition < 0 || req.startPosition > 4) return fail(STAN_ERRORS.INVALID_START)
    if (!validChannel(req.subject)) return fail(STAN_ERRORS.INVALID_SUBJECT)
    const client = this.clients.get(req.clientID)
    if (client === undefined) return fail(STAN_ERRORS.UNKNOWN_CLIENT)
    if (req.qGroup !== '' && req.durableName.includes(':')) return fail(STAN_ERRORS.DURABLE_QUEUE_COLON)
    const channel = this._channel(req.subject)
    // Test knob (§11.2): a negative ack wait is milliseconds.
    const ackWaitMs = req.ackWaitInSecs < 0 ? -req.ackWaitInSecs : req.ackWaitInSecs * 1000
    const sub = {
      client, channel, inbox: req.inbox, ackInbox: `_INBOX.${nuid()}`, maxInFlight: req.maxInFlight, ackWaitMs,
      qGroup: req.qGroup, durableName: req.durableName, group: null, durableKey: null,
      lastSent: 0, pending: new Map(), ackSub: null, timer: null
    }
    if (req.qGroup !== '') {
      const groupName = req.durableName !== '' ? `${req.durableName}:${req.qGroup}` : req.qGroup
      let group = channel.groups.get(groupName)
      if (group === undefined) {
        group = { name: groupName, durable: req.durableName !== '', members: [], lastSent: this._startPoint(channel, req), pending: new Map(), counts: new Map() }
        channel.groups.set(groupName, group)
      }
      sub.group = group
      group.members.push(sub)
    } else if (req.durableName !== '') {
      sub.durableKey = `${req.clientID}-${req.subject}-${req.durableName}`
      for (const other of channel.subs) {
        if (other.durableKey === sub.durableKey) return fail(STAN_ERRORS.DUPLICATE_DURABLE)
      }
      const offline = this.durables.get(sub.durableKey)
      if (offline !== undefined) {
        this.durables.delete(sub.durableKey)
        sub.lastSent = offline.lastSent
        sub.counts = offline.counts
        for (const seq of offline.pending.keys()) sub.pending.set(seq, 0)
      } else {
        sub.lastSent = this._startPoint(channel, req)
      }
    } else {
      sub.lastSent = this._startPoint(channel, req)
    }
    sub.counts = sub.counts ?? new Map()
    channel.subs.add(sub)
    client.subs.add(sub)
    sub.ackSub = this.nc.subscribe(sub.ackInbox, { callback: (err, m) => { if (!err) this._ack(sub, m) } })
    this._reply(msg, 'SubscriptionResponse', { ackInbox: sub.ackInbox })
    // Resumed state: what was unacknowledged goes out first, marked redelivered.
    const resumed = sub.group === null ? sub.pending : (sub.group.members.length === 1 ? sub.group.pending : new Map())
    for (const seq of [...resumed.keys()]) this._send(sub, seq, true)
    this._deliverChannel(channel)
  }

  _startPoint (channel, req) {
    const first = channel.msgs.length ? channel.msgs[0].sequence : 0
    const last = channel.last
    switch (req.startPosition) {
      case 1: return last > 0 ? last - 1 : 0
      case 2: {
        const since = nowNs() - BigInt(req.startTimeDelta)
        const found = channel.msgs.find((m) => m !== undefined && m.timestamp >= since)
        return found === undefined ? last : found.sequence - 1
      }
      case 3:
        if (req.startSequence < first) return first > 0 ? first - 1 : 0
        if (req.startSequence > last) return last
        return req.startSequence - 1
      case 4: return first > 0 ? first - 1 : 0
      default: return last
    }
  }

  // ---------------------------------------------------------------- delivery
  _deliverChannel (channel) {
    for (const sub of channel.subs) {
      if (sub.group !== null) continue
      while (sub.pending.size < sub.maxInFlight && sub.lastSent < channel.last) {
        this._send(sub, ++sub.lastSent, false)
      }
    }
    for (const group of channel.groups.values()) {
      while (group.lastSent < channel.last) {
        const member = this._pickMember(group)
        if (member === undefined) break
        this._send(member, ++group.lastSent, false)
      }
    }
  }

  _pickMember (group) {
    let best
    for (const member of group.members) {
      if (member.pending.size >= member.maxInFlight) continue
      if (best === undefined || member.pending.size < best.pending.size) best = member
    }
    if (best !== undefined) {
      group.members.splice(group.members.indexOf(best), 1)
      group.members.push(best)
    }
    return best
  }

  _send (sub, sequence, redelivered) {
    const stored = sub.channel.msgs[sequence - (sub.channel.msgs[0]?.sequence ?? 1)]
    if (stored === undefined) return
    const counts = sub.group !== null ? sub.group.counts : sub.counts
    const count = redelivered ? (counts.get(sequence) ?? 0) + 1 : 0
    if (redelivered) counts.set(sequence, count)
    sub.pending.set(sequence, Date.now() + sub.ackWaitMs)
    if (sub.group !== null) sub.group.pending.set(sequence, sub)
    this._sendFrame(sub.inbox, 'MsgProto', { ...stored, redelivered, redeliveryCount: count })
    this._armTimer(sub)
  }

  _armTimer (sub) {
    if (sub.timer !== null || sub.pending.size === 0) return
    const next = Math.min(...sub.pending.values())
    sub.timer = setTimeout(() => {
      sub.timer = null
      const now = Date.now() + 15
      for (const [seq, deadline] of [...sub.pending]) {
        if (deadline <= now) this._redeliver(sub, seq)
      }
      this._armTimer(sub)
    }, Math.max(0, next - Date.now()))
  }

  _redeliver (sub, sequence) {
    if (sub.group === null) return this._send(sub, sequence, true)
    // The best member of the group gets it; the original owner is released.
    sub.pending.delete(sequence)
    const target = this._pickMember(sub.group) ?? sub
    this._send(target, sequence, true)
  }

  _ack (sub, msg) {
    let ack
    try { ack = decode('Ack', msg.data) } catch { return }
    let owner = sub
    if (!sub.pending.has(ack.sequence) && sub.group !== null) owner = sub.group.pending.get(ack.sequence)
    if (owner === undefined || !owner.pending.has(ack.sequence)) return
    owner.pending.delete(ack.sequence)
    if (owner.group !== null) {
      owner.group.pending.delete(ack.sequence)
      owner.group.counts.delete(ack.sequence)
    } else {
      owner.counts.delete(ack.sequence)
    }
    this._deliverChannel(owner.channel)
  }

  _stopTimers (sub) {
    if (sub.timer !== null) clearTimeout(sub.timer)
    sub.timer = null
    sub.ackSub?.unsubscribe()
  }

  // ---------------------------------------------------------------- unsubscribe / close
  _unsubscribe (msg, isClose) {
    let req
    try { req = decode('UnsubscribeRequest', msg.data) } catch { return this._reply(msg, 'SubscriptionResponse', { error: STAN_ERRORS.INVALID_UNSUB_REQ }) }
    const fail = (error) => this._reply(msg, 'SubscriptionResponse', { error })
    const channel = this.channels.get(req.subject)
    if (channel === undefined) return fail(STAN_ERRORS.UNKNOWN_CHANNEL)
    let sub
    for (const s of channel.subs) if (s.ackInbox === req.inbox) sub = s
    if (sub === undefined) for (const s of channel.subs) if (s.inbox === req.inbox) sub = s
    if (sub === undefined) return fail(STAN_ERRORS.INVALID_SUB)
    if (sub.client.clientID !== req.clientID || !this.clients.has(req.clientID)) return fail(STAN_ERRORS.UNKNOWN_CLIENT)
    this._removeSub(sub, isClose)
    this._reply(msg, 'SubscriptionResponse', {})
  }

  /** Removes a subscription with close (keep durable state) or unsubscribe semantics (§7.9). */
  _removeSub (sub, keep) {
    this._stopTimers(sub)
    sub.channel.subs.delete(sub)
    sub.client.subs.delete(sub)
    if (sub.group !== null) {
      const group = sub.group
      group.members.splice(group.members.indexOf(sub), 1)
      if (group.members.length === 0) {
        if (group.durable && keep) {
          group.offline = { maxInFlight: sub.maxInFlight, ackWaitMs: sub.ackWaitMs }
          for (const seq of sub.pending.keys()) group.pending.set(seq, null)
        } else {
          sub.channel.groups.delete(group.name)
        }
        return
      }
      // Hand its unacknowledged messages to the remaining members.
      for (const seq of [...sub.pending.keys()]) {
        group.pending.delete(seq)
        const target = this._pickMember(group) ?? group.members[0]
        setTimeout(() => {
          // Whoever is in the group by then gets it; with nobody left, a
          // durable group keeps it unacknowledged for the next member.
          const member = group.members.includes(target) ? target : (this._pickMember(group) ?? group.members[0])
          if (member !== undefined) this._send(member, seq, true)
          else if (group.durable && sub.channel.groups.get(group.name) === group) group.pending.set(seq, null)
        }, 100)
      }
      return
    }
    if (sub.durableKey !== null && keep) {
      this.durables.set(sub.durableKey, {
        lastSent: sub.lastSent, pending: sub.pending, counts: sub.counts,
        clientID: sub.client.clientID, channel: sub.channel.name, durableName: sub.durableName, maxInFlight: sub.maxInFlight, ackWaitMs: sub.ackWaitMs
      })
    }
  }

  /**
   * Test knob: drops a channel's messages up to `sequence` from the front, as
   * a channel's limits (max msgs, bytes, age) do on a real server.
   */
  expire (name, sequence) {
    const channel = this._channel(name)
    while (channel.msgs.length > 0 && (channel.msgs[0] === undefined || channel.msgs[0].sequence <= sequence)) channel.msgs.shift()
  }

  /** Test knob: removes one message from the middle of a channel, leaving a gap in its sequences. */
  removeMessage (name, sequence) {
    const channel = this._channel(name)
    const first = channel.msgs.find((m) => m !== undefined)?.sequence
    if (first === undefined || sequence <= first || sequence >= channel.last) throw new Error('only a message between the first and the last can be removed')
    channel.msgs[sequence - channel.msgs[0].sequence] = undefined
  }

  // ---------------------------------------------------------------- monitoring
  // The parts of nats-streaming-server's monitoring endpoints a migration
  // reads: serverz (cluster ID) and channelsz (channels, sequences, and with
  // subs=1 their subscriptions), with offset/limit paging.
  _serveMonitoring () {
    this.http = http.createServer((req, res) => {
      const url = new URL(req.url, 'http://localhost')
      const reply = (status, body) => {
        res.writeHead(status, { 'Content-Type': 'application/json' })
        res.end(JSON.stringify(body, null, 2))
      }
      if (url.pathname === '/streaming/serverz') {
        return reply(200, { cluster_id: this.clusterID, server_id: this.serverID, version: '0.25.6', state: 'STANDALONE', now: new Date().toISOString(), clients: this.clients.size, channels: this.channels.size })
      }
      if (url.pathname !== '/streaming/channelsz') return reply(404, { error: 'not found' })
      const single = url.searchParams.get('channel')
      const subs = url.searchParams.get('subs') === '1'
      if (single !== null) {
        const channel = this.channels.get(single)
        return channel === undefined ? reply(404, { error: `channel ${single} not found` }) : reply(200, this._channelz(channel, subs))
      }
      const offset = Number(url.searchParams.get('offset') ?? 0)
      const limit = Number(url.searchParams.get('limit') ?? 1024)
      const names = [...this.channels.keys()].sort()
      const page = names.slice(offset, offset + limit)
      const body = { cluster_id: this.clusterID, server_id: this.serverID, now: new Date().toISOString(), offset, limit, count: page.length, total: names.length }
      if (subs || url.searchParams.get('subs') !== null) body.channels = page.map((name) => this._channelz(this.channels.get(name), subs))
      else body.names = page
      reply(200, body)
    })
    return new Promise((resolve) => this.http.listen(0, '127.0.0.1', () => {
      this.monitorUrl = `http://127.0.0.1:${this.http.address().port}`
      resolve()
    }))
  }

  _channelz (channel, withSubs) {
    const stored = channel.msgs.filter((m) => m !== undefined)
    const body = {
      name: channel.name,
      msgs: stored.length,
      bytes: stored.reduce((n, m) => n + m.data.length, 0),
      first_seq: stored.length > 0 ? stored[0].sequence : 0,
      last_seq: channel.last
    }
    if (!withSubs) return body
    const entry = (sub, extra) => ({
      client_id: sub.client?.clientID ?? extra.clientID ?? '',
      inbox: sub.inbox ?? '',
      ack_inbox: sub.ackInbox ?? '',
      durable_name: sub.durableName ?? '',
      queue_name: '',
      is_durable: false,
      is_offline: false,
      max_inflight: sub.maxInFlight,
      ack_wait: Math.ceil(sub.ackWaitMs / 1000),
      last_sent: sub.lastSent,
      pending_count: sub.pending.size,
      is_stalled: sub.pending.size >= sub.maxInFlight,
      ...extra
    })
    body.subscriptions = []
    for (const sub of channel.subs) {
      if (sub.group !== null) {
        body.subscriptions.push(entry(sub, { queue_name: sub.group.name, is_durable: sub.group.durable, last_sent: sub.group.lastSent }))
      } else {
        body.subscriptions.push(entry(sub, { is_durable: sub.durableKey !== null }))
      }
    }
    for (const offline of this.durables.values()) {
      if (offline.channel !== channel.name) continue
      body.subscriptions.push(entry({ ...offline, client: undefined }, { clientID: offline.clientID, is_durable: true, is_offline: true }))
    }
    for (const group of channel.groups.values()) {
      if (group.members.length > 0 || !group.durable) continue
      const { maxInFlight, ackWaitMs } = group.offline ?? { maxInFlight: 1, ackWaitMs: 30000 }
      const durableName = group.name.slice(0, group.name.indexOf(':'))
      body.subscriptions.push(entry({ maxInFlight, ackWaitMs, lastSent: group.lastSent, pending: group.pending, durableName },
        { queue_name: group.name, is_durable: true, is_offline: true }))
    }
    return body
  }

  /** Test knob: unregisters a client without telling it (as a replacement or a server restart would). */
  forget (clientID) {
    const client = this.clients.get(clientID)
    if (client !== undefined) this._dropClient(client)
  }

  _dropClient (client) {
    clearInterval(client.heartbeat)
    for (const sub of [...client.subs]) this._removeSub(sub, true)
    this.clients.delete(client.clientID)
  }

  _close (msg) {
    let req
    try { req = decode('CloseRequest', msg.data) } catch { return this._reply(msg, 'CloseResponse', { error: STAN_ERRORS.INVALID_CLOSE_REQ }) }
    const client = this.clients.get(req.clientID)
    if (client === undefined) return this._reply(msg, 'CloseResponse', { error: STAN_ERRORS.UNKNOWN_CLIENT })
    this._dropClient(client)
    this._reply(msg, 'CloseResponse', {}, req.clientID)
  }
}

module.exports = { StanDouble, STAN_ERRORS }
