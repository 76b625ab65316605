//! A STAN subscription on JetStream: one pull consumer, its messages packed
//! into delivery batches for JS, and the reply subjects kept here so JS acks
//! by a number instead of carrying subjects across the boundary.
//!
//! Identity decides the consumer: a plain subscription gets an ephemeral
//! consumer of its own; a durable gets one named from (cluster, client,
//! durable, channel); a queue group one named from (cluster, group, durable,
//! channel), shared by its members, who each pull from it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, ErrorCode as ApiErrorCode};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::presence::{self, Answer, Presence};
use super::streams::{consumer_name, StreamCache};
use crate::error::{ErrorCode, JetstanError};
use crate::id_map::IdMap;
use crate::options::{start_position, SubscribeOptions};
use crate::outbox::{DeliveryBatch, Event, Outbox};
use crate::session::{AckKind, Stop, SubCommand};

/// How long the server keeps a consumer nobody pulls from: an ephemeral one
/// whose client vanished, or a non-durable queue group whose members did.
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(120);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_PULL_BATCH: u32 = 1000;
/// Messages folded into one delivery batch at most before JS is woken.
const DELIVERY_BATCH: usize = 4096;
/// Bounds cleanup on unsubscribe/close so a dead server cannot stall `close()`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole of a subscription's cleanup, of which each step has its own
/// shorter bound; within the session's close bound.
const CLEANUP_BOUND: Duration = Duration::from_secs(3);
const MEMBER_PROBE_TIMEOUT: Duration = Duration::from_millis(250);
const RECOVERY_BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

fn ack_payload(kind: AckKind) -> Bytes {
    match kind {
        AckKind::Ack => Bytes::new(),
        AckKind::Nak => Bytes::from_static(b"-NAK"),
        AckKind::Term => Bytes::from_static(b"+TERM"),
    }
}

/// Delivered, not yet acked messages, by ack id: their reply subjects and
/// stream sequences. Owned by the subscription task alone.
#[derive(Default)]
struct Registry {
    next_id: u64,
    unacked: IdMap<u64, (Subject, u64)>,
}

impl Registry {
    fn register(&mut self, reply: Subject, sequence: u64) -> u64 {
        self.next_id += 1;
        self.unacked.insert(self.next_id, (reply, sequence));
        self.next_id
    }

    fn take(&mut self, ids: &[f64]) -> Vec<Subject> {
        ids.iter()
            .filter_map(|id| self.unacked.remove(&(*id as u64)))
            .map(|(reply, _)| reply)
            .collect()
    }

    fn take_all(&mut self) -> Vec<Subject> {
        self.unacked.drain().map(|(_, (reply, _))| reply).collect()
    }

    /// The oldest stream sequence delivered and not acked.
    fn floor(&self) -> Option<u64> {
        self.unacked.values().map(|(_, sequence)| *sequence).min()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Ephemeral,
    Durable { name: String },
    Queue { name: String, durable: bool },
}

impl Identity {
    pub fn of(cluster_id: &str, client_id: &str, options: &SubscribeOptions) -> Identity {
        let durable = options.durable_name.as_deref().filter(|d| !d.is_empty());
        let queue = options.queue_group.as_deref().filter(|q| !q.is_empty());
        let channel = options.subject.as_str();
        match (queue, durable) {
            (Some(group), durable) => Identity::Queue {
                name: consumer_name(
                    "Q",
                    group,
                    &[cluster_id, group, durable.unwrap_or(""), channel],
                ),
                durable: durable.is_some(),
            },
            (None, Some(durable)) => Identity::Durable {
                name: consumer_name("D", durable, &[cluster_id, client_id, durable, channel]),
            },
            (None, None) => Identity::Ephemeral,
        }
    }

    /// The name under which a durable subscription is active, for the
    /// duplicate-registration check.
    pub fn durable_name(&self) -> Option<&str> {
        match self {
            Identity::Durable { name } => Some(name),
            _ => None,
        }
    }

