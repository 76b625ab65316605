//! The STAN side of a session: discover/connect, the heartbeat answerer,
//! client pings, PubMsg framing and PubAck reading, and the close request.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subject, Subscriber};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::proto::{
    CloseRequest, CloseResponse, ConnectRequest, ConnectResponse, Ping, PingResponse, PubAck,
    PubMsg,
};
use super::subscription::SubscriptionTask;
use super::{malformed, request, server_error, Request, Routes, NO_RESPONDERS_RETRY};
use crate::error::{text, ErrorCode, JetstanError, Result};
use crate::link;
use crate::options::{ConnectOptions, SubscribeOptions};
use crate::publish::{Frame, Outcome, PublishRequest};
use crate::session::{Command, Context, Ending, Opened, Protocol, ProtocolSubjects, SubCommand};

/// The client protocol level we speak: connIDs and client pings.
const PROTOCOL_ONE: i32 = 1;
/// 0.3.2's prefix for the connection's publish-ack subject.
const ACK_SUBJECT_PREFIX: &str = "_STAN.acks";
/// Length of a NUID, which is what connection IDs are.
const CONN_ID_LEN: usize = 22;

pub struct Stan;

pub struct Live {
    routes: Arc<Routes>,
    /// 0.3.2's `connectTimeout`, which bounds the close request too.
    request_timeout: Duration,
    /// The heartbeat answerer and the pinger: they stop with the connection.
    background: Vec<JoinHandle<()>>,
}

impl Protocol for Stan {
    type Live = Live;
    /// nats-streaming-server stores every PubMsg it gets, so only a publish
    /// nobody took is sent again.
    const DEDUPLICATES: bool = false;
    const HEADERS: bool = false;
    const FAST_INGEST: bool = false;

    /// The client sequence of the protocol (§4.1): inboxes first, so the
    /// server can probe us from the moment it registers us.
    async fn open(ctx: &Context) -> Result<Opened<Live>> {
        let options = ctx.options();
        let client = link::connect(ctx).await?;
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
        // Each publish's ack comes to `<ack prefix>.<token>`: the server
        // answers on the reply subject of the PubMsg.
        let reply_prefix = format!("{ACK_SUBJECT_PREFIX}.{}", nuid::next());
        let acks = client
            .subscribe(format!("{reply_prefix}.*"))
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
        let response = match request_connect(ctx, &client, &connect_request).await {
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
                ctx: ctx.clone(),
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
            background.push(tokio::spawn(crate::driver::counted(
                pinger.run(ping_replies),
            )));
        } else {
            drop(ping_replies);
        }
        let subjects = ProtocolSubjects {
            pub_prefix: response.pub_prefix.clone(),
            sub_requests: response.sub_requests.clone(),
            unsub_requests: response.unsub_requests.clone(),
            sub_close_requests: response.sub_close_requests.clone(),
            close_requests: response.close_requests.clone(),
        };
        let routes = Arc::new(Routes {
            client_id: options.client_id.clone(),
            conn_id,
            pub_prefix: response.pub_prefix,
            sub_requests: response.sub_requests,
            unsub_requests: response.unsub_requests,
            sub_close_requests: response.sub_close_requests,
            close_requests: response.close_requests,
        });
        Ok(Opened {
            live: Live {
                routes,
                request_timeout: options.connect_timeout(),
                background,
            },
            client,
            acks,
            reply_prefix,
            jetstream: None,
            subjects: Some(subjects),
        })
    }

    /// The whole encoded PubMsg counts against max_payload.
    fn envelope(options: &ConnectOptions, channel: &str, guid: &str) -> usize {
        options.client_id.len() + CONN_ID_LEN + guid.len() + channel.len() + 32
    }

    fn durable_key(_: &ConnectOptions, subscribe: &SubscribeOptions) -> Option<String> {
        // The server refuses a second one too; checking here saves a round
        // trip and keeps the code the same on both backends.
        match (&subscribe.durable_name, &subscribe.queue_group) {
            (Some(durable), None) if !durable.is_empty() => {
                Some(format!("{}\u{0}{durable}", subscribe.subject))
            }
            _ => None,
        }
    }

