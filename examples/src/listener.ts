import nats, { Message } from 'jetstan'
import { randomBytes } from 'node:crypto'
import { channel, clusterId, natsUrl, TicketCreatedEvent } from './config'

// For the demo: leave after this many events. A real listener runs until stopped.
const exitAfter = process.env.EXIT_AFTER === undefined ? Infinity : Number(process.env.EXIT_AFTER)

const stan = nats.connect(clusterId, `listener-${randomBytes(4).toString('hex')}`, { url: natsUrl })

stan.on('connect', () => {
  console.log(`Listener connected to NATS at ${natsUrl}`)

  const options = stan.subscriptionOptions().setManualAckMode(true).setAckWait(30 * 1000)
  const subscription = stan.subscribe(channel, options)

  let received = 0
  subscription.on('ready', () => console.log(`Listening on ${channel}`))
  subscription.on('message', (msg: Message) => {
    const ticket = JSON.parse(msg.getData().toString()) as TicketCreatedEvent
    console.log(`Event received #${msg.getSequence()}: ${ticket.id} ${ticket.title} $${ticket.price}`)
    msg.ack()
    if (++received >= exitAfter) stan.close()
  })
  subscription.on('error', (err) => console.error(`Subscription error: ${err.message}`))
})

stan.on('close', () => console.log('NATS connection closed'))
stan.on('error', (err) => {
  console.error(`NATS error: ${err.message}`)
  process.exitCode = 1
})

process.on('SIGINT', () => stan.close())
process.on('SIGTERM', () => stan.close())
