//! Publishes in flight, owned by the session task: each goes out with reply
//! subject `<prefix>.<token>`, is matched to its ack by that token, sent
//! again while nobody took it (and, where the server deduplicates by guid,
//! while its ack is missing), and settled exactly once: acked, refused, or
//! failed when its `ackTimeout` runs out.
//!
//! Writes go through a future of their own that the loop polls next to its
//! timers, so a write waiting on a full connection never holds up a
//! deadline. A channel whose destination is still being resolved parks its
//! publishes; other channels keep flowing.

use std::collections::{HashMap, VecDeque};
use std::mem;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::deadline::sleep_until;
use crate::error::{text, ErrorCode, JetstanError, Result};
use crate::id_map::IdMap;
use crate::outbox::Outbox;

/// How soon a publish nobody took (no responders: a stream electing a
/// leader, deleted, or a server not yet subscribed) is sent again.
const NOBODY_RETRY: Duration = Duration::from_millis(250);
/// Where the server deduplicates, how long an unanswered publish waits before
/// it is sent again, at most (a quarter of `ackTimeout` when that is shorter).
const UNANSWERED_RETRY: Duration = Duration::from_secs(2);

pub struct PublishRequest {
    pub token: u32,
    pub channel: Subject,
    pub guid: String,
    pub payload: Bytes,
    /// The application's headers (JetStream only), rarely set: boxed so the
    /// common publish stays small.
    pub headers: Option<Box<Vec<(String, String)>>>,
}

