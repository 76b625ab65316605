//! One connection's lifecycle, whichever the backend: a handle the napi
//! class calls into, and one task that owns everything the connection holds
//! — its phase, the subscription table, the publishes in flight with their
//! deadlines, and the close sequence — reached through a command channel,
//! as async-nats's `Client` reaches its connection task.
//!
//! What differs between JetStream and STAN sits behind [`Protocol`]: how to
//! open, how a publish is framed and its ack read, how a subscription runs,
//! and what ending a connection tells the server.

use std::collections::HashMap;
use std::future::Future;
use std::mem;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::{jetstream, Client, Subject, Subscriber};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::deadline::sleep_until;
use crate::error::{ErrorCode, JetstanError, Result};
use crate::options::{ConnectOptions, SubscribeOptions};
use crate::outbox::{Event, Outbox, Poll};
use crate::publish::{Due, Frame, Outcome, PublishRequest, Publisher};
use crate::subject::{validate_channel, validate_names};

/// `close()` ends with a `close` event within this, whatever the server does.
pub const CLOSE_BOUND: Duration = Duration::from_secs(5);
/// Of [`CLOSE_BOUND`], what is kept for telling the server and flushing
/// after the subscriptions had their turn.
const CLOSE_RESERVE: Duration = Duration::from_millis(1500);
/// Commands handled in one turn of the loop before timers and acks get theirs.
const COMMAND_BATCH: usize = 4096;
/// Publish acks handled in one turn at most.
const ACK_BATCH: usize = 1024;
/// Publishes held in one tick beyond this many cross at once, so the task
/// writes the first of a long tick while JS makes the rest (measured: 256
/// gave 10 % more than holding a whole tick of 1,024).
const HELD_PUBLISHES: usize = 256;
/// A guid is a NUID: 22 ASCII letters and digits.
const GUID_LEN: usize = 22;

const CONNECTING: u8 = 0;
const OPEN: u8 = 1;
const ENDING: u8 = 2;

/// How a subscription ends, which decides what happens to its server state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `unsubscribe()`: ends it and removes durable state.
    Unsubscribe,
    /// `close()`: ends it; a durable stays resumable.
    Close,
    /// The connection is closing.
    ConnectionClosed,
}

/// How a delivered message is settled with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// Processed: never deliver again.
    Ack,
    /// Not processed: deliver again now.
    Nak,
    /// Unprocessable: never deliver again (a poison message).
    Term,
    /// Still being worked on: restart its ack clock (JetStream only).
    Progress,
}

/// What the session sends a subscription task, in the order JS made it: acks
/// made before an unsubscribe reach the server before the subscription ends.
pub enum SubCommand {
    Settle(Vec<f64>, AckKind),
    /// The connection came back: what the subscription asked the server for
    /// may have been lost with the old one.
    Reconnected,
    /// The server refused a request this subscription made while setting up.
    Denied(JetstanError),
    Stop(Stop),
}

/// Why an open connection ends.
#[derive(Debug)]
pub enum Ending {
    /// `close()`: the server is told.
    Closed,
    /// Lost (pings, a protocol error the server would repeat): reported as
    /// `connection_lost`, then closed without telling the server.
    Lost(JetstanError),
    /// NATS gave up reconnecting: a plain `close`, as 0.3.2 emits.
    GaveUp,
}

/// The server refused a publish or a subscription on `subject` for want of
/// permission; it keeps the connection.
#[derive(Debug, Clone)]
pub struct Denial {
    pub publish: bool,
    pub subject: String,
    pub message: String,
}

pub enum Command {
    /// The publishes JS made in one tick.
    Publish(Vec<PublishRequest>),
    Subscribe(u32, SubscribeOptions),
    Unsubscribe(u32, Stop),
    Settle(u32, Vec<f64>, AckKind),
    Close,
    /// From the NATS link and the liveness watch.
    Reconnected,
    Denied(Denial),
    End(Ending),
}

/// What JS reads without asking the task: set by the task, read anywhere.
pub struct Shared {
    pub options: ConnectOptions,
    pub outbox: Arc<Outbox>,
    phase: AtomicU8,
    max_payload: AtomicUsize,
    /// Set by the first NATS `Connected`, which is the initial connect.
    pub connected_once: AtomicBool,
    /// Publishes handed to the session, and their payload bytes.
    published: AtomicU64,
    published_bytes: AtomicU64,
    /// Publishes a fast-ingest batch's ack settled.
    batched: AtomicU64,
    jetstream: OnceLock<jetstream::Context>,
    subjects: OnceLock<ProtocolSubjects>,
}

