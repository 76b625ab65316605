//! The JetStream side of a session: what opening a connection takes (the
//! account check, the client-ID claim, the liveness watch), how a publish
//! is framed and its PubAck read, and how subscriptions are reached.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{jetstream, Client, HeaderMap};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::consumer::{Identity, SubscriptionTask};
use super::presence::{self, Answer, Presence};
use super::streams::StreamCache;
use crate::error::{text, ErrorCode, JetstanError, Result};
use crate::link;
use crate::options::{ConnectOptions, SubscribeOptions};
use crate::publish::{Frame, Outcome, PublishRequest};
use crate::session::{Command, Context, Ending, Opened, Protocol, SubCommand};

/// Room for the `Nats-Msg-Id` header that every publish carries, counted
/// against the server's max_payload together with the data.
const PUBLISH_HEADER_BYTES: usize = 64;
/// How long a newcomer waits for the holder of its client ID to answer. A
/// live holder answers within milliseconds; "no responders" comes at once.
const CLIENT_ID_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// API error codes from here up are the server's trouble, not the publish's.
const SERVER_SIDE: u16 = 500;
const CONFLICT: u16 = 409;

pub struct JetStream;

pub struct Live {
    js: jetstream::Context,
    streams: Arc<StreamCache>,
    _client_id_claim: Presence,
    liveness: JoinHandle<()>,
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

/// Whether something listens where a nats-streaming-server takes connects
/// for this cluster: an answer, or silence rather than "no responders".
async fn stan_answers(options: &ConnectOptions, client: &Client) -> bool {
    let prefix = options
        .discover_prefix
        .as_deref()
        .unwrap_or("_STAN.discover");
    let subject = format!("{prefix}.{}", options.cluster_id);
    let asked = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        client.request(subject, bytes::Bytes::new()),
    )
    .await;
    match asked {
        Err(_) => true,
        Ok(Ok(_)) => true,
        Ok(Err(err)) => !matches!(err.kind(), async_nats::RequestErrorKind::NoResponders),
    }
}

impl Protocol for JetStream {
    type Live = Live;
    const DEDUPLICATES: bool = true;
    const HEADERS: bool = true;
    const FAST_INGEST: bool = true;

    async fn open(ctx: &Context) -> Result<Opened<Live>> {
        let options = ctx.options();
        let timeout = options.connect_timeout();
        let client = link::connect(ctx).await?;
        let js = jetstream::new(client.clone());
        if link::waits_on_first_connect(options) {
            wait_until_reachable(ctx, &js).await?;
        }
        match tokio::time::timeout(timeout, js.query_account()).await {
            Err(_) => {
                return Err(JetstanError::new(
                    ErrorCode::ConnectTimeout,
                    text::CONNECT_TIMEOUT,
                ))
            }
            Ok(Err(err)) => {
                let hint = if stan_answers(options, &client).await {
                    format!(
                        "a nats-streaming-server serves cluster '{}' there: connect with \
                         backend: 'stan', or set JETSTAN_BACKEND=stan",
                        options.cluster_id
                    )
                } else {
                    "enable JetStream on the server (nats-server -js), or for a \
                     nats-streaming-server use backend: 'stan' (or JETSTAN_BACKEND=stan)"
                        .to_string()
                };
                return Err(JetstanError::new(
                    ErrorCode::JetStreamNotEnabled,
                    format!("JetStream is not available on this server ({err}); {hint}"),
                ));
            }
            Ok(Ok(_)) => {}
        }
        let claim = claim_client_id(options, &client).await?;
        let reply_prefix = client.new_inbox();
        let acks = client
            .subscribe(format!("{reply_prefix}.>"))
            .await
            .map_err(|err| JetstanError::new(ErrorCode::ConnectFailed, err.to_string()))?;
        let streams = Arc::new(StreamCache::new(
            options.cluster_id.clone(),
            options.auto_create_streams.unwrap_or(true),
            options.stream_defaults.clone().unwrap_or_default(),
            super::fast_ingest::supported(&client.server_info().version),
        ));
        let liveness = tokio::spawn(crate::driver::counted(watch_liveness(
            ctx.clone(),
            js.clone(),
            options.ping_interval(),
            options.max_ping_out(),
        )));
        Ok(Opened {
            live: Live {
                js: js.clone(),
                streams,
                _client_id_claim: claim,
                liveness,
            },
            client,
            acks,
            reply_prefix,
            subjects: None,
            jetstream: Some(js),
        })
    }

    fn envelope(_: &ConnectOptions, _: &str, _: &str) -> usize {
        PUBLISH_HEADER_BYTES
    }

    fn durable_key(options: &ConnectOptions, subscribe: &SubscribeOptions) -> Option<String> {
        Identity::of(&options.cluster_id, &options.client_id, subscribe)
            .durable_name()
            .map(str::to_string)
    }