/// One publish as it goes on the wire.
pub struct Frame {
    pub subject: Subject,
    pub reply: Subject,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

/// What an ack says about its publish.
pub enum Outcome {
    Stored,
    Refused(JetstanError),
    /// Nobody took it: send it again after a pause. The error, if any, is
    /// what the publish fails with should its deadline come first.
    NobodyTook(Option<JetstanError>),
    /// Not an ack we can read; the publish waits for another or its deadline.
    Unreadable(JetstanError),
}

struct InFlight {
    request: PublishRequest,
    attempt: u32,
    /// Waiting for its channel's destination to be resolved.
    parked: bool,
    last_error: Option<JetstanError>,
}

enum Route {
    Ready,
    Resolving(Vec<u32>),
}

type Resolution = (String, Result<()>);

/// Something the publisher's own futures produced, for the loop to apply.
pub enum Due {
    Resolved(Resolution),
    Written(Vec<(u32, JetstanError)>),
    Timer,
}

pub struct Publisher {
    reply_prefix: String,
    ack_timeout: Duration,
    /// Set where the server deduplicates by guid.
    resend_after: Option<Duration>,
    in_flight: IdMap<u32, InFlight>,
    /// `ackTimeout` deadlines in send order, which is deadline order.
    deadlines: VecDeque<(Instant, u32)>,
    /// Resends of unanswered publishes, by token and attempt; the delay is
    /// constant, so this is in time order too.
    resends: VecDeque<(Instant, u32, u32)>,
    /// Resends of publishes nobody took, likewise.
    nobody: VecDeque<(Instant, u32, u32)>,
    routes: HashMap<String, Route>,
    resolving: FuturesUnordered<BoxFuture<'static, Resolution>>,
    queued: Vec<(u32, Frame)>,
    writing: Option<BoxFuture<'static, Vec<(u32, JetstanError)>>>,
    acked: Vec<u32>,
    failed: Vec<(u32, JetstanError)>,
}

impl Publisher {
    pub fn new(reply_prefix: String, ack_timeout: Duration, deduplicates: bool) -> Self {
        Publisher {
            reply_prefix,
            ack_timeout,
            resend_after: deduplicates.then(|| UNANSWERED_RETRY.min(ack_timeout / 4)),
            in_flight: IdMap::default(),
            deadlines: VecDeque::new(),
            resends: VecDeque::new(),
            nobody: VecDeque::new(),
            routes: HashMap::new(),
            resolving: FuturesUnordered::new(),
            queued: Vec::new(),
            writing: None,
            acked: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// `now` is read once per batch of commands: publishes handled together
    /// share a deadline, and the clock stays off the per-message path.
    pub fn publish(
        &mut self,
        request: PublishRequest,
        now: Instant,
        frame: impl Fn(&PublishRequest, String) -> Frame,
        resolve: impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        let token = request.token;
        self.deadlines.push_back((now + self.ack_timeout, token));
        self.in_flight.insert(
            token,
            InFlight {
                request,
                attempt: 0,
                parked: false,
                last_error: None,
            },
        );
        self.dispatch(token, now, &frame, &resolve);
    }

    /// Sends the publish, or parks it while its channel is being resolved.
    fn dispatch(
        &mut self,
        token: u32,
        now: Instant,
        frame: &impl Fn(&PublishRequest, String) -> Frame,
        resolve: &impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        let Some(entry) = self.in_flight.get_mut(&token) else {
            return;
        };
        let channel = entry.request.channel.as_str();
        match self.routes.get_mut(channel) {
            Some(Route::Ready) => {}
            Some(Route::Resolving(parked)) => {
                parked.push(token);
                entry.parked = true;
                return;
            }
            None => {
                if let Some(resolution) = resolve(channel) {
                    let channel = channel.to_string();
                    self.routes
                        .insert(channel.clone(), Route::Resolving(vec![token]));
                    entry.parked = true;
                    self.resolving
                        .push(resolution.map(move |result| (channel, result)).boxed());
                    return;
                }
            }
        }
        let reply = reply_subject(&self.reply_prefix, token);
        self.queued.push((token, frame(&entry.request, reply)));
        if let Some(after) = self.resend_after {
            self.resends.push_back((now + after, token, entry.attempt));
        }
    }

    fn resend(
        &mut self,
        token: u32,
        now: Instant,
        frame: &impl Fn(&PublishRequest, String) -> Frame,
        resolve: &impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        if let Some(entry) = self.in_flight.get_mut(&token) {
            entry.attempt += 1;
            self.dispatch(token, now, frame, resolve);
        }
    }

    /// After a reconnect, where the server deduplicates: whatever was in
    /// flight may have been lost with the old connection.
    pub fn resend_all(
        &mut self,
        frame: impl Fn(&PublishRequest, String) -> Frame,
        resolve: impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        if self.resend_after.is_none() {
            return;
        }
        let now = Instant::now();
        let tokens: Vec<u32> = self
            .deadlines
            .iter()
            .map(|(_, token)| *token)
            .filter(|token| self.in_flight.get(token).is_some_and(|e| !e.parked))
            .collect();
        for token in tokens {
            self.resend(token, now, &frame, &resolve);
        }
    }

    /// Settles the publish an ack answers; acks of publishes no longer in
    /// flight (late, or repeated) and strays are ignored.
    pub fn on_ack(
        &mut self,
        ack: &async_nats::Message,
        outcome: impl Fn(&async_nats::Message, &str) -> Outcome,
        forget: impl Fn(&str),
    ) {
        let Some(token) = ack
            .subject
            .rsplit('.')
            .next()
            .and_then(|token| token.parse::<u32>().ok())
        else {
            return;
        };
        let Some(entry) = self.in_flight.get(&token) else {
            return;
        };
        let outcome = outcome(ack, entry.request.channel.as_str());
        match outcome {
            Outcome::Stored => {
                self.in_flight.remove(&token);
                self.acked.push(token);
            }
            Outcome::Refused(err) => {
                self.in_flight.remove(&token);
                self.failed.push((token, err));
            }
            Outcome::NobodyTook(err) => {
                let Some(entry) = self.in_flight.get_mut(&token) else {
                    return;
                };
                if err.is_some() {
                    entry.last_error = err;
                }
                let channel = entry.request.channel.as_str();
                // Look for the destination again: it may have been deleted.
                if matches!(self.routes.get(channel), Some(Route::Ready)) {
                    self.routes.remove(channel);
                    forget(channel);
                }
                self.nobody
                    .push_back((Instant::now() + NOBODY_RETRY, token, entry.attempt));
            }
            Outcome::Unreadable(err) => tracing::warn!("{err}"),
        }
    }

    pub fn on_resolved(
        &mut self,
        (channel, result): Resolution,
        frame: impl Fn(&PublishRequest, String) -> Frame,
        resolve: impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        let Some(Route::Resolving(parked)) = self.routes.remove(&channel) else {
            return;
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
                self.routes.insert(channel, Route::Ready);
                for token in parked {
                    if let Some(entry) = self.in_flight.get_mut(&token) {
                        entry.parked = false;
                        self.dispatch(token, now, &frame, &resolve);
                    }
                }
            }
            // Definite: nothing captures the channel and we may not create.
            Err(err) if err.code == ErrorCode::StreamNotFound => {
                for token in parked {
                    if self.in_flight.remove(&token).is_some() {
                        self.failed.push((token, err.clone()));
                    }
                }
            }
            // Perhaps passing (a leader election, a slow server): try again
            // until the deadline, which then reports this error.
            Err(err) => {
                tracing::debug!(channel, error = %err, "resolving the channel failed");
                for token in parked {
                    if let Some(entry) = self.in_flight.get_mut(&token) {
                        entry.parked = false;
                        entry.last_error = Some(err.clone());
                        self.nobody
                            .push_back((now + NOBODY_RETRY, token, entry.attempt));
                    }
                }
            }
        }
    }

    /// Fails every publish in flight on `channel`; returns how many.
    pub fn deny(&mut self, channel: &str, err: &JetstanError) -> usize {
        let denied: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, entry)| entry.request.channel.as_str() == channel)
            .map(|(token, _)| *token)
            .collect();
        for token in &denied {
            self.in_flight.remove(token);
            self.failed.push((*token, err.clone()));
        }
        denied.len()
    }

