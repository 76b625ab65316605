// jetstan — the public contract. A superset of node-nats-streaming 0.3.2's
// typings: every name it declared is still importable, with the runtime's
// wider shapes (connect options as a port or URL, isClosed(),
// getRedeliveryCount()) and typed event overloads added.

/// <reference types="node" />
import { EventEmitter } from 'node:events'

/** The package version. */
export declare const version: string

/**
 * Connects to NATS and returns a `Stan` object at once; wait for its `connect`
 * event before publishing or subscribing (publishes made earlier wait).
 * `opts` may be an options object, a server URL (`nats://`, `http://` and
 * bare `host:port` are accepted) or a port on localhost.
 * Throws a `StanError` with code `BAD_OPTION` for invalid arguments.
 */
export declare function connect (clusterID: string, clientID: string, opts?: StanOptions | string | number): Stan

/**
 * Promise form of `connect`: resolves with the connected `Stan` object, or
 * rejects with the connect error (`CONN_ERR`, `CONNECT_TIMEOUT`,
 * `CLIENT_ID_IN_USE`, ...).
 */
export declare function connectAsync (clusterID: string, clientID: string, opts?: StanOptions | string | number): Promise<Stan>

/** Start positions, with the numbers STAN puts on the wire. */
export declare enum StartPosition {
  NEW_ONLY = 0,
  LAST_RECEIVED = 1,
  TIME_DELTA_START = 2,
  SEQUENCE_START = 3,
  FIRST = 4
}

/**
 * Every error jetstan reports is a `StanError`: `code` is stable and meant for
 * matching; `message` keeps node-nats-streaming's text where it had one.
 */
export declare class StanError extends Error {
  readonly code: ErrorCode | string
  /** `INVALID_PAYLOAD`: what the schema found wrong. */
  readonly issues?: ReadonlyArray<{ readonly message: string, readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> }>
  /** `INVALID_PAYLOAD` from a Listener: the message's sequence and raw payload. */
  readonly sequence?: number
  readonly data?: Buffer
  /** `INVALID_PAYLOAD` from a Listener with `deadLetterSubject`: the copy's guid. */
  readonly deadLetterGuid?: string
}

/** The codes a `StanError` can carry. */
export type ErrorCode =
  | 'BAD_OPTION' | 'BAD_SUBJECT' | 'BAD_DATA' | 'BAD_SUBSCRIPTION' | 'MAX_PAYLOAD' | 'MAX_IN_FLIGHT'
  | 'CONNECTION_CLOSED' | 'CONN_ERR' | 'CONNECT_TIMEOUT' | 'JETSTREAM_NOT_ENABLED'
  | 'STREAM_NOT_FOUND' | 'STREAM_ERROR' | 'PUB_ACK_TIMEOUT' | 'PUBLISH_FAILED'
  | 'SUBSCRIBE_FAILED' | 'SUBSCRIBE_TIMEOUT' | 'SERVER_ERROR' | 'NATIVE_MISSING'
  | 'CLIENT_ID_IN_USE' | 'BAD_CLIENT_ID' | 'DUPLICATE_DURABLE' | 'CONNECTION_LOST' | 'INVALID_PAYLOAD'
  | 'BAD_CONFIG' | 'CONSUMER_NOT_FOUND' | 'BUCKET_NOT_FOUND' | 'KEY_EXISTS' | 'WRONG_REVISION' | 'BAD_KEY'
  | 'NOT_SUPPORTED'
  | 'PROTOCOL_ERROR' | 'AUTH_FAILED' | 'TLS_ERROR' | 'PERMISSION_DENIED' | 'KEY_NOT_FOUND' | 'MESSAGE_NOT_FOUND'
  // jetstan migrate
  | 'MONITOR_UNREACHABLE' | 'UNKNOWN_CLUSTER' | 'UNKNOWN_CHANNEL' | 'TARGET_CONFLICT' | 'STALLED'
  | 'COPY_FAILED' | 'DURABLE_ONLINE' | 'DURABLE_STATE'

