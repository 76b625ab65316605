#!/usr/bin/env node
'use strict'

// jetstan: everyday JetStream verbs without Go tooling.
//   jetstan [--server URL] [--json] <verb> ...
// Exit codes: 0 done, 1 the operation failed (code and message on stderr), 2 usage.

const fs = require('node:fs')
const crypto = require('node:crypto')
const jetstan = require('..')

const USAGE = `usage: jetstan [--server URL] [--json] <command>

  stream add --config FILE          create a stream from a JSON config (nats CLI format)
  stream info NAME                  show a stream
  stream ls                         list streams
  stream rm NAME                    delete a stream
  consumer add STREAM --config FILE create a consumer from a JSON config
  consumer info STREAM NAME         show a consumer
  consumer ls STREAM                list a stream's consumers
  kv add BUCKET [--history N] [--ttl MS] [--storage file|memory]
  kv put BUCKET KEY VALUE           store a value, prints the revision
  kv get BUCKET KEY                 print a value
  kv del BUCKET KEY                 delete a key
  kv ls [BUCKET]                    list buckets, or a bucket's keys
  kv watch BUCKET [KEYS]            print current values and changes until interrupted
  pub SUBJECT DATA                  publish with acknowledgement, prints the guid
  sub SUBJECT [--all] [--count N]   print messages until interrupted (or N arrived)

The server is --server, else NATS_URL, else nats://localhost:4222.`

class UsageError extends Error {}

const COMMANDS = new Set(['stream add', 'stream info', 'stream ls', 'stream rm', 'consumer add', 'consumer info',
  'consumer ls', 'kv add', 'kv put', 'kv get', 'kv del', 'kv ls', 'kv watch', 'pub', 'sub'])

function commandOf ([group, verb]) {
  if (group === 'pub' || group === 'sub') return group
  return `${group} ${verb ?? ''}`.trim()
}

