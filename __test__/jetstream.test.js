'use strict'

// Streams, consumers and KV on a real file-store nats-server that is
// restarted under them, and the jetstan CLI as a user runs it.

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { execFile } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { startServer } = require('../testing/nats-server')
const { once, unique, stan, CLUSTER } = require('./helpers')

let server
let sc
let dir

before(async () => {
  server = await startServer()
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jetstan-cli-'))
  sc = await stan.connectAsync(CLUSTER, unique('manager'), { url: server.url, reconnectTimeWait: 50 })
})
after(async () => {
  await sc.close()
  await server.stop()
  fs.rmSync(dir, { recursive: true, force: true })
})

async function restartServer () {
  const back = once(sc, 'reconnect')
  await server.restart()
  await back
}

function cli (args, env = {}) {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(__dirname, '..', 'bin', 'jetstan.js'), ...args],
      { env: { ...process.env, NATS_URL: server.url, ...env } },
      (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }))
  })
}

describe('streams and consumers', () => {
  test('auto-created channel streams get STAN\'s per-channel limits, or streamDefaults', async () => {
    const channel = unique('limits')
    await sc.publishAsync(channel, 'x')
    const { config } = await sc.streams.info(`${CLUSTER}_${channel}`)
    assert.deepEqual(
      [config.max_msgs, config.max_bytes, config.max_age, config.discard, config.num_replicas, config.storage],
      [1000000, 1024 * 1024 * 1024, 0, 'old', 1, 'file'])
    const custom = stan.connect(CLUSTER, unique('limits'), { url: server.url, streamDefaults: { maxMsgs: 5, maxAge: 60000, storage: 'memory' } })
    await once(custom, 'connect')
    try {
      const small = unique('small')
      for (let i = 0; i < 8; i++) await custom.publishAsync(small, `m${i}`)
      const info = await custom.streams.info(`${CLUSTER}_${small}`)
      assert.deepEqual([info.config.max_msgs, info.config.max_age, info.config.storage], [5, 60000 * 1e6, 'memory'])
      // STAN's discard: the oldest go.
      assert.deepEqual([info.state.messages, info.state.first_seq], [5, 4])
    } finally {
      await custom.close()
    }
    assert.throws(() => stan.connect(CLUSTER, unique('bad'), { url: server.url, streamDefaults: { replicas: 0 } }), { code: 'BAD_OPTION' })
    assert.throws(() => stan.connect(CLUSTER, unique('bad'), { url: server.url, backend: 'stan', streamDefaults: { maxMsgs: 5 } }), { code: 'BAD_OPTION' })
  })

  test('a stream and a durable consumer from CLI-style JSON configs survive a restart with their messages', async () => {
    const name = unique('ORDERS').replace(/-/g, '_')
    const subject = `${name.toLowerCase()}.>`
    const info = await sc.streams.add({
      name, subjects: [subject], retention: 'limits', max_msgs: -1, max_bytes: -1,
      max_age: 0, max_msg_size: -1, storage: 'file', discard: 'old', num_replicas: 1, duplicate_window: 120e9
    })
    assert.equal(info.config.name, name)
    const consumer = await sc.consumers.add(name, {
      durable_name: 'processor', deliver_policy: 'all', ack_policy: 'explicit', ack_wait: 30e9,
      max_deliver: -1, filter_subject: subject, replay_policy: 'instant'
    })
    assert.equal(consumer.name, 'processor')
    for (let i = 0; i < 3; i++) await sc.publishAsync(`${name.toLowerCase()}.new`, `order ${i}`)

    await restartServer()

    const after = await sc.streams.info(name)
    assert.equal(after.state.messages, 3)
    const again = await sc.consumers.info(name, 'processor')
    assert.equal(again.config.ack_policy, 'explicit')
    assert.equal(again.num_pending, 3)
    assert.ok((await sc.streams.list()).some((s) => s.config.name === name))
    assert.deepEqual((await sc.consumers.list(name)).map((c) => c.name), ['processor'])
  })

  test('STAN subscriptions work on a channel of a stream made from a config', async () => {
    const name = unique('SHOP').replace(/-/g, '_')
    await sc.streams.add({ name, subjects: [`${name}.*`] })
    const channel = `${name}.paid`
    await sc.publishAsync(channel, 'invoice 1')
    const sub = sc.subscribe(channel, sc.subscriptionOptions().setDeliverAllAvailable())
    const [msg] = await new Promise((resolve) => sub.once('message', (m) => resolve([m])))
    assert.equal(msg.getData(), 'invoice 1')
    assert.equal((await sc.streams.info(name)).state.messages, 1)
  })

  test('invalid configs and missing streams give coded errors', async () => {
    await assert.rejects(sc.streams.add({ subjects: ['x'] }), { code: 'BAD_CONFIG' })
    await assert.rejects(sc.streams.add({ name: 'a.b' }), { code: 'BAD_CONFIG' })
    await assert.rejects(sc.streams.add('{not json'), { code: 'BAD_CONFIG' })
    await assert.rejects(sc.streams.add({ name: unique('X'), subjects: ['y'], retention: 'sometimes' }), { code: 'BAD_CONFIG' })
    await assert.rejects(sc.streams.info(unique('MISSING')), { code: 'STREAM_NOT_FOUND' })
    const name = unique('S')
    await sc.streams.add({ name, subjects: [name] })
    await assert.rejects(sc.consumers.info(name, 'nobody'), { code: 'CONSUMER_NOT_FOUND' })
    await assert.rejects(sc.consumers.add(name, { ack_policy: 'explicit' }), { code: 'BAD_CONFIG' })
    await sc.streams.delete(name)
    await assert.rejects(sc.streams.info(name), { code: 'STREAM_NOT_FOUND' })
  })
})