    /// Whether the consumer outlives this subscription when it stops this way.
    fn keeps_state(&self, stop: Stop) -> bool {
        match self {
            Identity::Ephemeral => false,
            Identity::Durable { .. } | Identity::Queue { durable: true, .. } => {
                stop != Stop::Unsubscribe
            }
            Identity::Queue { durable: false, .. } => false,
        }
    }
}

pub struct SubscriptionTask {
    pub sid: u32,
    pub cluster_id: String,
    pub identity: Identity,
    pub options: SubscribeOptions,
    pub client: Client,
    pub js: jetstream::Context,
    pub streams: Arc<StreamCache>,
    pub outbox: Arc<Outbox>,
    /// 0.3.2's `connectTimeout`, which bounds every subscription request.
    pub request_timeout: Duration,
}

/// What the subscription has bound to on the server.
struct Bound {
    stream: String,
    consumer: consumer::PullConsumer,
    membership: Option<Presence>,
}

impl SubscriptionTask {
    pub async fn run(self, mut commands: mpsc::UnboundedReceiver<SubCommand>) {
        let sid = self.sid;
        let mut registry = Registry::default();
        let binding = tokio::time::timeout(self.request_timeout, self.bind());
        tokio::pin!(binding);
        let bound = loop {
            tokio::select! {
                bound = &mut binding => match bound {
                    Ok(bound) => break bound,
                    Err(_) => {
                        self.outbox.push_event(Event::SubTimeout(sid));
                        return;
                    }
                },
                command = commands.recv() => match command {
                    // Nothing was delivered yet, so nothing to settle.
                    Some(SubCommand::Settle(..)) => {}
                    Some(SubCommand::Stop(reason)) => {
                        // Stopped before the consumer existed: nothing to clean up.
                        self.report_stop(reason);
                        return;
                    }
                    None => return,
                },
            }
        };
        let mut bound = match bound {
            Ok(bound) => bound,
            Err(err) => {
                self.outbox.push_event(Event::SubError(sid, err));
                self.outbox.push_event(Event::SubUnsubscribed(sid));
                return;
            }
        };
        let mut ready_sent = false;
        let mut last_sequence = 0u64;
        let mut attempt = 0usize;
        let reason = 'life: loop {
            let opening =
                bound
                    .consumer
                    .stream()
                    .max_messages_per_batch(
                        self.options.max_in_flight.clamp(1, MAX_PULL_BATCH) as usize
                    )
                    .heartbeat(PULL_HEARTBEAT)
                    .messages();
            let messages = match tokio::time::timeout(self.request_timeout, opening).await {
                Ok(opened) => opened.map_err(|err| err.to_string()),
                Err(_) => Err("opening the pull stream timed out".to_string()),
            };
            match messages {
                Ok(mut messages) => {
                    if !ready_sent {
                        ready_sent = true;
                        self.outbox.push_event(Event::SubReady(sid));
                    }
                    loop {
                        tokio::select! {
                            biased;
                            command = commands.recv() => {
                                let reason = match command {
                                    Some(SubCommand::Settle(ids, kind)) => {
                                        self.settle(&mut registry, &ids, kind).await;
                                        continue;
                                    }
                                    Some(SubCommand::Stop(reason)) => reason,
                                    None => Stop::ConnectionClosed,
                                };
                                // Messages already received but not yet read
                                // are registered, so cleanup hands them back
                                // instead of leaving them to ackWait.
                                let mut unread = DeliveryBatch::default();
                                while let Some(Some(more)) = messages.next().now_or_never() {
                                    self.collect(more, &mut unread, &mut last_sequence, &mut registry);
                                }
                                break 'life reason;
                            }
                            next = messages.next() => {
                                let Some(first) = next else { break };
                                let mut batch = DeliveryBatch::default();
                                let mut lost = !self.collect(first, &mut batch, &mut last_sequence, &mut registry);
                                for _ in 1..DELIVERY_BATCH {
                                    if lost {
                                        break;
                                    }
                                    match messages.next().now_or_never() {
                                        Some(Some(more)) => {
                                            lost = !self.collect(more, &mut batch, &mut last_sequence, &mut registry);
                                        }
                                        _ => break,
                                    }
                                }
                                self.outbox.push_deliveries(sid, batch);
                                if lost {
                                    break;
                                }
                                attempt = 0;
                            }
                        }
                    }
                }
                Err(err) if !ready_sent => {
                    self.outbox.push_event(Event::SubError(
                        sid,
                        JetstanError::new(ErrorCode::SubscribeFailed, err.to_string()),
                    ));
                    self.cleanup(&mut bound, &mut registry, Stop::Unsubscribe)
                        .await;
                    self.outbox.push_event(Event::SubUnsubscribed(sid));
                    return;
                }
                Err(err) => tracing::debug!(sid, error = %err, "reopening the pull stream failed"),
            }
            // The pull stream ended or lost its consumer (a server restart
            // without the consumer, a deletion): wait a little, then rebind,
            // recreating the consumer from its ack floor.
            let pause =
                tokio::time::sleep(RECOVERY_BACKOFF[attempt.min(RECOVERY_BACKOFF.len() - 1)]);
            tokio::pin!(pause);
            attempt += 1;
            loop {
                tokio::select! {
                    command = commands.recv() => match command {
                        Some(SubCommand::Settle(ids, kind)) => self.settle(&mut registry, &ids, kind).await,
                        Some(SubCommand::Stop(reason)) => break 'life reason,
                        None => break 'life Stop::ConnectionClosed,
                    },
                    _ = &mut pause => break,
                }
            }
            let rebinding = self.rebind(&bound, &mut registry, last_sequence);
            match tokio::time::timeout(self.request_timeout, rebinding).await {
                Ok(Ok(consumer)) => bound.consumer = consumer,
                Ok(Err(err)) => tracing::debug!(sid, error = %err, "rebinding the consumer failed"),
                Err(_) => tracing::debug!(sid, "rebinding the consumer timed out"),
            }
        };
        self.cleanup(&mut bound, &mut registry, reason).await;
        self.report_stop(reason);
    }