    fn subscribe(
        live: &Live,
        ctx: &Context,
        client: &Client,
        sid: u32,
        options: SubscribeOptions,
        commands: mpsc::UnboundedReceiver<SubCommand>,
    ) -> BoxFuture<'static, ()> {
        let shared = &ctx.shared;
        SubscriptionTask {
            sid,
            cluster_id: shared.options.cluster_id.clone(),
            identity: Identity::of(
                &shared.options.cluster_id,
                &shared.options.client_id,
                &options,
            ),
            options,
            client: client.clone(),
            js: live.js.clone(),
            streams: Arc::clone(&live.streams),
            outbox: Arc::clone(&shared.outbox),
            request_timeout: shared.options.connect_timeout(),
        }
        .run(commands)
        .boxed()
    }

    fn frame(_: &Live, publish: &PublishRequest, reply: String) -> Frame {
        let mut headers = HeaderMap::new();
        if let Some(extra) = &publish.headers {
            for (name, value) in extra.iter() {
                headers.append(name.as_str(), value.as_str());
            }
        }
        headers.insert("Nats-Msg-Id", publish.guid());
        Frame {
            subject: publish.channel.clone(),
            reply: reply.into(),
            headers: Some(headers),
            payload: publish.payload.clone(),
        }
    }

    fn outcome(_: &Live, ack: &async_nats::Message, channel: &str) -> Outcome {
        // A status instead of a PubAck: nobody took it (503), or the server
        // gave up on it. Either way it is not stored yet.
        if let Some(status) = ack.status {
            return Outcome::NobodyTook(Some(if status == async_nats::StatusCode::NO_RESPONDERS {
                JetstanError::new(
                    ErrorCode::StreamNotFound,
                    format!("no stream answered for channel '{channel}'"),
                )
            } else {
                JetstanError::new(
                    ErrorCode::ServerError,
                    format!("publish answered with status {status}"),
                )
            }));
        }
        match serde_json::from_slice::<PubAck>(&ack.payload) {
            Ok(PubAck { error: None }) => Outcome::Stored,
            Ok(PubAck {
                error: Some(api_error),
            }) => {
                let err = JetstanError::new(
                    ErrorCode::ServerError,
                    format!("{} (code {})", api_error.description, api_error.code),
                );
                // 5xx: the stream is between leaders or short of a quorum;
                // the same publish may be stored once that passes. A 409
                // "in process" answers a resend while the first copy is still
                // being stored: asked again, the server says whether it was.
                let passing = api_error.code >= SERVER_SIDE
                    || (api_error.code == CONFLICT && api_error.description.contains("in process"));
                if passing {
                    Outcome::NobodyTook(Some(err))
                } else {
                    Outcome::Refused(err)
                }
            }
            Err(err) => Outcome::Refused(JetstanError::new(
                ErrorCode::ServerError,
                format!("unreadable publish ack: {err}"),
            )),
        }
    }

    fn resolve(live: &Live, channel: &str) -> Option<BoxFuture<'static, Result<()>>> {
        let streams = Arc::clone(&live.streams);
        let js = live.js.clone();
        let channel = channel.to_string();
        Some(async move { streams.stream_for(&js, &channel).await.map(drop) }.boxed())
    }

    fn forget(live: &Live, channel: &str) {
        live.streams.forget(channel);
    }

    fn denied_channel<'a>(_: &Live, subject: &'a str) -> Option<&'a str> {
        Some(subject)
    }

    async fn finish(live: Live, _: &Client, _: &Ending) -> Option<JetstanError> {
        live.liveness.abort();
        None
    }
}

/// One live connection per (cluster, client ID), as STAN guaranteed: ask
/// the holder first; only silence or nobody lets us take the ID.
async fn claim_client_id(options: &ConnectOptions, client: &Client) -> Result<Presence> {
    let subject = presence::client_subject(&options.cluster_id, &options.client_id);
    if presence::ask(client, &subject, CLIENT_ID_PROBE_TIMEOUT).await == Answer::Alive {
        return Err(JetstanError::new(
            ErrorCode::ClientIdInUse,
            text::CLIENT_ID_IN_USE,
        ));
    }
    Presence::claim(client, subject).await
}

/// With `waitOnFirstConnect`, the client retries in the background; the
/// STAN connect happens once the server answers, unless close() came first.
async fn wait_until_reachable(ctx: &Context, js: &jetstream::Context) -> Result<()> {
    let attempt = ctx.options().connect_timeout();
    loop {
        if !ctx.shared.is_connecting() {
            return Err(JetstanError::closed());
        }
        if let Ok(Ok(_)) = tokio::time::timeout(attempt, js.query_account()).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 0.3.2's STAN pings: every `interval` one request the server itself
/// answers (JetStream account info: a real round trip, unlike a socket
/// flush); more than `max_out` in a row without an answer ends the
/// connection with `connection_lost`, even while NATS would keep reconnecting.
async fn watch_liveness(ctx: Context, js: jetstream::Context, interval: Duration, max_out: u32) {
    let mut unanswered = 0u32;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if ctx.shared.is_ending() {
            return;
        }
        unanswered += 1;
        if unanswered > max_out {
            ctx.notify(Command::End(Ending::Lost(JetstanError::new(
                ErrorCode::ConnectionLost,
                text::CONNECTION_LOST,
            ))));
            return;
        }
        if matches!(
            tokio::time::timeout(interval, js.query_account()).await,
            Ok(Ok(_))
        ) {
            unanswered = 0;
        }
    }
}