    pub fn on_written(&mut self, failed: Vec<(u32, JetstanError)>) {
        for (token, err) in failed {
            if self.in_flight.remove(&token).is_some() {
                self.failed.push((token, err));
            }
        }
    }

    pub fn on_timer(
        &mut self,
        frame: impl Fn(&PublishRequest, String) -> Frame,
        resolve: impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        let now = Instant::now();
        while let Some(&(at, token)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(entry) = self.in_flight.remove(&token) {
                let err = entry.last_error.unwrap_or_else(|| {
                    JetstanError::new(ErrorCode::PubAckTimeout, text::PUB_ACK_TIMEOUT)
                });
                self.failed.push((token, err));
            }
        }
        // While a write is still waiting on the connection, sending more
        // copies would only pile them up behind it.
        let write_stuck = self.writing.is_some();
        let mut rearm = Vec::new();
        while let Some(&(at, token, attempt)) = self.resends.front() {
            if at > now {
                break;
            }
            self.resends.pop_front();
            if self.is_current(token, attempt) {
                if write_stuck {
                    rearm.push((token, attempt));
                } else {
                    self.resend(token, now, &frame, &resolve);
                }
            }
        }
        if let Some(after) = self.resend_after {
            for (token, attempt) in rearm {
                self.resends.push_back((now + after, token, attempt));
            }
        }
        while let Some(&(at, token, attempt)) = self.nobody.front() {
            if at > now {
                break;
            }
            self.nobody.pop_front();
            if self.is_current(token, attempt) {
                self.resend(token, now, &frame, &resolve);
            }
        }
    }

    fn is_current(&self, token: u32, attempt: u32) -> bool {
        self.in_flight
            .get(&token)
            .is_some_and(|entry| entry.attempt == attempt && !entry.parked)
    }

