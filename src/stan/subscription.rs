//! One STAN subscription: its delivery inbox, the subscription request, the
//! `MsgProto`s packed into delivery batches for JS, and its acks.
//!
//! Acks and the stop request travel through one ordered channel into this
//! task, so every ack JS made before `unsubscribe()`/`close()` reaches the
//! server before the request that ends the subscription — the order in
//! which the server applies them (a durable resumes after those acks).

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subject, Subscriber};
use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::mpsc;

use super::proto::{Ack, MsgProto, SubscriptionRequest, SubscriptionResponse, UnsubscribeRequest};
use super::{malformed, request, server_error, Request, Routes};
use crate::error::{text, ErrorCode, JetstanError, Result};
use crate::options::SubscribeOptions;
use crate::outbox::{DeliveryBatch, Event, Outbox};
use crate::session::{AckKind, Stop, SubCommand};

/// Messages folded into one delivery batch at most before JS is woken.
const DELIVERY_BATCH: usize = 4096;

pub struct SubscriptionTask {
    pub sid: u32,
    pub options: SubscribeOptions,
    pub client: Client,
    pub routes: Arc<Routes>,
    pub outbox: Arc<Outbox>,
    pub request_timeout: Duration,
}

impl SubscriptionTask {
    pub async fn run(self, mut commands: mpsc::UnboundedReceiver<SubCommand>) {
        let sid = self.sid;
        let (mut inbox, ack_inbox) = match self.start().await {
            Ok(started) => started,
            Err(err) if err.code == ErrorCode::SubscribeTimeout => {
                self.outbox.push_event(Event::SubTimeout(sid));
                return;
            }
            Err(err) => {
                self.outbox.push_event(Event::SubError(sid, err));
                return;
            }
        };
        self.outbox.push_event(Event::SubReady(sid));
        let stop = loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    // STAN acks by sequence, and cannot refuse a message for
                    // good: a terminate is an ack too, never delivered again.
                    // It has no negative ack (such a message returns after
                    // ackWait), nor "in progress".
                    Some(SubCommand::Settle(ids, kind)) => {
                        // Bounded, so a stop behind it is still seen while the
                        // server is gone; an ack not sent means a redelivery.
                        if !matches!(kind, AckKind::Nak | AckKind::Progress) {
                            let acked = self.ack(&ack_inbox, &ids);
                            if tokio::time::timeout(self.request_timeout, acked).await.is_err() {
                                tracing::debug!(sid, "acks not sent in time");
                            }
                        }
                    }
                    Some(SubCommand::Reconnected | SubCommand::Denied(_)) => {}
                    Some(SubCommand::Stop(stop)) => break stop,
                    None => break Stop::ConnectionClosed,
                },
                delivered = inbox.next() => {
                    let Some(first) = delivered else { break Stop::ConnectionClosed };
                    self.deliver(first, &mut inbox);
                }
            }
        };
        // Nothing more is read; the server's answer below settles what it sent.
        drop(inbox);
        if stop == Stop::ConnectionClosed {
            return;
        }
        match self.end(stop, ack_inbox).await {
            Ok(()) if stop == Stop::Close => self.outbox.push_event(Event::SubClosed(sid)),
            Ok(()) => self.outbox.push_event(Event::SubUnsubscribed(sid)),
            Err(err) => self.outbox.push_event(Event::SubError(sid, err)),
        }
    }

    /// Subscribes the delivery inbox first, so nothing the server sends
    /// right after its answer is lost, then asks for the subscription.
    async fn start(&self) -> Result<(Subscriber, Subject)> {
        let options = &self.options;
        let inbox_subject = self.client.new_inbox();
        let inbox = self
            .client
            .subscribe(inbox_subject.clone())
            .await
            .map_err(|err| JetstanError::new(ErrorCode::SubscribeFailed, err.to_string()))?;
        let body = SubscriptionRequest {
            client_id: self.routes.client_id.clone(),
            subject: options.subject.clone(),
            q_group: options.queue_group.clone().unwrap_or_default(),
            inbox: inbox_subject,
            max_in_flight: i32::try_from(options.max_in_flight).unwrap_or(i32::MAX),
            ack_wait_in_secs: i32::try_from(options.ack_wait_ms.div_ceil(1000)).unwrap_or(i32::MAX),
            durable_name: options.durable_name.clone().unwrap_or_default(),
            start_position: i32::try_from(options.start_position).unwrap_or(i32::MAX),
            start_sequence: options.start_sequence.map_or(0, |s| s.max(0.0) as u64),
            start_time_delta: options
                .start_time_delta_ms
                .map_or(0, |ms| (ms * 1e6) as i64),
        };
        let timeout = JetstanError::new(ErrorCode::SubscribeTimeout, text::SUBSCRIBE_TIMEOUT);
        let response: SubscriptionResponse = request(
            &self.client,
            self.routes.sub_requests.clone(),
            &body,
            self.request_timeout,
            timeout,
            "SubscriptionResponse",
        )
        .await?;
        if !response.error.is_empty() {
            return Err(server_error(Request::Subscribe, &response.error));
        }
        Ok((inbox, Subject::from(response.ack_inbox)))
    }

    /// Packs the message that woke us and whatever else already arrived into
    /// one batch. The ack id of a message is its sequence.
    fn deliver(&self, first: async_nats::Message, inbox: &mut Subscriber) {
        let mut batch = DeliveryBatch::default();
        self.pack(first, &mut batch);
        for _ in 1..DELIVERY_BATCH {
            match inbox.next().now_or_never() {
                Some(Some(message)) => self.pack(message, &mut batch),
                _ => break,
            }
        }
        self.outbox.push_deliveries(self.sid, batch);
    }

    fn pack(&self, message: async_nats::Message, batch: &mut DeliveryBatch) {
        if message.status.is_some() {
            return;
        }
        match MsgProto::decode(message.payload) {
            Ok(msg) => {
                // Old servers flag a redelivery without counting it.
                let redeliveries = match (msg.redelivered, msg.redelivery_count) {
                    (true, 0) => 1,
                    (_, count) => u64::from(count),
                };
                batch.push(
                    msg.sequence,
                    msg.sequence,
                    i128::from(msg.timestamp),
                    redeliveries,
                    &msg.data,
                );
            }
            Err(err) => self
                .outbox
                .push_event(Event::Error(malformed("MsgProto", err))),
        }
    }

    /// One allocation per batch: every `Ack` is encoded into a slice of the
    /// same buffer, and the inbox subject is shared, not copied.
    async fn ack(&self, ack_inbox: &Subject, sequences: &[f64]) {
        let mut ack = Ack {
            subject: self.options.subject.clone(),
            sequence: u64::MAX,
        };
        let mut buffer = BytesMut::with_capacity(ack.encoded_len() * sequences.len());
        for sequence in sequences {
            ack.sequence = *sequence as u64;
            // The buffer was sized for the longest encoding; a failure would only
            // mean it grows.
            let _ = ack.encode(&mut buffer);
            let body = buffer.split().freeze();
            if self.client.publish(ack_inbox.clone(), body).await.is_err() {
                // Unacked messages come back after ackWait; nothing is lost.
                tracing::debug!("ack not sent: connection closing");
            }
        }
    }

    /// Asks the server to end the subscription. 0.3.2 (and the server)
    /// identify it by its ack inbox.
    async fn end(&self, stop: Stop, ack_inbox: Subject) -> Result<()> {
        let (subject, timeout_text) = if stop == Stop::Close {
            if self.routes.sub_close_requests.is_empty() {
                return Err(JetstanError::new(
                    ErrorCode::SubscribeFailed,
                    "stan: not supported by server",
                ));
            }
            (
                self.routes.sub_close_requests.clone(),
                "stan: close request timeout",
            )
        } else {
            (
                self.routes.unsub_requests.clone(),
                "stan: unsubscribe request timeout",
            )
        };
        let body = UnsubscribeRequest {
            client_id: self.routes.client_id.clone(),
            subject: self.options.subject.clone(),
            inbox: ack_inbox.to_string(),
            durable_name: String::new(),
        };
        let unanswered = JetstanError::new(ErrorCode::SubscribeTimeout, timeout_text);
        let response: SubscriptionResponse = request(
            &self.client,
            subject,
            &body,
            self.request_timeout,
            unanswered,
            "SubscriptionResponse",
        )
        .await?;
        if response.error.is_empty() {
            Ok(())
        } else {
            Err(server_error(Request::Unsubscribe, &response.error))
        }
    }
}
