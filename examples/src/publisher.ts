import { connectAsync, Publisher } from 'jetstan'
import { randomBytes } from 'node:crypto'
import { clusterId, connectOptions, natsUrl } from './config'
import { OrderCreatedEvent, Subjects, TicketCreatedEvent } from './events'

class TicketCreatedPublisher extends Publisher<TicketCreatedEvent> {
  readonly subject = Subjects.TicketCreated
}

class OrderCreatedPublisher extends Publisher<OrderCreatedEvent> {
  readonly subject = Subjects.OrderCreated
}

const count = Number(process.env.COUNT ?? 10)

async function main (): Promise<void> {
  const stan = await connectAsync(clusterId, `publisher-${randomBytes(4).toString('hex')}`, connectOptions)
  console.log(`Publisher connected to NATS at ${natsUrl}`)
  const tickets = new TicketCreatedPublisher(stan)
  const orders = new OrderCreatedPublisher(stan)
  for (let i = 1; i <= count; i++) {
    const ticket = { id: `ticket-${i}`, title: `concert #${i}`, price: 10 * i }
    await tickets.publish(ticket)
    console.log(`Event published: ${Subjects.TicketCreated} ${ticket.id}`)
    const order = { id: `order-${i}`, ticketId: ticket.id, expiresAt: new Date(Date.now() + 15 * 60 * 1000).toISOString() }
    await orders.publish(order)
    console.log(`Event published: ${Subjects.OrderCreated} ${order.id}`)
  }
  await stan.close()
}

main().catch((err) => {
  console.error('Publisher failed:', err)
  process.exitCode = 1
})
