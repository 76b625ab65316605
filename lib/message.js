'use strict'

/**
 * One delivered message. Its payload is a view into the delivery batch's
 * buffer (no copy per message); `getRawData()` returns that view.
 */
class Message {
  constructor (subscription, ackId, sequence, timestampNs, redeliveries, batch, offset, length) {
    this.subscription = subscription
    this._ackId = ackId
    this._sequence = sequence
    this._timestampNs = timestampNs
    this._redeliveries = redeliveries
    this._batch = batch
    this._offset = offset
    this._length = length
    this._deferAck = false
  }

  getSubject () { return this.subscription.subject }
  getSequence () { return this._sequence }
  getRawData () { return this._batch.subarray(this._offset, this._offset + this._length) }

  /** A UTF-8 string, or a Buffer when the connection uses `stanEncoding: 'binary'`. */
  getData () {
    if (this.subscription._binary) return this.getRawData()
    return this._length === 0 ? '' : this._batch.toString('utf8', this._offset, this._offset + this._length)
  }

  getTimestampRaw () { return this._timestampNs }
  getTimestamp () { return new Date(Math.floor(this._timestampNs / 1e6)) }
  isRedelivered () { return this._redeliveries > 0 }
  getRedeliveryCount () { return this._redeliveries }
  getCrc32 () { return 0 }

  /** Acks the message; a no-op once the subscription or connection is closed. */
  ack () { this.subscription._queueAck(this._ackId) }

  /** Tells the server never to deliver this message again (a poison message). */
  _terminate () { this.subscription._terminate(this._ackId) }
}

module.exports = { Message }
