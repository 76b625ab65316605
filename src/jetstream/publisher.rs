//! The publish pipeline: one task per connection sends every publish with a
//! per-message reply subject under one wildcard inbox, matches JetStream
//! PubAcks by the token in that subject, times out the ones that never come,
//! and hands results to JS in batches.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{jetstream, Client, HeaderMap, Subject, Subscriber};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::streams::StreamCache;
use crate::deadline::sleep_until;
use crate::error::{text, ErrorCode, JetstanError};
use crate::id_map::IdMap;
use crate::outbox::Outbox;

/// How many ready acks are folded into one hand-off to JS at most.
const ACK_BATCH: usize = 1024;

pub struct PublishRequest {
    pub token: u32,
    pub subject: String,
    pub guid: String,
    pub payload: Bytes,
}

#[derive(Deserialize)]
struct PubAck {
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    description: String,
}

pub struct Publisher {
    pub client: Client,
    pub js: jetstream::Context,
    pub streams: Arc<StreamCache>,
    pub outbox: Arc<Outbox>,
    pub ack_timeout: Duration,
    pub reply_prefix: String,
    pub acks: Subscriber,
}

/// Channel of each publish awaiting its ack, by token.
type InFlight = IdMap<u32, Subject>;

#[derive(Default)]
struct Results {
    acked: Vec<u32>,
    failed: Vec<(u32, JetstanError)>,
}

impl Publisher {
    pub async fn run(mut self, mut requests: mpsc::UnboundedReceiver<PublishRequest>) {
        let mut in_flight = InFlight::default();
        let mut deadlines: VecDeque<(Instant, u32)> = VecDeque::new();
        let mut results = Results::default();
        loop {
            let next_deadline = deadlines.front().map(|(at, _)| *at);
            tokio::select! {
                biased;
                ack = self.acks.next() => {
                    let Some(ack) = ack else { break };
                    self.settle(ack, &mut in_flight, &mut results);
                    for _ in 0..ACK_BATCH {
                        match self.acks.next().now_or_never() {
                            Some(Some(ack)) => self.settle(ack, &mut in_flight, &mut results),
                            _ => break,
                        }
                    }
                }
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    // One clock read per batch: publishes drained together share a deadline.
                    let deadline = Instant::now() + self.ack_timeout;
                    self.send(request, deadline, &mut in_flight, &mut deadlines, &mut results)
                        .await;
                    while let Ok(request) = requests.try_recv() {
                        self.send(request, deadline, &mut in_flight, &mut deadlines, &mut results)
                            .await;
                    }
                }
                _ = sleep_until(next_deadline) => {
                    let now = Instant::now();
                    while let Some(&(at, token)) = deadlines.front() {
                        if at > now {
                            break;
                        }
                        deadlines.pop_front();
                        if in_flight.remove(&token).is_some() {
                            results.failed.push((
                                token,
                                JetstanError::new(ErrorCode::PubAckTimeout, text::PUB_ACK_TIMEOUT),
                            ));
                        }
                    }
                }
            }
            // Acks settle out of deadline order; drop the stale front entries
            // so the queue stays as small as what is really in flight.
            while let Some((_, token)) = deadlines.front() {
                if in_flight.contains_key(token) {
                    break;
                }
                deadlines.pop_front();
            }
            self.outbox
                .push_publish_results(&mut results.acked, &mut results.failed);
        }
    }

    async fn send(
        &self,
        request: PublishRequest,
        deadline: Instant,
        in_flight: &mut InFlight,
        deadlines: &mut VecDeque<(Instant, u32)>,
        results: &mut Results,
    ) {
        if let Err(err) = self.streams.stream_for(&self.js, &request.subject).await {
            results.failed.push((request.token, err));
            return;
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", request.guid.as_str());
        let reply = reply_subject(&self.reply_prefix, request.token);
        // Bytes-backed: the clone for the publish is a reference count.
        let subject = Subject::from(request.subject);
        let sent = self
            .client
            .publish_with_reply_and_headers(subject.clone(), reply, headers, request.payload)
            .await;
        match sent {
            Ok(()) => {
                in_flight.insert(request.token, subject);
                deadlines.push_back((deadline, request.token));
            }
            Err(err) => results.failed.push((
                request.token,
                JetstanError::new(ErrorCode::PublishFailed, err.to_string()),
            )),
        }
    }

    fn settle(&self, ack: async_nats::Message, in_flight: &mut InFlight, results: &mut Results) {
        let Some(token) = ack
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            return;
        };
        let Some(channel) = in_flight.remove(&token) else {
            // Late ack after a timeout, or a stray message on our inbox.
            return;
        };
        if ack.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // The stream went away after we cached it; the next publish looks again.
            self.streams.forget(&channel);
            results.failed.push((
                token,
                JetstanError::new(
                    ErrorCode::StreamNotFound,
                    format!("no stream answered for channel '{channel}'"),
                ),
            ));
            return;
        }
        match serde_json::from_slice::<PubAck>(&ack.payload) {
            Ok(PubAck { error: None }) => results.acked.push(token),
            Ok(PubAck {
                error: Some(api_error),
            }) => results.failed.push((
                token,
                JetstanError::new(
                    ErrorCode::ServerError,
                    format!("{} (code {})", api_error.description, api_error.code),
                ),
            )),
            Err(err) => results.failed.push((
                token,
                JetstanError::new(
                    ErrorCode::ServerError,
                    format!("unreadable publish ack: {err}"),
                ),
            )),
        }
    }
}

/// `<prefix>.<token>` without the `fmt` machinery, which showed in profiles
/// of the publish path.
fn reply_subject(prefix: &str, token: u32) -> String {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = token;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut reply = String::with_capacity(prefix.len() + 1 + digits.len() - start);
    reply.push_str(prefix);
    reply.push('.');
    reply.extend(digits[start..].iter().map(|&digit| char::from(digit)));
    reply
}

#[cfg(test)]
mod tests {
    use super::reply_subject;

    #[test]
    fn reply_subjects_carry_the_token_in_decimal() {
        assert_eq!(reply_subject("_INBOX.x", 0), "_INBOX.x.0");
        assert_eq!(reply_subject("_INBOX.x", 42), "_INBOX.x.42");
        assert_eq!(reply_subject("p", u32::MAX), "p.4294967295");
    }
}
