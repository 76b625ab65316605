'use strict'

// A TCP proxy on loopback between a client and a nats-server, for fault
// tests: `cut()` drops every connection and refuses new ones (a server or
// network that is gone), `blackhole()` keeps connections open but lets no
// byte through either way (a partition: nothing fails, nothing arrives),
// `restore()` forwards again.

const net = require('node:net')

class Proxy {
  constructor (upstreamPort) {
    this.upstreamPort = upstreamPort
    this.mode = 'open'
    this.pairs = new Set()
    this.server = net.createServer((client) => this._accept(client))
  }

  async start () {
    await new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(0, '127.0.0.1', resolve)
    })
    this.port = this.server.address().port
    return this
  }

  get url () { return `nats://127.0.0.1:${this.port}` }

  _accept (client) {
    if (this.mode === 'cut') {
      client.destroy()
      return
    }
    const upstream = net.connect(this.upstreamPort, '127.0.0.1')
    const pair = { client, upstream }
    this.pairs.add(pair)
    const forward = (from, to) => from.on('data', (chunk) => {
      if (this.mode === 'open') to.write(chunk)
    })
    forward(client, upstream)
    forward(upstream, client)
    const end = () => {
      this.pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end)
    upstream.on('error', end)
    client.on('close', end)
    upstream.on('close', end)
  }

  /** Drops every connection now and refuses new ones until `restore()`. */
  cut () {
    this.mode = 'cut'
    for (const { client, upstream } of this.pairs) {
      client.destroy()
      upstream.destroy()
    }
    this.pairs.clear()
  }

  /** Lets nothing through, on open and new connections, until `restore()`. */
  blackhole () { this.mode = 'blackhole' }

  restore () { this.mode = 'open' }

  async stop () {
    this.cut()
    await new Promise((resolve) => this.server.close(resolve))
  }
}

async function startProxy (upstreamPort) {
  return new Proxy(upstreamPort).start()
}

module.exports = { startProxy, Proxy }
