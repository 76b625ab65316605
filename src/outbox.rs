//! The hand-off from the tokio side to the JS thread.
//!
//! Producers (the publish-ack task, subscription tasks, connection events)
//! append to one buffer per connection and wake JS only when the buffer goes
//! from idle to pending; JS then takes everything in one `poll()` crossing.
//! While JS is busy, work piles up into the next batch instead of into a
//! queue of threadsafe-function calls, so a burst costs one wake, not one per
//! message. The buffer is bounded by protocol flow control: pub-acks by
//! `maxPubAcksInflight`, deliveries by each subscription's `maxInFlight`.

use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};

use napi::bindgen_prelude::{
    Buffer, BufferSlice, Float64Array, Float64ArraySlice, ToNapiValue, Uint32Array,
    Uint32ArraySlice, Unknown,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env, Status};
use napi_derive::napi;
use parking_lot::Mutex;

use crate::error::JetstanError;

/// Strong (ref'd) while the connection is open, so an open connection keeps
/// Node alive the way a socket does; released by [`Outbox::release`].
pub type WakeFn = ThreadsafeFunction<(), Unknown<'static>, (), Status, false>;

#[derive(Debug)]
pub enum Event {
    Connected,
    ConnectFailed(JetstanError),
    Disconnected,
    Reconnecting,
    Reconnected,
    ConnectionLost(JetstanError),
    Error(JetstanError),
    SubReady(u32),
    SubTimeout(u32),
    SubError(u32, JetstanError),
    SubUnsubscribed(u32),
    SubClosed(u32),
    /// The server refused or ignored the close request; `Closed` follows.
    CloseFailed(JetstanError),
    Closed,
    /// A log line for the connection's `logger`.
    Log(String),
}

impl crate::log::LineSink for Outbox {
    fn line(&self, text: String) {
        self.push_event(Event::Log(text));
    }
}

/// Messages for one subscription, packed so that a batch crosses as two
/// objects instead of one object per message.
#[derive(Default)]
pub struct DeliveryBatch {
    pub data: Vec<u8>,
    /// Per message: ack id, stream sequence, timestamp (ns), redelivery count, payload length.
    pub meta: Vec<f64>,
    /// The few messages with application headers: their index in the batch,
    /// and the headers as `Name: value\r\n` lines.
    pub headers: Vec<(u32, String)>,
}

impl DeliveryBatch {
    pub fn push(
        &mut self,
        ack_id: u64,
        sequence: u64,
        timestamp_ns: i128,
        redeliveries: u64,
        payload: &[u8],
    ) {
        self.data.extend_from_slice(payload);
        self.meta.extend_from_slice(&[
            ack_id as f64,
            sequence as f64,
            timestamp_ns as f64,
            redeliveries as f64,
            payload.len() as f64,
        ]);
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    pub fn len(&self) -> usize {
        self.meta.len() / 5
    }

    /// Messages in the batch delivered before.
    pub fn redelivered(&self) -> usize {
        self.meta
            .chunks_exact(5)
            .filter(|meta| meta[3] > 0.0)
            .count()
    }

    /// Headers of the message pushed last.
    pub fn set_headers(&mut self, lines: String) {
        let index = (self.len() as u32).saturating_sub(1);
        self.headers.push((index, lines));
    }

    fn append(&mut self, mut other: DeliveryBatch) {
        let offset = self.len() as u32;
        self.headers.extend(
            other
                .headers
                .drain(..)
                .map(|(index, lines)| (index + offset, lines)),
        );
        self.data.append(&mut other.data);
        self.meta.append(&mut other.meta);
    }
}

#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    acked: Vec<u32>,
    failed: Vec<(u32, JetstanError)>,
    deliveries: Vec<(u32, DeliveryBatch)>,
}

pub struct Outbox {
    pending: Mutex<Pending>,
    wake_scheduled: AtomicBool,
    wake: Mutex<Option<WakeFn>>,
}

