// Compile-only: streams, consumers and KV.
import { connectAsync, KV, TypedKV, migrate, jetstreamNames, MigrateReport } from 'jetstan'

interface Order { id: number, total: number }

async function main (): Promise<void> {
  const sc = await connectAsync('c', 'id')
  const info = await sc.streams.add({ name: 'ORDERS', subjects: ['orders.>'], max_age: 0 })
  console.log(info.state.messages)
  await sc.consumers.add('ORDERS', { durable_name: 'proc', ack_policy: 'explicit' })
  const kv: KV = await sc.kv('orders', { history: 5, ttl: 60000 })
  const revision: number = await kv.put('o1', 'x')
  await kv.update('o1', Buffer.from('y'), revision)
  const entry = await kv.get('o1')
  if (entry !== null) console.log(entry.value.toString(), entry.created.getTime())
  const typed: TypedKV<Order> = kv.typed<Order>()
  await typed.put('o2', { id: 2, total: 10 })
  // @ts-expect-error an order needs a total
  await typed.put('o3', { id: 3 })
  const got = await typed.get('o2')
  if (got !== null) console.log(got.value.total)
  for await (const change of kv.watch({ keys: 'o.>' })) console.log(change.operation)
  // @ts-expect-error storage is file or memory
  await sc.kv('b', { storage: 'disk' })
}
console.log(main)

async function migration (): Promise<void> {
  const { stream, consumer } = jetstreamNames('ticketing', 'orders-svc', 'order:created', 'orders')
  console.log(stream, consumer?.length)
  const abort = new AbortController()
  const report: MigrateReport = await migrate({ from: 'nats://stan:4222', to: 'nats://js:4222', cluster: 'ticketing', all: true, follow: true, signal: abort.signal })
  for (const c of report.channels) console.log(c.channel, c.verified?.match)
  for (const d of report.durables) if (d.status === 'online') console.log(d.durable, d.startSeq)
  // @ts-expect-error from, to and cluster are required
  await migrate({ all: true })
}
console.log(migration)
