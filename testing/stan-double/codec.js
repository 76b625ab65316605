'use strict'

// A small proto3 codec for the STAN wire messages, written from the protocol
// reference (shared/reference/stan-protocol.md §3) and independent of any
// client's generated code, so the double cannot share a client's misreading.
// Only what STAN uses: varints (int32, int64, uint32, uint64, bool, enum) and
// length-delimited strings and bytes.

const VARINT = 0
const LEN = 2

// name: [field number, kind]; kinds: string, bytes, int (int32/int64, signed),
// uint (uint32/uint64), bool
const schemas = {
  PubMsg: { clientID: [1, 'string'], guid: [2, 'string'], subject: [3, 'string'], reply: [4, 'string'], data: [5, 'bytes'], connID: [6, 'bytes'], sha256: [10, 'bytes'] },
  PubAck: { guid: [1, 'string'], error: [2, 'string'] },
  MsgProto: { sequence: [1, 'uint'], subject: [2, 'string'], reply: [3, 'string'], data: [4, 'bytes'], timestamp: [5, 'int'], redelivered: [6, 'bool'], redeliveryCount: [7, 'uint'], CRC32: [10, 'uint'] },
  Ack: { subject: [1, 'string'], sequence: [2, 'uint'] },
  ConnectRequest: { clientID: [1, 'string'], heartbeatInbox: [2, 'string'], protocol: [3, 'int'], connID: [4, 'bytes'], pingInterval: [5, 'int'], pingMaxOut: [6, 'int'] },
  ConnectResponse: { pubPrefix: [1, 'string'], subRequests: [2, 'string'], unsubRequests: [3, 'string'], closeRequests: [4, 'string'], error: [5, 'string'], subCloseRequests: [6, 'string'], pingRequests: [7, 'string'], pingInterval: [8, 'int'], pingMaxOut: [9, 'int'], protocol: [10, 'int'], publicKey: [100, 'string'] },
  Ping: { connID: [1, 'bytes'] },
  PingResponse: { error: [1, 'string'] },
  SubscriptionRequest: { clientID: [1, 'string'], subject: [2, 'string'], qGroup: [3, 'string'], inbox: [4, 'string'], maxInFlight: [5, 'int'], ackWaitInSecs: [6, 'int'], durableName: [7, 'string'], startPosition: [10, 'int'], startSequence: [11, 'uint'], startTimeDelta: [12, 'int'] },
  SubscriptionResponse: { ackInbox: [2, 'string'], error: [3, 'string'] },
  UnsubscribeRequest: { clientID: [1, 'string'], subject: [2, 'string'], inbox: [3, 'string'], durableName: [4, 'string'] },
  CloseRequest: { clientID: [1, 'string'] },
  CloseResponse: { error: [1, 'string'] }
}

function defaultOf (kind) {
  if (kind === 'string') return ''
  if (kind === 'bytes') return Buffer.alloc(0)
  if (kind === 'bool') return false
  return 0
}

function pushVarint (out, value) {
  let v = BigInt.asUintN(64, BigInt(value))
  do {
    let byte = Number(v & 0x7fn)
    v >>= 7n
    if (v !== 0n) byte |= 0x80
    out.push(byte)
  } while (v !== 0n)
}

function encode (type, message) {
  const schema = schemas[type]
  if (schema === undefined) throw new Error(`unknown message type ${type}`)
  const out = []
  const fields = Object.entries(schema).sort((a, b) => a[1][0] - b[1][0])
  for (const [name, [number, kind]] of fields) {
    const value = message[name]
    if (value === undefined || value === null) continue
    if (kind === 'string' || kind === 'bytes') {
      const bytes = Buffer.isBuffer(value) || value instanceof Uint8Array ? Buffer.from(value) : Buffer.from(String(value))
      if (bytes.length === 0) continue
      pushVarint(out, (number << 3) | LEN)
      pushVarint(out, bytes.length)
      for (const b of bytes) out.push(b)
    } else {
      const numeric = kind === 'bool' ? (value ? 1n : 0n) : BigInt(value)
      if (numeric === 0n) continue
      pushVarint(out, (number << 3) | VARINT)
      pushVarint(out, numeric)
    }
  }
  return Buffer.from(out)
}

class DecodeError extends Error {}

function readVarint (buf, state) {
  let result = 0n
  let shift = 0n
  for (;;) {
    if (state.pos >= buf.length) throw new DecodeError('truncated varint')
    const byte = buf[state.pos++]
    result |= BigInt(byte & 0x7f) << shift
    if ((byte & 0x80) === 0) return result
    shift += 7n
    if (shift > 63n) throw new DecodeError('varint too long')
  }
}

/** Decodes `type`; unknown fields are skipped; throws DecodeError on malformed input. */
function decode (type, input) {
  const schema = schemas[type]
  const buf = Buffer.from(input ?? [])
  const byNumber = new Map(Object.entries(schema).map(([name, [number, kind]]) => [number, [name, kind]]))
  const message = {}
  for (const [name, [, kind]] of Object.entries(schema)) message[name] = defaultOf(kind)
  const state = { pos: 0 }
  while (state.pos < buf.length) {
    const key = Number(readVarint(buf, state))
    const number = key >>> 3
    const wire = key & 7
    const known = byNumber.get(number)
    if (wire === VARINT) {
      const raw = readVarint(buf, state)
      if (known === undefined) continue
      const [name, kind] = known
      if (kind === 'bool') message[name] = raw !== 0n
      else if (kind === 'int') message[name] = Number(BigInt.asIntN(64, raw))
      else if (kind === 'uint') message[name] = Number(raw)
      else throw new DecodeError(`field ${name} has the wrong wire type`)
    } else if (wire === LEN) {
      const length = Number(readVarint(buf, state))
      if (state.pos + length > buf.length) throw new DecodeError('truncated field')
      const bytes = buf.subarray(state.pos, state.pos + length)
      state.pos += length
      if (known === undefined) continue
      const [name, kind] = known
      if (kind === 'string') message[name] = bytes.toString('utf8')
      else if (kind === 'bytes') message[name] = Buffer.from(bytes)
      else throw new DecodeError(`field ${name} has the wrong wire type`)
    } else if (wire === 1) {
      state.pos += 8
    } else if (wire === 5) {
      state.pos += 4
    } else {
      throw new DecodeError(`unsupported wire type ${wire}`)
    }
    if (state.pos > buf.length) throw new DecodeError('truncated field')
  }
  return message
}

module.exports = { encode, decode, DecodeError, schemas }