impl Shared {
    pub fn is_open(&self) -> bool {
        self.phase.load(Ordering::Acquire) == OPEN
    }

    pub fn is_connecting(&self) -> bool {
        self.phase.load(Ordering::Acquire) == CONNECTING
    }

    pub fn is_ending(&self) -> bool {
        self.phase.load(Ordering::Acquire) == ENDING
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Release);
    }
}

/// What a backend hands the session once connected.
pub struct Opened<L> {
    pub live: L,
    pub client: Client,
    /// Publish acks arrive here, each on `<reply_prefix>.<token>` (or, for
    /// a batch, the reply subject of its publish).
    pub acks: Subscriber,
    pub reply_prefix: String,
    pub jetstream: Option<jetstream::Context>,
    /// The stan backend's ConnectResponse subjects, which 0.3.2 exposed.
    pub subjects: Option<ProtocolSubjects>,
}

/// What a nats-streaming-server told this client to use; 0.3.2 kept them
/// as properties of the connection, and services log them.
#[napi_derive::napi(object)]
#[derive(Clone, Debug)]
pub struct ProtocolSubjects {
    pub pub_prefix: String,
    pub sub_requests: String,
    pub unsub_requests: String,
    pub sub_close_requests: String,
    pub close_requests: String,
}

/// What every backend's tasks may use to reach the session and JS.
#[derive(Clone)]
pub struct Context {
    pub shared: Arc<Shared>,
    commands: mpsc::WeakUnboundedSender<Command>,
    /// The connection's span: events inside it name the connection and go
    /// to its `logger`, if it has one.
    pub span: tracing::Span,
}

impl Context {
    pub fn options(&self) -> &ConnectOptions {
        &self.shared.options
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.shared.outbox
    }

    /// Tells the session task something; a session that is gone needs no telling.
    pub fn notify(&self, command: Command) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(command);
        }
    }
}

pub trait Protocol: Send + 'static {
    /// What an open connection holds beyond the NATS client.
    type Live: Send + Sync + 'static;
    /// The server stores a publish once per guid, so a publish whose ack was
    /// lost may be sent again.
    const DEDUPLICATES: bool;
    /// Messages carry headers.
    const HEADERS: bool;
    /// Publishes may go out as fast-ingest batches where the server takes
    /// them (JetStream, nats-server 2.14 on).
    const FAST_INGEST: bool;

    fn open(ctx: &Context) -> impl Future<Output = Result<Opened<Self::Live>>> + Send;

    /// Bytes a publish adds to its payload on the wire, counted against the
    /// server's max_payload.
    fn envelope(options: &ConnectOptions, channel: &str, guid: &str) -> usize;

    /// The key under which a durable subscription may be active once.
    fn durable_key(options: &ConnectOptions, subscribe: &SubscribeOptions) -> Option<String>;

    /// The task of one subscription, which takes its orders from `commands`
    /// and reports its own `ready`, errors and end.
    fn subscribe(
        live: &Self::Live,
        ctx: &Context,
        client: &Client,
        sid: u32,
        options: SubscribeOptions,
        commands: mpsc::UnboundedReceiver<SubCommand>,
    ) -> BoxFuture<'static, ()>;

    /// The wire form of one publish.
    fn frame(live: &Self::Live, publish: &PublishRequest, reply: String) -> Frame;

    /// What an ack on the reply subject says of a publish on `channel`.
    fn outcome(live: &Self::Live, reply: &async_nats::Message, channel: &str) -> Outcome;

    /// Makes sure the channel has somewhere to go (JetStream: a stream);
    /// `None` when the backend needs nothing.
    fn resolve(live: &Self::Live, channel: &str) -> Option<BoxFuture<'static, Result<()>>>;

    /// The channel's destination stopped answering: look again next time.
    fn forget(live: &Self::Live, channel: &str);

    /// The channel a refused publish subject carries, if it is one.
    fn denied_channel<'a>(live: &Self::Live, subject: &'a str) -> Option<&'a str>;

    /// Tells the server the connection ends (STAN's close request) and stops
    /// the backend's own tasks. An error is what `close` reports.
    fn finish(
        live: Self::Live,
        client: &Client,
        ending: &Ending,
    ) -> impl Future<Output = Option<JetstanError>> + Send;
}

