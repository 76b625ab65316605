//! NATS KV buckets for JS: napi classes over async-nats's `kv::Store`.
//! Values cross as Buffers; revisions and times as numbers.

use std::time::Duration;

use async_nats::jetstream::{self, context, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use napi::bindgen_prelude::Buffer;
use napi_derive::napi;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Mutex, Notify};

use crate::error::{ErrorCode, JetstanError, Result};
use crate::jetstream::manage;

/// Bucket settings for `kv(bucket, options)`; only used when the bucket is created.
#[napi(object)]
#[derive(Clone, Debug, Default)]
pub struct KvOptions {
    pub description: Option<String>,
    /// Values kept per key (1 to 64, default 1).
    pub history: Option<u32>,
    /// Milliseconds a value lives (0 = forever).
    pub ttl_ms: Option<f64>,
    pub max_value_size: Option<i32>,
    pub max_bytes: Option<f64>,
    /// `'file'` (default) or `'memory'`.
    pub storage: Option<String>,
    pub replicas: Option<u32>,
}

#[napi(object)]
pub struct KvEntry {
    pub bucket: String,
    pub key: String,
    pub value: Buffer,
    pub revision: f64,
    /// Milliseconds since the epoch.
    pub created: f64,
    /// `PUT`, `DEL` or `PURGE`.
    pub operation: String,
}

impl From<kv::Entry> for KvEntry {
    fn from(entry: kv::Entry) -> Self {
        KvEntry {
            bucket: entry.bucket,
            key: entry.key,
            value: Buffer::from(entry.value.to_vec()),
            revision: entry.revision as f64,
            created: (entry.created.unix_timestamp_nanos() / 1_000_000) as f64,
            operation: match entry.operation {
                kv::Operation::Put => "PUT",
                kv::Operation::Delete => "DEL",
                kv::Operation::Purge => "PURGE",
            }
            .to_string(),
        }
    }
}

fn failed(code: ErrorCode, what: &str, err: impl std::fmt::Display) -> JetstanError {
    JetstanError::new(code, format!("{what}: {err}"))
}

