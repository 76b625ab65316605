//! Stream and consumer management through the JetStream API, with configs
//! and infos as the JSON the server and the NATS CLI use (snake_case,
//! durations in nanoseconds), so files kept for `nats str add --config`
//! work unchanged.

use async_nats::jetstream;
use serde_json::{json, Value};

use crate::error::{ErrorCode, JetstanError, Result};

const STREAM_NOT_FOUND: u64 = 10059;
const CONSUMER_NOT_FOUND: u64 = 10014;
const MESSAGE_NOT_FOUND: u64 = 10037;

/// One JetStream API call; an `error` in the answer becomes a coded error.
pub async fn api(js: &jetstream::Context, subject: String, payload: &Value) -> Result<Value> {
    let answer: Value = js
        .request(subject.clone(), payload)
        .await
        .map_err(|err| JetstanError::new(ErrorCode::ServerError, format!("{subject}: {err}")))?;
    match answer.get("error") {
        None => Ok(answer),
        Some(error) => {
            let err_code = error.get("err_code").and_then(Value::as_u64).unwrap_or(0);
            let description = error
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("unknown JetStream error");
            let code = match err_code {
                STREAM_NOT_FOUND => ErrorCode::StreamNotFound,
                CONSUMER_NOT_FOUND => ErrorCode::ConsumerNotFound,
                MESSAGE_NOT_FOUND => ErrorCode::MessageNotFound,
                _ => ErrorCode::BadConfig,
            };
            Err(JetstanError::new(
                code,
                format!("{description} (err_code {err_code})"),
            ))
        }
    }
}

pub fn parse_config(json_text: &str) -> Result<Value> {
    let config: Value = serde_json::from_str(json_text).map_err(|err| {
        JetstanError::new(
            ErrorCode::BadConfig,
            format!("config is not valid JSON: {err}"),
        )
    })?;
    if !config.is_object() {
        return Err(JetstanError::new(
            ErrorCode::BadConfig,
            "config must be a JSON object",
        ));
    }
    Ok(config)
}

/// API subject tokens must be names, not patterns.
pub fn name_field(config: &Value, field: &str) -> Result<String> {
    let name = config.get(field).and_then(Value::as_str).ok_or_else(|| {
        JetstanError::new(
            ErrorCode::BadConfig,
            format!("config needs a '{field}' string"),
        )
    })?;
    check_name(name)?;
    Ok(name.to_string())
}

/// JetStream's own limit on stream, consumer and bucket names.
const MAX_NAME_LEN: usize = 255;

pub fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        });
    if valid {
        Ok(())
    } else {
        Err(JetstanError::new(
            ErrorCode::BadConfig,
            format!("'{name}' is not a valid name"),
        ))
    }
}

pub async fn stream_add(js: &jetstream::Context, config: &str, update: bool) -> Result<Value> {
    let config = parse_config(config)?;
    let name = name_field(&config, "name")?;
    let verb = if update { "UPDATE" } else { "CREATE" };
    api(js, format!("STREAM.{verb}.{name}"), &config).await
}

pub async fn stream_info(js: &jetstream::Context, name: &str) -> Result<Value> {
    check_name(name)?;
    api(js, format!("STREAM.INFO.{name}"), &json!({})).await
}

pub async fn stream_delete(js: &jetstream::Context, name: &str) -> Result<()> {
    check_name(name)?;
    api(js, format!("STREAM.DELETE.{name}"), &json!({}))
        .await
        .map(drop)
}

/// Removes every message; answers `{ success, purged }`.
pub async fn stream_purge(js: &jetstream::Context, name: &str) -> Result<Value> {
    check_name(name)?;
    api(js, format!("STREAM.PURGE.{name}"), &json!({})).await
}

/// Removes one message, leaving a gap in the stream's sequences (a
/// migration keeps a STAN channel's gaps this way).
pub async fn stream_delete_message(
    js: &jetstream::Context,
    name: &str,
    sequence: u64,
) -> Result<()> {
    check_name(name)?;
    api(
        js,
        format!("STREAM.MSG.DELETE.{name}"),
        &json!({ "seq": sequence, "no_erase": true }),
    )
    .await
    .map(drop)
}

/// One stored message by sequence, as the server answers it (`subject`,
/// `seq`, `time`, base64 `data` and `hdrs`).
pub async fn stream_get(js: &jetstream::Context, name: &str, sequence: u64) -> Result<Value> {
    check_name(name)?;
    let answer = api(
        js,
        format!("STREAM.MSG.GET.{name}"),
        &json!({ "seq": sequence }),
    )
    .await?;
    answer.get("message").cloned().ok_or_else(|| {
        JetstanError::new(
            ErrorCode::ServerError,
            "STREAM.MSG.GET answered without a message",
        )
    })
}

/// The next message of a pull consumer, acked: `None` when none came within `wait`.
pub async fn consumer_next(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    wait: std::time::Duration,
) -> Result<Option<Value>> {
    use futures_util::StreamExt;
    check_name(stream)?;
    check_name(name)?;
    let consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(name, stream)
        .await
        .map_err(|err| match err.kind() {
            jetstream::stream::ConsumerErrorKind::JetStream(api)
                if api.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
            {
                JetstanError::new(ErrorCode::ConsumerNotFound, err.to_string())
            }
            _ => JetstanError::new(ErrorCode::ServerError, err.to_string()),
        })?;
    let failed =
        |err: &dyn std::fmt::Display| JetstanError::new(ErrorCode::ServerError, err.to_string());
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(wait)
        .messages()
        .await
        .map_err(|err| failed(&err))?;
    let Some(next) = batch.next().await else {
        return Ok(None);
    };
    let message = next.map_err(|err| failed(&err))?;
    let info = message.info().map_err(|err| failed(&err))?;
    let value = json!({
        "subject": message.subject.as_str(),
        "seq": info.stream_sequence,
        "delivered": info.delivered,
        "pending": info.pending,
        "data": String::from_utf8_lossy(&message.payload),
    });
    message.ack().await.map_err(|err| failed(&err))?;
    Ok(Some(value))
}