/// The napi class's side: validates synchronously, then sends.
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    /// Publishes since JS last flushed (once per tick): they cross to the
    /// task together, one wake of it per tick instead of one per publish.
    /// Only the JS thread touches it; the lock (never contended) is what
    /// lets napi's async methods borrow the connection.
    held: parking_lot::Mutex<Vec<PublishRequest>>,
    /// Channels packed publishes name by index, each with what a publish on
    /// it adds to its payload on the wire. JS thread only, as `held`.
    channels: parking_lot::Mutex<Vec<(Subject, usize)>>,
    envelope: fn(&ConnectOptions, &str, &str) -> usize,
    headers: bool,
}

impl Session {
    /// Checks the options and starts connecting; the outcome arrives as a
    /// `connect` or `connect_error` event.
    pub fn start<P: Protocol>(options: ConnectOptions, outbox: Arc<Outbox>) -> Result<Session> {
        options.server_urls()?;
        let shared = Arc::new(Shared {
            options,
            outbox,
            phase: AtomicU8::new(CONNECTING),
            max_payload: AtomicUsize::new(0),
            connected_once: AtomicBool::new(false),
            published: AtomicU64::new(0),
            published_bytes: AtomicU64::new(0),
            batched: AtomicU64::new(0),
            jetstream: OnceLock::new(),
            subjects: OnceLock::new(),
        });
        let (commands, received) = mpsc::unbounded_channel();
        let sink = if shared.options.logger == Some(true) {
            crate::log::register(&shared.outbox)
        } else {
            0
        };
        let span = tracing::info_span!(
            "connection",
            cluster = %shared.options.cluster_id,
            client = %shared.options.client_id,
            sink
        );
        let ctx = Context {
            shared: Arc::clone(&shared),
            commands: commands.downgrade(),
            span: span.clone(),
        };
        napi::bindgen_prelude::spawn(
            crate::driver::counted(run::<P>(ctx, received)).instrument(span),
        );
        Ok(Session {
            commands,
            shared,
            held: parking_lot::Mutex::new(Vec::new()),
            channels: parking_lot::Mutex::new(Vec::new()),
            envelope: P::envelope,
            headers: P::HEADERS,
        })
    }

    /// Held publishes go first, so commands keep the order JS made them in.
    fn send(&self, command: Command) -> Result<()> {
        if !self.shared.is_open() {
            return Err(JetstanError::closed());
        }
        self.flush();
        self.commands
            .send(command)
            .map_err(|_| JetstanError::closed())
    }

    /// Hands the held publishes to the task. A closed task fails them in
    /// JS, which fails every pending publish on `close`.
    pub fn flush(&self) {
        let held = mem::take(&mut *self.held.lock());
        if !held.is_empty() {
            let _ = self.commands.send(Command::Publish(held));
        }
    }

    /// Checks `channel` once for the packed publishes that name it by the
    /// returned index; also returns what a publish on it adds to its payload
    /// on the wire, which JS checks against `max_payload`.
    pub fn register_channel(&self, channel: String) -> Result<(u32, usize)> {
        validate_channel(&channel)?;
        let envelope = (self.envelope)(&self.shared.options, &channel, "NUIDNUIDNUIDNUIDNUIDNU");
        let mut channels = self.channels.lock();
        channels.push((Subject::from(channel), envelope));
        Ok(((channels.len() - 1) as u32, envelope))
    }

    /// JS starts its channel indexes again (it keeps a bounded number).
    pub fn forget_channels(&self) {
        self.channels.lock().clear();
    }

