//! A STAN subscription on JetStream: one pull consumer, its messages packed
//! into delivery batches for JS, and the reply subjects kept here so JS acks
//! by a number instead of carrying subjects across the boundary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::Subject;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::streams::StreamCache;
use crate::error::{ErrorCode, JetstanError};
use crate::options::{start_position, SubscribeOptions};
use crate::outbox::{DeliveryBatch, Event, Outbox};

/// How long the server keeps an ephemeral consumer whose client vanished
/// without unsubscribing.
const EPHEMERAL_INACTIVE_THRESHOLD: Duration = Duration::from_secs(120);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_PULL_BATCH: u32 = 1000;
/// Messages folded into one delivery batch at most before JS is woken.
const DELIVERY_BATCH: usize = 4096;
/// Bounds the consumer delete on unsubscribe/close so a dead server cannot
/// stall `close()`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How a subscription ends, which decides what happens to its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Unsubscribe,
    Close,
    ConnectionClosed,
}

/// Reply subjects of delivered, not yet acked messages, by ack id.
#[derive(Default)]
pub struct AckRegistry {
    next_id: u64,
    replies: HashMap<u64, Subject>,
}

impl AckRegistry {
    fn register(&mut self, reply: Subject) -> u64 {
        self.next_id += 1;
        self.replies.insert(self.next_id, reply);
        self.next_id
    }

    pub fn take(&mut self, ids: &[f64], into: &mut Vec<Subject>) {
        for id in ids {
            if let Some(reply) = self.replies.remove(&(*id as u64)) {
                into.push(reply);
            }
        }
    }
}

pub struct SubscriptionTask {
    pub sid: u32,
    pub options: SubscribeOptions,
    pub js: jetstream::Context,
    pub streams: Arc<StreamCache>,
    pub outbox: Arc<Outbox>,
    pub registry: Arc<Mutex<AckRegistry>>,
}

impl SubscriptionTask {
    pub async fn run(self, mut stop: oneshot::Receiver<Stop>) {
        let sid = self.sid;
        let setup = tokio::select! {
            setup = self.create_consumer() => setup,
            reason = &mut stop => {
                // Stopped before the consumer existed: nothing to clean up.
                self.report_stop(reason.unwrap_or(Stop::ConnectionClosed));
                return;
            }
        };
        let (stream_name, consumer) = match setup {
            Ok(created) => created,
            Err(err) => {
                self.outbox.push_event(Event::SubError(sid, err));
                self.outbox.push_event(Event::SubUnsubscribed(sid));
                return;
            }
        };
        let consumer_name = consumer.cached_info().name.clone();
        let batch = self.options.max_in_flight.clamp(1, MAX_PULL_BATCH) as usize;
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(err) => {
                self.outbox.push_event(Event::SubError(
                    sid,
                    JetstanError::new(ErrorCode::SubscribeFailed, err.to_string()),
                ));
                self.delete_consumer(&stream_name, &consumer_name).await;
                self.outbox.push_event(Event::SubUnsubscribed(sid));
                return;
            }
        };
        self.outbox.push_event(Event::SubReady(sid));

        let reason = loop {
            tokio::select! {
                biased;
                reason = &mut stop => break reason.unwrap_or(Stop::ConnectionClosed),
                next = messages.next() => {
                    let Some(first) = next else { break Stop::ConnectionClosed };
                    let mut batch = DeliveryBatch::default();
                    self.collect(first, &mut batch);
                    for _ in 1..DELIVERY_BATCH {
                        match messages.next().now_or_never() {
                            Some(Some(more)) => self.collect(more, &mut batch),
                            _ => break,
                        }
                    }
                    self.outbox.push_deliveries(sid, batch);
                }
            }
        };
        drop(messages);
        // A durable outlives close(); every consumer of this issue is
        // ephemeral, so any stop removes it rather than waiting for the
        // inactivity threshold.
        self.delete_consumer(&stream_name, &consumer_name).await;
        self.report_stop(reason);
    }

    fn report_stop(&self, reason: Stop) {
        match reason {
            Stop::Unsubscribe => self.outbox.push_event(Event::SubUnsubscribed(self.sid)),
            Stop::Close => self.outbox.push_event(Event::SubClosed(self.sid)),
            Stop::ConnectionClosed => {}
        }
    }

    fn collect(
        &self,
        next: Result<jetstream::Message, consumer::pull::MessagesError>,
        batch: &mut DeliveryBatch,
    ) {
        let message = match next {
            Ok(message) => message,
            Err(err) => {
                // Missed heartbeats and pull errors are recovered by the pull
                // stream itself; they are worth a trace, not an app error.
                tracing::debug!(sid = self.sid, error = %err, "pull stream error");
                return;
            }
        };
        let (sequence, delivered, timestamp_ns) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                info.delivered.max(1) as u64,
                info.published.unix_timestamp_nanos(),
            ),
            Err(err) => {
                tracing::debug!(sid = self.sid, error = %err, "message without JetStream metadata");
                return;
            }
        };
        let jetstream::Message { message, .. } = message;
        let Some(reply) = message.reply else { return };
        let ack_id = self.registry.lock().register(reply);
        batch.push(
            ack_id,
            sequence,
            timestamp_ns,
            delivered - 1,
            &message.payload,
        );
    }

    async fn create_consumer(&self) -> Result<(String, consumer::PullConsumer), JetstanError> {
        let channel = &self.options.subject;
        let stream_name = self.streams.stream_for(&self.js, channel).await?;
        let config = consumer::pull::Config {
            name: Some(nuid::next().to_string()),
            deliver_policy: deliver_policy(&self.options),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(u64::from(self.options.ack_wait_ms.max(1000))),
            max_ack_pending: i64::from(self.options.max_in_flight.max(1)),
            filter_subject: channel.clone(),
            inactive_threshold: EPHEMERAL_INACTIVE_THRESHOLD,
            ..Default::default()
        };
        let consumer = self
            .js
            .create_consumer_on_stream(config, &stream_name)
            .await
            .map_err(|err| JetstanError::new(ErrorCode::SubscribeFailed, err.to_string()))?;
        Ok((stream_name, consumer))
    }

    async fn delete_consumer(&self, stream_name: &str, consumer_name: &str) {
        let deleted = tokio::time::timeout(
            CLEANUP_TIMEOUT,
            self.js
                .delete_consumer_from_stream(consumer_name, stream_name),
        )
        .await;
        if !matches!(deleted, Ok(Ok(_))) {
            tracing::debug!(
                sid = self.sid,
                consumer_name,
                "consumer left to its inactivity threshold"
            );
        }
    }
}

fn deliver_policy(options: &SubscribeOptions) -> consumer::DeliverPolicy {
    match options.start_position {
        start_position::FIRST => consumer::DeliverPolicy::All,
        _ => consumer::DeliverPolicy::New,
    }
}
