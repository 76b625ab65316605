#!/usr/bin/env node
'use strict'

// jetstan: everyday JetStream verbs without Go tooling, shaped like the nats
// CLI (its aliases, --force for what destroys data).
// Exit codes: 0 done, 1 the operation failed (code and message on stderr), 2 usage.

const fs = require('node:fs')
const crypto = require('node:crypto')
const readline = require('node:readline')
const { Command, CommanderError } = require('commander')
const jetstan = require('..')

class UsageError extends Error {}

/** An operation that failed for a reason the user can act on. */
function failure (code, message) {
  return Object.assign(new Error(message), { code })
}

const program = new Command('jetstan')
  .description('JetStream streams, consumers, KV and STAN-style pub/sub from the shell')
  .version(jetstan.version, '-v, --version')
  .option('-s, --server <url>', 'NATS server URL (default: NATS_URL, else nats://localhost:4222)')
  .option('--json', 'print results as JSON')
  .showHelpAfterError()
  .exitOverride()
  .addHelpText('after', '\nThe server URL may carry credentials: nats://user:pass@host:4222.')

function globals () { return program.opts() }

function print (value, human) {
  if (globals().json) console.log(JSON.stringify(value))
  else console.log(human(value))
}

function readConfig (file) {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch (err) {
    throw failure('BAD_CONFIG', `cannot read '${file}': ${err.code === 'ENOENT' ? 'no such file' : err.message}`)
  }
}

