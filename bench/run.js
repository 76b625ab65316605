'use strict'

// `npm run bench [-- --quick]`: jetstan against nats.js v3 (defaults, and with
// noAsyncTraces) and against the same workloads written on async-nats (the
// native ceiling), on one nats-server, interleaved over several rounds. Prints
// one JSON line per figure, then a table, and writes the table to
// bench/RESULTS.md (not in --quick mode, which only proves the bench runs).

const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ensureAll, run, ROOT } = require('../scripts/ensure')

const quick = process.argv.includes('--quick')
const ROUNDS = quick ? 1 : 3
const NATIVE_BIN = path.join(ROOT, 'target', 'release', 'jetstan-bench-native')
const JS_CLIENTS = ['jetstan', 'natsjs', 'natsjs-fast']
const ALL_CLIENTS = [...JS_CLIENTS, 'native']

// workload, payload bytes, message count (full / quick), clients, rounds, figures [key, unit, better],
// and optionally { label, borrow: { client: workload } }: a row that shows another workload's figure
// for the clients it does not run (same payload), so a ceiling or a jetstan-only mode sits beside them.
const PLAN = [
  ['pub', 128, [100000, 2000], ALL_CLIENTS, ROUNDS, [['rate', 'msgs/s', 'higher'], ['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']]],
  ['pubnoid', 128, [100000, 2000], ['native'], ROUNDS, [['rate', 'msgs/s', 'higher']],
    { label: 'pub without Nats-Msg-Id, native only (jetstan: its pub)', borrow: { jetstan: 'pub' } }],
  ['pubfast', 128, [100000, 2000], ['native'], ROUNDS, [['rate', 'msgs/s', 'higher']],
    { label: 'pub as one fast-ingest batch, with Nats-Msg-Id, native only (jetstan: its pub)', borrow: { jetstan: 'pub' } }],
  ['pubfastnoid', 128, [100000, 2000], ['native'], ROUNDS, [['rate', 'msgs/s', 'higher']],
    { label: 'pub as one fast-ingest batch, no header, native only (jetstan: its pub)', borrow: { jetstan: 'pub' } }],
  ['pub', 4096, [50000, 1000], ALL_CLIENTS, ROUNDS, [['rate', 'msgs/s', 'higher'], ['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']]],
  ['syncpub', 128, [5000, 200], ALL_CLIENTS, ROUNDS, [['rate', 'msgs/s', 'higher']]],
  ['consume', 128, [100000, 2000], ALL_CLIENTS, ROUNDS, [['rate', 'msgs/s', 'higher'], ['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']]],
  ['consume100', 128, [100000, 2000], ALL_CLIENTS, ROUNDS, [['rate', 'msgs/s', 'higher'], ['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']],
    { label: 'consume, maxInFlight 100' }],
  ['consumeauto', 128, [100000, 2000], ['jetstan'], ROUNDS, [['rate', 'msgs/s', 'higher'], ['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']],
    { label: 'consume, jetstan auto-ack (others: their consume)', borrow: { natsjs: 'consume', 'natsjs-fast': 'consume', native: 'consume' } }],
  ['latency', 128, [5000, 200], ALL_CLIENTS, ROUNDS, [['p50_us', 'µs', 'lower'], ['p99_us', 'µs', 'lower'], ['p999_us', 'µs', 'lower']]],
  ['paced', 128, [20000, 500], ALL_CLIENTS, ROUNDS, [['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']],
    { label: 'pub + consume at 5,000 msgs/s, one process' }],
  ['rss', 128, [1000000, 5000], ['jetstan', 'natsjs-fast'], 1, [['rss_before_mb', 'MiB', 'lower'], ['rss_after_mb', 'MiB', 'lower'], ['rss_growth_pct', '%', 'lower']]],
  ['subs', 0, [1000, 20], ['jetstan', 'natsjs-fast'], 1, [['create_ms', 'ms', 'lower'], ['correct', 'all delivered (1 = yes)', 'higher']]]
]

// The stan backend against the client it replaces, node-nats-streaming 0.3.2,
// on the STAN test double (a JS process of the bench's own, so it bounds the
// rates of both alike; the CPU figures are the clients' alone).
const STAN_CLIENTS = ['jetstan-stan', 'original']
const STAN_PLAN = [
  ['pub', 128, [20000, 500], STAN_CLIENTS, ROUNDS, [['rate', 'msgs/s', 'higher'], ['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']]],
  ['consume', 128, [20000, 500], STAN_CLIENTS, ROUNDS, [['rate', 'msgs/s', 'higher'], ['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']]],
  ['paced', 128, [10000, 300], STAN_CLIENTS, ROUNDS, [['cpu_s_per_100k', 'cpu s/100k msgs', 'lower']],
    { label: 'pub + consume at 5,000 msgs/s, one process' }]
]

function runWorker (client, workload, bytes, count, url) {
  const [cmd, args] = client === 'native'
    ? [NATIVE_BIN, [workload, String(bytes), String(count), url]]
    : [process.execPath, ['--expose-gc', path.join(__dirname, 'worker.js'), client, workload, String(bytes), String(count), url]]
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk) => { out += chunk })
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`${client} ${workload} exited with ${code}`))
      try { resolve(JSON.parse(out.trim().split('\n').pop())) } catch (err) { reject(err) }
    })
  })
}