    /// Bounded, so a stop behind it is still seen while the server is gone;
    /// unacked messages come back after ackWait, so nothing is lost.
    async fn settle(&self, registry: &mut Registry, ids: &[f64], kind: AckKind) {
        let replies = registry.take(ids);
        let sent = async {
            for reply in replies {
                if self.client.publish(reply, ack_payload(kind)).await.is_err() {
                    tracing::debug!("ack not sent: connection closing");
                }
            }
        };
        if tokio::time::timeout(self.request_timeout, sent)
            .await
            .is_err()
        {
            tracing::debug!(sid = self.sid, "acks not sent in time");
        }
    }

    fn report_stop(&self, reason: Stop) {
        match reason {
            Stop::Unsubscribe => self.outbox.push_event(Event::SubUnsubscribed(self.sid)),
            Stop::Close => self.outbox.push_event(Event::SubClosed(self.sid)),
            Stop::ConnectionClosed => {}
        }
    }

    /// Adds a message to the batch. Returns false when the pull stream
    /// reported that its consumer is gone and must be rebound.
    fn collect(
        &self,
        next: Result<jetstream::Message, consumer::pull::MessagesError>,
        batch: &mut DeliveryBatch,
        last_sequence: &mut u64,
        registry: &mut Registry,
    ) -> bool {
        let message = match next {
            Ok(message) => message,
            Err(err) => {
                tracing::debug!(sid = self.sid, error = %err, "pull stream error");
                use consumer::pull::MessagesErrorKind as Kind;
                return !matches!(
                    err.kind(),
                    Kind::ConsumerDeleted | Kind::MissingHeartbeat | Kind::NoResponders
                );
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
                return true;
            }
        };
        let jetstream::Message { message, .. } = message;
        let Some(reply) = message.reply else {
            return true;
        };
        *last_sequence = (*last_sequence).max(sequence);
        let ack_id = registry.register(reply, sequence);
        batch.push(
            ack_id,
            sequence,
            timestamp_ns,
            delivered - 1,
            &message.payload,
        );
        true
    }

    async fn bind(&self) -> Result<Bound, JetstanError> {
        let stream = self
            .streams
            .stream_for(&self.js, &self.options.subject)
            .await?;
        let membership = match &self.identity {
            Identity::Queue { name, .. } => Some(
                Presence::claim(
                    &self.client,
                    presence::member_subject(&self.cluster_id, name),
                )
                .await?,
            ),
            _ => None,
        };
        let consumer = match &self.identity {
            Identity::Ephemeral => {
                self.create(&stream, nuid::next().to_string(), self.deliver_policy()?)
                    .await?
            }
            Identity::Durable { name } | Identity::Queue { name, .. } => {
                match self.existing(&stream, name).await? {
                    Some(consumer) => consumer,
                    None => match self
                        .create(&stream, name.clone(), self.deliver_policy()?)
                        .await
                    {
                        Ok(consumer) => consumer,
                        // Another member created it first, with its own start time.
                        Err(err) => self.existing(&stream, name).await?.ok_or(err)?,
                    },
                }
            }
        };
        Ok(Bound {
            stream,
            consumer,
            membership,
        })
    }

