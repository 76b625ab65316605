//! The wire side of fast-ingest batches (ADR-50; nats-server 2.14 and later,
//! streams with `allow_batched`). A batched publish is an ordinary publish
//! whose reply subject names its batch and place in it:
//! `<reply prefix>.<batch id>.<flow>.fail.<batch seq>.<op>.$FI`. The server
//! stores each message as it comes, acks every `flow` messages on the reply
//! subject of the message that completed them, and answers the end-of-batch
//! marker with the batch's final ack. With `fail`, a missing batch sequence
//! ends the batch: what is stored is always a prefix of it.

use serde::Deserialize;

use crate::error::{ErrorCode, JetstanError};
use crate::subject::push_decimal;

/// How often the server acks within a batch. A batch ends with the write
/// that carries it, so this only matters for batches longer than it.
pub const FLOW: u32 = 256;
/// The reply subject's last token, which marks a batched publish.
const MARK: &str = "$FI";
/// The stream does not take batches (`allow_batched` unset).
const DISABLED: u64 = 10205;

/// Fast-ingest batches came with nats-server 2.14.
pub fn supported(server_version: &str) -> bool {
    let mut parts = server_version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (2, 14)
}

#[derive(Clone, Copy)]
pub enum Op {
    Start = 0,
    Add = 1,
    End = 3,
}

/// `<prefix>.<tag><batch>.<FLOW>.fail.<seq>.<op>.$FI`: `tag` keeps batch ids
/// (which the server keeps per stream) apart between connections.
pub fn reply(prefix: &str, tag: &str, batch: u32, seq: u64, op: Op) -> String {
    let mut reply = String::with_capacity(prefix.len() + tag.len() + 40);
    reply.push_str(prefix);
    reply.push('.');
    reply.push_str(tag);
    push_decimal(&mut reply, u64::from(batch));
    reply.push('.');
    push_decimal(&mut reply, u64::from(FLOW));
    reply.push_str(".fail.");
    push_decimal(&mut reply, seq);
    reply.push('.');
    push_decimal(&mut reply, op as u64);
    reply.push('.');
    reply.push_str(MARK);
    reply
}

/// The batch and batch sequence a frame on `rest` (its subject after the
/// reply prefix and the dot) answers; `None` when it is not a batch frame.
pub fn address(rest: &str, tag: &str) -> Option<(u32, u64)> {
    let rest = rest.strip_suffix(MARK)?.strip_suffix('.')?;
    let mut tokens = rest.split('.');
    let batch = tokens.next()?.strip_prefix(tag)?.parse().ok()?;
    let _flow = tokens.next()?;
    let _gap = tokens.next()?;
    let seq = tokens.next()?.parse().ok()?;
    Some((batch, seq))
}

pub fn is_batch_frame(rest: &str) -> bool {
    rest.ends_with(MARK)
}

/// What a frame on a batch's reply subject says.
#[derive(Debug, PartialEq)]
pub enum Reading {
    /// Stored through this batch sequence.
    Flow(u64),
    /// The batch is over: stored through this batch sequence, nothing after.
    Done(u64),
    /// The message this frame answers was not stored.
    Refused,
    /// Nothing more of the batch will be stored; `disabled` when the stream
    /// takes no batches at all.
    Failed {
        disabled: bool,
        error: JetstanError,
    },
    /// Informational: the final ack will say what was stored.
    Gap,
    Unreadable(JetstanError),
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<&'a str>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

pub fn read(frame: &async_nats::Message) -> Reading {
    if let Some(status) = frame.status {
        // No stream took it (deleted, or between leaders): nothing stored.
        return Reading::Failed {
            disabled: false,
            error: JetstanError::new(
                ErrorCode::ServerError,
                format!("batched publish answered with status {status}"),
            ),
        };
    }
    let wire: Wire = match serde_json::from_slice(&frame.payload) {
        Ok(wire) => wire,
        Err(err) => {
            return Reading::Unreadable(JetstanError::new(
                ErrorCode::ServerError,
                format!("unreadable batch ack: {err}"),
            ))
        }
    };
    match (wire.kind, wire.error, wire.count) {
        (Some("ack"), _, _) => Reading::Flow(wire.seq),
        (Some("gap"), _, _) => Reading::Gap,
        (Some("err"), _, _) => Reading::Refused,
        (None, Some(error), _) => Reading::Failed {
            disabled: error.err_code == DISABLED,
            error: JetstanError::new(
                ErrorCode::ServerError,
                format!(
                    "{} (code {}, error {})",
                    error.description, error.code, error.err_code
                ),
            ),
        },
        (None, None, Some(count)) => Reading::Done(count),
        _ => Reading::Unreadable(JetstanError::new(
            ErrorCode::ServerError,
            "batch ack of an unknown kind",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(json: &'static str) -> async_nats::Message {
        async_nats::Message {
            subject: "_INBOX.x.t1.256.fail.1.0.$FI".into(),
            reply: None,
            payload: Bytes::from_static(json.as_bytes()),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn servers_from_2_14_take_batches() {
        assert!(supported("2.14.0"));
        assert!(supported("2.15.1"));
        assert!(supported("v3.0.0-beta"));
        assert!(!supported("2.12.3"));
        assert!(!supported("2.9.25"));
        assert!(!supported(""));
    }

    #[test]
    fn reply_subjects_round_trip_to_their_address() {
        let reply = reply("_INBOX.abc", "abc", 7, 12, Op::Add);
        assert_eq!(reply, "_INBOX.abc.abc7.256.fail.12.1.$FI");
        let rest = reply.strip_prefix("_INBOX.abc.").unwrap_or_default();
        assert!(is_batch_frame(rest));
        assert_eq!(address(rest, "abc"), Some((7, 12)));
        assert_eq!(address(rest, "other"), None);
        assert!(!is_batch_frame("42"));
    }

    // Frames as nats-server 2.15.1 sends them.
    #[test]
    fn frames_read_as_the_server_means_them() {
        assert_eq!(
            read(&frame(r#"{"type":"ack","seq":10,"msgs":5}"#)),
            Reading::Flow(10)
        );
        assert_eq!(
            read(&frame(r#"{"stream":"A","seq":12,"batch":"b","count":13}"#)),
            Reading::Done(13)
        );
        assert_eq!(
            read(&frame(r#"{"type":"gap","last_seq":2,"seq":3}"#)),
            Reading::Gap
        );
        let disabled = read(&frame(
            r#"{"error":{"code":400,"err_code":10205,"description":"batch publish is disabled"},"stream":"B","seq":0}"#,
        ));
        assert!(matches!(disabled, Reading::Failed { disabled: true, .. }));
        let unknown = read(&frame(
            r#"{"error":{"code":400,"err_code":10208,"description":"batch publish ID unknown"},"stream":"A","seq":0}"#,
        ));
        assert!(matches!(
            unknown,
            Reading::Failed {
                disabled: false,
                ..
            }
        ));
        assert!(matches!(read(&frame("nope")), Reading::Unreadable(_)));
    }
}
