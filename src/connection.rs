//! The napi class behind a `Stan` object. It converts arguments and forwards
//! to the backend's session; the logic lives in `jetstream/` and `stan/`.

use std::sync::Arc;

use napi::bindgen_prelude::{Function, Unknown};
use napi_derive::napi;

use crate::error::{ErrorCode, JetstanError, Result};
use crate::jetstream::{manage, JetStream};
use crate::kv::{self, KeyValue, KvOptions};
use crate::options::{ConnectOptions, SubscribeOptions};
use crate::outbox::{Outbox, Poll};
use crate::session::{AckKind, Session};
use crate::stan::Stan;

fn start(options: ConnectOptions, outbox: Arc<Outbox>) -> Result<Session> {
    match options.backend.as_deref().unwrap_or("jetstream") {
        "jetstream" => Session::start::<JetStream>(options, outbox),
        "stan" => Session::start::<Stan>(options, outbox),
        other => Err(JetstanError::new(
            ErrorCode::BadOption,
            format!("stan: unknown backend '{other}' (expected jetstream or stan)"),
        )),
    }
}

#[napi]
pub struct Connection {
    session: Session,
}

#[napi]
impl Connection {
    /// Starts connecting. `wake` is called (with no arguments) whenever
    /// `poll()` has something new; it keeps the event loop alive until the
    /// `close` event has been polled.
    #[napi(constructor, catch_unwind)]
    pub fn new(
        options: ConnectOptions,
        wake: Function<(), Unknown<'static>>,
    ) -> napi::Result<Self, ErrorCode> {
        let wake = wake
            .build_threadsafe_function()
            .callee_handled::<false>()
            .build()
            .map_err(|err| napi::Error::new(ErrorCode::BadOption, err.reason.clone()))?;
        let outbox = Arc::new(Outbox::new(wake));
        let session = start(options, outbox)?;
        Ok(Connection { session })
    }

    /// Checks a channel once; packed publishes then name it by the returned
    /// index. Returns `[index, bytes a publish on it adds to its payload]`.
    #[napi(catch_unwind)]
    pub fn register_channel(&self, channel: String) -> napi::Result<Vec<u32>, ErrorCode> {
        let (index, envelope) = self.session.register_channel(channel)?;
        Ok(vec![index, envelope as u32])
    }

    #[napi(catch_unwind)]
    pub fn forget_channels(&self) {
        self.session.forget_channels()
    }

    /// A tick's publishes without headers in one call: `data` holds each
    /// one's guid (22 characters) and payload back to back, `meta` four
    /// numbers per publish (channel index, token, guid offset, payload
    /// length). Outcomes arrive through `poll()` under each token. With
    /// `now`, they are written before the call returns rather than on the
    /// event loop's next turn.
    #[napi(catch_unwind)]
    pub fn publish_packed(
        &self,
        data: &[u8],
        meta: &[u32],
        now: bool,
    ) -> napi::Result<(), ErrorCode> {
        self.session.publish_packed(data, meta)?;
        if now {
            crate::driver::drive();
        }
        Ok(())
    }

    /// The server's max_payload (0 before the first connect).
    #[napi(catch_unwind)]
    pub fn max_payload(&self) -> u32 {
        self.session.max_payload().min(u32::MAX as usize) as u32
    }

