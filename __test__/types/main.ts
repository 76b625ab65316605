// Compile-only: the 0.3.2 type test's uses must keep compiling, and what
// jetstan adds must be typed. Checked by `tsc --noEmit` in `npm test`.
import { connect, Message, StartPosition, version, Stan, Subscription, StanError, SubscriptionOptions } from 'jetstan'
import * as stanNamespace from 'jetstan'
import stanDefault from 'jetstan'

const v: string = version
const sc: Stan = connect('test-cluster', 'client', { url: 'nats://localhost:4222' })
connect('test-cluster', 'client')
connect('test-cluster', 'client', 4222)
connect('test-cluster', 'client', 'localhost:4222')
stanNamespace.connect('c', 'id', { maxPubAcksInflight: 10, backend: 'jetstream' })
stanDefault.connect('c', 'id', { servers: ['nats://a:4222'], ackTimeout: 1000 })

sc.on('connect', (conn: Stan) => {
  const guid: string = conn.publish('foo', 'bar', (err: Error | undefined, g: string) => { console.log(err, g) })
  conn.publish('foo', Buffer.from('bar'))
  conn.publish('foo', new Uint8Array([1]))
  conn.publish('foo')
  console.log(guid, v)

  const opts: SubscriptionOptions = conn.subscriptionOptions()
    .setMaxInFlight(10)
    .setAckWait(60000)
    .setStartAt(StartPosition.FIRST)
    .setStartAt(StartPosition.LAST_RECEIVED)
    .setStartAt(StartPosition.NEW_ONLY)
    .setStartAtSequence(10)
    .setStartAtTimeDelta(1000)
    .setStartWithLastReceived()
    .setDeliverAllAvailable()
    .setManualAckMode(true)
    .setDurableName('durable')
    .setStartTime(new Date())

  const subs: Subscription[] = [
    conn.subscribe('foo'),
    conn.subscribe('foo', 'group'),
    conn.subscribe('foo', opts),
    conn.subscribe('foo', 'group', opts)
  ]
  for (const sub of subs) {
    sub.on('message', (msg: Message) => {
      const s: string = msg.getSubject()
      const n: number = msg.getSequence() + msg.getTimestampRaw() + msg.getCrc32() + msg.getRedeliveryCount()
      const d: Date = msg.getTimestamp()
      const raw: Buffer = msg.getRawData()
      const data: string | Buffer = msg.getData()
      const r: boolean = msg.isRedelivered()
      msg.ack()
      console.log(s, n, d, raw, data, r)
    })
    sub.on('error', (err: StanError) => console.log(err.code))
    const closed: boolean = sub.isClosed()
    console.log(closed)
    sub.close()
    sub.unsubscribe()
  }
})
sc.on('error', (err: StanError) => console.log(err.code, err.message))
sc.on('close', () => {})
const closed: boolean = sc.isClosed()
console.log(closed)

// @ts-expect-error a port is a number, not a boolean
connect('c', 'id', true)
// @ts-expect-error jetstan cannot share a JS NATS connection
connect('c', 'id', { nc: {} })
// @ts-expect-error publish data cannot be a number
sc.publish('foo', 42)
// @ts-expect-error the backend must be one jetstan knows
connect('c', 'id', { backend: 'kafka' })