    /// Publishes without headers, packed by JS: `data` holds each one's guid
    /// and payload back to back; `meta` four numbers per publish: channel
    /// index, token, offset of its guid in `data`, payload length. The bytes
    /// are copied once and each payload is a slice of the copy. JS checked
    /// each publish; one that fails the same checks here fails its callback.
    pub fn publish_packed(&self, data: &[u8], meta: &[u32]) -> Result<()> {
        if !self.shared.is_open() {
            return Err(JetstanError::closed());
        }
        let data = Bytes::copy_from_slice(data);
        let max_payload = self.shared.max_payload.load(Ordering::Relaxed);
        let mut refused = Vec::new();
        let (mut published, mut bytes) = (0u64, 0u64);
        {
            let channels = self.channels.lock();
            let mut held = self.held.lock();
            for publish in meta.chunks_exact(4) {
                let (index, token) = (publish[0] as usize, publish[1]);
                let (at, length) = (publish[2] as usize, publish[3] as usize);
                let end = at + GUID_LEN + length;
                let guid = data.get(at..at + GUID_LEN).unwrap_or_default();
                let Some((channel, envelope)) = channels.get(index) else {
                    refused.push((token, bad_pack("names no channel")));
                    continue;
                };
                if end > data.len() || !guid.iter().all(u8::is_ascii_alphanumeric) {
                    refused.push((token, bad_pack("is out of bounds")));
                    continue;
                }
                if length + envelope > max_payload {
                    refused.push((token, oversize(length, max_payload, *envelope)));
                    continue;
                }
                held.push(PublishRequest {
                    token,
                    channel: channel.clone(),
                    guid: data.slice(at..at + GUID_LEN),
                    payload: data.slice(at + GUID_LEN..end),
                    headers: None,
                });
                published += 1;
                bytes += length as u64;
            }
        }
        if !refused.is_empty() {
            self.shared
                .outbox
                .push_publish_results(&mut Vec::new(), &mut refused);
        }
        self.shared
            .published
            .fetch_add(published, Ordering::Relaxed);
        self.shared
            .published_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        self.flush();
        Ok(())
    }