/** NATS connection options, as node-nats-streaming 0.3.2 forwarded them. */
export interface ClientOpts {
  /** Only `'binary'` is accepted, as in 0.3.2. */
  encoding?: 'binary'
  /** Reconnect attempts; `-1` (the default) means forever. */
  maxReconnectAttempts?: number
  /** Connection name, visible in the server's monitoring. */
  name?: string
  noRandomize?: boolean
  /** Milliseconds between NATS protocol pings (default 60000). */
  pingInterval?: number
  reconnect?: boolean
  /** Milliseconds between reconnect attempts (default 2000). */
  reconnectTimeWait?: number
  /**
   * Server pool; when given, the default `url` is not added to it. A URL may
   * carry credentials (`nats://user:pass@host`, `nats://token@host`); all the
   * servers that carry some must carry the same.
   */
  servers?: Array<string>
  /** A URL may carry credentials: `nats://user:pass@host:4222` or `nats://token@host:4222`. */
  url?: string
  user?: string
  pass?: string
  token?: string
  /** An nkey user's seed (`SU…`): jetstan signs the server's nonce with it. */
  nkeySeed?: string
  /** Path of a `.creds` file (user JWT and nkey seed), for decentralised auth. */
  userCreds?: string
  /**
   * TLS: `true` requires it with the system's CAs; an object sets a private
   * CA, a client certificate (mutual TLS), `rejectUnauthorized: false` (test
   * servers only) and `handshakeFirst` (servers with `handshake_first`).
   * `ca`, `cert` and `key` take PEM text or a file path. `tls://` URLs
   * require TLS too.
   */
  tls?: boolean | TlsOptions
  waitOnFirstConnect?: boolean
  /** A protocol debug mode: only `false` is accepted. */
  pedantic?: false
  /** A protocol debug mode: only `false` is accepted. */
  verbose?: false
  /** Not supported (`BAD_OPTION`): pass the seed as `nkeySeed`. */
  nkey?: never
  /** Not supported (`BAD_OPTION`): pass the seed as `nkeySeed`. */
  nonceSigner?: never
  /** Not supported (`BAD_OPTION`): pass a `.creds` file as `userCreds`. */
  userJWT?: never
  /** Not supported (`BAD_OPTION`): pass `token`. */
  tokenHandler?: never
  /** Not supported (`BAD_OPTION`): tune `pingInterval`, or `stanMaxPingOut`. */
  maxPingOut?: never
  /** Not supported (`BAD_OPTION`): nothing to yield, parsing is off the JS thread. */
  yieldTime?: never
  /** Not supported (`BAD_OPTION`): requests always share one inbox. */
  useOldRequestStyle?: never
}

export interface TlsOptions {
  /** The CA(s) to trust instead of the system's: PEM text or a file path. */
  ca?: string | Buffer
  /** A client certificate (chain) for mutual TLS: PEM text or a file path; needs `key`. */
  cert?: string | Buffer
  /** The client certificate's private key: PEM text or a file path. */
  key?: string | Buffer
  /** `false` accepts any server certificate: for test servers only (default true). */
  rejectUnauthorized?: boolean
  /** Start with the TLS handshake, for servers configured with `handshake_first`. */
  handshakeFirst?: boolean
}

export interface StanOptions extends ClientOpts {
  url?: string
  /** Alias of `url`. */
  uri?: string
  /** Shorthand for `url: 'nats://localhost:<port>'`. */
  port?: number
  /** Milliseconds to establish the connection (default 2000). */
  connectTimeout?: number
  /** Milliseconds a publish waits for the server's ack (default 30000). */
  ackTimeout?: number
  /** Where a nats-streaming-server listens for connects (`backend: 'stan'`; default `_STAN.discover`). */
  discoverPrefix?: string
  /**
   * Most publishes awaiting their ack (default 16384). Beyond it, publishes
   * with a callback wait for room; publishes without one throw `MAX_IN_FLIGHT`.
   */
  maxPubAcksInflight?: number
  /** jetstan's spelling of `maxPubAcksInflight`; both work. */
  maxPubAcksInFlight?: number
  /** `'binary'` makes `Message.getData()` return a Buffer; anything else means UTF-8. */
  stanEncoding?: string
  /** Unanswered liveness pings in a row before `connection_lost` (default 3). */
  stanMaxPingOut?: number
  /** Milliseconds between liveness pings (default 5000). */
  stanPingInterval?: number
  /** Not supported: jetstan owns its NATS connection. Passing one throws `BAD_OPTION`. */
  nc?: never
  /**
   * `'jetstream'` (default): STAN semantics on NATS JetStream. `'stan'`: the
   * legacy protocol, to a nats-streaming-server; streams, consumers and KV
   * then reject with `NOT_SUPPORTED`.
   */
  backend?: 'jetstream' | 'stan'
  /**
   * Create a stream for a channel that no stream captures (default true).
   * With false, such publishes and subscriptions fail with `STREAM_NOT_FOUND`.
   */
  autoCreateStreams?: boolean
  /**
   * Gets this connection's log lines (level, target, message, fields) instead
   * of stderr: the lifecycle at info, or what `JETSTAN_LOG` enables.
   */
  logger?: (line: string) => void
  /**
   * Limits of the streams jetstan creates for channels (jetstream backend).
   * The defaults are nats-streaming-server's per-channel limits: 1,000,000
   * messages or 1 GiB, oldest discarded first, no age limit; one replica.
   */
  streamDefaults?: StreamDefaults
}

