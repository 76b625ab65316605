//! The legacy backend: the STAN wire protocol (protobuf over core NATS), for
//! applications that still run a nats-streaming-server.

mod proto;
mod session;
mod subscription;

pub use session::Stan;

use std::time::Duration;

use tokio::time::Instant;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;

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

use crate::error::{ErrorCode, JetstanError, Result};

/// How soon a request nobody was subscribed to is sent again.
const NO_RESPONDERS_RETRY: Duration = Duration::from_millis(50);

/// Which request a server error string answered; decides the code of errors
/// that have no code of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Connect,
    Publish,
    Subscribe,
    Unsubscribe,
    Ping,
    Close,
}

/// The server's error text, kept verbatim (applications match on it), with
/// the same stable code the jetstream backend gives the same failure.
fn server_error(request: Request, text: &str) -> JetstanError {
    let code = match text {
        "stan: clientID already registered" => ErrorCode::ClientIdInUse,
        t if t.starts_with("stan: invalid clientID") => ErrorCode::BadClientId,
        "stan: duplicate durable registration" => ErrorCode::DuplicateDurable,
        "stan: invalid subject" => ErrorCode::BadSubject,
        "stan: invalid ack wait time, should be >= 1s"
        | "stan: invalid MaxInflight, should be >= 1"
        | "stan: invalid start position"
        | "stan: durable name of a durable queue subscriber can't contain the character ':'" => {
            ErrorCode::BadOption
        }
        _ => match request {
            Request::Connect => ErrorCode::ConnectFailed,
            Request::Publish => ErrorCode::PublishFailed,
            Request::Subscribe | Request::Unsubscribe => ErrorCode::SubscribeFailed,
            Request::Ping => ErrorCode::ConnectionLost,
            Request::Close => ErrorCode::ServerError,
        },
    };
    JetstanError::new(code, text)
}

/// A server reply that does not decode: a server bug or a foreign
/// publisher on our subject, never something to crash on.
fn malformed(what: &str, err: prost::DecodeError) -> JetstanError {
    JetstanError::new(
        ErrorCode::ServerError,
        format!("stan: malformed {what} from the server: {err}"),
    )
}

/// Sends one request and decodes its answer. "No responders" is asked
/// again until `timeout`: 0.3.2's NATS client knows no 503 and simply waited
/// out its timeout, so a server that is just resubscribing after a restart
/// still answered it in time.
async fn request<T: prost::Message + Default>(
    client: &Client,
    subject: String,
    body: &impl prost::Message,
    timeout: Duration,
    unanswered: JetstanError,
    what: &str,
) -> Result<T> {
    let payload = Bytes::from(body.encode_to_vec());
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unanswered);
        }
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(left));
        match client.send_request(subject.clone(), request).await {
            Ok(reply) => return T::decode(reply.payload).map_err(|err| malformed(what, err)),
            Err(err) => match err.kind() {
                RequestErrorKind::TimedOut => return Err(unanswered),
                RequestErrorKind::NoResponders => {
                    tokio::time::sleep(NO_RESPONDERS_RETRY.min(left)).await
                }
                _ => {
                    return Err(JetstanError::new(
                        unanswered.code,
                        format!("{}: {err}", unanswered.message),
                    ))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_keep_their_text_and_get_codes() {
        let taken = server_error(Request::Connect, "stan: clientID already registered");
        assert_eq!(taken.code, ErrorCode::ClientIdInUse);
        assert_eq!(taken.message, "stan: clientID already registered");
        assert_eq!(
            server_error(Request::Publish, "too many channels").code,
            ErrorCode::PublishFailed
        );
        assert_eq!(
            server_error(Request::Subscribe, "too many channels").code,
            ErrorCode::SubscribeFailed
        );
        assert_eq!(
            server_error(
                Request::Ping,
                "client has been replaced or is no longer registered"
            )
            .code,
            ErrorCode::ConnectionLost
        );
        assert_eq!(
            server_error(
                Request::Connect,
                "stan: invalid clientID: only alphanumeric and `-` or `_` characters allowed"
            )
            .code,
            ErrorCode::BadClientId
        );
    }
}