    /// `publish` with application headers (JetStream): `headers` is
    /// `[name, value, name, value, …]`, checked by JS.
    #[napi(catch_unwind)]
    pub fn publish_with_headers(
        &self,
        subject: String,
        data: &[u8],
        token: u32,
        guid: String,
        headers: Vec<String>,
    ) -> napi::Result<(), ErrorCode> {
        let mut pairs = Vec::with_capacity(headers.len() / 2);
        let mut flat = headers.into_iter();
        while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
            pairs.push((name, value));
        }
        Ok(self
            .session
            .publish_with_headers(subject, data, token, guid, pairs)?)
    }

    /// Sends the publishes made since the last flush to the session task.
    /// JS calls it once per tick that published.
    #[napi(catch_unwind)]
    pub fn flush(&self) {
        self.session.flush()
    }

    #[napi(catch_unwind)]
    pub fn subscribe(&self, sid: u32, options: SubscribeOptions) -> napi::Result<(), ErrorCode> {
        Ok(self.session.subscribe(sid, options)?)
    }

    /// `close: true` keeps durable state (`Subscription.close()`), `false`
    /// removes it (`Subscription.unsubscribe()`).
    #[napi(catch_unwind)]
    pub fn unsubscribe(&self, sid: u32, close: bool) -> napi::Result<(), ErrorCode> {
        Ok(self.session.unsubscribe(sid, close)?)
    }

    /// Acks delivered messages by the ack ids of their delivery batch.
    #[napi(catch_unwind)]
    pub fn ack(&self, sid: u32, ids: &[f64]) {
        self.settle(sid, ids, AckKind::Ack);
    }

    /// Settles messages that can never be processed: the server will not
    /// deliver them again.
    #[napi(catch_unwind)]
    pub fn terminate(&self, sid: u32, ids: &[f64]) {
        self.settle(sid, ids, AckKind::Term);
    }

    /// Restarts the ack clocks of messages still being worked on (JetStream's
    /// "in progress"); STAN has no such thing and ignores it.
    #[napi(catch_unwind)]
    pub fn progress(&self, sid: u32, ids: &[f64]) {
        self.settle(sid, ids, AckKind::Progress);
    }

    fn settle(&self, sid: u32, ids: &[f64], kind: AckKind) {
        self.session.settle(sid, ids, kind);
    }

    /// The stan backend's ConnectResponse subjects, once connected.
    #[napi(catch_unwind)]
    pub fn protocol_subjects(&self) -> Option<crate::session::ProtocolSubjects> {
        self.session.protocol_subjects()
    }

    /// `[messages, payload bytes, messages acked in fast-ingest batches]`
    /// published so far.
    #[napi(catch_unwind)]
    pub fn published(&self) -> Vec<f64> {
        let (messages, bytes, batched) = self.session.published();
        vec![messages as f64, bytes as f64, batched as f64]
    }

    /// Everything that became ready since the last poll, in one crossing.
    #[napi(catch_unwind)]
    pub fn poll(&self) -> Poll {
        self.session.poll()
    }

    #[napi(catch_unwind)]
    pub fn close(&self) {
        self.session.close()
    }

    /// Creates (or with `update`, updates) a stream from its JSON config;
    /// resolves with the stream info as JSON.
    #[napi]
    pub async fn stream_add(&self, config: String, update: bool) -> napi::Result<String> {
        let js = self.jetstream()?;
        Ok(manage::stream_add(&js, &config, update).await?.to_string())
    }

    #[napi]
    pub async fn stream_info(&self, name: String) -> napi::Result<String> {
        let js = self.jetstream()?;
        Ok(manage::stream_info(&js, &name).await?.to_string())
    }

    #[napi]
    pub async fn stream_delete(&self, name: String) -> napi::Result<()> {
        let js = self.jetstream()?;
        Ok(manage::stream_delete(&js, &name).await?)
    }

    /// `{ success, purged }` as JSON.
    #[napi]
    pub async fn stream_purge(&self, name: String) -> napi::Result<String> {
        let js = self.jetstream()?;
        Ok(manage::stream_purge(&js, &name).await?.to_string())
    }

    /// One stored message by sequence, as the server's JSON (base64 data).
    #[napi]
    pub async fn stream_get(&self, name: String, sequence: f64) -> napi::Result<String> {
        let js = self.jetstream()?;
        Ok(manage::stream_get(&js, &name, whole_sequence(sequence)?)
            .await?
            .to_string())
    }

    #[napi]
    pub async fn stream_delete_message(&self, name: String, sequence: f64) -> napi::Result<()> {
        let js = self.jetstream()?;
        Ok(manage::stream_delete_message(&js, &name, whole_sequence(sequence)?).await?)
    }

    /// See `manage::consumer_settle`; `{ acked, released }` as JSON.
    #[napi]
    pub async fn consumer_settle(
        &self,
        stream: String,
        name: String,
        through: f64,
        unacked: Vec<f64>,
    ) -> napi::Result<String> {
        let js = self.jetstream()?;
        let through = whole_sequence(through)?;
        let unacked = unacked
            .into_iter()
            .map(whole_sequence)
            .collect::<Result<std::collections::HashSet<u64>>>()?;
        let wait = std::time::Duration::from_secs(5);
        Ok(
            manage::consumer_settle(&js, &stream, &name, through, &unacked, wait)
                .await?
                .to_string(),
        )
    }

    /// The next message of a pull consumer, acked; `null` after `wait_ms` without one.
    #[napi]
    pub async fn consumer_next(
        &self,
        stream: String,
        name: String,
        wait_ms: u32,
    ) -> napi::Result<Option<String>> {
        let js = self.jetstream()?;
        let wait = std::time::Duration::from_millis(u64::from(wait_ms.max(1)));
        Ok(manage::consumer_next(&js, &stream, &name, wait)
            .await?
            .map(|value| value.to_string()))
    }

    /// Infos of every stream, as a JSON array.
    #[napi]
    pub async fn stream_list(&self) -> napi::Result<String> {
        let js = self.jetstream()?;
        Ok(serde_json::Value::from(manage::stream_list(&js).await?).to_string())
    }

    #[napi]
    pub async fn consumer_add(&self, stream: String, config: String) -> napi::Result<String> {
        let js = self.jetstream()?;
        Ok(manage::consumer_add(&js, &stream, &config)
            .await?
            .to_string())
    }

    #[napi]
    pub async fn consumer_info(&self, stream: String, name: String) -> napi::Result<String> {
        let js = self.jetstream()?;
        Ok(manage::consumer_info(&js, &stream, &name)
            .await?
            .to_string())
    }

    #[napi]
    pub async fn consumer_delete(&self, stream: String, name: String) -> napi::Result<()> {
        let js = self.jetstream()?;
        Ok(manage::consumer_delete(&js, &stream, &name).await?)
    }

    #[napi]
    pub async fn consumer_list(&self, stream: String) -> napi::Result<String> {
        let js = self.jetstream()?;
        Ok(serde_json::Value::from(manage::consumer_list(&js, &stream).await?).to_string())
    }

    /// Opens a KV bucket, creating it with `options` when `create` is set.
    #[napi]
    pub async fn key_value(
        &self,
        bucket: String,
        options: Option<KvOptions>,
        create: bool,
    ) -> napi::Result<KeyValue> {
        let js = self.jetstream()?;
        Ok(kv::open(&js, bucket, options, create).await?)
    }

    /// Streams, consumers and KV exist only on JetStream.
    fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        self.session.jetstream()
    }
}