    /// Queues a publish with the application's headers (the others come
    /// packed); `Nats-Msg-Id` is `guid`. Fails synchronously on a closed
    /// connection, a bad subject or an oversize payload, leaving the
    /// connection usable.
    pub fn publish_with_headers(
        &self,
        channel: String,
        payload: &[u8],
        token: u32,
        guid: String,
        headers: Vec<(String, String)>,
    ) -> Result<()> {
        if !self.shared.is_open() {
            return Err(JetstanError::closed());
        }
        validate_channel(&channel)?;
        if !self.headers {
            return Err(JetstanError::new(
                ErrorCode::BadOption,
                "stan: headers need the jetstream backend; STAN messages carry none",
            ));
        }
        let max_payload = self.shared.max_payload.load(Ordering::Relaxed);
        // `Name: value\r\n` each.
        let envelope = (self.envelope)(&self.shared.options, &channel, &guid)
            + headers
                .iter()
                .map(|(name, value)| name.len() + value.len() + 4)
                .sum::<usize>();
        if payload.len() + envelope > max_payload {
            return Err(oversize(payload.len(), max_payload, envelope));
        }
        let held = {
            let mut held = self.held.lock();
            held.push(PublishRequest {
                token,
                channel: Subject::from(channel),
                guid: Bytes::from(guid),
                payload: Bytes::copy_from_slice(payload),
                headers: Some(Box::new(headers)),
            });
            held.len()
        };
        if held >= HELD_PUBLISHES {
            self.flush();
        }
        self.shared.published.fetch_add(1, Ordering::Relaxed);
        self.shared
            .published_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub fn protocol_subjects(&self) -> Option<ProtocolSubjects> {
        self.shared.subjects.get().cloned()
    }

    pub fn max_payload(&self) -> usize {
        self.shared.max_payload.load(Ordering::Relaxed)
    }

    /// Messages and payload bytes published so far, and how many of them
    /// were acked as part of a fast-ingest batch.
    pub fn published(&self) -> (u64, u64, u64) {
        (
            self.shared.published.load(Ordering::Relaxed),
            self.shared.published_bytes.load(Ordering::Relaxed),
            self.shared.batched.load(Ordering::Relaxed),
        )
    }

    pub fn subscribe(&self, sid: u32, options: SubscribeOptions) -> Result<()> {
        validate_channel(&options.subject)?;
        self.send(Command::Subscribe(sid, options))
    }

    /// Ends a subscription; its `unsubscribed` or `closed` event follows.
    pub fn unsubscribe(&self, sid: u32, close: bool) -> Result<()> {
        let stop = if close {
            Stop::Close
        } else {
            Stop::Unsubscribe
        };
        self.send(Command::Unsubscribe(sid, stop))
    }

    pub fn settle(&self, sid: u32, ids: &[f64], kind: AckKind) {
        // After close the acks have nowhere to go; the server redelivers.
        let _ = self.send(Command::Settle(sid, ids.to_vec(), kind));
    }

    /// The JetStream context of the open connection, for management calls.
    pub fn jetstream(&self) -> Result<jetstream::Context> {
        if !self.shared.is_open() {
            return Err(JetstanError::closed());
        }
        self.shared.jetstream.get().cloned().ok_or_else(|| {
            JetstanError::new(
                ErrorCode::NotSupported,
                "stan: streams, consumers and KV need the jetstream backend",
            )
        })
    }

    pub fn poll(&self) -> Poll {
        self.shared.outbox.take()
    }

    /// Starts closing; a `close` event follows within [`CLOSE_BOUND`].
    pub fn close(&self) {
        self.flush();
        let _ = self.commands.send(Command::Close);
    }
}

/// The session task: connect, serve, close. Every path ends with `close`
/// pushed and the outbox released, so Node is never held past it.
async fn run<P: Protocol>(ctx: Context, mut commands: mpsc::UnboundedReceiver<Command>) {
    let shared = Arc::clone(&ctx.shared);
    let opening = async {
        let options = ctx.options();
        validate_names(&options.cluster_id, &options.client_id)?;
        P::open(&ctx).await
    };
    tokio::pin!(opening);
    let mut close_by: Option<Instant> = None;
    let opened = loop {
        tokio::select! {
            opened = &mut opening => break Some(opened),
            command = commands.recv(), if close_by.is_none() => match command {
                Some(Command::Close) | None => {
                    shared.set_phase(ENDING);
                    close_by = Some(Instant::now() + CLOSE_BOUND);
                }
                // Nothing else is sent before `connect`.
                Some(_) => {}
            },
            _ = sleep_until(close_by) => break None,
        }
    };
    let closed_by_user = close_by.is_some();
    match opened {
        None => {}
        Some(Err(err)) => {
            shared.set_phase(ENDING);
            if !closed_by_user {
                tracing::warn!(code = err.code.as_str(), "connect failed: {}", err.message);
                shared.outbox.push_event(Event::ConnectFailed(err));
            }
        }
        Some(Ok(opened)) => {
            let deadline = close_by.unwrap_or_else(|| Instant::now() + CLOSE_BOUND);
            let mut open = Open::<P>::new(&ctx, opened);
            let (ending, deadline) = if closed_by_user {
                (Ending::Closed, deadline)
            } else {
                if let Some(js) = open.jetstream.take() {
                    let _ = shared.jetstream.set(js);
                }
                if let Some(subjects) = open.subjects.take() {
                    let _ = shared.subjects.set(subjects);
                }
                shared
                    .max_payload
                    .store(open.client.server_info().max_payload, Ordering::Relaxed);
                shared.set_phase(OPEN);
                let info = open.client.server_info();
                tracing::info!(
                    server = %format!("{}:{}", info.host, info.port),
                    server_version = %info.version,
                    "connected"
                );
                shared.outbox.push_event(Event::Connected);
                let ending = open.serve(&mut commands).await;
                shared.set_phase(ENDING);
                (ending, Instant::now() + CLOSE_BOUND)
            };
            if let Ending::Lost(err) = &ending {
                tracing::warn!(code = err.code.as_str(), "connection lost: {}", err.message);
                shared.outbox.push_event(Event::ConnectionLost(err.clone()));
            }
            if let Some(err) = open.close(ending, deadline).await {
                shared.outbox.push_event(Event::CloseFailed(err));
            }
        }
    }
    tracing::info!("closed");
    shared.outbox.push_event(Event::Closed);
    shared.outbox.release();
}

struct SubEntry {
    commands: mpsc::UnboundedSender<SubCommand>,
    channel: String,
    /// Cleared on unsubscribe/close, so the durable can be taken again at once.
    durable: Option<String>,
    task: JoinHandle<()>,
}

fn oversize(length: usize, max_payload: usize, envelope: usize) -> JetstanError {
    JetstanError::new(
        ErrorCode::MaxPayload,
        format!(
            "stan: payload of {length} bytes exceeds the server's max_payload of {} bytes",
            max_payload.saturating_sub(envelope)
        ),
    )
}

fn bad_pack(what: &str) -> JetstanError {
    JetstanError::new(ErrorCode::BadData, format!("stan: a packed publish {what}"))
}

/// Whether publishes may go out as fast-ingest batches on this server.
fn fast_ingest<P: Protocol>(client: &Client) -> bool {
    P::FAST_INGEST && crate::jetstream::fast_ingest::supported(&client.server_info().version)
}

/// An open connection, owned by the session task.
struct Open<P: Protocol> {
    ctx: Context,
    live: P::Live,
    client: Client,
    acks: Subscriber,
    jetstream: Option<jetstream::Context>,
    subjects: Option<ProtocolSubjects>,
    subs: HashMap<u32, SubEntry>,
    ended_tx: mpsc::UnboundedSender<u32>,
    ended: mpsc::UnboundedReceiver<u32>,
    publisher: Publisher,
}

impl<P: Protocol> Open<P> {
    fn new(ctx: &Context, opened: Opened<P::Live>) -> Self {
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let options = ctx.options();
        Open {
            ctx: ctx.clone(),
            publisher: Publisher::new(
                opened.reply_prefix,
                options.ack_timeout(),
                options.max_pub_acks_inflight as usize,
                P::DEDUPLICATES,
                fast_ingest::<P>(&opened.client),
            ),
            live: opened.live,
            client: opened.client,
            acks: opened.acks,
            jetstream: opened.jetstream,
            subjects: opened.subjects,
            subs: HashMap::new(),
            ended_tx,
            ended,
        }
    }