export interface StreamDefaults {
  /** Messages kept per channel; `-1`: no limit (default 1,000,000). */
  maxMsgs?: number
  /** Bytes kept per channel; `-1`: no limit (default 1 GiB). */
  maxBytes?: number
  /** Milliseconds a message is kept; `0`: no limit (the default). */
  maxAge?: number
  /** Copies in a cluster (default 1); 3 survives the loss of a node. */
  replicas?: number
  /** `'file'` (default) or `'memory'`. */
  storage?: 'file' | 'memory'
  /** What a full channel drops: `'old'` messages (default, as STAN) or `'new'` publishes. */
  discard?: 'old' | 'new'
}

export declare class Message {
  /** The channel. */
  getSubject (): string
  /** The channel sequence (the stream sequence on JetStream). */
  getSequence (): number
  /** The payload bytes; a view into the delivery batch, not a copy. */
  getRawData (): Buffer
  /** A UTF-8 string, or a Buffer with `stanEncoding: 'binary'`. */
  getData (): string | Buffer
  /** When the server stored the message, in nanoseconds since the epoch. */
  getTimestampRaw (): number
  getTimestamp (): Date
  isRedelivered (): boolean
  /** 0 on the first delivery. */
  getRedeliveryCount (): number
  getCrc32 (): number
  /**
   * Headers set by the publisher (jetstream backend; not jetstan's own
   * `Nats-Msg-Id`): several values of one name joined with ', '. `{}` when none.
   */
  getHeaders (): Record<string, string>
  /** Acknowledges the message; a no-op once the subscription is closed. */
  ack (): void
}

export declare class Subscription extends EventEmitter {
  readonly subject: string
  readonly qGroup?: string
  readonly opts: SubscriptionOptions
  /** True as soon as `unsubscribe()` or `close()` has been called. */
  isClosed (): boolean
  /** Ends the subscription and removes its durable state; `unsubscribed` follows. */
  unsubscribe (): void
  /** Ends the subscription but keeps durable state; `closed` follows. */
  close (): void
  /**
   * Messages in order. Outside manual-ack mode each message is acked when
   * the loop asks for the next one, so after its body ran. Ends when the
   * subscription or the connection closes; throws the subscription's errors.
   */
  [Symbol.asyncIterator] (): AsyncIterableIterator<Message>

  on (event: 'ready' | 'unsubscribed' | 'closed', listener: () => void): this
  on (event: 'message', listener: (msg: Message) => void): this
  on (event: 'error' | 'timeout', listener: (err: StanError) => void): this
  on (event: string | symbol, listener: (...args: any[]) => void): this
  once (event: 'ready' | 'unsubscribed' | 'closed', listener: () => void): this
  once (event: 'message', listener: (msg: Message) => void): this
  once (event: 'error' | 'timeout', listener: (err: StanError) => void): this
  once (event: string | symbol, listener: (...args: any[]) => void): this
}

export interface AckHandlerCallback {
  (err: Error | undefined, guid: string): void
}

export interface PublishOptions {
  /** Headers (jetstream backend only; `BAD_OPTION` on stan): a value or several per name. */
  headers?: Record<string, string | string[]> | Map<string, string | string[]>
}