/// Gives a durable consumer the acknowledgement state a subscription had
/// elsewhere: every message up to `through` is taken from the consumer and
/// acked, except those in `unacked`, which are released (nak) at the end, so
/// the next subscriber gets exactly those first. Answers `{ acked, released }`.
/// The consumer's max_ack_pending must exceed `unacked.len()`.
pub async fn consumer_settle(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    through: u64,
    unacked: &std::collections::HashSet<u64>,
    wait: std::time::Duration,
) -> Result<Value> {
    use futures_util::StreamExt;
    check_name(stream)?;
    check_name(name)?;
    let failed =
        |err: &dyn std::fmt::Display| JetstanError::new(ErrorCode::ServerError, err.to_string());
    let consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(name, stream)
        .await
        .map_err(|err| failed(&err))?;
    let mut held = Vec::new();
    let mut acked = 0u64;
    let mut seen = 0u64;
    while seen < through {
        // Never more than can be at or below `through`: whatever is taken
        // beyond it would wait out its ack wait before anyone else got it.
        let wanted = usize::try_from((through - seen).min(256)).unwrap_or(256);
        let mut batch = consumer
            .fetch()
            .max_messages(wanted)
            .expires(wait)
            .messages()
            .await
            .map_err(|err| failed(&err))?;
        let mut any = false;
        while let Some(next) = batch.next().await {
            let message = next.map_err(|err| failed(&err))?;
            let sequence = message.info().map_err(|err| failed(&err))?.stream_sequence;
            any = true;
            seen = seen.max(sequence);
            if sequence > through || unacked.contains(&sequence) {
                held.push(message);
            } else {
                message.double_ack().await.map_err(|err| failed(&err))?;
                acked += 1;
            }
        }
        // Room is never short (max_ack_pending > the held), so nothing means
        // no more messages: `through` itself is gone from the stream.
        if !any {
            break;
        }
    }
    let released = held.len();
    for message in held {
        message
            .ack_with(jetstream::AckKind::Nak(None))
            .await
            .map_err(|err| failed(&err))?;
    }
    Ok(json!({ "acked": acked, "released": released }))
}

pub async fn stream_list(js: &jetstream::Context) -> Result<Vec<Value>> {
    paged(js, "STREAM.LIST".to_string(), "streams").await
}

pub async fn consumer_add(js: &jetstream::Context, stream: &str, config: &str) -> Result<Value> {
    check_name(stream)?;
    let config = parse_config(config)?;
    let name = match config.get("durable_name").or_else(|| config.get("name")) {
        Some(Value::String(name)) => name.clone(),
        _ => {
            return Err(JetstanError::new(
                ErrorCode::BadConfig,
                "consumer config needs 'durable_name' or 'name'",
            ))
        }
    };
    check_name(&name)?;
    let request = json!({ "stream_name": stream, "config": config });
    api(js, format!("CONSUMER.CREATE.{stream}.{name}"), &request).await
}

pub async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> Result<Value> {
    check_name(stream)?;
    check_name(name)?;
    api(js, format!("CONSUMER.INFO.{stream}.{name}"), &json!({})).await
}

pub async fn consumer_delete(js: &jetstream::Context, stream: &str, name: &str) -> Result<()> {
    check_name(stream)?;
    check_name(name)?;
    api(js, format!("CONSUMER.DELETE.{stream}.{name}"), &json!({}))
        .await
        .map(drop)
}

pub async fn consumer_list(js: &jetstream::Context, stream: &str) -> Result<Vec<Value>> {
    check_name(stream)?;
    paged(js, format!("CONSUMER.LIST.{stream}"), "consumers").await
}

/// LIST calls answer a page at a time, with `total` and `offset`.
async fn paged(js: &jetstream::Context, subject: String, field: &str) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    loop {
        let page = api(js, subject.clone(), &json!({ "offset": items.len() })).await?;
        let batch = page
            .get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let total = page.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
        let empty = batch.is_empty();
        items.extend(batch);
        if empty || items.len() >= total {
            return Ok(items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_must_be_named_json_objects() {
        let code = |r: Result<Value>| r.err().map(|e| e.code);
        assert_eq!(code(parse_config("not json")), Some(ErrorCode::BadConfig));
        assert_eq!(code(parse_config("[1]")), Some(ErrorCode::BadConfig));
        let named = parse_config(r#"{"name":"ORDERS","subjects":["orders.>"]}"#);
        assert_eq!(
            named
                .as_ref()
                .ok()
                .and_then(|c| name_field(c, "name").ok())
                .as_deref(),
            Some("ORDERS")
        );
        let dotted = parse_config(r#"{"name":"a.b"}"#);
        assert!(dotted
            .as_ref()
            .ok()
            .map(|c| name_field(c, "name").is_err())
            .unwrap_or(false));
    }
}