impl Outbox {
    pub fn new(wake: WakeFn) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            wake_scheduled: AtomicBool::new(false),
            wake: Mutex::new(Some(wake)),
        }
    }

    pub fn push_event(&self, event: Event) {
        self.pending.lock().events.push(event);
        self.wake();
    }

    pub fn push_publish_results(
        &self,
        acked: &mut Vec<u32>,
        failed: &mut Vec<(u32, JetstanError)>,
    ) {
        if acked.is_empty() && failed.is_empty() {
            return;
        }
        {
            let mut pending = self.pending.lock();
            pending.acked.append(acked);
            pending.failed.append(failed);
        }
        self.wake();
    }

    pub fn push_deliveries(&self, sid: u32, batch: DeliveryBatch) {
        if batch.is_empty() {
            return;
        }
        {
            let mut pending = self.pending.lock();
            match pending.deliveries.iter_mut().find(|(id, _)| *id == sid) {
                Some((_, existing)) => existing.append(batch),
                None => pending.deliveries.push((sid, batch)),
            }
        }
        self.wake();
    }

    fn wake(&self) {
        if !self.wake_scheduled.swap(true, Ordering::AcqRel) {
            if let Some(wake) = self.wake.lock().as_ref() {
                wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
            }
        }
    }

    /// Runs on the JS thread. The flag is cleared before taking, so anything
    /// pushed after the take schedules a fresh wake.
    pub fn take(&self) -> Poll {
        self.wake_scheduled.store(false, Ordering::Release);
        let pending = mem::take(&mut *self.pending.lock());
        Poll::from(pending)
    }

    /// Drops the threadsafe function so the connection no longer holds the
    /// event loop. Calls queued before this still reach JS.
    pub fn release(&self) {
        drop(self.wake.lock().take());
    }
}

/// A lifecycle event for JS: `kind` names it, `sid` says which subscription.
#[napi(object)]
pub struct NativeEvent {
    pub kind: String,
    pub sid: Option<u32>,
    pub code: Option<String>,
    pub message: Option<String>,
}

#[napi(object)]
pub struct PublishFailure {
    pub token: u32,
    pub code: String,
    pub message: String,
}

#[napi(object, object_from_js = false)]
pub struct Delivery {
    pub sid: u32,
    #[napi(ts_type = "Buffer")]
    pub data: ToJs<u8>,
    #[napi(ts_type = "Float64Array")]
    pub meta: ToJs<f64>,
    /// Which messages have headers, and theirs (`headerText[k]` belongs to
    /// message `headerIndex[k]`); absent when none has.
    #[napi(ts_type = "Uint32Array")]
    pub header_index: Option<ToJs<u32>>,
    pub header_text: Option<Vec<String>>,
}

/// Everything that became ready since the previous poll. What a poll does
/// not carry is absent, so a poll with one ack builds one array, not four.
#[napi(object, object_from_js = false)]
pub struct Poll {
    pub events: Option<Vec<NativeEvent>>,
    #[napi(ts_type = "Uint32Array")]
    pub acked: Option<ToJs<u32>>,
    pub failed: Option<Vec<PublishFailure>>,
    pub deliveries: Option<Vec<Delivery>>,
}

/// Numbers or bytes for JS, copied into memory V8 owns while small. An
/// external buffer costs a weak handle, a finalizer and a `Buffer`
/// prototype each, which was a tenth of the JS thread's time at a few
/// messages per wake; a copy of a few KiB costs less.
pub struct ToJs<T>(Vec<T>);

/// Above this many bytes, handing the allocation over beats copying it.
const COPY_BELOW: usize = 16 * 1024;

impl<T> ToJs<T> {
    fn copied(&self) -> bool {
        mem::size_of_val(self.0.as_slice()) < COPY_BELOW
    }
}