    fn next_timer(&self) -> Option<Instant> {
        [
            self.deadlines.front().map(|(at, _)| *at),
            self.resends.front().map(|(at, ..)| *at),
            self.nobody.front().map(|(at, ..)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing this publisher's own futures have for the loop.
    /// Cancel-safe: every future here is polled by reference.
    pub async fn due(&mut self) -> Due {
        let timer = self.next_timer();
        tokio::select! {
            Some(resolved) = self.resolving.next(), if !self.resolving.is_empty() => {
                Due::Resolved(resolved)
            }
            failed = wait_for(&mut self.writing) => {
                self.writing = None;
                Due::Written(failed)
            }
            _ = sleep_until(timer) => Due::Timer,
        }
    }

    /// Hands the queued frames to the connection, unless a write is still
    /// going: then they go together once it is done.
    pub fn start_write(&mut self, client: &Client) {
        if self.writing.is_some() || self.queued.is_empty() {
            return;
        }
        let frames = mem::take(&mut self.queued);
        self.writing = Some(write(client.clone(), frames).boxed());
    }

    /// Hands settled publishes to JS and drops queue entries that are
    /// settled already, so the queues stay as small as what is in flight.
    pub fn report(&mut self, outbox: &Outbox) {
        while let Some((_, token)) = self.deadlines.front() {
            if self.in_flight.contains_key(token) {
                break;
            }
            self.deadlines.pop_front();
        }
        for queue in [&mut self.resends, &mut self.nobody] {
            while let Some(&(_, token, attempt)) = queue.front() {
                if self
                    .in_flight
                    .get(&token)
                    .is_some_and(|entry| entry.attempt == attempt)
                {
                    break;
                }
                queue.pop_front();
            }
        }
        outbox.push_publish_results(&mut self.acked, &mut self.failed);
    }
}

async fn wait_for<T>(future: &mut Option<BoxFuture<'static, T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn write(client: Client, frames: Vec<(u32, Frame)>) -> Vec<(u32, JetstanError)> {
    let mut failed = Vec::new();
    for (token, frame) in frames {
        let sent = match frame.headers {
            Some(headers) => {
                client
                    .publish_with_reply_and_headers(
                        frame.subject,
                        frame.reply,
                        headers,
                        frame.payload,
                    )
                    .await
            }
            None => {
                client
                    .publish_with_reply(frame.subject, frame.reply, frame.payload)
                    .await
            }
        };
        if let Err(err) = sent {
            failed.push((
                token,
                JetstanError::new(ErrorCode::PublishFailed, err.to_string()),
            ));
        }
    }
    failed
}

/// `<prefix>.<token>` without the `fmt` machinery, which showed in profiles
/// of the publish path.
pub fn reply_subject(prefix: &str, token: u32) -> String {
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
    use super::*;

    fn request(token: u32, channel: &str) -> PublishRequest {
        PublishRequest {
            headers: None,
            token,
            channel: Subject::from(channel),
            guid: format!("guid-{token}"),
            payload: Bytes::from_static(b"data"),
        }
    }

    fn frame(request: &PublishRequest, reply: String) -> Frame {
        Frame {
            subject: request.channel.clone(),
            reply: reply.into(),
            headers: None,
            payload: request.payload.clone(),
        }
    }

    /// "slow" never resolves (a server slow to answer); the others at once.
    fn resolve(channel: &str) -> Option<BoxFuture<'static, Result<()>>> {
        if channel == "slow" {
            Some(std::future::pending().boxed())
        } else {
            Some(async { Ok(()) }.boxed())
        }
    }

    fn queued(publisher: &Publisher) -> Vec<u32> {
        publisher.queued.iter().map(|(token, _)| *token).collect()
    }

    fn ack(token: u32, status: Option<async_nats::StatusCode>) -> async_nats::Message {
        async_nats::Message {
            subject: Subject::from(reply_subject("_INBOX.t", token)),
            reply: None,
            payload: Bytes::new(),
            headers: None,
            status,
            description: None,
            length: 0,
        }
    }

    #[tokio::test]
    async fn a_channel_being_resolved_holds_back_only_its_own_publishes() {
        let mut publisher = Publisher::new("_INBOX.t".into(), Duration::from_millis(200), true);
        publisher.publish(request(1, "slow"), Instant::now(), frame, resolve);
        publisher.publish(request(2, "fast"), Instant::now(), frame, resolve);
        assert!(queued(&publisher).is_empty());
        let Due::Resolved(resolved) = publisher.due().await else {
            panic!("the fast channel resolves first");
        };
        publisher.on_resolved(resolved, frame, resolve);
        publisher.publish(request(3, "fast"), Instant::now(), frame, resolve);
        publisher.publish(request(4, "slow"), Instant::now(), frame, resolve);
        assert_eq!(queued(&publisher), vec![2, 3]);
        // The slow channel's publishes still get their callback: at the deadline.
        loop {
            if let Due::Timer = publisher.due().await {
                publisher.on_timer(frame, resolve);
            }
            if publisher.in_flight.is_empty() {
                break;
            }
        }
        let mut failed: Vec<(u32, ErrorCode)> = publisher
            .failed
            .iter()
            .map(|(token, err)| (*token, err.code))
            .collect();
        failed.sort_unstable_by_key(|(token, _)| *token);
        assert_eq!(
            failed,
            vec![
                (1, ErrorCode::PubAckTimeout),
                (2, ErrorCode::PubAckTimeout),
                (3, ErrorCode::PubAckTimeout),
                (4, ErrorCode::PubAckTimeout)
            ]
        );
    }

    #[tokio::test]
    async fn a_publish_nobody_took_is_sent_again_and_settled_once() {
        let ready = |_: &str| None;
        let mut publisher = Publisher::new("_INBOX.t".into(), Duration::from_secs(5), false);
        publisher.publish(request(7, "orders"), Instant::now(), frame, ready);
        assert_eq!(queued(&publisher), vec![7]);
        publisher.queued.clear();
        let nobody = ack(7, Some(async_nats::StatusCode::NO_RESPONDERS));
        publisher.on_ack(&nobody, |_, _| Outcome::NobodyTook(None), |_| {});
        assert!(publisher.acked.is_empty() && publisher.failed.is_empty());
        while queued(&publisher).is_empty() {
            if let Due::Timer = publisher.due().await {
                publisher.on_timer(frame, ready);
            }
        }
        assert_eq!(queued(&publisher), vec![7]);
        publisher.on_ack(&ack(7, None), |_, _| Outcome::Stored, |_| {});
        // A second ack for the same publish (the first copy's) is ignored.
        publisher.on_ack(&ack(7, None), |_, _| Outcome::Stored, |_| {});
        assert_eq!(publisher.acked, vec![7]);
        assert!(publisher.failed.is_empty());
    }

    #[test]
    fn reply_subjects_carry_the_token_in_decimal() {
        assert_eq!(reply_subject("_INBOX.x", 0), "_INBOX.x.0");
        assert_eq!(reply_subject("_INBOX.x", 42), "_INBOX.x.42");
        assert_eq!(reply_subject("p", u32::MAX), "p.4294967295");
    }
}
