//! Options as they cross the boundary. The JS wrapper maps 0.3.2's many input
//! shapes (port number, URL string, aliases) onto these; Rust owns the
//! normalisation of server addresses and the defaults that matter to the core.

use std::time::Duration;

use napi_derive::napi;

use crate::error::{ErrorCode, JetstanError, Result};

/// Connection settings, already mapped from 0.3.2's option names.
#[napi(object)]
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    pub cluster_id: String,
    pub client_id: String,
    /// Server URLs as users wrote them: `nats://`, `tls://`, `http://host:port` or bare `host:port`.
    pub servers: Vec<String>,
    pub name: Option<String>,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
    /// An nkey seed (`SU…`): the server's nonce is signed with it.
    pub nkey_seed: Option<String>,
    /// The contents of a `.creds` file (user JWT and seed).
    pub credentials: Option<String>,
    pub tls: Option<crate::auth::TlsOptions>,
    /// NATS protocol pings (async-nats's default, 60 s, when absent).
    pub ping_interval_ms: Option<u32>,
    /// Log lines of this connection go to its outbox (JS's `logger`).
    pub logger: Option<bool>,
    /// Limits of the streams jetstan creates for channels.
    pub stream_defaults: Option<StreamDefaults>,
    pub connect_timeout_ms: u32,
    pub ack_timeout_ms: u32,
    /// Publishes on the wire without their ack, at most; more wait in the
    /// session task.
    pub max_pub_acks_inflight: u32,
    /// `-1` or absent means reconnect forever, as 0.3.2 sets up its own NATS connection.
    pub max_reconnect_attempts: Option<i32>,
    pub reconnect_time_wait_ms: Option<u32>,
    pub no_randomize: Option<bool>,
    /// When false, publishing to or subscribing on a channel that no stream captures fails
    /// with `STREAM_NOT_FOUND` instead of creating a stream.
    pub auto_create_streams: Option<bool>,
    /// Interval of the liveness pings; `stan_max_ping_out` unanswered ones in a row mean
    /// `connection_lost`.
    pub stan_ping_interval_ms: Option<u32>,
    pub stan_max_ping_out: Option<u32>,
    /// Keep retrying an unreachable server instead of failing the first connect.
    pub wait_on_first_connect: Option<bool>,
    /// `jetstream` (default) or `stan` (a nats-streaming-server).
    pub backend: Option<String>,
    /// Where a nats-streaming-server listens for connects (`stan` backend).
    pub discover_prefix: Option<String>,
}

impl ConnectOptions {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.connect_timeout_ms.max(1)))
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.ack_timeout_ms.max(1)))
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(u64::from(
            self.stan_ping_interval_ms.unwrap_or(5000).max(10),
        ))
    }

    pub fn max_ping_out(&self) -> u32 {
        self.stan_max_ping_out.unwrap_or(3).max(1)
    }

    pub fn server_urls(&self) -> Result<Vec<String>> {
        if self.servers.is_empty() {
            return Ok(vec!["nats://localhost:4222".to_string()]);
        }
        self.servers.iter().map(|s| normalize_url(s)).collect()
    }
}

/// `streamDefaults`, checked by JS: what an auto-created channel stream
/// keeps. Absent fields take STAN's per-channel defaults.
#[napi(object)]
#[derive(Clone, Debug, Default)]
pub struct StreamDefaults {
    pub max_msgs: Option<i64>,
    pub max_bytes: Option<i64>,
    pub max_age_ms: Option<i64>,
    pub replicas: Option<u32>,
    /// `file` or `memory`.
    pub storage: Option<String>,
    /// `old` or `new`.
    pub discard: Option<String>,
}

/// Start position numbers as 0.3.2 puts them on the wire.
pub mod start_position {
    pub const NEW_ONLY: u32 = 0;
    pub const LAST_RECEIVED: u32 = 1;
    pub const TIME_DELTA_START: u32 = 2;
    pub const SEQUENCE_START: u32 = 3;
    pub const FIRST: u32 = 4;
}

/// One subscription's settings, from 0.3.2's `SubscriptionOptions`.
#[napi(object)]
#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    pub subject: String,
    pub queue_group: Option<String>,
    pub durable_name: Option<String>,
    pub max_in_flight: u32,
    pub ack_wait_ms: u32,
    pub start_position: u32,
    pub start_sequence: Option<f64>,
    /// How long ago, in milliseconds, for `TIME_DELTA_START`.
    pub start_time_delta_ms: Option<f64>,
}

/// Old configs carry `http://host:4222` or a bare `host:port`; both mean `nats://`.
pub fn normalize_url(raw: &str) -> Result<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(JetstanError::new(
            ErrorCode::BadOption,
            "server URL must not be empty",
        ));
    }
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("nats".to_string(), trimmed),
    };
    let scheme = match scheme.as_str() {
        "nats" | "http" => "nats",
        "tls" | "https" => "tls",
        "ws" | "wss" => {
            return Err(JetstanError::new(
                ErrorCode::BadOption,
                format!("websocket URL '{raw}' is not supported; use nats://"),
            ))
        }
        other => {
            return Err(JetstanError::new(
                ErrorCode::BadOption,
                format!("unsupported URL scheme '{other}' in '{raw}'"),
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(JetstanError::new(
            ErrorCode::BadOption,
            format!("server URL '{raw}' has no host"),
        ));
    }
    let host_part = rest.rsplit('@').next().unwrap_or(rest);
    let has_port = match host_part.rsplit_once(':') {
        // An IPv6 literal without a port ends in ']' after its last colon.
        Some((_, port)) => !port.ends_with(']') && !port.is_empty(),
        None => false,
    };
    let port = if has_port { "" } else { ":4222" };
    Ok(format!("{scheme}://{rest}{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_url_shapes_become_nats_urls() {
        assert_eq!(
            normalize_url("http://nats-srv:4222").ok().as_deref(),
            Some("nats://nats-srv:4222")
        );
        assert_eq!(
            normalize_url("localhost:9876").ok().as_deref(),
            Some("nats://localhost:9876")
        );
        assert_eq!(
            normalize_url("nats://h").ok().as_deref(),
            Some("nats://h:4222")
        );
        assert_eq!(
            normalize_url("nats://u:p@h:5").ok().as_deref(),
            Some("nats://u:p@h:5")
        );
        assert_eq!(
            normalize_url("tls://h").ok().as_deref(),
            Some("tls://h:4222")
        );
        assert_eq!(
            normalize_url("[::1]").ok().as_deref(),
            Some("nats://[::1]:4222")
        );
    }

    #[test]
    fn rejects_unusable_urls() {
        for bad in ["", "ftp://h:1", "nats://", "ws://h:80"] {
            assert_eq!(
                normalize_url(bad).err().map(|e| e.code),
                Some(ErrorCode::BadOption),
                "{bad}"
            );
        }
    }
}
