// The shared events module: one subject enum and one interface per event,
// as the services of a ticketing app share them (the course's `common`).
export enum Subjects {
  TicketCreated = 'ticket:created',
  OrderCreated = 'order:created'
}

export interface TicketCreatedEvent {
  subject: Subjects.TicketCreated
  data: { id: string, title: string, price: number }
}

export interface OrderCreatedEvent {
  subject: Subjects.OrderCreated
  // JSON has no Date: events carry ISO strings, as services that parse by hand expect.
  data: { id: string, ticketId: string, expiresAt: string }
}