/// A key is a subject token under `$KV.<bucket>.`: a longer one than a
/// server line allows would close the connection.
fn key_fits(key: &str) -> Result<()> {
    if key.len() > crate::subject::MAX_CHANNEL_LEN {
        return Err(JetstanError::new(
            ErrorCode::BadKey,
            format!(
                "a key of {} bytes is longer than a server line allows",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// Opens `bucket`, creating it with `options` when it does not exist and
/// `create` is set.
pub async fn open(
    js: &jetstream::Context,
    bucket: String,
    options: Option<KvOptions>,
    create: bool,
) -> Result<KeyValue> {
    manage::check_name(&bucket)?;
    match js.get_key_value(bucket.as_str()).await {
        Ok(store) => {
            return Ok(KeyValue {
                store,
                js: js.clone(),
            })
        }
        Err(err) if matches!(err.kind(), context::KeyValueErrorKind::InvalidStoreName) => {
            return Err(failed(ErrorCode::BadConfig, "bucket name", err))
        }
        Err(err) if !create => return Err(failed(ErrorCode::BucketNotFound, &bucket, err)),
        Err(_) => {}
    }
    let options = options.unwrap_or_default();
    let config = kv::Config {
        bucket: bucket.clone(),
        description: options.description.unwrap_or_default(),
        history: i64::from(options.history.unwrap_or(1)),
        max_age: Duration::from_millis(options.ttl_ms.unwrap_or(0.0).max(0.0) as u64),
        max_value_size: options.max_value_size.unwrap_or(-1),
        max_bytes: options.max_bytes.map(|b| b as i64).unwrap_or(-1),
        storage: match options.storage.as_deref() {
            None | Some("file") => stream::StorageType::File,
            Some("memory") => stream::StorageType::Memory,
            Some(other) => {
                return Err(JetstanError::new(
                    ErrorCode::BadConfig,
                    format!("storage must be 'file' or 'memory', not '{other}'"),
                ))
            }
        },
        num_replicas: options.replicas.unwrap_or(1) as usize,
        ..Default::default()
    };
    let store = js.create_key_value(config).await.map_err(|err| {
        failed(
            ErrorCode::BadConfig,
            &format!("creating bucket '{bucket}'"),
            err,
        )
    })?;
    Ok(KeyValue {
        store,
        js: js.clone(),
    })
}

#[napi]
pub struct KeyValue {
    store: kv::Store,
    js: jetstream::Context,
}

#[napi]
impl KeyValue {
    /// Stores `value` under `key`; resolves with the new revision.
    #[napi]
    pub async fn put(&self, key: String, value: Buffer) -> napi::Result<f64> {
        key_fits(&key)?;
        let value = Bytes::copy_from_slice(&value);
        self.store
            .put(&key, value)
            .await
            .map(|revision| revision as f64)
            .map_err(|err| {
                match err.kind() {
                    kv::PutErrorKind::InvalidKey => failed(ErrorCode::BadKey, &key, err),
                    _ => failed(ErrorCode::ServerError, &key, err),
                }
                .into()
            })
    }

    /// Stores `value` only if `key` has no value; fails with KEY_EXISTS otherwise.
    #[napi]
    pub async fn create(&self, key: String, value: Buffer) -> napi::Result<f64> {
        key_fits(&key)?;
        let value = Bytes::copy_from_slice(&value);
        self.store
            .create(&key, value)
            .await
            .map(|revision| revision as f64)
            .map_err(|err| {
                match err.kind() {
                    kv::CreateErrorKind::AlreadyExists => failed(ErrorCode::KeyExists, &key, err),
                    kv::CreateErrorKind::InvalidKey => failed(ErrorCode::BadKey, &key, err),
                    _ => failed(ErrorCode::ServerError, &key, err),
                }
                .into()
            })
    }

    /// Compare-and-set: stores `value` only if `key` is still at `revision`.
    #[napi]
    pub async fn update(&self, key: String, value: Buffer, revision: f64) -> napi::Result<f64> {
        key_fits(&key)?;
        let value = Bytes::copy_from_slice(&value);
        self.store
            .update(&key, value, revision as u64)
            .await
            .map(|revision| revision as f64)
            .map_err(|err| {
                match err.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => {
                        failed(ErrorCode::WrongRevision, &key, err)
                    }
                    kv::UpdateErrorKind::InvalidKey => failed(ErrorCode::BadKey, &key, err),
                    _ => failed(ErrorCode::ServerError, &key, err),
                }
                .into()
            })
    }

    /// The current entry of `key`, or null when it has none (or was deleted).
    #[napi]
    pub async fn get(&self, key: String) -> napi::Result<Option<KvEntry>> {
        key_fits(&key)?;
        match self.store.entry(&key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => Ok(Some(entry.into())),
            Ok(_) => Ok(None),
            Err(err) => Err(match err.kind() {
                kv::EntryErrorKind::InvalidKey => failed(ErrorCode::BadKey, &key, err),
                _ => failed(ErrorCode::ServerError, &key, err),
            }
            .into()),
        }
    }

    /// Marks `key` deleted (its history stays).
    #[napi]
    pub async fn delete(&self, key: String) -> napi::Result<()> {
        key_fits(&key)?;
        self.store
            .delete(&key)
            .await
            .map_err(|err| failed(ErrorCode::BadKey, &key, err).into())
    }

    /// Deletes `key` with its history.
    #[napi]
    pub async fn purge(&self, key: String) -> napi::Result<()> {
        key_fits(&key)?;
        self.store
            .purge(&key)
            .await
            .map_err(|err| failed(ErrorCode::BadKey, &key, err).into())
    }

    /// Keys that currently have a value.
    #[napi]
    pub async fn keys(&self) -> napi::Result<Vec<String>> {
        let mut keys = self
            .store
            .keys()
            .await
            .map_err(|err| failed(ErrorCode::ServerError, "keys", err))?;
        let mut all = Vec::new();
        while let Some(key) = keys.next().await {
            all.push(key.map_err(|err| failed(ErrorCode::ServerError, "keys", err))?);
        }
        Ok(all)
    }

    /// Every stored revision of `key`, oldest first.
    #[napi]
    pub async fn history(&self, key: String) -> napi::Result<Vec<KvEntry>> {
        key_fits(&key)?;
        let mut history = self
            .store
            .history(&key)
            .await
            .map_err(|err| failed(ErrorCode::BadKey, &key, err))?;
        let mut entries = Vec::new();
        while let Some(entry) = history.next().await {
            entries.push(
                entry
                    .map_err(|err| failed(ErrorCode::ServerError, &key, err))?
                    .into(),
            );
        }
        Ok(entries)
    }

    /// The bucket's stream info as JSON (values, bytes, history, ttl...).
    #[napi]
    pub async fn status(&self) -> napi::Result<String> {
        let info = manage::stream_info(&self.js, &format!("KV_{}", self.store.name)).await?;
        Ok(info.to_string())
    }

    /// Watches `keys` (a pattern such as `orders.>`, or all when absent):
    /// current values first, then every change.
    #[napi]
    pub async fn watch(&self, keys: Option<String>) -> napi::Result<KvWatcher> {
        if let Some(keys) = &keys {
            key_fits(keys)?;
        }
        let pattern = keys.unwrap_or_else(|| ">".to_string());
        let watch = self
            .store
            .watch_with_history(&pattern)
            .await
            .map_err(|err| failed(ErrorCode::BadKey, "watch", err))?;
        Ok(KvWatcher {
            store: self.store.clone(),
            pattern,
            state: Mutex::new(WatchState {
                watch: Some(watch),
                last_revision: 0,
            }),
            stopped: AtomicBool::new(false),
            stop_signal: Notify::new(),
        })
    }
}

struct WatchState {
    watch: Option<kv::Watch>,
    last_revision: u64,
}

#[napi]
pub struct KvWatcher {
    store: kv::Store,
    pattern: String,
    state: Mutex<WatchState>,
    // Outside the mutex: stop() must reach a next() that holds it while waiting.
    stopped: AtomicBool,
    stop_signal: Notify,
}

/// Pauses between attempts to re-establish a watch after the server lost it.
const REWATCH_BACKOFF: Duration = Duration::from_millis(250);
/// Attempts before the error reaches JS (about 30 s of outage).
const REWATCH_ATTEMPTS: u32 = 120;

#[napi]
impl KvWatcher {
    /// The next change, or null once stopped or the connection closed. When
    /// the server loses the watch (a restart), it is re-established after the
    /// last revision seen, so no change is missed or repeated.
    #[napi]
    pub async fn next(&self) -> napi::Result<Option<KvEntry>> {
        let stop = self.stop_signal.notified();
        tokio::pin!(stop);
        let mut state = self.state.lock().await;
        let mut failures = 0u32;
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return Ok(None);
            }
            let Some(watch) = state.watch.as_mut() else {
                return Ok(None);
            };
            let item = tokio::select! {
                item = watch.next() => item,
                _ = &mut stop => return Ok(None),
            };
            match item {
                Some(Ok(entry)) => {
                    state.last_revision = entry.revision;
                    return Ok(Some(entry.into()));
                }
                None => {
                    state.watch = None;
                    return Ok(None);
                }
                Some(Err(err)) => {
                    failures += 1;
                    if failures > REWATCH_ATTEMPTS {
                        return Err(failed(ErrorCode::ServerError, "watch", err).into());
                    }
                    tokio::time::sleep(REWATCH_BACKOFF).await;
                    let from = state.last_revision + 1;
                    if let Ok(watch) = self.resume(from).await {
                        state.watch = Some(watch);
                    }
                }
            }
        }
    }

    /// Ends the watch; a pending `next()` resolves with null.
    #[napi]
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop_signal.notify_waiters();
        self.state.lock().await.watch = None;
    }
}

impl KvWatcher {
    async fn resume(&self, from_revision: u64) -> std::result::Result<kv::Watch, kv::WatchError> {
        if self.pattern == ">" {
            self.store.watch_all_from_revision(from_revision).await
        } else {
            self.store
                .watch_from_revision(&self.pattern, from_revision)
                .await
        }
    }
}