function median (values) {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

function fmt (n) {
  if (n === undefined) return '–'
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString('en-US')
  return Number(n.toPrecision(3)).toString()
}

function machine (natsServerVersion) {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU'
  return `${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, ` +
    `Node ${process.version}, ${natsServerVersion}`
}

async function main () {
  ensureAll({ natsServer: !process.env.NATS_URL })
  run('cargo', ['build', '--release', '--quiet', '--manifest-path', 'bench/native/Cargo.toml', '--target-dir', 'target'])
  let server = null
  let url = process.env.NATS_URL
  let serverVersion = 'nats-server at NATS_URL'
  if (url === undefined) {
    const fixture = require('../testing/nats-server')
    server = await fixture.startServer()
    url = server.url
    serverVersion = spawnSync(fixture.findNatsServer(), ['--version'], { encoding: 'utf8' }).stdout.trim()
  }
  const results = new Map()
  const runPlan = async (plan) => {
    const maxRounds = Math.max(...plan.map((p) => p[4]))
    for (let round = 0; round < maxRounds; round++) {
      for (const [workload, bytes, counts, clients, rounds] of plan) {
        if (round >= rounds) continue
        const count = counts[quick ? 1 : 0]
        for (const client of clients) {
          const result = await runWorker(client, workload, bytes, count, url)
          const key = `${workload}|${bytes}|${client}`
          if (!results.has(key)) results.set(key, [])
          results.get(key).push(result)
        }
      }
    }
  }
  try {
    await runPlan(PLAN)
    const { StanDouble } = require('../testing/stan-double/server')
    const double = await new StanDouble({ url, clusterID: 'jetstan-bench-double' }).start()
    try {
      await runPlan(STAN_PLAN)
    } finally {
      await double.stop()
    }
  } finally {
    if (server !== null) await server.stop()
  }

  const rowsOf = (plan) => {
    const rows = []
    for (const [workload, bytes, counts, clients, , figures, extra = {}] of plan) {
      for (const [figure, unit, better] of figures) {
        const row = { workload, label: extra.label ?? workload, bytes, figure, unit, better, count: counts[quick ? 1 : 0], values: {} }
        for (const [client, other] of Object.entries(extra.borrow ?? {})) {
          const values = (results.get(`${other}|${bytes}|${client}`) ?? []).map((r) => r[figure]).filter((v) => v !== undefined)
          if (values.length > 0) row.values[client] = median(values)
        }
        for (const client of clients) {
          const values = (results.get(`${workload}|${bytes}|${client}`) ?? []).map((r) => r[figure]).filter((v) => v !== undefined)
          if (values.length === 0) continue
          const value = median(values)
          row.values[client] = value
          console.log(JSON.stringify({
            client, workload, payload: bytes, figure, value, unit, min: Math.min(...values), max: Math.max(...values), rounds: values.length
          }))
        }
        rows.push(row)
      }
    }
    return rows
  }
  const rows = rowsOf(PLAN)
  const stanRows = rowsOf(STAN_PLAN)

  const ratio = (a, b) => (a === undefined || b === undefined || b === 0) ? '–' : `${(a / b).toFixed(2)}×`
  const lines = [
    '| workload | payload | figure | jetstan | nats.js | nats.js noAsyncTraces | async-nats (native) | jetstan / nats.js | jetstan / native |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |'
  ]
  for (const r of rows) {
    const v = r.values
    lines.push(`| ${r.label} (${fmt(r.count)} msgs) | ${r.bytes ? r.bytes + ' B' : '–'} | ${r.figure} (${r.unit}, ${r.better} is better) | ` +
      `${fmt(v.jetstan)} | ${fmt(v.natsjs)} | ${fmt(v['natsjs-fast'])} | ${fmt(v.native)} | ` +
      `${ratio(v.jetstan, v.natsjs ?? v['natsjs-fast'])} | ${ratio(v.jetstan, v.native)} |`)
  }
  const stanLines = [
    '| workload | payload | figure | jetstan, stan backend | node-nats-streaming 0.3.2 | jetstan / node-nats-streaming |',
    '| --- | --- | --- | --- | --- | --- |'
  ]
  for (const r of stanRows) {
    const v = r.values
    stanLines.push(`| ${r.label} (${fmt(r.count)} msgs) | ${r.bytes} B | ${r.figure} (${r.unit}, ${r.better} is better) | ` +
      `${fmt(v['jetstan-stan'])} | ${fmt(v.original)} | ${ratio(v['jetstan-stan'], v.original)} |`)
  }
  const table = lines.join('\n') + '\n\nOn the STAN test double (`testing/stan-double`), the `stan` backend against the client it replaces:\n\n' +
    stanLines.join('\n')
  console.log('\n' + table)
  if (!quick) {
    const doc = `# Benchmark results\n\nMeasured ${new Date().toISOString().slice(0, 10)} by \`npm run bench\` on ${machine(serverVersion)}.\n` +
      `Medians of ${ROUNDS} interleaved rounds (rss and subs: one round); min–max per figure are in the JSON lines the bench prints.\n\n` +
      `${table}\n\nWhat the figures mean against the targets, with profiles: bench/ANALYSIS.md.\n`
    fs.writeFileSync(path.join(__dirname, 'RESULTS.md'), doc)
    console.log('\nwrote bench/RESULTS.md')
  }
}

main().catch((err) => {
  console.error(`bench failed: ${err.message}`)
  process.exitCode = 1
})