    async fn serve(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Ending {
        loop {
            tokio::select! {
                biased;
                ack = self.acks.next() => {
                    let Some(ack) = ack else { return Ending::GaveUp };
                    self.on_ack(&ack);
                    for _ in 1..ACK_BATCH {
                        match self.acks.next().now_or_never() {
                            Some(Some(ack)) => self.on_ack(&ack),
                            _ => break,
                        }
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { return Ending::Closed };
                    // JS's commands reach this task without passing the
                    // reactor, so what the sockets have (a server that
                    // closed the connection) is read first: an ack is then
                    // kept for after the reconnect instead of written into
                    // a connection that is already gone.
                    tokio::task::yield_now().await;
                    let now = Instant::now();
                    if let Some(ending) = self.handle(command, now) {
                        return ending;
                    }
                    for _ in 1..COMMAND_BATCH {
                        match commands.try_recv() {
                            Ok(command) => {
                                if let Some(ending) = self.handle(command, now) {
                                    return ending;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(sid) = self.ended.recv() => {
                    self.subs.remove(&sid);
                }
                due = self.publisher.due() => {
                    let live = &self.live;
                    let resolve = |channel: &str| P::resolve(live, channel);
                    match due {
                        Due::Resolved(resolved) => self.publisher.on_resolved(resolved, resolve),
                        Due::Written(failed) => self.publisher.on_written(failed),
                        Due::Timer => self.publisher.on_timer(resolve),
                    }
                }
            }
            let live = &self.live;
            self.publisher.release(|channel| P::resolve(live, channel));
            self.publisher
                .start_write(&self.client, |p: &PublishRequest, reply| {
                    P::frame(live, p, reply)
                });
            let batched = self.publisher.report(self.ctx.outbox());
            if batched > 0 {
                self.ctx
                    .shared
                    .batched
                    .fetch_add(batched, Ordering::Relaxed);
            }
        }
    }

    /// Returns how the connection ends, when this command ends it.
    fn handle(&mut self, command: Command, now: Instant) -> Option<Ending> {
        match command {
            Command::Publish(requests) => {
                let live = &self.live;
                for request in requests {
                    self.publisher
                        .publish(request, now, |channel| P::resolve(live, channel));
                }
            }
            Command::Subscribe(sid, options) => self.subscribe(sid, options),
            Command::Unsubscribe(sid, stop) => {
                // A task that already ended has reported its own end.
                if let Some(entry) = self.subs.get_mut(&sid) {
                    entry.durable = None;
                    let _ = entry.commands.send(SubCommand::Stop(stop));
                }
            }
            Command::Settle(sid, ids, kind) => {
                if let Some(entry) = self.subs.get(&sid) {
                    let _ = entry.commands.send(SubCommand::Settle(ids, kind));
                }
            }
            Command::Reconnected => {
                for entry in self.subs.values() {
                    let _ = entry.commands.send(SubCommand::Reconnected);
                }
                // A rolling upgrade (or downgrade) may have moved us to a
                // server of another version.
                self.publisher.fast_ingest(fast_ingest::<P>(&self.client));
                self.publisher
                    .resend_all(|channel| P::resolve(&self.live, channel))
            }
            Command::Denied(denial) => self.on_denied(denial),
            Command::Close => return Some(Ending::Closed),
            Command::End(ending) => return Some(ending),
        }
        None
    }

    fn subscribe(&mut self, sid: u32, options: SubscribeOptions) {
        let durable = P::durable_key(self.ctx.options(), &options);
        if durable.is_some() && self.subs.values().any(|entry| entry.durable == durable) {
            self.ctx.outbox().push_event(Event::SubError(
                sid,
                JetstanError::new(
                    ErrorCode::DuplicateDurable,
                    crate::error::text::DUPLICATE_DURABLE,
                ),
            ));
            return;
        }
        let (commands, received) = mpsc::unbounded_channel();
        let channel = options.subject.clone();
        let run = P::subscribe(&self.live, &self.ctx, &self.client, sid, options, received);
        let ended = self.ended_tx.clone();
        let task = napi::bindgen_prelude::spawn(
            crate::driver::counted(async move {
                run.await;
                let _ = ended.send(sid);
            })
            .in_current_span(),
        );
        self.subs.insert(
            sid,
            SubEntry {
                commands,
                channel,
                durable,
                task,
            },
        );
    }

    /// A refused publish fails the publishes in flight on its channel; a
    /// refused JetStream consumer request fails the subscriptions setting up
    /// on that channel; anything else is the connection's `error`.
    fn on_denied(&mut self, denial: Denial) {
        tracing::warn!(subject = %denial.subject, "{}", denial.message);
        let err = JetstanError::new(
            ErrorCode::PermissionDenied,
            format!("stan: permission denied: {}", denial.message),
        );
        if denial.publish {
            if let Some(channel) = P::denied_channel(&self.live, &denial.subject) {
                if self.publisher.deny(channel, &err) > 0 {
                    return;
                }
            }
        }
        let mut claimed = false;
        if denial.subject.starts_with("$JS.API.CONSUMER.") {
            for entry in self.subs.values() {
                let channel = denial.subject.strip_suffix(entry.channel.as_str());
                if channel.is_some_and(|rest| rest.ends_with('.')) {
                    claimed |= entry.commands.send(SubCommand::Denied(err.clone())).is_ok();
                }
            }
        }
        if !claimed {
            self.ctx.outbox().push_event(Event::Error(err));
        }
    }

    fn on_ack(&mut self, ack: &async_nats::Message) {
        let live = &self.live;
        self.publisher.on_ack(
            ack,
            |ack, channel| P::outcome(live, ack, channel),
            |channel| P::forget(live, channel),
        );
    }

    /// Stops every subscription (each sends the acks queued before this
    /// first), tells the server, flushes: all within `deadline`.
    async fn close(mut self, ending: Ending, deadline: Instant) -> Option<JetstanError> {
        for entry in self.subs.values() {
            let _ = entry
                .commands
                .send(SubCommand::Stop(Stop::ConnectionClosed));
        }
        let subs_by = deadline
            .checked_sub(CLOSE_RESERVE)
            .unwrap_or(deadline)
            .max(Instant::now());
        while !self.subs.is_empty() {
            tokio::select! {
                Some(sid) = self.ended.recv() => { self.subs.remove(&sid); }
                _ = tokio::time::sleep_until(subs_by) => break,
            }
        }
        for (sid, entry) in self.subs.drain() {
            tracing::debug!(sid, "subscription did not stop in time; aborted");
            entry.task.abort();
        }
        drop(self.publisher);
        let Open { live, client, .. } = self;
        let close_error = tokio::time::timeout_at(deadline, P::finish(live, &client, &ending))
            .await
            .unwrap_or_else(|_| {
                matches!(ending, Ending::Closed).then(|| {
                    JetstanError::new(ErrorCode::ServerError, "stan: close request timeout")
                })
            });
        let _ = tokio::time::timeout_at(deadline, client.flush()).await;
        let _ = tokio::time::timeout_at(deadline, client.drain()).await;
        close_error
    }
}