    /// The consumer again after the stream lost it: the same name, starting
    /// at the oldest message delivered and not acked, so nothing unacked is
    /// skipped (STAN's promise); with none, after the last one seen.
    async fn rebind(
        &self,
        bound: &Bound,
        registry: &mut Registry,
        last_sequence: u64,
    ) -> Result<consumer::PullConsumer, JetstanError> {
        let name = bound.consumer.cached_info().name.clone();
        if let Some(consumer) = self.existing(&bound.stream, &name).await? {
            return Ok(consumer);
        }
        let policy = match registry.floor() {
            Some(floor) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: floor,
            },
            None if last_sequence == 0 => self.deliver_policy()?,
            None => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: last_sequence + 1,
            },
        };
        let consumer = self.create(&bound.stream, name, policy).await?;
        // The old consumer's reply subjects lead nowhere; its unacked
        // messages come again with new ones.
        registry.take_all();
        Ok(consumer)
    }

    async fn existing(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<Option<consumer::PullConsumer>, JetstanError> {
        match self.js.get_consumer_from_stream(name, stream).await {
            Ok(consumer) => Ok(Some(consumer)),
            Err(err) => match err.kind() {
                stream::ConsumerErrorKind::JetStream(api)
                    if api.error_code() == ApiErrorCode::CONSUMER_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(JetstanError::new(
                    ErrorCode::SubscribeFailed,
                    format!("looking up consumer '{name}': {err}"),
                )),
            },
        }
    }

    async fn create(
        &self,
        stream: &str,
        name: String,
        deliver_policy: consumer::DeliverPolicy,
    ) -> Result<consumer::PullConsumer, JetstanError> {
        let durable = matches!(
            self.identity,
            Identity::Durable { .. } | Identity::Queue { durable: true, .. }
        );
        let config = consumer::pull::Config {
            durable_name: durable.then(|| name.clone()),
            name: Some(name),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(u64::from(self.options.ack_wait_ms.max(1000))),
            max_ack_pending: i64::from(self.options.max_in_flight.max(1)),
            filter_subject: self.options.subject.clone(),
            inactive_threshold: if durable {
                Duration::ZERO
            } else {
                INACTIVE_THRESHOLD
            },
            ..Default::default()
        };
        self.js
            .create_consumer_on_stream(config, stream)
            .await
            .map_err(|err| JetstanError::new(ErrorCode::SubscribeFailed, err.to_string()))
    }

    fn deliver_policy(&self) -> Result<consumer::DeliverPolicy, JetstanError> {
        deliver_policy(&self.options)
    }

    /// Bounded as a whole: with the server gone, an unsubscribe or close must
    /// still end (and `drain()` with it); what is not handed back returns
    /// after ackWait.
    async fn cleanup(&self, bound: &mut Bound, registry: &mut Registry, reason: Stop) {
        let steps = self.cleanup_steps(bound, registry, reason);
        if tokio::time::timeout(CLEANUP_BOUND, steps).await.is_err() {
            tracing::debug!(sid = self.sid, "subscription cleanup cut short");
        }
    }

    async fn cleanup_steps(&self, bound: &mut Bound, registry: &mut Registry, reason: Stop) {
        if let Some(membership) = bound.membership.take() {
            membership.leave().await;
        }
        if self.identity.keeps_state(reason) || matches!(self.identity, Identity::Queue { .. }) {
            self.release_unacked(registry).await;
        }
        if self.identity.keeps_state(reason) {
            return;
        }
        let name = bound.consumer.cached_info().name.clone();
        if matches!(self.identity, Identity::Queue { .. }) && self.other_members_alive(&name).await
        {
            return;
        }
        let deleted = tokio::time::timeout(
            CLEANUP_TIMEOUT,
            self.js.delete_consumer_from_stream(&name, &bound.stream),
        )
        .await;
        if !matches!(deleted, Ok(Ok(_))) {
            tracing::debug!(
                sid = self.sid,
                name,
                "consumer left to its inactivity threshold"
            );
        }
    }

    /// Hands messages this member received but never acked back to the
    /// consumer at once (as STAN redistributes a leaving member's messages)
    /// instead of after ackWait.
    async fn release_unacked(&self, registry: &mut Registry) {
        for reply in registry.take_all() {
            let _ = self.client.publish(reply, ack_payload(AckKind::Nak)).await;
        }
    }

    async fn other_members_alive(&self, name: &str) -> bool {
        let subject = presence::member_subject(&self.cluster_id, name);
        // Silence counts as alive: deleting a group under a member that is
        // only slow would lose its place.
        presence::ask(&self.client, &subject, MEMBER_PROBE_TIMEOUT).await != Answer::NobodyThere
    }
}

fn deliver_policy(options: &SubscribeOptions) -> Result<consumer::DeliverPolicy, JetstanError> {
    use consumer::DeliverPolicy;
    Ok(match options.start_position {
        start_position::NEW_ONLY => DeliverPolicy::New,
        start_position::LAST_RECEIVED => DeliverPolicy::LastPerSubject,
        start_position::FIRST => DeliverPolicy::All,
        start_position::SEQUENCE_START => match options.start_sequence {
            Some(sequence) if sequence >= 1.0 => DeliverPolicy::ByStartSequence {
                start_sequence: sequence as u64,
            },
            // STAN treats sequence 0 as "the oldest available".
            _ => DeliverPolicy::All,
        },
        start_position::TIME_DELTA_START => {
            let delta_ms = options.start_time_delta_ms.unwrap_or(0.0);
            let delta = time::Duration::nanoseconds((delta_ms * 1e6) as i64);
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::now_utc() - delta,
            }
        }
        other => {
            return Err(JetstanError::new(
                ErrorCode::BadOption,
                format!("stan: invalid start position {other}"),
            ))
        }
    })
}