export interface Stats {
  /** Messages published, and their payload bytes. */
  msgsOut: number
  bytesOut: number
  /**
   * Of `msgsOut`, those acked as part of a fast-ingest batch (JetStream on nats-server
   * 2.14 or later, streams with `allow_batched`): publishes of one channel made together.
   */
  msgsOutBatched: number
  /** Messages delivered to this connection's subscriptions, and their payload bytes. */
  msgsIn: number
  bytesIn: number
  /** Publishes waiting for their ack, or for room under `maxPubAcksInflight`. */
  publishesPending: number
  /** Delivered messages not yet acked (or terminated). */
  acksPending: number
  /** Deliveries that were redeliveries. */
  redelivered: number
  reconnects: number
}

export declare class Stan extends EventEmitter {
  readonly clusterID: string
  readonly clientID: string
  /** The effective options. */
  readonly options: StanOptions
  readonly stanPingInterval: number
  readonly stanMaxPingOut: number
  /** The stan backend, once connected: the subjects the server told this client to use. */
  readonly pubPrefix?: string
  readonly subRequests?: string
  readonly unsubRequests?: string
  readonly subCloseRequests?: string
  readonly closeRequests?: string
  /** Counters since connect; cheap enough to read every second. */
  stats (): Stats
  /**
   * Closes the connection; `close` follows. Pending publishes fail with
   * `CONNECTION_CLOSED`. The returned promise resolves at `close` and never rejects.
   */
  close (): Promise<void>
  /**
   * Stops deliveries, waits for running Listener handlers and for-await
   * bodies and their acks, waits until every publish is acknowledged, closes
   * the subscriptions (durables keep their place), then closes.
   */
  drain (): Promise<void>
  /** Resolves with the guid once the server stored the message; waits for room instead of throwing. */
  publishAsync (subject: string, data?: Uint8Array | string | Buffer | null, options?: PublishOptions): Promise<string>
  /** JetStream stream management, configs as the NATS CLI writes them. */
  readonly streams: Streams
  /** JetStream consumer management, configs as the NATS CLI writes them. */
  readonly consumers: Consumers
  /** Opens a KV bucket, creating it with `options` unless `create: false` (then `BUCKET_NOT_FOUND`). */
  kv (bucket: string, options?: KVOptions): Promise<KV>
  /** True once `close()` was called or the connection ended. */
  isClosed (): boolean
  /**
   * Publishes to channel `subject` and returns the guid; `callback` runs once
   * the server stored the message, or with the error.
   */
  publish (subject: string, data?: Uint8Array | string | Buffer | null, callback?: AckHandlerCallback): string
  publish (subject: string, data: Uint8Array | string | Buffer | null, options: PublishOptions, callback?: AckHandlerCallback): string
  publish (subject: string, callback: AckHandlerCallback): string
  subscribe (subject: string, opts?: SubscriptionOptions): Subscription
  subscribe (subject: string, qGroup: string, opts?: SubscriptionOptions): Subscription
  subscriptionOptions (): SubscriptionOptions

  on (event: 'connect' | 'reconnect', listener: (sc: Stan) => void): this
  on (event: 'error' | 'connection_lost', listener: (err: StanError) => void): this
  on (event: 'close', listener: (err?: Error | null) => void): this
  on (event: 'disconnect' | 'reconnecting', listener: () => void): this
  on (event: string | symbol, listener: (...args: any[]) => void): this
  once (event: 'connect' | 'reconnect', listener: (sc: Stan) => void): this
  once (event: 'error' | 'connection_lost', listener: (err: StanError) => void): this
  once (event: 'close', listener: (err?: Error | null) => void): this
  once (event: 'disconnect' | 'reconnecting', listener: () => void): this
  once (event: string | symbol, listener: (...args: any[]) => void): this
}

export declare interface SubscriptionOptions {
  durableName?: string
  maxInFlight?: number
  /** Milliseconds, at least 1000. */
  ackWait?: number
  startPosition: StartPosition
  startSequence?: number
  /** Nanoseconds ago, for `TIME_DELTA_START`. */
  startTime?: number
  manualAcks?: boolean

  setMaxInFlight (n: number): SubscriptionOptions
  setAckWait (millis: number): SubscriptionOptions
  setStartAt (startPosition: StartPosition | number): SubscriptionOptions
  setStartAtSequence (sequence: number): SubscriptionOptions
  setStartTime (date: Date | number): SubscriptionOptions
  setStartAtTimeDelta (millis: number): SubscriptionOptions
  setStartWithLastReceived (): SubscriptionOptions
  setDeliverAllAvailable (): SubscriptionOptions
  setManualAckMode (tf: boolean): SubscriptionOptions
  setDurableName (durableName: string): SubscriptionOptions
}

