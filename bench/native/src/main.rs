//! The benchmark's workloads written directly on async-nats, as the ceiling
//! jetstan is measured against: `jetstan-bench-native <workload> <bytes> <count> <url>`.
//! Prints one JSON object like bench/worker.js does.

use std::error::Error;
use std::future::IntoFuture;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, message::PublishMessage as Publish, stream};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde_json::json;

const WINDOW: usize = 1024;
const CONSUME_WINDOW: usize = 1000;
const LATENCY_RATE: u64 = 1000;
const PACED_RATE: u64 = 5000;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, workload, bytes, count, url] = args.as_slice() else {
        return Err("usage: jetstan-bench-native <workload> <bytes> <count> <url>".into());
    };
    let bytes: usize = bytes.parse()?;
    let count: usize = count.parse()?;
    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::new(client.clone());
    let subject = format!("native-{workload}-{}", std::process::id());
    // `allow_batched` (fast ingest, nats-server >= 2.14) rides in the raw
    // config: async-nats 0.51's `stream::Config` does not model it.
    let mut config = serde_json::to_value(stream::Config {
        name: subject.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })?;
    if workload.starts_with("pubfast") {
        config["allow_batched"] = json!(true);
    }
    let created: serde_json::Value = js
        .request(format!("STREAM.CREATE.{subject}"), &config)
        .await?;
    if let Some(error) = created.get("error") {
        return Err(format!("creating the stream: {error}").into());
    }
    let payload = Bytes::from(vec![7u8; bytes]);
    let result = match workload.as_str() {
        // Every publish carries a `Nats-Msg-Id`, as jetstan's (and the nats.js
        // rows') do; `pubnoid` is the same without it: the server's ceiling
        // for per-message acks. `pubfast`/`pubfastnoid` (below) are the same
        // publishes as one fast-ingest batch: the ceilings of batching.
        "pub" | "pubnoid" => {
            let start = Instant::now();
            publish_many(&js, &subject, count, payload, workload == "pub").await?;
            json!({ "rate": count as f64 / start.elapsed().as_secs_f64() })
        }
        "pubfast" | "pubfastnoid" => {
            let start = Instant::now();
            fast_ingest(&client, &subject, count, payload, workload == "pubfast").await?;
            json!({ "rate": count as f64 / start.elapsed().as_secs_f64() })
        }
        "syncpub" => {
            let start = Instant::now();
            for _ in 0..count {
                js.send_publish(subject.clone(), message(&payload, true))
                    .await?
                    .await?;
            }
            json!({ "rate": count as f64 / start.elapsed().as_secs_f64() })
        }
        "consume" | "consume100" => {
            let window = if workload == "consume100" {
                100
            } else {
                CONSUME_WINDOW
            };
            publish_many(&js, &subject, count, payload, true).await?;
            let start = Instant::now();
            let consumer = js
                .create_consumer_on_stream(
                    consumer::pull::Config {
                        durable_name: Some("ceiling".into()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        max_ack_pending: window as i64,
                        ..Default::default()
                    },
                    subject.as_str(),
                )
                .await?;
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(window)
                .messages()
                .await?;
            let mut received = 0;
            while let Some(message) = messages.next().await {
                message?.ack().await?;
                received += 1;
                if received == count {
                    break;
                }
            }
            json!({ "rate": count as f64 / start.elapsed().as_secs_f64() })
        }
        "latency" => latency(&client, &js, &subject, count, bytes).await?,
        "paced" => paced(&js, &subject, count, payload).await?,
        other => return Err(format!("unknown workload {other}").into()),
    };
    println!("{result}");
    Ok(())
}

fn message(payload: &Bytes, with_id: bool) -> Publish {
    let publish = Publish::build().payload(payload.clone());
    if with_id {
        publish.message_id(nuid::next().as_str())
    } else {
        publish
    }
}

async fn publish_many(
    js: &jetstream::Context,
    subject: &str,
    count: usize,
    payload: Bytes,
    with_id: bool,
) -> Result<()> {
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= WINDOW {
            if let Some(ack) = in_flight.next().await {
                ack?;
            }
        }
        let ack = js
            .send_publish(subject.to_string(), message(&payload, with_id))
            .await?;
        in_flight.push(ack.into_future());
    }
    while let Some(ack) = in_flight.next().await {
        ack?;
    }
    Ok(())
}