impl ToNapiValue for ToJs<u8> {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        if !val.copied() {
            return Buffer::to_napi_value(env, Buffer::from(val.0));
        }
        let copy = BufferSlice::copy_from(&Env::from_raw(env), &val.0)?;
        ToNapiValue::to_napi_value(env, &copy)
    }
}

/// Typed arrays go the way bytes do.
macro_rules! numbers_to_js {
    ($element:ty, $owned:ident, $slice:ident) => {
        impl ToNapiValue for ToJs<$element> {
            unsafe fn to_napi_value(
                env: sys::napi_env,
                val: Self,
            ) -> napi::Result<sys::napi_value> {
                if !val.copied() {
                    return $owned::to_napi_value(env, $owned::new(val.0));
                }
                let copy = $slice::copy_from(&Env::from_raw(env), &val.0)?;
                ToNapiValue::to_napi_value(env, copy)
            }
        }
    };
}

numbers_to_js!(u32, Uint32Array, Uint32ArraySlice);
numbers_to_js!(f64, Float64Array, Float64ArraySlice);

/// `None` for an empty list, so JS finds the field absent.
fn present<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

impl From<Pending> for Poll {
    fn from(pending: Pending) -> Self {
        Poll {
            events: present(pending.events.into_iter().map(NativeEvent::from).collect()),
            acked: present(pending.acked).map(ToJs),
            failed: present(
                pending
                    .failed
                    .into_iter()
                    .map(|(token, err)| PublishFailure {
                        token,
                        code: err.code.as_str().to_string(),
                        message: err.message,
                    })
                    .collect(),
            ),
            deliveries: present(
                pending
                    .deliveries
                    .into_iter()
                    .map(|(sid, batch)| {
                        let (header_index, header_text) = if batch.headers.is_empty() {
                            (None, None)
                        } else {
                            let (index, text): (Vec<u32>, Vec<String>) =
                                batch.headers.into_iter().unzip();
                            (Some(ToJs(index)), Some(text))
                        };
                        Delivery {
                            sid,
                            data: ToJs(batch.data),
                            meta: ToJs(batch.meta),
                            header_index,
                            header_text,
                        }
                    })
                    .collect(),
            ),
        }
    }
}

impl From<Event> for NativeEvent {
    fn from(event: Event) -> Self {
        let plain = |kind: &str, sid: Option<u32>| NativeEvent {
            kind: kind.to_string(),
            sid,
            code: None,
            message: None,
        };
        let failed = |kind: &str, sid: Option<u32>, err: JetstanError| NativeEvent {
            kind: kind.to_string(),
            sid,
            code: Some(err.code.as_str().to_string()),
            message: Some(err.message),
        };
        match event {
            Event::Connected => plain("connect", None),
            Event::ConnectFailed(err) => failed("connect_error", None, err),
            Event::Disconnected => plain("disconnect", None),
            Event::Reconnecting => plain("reconnecting", None),
            Event::Reconnected => plain("reconnect", None),
            Event::ConnectionLost(err) => failed("connection_lost", None, err),
            Event::Error(err) => failed("error", None, err),
            Event::SubReady(sid) => plain("ready", Some(sid)),
            Event::SubTimeout(sid) => failed(
                "timeout",
                Some(sid),
                JetstanError::new(
                    crate::error::ErrorCode::SubscribeTimeout,
                    crate::error::text::SUBSCRIBE_TIMEOUT,
                ),
            ),
            Event::SubError(sid, err) => failed("sub_error", Some(sid), err),
            Event::SubUnsubscribed(sid) => plain("unsubscribed", Some(sid)),
            Event::SubClosed(sid) => plain("closed", Some(sid)),
            Event::CloseFailed(err) => failed("close_error", None, err),
            Event::Closed => plain("close", None),
            Event::Log(line) => NativeEvent {
                kind: "log".to_string(),
                sid: None,
                code: None,
                message: Some(line),
            },
        }
    }
}
