import { connectAsync, Listener, Message } from 'jetstan'
import { randomBytes } from 'node:crypto'
import { clusterId, connectOptions, natsUrl } from './config'
import { OrderCreatedEvent, Subjects, TicketCreatedEvent } from './events'

// For the demo: leave after this many events of each kind. A real service runs until stopped.
const exitAfter = process.env.EXIT_AFTER === undefined ? Infinity : Number(process.env.EXIT_AFTER)
let tickets = 0
let orders = 0

class TicketCreatedListener extends Listener<TicketCreatedEvent> {
  readonly subject = Subjects.TicketCreated
  queueGroupName = 'orders-service'

  async onMessage (data: TicketCreatedEvent['data'], msg: Message): Promise<void> {
    console.log(`Event received #${msg.getSequence()}: ${this.subject} ${data.id} ${data.title} $${data.price}`)
    tickets++
    finishIfDone()
  }
}

class OrderCreatedListener extends Listener<OrderCreatedEvent> {
  readonly subject = Subjects.OrderCreated
  queueGroupName = 'payments-service'

  async onMessage (data: OrderCreatedEvent['data'], msg: Message): Promise<void> {
    console.log(`Event received #${msg.getSequence()}: ${this.subject} ${data.id} for ${data.ticketId}, expires ${data.expiresAt}`)
    orders++
    finishIfDone()
  }
}

let stop: () => void = () => {}

function finishIfDone (): void {
  if (tickets >= exitAfter && orders >= exitAfter) stop()
}

async function main (): Promise<void> {
  const stan = await connectAsync(clusterId, `listener-${randomBytes(4).toString('hex')}`, connectOptions)
  console.log(`Listener connected to NATS at ${natsUrl}`)
  stan.on('close', () => console.log('NATS connection closed'))
  // drain() lets running handlers finish and ack before the connection closes.
  stop = () => { stan.drain().catch((err) => console.error('drain failed:', err)) }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  for (const listener of [new TicketCreatedListener(stan), new OrderCreatedListener(stan)]) {
    listener.on('error', (err) => console.error(`Listener error: ${err.message}`))
    await listener.listen()
  }
  console.log(`Listening on ${Subjects.TicketCreated} and ${Subjects.OrderCreated}`)
}

main().catch((err) => {
  console.error('Listener failed:', err)
  process.exitCode = 1
})