describe('KV', () => {
  test('put, get, create, update with compare-and-set, delete, keys and history', async () => {
    const kv = await sc.kv(unique('test'), { history: 5 })
    const r1 = await kv.put('foo', 'bar')
    const entry = await kv.get('foo')
    assert.equal(entry.value.toString(), 'bar')
    assert.equal(entry.revision, r1)
    assert.ok(entry.created instanceof Date)
    await assert.rejects(kv.create('foo', 'again'), { code: 'KEY_EXISTS' })
    assert.ok(await kv.create('fresh', 'x') > r1)
    await assert.rejects(kv.update('foo', 'stale', r1 + 100), { code: 'WRONG_REVISION' })
    const r2 = await kv.update('foo', 'baz', r1)
    assert.ok(r2 > r1)
    assert.deepEqual((await kv.keys()).sort(), ['foo', 'fresh'])
    await kv.delete('fresh')
    assert.equal(await kv.get('fresh'), null)
    assert.deepEqual((await kv.keys()).sort(), ['foo'])
    assert.deepEqual((await kv.history('foo')).map((e) => e.value.toString()), ['bar', 'baz'])
    await kv.purge('foo')
    assert.equal(await kv.get('foo'), null)
    const status = await kv.status()
    assert.equal(status.history, 5)
    await assert.rejects(kv.put('bad key', 'x'), { code: 'BAD_KEY' })
  })

  test('typed helpers put and get values through a codec: plain JSON by default', async () => {
    const bucket = await sc.kv(unique('typed'))
    await bucket.typed().put('order', { id: 1, at: new Date(0) })
    assert.equal((await bucket.get('order')).value.toString(), JSON.stringify({ id: 1, at: new Date(0) }))
    assert.deepEqual((await bucket.typed().get('order')).value, { id: 1, at: '1970-01-01T00:00:00.000Z' })
    const tagged = bucket.typed(stan.taggedJsonCodec)
    await tagged.put('order', { id: 2, at: new Date(0) })
    assert.equal((await tagged.get('order')).value.at.getTime(), 0)
  })

  test('a missing bucket is BUCKET_NOT_FOUND unless created', async () => {
    await assert.rejects(sc.kv(unique('absent'), { create: false }), { code: 'BUCKET_NOT_FOUND' })
  })

  test('a watch sees current values, then changes, across a server restart', async () => {
    const kv = await sc.kv(unique('watched'))
    await kv.put('a', '1')
    const watch = kv.watch()
    const seen = []
    const nextValue = async () => {
      const { value } = await watch.next()
      seen.push(`${value.key}=${value.value.toString()}`)
    }
    await nextValue()
    await kv.put('b', '2')
    await nextValue()
    await restartServer()
    await kv.put('c', '3')
    await nextValue()
    await watch.stop()
    assert.deepEqual(seen, ['a=1', 'b=2', 'c=3'])
  })
})