/** The Standard Schema v1 interface (zod, valibot, arktype... implement it); jetstan depends on none of them. */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly '~standard': {
    readonly version: 1
    readonly vendor: string
    readonly validate: (value: unknown) => StandardSchemaResult<Output> | Promise<StandardSchemaResult<Output>>
    readonly types?: { readonly input: Input, readonly output: Output }
  }
}

export type StandardSchemaResult<Output> =
  | { readonly value: Output, readonly issues?: undefined }
  | { readonly issues: ReadonlyArray<{ readonly message: string, readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> }> }

/** Turns event payloads into bytes and back. */
export interface Codec<T = unknown> {
  encode (value: T): string | Uint8Array
  decode (bytes: Buffer): T
}

/**
 * Plain JSON (the default): what `JSON.stringify` writes and `JSON.parse`
 * reads, so services that parse events by hand read typed ones and back.
 * A Date arrives as its ISO string; a schema with coercion (e.g. zod's
 * `z.coerce.date()`) turns it back into a Date.
 */
export declare const jsonCodec: Codec<any>

/**
 * Opt-in: JSON with Dates sent as `{"$date": ISO}` and Buffers as
 * `{"$buffer": base64}`, both restored on decode. Only readers using this
 * codec restore them.
 */
export declare const taggedJsonCodec: Codec<any>

/** One event type: its subject and its payload, as the ticketing-course `common` package declares them. */
export interface BusEvent {
  subject: string
  data: unknown
}

/**
 * Publishes one event type: set `subject` (and optionally `schema`, `codec`).
 * `publish(data)` only accepts `T['data']`.
 */
export declare abstract class Publisher<T extends BusEvent> {
  abstract subject: T['subject']
  codec: Codec
  /** Checked before sending; an invalid payload rejects with `INVALID_PAYLOAD`. */
  schema?: StandardSchemaV1<unknown, T['data']>
  protected client: Stan
  constructor (client: Stan)
  /** Resolves with the guid once the server stored the event. */
  /**
   * `headers` travel with the event (jetstream backend), and so does the
   * active OpenTelemetry context when @opentelemetry/api is installed.
   */
  publish (data: T['data'], options?: PublishOptions): Promise<string>
}

/**
 * Listens to one event type as a durable queue group (deliver all, manual
 * ack). The member is sent at most `maxConcurrent` messages at a time, so
 * each starts before its ack clock runs out; on JetStream a long handler
 * keeps its message with "in progress" acks. The message is acked after
 * `onMessage` returns or its promise resolves; a throw or rejection is
 * reported (see `error`) and the message comes back after `ackWait`. A
 * payload that fails to decode or to pass `schema` is reported as
 * `INVALID_PAYLOAD` (with `issues`, `sequence` and the raw `data`), copied to
 * `deadLetterSubject` when set, and terminated.
 */
export declare abstract class Listener<T extends BusEvent> extends EventEmitter {
  abstract subject: T['subject']
  abstract queueGroupName: string
  abstract onMessage (data: T['data'], msg: Message): void | Promise<void>
  /** Milliseconds before an unacked message is redelivered (default 5000). */
  ackWait: number
  /**
   * Handlers running at once, and messages the member is sent at once
   * (default 1: one event at a time, in order).
   */
  maxConcurrent: number
  codec: Codec
  schema?: StandardSchemaV1<unknown, T['data']>
  /** Where an invalid payload is copied (raw bytes) before it is terminated. */
  deadLetterSubject?: string
  subscription: Subscription | null
  protected client: Stan
  constructor (client: Stan)
  subscriptionOptions (): SubscriptionOptions
  /**
   * Subscribes; resolves once the subscription is ready, rejects with the
   * subscription's error (its `code`) when it fails.
   */
  listen (): Promise<this>
  /**
   * Stops at once: no handler starts afterwards, and messages not handled
   * go back to the group (the durable keeps its position). A running
   * handler's ack no longer counts, so its message is delivered again.
   */
  close (): Promise<void>
  /** Starts no more handlers, lets running ones finish and ack, then closes. */
  drain (): Promise<void>
  /**
   * Handler failures and invalid payloads. Without a listener here they go
   * to the connection's `error` listeners; without those, they are thrown
   * as uncaught exceptions.
   */
  on (event: 'error', listener: (err: StanError | Error) => void): this
  on (event: string | symbol, listener: (...args: any[]) => void): this
}