fn whole_sequence(sequence: f64) -> Result<u64> {
    if sequence >= 1.0 && sequence.fract() == 0.0 && sequence <= 9_007_199_254_740_991.0 {
        Ok(sequence as u64)
    } else {
        Err(JetstanError::new(
            ErrorCode::BadOption,
            "a sequence is a whole number ≥ 1",
        ))
    }
}

/// A NUID, whose random prefix JS's publish guids take.
#[napi]
pub fn nuid() -> String {
    nuid::next().to_string()
}

/// Where the jetstream backend keeps a channel, and which consumer it binds
/// for a durable (or durable queue group) of a client: what a migration
/// from STAN must write to.
#[napi(object)]
pub struct JetStreamNames {
    pub stream: String,
    pub consumer: Option<String>,
}

#[napi]
pub fn jetstream_names(
    cluster_id: String,
    client_id: String,
    channel: String,
    durable_name: Option<String>,
    queue_group: Option<String>,
) -> JetStreamNames {
    let options = SubscribeOptions {
        subject: channel.clone(),
        durable_name,
        queue_group,
        ..Default::default()
    };
    let consumer = match crate::jetstream::Identity::of(&cluster_id, &client_id, &options) {
        crate::jetstream::Identity::Ephemeral => None,
        crate::jetstream::Identity::Durable { name } => Some(name),
        crate::jetstream::Identity::Queue { name, .. } => Some(name),
    };
    JetStreamNames {
        stream: crate::jetstream::streams::stream_name(&cluster_id, &channel),
        consumer,
    }
}
