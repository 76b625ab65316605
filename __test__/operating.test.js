'use strict'

// Operating it: logs (JETSTAN_LOG, a logger function), message headers,
// trace context through the typed bus (OpenTelemetry's in-memory exporter),
// stats() against a known workload, and 0.3.2's readable properties.

const { describe, test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawn } = require('node:child_process')
const otel = require('@opentelemetry/api')
const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base')
const { W3CTraceContextPropagator } = require('@opentelemetry/core')
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks')
const { once, unique, collect, useBothBackends, stan } = require('./helpers')
const { Publisher, Listener } = stan

const CLUSTER = 'operating-cluster'
const ctx = useBothBackends(CLUSTER)

function connect (opts = {}) {
  return ctx.connect(opts.backend ?? 'jetstream', opts, unique('op'))
}

/** Runs a child that connects, publishes once and closes; resolves with its stderr. */
function childStderr (env) {
  const channel = unique('logged')
  const script = `
    const stan = require(${JSON.stringify(path.join(__dirname, '..'))})
    stan.connectAsync(${JSON.stringify(CLUSTER)}, 'logged-' + process.pid, { url: ${JSON.stringify(ctx.server.url)} })
      .then(async (sc) => { await sc.publishAsync(${JSON.stringify(channel)}, 'x'); await sc.close() })`
  const child = spawn(process.execPath, ['-e', script], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk) => { stderr += chunk })
  return once(child, 'exit', { timeoutMs: 20000, rejectOnError: false }).then((code) => ({ code, stderr }))
}

describe('logs', () => {
  test('JETSTAN_LOG=debug writes the core\'s events to stderr; unset, nothing', async () => {
    const quiet = await childStderr({ JETSTAN_LOG: '' })
    assert.equal(quiet.code, 0)
    assert.equal(quiet.stderr, '')
    const loud = await childStderr({ JETSTAN_LOG: 'debug' })
    assert.equal(loud.code, 0)
    assert.match(loud.stderr, /^INFO jetstan::session: connected server=127\.0\.0\.1:\d+ .*cluster=operating-cluster client=logged-\d+/m)
    assert.match(loud.stderr, /^INFO jetstan::jetstream::streams: stream for the channel created channel=logged-\w+ .*max_msgs=1000000/m)
    assert.match(loud.stderr, /^INFO jetstan::session: closed /m)
  })

  test('a logger function gets its connection\'s lines, and the connection lifecycle at info', async () => {
    const lines = []
    const sc = await connect({ logger: (line) => lines.push(line) })
    await sc.publishAsync(unique('logged'), 'x')
    await sc.close()
    assert.ok(lines.some((line) => /^INFO jetstan::session: connected /.test(line)), lines.join('\n'))
    assert.ok(lines.some((line) => /^INFO jetstan::session: closed .*client=op-/.test(line)), lines.join('\n'))
    assert.ok(lines.every((line) => !/DEBUG/.test(line)))
    assert.throws(() => stan.connect(CLUSTER, unique('op'), { url: ctx.server.url, logger: 'stderr' }), { code: 'BAD_OPTION' })
  })
})

describe('headers', () => {
  test('jetstream: headers round-trip; a message without any has {}', async () => {
    const sc = await connect()
    const channel = unique('hdr')
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    await once(sub, 'ready')
    const got = collect(sub, 3)
    await sc.publishAsync(channel, 'one', { headers: { 'X-Request-Id': 'r-1', multi: ['a', 'b'] } })
    await sc.publishAsync(channel, 'two')
    await sc.publishAsync(channel, Buffer.from('three'), { headers: new Map([['k', 'v']]) })
    const [one, two, three] = await got
    assert.deepEqual(one.getHeaders(), { 'X-Request-Id': 'r-1', multi: 'a, b' })
    assert.deepEqual(two.getHeaders(), {})
    assert.deepEqual(three.getHeaders(), { k: 'v' })
    assert.equal(three.getData(), 'three')
  })

  test('bad headers are BAD_OPTION; on the stan backend any header is', async () => {
    const sc = await connect()
    await assert.rejects(sc.publishAsync(unique('hdr'), 'x', { headers: { 'bad name': 'v' } }), { code: 'BAD_OPTION' })
    await assert.rejects(sc.publishAsync(unique('hdr'), 'x', { headers: { k: 'line\r\nbreak' } }), { code: 'BAD_OPTION' })
    await assert.rejects(sc.publishAsync(unique('hdr'), 'x', { headers: { 'Nats-Msg-Id': 'mine' } }), { code: 'BAD_OPTION' })
    await assert.rejects(sc.publishAsync(unique('hdr'), 'x', { priority: 1 }), { code: 'BAD_OPTION' })
    const legacy = await connect({ backend: 'stan' })
    await assert.rejects(legacy.publishAsync(unique('hdr'), 'x', { headers: { k: 'v' } }), { code: 'BAD_OPTION' })
    assert.equal(typeof await legacy.publishAsync(unique('hdr'), 'x'), 'string')
  })
})

