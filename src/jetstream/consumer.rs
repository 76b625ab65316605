//! A STAN subscription on JetStream: one pull consumer, pulled from within
//! the member's `maxInFlight` (see `pull`), its messages packed into delivery
//! batches for JS, and the reply subjects kept here so JS acks by sequence
//! instead of carrying subjects across the boundary.
//!
//! Identity decides the consumer: a plain subscription gets an ephemeral
//! consumer of its own; a durable gets one named from (cluster, client,
//! durable, channel); a queue group one named from (cluster, group, durable,
//! channel), shared by its members, who each pull from it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, ErrorCode as ApiErrorCode};
use async_nats::Client;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::presence::{self, Answer, Presence};
use super::pull::{Pulled, Pulls, Registry};
use super::streams::{consumer_name, StreamCache};
use crate::deadline::sleep_until;
use crate::error::{ErrorCode, JetstanError};
use crate::options::{start_position, SubscribeOptions};
use crate::outbox::{DeliveryBatch, Event, Outbox};
use crate::session::{AckKind, Stop, SubCommand};

/// How long the server keeps a consumer nobody pulls from: an ephemeral one
/// whose client vanished, or a non-durable queue group whose members did.
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(120);
const GROUP_ACK_PENDING: i64 = 1000;
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
        AckKind::Progress => Bytes::from_static(b"+WPI"),
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
        let mut registry = Registry::new(Duration::from_millis(u64::from(
            self.options.ack_wait_ms.max(1000),
        )));
        let binding = tokio::time::timeout(self.request_timeout, async {
            let bound = self.bind().await.map_err(|err| (None, err))?;
            match Pulls::open(&self.client).await {
                Ok(pulls) => Ok((bound, pulls)),
                Err(err) => Err((
                    Some(bound),
                    JetstanError::new(ErrorCode::SubscribeFailed, err.to_string()),
                )),
            }
        });
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
                    Some(SubCommand::Settle(..) | SubCommand::Reconnected) => {}
                    // A request of ours was refused: the answer will never come.
                    Some(SubCommand::Denied(err)) => {
                        self.outbox.push_event(Event::SubError(sid, err));
                        self.outbox.push_event(Event::SubUnsubscribed(sid));
                        return;
                    }
                    Some(SubCommand::Stop(reason)) => {
                        // Stopped before the consumer existed: nothing to clean up.
                        self.report_stop(reason);
                        return;
                    }
                    None => return,
                },
            }
        };
        let (mut bound, mut pulls) = match bound {
            Ok(bound) => bound,
            Err((bound, err)) => {
                self.outbox.push_event(Event::SubError(sid, err));
                if let Some(mut bound) = bound {
                    self.cleanup(&mut bound, &mut registry, Stop::Unsubscribe)
                        .await;
                }
                self.outbox.push_event(Event::SubUnsubscribed(sid));
                return;
            }
        };
        self.outbox.push_event(Event::SubReady(sid));
        let limit = self.options.max_in_flight.max(1) as usize;
        let mut last_sequence = 0u64;
        let mut attempt = 0usize;
        // Set while the consumer is lost: when to bind again.
        let mut rebind_at: Option<Instant> = None;
        // Set while the member holds all it may: when the next ack clock runs out.
        let mut lapse_at: Option<Instant> = None;
        let reason = 'life: loop {
            if rebind_at.is_none() {
                // Full: messages whose clocks ran out free room first (and
                // the scan says when the next one will).
                if lapse_at.is_none() && registry.counted() >= limit {
                    lapse_at = registry.lapse(Instant::now());
                }
                while let Some(batch) = pulls.wanted(limit, registry.counted()) {
                    if let Err(err) = pulls.ask(&bound.consumer, batch).await {
                        tracing::debug!(sid, error = %err, "pull request not sent");
                        rebind_at = Some(self.backoff(&mut attempt));
                        break;
                    }
                }
            }
            let silent_after = pulls.silent_after().filter(|_| rebind_at.is_none());
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(SubCommand::Settle(ids, kind)) => {
                        self.settle(&mut registry, &ids, kind).await;
                        if registry.counted() < limit {
                            lapse_at = None;
                        }
                    }
                    Some(SubCommand::Reconnected) => pulls.forget_requests(),
                    Some(SubCommand::Denied(_)) => {}
                    Some(SubCommand::Stop(reason)) => {
                        // Messages already received but not yet read are
                        // registered, so cleanup hands them back instead of
                        // leaving them to ackWait.
                        let mut unread = DeliveryBatch::default();
                        while let Some(message) = pulls.try_next() {
                            if let Pulled::Message(message) = pulls.sort(message) {
                                self.collect(message, &mut unread, &mut last_sequence, &mut registry);
                            }
                        }
                        break 'life reason;
                    }
                    None => break 'life Stop::ConnectionClosed,
                },
                next = pulls.next() => {
                    let Some(first) = next else { break 'life Stop::ConnectionClosed };
                    let mut batch = DeliveryBatch::default();
                    let mut next = Some(first);
                    while let Some(message) = next.take() {
                        match pulls.sort(message) {
                            Pulled::Message(message) => {
                                self.collect(message, &mut batch, &mut last_sequence, &mut registry);
                            }
                            Pulled::Nothing => {}
                            Pulled::Lost(why) => {
                                tracing::info!(sid, channel = %self.options.subject, why, "consumer lost; binding again");
                                rebind_at = Some(self.backoff(&mut attempt));
                                break;
                            }
                        }
                        if batch.len() < DELIVERY_BATCH {
                            next = pulls.try_next();
                        }
                    }
                    if !batch.is_empty() {
                        attempt = 0;
                        let redelivered = if tracing::enabled!(tracing::Level::DEBUG) {
                            batch.redelivered()
                        } else {
                            0
                        };
                        if redelivered > 0 {
                            tracing::debug!(sid, channel = %self.options.subject, redelivered, "redeliveries");
                        }
                    }
                    self.outbox.push_deliveries(sid, batch);
                }
                _ = sleep_until(lapse_at) => {
                    lapse_at = registry.lapse(Instant::now());
                    if registry.counted() < limit {
                        lapse_at = None;
                    }
                }
                _ = sleep_until(silent_after) => {
                    tracing::debug!(sid, "pull heartbeats stopped");
                    pulls.forget_requests();
                    rebind_at = Some(self.backoff(&mut attempt));
                }
                _ = sleep_until(rebind_at) => {
                    // The consumer may be gone (a server restart without it, a
                    // deletion): bind again, recreating it from its ack floor.
                    rebind_at = None;
                    pulls.forget_requests();
                    let rebinding = self.rebind(&bound, &mut registry, last_sequence);
                    match tokio::time::timeout(self.request_timeout, rebinding).await {
                        Ok(Ok(consumer)) => {
                            tracing::info!(sid, channel = %self.options.subject, "subscription bound again");
                            bound.consumer = consumer;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(sid, error = %err, "rebinding the consumer failed");
                            rebind_at = Some(self.backoff(&mut attempt));
                        }
                        Err(_) => {
                            tracing::debug!(sid, "rebinding the consumer timed out");
                            rebind_at = Some(self.backoff(&mut attempt));
                        }
                    }
                }
            }
        };
        self.cleanup(&mut bound, &mut registry, reason).await;
        self.report_stop(reason);
    }

    fn backoff(&self, attempt: &mut usize) -> Instant {
        let pause = RECOVERY_BACKOFF[(*attempt).min(RECOVERY_BACKOFF.len() - 1)];
        *attempt += 1;
        Instant::now() + pause
    }

    /// Bounded, so a stop behind it is still seen while the server is gone;
    /// unacked messages come back after ackWait, so nothing is lost.
    async fn settle(&self, registry: &mut Registry, ids: &[f64], kind: AckKind) {
        let replies = match kind {
            AckKind::Progress => registry.restart_clocks(ids, Instant::now()),
            _ => registry.take(ids),
        };
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

    /// Adds a message to the batch and registers it as held.
    fn collect(
        &self,
        message: async_nats::Message,
        batch: &mut DeliveryBatch,
        last_sequence: &mut u64,
        registry: &mut Registry,
    ) {
        let Some(reply) = message.reply else {
            return;
        };
        let Some(info) = AckInfo::parse(&reply) else {
            tracing::debug!(sid = self.sid, %reply, "message without JetStream metadata");
            return;
        };
        *last_sequence = (*last_sequence).max(info.sequence);
        let timestamp_ns = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(STAN_TIMESTAMP))
            .and_then(|value| value.as_str().parse::<i128>().ok())
            .unwrap_or(info.timestamp_ns);
        batch.push(
            info.sequence,
            info.sequence,
            timestamp_ns,
            info.delivered.max(1) - 1,
            &message.payload,
        );
        if let Some(lines) = message.headers.as_ref().and_then(application_headers) {
            batch.set_headers(lines);
        }
        registry.register(info.sequence, reply, Instant::now());
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
            max_ack_pending: self.max_ack_pending(),
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

    /// Each member holds at most its `maxInFlight` (see `pull`); the consumer's
    /// own cap only matters for a subscription alone on it, where it keeps
    /// order: nothing new is sent while a message waits for redelivery. A
    /// queue group's members share the consumer, so its cap is the server's
    /// default, or more if one member may hold more.
    fn max_ack_pending(&self) -> i64 {
        let member = i64::from(self.options.max_in_flight.max(1));
        match self.identity {
            Identity::Queue { .. } => member.max(GROUP_ACK_PENDING),
            _ => member,
        }
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

/// The headers an application set, as `Name: value\r\n` lines; `None` when
/// there are none besides the `Nats-Msg-Id` jetstan sets on every publish
/// (the common case, which then costs JS nothing).
/// A message copied from a STAN channel keeps its original time here
/// (nanoseconds since the epoch), and `getTimestamp()` returns it.
pub const STAN_TIMESTAMP: &str = "Stan-Timestamp";

fn application_headers(headers: &async_nats::HeaderMap) -> Option<String> {
    let mut lines = String::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case("Nats-Msg-Id") || name.eq_ignore_ascii_case(STAN_TIMESTAMP) {
            continue;
        }
        for value in values {
            lines.push_str(name);
            lines.push_str(": ");
            lines.push_str(value.as_str());
            lines.push_str("\r\n");
        }
    }
    (!lines.is_empty()).then_some(lines)
}

/// What a JetStream delivery's reply subject says about it:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`,
/// or with `<domain>.<account hash>` after `$JS.ACK` and a token at the end (ADR-15).
struct AckInfo {
    delivered: u64,
    sequence: u64,
    timestamp_ns: i128,
}

impl AckInfo {
    fn parse(reply: &str) -> Option<AckInfo> {
        let tokens: Vec<&str> = reply.split('.').collect();
        if tokens.len() < 9 || tokens[0] != "$JS" || tokens[1] != "ACK" {
            return None;
        }
        let first = if tokens.len() == 9 { 4 } else { 6 };
        let number = |at: usize| tokens.get(first + at)?.parse::<u64>().ok();
        Some(AckInfo {
            delivered: number(0)?,
            sequence: number(1)?,
            timestamp_ns: i128::from(number(3)?),
        })
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

#[cfg(test)]
mod tests {
    use super::AckInfo;

    #[test]
    fn reads_delivery_facts_from_both_reply_forms() {
        let v1 = AckInfo::parse("$JS.ACK.S.C.3.42.7.1700000000000000000.5").expect("v1");
        assert_eq!((v1.delivered, v1.sequence), (3, 42));
        assert_eq!(v1.timestamp_ns, 1_700_000_000_000_000_000);
        let v2 =
            AckInfo::parse("$JS.ACK.hub.ACCHASH.S.C.1.9.9.1700000000000000001.0.tok").expect("v2");
        assert_eq!((v2.delivered, v2.sequence), (1, 9));
        assert!(AckInfo::parse("$JS.ACK.S.C.x.42.7.1.5").is_none());
        assert!(AckInfo::parse("_INBOX.abc").is_none());
    }
}
