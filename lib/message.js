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
    this._headerText = undefined
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

  /**
   * The application headers a jetstream publish set (not the `Nats-Msg-Id`
   * jetstan sets on every one): names as sent, several values of one name
   * joined with ', '. `{}` when there are none.
   */
  getHeaders () {
    const headers = {}
    if (this._headerText === undefined) return headers
    for (const line of this._headerText.split('\r\n')) {
      const colon = line.indexOf(':')
      if (colon <= 0) continue
      const name = line.slice(0, colon)
      const value = line.slice(colon + 1).trimStart()
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`
    }
    return headers
  }

  /** Acks the message; a no-op once the subscription or connection is closed. */
  ack () { this.subscription._queueAck(this._ackId) }

  /** Tells the server never to deliver this message again (a poison message). */
  _terminate () { this.subscription._terminate(this._ackId) }
}

module.exports = { Message }
