//! One STAN connection: discover/connect, the heartbeat answerer, client
//! pings, the publish pipeline, the subscriptions, and the close request.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::{Client, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::proto::{
    CloseRequest, CloseResponse, ConnectRequest, ConnectResponse, Ping, PingResponse,
};
use super::publisher::{PublishRequest, Publisher};
use super::subscription::{Command, Stop, SubscriptionTask};
use super::{request, server_error, Request, NO_RESPONDERS_RETRY};
use crate::error::{text, ErrorCode, JetstanError, Result};
use crate::link::{self, LinkOwner, LinkPhase};
use crate::options::{ConnectOptions, SubscribeOptions};
use crate::outbox::{Event, Outbox, Poll};
use crate::subject::validate_channel;

/// The client protocol level we speak: connIDs and client pings.
const PROTOCOL_ONE: i32 = 1;
/// 0.3.2's prefix for the connection's publish-ack subject.
const ACK_SUBJECT_PREFIX: &str = "_STAN.acks";
/// Upper bound on flushing and draining NATS at the end of `close()`.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the server's ConnectResponse told us, plus who we are. Subjects are
/// always taken from the response, never derived: old servers use others.
pub struct Routes {
    pub client_id: String,
    pub conn_id: Bytes,
    pub pub_prefix: String,
    pub sub_requests: String,
    pub unsub_requests: String,
    pub sub_close_requests: String,
    pub close_requests: String,
}

type Phase = link::Phase<Live>;

struct Live {
    client: Client,
    routes: Arc<Routes>,
    publish_tx: mpsc::UnboundedSender<PublishRequest>,
    max_payload: usize,
    /// The heartbeat answerer and the pinger: they stop with the connection.
    background: Vec<JoinHandle<()>>,
}