describe('trace context through the typed bus', () => {
  test('a trace started around a publish continues in the Listener\'s handler', async () => {
    const exporter = new InMemorySpanExporter()
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
    otel.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
    otel.propagation.setGlobalPropagator(new W3CTraceContextPropagator())
    otel.trace.setGlobalTracerProvider(provider)
    try {
      const sc = await connect()
      const subject = unique('traced')
      // The consumer span ends just after the handler's promise settles:
      // wait for its export rather than for the handler.
      let consumerEnded
      const consumerExported = new Promise((resolve, reject) => {
        consumerEnded = resolve
        setTimeout(() => reject(new Error('consumer span not exported within 10 s')), 10000).unref()
      })
      const exportSpans = exporter.export.bind(exporter)
      exporter.export = (spans, callback) => {
        exportSpans(spans, callback)
        if (spans.some((span) => span.name === `process ${subject}`)) consumerEnded()
      }
      let seenInHandler
      let handled
      const done = new Promise((resolve) => { handled = resolve })
      class TracedListener extends Listener {
        constructor (c) { super(c); this.subject = subject; this.queueGroupName = 'traced' }
        async onMessage () {
          seenInHandler = otel.trace.getSpan(otel.context.active())?.spanContext()
          handled()
        }
      }
      class TracedPublisher extends Publisher { constructor (c) { super(c); this.subject = subject } }
      await new TracedListener(sc).listen()
      const tracer = otel.trace.getTracer('test')
      const traceId = await tracer.startActiveSpan('http request', async (span) => {
        await new TracedPublisher(sc).publish({ id: 1 })
        span.end()
        return span.spanContext().traceId
      })
      await done
      await consumerExported
      assert.equal(seenInHandler?.traceId, traceId)
      const spans = exporter.getFinishedSpans()
      const producer = spans.find((s) => s.name === `publish ${subject}`)
      const consumer = spans.find((s) => s.name === `process ${subject}`)
      assert.equal(producer?.kind, otel.SpanKind.PRODUCER)
      assert.equal(consumer?.kind, otel.SpanKind.CONSUMER)
      assert.equal(consumer.spanContext().traceId, traceId)
      assert.equal(producer.attributes['messaging.destination.name'], subject)
      assert.equal(consumer.attributes['messaging.system'], 'nats')
    } finally {
      otel.trace.disable()
      otel.propagation.disable()
      otel.context.disable()
    }
  })
})

describe('stats and readable properties', () => {
  test('stats() counts a known workload', async () => {
    const sc = await connect()
    const channel = unique('stats')
    for (let i = 0; i < 10; i++) await sc.publishAsync(channel, `msg-${i}`)
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable().setManualAckMode(true))
    const messages = await collect(sub, 10)
    for (const msg of messages.slice(0, 4)) msg.ack()
    const stats = sc.stats()
    assert.deepEqual(
      [stats.msgsOut, stats.bytesOut, stats.msgsIn, stats.bytesIn, stats.publishesPending, stats.acksPending, stats.redelivered, stats.reconnects],
      [10, 50, 10, 50, 0, 6, 0, 0])
  })

  test('0.3.2\'s readable properties, and the stan backend\'s protocol subjects', async () => {
    const sc = await connect({ stanPingInterval: 7000 })
    assert.deepEqual([sc.clusterID, sc.stanPingInterval, sc.stanMaxPingOut], [CLUSTER, 7000, 3])
    assert.equal(sc.pubPrefix, undefined)
    const legacy = await connect({ backend: 'stan' })
    assert.equal(legacy.pubPrefix, `_STAN.pub.${CLUSTER}`)
    assert.equal(legacy.subRequests, `_STAN.sub.${CLUSTER}`)
    assert.equal(legacy.closeRequests, `_STAN.close.${CLUSTER}`)
    assert.equal(typeof legacy.unsubRequests, 'string')
    assert.equal(typeof legacy.subCloseRequests, 'string')
  })
})
