//! The NATS connection under either backend: how 0.3.2's options become
//! async-nats options, how the first connect is bounded, and how NATS's
//! connection events become 0.3.2's events and commands to the session.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{Client, Event as NatsEvent};

use crate::auth;
use crate::error::{text, ErrorCode, JetstanError, Result};
use crate::options::ConnectOptions;
use crate::outbox::Event;
use crate::session::{Command, Context, Denial, Ending};

pub fn waits_on_first_connect(options: &ConnectOptions) -> bool {
    options.wait_on_first_connect == Some(true)
}

/// Connects within `connectTimeout`; with `waitOnFirstConnect` the client
/// keeps retrying in the background and only the first answer is awaited.
pub async fn connect(ctx: &Context) -> Result<Client> {
    let options = ctx.options();
    let urls = options.server_urls()?;
    let nats = auth::apply(nats_options(ctx), options, &urls)?;
    let addresses = urls
        .iter()
        .map(|url| auth::redact(url))
        .collect::<Vec<_>>()
        .join(", ");
    let connecting = async {
        if waits_on_first_connect(options) {
            nats.retry_on_initial_connect().connect(urls.clone()).await
        } else {
            nats.connect(urls.clone()).await
        }
        .map_err(|err| {
            use async_nats::ConnectErrorKind as Kind;
            match err.kind() {
                // async-nats's own timer (the same connectTimeout) may fire first.
                Kind::TimedOut => {
                    JetstanError::new(ErrorCode::ConnectTimeout, text::CONNECT_TIMEOUT)
                }
                Kind::AuthorizationViolation | Kind::Authentication => JetstanError::new(
                    ErrorCode::AuthFailed,
                    format!(
                        "stan: authorization failed at {addresses} ({})",
                        auth::identity(options, &urls)
                    ),
                ),
                _ if err.kind() == Kind::Tls || from_tls(&err) => JetstanError::new(
                    ErrorCode::TlsError,
                    format!("stan: TLS with {addresses} failed: {err}"),
                ),
                _ => JetstanError::new(
                    ErrorCode::ConnectFailed,
                    format!("Could not connect to server {addresses}: {err}"),
                ),
            }
        })
    };
    tokio::time::timeout(options.connect_timeout(), connecting)
        .await
        .map_err(|_| JetstanError::new(ErrorCode::ConnectTimeout, text::CONNECT_TIMEOUT))?
}

fn nats_options(ctx: &Context) -> async_nats::ConnectOptions {
    let options = ctx.options();
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
    if let Some(ms) = options.ping_interval_ms {
        nats = nats.ping_interval(Duration::from_millis(u64::from(ms.max(1))));
    }
    let wait = Duration::from_millis(u64::from(options.reconnect_time_wait_ms.unwrap_or(2000)));
    let pool_size = options.servers.len().max(1);
    let waits = waits_on_first_connect(options);
    let reporter = ctx.clone();
    // Called before every connection attempt; the count restarts after each
    // successful connect. 0.3.2 waits `reconnectTimeWait` between attempts to
    // the same server, so the first pass through the pool goes without
    // waiting. Every attempt after the first is 0.3.2's `reconnecting`.
    nats = nats.reconnect_delay_callback(move |attempt| {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let shared = &reporter.shared;
        if shared.is_open() || (waits && shared.is_connecting()) {
            shared.outbox.push_event(Event::Reconnecting);
        }
        if attempt <= pool_size {
            Duration::ZERO
        } else {
            wait
        }
    });
    let ctx = ctx.clone();
    nats.event_callback(move |event| {
        let ctx = ctx.clone();
        async move { on_nats_event(&ctx, event) }
    })
}

fn on_nats_event(ctx: &Context, event: NatsEvent) {
    let shared = &ctx.shared;
    if shared.is_ending() {
        return;
    }
    let _span = ctx.span.enter();
    let forwarded = match event {
        NatsEvent::Connected => {
            if !shared.connected_once.swap(true, Ordering::AcqRel) {
                return;
            }
            tracing::info!("reconnected");
            ctx.notify(Command::Reconnected);
            Event::Reconnected
        }
        NatsEvent::Disconnected => {
            tracing::info!("disconnected");
            Event::Disconnected
        }
        NatsEvent::Closed | NatsEvent::ClientError(async_nats::ClientError::MaxReconnects) => {
            tracing::info!("gave up reconnecting");
            ctx.notify(Command::End(Ending::GaveUp));
            return;
        }
        NatsEvent::ServerError(err) => {
            let message = err.to_string();
            if let Some(denial) = Denial::parse(&message) {
                // The server keeps the connection; the session finds whose it was.
                ctx.notify(Command::Denied(denial));
                return;
            }
            if repeats(&message) {
                // Reconnecting would send the same thing and be refused the
                // same way, without end.
                ctx.notify(Command::End(Ending::Lost(JetstanError::new(
                    ErrorCode::ProtocolError,
                    format!("stan: the server refused what this connection sent: {message}"),
                ))));
                return;
            }
            tracing::warn!("server error: {message}");
            Event::Error(JetstanError::new(ErrorCode::ServerError, message))
        }
        // Client-side I/O errors while reconnecting are what `disconnect`
        // and `reconnecting` already report; as `error` events they would
        // trip applications that treat `error` as fatal.
        _ => return,
    };
    shared.outbox.push_event(forwarded);
}

/// A certificate the client refused, or a handshake the server broke off,
/// arrives as an I/O error with rustls's error inside.
fn from_tls(err: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<async_nats::rustls::Error>() {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
            {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

impl Denial {
    /// `Permissions Violation for Publish to "orders"` (or `for Subscription
    /// to "…"`), as the server words it.
    fn parse(message: &str) -> Option<Denial> {
        let lower = message.to_ascii_lowercase();
        let publish = if lower.contains("permissions violation for publish to") {
            true
        } else if lower.contains("permissions violation for subscription to") {
            false
        } else {
            return None;
        };
        let quoted = message.split_once('"')?.1;
        let subject = quoted.split_once('"')?.0.to_string();
        Some(Denial {
            publish,
            subject,
            message: message.trim_start_matches("nats: ").to_string(),
        })
    }
}

/// Server errors that close the connection over something this client
/// sent, and that it would send again after reconnecting.
fn repeats(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "maximum control line",
        "maximum payload",
        "parser error",
        "unknown protocol operation",
    ]
    .iter()
    .any(|known| message.contains(known))
}

#[cfg(test)]
mod tests {
    use super::Denial;

    #[test]
    fn reads_permission_violations() {
        let denial = Denial::parse("nats: Permissions Violation for Publish to \"orders.eu\"")
            .expect("a denial");
        assert!(denial.publish);
        assert_eq!(denial.subject, "orders.eu");
        assert_eq!(
            denial.message,
            "Permissions Violation for Publish to \"orders.eu\""
        );
        let denial = Denial::parse(
            "nats: Permissions Violation for Subscription to \"secret\" using queue \"q\"",
        )
        .expect("a denial");
        assert!(!denial.publish);
        assert_eq!(denial.subject, "secret");
        assert!(Denial::parse("nats: Maximum Payload Violation").is_none());
    }
}
