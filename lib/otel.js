'use strict'

// OpenTelemetry for the typed bus, when the application has
// @opentelemetry/api installed (an optional peer dependency): a producer
// span per publish whose context travels as W3C `traceparent`/`tracestate`
// headers, and a consumer span per handled event, child of that context,
// with `onMessage` running inside it. Span names and attributes follow the
// messaging semantic conventions. Without the package, or on the stan
// backend (no headers), events are published and handled as before.

// Loaded when the bus first publishes or handles an event, not with jetstan:
// requiring it adds 7 MB to a process's RSS, traced or not.
let api
function loaded () {
  if (api === undefined) {
    try {
      api = require('@opentelemetry/api')
    } catch {
      // Not installed: tracing is the application's choice.
      api = null
    }
  }
  return api !== null
}

const SYSTEM = 'nats'

const headerSetter = { set (carrier, key, value) { carrier[key] = value } }
const headerGetter = {
  keys (carrier) { return Object.keys(carrier) },
  get (carrier, key) {
    // Header names keep the case they were sent with; propagators ask in lower case.
    const name = Object.keys(carrier).find((k) => k.toLowerCase() === key)
    return name === undefined ? undefined : carrier[name]
  }
}

function tracer () {
  return api.trace.getTracer('jetstan')
}

/**
 * Runs `send(headers)` inside a producer span; `headers` carries the span's
 * context when the backend takes headers, else is undefined.
 */
async function traced (subject, withHeaders, send) {
  if (!loaded()) return send(undefined)
  const span = tracer().startSpan(`publish ${subject}`, {
    kind: api.SpanKind.PRODUCER,
    attributes: {
      'messaging.system': SYSTEM,
      'messaging.operation.type': 'send',
      'messaging.operation.name': 'publish',
      'messaging.destination.name': subject
    }
  })
  let headers
  if (withHeaders) {
    headers = {}
    api.propagation.inject(api.trace.setSpan(api.context.active(), span), headers, headerSetter)
    if (Object.keys(headers).length === 0) headers = undefined
  }
  return within(span, async () => {
    const guid = await send(headers)
    span.setAttribute('messaging.message.id', guid)
    return guid
  })
}

/** Runs `handle()` inside a consumer span, child of the context the message carries. */
async function handled (subject, group, msg, handle) {
  if (!loaded()) return handle()
  const parent = api.propagation.extract(api.context.active(), msg.getHeaders(), headerGetter)
  const span = tracer().startSpan(`process ${subject}`, {
    kind: api.SpanKind.CONSUMER,
    attributes: {
      'messaging.system': SYSTEM,
      'messaging.operation.type': 'process',
      'messaging.operation.name': 'process',
      'messaging.destination.name': subject,
      'messaging.consumer.group.name': group,
      'messaging.message.id': String(msg.getSequence())
    }
  }, parent)
  return within(span, () => api.context.with(api.trace.setSpan(parent, span), handle))
}

/** Runs `work`, recording on `span` how it ended, then ends the span. */
async function within (span, work) {
  try {
    return await work()
  } catch (err) {
    span.recordException(err)
    span.setStatus({ code: api.SpanStatusCode.ERROR, message: err.message })
    throw err
  } finally {
    span.end()
  }
}

module.exports = { traced, handled }
