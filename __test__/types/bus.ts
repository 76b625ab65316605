// Compile-only: the typed bus. Wrong shapes must fail tsc (@ts-expect-error).
import { connect, connectAsync, Listener, Publisher, Message, Stan, createBus, StandardSchemaV1 } from 'jetstan'

enum Subjects {
  TicketCreated = 'ticket:created',
  OrderCreated = 'order:created'
}

interface TicketCreatedEvent {
  subject: Subjects.TicketCreated
  data: { id: string, title: string, price: number }
}

interface OrderCreatedEvent {
  subject: Subjects.OrderCreated
  data: { id: string, ticketId: string, expiresAt: Date }
}

class TicketCreatedListener extends Listener<TicketCreatedEvent> {
  readonly subject = Subjects.TicketCreated
  queueGroupName = 'orders-service'
  async onMessage (data: TicketCreatedEvent['data'], msg: Message): Promise<void> {
    const price: number = data.price
    // @ts-expect-error tickets have no expiresAt
    console.log(data.expiresAt, price, msg.getSequence())
  }
}

class AnnotatedListener extends Listener<TicketCreatedEvent> {
  subject: Subjects.TicketCreated = Subjects.TicketCreated
  queueGroupName = 'payments-service'
  maxConcurrent = 4
  onMessage (data: TicketCreatedEvent['data']): void { console.log(data.title) }
}

class TicketCreatedPublisher extends Publisher<TicketCreatedEvent> {
  readonly subject = Subjects.TicketCreated
}

class WrongSubjectListener extends Listener<TicketCreatedEvent> {
  // @ts-expect-error the subject must be the event's
  readonly subject = Subjects.OrderCreated
  queueGroupName = 'x'
  onMessage (): void {}
}

async function main (): Promise<void> {
  const sc: Stan = await connectAsync('ticketing', 'types')
  await new TicketCreatedListener(sc).listen()
  await new AnnotatedListener(sc).listen()
  const guid: string = await new TicketCreatedPublisher(sc).publish({ id: '1', title: 'concert', price: 20 })
  // @ts-expect-error price must be a number
  await new TicketCreatedPublisher(sc).publish({ id: '1', title: 'concert', price: '20' })
  // @ts-expect-error title is missing
  await new TicketCreatedPublisher(sc).publish({ id: '1', price: 20 })

  const bus = createBus<{ 'ticket:created': TicketCreatedEvent['data'], 'order:created': OrderCreatedEvent['data'] }>(sc)
  await bus.publish('order:created', { id: 'o', ticketId: '1', expiresAt: new Date() })
  // @ts-expect-error an order needs ticketId
  await bus.publish('order:created', { id: 'o', expiresAt: new Date() })
  // @ts-expect-error unknown subject
  await bus.publish('order:cancelled', {})
  await bus.listen('ticket:created', { queueGroupName: 'q' }, async (data) => {
    const title: string = data.title
    console.log(title)
  })

  const sub = sc.subscribe('ticket:created')
  for await (const msg of sub) {
    const m: Message = msg
    console.log(m.getData())
  }
  await sc.drain()
  const closed: Promise<void> = connect('c', 'id').close()
  console.log(guid, closed, new WrongSubjectListener(sc))
}

const schema: StandardSchemaV1<unknown, { id: string }> = {
  '~standard': {
    version: 1,
    vendor: 'test',
    validate: (value) => (typeof value === 'object' && value !== null && 'id' in value)
      ? { value: value as { id: string } }
      : { issues: [{ message: 'id is required' }] }
  }
}
console.log(main, schema)
