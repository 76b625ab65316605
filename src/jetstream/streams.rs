//! Channel → stream mapping. A channel uses the stream that already captures
//! its subject, so other JetStream clients interoperate; if none does, a
//! stream for that channel alone is created, which gives STAN's per-channel
//! sequences.

use std::collections::HashMap;

use async_nats::jetstream::{self, context::GetStreamByNameErrorKind, stream};
use parking_lot::Mutex;

use crate::error::{ErrorCode, JetstanError, Result};
use crate::options::StreamDefaults;

/// nats-streaming-server's per-channel limits, which a STAN user's disk was
/// sized for: a million messages or 1 GiB, the oldest dropped first.
const STAN_MAX_MSGS: i64 = 1_000_000;
const STAN_MAX_BYTES: i64 = 1024 * 1024 * 1024;

/// Names are kept well below file-system limits: the server makes a
/// directory per stream.
const MAX_NAME_LEN: usize = 64;

/// Deterministic, collision-free stream name for a (cluster, channel) pair.
/// Characters stream names forbid are replaced, and whenever anything was
/// replaced or cut, a hash of the original pair is appended, so `a.b` and
/// `a_b` never share a stream.
pub fn stream_name(cluster_id: &str, channel: &str) -> String {
    let (mut name, changed) = sanitize(&format!("{cluster_id}_{channel}"), MAX_NAME_LEN - 17);
    if changed {
        name.push_str(&format!("_{:016x}", fnv1a(&[cluster_id, channel])));
    }
    name
}

/// Consumer name for a durable or queue subscription: a readable label plus
/// a hash of everything that identifies it, so one durable name reused on
/// several channels (or by several clients) never collides.
pub fn consumer_name(kind: &str, label: &str, identity: &[&str]) -> String {
    let (label, _) = sanitize(label, 24);
    format!("{kind}_{label}_{:016x}", fnv1a(identity))
}

/// Keeps the characters names allow and cuts to `max`; reports any change.
fn sanitize(raw: &str, max: usize) -> (String, bool) {
    let mut changed = false;
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                changed = true;
                '_'
            }
        })
        .collect();
    if name.len() > max {
        name.truncate(max);
        changed = true;
    }
    (name, changed)
}

/// FNV-1a over the parts with a separator byte no subject or ID contains.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0u8)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

pub struct StreamCache {
    cluster_id: String,
    auto_create: bool,
    defaults: StreamDefaults,
    /// Streams we create take fast-ingest batches (nats-server 2.14 on).
    batched: bool,
    by_channel: Mutex<HashMap<String, String>>,
}

impl StreamCache {
    pub fn new(
        cluster_id: String,
        auto_create: bool,
        defaults: StreamDefaults,
        batched: bool,
    ) -> Self {
        Self {
            cluster_id,
            auto_create,
            defaults,
            batched,
            by_channel: Mutex::new(HashMap::new()),
        }
    }

    pub fn forget(&self, channel: &str) {
        self.by_channel.lock().remove(channel);
    }

    /// The stream that stores `channel`, found or created once per connection.
    pub async fn stream_for(&self, js: &jetstream::Context, channel: &str) -> Result<String> {
        if let Some(name) = self.by_channel.lock().get(channel) {
            return Ok(name.clone());
        }
        let name = match self.lookup(js, channel).await? {
            Some(name) => name,
            None if !self.auto_create => {
                return Err(JetstanError::new(
                    ErrorCode::StreamNotFound,
                    format!(
                        "no stream captures channel '{channel}' and autoCreateStreams is false"
                    ),
                ))
            }
            None => self.create(js, channel).await?,
        };
        tracing::debug!(channel, stream = %name, "channel resolved");
        self.by_channel
            .lock()
            .insert(channel.to_string(), name.clone());
        Ok(name)
    }

    async fn lookup(&self, js: &jetstream::Context, channel: &str) -> Result<Option<String>> {
        match js.stream_by_subject(channel).await {
            Ok(name) => Ok(Some(name)),
            Err(err) if matches!(err.kind(), GetStreamByNameErrorKind::NotFound) => Ok(None),
            Err(err) => Err(JetstanError::new(
                ErrorCode::StreamError,
                format!("looking up the stream for '{channel}': {err}"),
            )),
        }
    }

    async fn create(&self, js: &jetstream::Context, channel: &str) -> Result<String> {
        let defaults = &self.defaults;
        let config = stream::Config {
            name: stream_name(&self.cluster_id, channel),
            subjects: vec![channel.to_string()],
            storage: match defaults.storage.as_deref() {
                Some("memory") => stream::StorageType::Memory,
                _ => stream::StorageType::File,
            },
            max_messages: defaults.max_msgs.unwrap_or(STAN_MAX_MSGS),
            max_bytes: defaults.max_bytes.unwrap_or(STAN_MAX_BYTES),
            max_age: std::time::Duration::from_millis(
                defaults.max_age_ms.unwrap_or(0).max(0).unsigned_abs(),
            ),
            num_replicas: defaults.replicas.unwrap_or(1).max(1) as usize,
            discard: match defaults.discard.as_deref() {
                Some("new") => stream::DiscardPolicy::New,
                _ => stream::DiscardPolicy::Old,
            },
            allow_batch_publish: self.batched,
            ..Default::default()
        };
        match js.get_or_create_stream(config).await {
            Ok(stream) => {
                let config = &stream.cached_info().config;
                tracing::info!(
                    channel,
                    stream = %config.name,
                    max_msgs = config.max_messages,
                    max_bytes = config.max_bytes,
                    replicas = config.num_replicas,
                    "stream for the channel created"
                );
                Ok(config.name.clone())
            }
            // Another client may have created a stream capturing the subject
            // (under another name) between our lookup and our create.
            Err(create_err) => match self.lookup(js, channel).await {
                Ok(Some(name)) => Ok(name),
                _ => Err(JetstanError::new(
                    ErrorCode::StreamError,
                    format!("creating a stream for '{channel}': {create_err}"),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_through() {
        assert_eq!(stream_name("test-cluster", "orders"), "test-cluster_orders");
    }

    #[test]
    fn replaced_characters_add_a_hash_so_names_never_collide() {
        let dotted = stream_name("c", "a.b");
        let underscored = stream_name("c", "a_b");
        assert_ne!(dotted, underscored);
        assert!(dotted.starts_with("c_a_b_"));
        assert_eq!(dotted, stream_name("c", "a.b"));
    }

    #[test]
    fn consumer_names_differ_by_channel_and_client() {
        let a = consumer_name("D", "my-durable", &["c", "client", "my-durable", "orders"]);
        let b = consumer_name(
            "D",
            "my-durable",
            &["c", "client", "my-durable", "payments"],
        );
        let c = consumer_name("D", "my-durable", &["c", "other", "my-durable", "orders"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("D_my-durable_"));
        assert!(!consumer_name("Q", "a.b c", &["x"]).contains(['.', ' ']));
    }

    #[test]
    fn long_names_are_cut_and_stay_distinct() {
        let a = stream_name("c", &"x".repeat(300));
        let b = stream_name("c", &format!("{}y", "x".repeat(299)));
        assert!(a.len() <= MAX_NAME_LEN);
        assert_ne!(a, b);
    }
}
