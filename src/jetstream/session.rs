//! One STAN connection on JetStream: the NATS client, the publish pipeline,
//! the subscriptions, and the order in which they start and stop.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::{jetstream, Client, Subject};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::consumer::{AckKind, AckRegistry, Identity, Stop, SubscriptionTask};
use super::presence::{self, Answer, Presence};
use super::publisher::{PublishRequest, Publisher};
use super::streams::StreamCache;
use crate::error::{text, ErrorCode, JetstanError, Result};
use crate::link::{self, LinkOwner, LinkPhase};
use crate::options::{ConnectOptions, SubscribeOptions};
use crate::outbox::{Event, Outbox, Poll};
use crate::subject::{validate_channel, validate_client_id};

/// Room for the `Nats-Msg-Id` header that every publish carries, counted
/// against the server's max_payload together with the data.
const PUBLISH_HEADER_BYTES: usize = 64;
/// Upper bound on the whole of `close()` after the subscriptions stopped, so
/// a dead server cannot keep the process alive.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a newcomer waits for the holder of its client ID to answer. A
/// live holder answers within milliseconds; "no responders" comes at once.
const CLIENT_ID_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

type Phase = link::Phase<Live>;

struct Live {
    client: Client,
    js: jetstream::Context,
    streams: Arc<StreamCache>,
    publish_tx: mpsc::UnboundedSender<PublishRequest>,
    ack_tx: mpsc::UnboundedSender<(AckKind, Vec<Subject>)>,
    max_payload: usize,
    _client_id_claim: Presence,
    liveness: JoinHandle<()>,
    acker: JoinHandle<()>,
}

struct SubHandle {
    durable: Option<String>,
    stop: oneshot::Sender<Stop>,
    registry: Arc<Mutex<AckRegistry>>,
    task: JoinHandle<()>,
}

pub struct Session {
    options: ConnectOptions,
    outbox: Arc<Outbox>,
    phase: Mutex<Phase>,
    subs: Mutex<HashMap<u32, SubHandle>>,
    connected_once: AtomicBool,
}

impl Session {
    /// Validates the options and starts connecting; the outcome arrives as a
    /// `connect` or `connect_error` event.
    pub fn start(options: ConnectOptions, outbox: Arc<Outbox>) -> Result<Arc<Session>> {
        options.server_urls()?;
        let session = Arc::new(Session {
            options,
            outbox,
            phase: Mutex::new(Phase::Connecting),
            subs: Mutex::new(HashMap::new()),
            connected_once: AtomicBool::new(false),
        });
        let connecting = Arc::clone(&session);
        napi::bindgen_prelude::spawn(connecting.connect());
        Ok(session)
    }

    async fn connect(self: Arc<Self>) {
        match self.open().await {
            Ok(live) => {
                let closed_meanwhile = self.phase.lock().install(live);
                match closed_meanwhile {
                    None => self.outbox.push_event(Event::Connected),
                    Some(live) => self.finish_close(Some(live)).await,
                }
            }
            Err(err) => {
                let closed_by_user = self.phase.lock().fail_connect();
                link::report_connect_failure(&self.outbox, err, closed_by_user);
            }
        }
    }

    async fn open(self: &Arc<Self>) -> Result<Live> {
        let options = &self.options;
        validate_client_id(&options.client_id)?;
        let timeout = options.connect_timeout();
        let waits = link::waits_on_first_connect(options);
        let client = link::connect(self).await?;
        let js = jetstream::new(client.clone());
        if waits {
            self.wait_until_reachable(&js).await?;
        }
        match tokio::time::timeout(timeout, js.query_account()).await {
            Err(_) => {
                return Err(JetstanError::new(
                    ErrorCode::ConnectTimeout,
                    text::CONNECT_TIMEOUT,
                ))
            }
            Ok(Err(err)) => {
                return Err(JetstanError::new(
                    ErrorCode::JetStreamNotEnabled,
                    format!("JetStream is not available on this server: {err}"),
                ))
            }
            Ok(Ok(_)) => {}
        }
        let claim = self.claim_client_id(&client).await?;
        let reply_prefix = client.new_inbox();
        let acks = client
            .subscribe(format!("{reply_prefix}.*"))
            .await
            .map_err(|err| JetstanError::new(ErrorCode::ConnectFailed, err.to_string()))?;
        let streams = Arc::new(StreamCache::new(
            options.cluster_id.clone(),
            options.auto_create_streams.unwrap_or(true),
        ));
        let (publish_tx, publish_rx) = mpsc::unbounded_channel();
        let publisher = Publisher {
            client: client.clone(),
            js: js.clone(),
            streams: Arc::clone(&streams),
            outbox: Arc::clone(&self.outbox),
            ack_timeout: options.ack_timeout(),
            reply_prefix,
            acks,
        };
        tokio::spawn(publisher.run(publish_rx));
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(send_acks(client.clone(), ack_rx));
        let max_payload = client.server_info().max_payload;
        let liveness = tokio::spawn(watch_liveness(
            Arc::downgrade(self),
            js.clone(),
            options.ping_interval(),
            options.max_ping_out(),
        ));
        Ok(Live {
            client,
            js,
            streams,
            publish_tx,
            ack_tx,
            max_payload,
            _client_id_claim: claim,
            liveness,
            acker,
        })
    }

