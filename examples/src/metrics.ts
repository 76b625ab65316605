import { createServer } from 'node:http'
import { randomBytes } from 'node:crypto'
import { connectAsync, Stan, Stats } from 'jetstan'
import { Gauge, Registry } from 'prom-client'
import { clusterId, connectOptions } from './config'

// Exports a connection's stats() to Prometheus: each scrape reads the
// counters once (stats() is cheap: no server round trip).
const help: Record<keyof Stats, string> = {
  msgsOut: 'Messages published',
  bytesOut: 'Payload bytes published',
  msgsOutBatched: 'Messages published in fast-ingest batches',
  msgsIn: 'Messages delivered to subscriptions',
  bytesIn: 'Payload bytes delivered',
  publishesPending: 'Publishes waiting for their ack',
  acksPending: 'Delivered messages not yet acked',
  redelivered: 'Deliveries that were redeliveries',
  reconnects: 'Reconnections to NATS'
}

export function registerStats (stan: Stan, registry: Registry): void {
  let stats: Stats | undefined
  for (const key of Object.keys(help) as Array<keyof Stats>) {
    // One stats() call per scrape: the first gauge collected reads it.
    const first = key === 'msgsOut'
    const name = `jetstan_${key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}`
    new Gauge({
      name,
      help: help[key],
      registers: [registry],
      collect () {
        if (first || stats === undefined) stats = stan.stats()
        this.set(stats[key])
      }
    })
  }
}

async function main (): Promise<void> {
  const stan = await connectAsync(clusterId, `metrics-${randomBytes(4).toString('hex')}`, connectOptions)
  const registry = new Registry()
  registerStats(stan, registry)
  const port = Number(process.env.METRICS_PORT ?? 9464)
  const server = createServer((req, res) => {
    registry.metrics().then((text) => {
      res.writeHead(200, { 'content-type': registry.contentType })
      res.end(text)
    }, (err: Error) => {
      res.writeHead(500)
      res.end(err.message)
    })
  })
  server.listen(port, () => console.log(`metrics on http://localhost:${port}/metrics`))
  const stop = (): void => { server.close(); stan.close().catch(() => {}) }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
}

if (require.main === module) {
  main().catch((err) => {
    console.error('metrics failed:', err)
    process.exitCode = 1
  })
}