export interface ListenOptions {
  queueGroupName: string
  ackWait?: number
  maxConcurrent?: number
  deadLetterSubject?: string
}

/** A typed bus over a map of subject → payload type. */
export interface Bus<M extends Record<string, unknown>> {
  readonly client: Stan
  publish<K extends keyof M & string> (subject: K, data: M[K], options?: PublishOptions): Promise<string>
  listen<K extends keyof M & string> (
    subject: K,
    options: ListenOptions,
    handler: (data: M[K], msg: Message) => void | Promise<void>
  ): Promise<Listener<{ subject: K, data: M[K] }>>
}

export declare function createBus<M extends Record<string, unknown>> (
  client: Stan,
  options?: { codec?: Codec, schemas?: { [K in keyof M]?: StandardSchemaV1<unknown, M[K]> } }
): Bus<M>

/**
 * A stream or consumer config or info as the JetStream API and the NATS CLI
 * write it: snake_case fields (`subjects`, `retention`, `max_msgs`,
 * `max_age` in nanoseconds, `durable_name`, `ack_policy`, ...).
 */
export type JetStreamJson = Record<string, any>

export interface Streams {
  /** Creates a stream; resolves with its info. Invalid configs reject with `BAD_CONFIG`. */
  add (config: JetStreamJson | string): Promise<JetStreamJson>
  update (config: JetStreamJson | string): Promise<JetStreamJson>
  /** Rejects with `STREAM_NOT_FOUND` for an unknown stream. */
  info (name: string): Promise<JetStreamJson>
  list (): Promise<JetStreamJson[]>
  delete (name: string): Promise<void>
  /** Removes every message; resolves with how many. */
  purge (name: string): Promise<number>
  /** One stored message by sequence; `MESSAGE_NOT_FOUND` when there is none. */
  get (name: string, sequence: number): Promise<{ subject: string, seq: number, time: string, data: Buffer }>
  /** Removes one message by sequence, leaving a gap. */
  deleteMessage (name: string, sequence: number): Promise<void>
}

export interface Consumers {
  /** Creates a consumer (named by `durable_name` or `name`) on `stream`; resolves with its info. */
  add (stream: string, config: JetStreamJson | string): Promise<JetStreamJson>
  /** Rejects with `CONSUMER_NOT_FOUND` for an unknown consumer. */
  info (stream: string, name: string): Promise<JetStreamJson>
  list (stream: string): Promise<JetStreamJson[]>
  delete (stream: string, name: string): Promise<void>
  /** The next message of a pull consumer, acked; null after `wait` ms (default 5000) without one. */
  next (stream: string, name: string, options?: { wait?: number }): Promise<{ subject: string, seq: number, delivered: number, pending: number, data: string } | null>
  /**
   * Gives a durable consumer an acknowledgement state: every message up to
   * `through` is acked except `unacked`, which are released to the next subscriber.
   */
  settle (stream: string, name: string, through: number, unacked: number[]): Promise<{ acked: number, released: number }>
}

/**
 * The stream the jetstream backend uses for `channel` of `clusterID`, and the
 * consumer it binds for a durable (`clientID` + `durableName`) or a queue
 * group (`durableName` optional); `consumer` is null for neither.
 */
export declare function jetstreamNames (clusterID: string, clientID: string, channel: string, durableName?: string | null, queueGroup?: string | null): { stream: string, consumer: string | null }

