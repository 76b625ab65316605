//! Publishing on STAN: every `PubMsg` carries the connection's one ack
//! subject as its reply; `PubAck`s are matched by guid (the only thing the
//! server echoes), publishes without one by `ackTimeout` fail.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subject, Subscriber};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::proto::{PubAck, PubMsg};
use super::session::Routes;
use super::{malformed, server_error, Request};
use crate::deadline::sleep_until;
use crate::error::{text, ErrorCode, JetstanError};
use crate::outbox::Outbox;

/// How many ready acks are folded into one hand-off to JS at most.
const ACK_BATCH: usize = 1024;

pub struct PublishRequest {
    pub token: u32,
    pub channel: String,
    pub guid: String,
    pub payload: Bytes,
}

pub struct Publisher {
    pub client: Client,
    pub routes: Arc<Routes>,
    pub outbox: Arc<Outbox>,
    pub ack_timeout: Duration,
    pub ack_subject: Subject,
    pub acks: Subscriber,
}

#[derive(Default)]
struct Pending {
    /// Token of each publish awaiting its ack, by guid.
    by_guid: HashMap<String, u32>,
    /// Deadlines in send order, which is deadline order: every publish waits
    /// the same `ackTimeout`.
    deadlines: VecDeque<(Instant, String)>,
    acked: Vec<u32>,
    failed: Vec<(u32, JetstanError)>,
}

impl Publisher {
    pub async fn run(mut self, mut requests: mpsc::UnboundedReceiver<PublishRequest>) {
        let mut pending = Pending::default();
        loop {
            let next_deadline = pending.deadlines.front().map(|(at, _)| *at);
            tokio::select! {
                biased;
                ack = self.acks.next() => {
                    let Some(ack) = ack else { break };
                    pending.settle(&ack);
                    for _ in 0..ACK_BATCH {
                        match self.acks.next().now_or_never() {
                            Some(Some(ack)) => pending.settle(&ack),
                            _ => break,
                        }
                    }
                }
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    let deadline = Instant::now() + self.ack_timeout;
                    self.send(request, deadline, &mut pending).await;
                    while let Ok(request) = requests.try_recv() {
                        self.send(request, deadline, &mut pending).await;
                    }
                }
                _ = sleep_until(next_deadline) => pending.expire(Instant::now()),
            }
            self.outbox
                .push_publish_results(&mut pending.acked, &mut pending.failed);
        }
    }

    async fn send(&self, request: PublishRequest, deadline: Instant, pending: &mut Pending) {
        let subject = format!("{}.{}", self.routes.pub_prefix, request.channel);
        let message = PubMsg {
            client_id: self.routes.client_id.clone(),
            guid: request.guid,
            subject: request.channel,
            reply: String::new(),
            data: request.payload,
            conn_id: self.routes.conn_id.clone(),
        };
        let body = Bytes::from(message.encode_to_vec());
        let sent = self
            .client
            .publish_with_reply(subject, self.ack_subject.clone(), body)
            .await;
        match sent {
            Ok(()) => {
                pending.by_guid.insert(message.guid.clone(), request.token);
                pending.deadlines.push_back((deadline, message.guid));
            }
            Err(err) => pending.failed.push((
                request.token,
                JetstanError::new(ErrorCode::PublishFailed, err.to_string()),
            )),
        }
    }
}

impl Pending {
    fn settle(&mut self, reply: &async_nats::Message) {
        // A 503 status here would mean nobody took the publish: its
        // deadline reports it, as 0.3.2 (which never sees a 503) would.
        if reply.status.is_some() {
            return;
        }
        let ack = match PubAck::decode(reply.payload.clone()) {
            Ok(ack) => ack,
            Err(err) => {
                // Nothing to match it to; the publish it was for times out.
                tracing::warn!("{}", malformed("PubAck", err));
                return;
            }
        };
        // Unknown guids are acks that came after their timeout, or duplicates.
        let Some(token) = self.by_guid.remove(&ack.guid) else {
            return;
        };
        if ack.error.is_empty() {
            self.acked.push(token);
        } else {
            self.failed
                .push((token, server_error(Request::Publish, &ack.error)));
        }
        self.drop_settled_deadlines();
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, guid)) = self.deadlines.front() {
            if *at > now {
                break;
            }
            if let Some(token) = self.by_guid.remove(guid) {
                self.failed.push((
                    token,
                    JetstanError::new(ErrorCode::PubAckTimeout, text::PUB_ACK_TIMEOUT),
                ));
            }
            self.deadlines.pop_front();
        }
    }

    /// Keeps the deadline queue as small as what is really in flight.
    fn drop_settled_deadlines(&mut self) {
        while let Some((_, guid)) = self.deadlines.front() {
            if self.by_guid.contains_key(guid) {
                break;
            }
            self.deadlines.pop_front();
        }
    }
}
