import nats from 'jetstan'
import { randomBytes } from 'node:crypto'
import { channel, clusterId, natsUrl, TicketCreatedEvent } from './config'

const count = Number(process.env.COUNT ?? 10)

const stan = nats.connect(clusterId, `publisher-${randomBytes(4).toString('hex')}`, { url: natsUrl })

function publish (data: TicketCreatedEvent): Promise<string> {
  return new Promise((resolve, reject) => {
    stan.publish(channel, JSON.stringify(data), (err, guid) => (err ? reject(err) : resolve(guid)))
  })
}

stan.on('connect', async () => {
  console.log(`Publisher connected to NATS at ${natsUrl}`)
  try {
    for (let i = 1; i <= count; i++) {
      const ticket = { id: `ticket-${i}`, title: `concert #${i}`, price: 10 * i }
      const guid = await publish(ticket)
      console.log(`Event published: ${ticket.id} (guid ${guid})`)
    }
  } catch (err) {
    console.error('Publish failed:', err)
    process.exitCode = 1
  }
  stan.close()
})

stan.on('error', (err) => {
  console.error(`NATS error: ${err.message}`)
  process.exitCode = 1
})