/// One fast-ingest batch (ADR-50, `allow_batched`): the reply subject
/// `<inbox>.<flow>.fail.<batch seq>.<op>.$FI` carries the batch; the server
/// acks every `flow` messages and the end-of-batch marker (op 3) gets the
/// batch's final ack. At most `WINDOW` messages are unacked, as in `pub`.
async fn fast_ingest(
    client: &async_nats::Client,
    subject: &str,
    count: usize,
    payload: Bytes,
    with_id: bool,
) -> Result<()> {
    let flow = WINDOW / 4;
    let inbox = client.new_inbox();
    let mut acks = client.subscribe(format!("{inbox}.>")).await?;
    let reply = |seq: usize, op: u8| format!("{inbox}.{flow}.fail.{seq}.{op}.$FI");
    let mut acked = 0;
    let read = |frame: async_nats::Message, acked: &mut usize| -> Result<bool> {
        let frame: serde_json::Value = serde_json::from_slice(&frame.payload)?;
        if let Some(error) = frame.get("error") {
            return Err(format!("batch failed: {error}").into());
        }
        if frame.get("batch").is_some() {
            return Ok(true);
        }
        if let Some(seq) = frame.get("seq").and_then(|seq| seq.as_u64()) {
            *acked = (*acked).max(seq as usize);
        }
        Ok(false)
    };
    for seq in 1..=count {
        while seq > acked + WINDOW {
            let frame = acks.next().await.ok_or("ack inbox closed")?;
            read(frame, &mut acked)?;
        }
        let op = if seq == 1 { 0 } else { 1 };
        if with_id {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", nuid::next().as_str());
            client
                .publish_with_reply_and_headers(
                    subject.to_string(),
                    reply(seq, op),
                    headers,
                    payload.clone(),
                )
                .await?;
        } else {
            client
                .publish_with_reply(subject.to_string(), reply(seq, op), payload.clone())
                .await?;
        }
    }
    client
        .publish_with_reply(subject.to_string(), reply(count + 1, 3), Bytes::new())
        .await?;
    loop {
        let frame = acks.next().await.ok_or("ack inbox closed")?;
        if read(frame, &mut acked)? {
            return Ok(());
        }
    }
}

/// User + system CPU seconds of this process so far (/proc/self/stat, in
/// clock ticks of 1/100 s: enough over a run of seconds).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// What is published on `subject` from now on, through an ephemeral pull consumer.
async fn new_messages(js: &jetstream::Context, subject: &str) -> Result<consumer::pull::Stream> {
    let consumer = js
        .create_consumer_on_stream(
            consumer::pull::Config {
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            },
            subject,
        )
        .await?;
    Ok(consumer.messages().await?)
}

/// 5,000 msgs/s published and received in one process, as jetstan's paced workload.
async fn paced(
    js: &jetstream::Context,
    subject: &str,
    count: usize,
    payload: Bytes,
) -> Result<serde_json::Value> {
    let mut messages = new_messages(js, subject).await?;
    let receiver = tokio::spawn(async move {
        let mut received = 0;
        while let Some(Ok(message)) = messages.next().await {
            let _ = message.ack().await;
            received += 1;
            if received == count {
                break;
            }
        }
    });
    let cpu = cpu_seconds();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < count {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * PACED_RATE as f64) as usize + 1).min(count);
        while sent < due {
            let ack = js
                .send_publish(subject.to_string(), message(&payload, true))
                .await?;
            tokio::spawn(ack.into_future());
            sent += 1;
        }
    }
    receiver.await?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    Ok(json!({ "rate": count as f64 / seconds, "cpu_s_per_100k": cpu * 100_000.0 / count as f64 }))
}

fn now_micros() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e6)
        .unwrap_or(0.0)
}

async fn latency(
    client: &async_nats::Client,
    js: &jetstream::Context,
    subject: &str,
    count: usize,
    bytes: usize,
) -> Result<serde_json::Value> {
    let mut messages = new_messages(js, subject).await?;
    let receiver = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(count);
        while let Some(Ok(message)) = messages.next().await {
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&message.payload[..8]);
            samples.push(now_micros() - f64::from_le_bytes(sent));
            let _ = message.ack().await;
            if samples.len() == count {
                break;
            }
        }
        samples
    });
    let interval = Duration::from_nanos(1_000_000_000 / LATENCY_RATE);
    let mut ticker = tokio::time::interval(interval);
    for _ in 0..count {
        ticker.tick().await;
        let mut body = vec![0u8; bytes.max(8)];
        body[..8].copy_from_slice(&now_micros().to_le_bytes());
        let ack = js
            .send_publish(subject.to_string(), message(&body.into(), true))
            .await?;
        tokio::spawn(ack.into_future());
    }
    let mut samples = receiver.await?;
    client.flush().await?;
    samples.sort_by(|a, b| a.total_cmp(b));
    let pick = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    Ok(json!({ "p50_us": pick(0.5), "p99_us": pick(0.99), "p999_us": pick(0.999) }))
}