    /// One live connection per (cluster, client ID), as STAN guaranteed: ask
    /// the holder first; only silence or nobody lets us take the ID.
    async fn claim_client_id(&self, client: &Client) -> Result<Presence> {
        let subject = presence::client_subject(&self.options.cluster_id, &self.options.client_id);
        if presence::ask(client, &subject, CLIENT_ID_PROBE_TIMEOUT).await == Answer::Alive {
            return Err(JetstanError::new(
                ErrorCode::ClientIdInUse,
                text::CLIENT_ID_IN_USE,
            ));
        }
        Presence::claim(client, subject).await
    }

    /// Called by the liveness watch after too many unanswered pings.
    fn lose_connection(self: &Arc<Self>) {
        self.end_from_server(Some(JetstanError::new(
            ErrorCode::ConnectionLost,
            text::CONNECTION_LOST,
        )));
    }

    /// Ends an open connection the application did not close: after
    /// `connection_lost` (with its error), or when NATS gave up.
    fn end_from_server(self: &Arc<Self>, lost: Option<JetstanError>) {
        let Some(live) = self.phase.lock().take_open() else {
            return;
        };
        if let Some(err) = lost {
            self.outbox.push_event(Event::ConnectionLost(err));
        }
        let session = Arc::clone(self);
        napi::bindgen_prelude::spawn(async move { session.finish_close(Some(live)).await });
    }

