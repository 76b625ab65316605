//! Typed errors. Every error that reaches JavaScript carries a stable `code`
//! (the napi status string) and, where node-nats-streaming 0.3.2 had one, its
//! exact message text, so applications matching on either keep working.

use std::fmt;

/// The stable codes of the public contract. Tests and applications match on
/// these strings, so a variant's string never changes once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadSubject,
    BadData,
    BadOption,
    MaxPayload,
    ConnectionClosed,
    ConnectFailed,
    ConnectTimeout,
    JetStreamNotEnabled,
    StreamNotFound,
    StreamError,
    PubAckTimeout,
    PublishFailed,
    SubscribeFailed,
    ServerError,
    ClientIdInUse,
    BadClientId,
    DuplicateDurable,
    ConnectionLost,
    SubscribeTimeout,
    BadConfig,
    ConsumerNotFound,
    BucketNotFound,
    KeyExists,
    WrongRevision,
    BadKey,
    NotSupported,
    ProtocolError,
    AuthFailed,
    TlsError,
    PermissionDenied,
    MessageNotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadSubject => "BAD_SUBJECT",
            ErrorCode::BadData => "BAD_DATA",
            ErrorCode::BadOption => "BAD_OPTION",
            ErrorCode::MaxPayload => "MAX_PAYLOAD",
            ErrorCode::ConnectionClosed => "CONNECTION_CLOSED",
            ErrorCode::ConnectFailed => "CONN_ERR",
            ErrorCode::ConnectTimeout => "CONNECT_TIMEOUT",
            ErrorCode::JetStreamNotEnabled => "JETSTREAM_NOT_ENABLED",
            ErrorCode::StreamNotFound => "STREAM_NOT_FOUND",
            ErrorCode::StreamError => "STREAM_ERROR",
            ErrorCode::PubAckTimeout => "PUB_ACK_TIMEOUT",
            ErrorCode::PublishFailed => "PUBLISH_FAILED",
            ErrorCode::SubscribeFailed => "SUBSCRIBE_FAILED",
            ErrorCode::ServerError => "SERVER_ERROR",
            ErrorCode::ClientIdInUse => "CLIENT_ID_IN_USE",
            ErrorCode::BadClientId => "BAD_CLIENT_ID",
            ErrorCode::DuplicateDurable => "DUPLICATE_DURABLE",
            ErrorCode::ConnectionLost => "CONNECTION_LOST",
            ErrorCode::SubscribeTimeout => "SUBSCRIBE_TIMEOUT",
            ErrorCode::BadConfig => "BAD_CONFIG",
            ErrorCode::ConsumerNotFound => "CONSUMER_NOT_FOUND",
            ErrorCode::BucketNotFound => "BUCKET_NOT_FOUND",
            ErrorCode::KeyExists => "KEY_EXISTS",
            ErrorCode::WrongRevision => "WRONG_REVISION",
            ErrorCode::BadKey => "BAD_KEY",
            ErrorCode::NotSupported => "NOT_SUPPORTED",
            ErrorCode::ProtocolError => "PROTOCOL_ERROR",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::TlsError => "TLS_ERROR",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::MessageNotFound => "MESSAGE_NOT_FOUND",
        }
    }
}

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Messages node-nats-streaming 0.3.2 users match on.
pub mod text {
    pub const CONNECTION_CLOSED: &str = "stan: Connection closed";
    pub const PUB_ACK_TIMEOUT: &str = "stan: publish ack timeout";
    pub const SUBJECT_REQUIRED: &str = "stan: subject must be supplied";
    pub const CONNECT_TIMEOUT: &str = "stan: connect request timeout";
    pub const CLIENT_ID_IN_USE: &str = "stan: clientID already registered";
    pub const BAD_CLIENT_ID: &str =
        "stan: invalid clientID: only alphanumeric and `-` or `_` characters allowed";
    pub const DUPLICATE_DURABLE: &str = "stan: duplicate durable registration";
    pub const CONNECTION_LOST: &str = "stan: connection lost due to PING failure";
    pub const SUBSCRIBE_TIMEOUT: &str = "stan: subscribe request timeout";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetstanError {
    pub code: ErrorCode,
    pub message: String,
}

impl JetstanError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn closed() -> Self {
        Self::new(ErrorCode::ConnectionClosed, text::CONNECTION_CLOSED)
    }
}

impl fmt::Display for JetstanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for JetstanError {}

impl From<JetstanError> for napi::Error<ErrorCode> {
    fn from(err: JetstanError) -> Self {
        napi::Error::new(err.code, err.message)
    }
}

/// Promise rejections of napi async functions can only carry napi's own
/// `Status` as their code, so the stable code travels as the message of the
/// error's `cause`, where the JS wrapper (`fromNative`) picks it up.
impl From<JetstanError> for napi::Error {
    fn from(err: JetstanError) -> Self {
        let mut rejection = napi::Error::new(napi::Status::GenericFailure, err.message);
        rejection.cause = Some(Box::new(napi::Error::new(
            napi::Status::GenericFailure,
            err.code.as_str(),
        )));
        rejection
    }
}

pub type Result<T> = std::result::Result<T, JetstanError>;