    fn subscribe(
        live: &Live,
        ctx: &Context,
        client: &Client,
        sid: u32,
        options: SubscribeOptions,
        commands: mpsc::UnboundedReceiver<SubCommand>,
    ) -> BoxFuture<'static, ()> {
        SubscriptionTask {
            sid,
            options,
            client: client.clone(),
            routes: Arc::clone(&live.routes),
            outbox: Arc::clone(ctx.outbox()),
            request_timeout: ctx.options().connect_timeout(),
        }
        .run(commands)
        .boxed()
    }

    fn frame(live: &Live, publish: &PublishRequest, reply: String) -> Frame {
        let routes = &live.routes;
        let message = PubMsg {
            client_id: routes.client_id.clone(),
            guid: publish.guid().to_string(),
            subject: publish.channel.to_string(),
            reply: String::new(),
            data: publish.payload.clone(),
            conn_id: routes.conn_id.clone(),
        };
        Frame {
            subject: format!("{}.{}", routes.pub_prefix, publish.channel.as_str()).into(),
            reply: reply.into(),
            headers: None,
            payload: Bytes::from(message.encode_to_vec()),
        }
    }

    fn outcome(_: &Live, reply: &async_nats::Message, _: &str) -> Outcome {
        // A status here means nobody took the publish (a server that is not
        // subscribed yet): 0.3.2 never sees one and would time out.
        if reply.status.is_some() {
            return Outcome::NobodyTook(None);
        }
        match PubAck::decode(reply.payload.clone()) {
            Ok(ack) if ack.error.is_empty() => Outcome::Stored,
            Ok(ack) => Outcome::Refused(server_error(Request::Publish, &ack.error)),
            // Nothing to trust in it; the publish it was for times out.
            Err(err) => Outcome::Unreadable(malformed("PubAck", err)),
        }
    }

    fn resolve(_: &Live, _: &str) -> Option<BoxFuture<'static, Result<()>>> {
        None
    }

    fn forget(_: &Live, _: &str) {}

    fn denied_channel<'a>(live: &Live, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(live.routes.pub_prefix.as_str())?
            .strip_prefix('.')
    }

    async fn finish(live: Live, client: &Client, ending: &Ending) -> Option<JetstanError> {
        for task in &live.background {
            task.abort();
        }
        match ending {
            Ending::Closed => request_close(client, &live.routes, live.request_timeout)
                .await
                .err(),
            // Lost, or NATS gave up: the server finds out by itself.
            Ending::Lost(_) | Ending::GaveUp => None,
        }
    }
}

/// With `waitOnFirstConnect`, a server that is not there yet (nobody
/// answers the discover subject) is asked again until it is, or until
/// `close()`.
async fn request_connect(
    ctx: &Context,
    client: &Client,
    body: &ConnectRequest,
) -> Result<ConnectResponse> {
    let options = ctx.options();
    let discover = format!(
        "{}.{}",
        options
            .discover_prefix
            .as_deref()
            .unwrap_or("_STAN.discover"),
        options.cluster_id
    );
    loop {
        let unanswered = JetstanError::new(ErrorCode::ConnectTimeout, text::CONNECT_TIMEOUT);
        let answer: Result<ConnectResponse> = request(
            client,
            discover.clone(),
            body,
            options.connect_timeout(),
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
                    && link::waits_on_first_connect(options) =>
            {
                if !ctx.shared.is_connecting() {
                    return Err(JetstanError::closed());
                }
                tokio::time::sleep(NO_RESPONDERS_RETRY).await;
            }
            Err(err) => return Err(err),
        }
    }
}

async fn request_close(client: &Client, routes: &Routes, timeout: Duration) -> Result<()> {
    let body = CloseRequest {
        client_id: routes.client_id.clone(),
    };
    let unanswered = JetstanError::new(ErrorCode::ServerError, "stan: close request timeout");
    let response: CloseResponse = request(
        client,
        routes.close_requests.clone(),
        &body,
        timeout,
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
    ctx: Context,
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
                        Err(err) => tracing::warn!("{}", malformed("PingResponse", err)),
                    }
                }
            }
        }
    }

    fn lose(&self, err: JetstanError) {
        self.ctx.notify(Command::End(Ending::Lost(err)));
    }
}