export interface MigrateOptions {
  /** The nats-streaming-server: the NATS URL its clients use. */
  from: string
  /** The JetStream server. */
  to: string
  cluster: string
  /** Its monitoring endpoint (default `http://<host of from>:8222`). */
  monitor?: string
  /** The channels to copy; or `all`. */
  channels?: string[]
  all?: boolean
  dryRun?: boolean
  /** Keep copying (and carrying durables as their services stop) until `signal` aborts, then verify. */
  follow?: boolean
  signal?: AbortSignal
  /** How often `follow` looks for new channels and stopped durables, ms (default 1000). */
  pollMs?: number
  /** Limits of the streams it creates, as the connect option (default STAN's). */
  streamDefaults?: StreamDefaults
  /** More connect options for both servers (credentials, TLS). */
  connectOptions?: StanOptions
  /**
   * `channel` (copy starts), `copy` (a message stored), `durable` (a durable's status changed: its
   * report row), `verify`, and with `follow`, `error` (a poll failed; following goes on).
   */
  onProgress?: (event: { type: 'channel' | 'copy' | 'durable' | 'verify' | 'error', channel: string | null, [field: string]: unknown }) => void
}

export interface MigrateChecksum { count: number, sha256: string }

export interface MigrateReport {
  /** False when a channel did not verify or a durable was not carried. */
  ok: boolean
  dryRun: boolean
  copied: number
  messagesPerSecond: number | null
  channels: Array<{
    channel: string, stream: string, firstSeq: number, lastSeq: number, copied: number,
    /** Where this run continued a previous one, if it did. */
    resumedAt: number | null
    /** Sequences missing at the source while copying, kept as gaps. */
    gaps: number
    /** Sequences that expired at the source during the run. */
    expired: number
    verified: { first: number, last: number, source: MigrateChecksum, target: MigrateChecksum, match: boolean } | null
    error?: string
  }>
  durables: Array<{
    channel: string, clientID: string | null, durable: string, queueGroup: string | null, stream: string, consumer: string | null,
    status: 'carried' | 'exists' | 'would carry' | 'online' | 'failed' | 'pending'
    /** The consumer's first sequence: the lowest unacked, else last_sent + 1. */
    startSeq: number | null
    unacked: number[]
    error?: string
  }>
}

/** Copies STAN channels and durable positions into JetStream (see docs/migrating-from-stan.md). */
export declare function migrate (options: MigrateOptions): Promise<MigrateReport>

export interface KVOptions {
  /** Open only; reject with `BUCKET_NOT_FOUND` if absent (default: create). */
  create?: boolean
  description?: string
  /** Values kept per key, 1 to 64 (default 1). */
  history?: number
  /** Milliseconds a value lives (default forever). */
  ttl?: number
  maxValueSize?: number
  maxBytes?: number
  storage?: 'file' | 'memory'
  replicas?: number
}

export interface KVEntry<T = Buffer> {
  bucket: string
  key: string
  value: T
  revision: number
  created: Date
  operation: 'PUT' | 'DEL' | 'PURGE'
}

export interface KVStatus {
  bucket: string
  values: number
  bytes: number
  history: number
  /** Milliseconds; 0 = forever. */
  ttl: number
  storage: string
  replicas: number
  streamInfo: JetStreamJson
}

export interface KVWatch<T = Buffer> extends AsyncIterableIterator<KVEntry<T>> {
  /** Ends the watch; a pending `next()` resolves as done. */
  stop (): Promise<IteratorResult<KVEntry<T>>>
}

export interface KV {
  readonly bucket: string
  /** Resolves with the new revision. */
  put (key: string, value: string | Uint8Array): Promise<number>
  /** Only if `key` has no value; otherwise rejects with `KEY_EXISTS`. */
  create (key: string, value: string | Uint8Array): Promise<number>
  /** Compare-and-set: rejects with `WRONG_REVISION` unless `key` is at `revision`. */
  update (key: string, value: string | Uint8Array, revision: number): Promise<number>
  /** The current value, or null if none (or deleted). */
  get (key: string): Promise<KVEntry | null>
  delete (key: string): Promise<void>
  purge (key: string): Promise<void>
  keys (): Promise<string[]>
  history (key: string): Promise<KVEntry[]>
  status (): Promise<KVStatus>
  /** Current values, then every change; survives a server restart. */
  watch (options?: { keys?: string }): KVWatch
  /** A view that puts and gets values of type T through `codec` (JSON by default). */
  typed<T = unknown> (codec?: Codec<T>): TypedKV<T>
}

export interface TypedKV<T> {
  readonly raw: KV
  put (key: string, value: T): Promise<number>
  create (key: string, value: T): Promise<number>
  update (key: string, value: T, revision: number): Promise<number>
  get (key: string): Promise<KVEntry<T> | null>
}