function parse (argv) {
  const flags = {}
  const args = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--json' || arg === '--all') flags[arg.slice(2)] = true
    else if (arg === '-h' || arg === '--help') flags.help = true
    else if (arg.startsWith('--')) {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`)
      flags[arg.slice(2)] = argv[++i]
    } else args.push(arg)
  }
  return { flags, args }
}

function need (args, count, what) {
  if (args.length < count) throw new UsageError(`missing ${what}`)
  return args
}

function readConfig (flags) {
  if (flags.config === undefined) throw new UsageError('--config FILE is required')
  return fs.readFileSync(flags.config, 'utf8')
}

function number (value, name) {
  if (value === undefined) return undefined
  const n = Number(value)
  if (!Number.isFinite(n)) throw new UsageError(`${name} must be a number`)
  return n
}

function print (flags, value, human) {
  if (flags.json) console.log(JSON.stringify(value))
  else console.log(human(value))
}

function streamText (info) {
  const c = info.config
  const st = info.state
  return [
    `Stream ${c.name}`,
    `  subjects:  ${(c.subjects ?? []).join(', ')}`,
    `  storage:   ${c.storage}, replicas ${c.num_replicas}, retention ${c.retention}`,
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
    `  filter:    ${c.filter_subject ?? (c.filter_subjects ?? []).join(', ') ?? ''}`,
    `  delivered: consumer seq ${info.delivered.consumer_seq}, stream seq ${info.delivered.stream_seq}`,
    `  pending:   ${info.num_pending}, awaiting ack ${info.num_ack_pending}`
  ].join('\n')
}

function entryText (e) {
  return `${e.key} @ revision ${e.revision} ${e.operation}${e.operation === 'PUT' ? ': ' + e.value.toString() : ''}`
}

/** Resolves at SIGINT/SIGTERM, so long-running verbs end cleanly. */
function interrupted () {
  return new Promise((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
  })
}

async function run (sc, flags, [group, verb, ...rest]) {
  const key = commandOf([group, verb])
  switch (key) {
    case 'stream add': return print(flags, await sc.streams.add(readConfig(flags)), (i) => `Created ${streamText(i)}`)
    case 'stream info': return print(flags, await sc.streams.info(need(rest, 1, 'NAME')[0]), streamText)
    case 'stream ls': return print(flags, await sc.streams.list(), (l) => l.map((i) => i.config.name).join('\n') || 'No streams')
    case 'stream rm': await sc.streams.delete(need(rest, 1, 'NAME')[0]); return print(flags, { deleted: rest[0] }, () => `Deleted stream ${rest[0]}`)
    case 'consumer add': return print(flags, await sc.consumers.add(need(rest, 1, 'STREAM')[0], readConfig(flags)), (i) => `Created ${consumerText(i)}`)
    case 'consumer info': need(rest, 2, 'STREAM NAME'); return print(flags, await sc.consumers.info(rest[0], rest[1]), consumerText)
    case 'consumer ls': return print(flags, await sc.consumers.list(need(rest, 1, 'STREAM')[0]), (l) => l.map((i) => i.name).join('\n') || 'No consumers')
    case 'kv add': {
      const kv = await sc.kv(need(rest, 1, 'BUCKET')[0], {
        history: number(flags.history, '--history'), ttl: number(flags.ttl, '--ttl'), storage: flags.storage
      })
      return print(flags, await kv.status(), (s) => `Bucket ${s.bucket}: history ${s.history}, ttl ${s.ttl} ms, ${s.storage} storage, ${s.values} values`)
    }
    case 'kv put': {
      need(rest, 3, 'BUCKET KEY VALUE')
      const kv = await sc.kv(rest[0], { create: false })
      const revision = await kv.put(rest[1], rest[2])
      return print(flags, { key: rest[1], revision }, () => `${rest[1]} @ revision ${revision}`)
    }
    case 'kv get': {
      need(rest, 2, 'BUCKET KEY')
      const entry = await (await sc.kv(rest[0], { create: false })).get(rest[1])
      if (entry === null) throw Object.assign(new Error(`${rest[1]}: no value`), { code: 'KEY_NOT_FOUND' })
      return print(flags, { ...entry, value: entry.value.toString() }, (e) => e.value)
    }
    case 'kv del': {
      need(rest, 2, 'BUCKET KEY')
      await (await sc.kv(rest[0], { create: false })).delete(rest[1])
      return print(flags, { deleted: rest[1] }, () => `Deleted ${rest[1]}`)
    }
    case 'kv ls': {
      if (rest.length === 0) {
        const buckets = (await sc.streams.list()).map((i) => i.config.name).filter((n) => n.startsWith('KV_')).map((n) => n.slice(3))
        return print(flags, buckets, (b) => b.join('\n') || 'No buckets')
      }
      return print(flags, await (await sc.kv(rest[0], { create: false })).keys(), (k) => k.join('\n') || 'No keys')
    }
    case 'kv watch': {
      const kv = await sc.kv(need(rest, 1, 'BUCKET')[0], { create: false })
      const watch = kv.watch({ keys: rest[1] })
      interrupted().then(() => watch.stop())
      for await (const entry of watch) print(flags, { ...entry, value: entry.value.toString() }, () => entryText(entry))
      return
    }
    case 'pub': {
      need([verb, ...rest], 2, 'SUBJECT DATA')
      const guid = await sc.publishAsync(verb, rest[0])
      return print(flags, { subject: verb, guid }, () => `Published to ${verb}: ${guid}`)
    }
    case 'sub': {
      need([verb], 1, 'SUBJECT')
      const count = number(flags.count, '--count') ?? Infinity
      const opts = sc.subscriptionOptions()
      if (flags.all) opts.setDeliverAllAvailable()
      const sub = sc.subscribe(verb, opts)
      let seen = 0
      interrupted().then(() => sub.close())
      for await (const msg of sub) {
        print(flags, { subject: msg.getSubject(), sequence: msg.getSequence(), data: msg.getData() },
          (m) => `[#${m.sequence}] ${m.subject}: ${m.data}`)
        if (++seen >= count) break
      }
      return
    }
    default:
      throw new UsageError(`unknown command '${key}'`)
  }
}

async function main () {
  let parsed
  try {
    parsed = parse(process.argv.slice(2))
    if (parsed.flags.help || parsed.args.length === 0) {
      console.log(USAGE)
      return
    }
  } catch (err) {
    console.error(`jetstan: ${err.message}\n\n${USAGE}`)
    process.exitCode = 2
    return
  }
  const { flags, args } = parsed
  if (!COMMANDS.has(commandOf(args))) {
    console.error(`jetstan: unknown command '${args.join(' ')}'\n\n${USAGE}`)
    process.exitCode = 2
    return
  }
  const url = flags.server ?? process.env.NATS_URL ?? 'nats://localhost:4222'
  let sc
  try {
    sc = await jetstan.connectAsync('jetstan-cli', `cli-${crypto.randomBytes(6).toString('hex')}`, { url, connectTimeout: 5000 })
    await run(sc, flags, args)
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`jetstan: ${err.message}\n\n${USAGE}`)
      process.exitCode = 2
    } else {
      console.error(`jetstan: ${err.code ?? 'ERROR'}: ${err.message}`)
      process.exitCode = 1
    }
  } finally {
    if (sc !== undefined) await sc.close()
  }
}

main()