    /// With `waitOnFirstConnect`, the client retries in the background; the
    /// STAN connect happens once the server answers, unless close() came first.
    async fn wait_until_reachable(&self, js: &jetstream::Context) -> Result<()> {
        let attempt = self.options.connect_timeout();
        loop {
            if !matches!(*self.phase.lock(), Phase::Connecting) {
                return Err(JetstanError::closed());
            }
            if let Ok(Ok(_)) = tokio::time::timeout(attempt, js.query_account()).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn is_open(&self) -> bool {
        matches!(*self.phase.lock(), Phase::Open(_))
    }

    /// Queues a publish whose `Nats-Msg-Id` is `guid`. Fails synchronously on a closed connection, a bad
    /// subject or an oversize payload, leaving the connection usable.
    pub fn publish(&self, subject: String, payload: &[u8], token: u32, guid: String) -> Result<()> {
        let phase = self.phase.lock();
        let Phase::Open(live) = &*phase else {
            return Err(JetstanError::closed());
        };
        validate_channel(&subject)?;
        if payload.len() + PUBLISH_HEADER_BYTES > live.max_payload {
            return Err(JetstanError::new(
                ErrorCode::MaxPayload,
                format!(
                    "stan: payload of {} bytes exceeds the server's max_payload of {} bytes",
                    payload.len(),
                    live.max_payload.saturating_sub(PUBLISH_HEADER_BYTES)
                ),
            ));
        }
        let request = PublishRequest {
            token,
            subject,
            guid,
            payload: Bytes::copy_from_slice(payload),
        };
        live.publish_tx
            .send(request)
            .map_err(|_| JetstanError::closed())
    }

    pub fn subscribe(&self, sid: u32, options: SubscribeOptions) -> Result<()> {
        validate_channel(&options.subject)?;
        let phase = self.phase.lock();
        let Phase::Open(live) = &*phase else {
            return Err(JetstanError::closed());
        };
        let identity = Identity::of(&self.options.cluster_id, &self.options.client_id, &options);
        let durable = identity.durable_name().map(str::to_string);
        let mut subs = self.subs.lock();
        if durable.is_some() && subs.values().any(|h| h.durable == durable) {
            return Err(JetstanError::new(
                ErrorCode::DuplicateDurable,
                text::DUPLICATE_DURABLE,
            ));
        }
        let registry = Arc::new(Mutex::new(AckRegistry::default()));
        let task = SubscriptionTask {
            sid,
            cluster_id: self.options.cluster_id.clone(),
            identity,
            options,
            client: live.client.clone(),
            js: live.js.clone(),
            streams: Arc::clone(&live.streams),
            outbox: Arc::clone(&self.outbox),
            registry: Arc::clone(&registry),
            request_timeout: self.options.connect_timeout(),
        };
        let (stop, stopped) = oneshot::channel();
        let task = napi::bindgen_prelude::spawn(task.run(stopped));
        subs.insert(
            sid,
            SubHandle {
                durable,
                stop,
                registry,
                task,
            },
        );
        Ok(())
    }

    /// Ends a subscription; its `unsubscribed` or `closed` event follows.
    pub fn unsubscribe(&self, sid: u32, close: bool) -> Result<()> {
        if !matches!(*self.phase.lock(), Phase::Open(_)) {
            return Err(JetstanError::closed());
        }
        let Some(handle) = self.subs.lock().remove(&sid) else {
            return Err(JetstanError::new(
                ErrorCode::SubscribeFailed,
                "stan: invalid subscription",
            ));
        };
        let reason = if close {
            Stop::Close
        } else {
            Stop::Unsubscribe
        };
        // A task that already ended has reported its own end.
        let _ = handle.stop.send(reason);
        Ok(())
    }

    pub fn settle(&self, sid: u32, ids: &[f64], kind: AckKind) {
        let mut replies = Vec::with_capacity(ids.len());
        if let Some(handle) = self.subs.lock().get(&sid) {
            handle.registry.lock().take(ids, &mut replies);
        }
        if replies.is_empty() {
            return;
        }
        if let Phase::Open(live) = &*self.phase.lock() {
            // After close the acks have nowhere to go; the server redelivers.
            let _ = live.ack_tx.send((kind, replies));
        }
    }

    /// The JetStream context of the open connection, for management calls.
    pub fn jetstream(&self) -> Result<jetstream::Context> {
        match &*self.phase.lock() {
            Phase::Open(live) => Ok(live.js.clone()),
            _ => Err(JetstanError::closed()),
        }
    }

    pub fn poll(&self) -> Poll {
        self.outbox.take()
    }

    /// Starts closing; a `close` event follows once everything has stopped.
    pub fn close(self: &Arc<Self>) {
        let Some(live) = self.phase.lock().begin_close() else {
            return;
        };
        let session = Arc::clone(self);
        napi::bindgen_prelude::spawn(async move { session.finish_close(Some(live)).await });
    }

    async fn finish_close(&self, live: Option<Live>) {
        let handles: Vec<SubHandle> = self.subs.lock().drain().map(|(_, h)| h).collect();
        let mut tasks = Vec::with_capacity(handles.len());
        for handle in handles {
            let _ = handle.stop.send(Stop::ConnectionClosed);
            tasks.push(handle.task);
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Some(live) = live {
            let Live {
                client,
                publish_tx,
                ack_tx,
                liveness,
                acker,
                ..
            } = live;
            liveness.abort();
            drop(publish_tx);
            // Acks JS made before close() must reach the server first, or a
            // durable would resume before them.
            drop(ack_tx);
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, acker).await;
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, client.flush()).await;
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, client.drain()).await;
        }
        *self.phase.lock() = Phase::Closed;
        self.outbox.push_event(Event::Closed);
        self.outbox.release();
    }
}

/// 0.3.2's STAN pings: every `interval` one request the server itself
/// answers (JetStream account info: a real round trip, unlike a socket
/// flush); more than `max_out` in a row without an answer ends the
/// connection with `connection_lost`, even while NATS would keep reconnecting.
async fn watch_liveness(
    session: Weak<Session>,
    js: jetstream::Context,
    interval: Duration,
    max_out: u32,
) {
    let mut unanswered = 0u32;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(session) = session.upgrade() else {
            return;
        };
        if !session.is_open() {
            return;
        }
        unanswered += 1;
        if unanswered > max_out {
            session.lose_connection();
            return;
        }
        drop(session);
        if matches!(
            tokio::time::timeout(interval, js.query_account()).await,
            Ok(Ok(_))
        ) {
            unanswered = 0;
        }
    }
}

async fn send_acks(client: Client, mut batches: mpsc::UnboundedReceiver<(AckKind, Vec<Subject>)>) {
    while let Some((kind, batch)) = batches.recv().await {
        for reply in batch {
            if client.publish(reply, kind.payload()).await.is_err() {
                // Unacked messages come back after ackWait; nothing is lost.
                tracing::debug!("ack not sent: connection closing");
            }
        }
    }
}

impl LinkOwner for Session {
    fn options(&self) -> &ConnectOptions {
        &self.options
    }

    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn link_phase(&self) -> LinkPhase {
        self.phase.lock().link_phase()
    }

    fn connected_once(&self) -> &AtomicBool {
        &self.connected_once
    }

    fn nats_gave_up(self: Arc<Self>) {
        self.end_from_server(None);
    }
}
