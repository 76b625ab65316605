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
//!
//! Where the server takes fast-ingest batches (JetStream, nats-server 2.14
//! and later), the publishes of one channel that go out in one write form a
//! batch, ended by the write: the server acks the batch as a whole instead
//! of each publish. A lone publish, one that carries the application's
//! headers, and any second attempt go out alone, so a batch that fails for
//! any reason falls back to the per-publish path, where `Nats-Msg-Id` keeps
//! a message stored once whatever the batch did store.

use std::collections::{HashMap, HashSet, VecDeque};
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
use crate::jetstream::fast_ingest::{self, Op, Reading};
use crate::outbox::Outbox;
use crate::subject::push_decimal;

/// How soon a publish nobody took (no responders: a stream electing a
/// leader, deleted, or a server not yet subscribed) is sent again.
const NOBODY_RETRY: Duration = Duration::from_millis(250);
/// Where the server deduplicates, how long an unanswered publish waits before
/// it is sent again, at most (a quarter of `ackTimeout` when that is shorter).
const UNANSWERED_RETRY: Duration = Duration::from_secs(2);
/// Fewer publishes of a channel in one write than this go out one by one:
/// a batch costs an end-of-batch marker and two acks of its own.
const MIN_BATCH: usize = 4;
/// Room for held publishes kept once they are all sent.
const HELD_KEPT: usize = 16384;

pub struct PublishRequest {
    pub token: u32,
    pub channel: Subject,
    /// ASCII (a NUID), checked where the publish enters.
    pub guid: Bytes,
    pub payload: Bytes,
    /// The application's headers (JetStream only), rarely set: boxed so the
    /// common publish stays small.
    pub headers: Option<Box<Vec<(String, String)>>>,
}

impl PublishRequest {
    pub fn guid(&self) -> &str {
        std::str::from_utf8(&self.guid).unwrap_or_default()
    }
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
    /// Never in a batch again: a batch it was in did not store it.
    alone: bool,
    last_error: Option<JetstanError>,
}

enum Route {
    Ready,
    Resolving(Vec<u32>),
}

type Resolution = (String, Result<()>);

/// A write's frames, each with the publish it carries (none for an
/// end-of-batch marker).
type Frames = Vec<(Option<u32>, Frame)>;

/// The fast-ingest batches of a connection whose server takes them.
struct Batches {
    /// The reply prefix's own unique token: batch ids are `<tag><n>`.
    tag: String,
    next: u32,
    /// Batches whose final ack has not come, by number.
    open: IdMap<u32, Batch>,
    /// Channels whose stream takes no batches (`allow_batched` unset).
    refused: HashSet<String>,
}

/// A channel's share of one write: its publishes that may be batched, and
/// its batch (number, last batch sequence used) once started.
struct Share<'a> {
    channel: &'a str,
    batchable: usize,
    batch: Option<(u32, u64)>,
}

impl Batches {
    fn new(reply_prefix: &str) -> Self {
        Batches {
            tag: reply_prefix
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string(),
            next: 0,
            open: IdMap::default(),
            refused: HashSet::new(),
        }
    }
}

struct Batch {
    channel: String,
    /// Publishes not yet known stored, in batch-sequence order.
    members: VecDeque<(u64, u32)>,
    /// Past this, every member has had its deadline: a batch whose final
    /// ack never came is forgotten.
    expires: Instant,
}

/// Something the publisher's own futures produced, for the loop to apply.
pub enum Due {
    Resolved(Resolution),
    Written(Vec<(u32, JetstanError)>),
    Timer,
}

pub struct Publisher {
    reply_prefix: String,
    ack_timeout: Duration,
    /// `maxPubAcksInflight`: publishes beyond it are held, in order, and
    /// sent as acks free room. Held here rather than in JS, an ack lets the
    /// next one out in the same turn of the runtime, without a round trip
    /// through JS.
    window: usize,
    held: VecDeque<PublishRequest>,
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
    queued: Vec<u32>,
    writing: Option<BoxFuture<'static, Vec<(u32, JetstanError)>>>,
    batches: Option<Batches>,
    /// Publishes a batch's ack settled, since the last report.
    batched: u64,
    acked: Vec<u32>,
    failed: Vec<(u32, JetstanError)>,
}