describe('CLI', () => {
  test('stream add/info and consumer add/info from config files', async () => {
    const name = unique('CLI').replace(/-/g, '_')
    const streamFile = path.join(dir, 'stream.json')
    const consumerFile = path.join(dir, 'consumer.json')
    fs.writeFileSync(streamFile, JSON.stringify({ name, subjects: [`${name}.>`], storage: 'file', num_replicas: 1 }))
    fs.writeFileSync(consumerFile, JSON.stringify({ durable_name: 'worker', ack_policy: 'explicit', deliver_policy: 'all' }))
    const added = await cli(['stream', 'add', '--config', streamFile])
    assert.equal(added.code, 0, added.stderr)
    assert.match(added.stdout, new RegExp(`Stream ${name}`))
    const info = await cli(['--json', 'stream', 'info', name])
    assert.equal(JSON.parse(info.stdout).config.name, name)
    const consumer = await cli(['consumer', 'add', name, '--config', consumerFile])
    assert.equal(consumer.code, 0, consumer.stderr)
    const cinfo = await cli(['--json', 'consumer', 'info', name, 'worker'])
    assert.equal(JSON.parse(cinfo.stdout).config.durable_name, 'worker')
    const listed = await cli(['stream', 'ls'])
    assert.match(listed.stdout, new RegExp(name))
  })

  test('kv add/put/get/ls/del as in the nats CLI', async () => {
    const bucket = unique('clikv')
    assert.equal((await cli(['kv', 'add', bucket, '--history', '3'])).code, 0)
    assert.match((await cli(['kv', 'put', bucket, 'foo', 'bar'])).stdout, /foo @ revision 1/)
    assert.equal((await cli(['kv', 'get', bucket, 'foo'])).stdout.trim(), 'bar')
    assert.equal((await cli(['kv', 'ls', bucket])).stdout.trim(), 'foo')
    assert.match((await cli(['kv', 'ls'])).stdout, new RegExp(bucket))
    assert.equal((await cli(['kv', 'del', bucket, 'foo'])).code, 0)
    const missing = await cli(['kv', 'get', bucket, 'foo'])
    assert.equal(missing.code, 1)
    assert.match(missing.stderr, /KEY_NOT_FOUND/)
  })

  test('pub refuses a subject no stream captures unless --create; then sub --all --count prints it', async () => {
    const subject = unique('clipub')
    const typo = await cli(['pub', subject, 'hello'])
    assert.equal(typo.code, 1)
    assert.match(typo.stderr, /STREAM_NOT_FOUND: no stream captures .* --create makes one/)
    assert.equal((await cli(['--json', 'stream', 'ls', '--all'])).stdout.includes(subject), false)
    const pub = await cli(['--server', server.url, 'pub', subject, 'hello', '--create'])
    assert.equal(pub.code, 0, pub.stderr)
    assert.match(pub.stdout, /Published to/)
    const sub = await cli(['sub', subject, '--all', '--count', '1'])
    assert.equal(sub.code, 0, sub.stderr)
    assert.match(sub.stdout, new RegExp(`\\[#1\\] ${subject}: hello`))
  })

  test('kv watch prints values as they change and exits on SIGINT', async () => {
    const bucket = unique('cliwatch')
    const kv = await sc.kv(bucket)
    await kv.put('k', 'v1')
    const { spawn } = require('node:child_process')
    const child = spawn(process.execPath, [path.join(__dirname, '..', 'bin', 'jetstan.js'), 'kv', 'watch', bucket],
      { env: { ...process.env, NATS_URL: server.url }, stdio: ['ignore', 'pipe', 'inherit'] })
    // One listener for the child's whole life: output that arrives while no
    // listener is attached would be lost.
    let out = ''
    const waiting = new Set()
    child.stdout.on('data', (chunk) => {
      out += chunk
      for (const wait of waiting) wait()
    })
    const printed = (text) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => { waiting.delete(check); reject(new Error(`'${text}' not printed; got: ${out}`)) }, 10000)
      const check = () => {
        if (!out.includes(text)) return
        clearTimeout(timer)
        waiting.delete(check)
        resolve()
      }
      waiting.add(check)
      check()
    })
    await printed('k @ revision 1 PUT: v1')
    await kv.put('k', 'v2')
    try {
      await printed('k @ revision 2 PUT: v2')
    } finally {
      child.kill('SIGINT')
    }
    assert.equal(await once(child, 'exit', { timeoutMs: 10000, rejectOnError: false }), 0)
  })

  test('help, version and usage: --version, help [command], per-command --help, no arguments', async () => {
    const version = await cli(['--version'])
    assert.deepEqual([version.code, version.stdout.trim()], [0, stan.version])
    const bare = await cli([])
    assert.equal(bare.code, 2)
    assert.match(bare.stderr, /Usage: jetstan/)
    const help = await cli(['help', 'stream'])
    assert.equal(help.code, 0)
    assert.match(help.stdout, /Usage: jetstan stream\|str/)
    const addHelp = await cli(['stream', 'add', '--help'])
    assert.equal(addHelp.code, 0)
    assert.match(addHelp.stdout, /Usage: jetstan stream add .*\n[\s\S]*--config <file>/)
    for (const group of ['stream', 'kv', 'consumer']) {
      const r = await cli([group])
      assert.equal(r.code, 2, group)
      assert.match(r.stderr, new RegExp(`Usage: jetstan ${group}`))
    }
  })

  test('the nats CLI aliases; stream ls hides KV streams unless --all', async () => {
    const bucket = unique('alias')
    assert.equal((await cli(['kv', 'add', bucket])).code, 0)
    const plain = JSON.parse((await cli(['--json', 'str', 'list'])).stdout)
    const all = JSON.parse((await cli(['--json', 'stream', 'ls', '--all'])).stdout)
    assert.equal(plain.includes(`KV_${bucket}`), false)
    assert.equal(all.includes(`KV_${bucket}`), true)
    assert.equal((await cli(['con', 'ls', `KV_${bucket}`])).code, 0)
  })

  test('stream rm and purge, consumer rm: refused without --force when not on a terminal', async () => {
    const name = unique('RM').replace(/-/g, '_')
    await sc.streams.add({ name, subjects: [`${name}.>`] })
    await sc.publishAsync(`${name}.a`, 'x')
    await sc.consumers.add(name, { durable_name: 'gone', ack_policy: 'explicit' })
    for (const args of [['stream', 'rm', name], ['stream', 'purge', name], ['consumer', 'rm', name, 'gone']]) {
      const refused = await cli(args)
      assert.equal(refused.code, 2, args.join(' '))
      assert.match(refused.stderr, /refused without --force/)
    }
    assert.equal((await sc.streams.info(name)).state.messages, 1)
    assert.match((await cli(['stream', 'purge', name, '--force'])).stdout, /Purged 1 messages/)
    assert.equal((await cli(['consumer', 'rm', name, 'gone', '-f'])).code, 0)
    assert.equal((await cli(['stream', 'rm', name, '--force'])).code, 0)
    await assert.rejects(sc.streams.info(name), { code: 'STREAM_NOT_FOUND' })
  })

  test('stream view/get and consumer next, for everyday debugging', async () => {
    const name = unique('VIEW').replace(/-/g, '_')
    await sc.streams.add({ name, subjects: [`${name}.>`] })
    for (const n of [1, 2, 3]) await sc.publishAsync(`${name}.e`, `event ${n}`)
    const view = await cli(['stream', 'view', name, '--since', '2'])
    assert.equal(view.code, 0, view.stderr)
    assert.deepEqual(view.stdout.trim().split('\n'), [`[#2] ${name}.e: event 2`, `[#3] ${name}.e: event 3`])
    assert.equal((await cli(['stream', 'get', name, '1'])).stdout.trim(), `[#1] ${name}.e: event 1`)
    const missing = await cli(['stream', 'get', name, '9'])
    assert.equal(missing.code, 1)
    assert.match(missing.stderr, /MESSAGE_NOT_FOUND/)
    await sc.consumers.add(name, { durable_name: 'dbg', ack_policy: 'explicit', deliver_policy: 'all' })
    const next = await cli(['--json', 'consumer', 'next', name, 'dbg', '--count', '2'])
    assert.equal(next.code, 0, next.stderr)
    assert.deepEqual(next.stdout.trim().split('\n').map((l) => JSON.parse(l).data), ['event 1', 'event 2'])
    assert.equal((await sc.consumers.info(name, 'dbg')).num_ack_pending, 0)
  })

  test('kv watch takes a glob as well as a NATS pattern', async () => {
    const bucket = unique('glob')
    const kv = await sc.kv(bucket)
    for (const key of ['foo', 'far', 'bar']) await kv.put(key, key.toUpperCase())
    const { spawn } = require('node:child_process')
    const child = spawn(process.execPath, [path.join(__dirname, '..', 'bin', 'jetstan.js'), 'kv', 'watch', bucket, 'f*'],
      { env: { ...process.env, NATS_URL: server.url }, stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    const both = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`watch printed: ${out}`)), 10000)
      child.stdout.on('data', (chunk) => {
        out += chunk
        if (out.includes('foo @') && out.includes('far @')) { clearTimeout(timer); resolve() }
      })
    })
    try {
      await both
      await kv.put('bar', 'again')
      await kv.put('fun', 'FUN')
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`watch printed: ${out}`)), 10000)
        const check = () => { if (out.includes('fun @')) { clearTimeout(timer); resolve() } }
        child.stdout.on('data', check)
        check()
      })
    } finally {
      child.kill('SIGINT')
    }
    assert.equal(await once(child, 'exit', { timeoutMs: 10000, rejectOnError: false }), 0)
    assert.equal(out.includes('bar @'), false)
  })

  test('errors exit non-zero with a code; usage errors exit 2', async () => {
    const unreadable = await cli(['stream', 'add', '--config', path.join(dir, 'nope.json')])
    assert.equal(unreadable.code, 1)
    assert.match(unreadable.stderr, /^jetstan: BAD_CONFIG: cannot read '.*nope\.json': no such file$/m)
    const missing = await cli(['stream', 'info', 'NOPE'])
    assert.equal(missing.code, 1)
    assert.match(missing.stderr, /STREAM_NOT_FOUND/)
    assert.equal((await cli(['stream', 'add'])).code, 2)
    assert.equal((await cli(['frobnicate'])).code, 2)
    const down = await cli(['stream', 'ls'], { NATS_URL: 'nats://127.0.0.1:1' })
    assert.equal(down.code, 1)
    assert.match(down.stderr, /CONN_ERR/)
  })
})