function count (value, name) {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${name} must be a whole number ≥ 1`)
  return n
}

/** Runs `fn(sc)` on a fresh connection, closed afterwards. */
async function withConnection (fn, options = {}) {
  const url = globals().server ?? process.env.NATS_URL ?? 'nats://localhost:4222'
  const sc = await jetstan.connectAsync('jetstan-cli', `cli-${crypto.randomBytes(6).toString('hex')}`,
    { url, connectTimeout: 5000, ...options })
  try {
    return await fn(sc)
  } finally {
    await sc.close()
  }
}

/** `--force`, or a yes on a terminal; refuses otherwise. */
async function confirmed (question, { force }) {
  if (force) return
  if (!process.stdin.isTTY || !process.stdout.isTTY) throw new UsageError(`${question}: refused without --force`)
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout })
  const answer = await new Promise((resolve) => rl.question(`${question}? [y/N] `, resolve))
  rl.close()
  if (!/^y(es)?$/i.test(answer.trim())) throw failure('CANCELLED', 'not confirmed')
}

/** Resolves at SIGINT/SIGTERM, so long-running verbs end cleanly. */
function interrupted () {
  return new Promise((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
  })
}

function streamText (info) {
  const c = info.config
  const st = info.state
  return [
    `Stream ${c.name}`,
    `  subjects:  ${(c.subjects ?? []).join(', ')}`,
    `  storage:   ${c.storage}, replicas ${c.num_replicas}, retention ${c.retention}`,
    `  limits:    ${c.max_msgs} messages, ${c.max_bytes} bytes, max age ${c.max_age / 1e9} s, discard ${c.discard}`,
    `  messages:  ${st.messages} (${st.bytes} bytes), sequences ${st.first_seq}..${st.last_seq}`,
    `  consumers: ${st.consumer_count}`
  ].join('\n')
}

function consumerText (info) {
  const c = info.config
  return [
    `Consumer ${info.stream_name} > ${info.name}`,
    `  durable:   ${c.durable_name ?? '(ephemeral)'}`,
    `  policies:  deliver ${c.deliver_policy}, ack ${c.ack_policy}, replay ${c.replay_policy}`,
    `  filter:    ${c.filter_subject ?? (c.filter_subjects ?? []).join(', ')}`,
    `  delivered: consumer seq ${info.delivered.consumer_seq}, stream seq ${info.delivered.stream_seq}`,
    `  pending:   ${info.num_pending}, awaiting ack ${info.num_ack_pending}`
  ].join('\n')
}

const messageText = (m) => `[#${m.seq}] ${m.subject}: ${m.data}`
const entryText = (e) => `${e.key} @ revision ${e.revision} ${e.operation}${e.operation === 'PUT' ? ': ' + e.value : ''}`

// Streams jetstan or the nats tools make for KV buckets and object stores.
const INTERNAL = /^(KV|OBJ)_/

// ---------------------------------------------------------------- stream
const stream = program.command('stream').alias('str').description('streams')

stream.command('add').description('create a stream from a JSON config (nats CLI format)')
  .requiredOption('--config <file>', 'the stream config')
  .action((opts) => withConnection(async (sc) => print(await sc.streams.add(readConfig(opts.config)), (i) => `Created ${streamText(i)}`)))

stream.command('info <name>').description('show a stream')
  .action((name) => withConnection(async (sc) => print(await sc.streams.info(name), streamText)))

stream.command('ls').alias('list').description('list streams (without KV and object store streams unless --all)')
  .option('-a, --all', 'include KV buckets and object stores')
  .action((opts) => withConnection(async (sc) => {
    const names = (await sc.streams.list()).map((i) => i.config.name).filter((n) => opts.all || !INTERNAL.test(n))
    print(names, (list) => list.join('\n') || 'No streams')
  }))

stream.command('rm <name>').alias('del').description('delete a stream and its messages')
  .option('-f, --force', 'do not ask')
  .action(async (name, opts) => {
    await confirmed(`Delete stream ${name} and all its messages`, opts)
    await withConnection(async (sc) => { await sc.streams.delete(name) })
    print({ deleted: name }, () => `Deleted stream ${name}`)
  })

stream.command('purge <name>').description('remove every message of a stream')
  .option('-f, --force', 'do not ask')
  .action(async (name, opts) => {
    await confirmed(`Purge every message of stream ${name}`, opts)
    const purged = await withConnection((sc) => sc.streams.purge(name))
    print({ purged }, () => `Purged ${purged} messages from ${name}`)
  })

stream.command('get <name> <seq>').description('print one message by sequence')
  .action((name, seq) => withConnection(async (sc) => {
    const message = await sc.streams.get(name, count(seq, 'SEQ'))
    print({ ...message, data: message.data.toString() }, messageText)
  }))

stream.command('view <name>').description('print messages in order')
  .option('--since <seq>', 'start at this sequence (default: the first)')
  .option('-n, --count <n>', 'at most this many', '25')
  .action((name, opts) => withConnection(async (sc) => {
    const { state } = await sc.streams.info(name)
    const limit = count(opts.count, '--count')
    let shown = 0
    for (let seq = Math.max(state.first_seq, opts.since ? count(opts.since, '--since') : 1); seq <= state.last_seq && shown < limit; seq++) {
      let message
      try {
        message = await sc.streams.get(name, seq)
      } catch (err) {
        if (err.code === 'MESSAGE_NOT_FOUND') continue // deleted, or expired meanwhile
        throw err
      }
      print({ ...message, data: message.data.toString() }, messageText)
      shown++
    }
    if (shown === 0 && !globals().json) console.log('No messages')
  }))

// ---------------------------------------------------------------- consumer
const consumer = program.command('consumer').alias('con').description('consumers')

consumer.command('add <stream>').description('create a consumer from a JSON config')
  .requiredOption('--config <file>', 'the consumer config')
  .action((name, opts) => withConnection(async (sc) => print(await sc.consumers.add(name, readConfig(opts.config)), (i) => `Created ${consumerText(i)}`)))

consumer.command('info <stream> <name>').description('show a consumer')
  .action((name, consumerName) => withConnection(async (sc) => print(await sc.consumers.info(name, consumerName), consumerText)))

consumer.command('ls <stream>').alias('list').description("list a stream's consumers")
  .action((name) => withConnection(async (sc) => print((await sc.consumers.list(name)).map((i) => i.name), (l) => l.join('\n') || 'No consumers')))

consumer.command('rm <stream> <name>').alias('del').description('delete a consumer')
  .option('-f, --force', 'do not ask')
  .action(async (name, consumerName, opts) => {
    await confirmed(`Delete consumer ${consumerName} of ${name}`, opts)
    await withConnection((sc) => sc.consumers.delete(name, consumerName))
    print({ deleted: consumerName }, () => `Deleted consumer ${consumerName}`)
  })

consumer.command('next <stream> <name>').description('take the next message of a pull consumer, and ack it')
  .option('-n, --count <n>', 'how many', '1')
  .option('--wait <ms>', 'how long to wait for each', '5000')
  .action((name, consumerName, opts) => withConnection(async (sc) => {
    const wait = count(opts.wait, '--wait')
    for (let i = count(opts.count, '--count'); i > 0; i--) {
      const message = await sc.consumers.next(name, consumerName, { wait })
      if (message === null) throw failure('NO_MESSAGE', `no message within ${wait} ms`)
      print(message, messageText)
    }
  }))

// ---------------------------------------------------------------- kv
const kv = program.command('kv').description('key-value buckets')

kv.command('add <bucket>').description('create a bucket')
  .option('--history <n>', 'values kept per key')
  .option('--ttl <ms>', 'how long values live')
  .option('--storage <kind>', 'file or memory')
  .action((bucket, opts) => withConnection(async (sc) => {
    const store = await sc.kv(bucket, {
      history: opts.history === undefined ? undefined : count(opts.history, '--history'),
      ttl: opts.ttl === undefined ? undefined : count(opts.ttl, '--ttl'),
      storage: opts.storage
    })
    print(await store.status(), (s) => `Bucket ${s.bucket}: history ${s.history}, ttl ${s.ttl} ms, ${s.storage} storage, ${s.values} values`)
  }))

kv.command('put <bucket> <key> <value>').description('store a value, prints the revision')
  .action((bucket, key, value) => withConnection(async (sc) => {
    const revision = await (await sc.kv(bucket, { create: false })).put(key, value)
    print({ key, revision }, () => `${key} @ revision ${revision}`)
  }))

kv.command('get <bucket> <key>').description('print a value')
  .action((bucket, key) => withConnection(async (sc) => {
    const entry = await (await sc.kv(bucket, { create: false })).get(key)
    if (entry === null) throw failure('KEY_NOT_FOUND', `${key}: no value`)
    print({ ...entry, value: entry.value.toString() }, (e) => e.value)
  }))

kv.command('del <bucket> <key>').alias('rm').description('delete a key')
  .action((bucket, key) => withConnection(async (sc) => {
    await (await sc.kv(bucket, { create: false })).delete(key)
    print({ deleted: key }, () => `Deleted ${key}`)
  }))

kv.command('ls [bucket]').alias('list').description("list buckets, or a bucket's keys")
  .action((bucket) => withConnection(async (sc) => {
    if (bucket === undefined) {
      const buckets = (await sc.streams.list()).map((i) => i.config.name).filter((n) => n.startsWith('KV_')).map((n) => n.slice(3))
      return print(buckets, (b) => b.join('\n') || 'No buckets')
    }
    print(await (await sc.kv(bucket, { create: false })).keys(), (k) => k.join('\n') || 'No keys')
  }))

/**
 * NATS wildcards match whole tokens (`orders.*`, `>`); a pattern like `f*`
 * is taken as a glob: the server sends everything, and keys are matched here.
 */
function keyFilter (pattern) {
  if (pattern === undefined) return { keys: undefined, matches: () => true }
  const tokenWise = pattern.split('.').every((t) => t === '*' || t === '>' || !/[*>]/.test(t))
  if (tokenWise) return { keys: pattern, matches: () => true }
  const glob = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\>]/g, '\\$&')).join('[^.]*')}$`)
  return { keys: undefined, matches: (key) => glob.test(key) }
}

kv.command('watch <bucket> [keys]').description('print current values and changes until interrupted (keys: a NATS pattern or a glob)')
  .action((bucket, pattern) => withConnection(async (sc) => {
    const { keys, matches } = keyFilter(pattern)
    const watch = (await sc.kv(bucket, { create: false })).watch({ keys })
    interrupted().then(() => watch.stop())
    for await (const entry of watch) {
      if (matches(entry.key)) print({ ...entry, value: entry.value.toString() }, entryText)
    }
  }))

// ---------------------------------------------------------------- pub/sub
program.command('pub <subject> <data>').description('publish with acknowledgement, prints the guid')
  .option('--create', 'create a stream for the subject if none captures it')
  .action((subject, data, opts) => withConnection(async (sc) => {
    let guid
    try {
      guid = await sc.publishAsync(subject, data)
    } catch (err) {
      if (err.code === 'STREAM_NOT_FOUND') throw failure(err.code, `no stream captures '${subject}' (a typo?); --create makes one`)
      throw err
    }
    print({ subject, guid }, () => `Published to ${subject}: ${guid}`)
  }, { autoCreateStreams: opts.create === true }))

program.command('sub <subject>').description('print messages until interrupted (or --count arrived)')
  .option('-a, --all', 'from the first stored message')
  .option('-n, --count <n>', 'stop after this many')
  .action((subject, opts) => withConnection(async (sc) => {
    const limit = opts.count === undefined ? Infinity : count(opts.count, '--count')
    const subOptions = sc.subscriptionOptions()
    if (opts.all) subOptions.setDeliverAllAvailable()
    const sub = sc.subscribe(subject, subOptions)
    let seen = 0
    interrupted().then(() => sub.close())
    for await (const msg of sub) {
      print({ subject: msg.getSubject(), seq: msg.getSequence(), data: msg.getData() }, messageText)
      if (++seen >= limit) break
    }
  }))

// ---------------------------------------------------------------- migrate
program.command('migrate').description('copy STAN channels and durable positions into the streams and consumers of the jetstream backend')
  .requiredOption('--from <url>', 'the nats-streaming-server (the NATS URL its clients use)')
  .requiredOption('--cluster <id>', 'its cluster ID')
  .option('--monitor <url>', 'its monitoring endpoint (default: http://<host of --from>:8222)')
  .option('--to <url>', 'the JetStream server (default: --server, NATS_URL, nats://localhost:4222)')
  .option('--channels <list>', 'the channels to copy, comma-separated')
  .option('--all', 'every channel')
  .option('--dry-run', 'say what would be copied and carried; change nothing')
  .option('--follow', 'keep copying new messages (and carry durables as their services stop) until interrupted, then verify')
  .addHelpText('after', '\nExit code 1 when a channel does not verify or a durable was not carried.')
  .action(async (opts) => {
    if (!opts.all && !opts.channels) throw new UsageError('name --channels a,b or --all')
    if (opts.all && opts.channels) throw new UsageError('--channels and --all do not go together')
    const abort = new AbortController()
    if (opts.follow) interrupted().then(() => abort.abort())
    const progress = globals().json ? () => {} : progressReporter()
    let report
    try {
      report = await jetstan.migrate({
        from: opts.from,
        to: opts.to ?? globals().server ?? process.env.NATS_URL ?? 'nats://localhost:4222',
        cluster: opts.cluster,
        monitor: opts.monitor,
        channels: opts.channels?.split(',').map((c) => c.trim()).filter(Boolean),
        all: opts.all === true,
        dryRun: opts.dryRun === true,
        follow: opts.follow === true,
        signal: abort.signal,
        onProgress: progress
      })
    } finally {
      progress.stop?.()
    }
    print(report, reportText)
    if (!report.ok) process.exitCode = 1
  })

/** A bar per channel on a terminal; elsewhere a line per tenth of a channel and per phase. */
function progressReporter () {
  if (process.stderr.isTTY) {
    const { MultiBar, Presets } = require('cli-progress')
    const bars = new MultiBar({ stream: process.stderr, format: ' {bar} {channel} {value}/{total} {phase}', hideCursor: true, clearOnComplete: false }, Presets.shades_classic)
    const byChannel = new Map()
    const report = (event) => {
      let bar = byChannel.get(event.channel)
      if (event.type === 'channel') {
        const total = Math.max(0, event.lastSeq - event.next + 1)
        byChannel.set(event.channel, bars.create(total, 0, { channel: event.channel, phase: 'copy' }))
      } else if (event.type === 'copy' && bar) {
        bar.setTotal(Math.max(bar.getTotal(), event.copied))
        bar.update(event.copied)
      } else if (event.type === 'verify' && bar) {
        bar.update({ phase: 'verify' })
      } else if (event.type === 'durable') {
        bars.log(`${event.channel}: ${durableText(event)}\n`)
      } else if (event.type === 'error') {
        bars.log(`${event.code ?? 'ERROR'}: ${event.message} (still following)\n`)
      }
    }
    report.stop = () => bars.stop()
    return report
  }
  const channels = new Map()
  return (event) => {
    if (event.type === 'channel') {
      channels.set(event.channel, { step: Math.max(1, Math.ceil((event.lastSeq - event.next + 1) / 10)), reported: event.next - 1 })
      console.error(`migrate: ${event.channel}: sequences ${event.firstSeq}..${event.lastSeq}, copying from ${event.next}`)
    }
    if (event.type === 'verify') console.error(`migrate: ${event.channel}: verifying`)
    if (event.type === 'durable') console.error(`migrate: ${event.channel}: ${durableText(event)}`)
    if (event.type === 'error') console.error(`migrate: ${event.code ?? 'ERROR'}: ${event.message} (still following)`)
    const channel = channels.get(event.channel)
    if (event.type !== 'copy' || channel === undefined) return
    if (event.sequence - channel.reported >= channel.step || event.sequence === event.lastSeq) {
      channel.reported = event.sequence
      console.error(`migrate: ${event.channel}: copied ${event.copied}, at sequence ${event.sequence} of ${event.lastSeq}`)
    }
  }
}

function durableText (d) {
  const who = d.queueGroup === null ? `durable '${d.durable}' of client '${d.clientID}'` : `durable queue group '${d.durable}:${d.queueGroup}'`
  const at = d.startSeq === null ? '' : `, starts at ${d.startSeq} with ${d.unacked.length} unacked`
  return `${who}: ${d.status}${at}${d.error ? ` (${d.error})` : ''}`
}

function reportText (r) {
  const lines = []
  const table = (header, rows) => {
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => String(row[i]).length)))
    const line = (cells) => cells.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd()
    lines.push(line(header), ...rows.map(line))
  }
  table(['channel', 'stream', 'copied', 'gaps', 'expired', 'source', 'target', 'verified'], r.channels.map((c) => {
    const v = c.verified
    const side = (s) => v === null ? '-' : `${s.count} ${s.sha256.slice(0, 12)}`
    return [c.channel, c.stream, c.copied, c.gaps, c.expired, side(v?.source), side(v?.target), v === null ? (r.dryRun ? 'dry run' : 'no') : (v.match ? `ok ${v.first}..${v.last}` : 'MISMATCH')]
  }))
  if (r.durables.length > 0) {
    lines.push('')
    table(['channel', 'client', 'durable', 'queue group', 'consumer', 'starts at', 'unacked', 'status'], r.durables.map((d) => [
      d.channel, d.clientID ?? '-', d.durable, d.queueGroup ?? '-', d.consumer, d.startSeq ?? '-', d.unacked.length, d.error ? `${d.status}: ${d.error}` : d.status
    ]))
  }
  lines.push('', `${r.copied} messages copied${r.messagesPerSecond ? ` (${r.messagesPerSecond} msgs/s)` : ''}; ${r.ok ? 'everything verified' : 'NOT everything verified or carried (see above)'}`)
  return lines.join('\n')
}

async function main () {
  if (process.argv.length <= 2) {
    program.outputHelp({ error: true })
    process.exitCode = 2
    return
  }
  try {
    await program.parseAsync(process.argv)
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help or the version asked for exit 0; a group without its verb, an
      // unknown command or a bad argument is a usage error (commander printed it).
      process.exitCode = err.exitCode === 0 ? 0 : 2
    } else if (err instanceof UsageError) {
      console.error(`jetstan: ${err.message}`)
      process.exitCode = 2
    } else {
      console.error(`jetstan: ${err.code ?? 'ERROR'}: ${err.message}`)
      process.exitCode = 1
    }
  }
}

main()
