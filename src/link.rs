//! The NATS connection under either backend: how 0.3.2's options become
//! async-nats options, how the first connect is bounded, and how NATS's
//! connection events become 0.3.2's events. Both backends' sessions own one
//! and plug in through [`LinkOwner`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::{Client, Event as NatsEvent};

use crate::error::{text, ErrorCode, JetstanError, Result};
use crate::options::ConnectOptions;
use crate::outbox::{Event, Outbox};

/// Where a session is; `L` is what it holds while open.
pub enum Phase<L> {
    Connecting,
    Open(Box<L>),
    Closing,
    Closed,
}

impl<L> Phase<L> {
    pub fn link_phase(&self) -> LinkPhase {
        match self {
            Phase::Connecting => LinkPhase::Connecting,
            Phase::Open(_) => LinkPhase::Open,
            Phase::Closing | Phase::Closed => LinkPhase::Ending,
        }
    }

    /// Installs a freshly opened connection, unless `close()` came while it
    /// was opening: then it is handed back for the caller to close. Checked
    /// and set under the caller's one lock, so the race has one winner.
    pub fn install(&mut self, live: L) -> Option<L> {
        if matches!(self, Phase::Connecting) {
            *self = Phase::Open(Box::new(live));
            None
        } else {
            Some(live)
        }
    }

    /// Starts closing an open connection and hands it over; `None` (and the
    /// phase untouched) when it is not open.
    pub fn take_open(&mut self) -> Option<L> {
        match std::mem::replace(self, Phase::Closing) {
            Phase::Open(live) => Some(*live),
            other => {
                *self = other;
                None
            }
        }
    }

    /// `close()`: like [`Phase::take_open`], but a connection still opening
    /// is marked closing too, and the connect finishes the close when its
    /// attempt ends.
    pub fn begin_close(&mut self) -> Option<L> {
        if matches!(self, Phase::Connecting) {
            *self = Phase::Closing;
            return None;
        }
        self.take_open()
    }

    /// Marks a failed connect closed; true when `close()` had already begun.
    pub fn fail_connect(&mut self) -> bool {
        let closing = matches!(self, Phase::Closing);
        *self = Phase::Closed;
        closing
    }
}

/// The end of a connect that failed: `connect_error` (unless the user
/// closed first), `close`, and Node no longer held by this connection.
pub fn report_connect_failure(outbox: &Outbox, err: JetstanError, closed_by_user: bool) {
    if !closed_by_user {
        outbox.push_event(Event::ConnectFailed(err));
    }
    outbox.push_event(Event::Closed);
    outbox.release();
}

/// Where the owning session is, as far as NATS events are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPhase {
    Connecting,
    Open,
    Ending,
}

pub trait LinkOwner: Send + Sync + 'static {
    fn options(&self) -> &ConnectOptions;
    fn outbox(&self) -> &Outbox;
    fn link_phase(&self) -> LinkPhase;
    /// Set by the first NATS `Connected`, which is the initial connect.
    fn connected_once(&self) -> &AtomicBool;
    /// NATS gave up reconnecting (`maxReconnectAttempts`): 0.3.2 emits a
    /// plain `close`.
    fn nats_gave_up(self: Arc<Self>);
}

pub fn waits_on_first_connect(options: &ConnectOptions) -> bool {
    options.wait_on_first_connect == Some(true)
}

/// Connects within `connectTimeout`; with `waitOnFirstConnect` the client
/// keeps retrying in the background and only the first answer is awaited.
pub async fn connect<O: LinkOwner>(owner: &Arc<O>) -> Result<Client> {
    let options = owner.options();
    let nats = nats_options(owner);
    let urls = options.server_urls()?;
    let connecting = async {
        if waits_on_first_connect(options) {
            nats.retry_on_initial_connect().connect(urls).await
        } else {
            nats.connect(urls).await
        }
        .map_err(|err| match err.kind() {
            // async-nats's own timer (the same connectTimeout) may fire first.
            async_nats::ConnectErrorKind::TimedOut => {
                JetstanError::new(ErrorCode::ConnectTimeout, text::CONNECT_TIMEOUT)
            }
            _ => JetstanError::new(
                ErrorCode::ConnectFailed,
                format!("Could not connect to server: {err}"),
            ),
        })
    };
    tokio::time::timeout(options.connect_timeout(), connecting)
        .await
        .map_err(|_| JetstanError::new(ErrorCode::ConnectTimeout, text::CONNECT_TIMEOUT))?
}

fn nats_options<O: LinkOwner>(owner: &Arc<O>) -> async_nats::ConnectOptions {
    let options = owner.options();
    let mut nats = async_nats::ConnectOptions::new()
        .connection_timeout(options.connect_timeout())
        // async-nats counts the first connect as an attempt; 0.3.2 does not.
        .max_reconnects(match options.max_reconnect_attempts {
            Some(n) if n >= 0 => Some(n as usize + 1),
            _ => None,
        });
    if options.no_randomize == Some(true) {
        nats = nats.retain_servers_order();
    }
    if let Some(name) = &options.name {
        nats = nats.name(name);
    }
    if let (Some(user), Some(pass)) = (&options.user, &options.pass) {
        nats = nats.user_and_password(user.clone(), pass.clone());
    } else if let Some(token) = &options.token {
        nats = nats.token(token.clone());
    }
    let wait = Duration::from_millis(u64::from(options.reconnect_time_wait_ms.unwrap_or(2000)));
    let pool_size = options.servers.len().max(1);
    let waits = waits_on_first_connect(options);
    let weak = Arc::downgrade(owner);
    // Called before every connection attempt; the count restarts after each
    // successful connect. 0.3.2 waits `reconnectTimeWait` between attempts to
    // the same server, so the first pass through the pool goes without
    // waiting. Every attempt after the first is 0.3.2's `reconnecting`.
    nats = nats.reconnect_delay_callback(move |attempt| {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        if let Some(owner) = weak.upgrade() {
            let reports = match owner.link_phase() {
                LinkPhase::Open => true,
                LinkPhase::Connecting => waits,
                LinkPhase::Ending => false,
            };
            if reports {
                owner.outbox().push_event(Event::Reconnecting);
            }
        }
        if attempt <= pool_size {
            Duration::ZERO
        } else {
            wait
        }
    });
    let weak: Weak<O> = Arc::downgrade(owner);
    nats.event_callback(move |event| {
        let weak = Weak::clone(&weak);
        async move {
            if let Some(owner) = weak.upgrade() {
                on_nats_event(owner, event);
            }
        }
    })
}

fn on_nats_event<O: LinkOwner>(owner: Arc<O>, event: NatsEvent) {
    if owner.link_phase() == LinkPhase::Ending {
        return;
    }
    let forwarded = match event {
        NatsEvent::Connected => {
            if !owner.connected_once().swap(true, Ordering::AcqRel) {
                return;
            }
            Event::Reconnected
        }
        NatsEvent::Disconnected => Event::Disconnected,
        NatsEvent::Closed | NatsEvent::ClientError(async_nats::ClientError::MaxReconnects) => {
            owner.nats_gave_up();
            return;
        }
        // Client-side I/O errors while reconnecting are what `disconnect`
        // and `reconnecting` already report; as `error` events they would
        // trip applications that treat `error` as fatal.
        NatsEvent::ServerError(err) => {
            Event::Error(JetstanError::new(ErrorCode::ServerError, err.to_string()))
        }
        _ => return,
    };
    owner.outbox().push_event(forwarded);
}