struct SubHandle {
    durable: Option<String>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

/// Why an open connection ends.
enum Ending {
    /// `close()`: tell the server with a CloseRequest.
    Closed,
    /// Lost (pings) or NATS gave up: the server finds out by itself.
    Dropped,
}

pub struct Session {
    options: ConnectOptions,
    outbox: Arc<Outbox>,
    phase: Mutex<Phase>,
    subs: Mutex<HashMap<u32, SubHandle>>,
    connected_once: AtomicBool,
}

impl Session {
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
                    Some(live) => self.finish_close(Some((live, Ending::Closed))).await,
                }
            }
            Err(err) => {
                let closed_by_user = self.phase.lock().fail_connect();
                link::report_connect_failure(&self.outbox, err, closed_by_user);
            }
        }
    }

    /// The client sequence of the protocol (§4.1): inboxes first, so the
    /// server can probe us from the moment it registers us.
    async fn open(self: &Arc<Self>) -> Result<Live> {
        let options = &self.options;
        let client = link::connect(self).await?;
        let failed = |err: async_nats::SubscribeError| {
            JetstanError::new(ErrorCode::ConnectFailed, err.to_string())
        };
        let heartbeat_inbox = client.new_inbox();
        let heartbeats = client
            .subscribe(heartbeat_inbox.clone())
            .await
            .map_err(failed)?;
        let ping_inbox = Subject::from(client.new_inbox());
        let ping_replies = client.subscribe(ping_inbox.clone()).await.map_err(failed)?;
        let ack_subject = Subject::from(format!("{ACK_SUBJECT_PREFIX}.{}", nuid::next()));
        let acks = client
            .subscribe(ack_subject.clone())
            .await
            .map_err(failed)?;
        let conn_id = Bytes::from(nuid::next().to_string());
        let answering = tokio::spawn(answer_heartbeats(client.clone(), heartbeats));
        let connect_request = ConnectRequest {
            client_id: options.client_id.clone(),
            heartbeat_inbox,
            protocol: PROTOCOL_ONE,
            conn_id: conn_id.clone(),
            // 0.3.2 asks in whole seconds, rounded up.
            ping_interval: i32::try_from(options.ping_interval().as_millis().div_ceil(1000))
                .unwrap_or(i32::MAX),
            ping_max_out: i32::try_from(options.max_ping_out()).unwrap_or(i32::MAX),
        };
        let response = match self.request_connect(&client, &connect_request).await {
            Ok(response) => response,
            Err(err) => {
                answering.abort();
                return Err(err);
            }
        };
        let mut background = vec![answering];
        // Pings only when the *response* enables them (§4.5).
        if response.protocol >= PROTOCOL_ONE && response.ping_interval != 0 {
            let interval = if response.ping_interval < 0 {
                Duration::from_millis(u64::from(response.ping_interval.unsigned_abs()))
            } else {
                Duration::from_secs(u64::from(response.ping_interval.unsigned_abs()))
            };
            let pinger = Pinger {
                session: Arc::downgrade(self),
                client: client.clone(),
                subject: response.ping_requests.clone(),
                inbox: ping_inbox,
                ping: Bytes::from(
                    Ping {
                        conn_id: conn_id.clone(),
                    }
                    .encode_to_vec(),
                ),
                interval,
                max_out: u32::try_from(response.ping_max_out).unwrap_or(0),
            };
            background.push(tokio::spawn(pinger.run(ping_replies)));
        } else {
            drop(ping_replies);
        }
        let routes = Arc::new(Routes {
            client_id: options.client_id.clone(),
            conn_id,
            pub_prefix: response.pub_prefix,
            sub_requests: response.sub_requests,
            unsub_requests: response.unsub_requests,
            sub_close_requests: response.sub_close_requests,
            close_requests: response.close_requests,
        });
        let (publish_tx, publish_rx) = mpsc::unbounded_channel();
        let publisher = Publisher {
            client: client.clone(),
            routes: Arc::clone(&routes),
            outbox: Arc::clone(&self.outbox),
            ack_timeout: options.ack_timeout(),
            ack_subject,
            acks,
        };
        tokio::spawn(publisher.run(publish_rx));
        let max_payload = client.server_info().max_payload;
        Ok(Live {
            client,
            routes,
            publish_tx,
            max_payload,
            background,
        })
    }

    /// With `waitOnFirstConnect`, a server that is not there yet (nobody
    /// answers the discover subject) is asked again until it is, or until
    /// `close()`.
    async fn request_connect(
        &self,
        client: &Client,
        body: &ConnectRequest,
    ) -> Result<ConnectResponse> {
        let discover = format!(
            "{}.{}",
            self.options
                .discover_prefix
                .as_deref()
                .unwrap_or("_STAN.discover"),
            self.options.cluster_id
        );
        loop {
            let unanswered = JetstanError::new(ErrorCode::ConnectTimeout, text::CONNECT_TIMEOUT);
            let answer: Result<ConnectResponse> = request(
                client,
                discover.clone(),
                body,
                self.options.connect_timeout(),
                unanswered,
                "ConnectResponse",
            )
            .await;
            match answer {
                Ok(response) if !response.error.is_empty() => {
                    return Err(server_error(Request::Connect, &response.error))
                }
                Ok(response) => return Ok(response),
                Err(err)
                    if err.code == ErrorCode::ConnectTimeout
                        && link::waits_on_first_connect(&self.options) =>
                {
                    if !matches!(*self.phase.lock(), Phase::Connecting) {
                        return Err(JetstanError::closed());
                    }
                    tokio::time::sleep(NO_RESPONDERS_RETRY).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn lose_connection(self: &Arc<Self>, err: JetstanError) {
        self.end_from_server(Some(err));
    }

    fn end_from_server(self: &Arc<Self>, lost: Option<JetstanError>) {
        let Some(live) = self.phase.lock().take_open() else {
            return;
        };
        if let Some(err) = lost {
            self.outbox.push_event(Event::ConnectionLost(err));
        }
        let session = Arc::clone(self);
        napi::bindgen_prelude::spawn(async move {
            session.finish_close(Some((live, Ending::Dropped))).await
        });
    }

    pub fn publish(&self, subject: String, payload: &[u8], token: u32, guid: String) -> Result<()> {
        let phase = self.phase.lock();
        let Phase::Open(live) = &*phase else {
            return Err(JetstanError::closed());
        };
        validate_channel(&subject)?;
        // The whole encoded PubMsg counts against max_payload.
        let envelope = live.routes.client_id.len()
            + live.routes.conn_id.len()
            + guid.len()
            + subject.len()
            + 32;
        if payload.len() + envelope > live.max_payload {
            return Err(JetstanError::new(
                ErrorCode::MaxPayload,
                format!(
                    "stan: payload of {} bytes exceeds the server's max_payload of {} bytes",
                    payload.len(),
                    live.max_payload.saturating_sub(envelope)
                ),
            ));
        }
        let request = PublishRequest {
            token,
            channel: subject,
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
        let durable = match (&options.durable_name, &options.queue_group) {
            (Some(durable), None) if !durable.is_empty() => {
                Some(format!("{}\u{0}{durable}", options.subject))
            }
            _ => None,
        };
        let mut subs = self.subs.lock();
        // The server refuses it too; checking here saves a round trip and
        // keeps the code the same on both backends.
        if durable.is_some() && subs.values().any(|h| h.durable == durable) {
            return Err(JetstanError::new(
                ErrorCode::DuplicateDurable,
                text::DUPLICATE_DURABLE,
            ));
        }
        let task = SubscriptionTask {
            sid,
            options,
            client: live.client.clone(),
            routes: Arc::clone(&live.routes),
            outbox: Arc::clone(&self.outbox),
            request_timeout: self.options.connect_timeout(),
        };
        let (commands, received) = mpsc::unbounded_channel();
        let task = napi::bindgen_prelude::spawn(task.run(received));
        subs.insert(
            sid,
            SubHandle {
                durable,
                commands,
                task,
            },
        );
        Ok(())
    }

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
        let stop = if close {
            Stop::Close
        } else {
            Stop::Unsubscribe
        };
        // A task that already ended has reported its own end.
        let _ = handle.commands.send(Command::Stop(stop));
        Ok(())
    }

    /// Acks by sequence. STAN cannot refuse a message for good, so a
    /// terminate is an ack too: either way it is never delivered again.
    pub fn settle(&self, sid: u32, ids: &[f64]) {
        if let Some(handle) = self.subs.lock().get(&sid) {
            let sequences = ids.iter().map(|id| *id as u64).collect();
            let _ = handle.commands.send(Command::Ack(sequences));
        }
    }

    pub fn poll(&self) -> Poll {
        self.outbox.take()
    }

    pub fn close(self: &Arc<Self>) {
        let Some(live) = self.phase.lock().begin_close() else {
            return;
        };
        let session = Arc::clone(self);
        napi::bindgen_prelude::spawn(async move {
            session.finish_close(Some((live, Ending::Closed))).await
        });
    }

    async fn finish_close(&self, live: Option<(Live, Ending)>) {
        // Each subscription sends the acks queued before this, then stops.
        let handles: Vec<SubHandle> = self.subs.lock().drain().map(|(_, h)| h).collect();
        let mut tasks = Vec::with_capacity(handles.len());
        for handle in handles {
            let _ = handle.commands.send(Command::Stop(Stop::ConnectionClosed));
            tasks.push(handle.task);
        }
        for task in tasks {
            let _ = task.await;
        }
        let mut close_error = None;
        if let Some((live, ending)) = live {
            let Live {
                client,
                routes,
                publish_tx,
                background,
                ..
            } = live;
            for task in background {
                task.abort();
            }
            drop(publish_tx);
            if matches!(ending, Ending::Closed) {
                close_error = self.request_close(&client, &routes).await.err();
            }
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, client.flush()).await;
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, client.drain()).await;
        }
        *self.phase.lock() = Phase::Closed;
        if let Some(err) = close_error {
            self.outbox.push_event(Event::CloseFailed(err));
        }
        self.outbox.push_event(Event::Closed);
        self.outbox.release();
    }

    async fn request_close(&self, client: &Client, routes: &Routes) -> Result<()> {
        let body = CloseRequest {
            client_id: routes.client_id.clone(),
        };
        let unanswered = JetstanError::new(ErrorCode::ServerError, "stan: close request timeout");
        let response: CloseResponse = request(
            client,
            routes.close_requests.clone(),
            &body,
            self.options.connect_timeout(),
            unanswered,
            "CloseResponse",
        )
        .await?;
        if response.error.is_empty() {
            Ok(())
        } else {
            Err(server_error(Request::Close, &response.error))
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

/// Answers every server heartbeat (and duplicate-client-ID probe) at once:
/// a client that does not is replaced by the next one with its ID.
async fn answer_heartbeats(client: Client, mut heartbeats: Subscriber) {
    while let Some(heartbeat) = heartbeats.next().await {
        if let Some(reply) = heartbeat.reply {
            let _ = client.publish(reply, Bytes::new()).await;
        }
    }
}

/// Client pings (§6.2): more than `max_out` unanswered in a row, or an
/// answer saying the server no longer knows us, loses the connection.
struct Pinger {
    session: Weak<Session>,
    client: Client,
    subject: String,
    inbox: Subject,
    ping: Bytes,
    interval: Duration,
    max_out: u32,
}

impl Pinger {
    async fn run(self, mut replies: Subscriber) {
        let mut out = 0u32;
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    out += 1;
                    if out > self.max_out {
                        self.lose(JetstanError::new(ErrorCode::ConnectionLost, text::CONNECTION_LOST));
                        return;
                    }
                    let _ = self
                        .client
                        .publish_with_reply(self.subject.clone(), self.inbox.clone(), self.ping.clone())
                        .await;
                }
                reply = replies.next() => {
                    let Some(reply) = reply else { return };
                    // A 503 means nobody took the ping: no answer at all.
                    if reply.status.is_some() {
                        continue;
                    }
                    match PingResponse::decode(reply.payload) {
                        Ok(response) if !response.error.is_empty() => {
                            self.lose(server_error(Request::Ping, &response.error));
                            return;
                        }
                        Ok(_) => out = 0,
                        Err(err) => tracing::warn!("{}", super::malformed("PingResponse", err)),
                    }
                }
            }
        }
    }

    fn lose(&self, err: JetstanError) {
        if let Some(session) = self.session.upgrade() {
            session.lose_connection(err);
        }
    }
}
