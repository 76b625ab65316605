// Course-style subclassing with a plain (not readonly) subject initializer.
import { Listener, Message } from 'jetstan'

enum Subjects { TicketCreated = 'ticket:created' }
interface TicketCreatedEvent { subject: Subjects.TicketCreated, data: { id: string } }

export class TicketCreatedListener extends Listener<TicketCreatedEvent> {
  subject = Subjects.TicketCreated
  queueGroupName = 'orders-service'
  async onMessage (data: TicketCreatedEvent['data'], msg: Message): Promise<void> {
    console.log(data.id, msg.getSequence())
  }
}