impl Publisher {
    /// `fast_ingest`: the server takes fast-ingest batches, and acks arrive
    /// for every subject under `reply_prefix`.
    pub fn new(
        reply_prefix: String,
        ack_timeout: Duration,
        window: usize,
        deduplicates: bool,
        fast_ingest: bool,
    ) -> Self {
        let batches = fast_ingest.then(|| Batches::new(&reply_prefix));
        Publisher {
            reply_prefix,
            ack_timeout,
            window: window.max(1),
            held: VecDeque::new(),
            resend_after: deduplicates.then(|| UNANSWERED_RETRY.min(ack_timeout / 4)),
            in_flight: IdMap::default(),
            deadlines: VecDeque::new(),
            resends: VecDeque::new(),
            nobody: VecDeque::new(),
            routes: HashMap::new(),
            resolving: FuturesUnordered::new(),
            queued: Vec::new(),
            writing: None,
            batches,
            batched: 0,
            acked: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Turns fast-ingest batches on or off (after a reconnect, the server may
    /// be another version). Batches in flight are not followed further: a
    /// reconnect sends their members again anyway.
    pub fn fast_ingest(&mut self, on: bool) {
        if on != self.batches.is_some() {
            self.batches = on.then(|| Batches::new(&self.reply_prefix));
        }
    }

    /// `now` is read once per batch of commands: publishes handled together
    /// share a deadline, and the clock stays off the per-message path. A
    /// publish beyond the window is held; its `ackTimeout` starts when it is
    /// sent.
    pub fn publish(
        &mut self,
        request: PublishRequest,
        now: Instant,
        resolve: impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        if !self.held.is_empty() || self.in_flight.len() >= self.window {
            self.held.push_back(request);
            return;
        }
        self.send(request, now, &resolve);
    }

    /// Sends held publishes while settled ones left room.
    pub fn release(&mut self, resolve: impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>) {
        if self.held.is_empty() || self.in_flight.len() >= self.window {
            return;
        }
        let now = Instant::now();
        while self.in_flight.len() < self.window {
            let Some(request) = self.held.pop_front() else {
                break;
            };
            self.send(request, now, &resolve);
        }
        // A burst's backlog is not kept for good.
        if self.held.is_empty() && self.held.capacity() > HELD_KEPT {
            self.held = VecDeque::new();
        }
    }

    fn send(
        &mut self,
        request: PublishRequest,
        now: Instant,
        resolve: &impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        let token = request.token;
        self.deadlines.push_back((now + self.ack_timeout, token));
        self.in_flight.insert(
            token,
            InFlight {
                request,
                attempt: 0,
                parked: false,
                alone: false,
                last_error: None,
            },
        );
        self.dispatch(token, now, resolve);
    }

    /// Queues the publish for the next write, or parks it while its channel
    /// is being resolved.
    fn dispatch(
        &mut self,
        token: u32,
        now: Instant,
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
        let attempt = entry.attempt;
        self.queue(token, attempt, now);
    }

    fn queue(&mut self, token: u32, attempt: u32, now: Instant) {
        self.queued.push(token);
        if let Some(after) = self.resend_after {
            self.resends.push_back((now + after, token, attempt));
        }
    }

    /// A second attempt always goes alone: if a batch lost it, the next
    /// batch is no surer.
    fn resend(
        &mut self,
        token: u32,
        now: Instant,
        resolve: &impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>,
    ) {
        if self.second_attempt(token).is_some() {
            self.dispatch(token, now, resolve);
        }
    }

    /// Marks another attempt of a publish still in flight, which goes alone;
    /// returns its attempt number.
    fn second_attempt(&mut self, token: u32) -> Option<u32> {
        let entry = self.in_flight.get_mut(&token)?;
        entry.attempt += 1;
        entry.alone = true;
        Some(entry.attempt)
    }

    /// After a reconnect, where the server deduplicates: whatever was in
    /// flight may have been lost with the old connection, batches included.
    pub fn resend_all(&mut self, resolve: impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>) {
        if self.resend_after.is_none() {
            return;
        }
        if let Some(batches) = &mut self.batches {
            batches.open.clear();
        }
        let now = Instant::now();
        let tokens: Vec<u32> = self
            .deadlines
            .iter()
            .map(|(_, token)| *token)
            .filter(|token| self.in_flight.get(token).is_some_and(|e| !e.parked))
            .collect();
        for token in tokens {
            self.resend(token, now, &resolve);
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
        let Some(rest) = ack
            .subject
            .strip_prefix(self.reply_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            return;
        };
        if fast_ingest::is_batch_frame(rest) {
            self.on_batch_frame(rest, ack);
            return;
        }
        let Ok(token) = rest.parse::<u32>() else {
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

    /// What the server says of a batch: members it stored are acked, the
    /// ones it did not are sent again alone.
    fn on_batch_frame(&mut self, rest: &str, frame: &async_nats::Message) {
        let Some(batches) = &mut self.batches else {
            return;
        };
        let Some((number, seq)) = fast_ingest::address(rest, &batches.tag) else {
            return;
        };
        let Some(batch) = batches.open.get_mut(&number) else {
            return;
        };
        let mut stored = Vec::new();
        let mut lost = Vec::new();
        match fast_ingest::read(frame) {
            Reading::Flow(through) => {
                while let Some(&(member, token)) = batch.members.front() {
                    if member > through {
                        break;
                    }
                    batch.members.pop_front();
                    stored.push(token);
                }
            }
            Reading::Done(through) => {
                if let Some(batch) = batches.open.remove(&number) {
                    for (member, token) in batch.members {
                        if member <= through {
                            stored.push(token);
                        } else {
                            lost.push(token);
                        }
                    }
                }
            }
            Reading::Refused => {
                if let Some(at) = batch.members.iter().position(|&(member, _)| member == seq) {
                    if let Some((_, token)) = batch.members.remove(at) {
                        lost.push(token);
                    }
                }
            }
            Reading::Failed { disabled, error } => {
                if let Some(batch) = batches.open.remove(&number) {
                    if disabled {
                        tracing::debug!(channel = %batch.channel, "the channel's stream takes no batches");
                        batches.refused.insert(batch.channel);
                    } else {
                        tracing::debug!(channel = %batch.channel, error = %error, "batch failed");
                    }
                    lost.extend(batch.members.into_iter().map(|(_, token)| token));
                }
            }
            Reading::Gap => {}
            Reading::Unreadable(err) => tracing::warn!("{err}"),
        }
        for token in stored {
            if self.in_flight.remove(&token).is_some() {
                self.acked.push(token);
                self.batched += 1;
            }
        }
        if !lost.is_empty() {
            let now = Instant::now();
            for token in lost {
                if let Some(attempt) = self.second_attempt(token) {
                    self.queue(token, attempt, now);
                }
            }
        }
    }

    pub fn on_resolved(
        &mut self,
        (channel, result): Resolution,
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
                        self.dispatch(token, now, &resolve);
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

    pub fn on_timer(&mut self, resolve: impl Fn(&str) -> Option<BoxFuture<'static, Result<()>>>) {
        let now = Instant::now();
        if let Some(batches) = &mut self.batches {
            batches.open.retain(|_, batch| batch.expires > now);
        }
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
                    self.resend(token, now, &resolve);
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
                self.resend(token, now, &resolve);
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

    /// Hands the queued publishes to the connection, unless a write is still
    /// going: then they go together once it is done.
    pub fn start_write(
        &mut self,
        client: &Client,
        frame: impl Fn(&PublishRequest, String) -> Frame,
    ) {
        if self.writing.is_some() || self.queued.is_empty() {
            return;
        }
        let frames = self.frames(frame);
        if !frames.is_empty() {
            self.writing = Some(write(client.clone(), frames).boxed());
        }
    }

    /// The queued publishes as frames, in the order they were queued: a
    /// channel with enough of them in this write gets a batch, ended here.
    fn frames(&mut self, frame: impl Fn(&PublishRequest, String) -> Frame) -> Frames {
        let queued = mem::take(&mut self.queued);
        let mut frames = Frames::with_capacity(queued.len() + 1);
        let Some(batches) = &mut self.batches else {
            for token in queued {
                if let Some(entry) = self.in_flight.get(&token) {
                    let reply = reply_subject(&self.reply_prefix, token);
                    frames.push((Some(token), frame(&entry.request, reply)));
                }
            }
            return frames;
        };
        let expires = Instant::now() + self.ack_timeout;
        // Each publish with the share of its channel, if it may be batched.
        let mut shares: Vec<Share> = Vec::new();
        let mut publishes: Vec<(u32, Option<usize>)> = Vec::with_capacity(queued.len());
        for token in queued {
            let Some(entry) = self.in_flight.get(&token) else {
                continue;
            };
            let channel = entry.request.channel.as_str();
            let batchable = !entry.alone
                && entry.request.headers.is_none()
                && !batches.refused.contains(channel);
            let share =
                batchable.then(
                    || match shares.iter().position(|share| share.channel == channel) {
                        Some(at) => {
                            shares[at].batchable += 1;
                            at
                        }
                        None => {
                            shares.push(Share {
                                channel,
                                batchable: 1,
                                batch: None,
                            });
                            shares.len() - 1
                        }
                    },
                );
            publishes.push((token, share));
        }
        for (token, share) in publishes {
            let Some(entry) = self.in_flight.get(&token) else {
                continue;
            };
            let share = share
                .map(|at| &mut shares[at])
                .filter(|share| share.batchable >= MIN_BATCH);
            let reply = match share {
                Some(share) => {
                    let (number, seq) = share.batch.get_or_insert_with(|| {
                        batches.next = batches.next.wrapping_add(1);
                        batches.open.insert(
                            batches.next,
                            Batch {
                                channel: share.channel.to_string(),
                                members: VecDeque::new(),
                                expires,
                            },
                        );
                        (batches.next, 0)
                    });
                    *seq += 1;
                    if let Some(open) = batches.open.get_mut(number) {
                        open.members.push_back((*seq, token));
                    }
                    let op = if *seq == 1 { Op::Start } else { Op::Add };
                    fast_ingest::reply(&self.reply_prefix, &batches.tag, *number, *seq, op)
                }
                None => reply_subject(&self.reply_prefix, token),
            };
            frames.push((Some(token), frame(&entry.request, reply)));
        }
        for share in shares {
            if let Some((number, seq)) = share.batch {
                let reply =
                    fast_ingest::reply(&self.reply_prefix, &batches.tag, number, seq + 1, Op::End);
                frames.push((
                    None,
                    Frame {
                        subject: Subject::from(share.channel),
                        reply: reply.into(),
                        headers: None,
                        payload: Bytes::new(),
                    },
                ));
            }
        }
        frames
    }

    /// Hands settled publishes to JS and drops queue entries that are
    /// settled already, so the queues stay as small as what is in flight.
    /// Returns how many publishes a batch's ack settled since the last call.
    pub fn report(&mut self, outbox: &Outbox) -> u64 {
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
        mem::take(&mut self.batched)
    }
}

async fn wait_for<T>(future: &mut Option<BoxFuture<'static, T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn write(client: Client, frames: Frames) -> Vec<(u32, JetstanError)> {
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
        if let (Err(err), Some(token)) = (sent, token) {
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
    let mut reply = String::with_capacity(prefix.len() + 11);
    reply.push_str(prefix);
    reply.push('.');
    push_decimal(&mut reply, u64::from(token));
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
            guid: Bytes::from(format!("guid-{token}")),
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

    /// A window of 1,024: as good as none for these tests.
    fn publisher(
        reply_prefix: &str,
        ack_timeout: Duration,
        deduplicates: bool,
        fast_ingest: bool,
    ) -> Publisher {
        Publisher::new(
            reply_prefix.into(),
            ack_timeout,
            1024,
            deduplicates,
            fast_ingest,
        )
    }

    fn queued(publisher: &Publisher) -> Vec<u32> {
        publisher.queued.clone()
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
        let mut publisher = publisher("_INBOX.t", Duration::from_millis(200), true, false);
        publisher.publish(request(1, "slow"), Instant::now(), resolve);
        publisher.publish(request(2, "fast"), Instant::now(), resolve);
        assert!(queued(&publisher).is_empty());
        let Due::Resolved(resolved) = publisher.due().await else {
            panic!("the fast channel resolves first");
        };
        publisher.on_resolved(resolved, resolve);
        publisher.publish(request(3, "fast"), Instant::now(), resolve);
        publisher.publish(request(4, "slow"), Instant::now(), resolve);
        assert_eq!(queued(&publisher), vec![2, 3]);
        // The slow channel's publishes still get their callback: at the deadline.
        loop {
            if let Due::Timer = publisher.due().await {
                publisher.on_timer(resolve);
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
        let mut publisher = publisher("_INBOX.t", Duration::from_secs(5), false, false);
        publisher.publish(request(7, "orders"), Instant::now(), ready);
        assert_eq!(queued(&publisher), vec![7]);
        publisher.queued.clear();
        let nobody = ack(7, Some(async_nats::StatusCode::NO_RESPONDERS));
        publisher.on_ack(&nobody, |_, _| Outcome::NobodyTook(None), |_| {});
        assert!(publisher.acked.is_empty() && publisher.failed.is_empty());
        while queued(&publisher).is_empty() {
            if let Due::Timer = publisher.due().await {
                publisher.on_timer(ready);
            }
        }
        assert_eq!(queued(&publisher), vec![7]);
        publisher.on_ack(&ack(7, None), |_, _| Outcome::Stored, |_| {});
        // A second ack for the same publish (the first copy's) is ignored.
        publisher.on_ack(&ack(7, None), |_, _| Outcome::Stored, |_| {});
        assert_eq!(publisher.acked, vec![7]);
        assert!(publisher.failed.is_empty());
    }

    fn answer(reply: &str, json: &'static str) -> async_nats::Message {
        async_nats::Message {
            subject: Subject::from(reply),
            reply: None,
            payload: Bytes::from_static(json.as_bytes()),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    fn replies(frames: &Frames) -> Vec<(Option<u32>, String)> {
        frames
            .iter()
            .map(|(token, frame)| (*token, frame.reply.to_string()))
            .collect()
    }

    fn stored(_: &async_nats::Message, _: &str) -> Outcome {
        Outcome::Stored
    }

    #[test]
    fn a_channels_publishes_in_one_write_form_a_batch_its_acks_settle() {
        let ready = |_: &str| None;
        let mut publisher = publisher("_INBOX.tag", Duration::from_secs(5), true, true);
        let now = Instant::now();
        for token in 1..=5 {
            publisher.publish(request(token, "orders"), now, ready);
        }
        publisher.publish(request(6, "other"), now, ready);
        let batch = |seq: u64, op: Op| fast_ingest::reply("_INBOX.tag", "tag", 1, seq, op);
        assert_eq!(
            replies(&publisher.frames(frame)),
            vec![
                (Some(1), batch(1, Op::Start)),
                (Some(2), batch(2, Op::Add)),
                (Some(3), batch(3, Op::Add)),
                (Some(4), batch(4, Op::Add)),
                (Some(5), batch(5, Op::Add)),
                (Some(6), "_INBOX.tag.6".to_string()),
                (None, batch(6, Op::End)),
            ]
        );
        let flow = answer(&batch(3, Op::Add), r#"{"type":"ack","seq":3,"msgs":256}"#);
        publisher.on_ack(&flow, stored, |_| {});
        assert_eq!(publisher.acked, vec![1, 2, 3]);
        // The batch ended after storing 4 of its 5: the fifth goes again, alone.
        let done = answer(
            &batch(6, Op::End),
            r#"{"stream":"S","seq":40,"batch":"tag1","count":4}"#,
        );
        publisher.on_ack(&done, stored, |_| {});
        assert_eq!(publisher.acked, vec![1, 2, 3, 4]);
        assert_eq!(
            replies(&publisher.frames(frame)),
            vec![(Some(5), "_INBOX.tag.5".to_string())]
        );
        assert_eq!(publisher.batched, 4);
        // A late copy of the final ack changes nothing.
        publisher.on_ack(&done, stored, |_| {});
        assert_eq!(publisher.acked, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_stream_that_takes_no_batches_gets_its_publishes_one_by_one() {
        let ready = |_: &str| None;
        let mut publisher = publisher("_INBOX.tag", Duration::from_secs(5), true, true);
        let now = Instant::now();
        for token in 1..=4 {
            publisher.publish(request(token, "orders"), now, ready);
        }
        let frames = publisher.frames(frame);
        assert_eq!(frames.len(), 5);
        let disabled = answer(
            &fast_ingest::reply("_INBOX.tag", "tag", 1, 1, Op::Start),
            r#"{"error":{"code":400,"err_code":10205,"description":"batch publish is disabled"},"stream":"S","seq":0}"#,
        );
        publisher.on_ack(&disabled, stored, |_| {});
        assert!(publisher.acked.is_empty() && publisher.failed.is_empty());
        for token in 5..=8 {
            publisher.publish(request(token, "orders"), now, ready);
        }
        let expected: Vec<(Option<u32>, String)> = (1..=8)
            .map(|token| (Some(token), reply_subject("_INBOX.tag", token)))
            .collect();
        assert_eq!(replies(&publisher.frames(frame)), expected);
    }

    #[test]
    fn publishes_beyond_the_window_wait_in_order_and_go_as_acks_free_room() {
        let ready = |_: &str| None;
        let mut publisher =
            Publisher::new("_INBOX.t".into(), Duration::from_secs(5), 2, false, false);
        for token in 1..=5 {
            publisher.publish(request(token, "orders"), Instant::now(), ready);
        }
        assert_eq!(queued(&publisher), vec![1, 2]);
        publisher.release(ready);
        assert_eq!(queued(&publisher), vec![1, 2], "no room yet");
        publisher.on_ack(&ack(2, None), stored, |_| {});
        publisher.release(ready);
        assert_eq!(queued(&publisher), vec![1, 2, 3]);
        // A publish made now waits behind those held before it.
        publisher.publish(request(6, "orders"), Instant::now(), ready);
        publisher.on_ack(&ack(1, None), stored, |_| {});
        publisher.on_ack(&ack(3, None), stored, |_| {});
        publisher.release(ready);
        assert_eq!(queued(&publisher), vec![1, 2, 3, 4, 5]);
        assert_eq!(publisher.acked, vec![2, 1, 3]);
        assert_eq!(
            publisher.held.iter().map(|r| r.token).collect::<Vec<_>>(),
            vec![6]
        );
    }

    #[test]
    fn reply_subjects_carry_the_token_in_decimal() {
        assert_eq!(reply_subject("_INBOX.x", 0), "_INBOX.x.0");
        assert_eq!(reply_subject("_INBOX.x", 42), "_INBOX.x.42");
        assert_eq!(reply_subject("p", u32::MAX), "p.4294967295");
    }
}
