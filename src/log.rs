//! Logs. `JETSTAN_LOG` turns the core's tracing events on and sends them to
//! stderr: a level (`info`, `debug`, `trace`) for jetstan's own events, or a
//! full `EnvFilter` directive (`jetstan=debug,async_nats=info`). A connection
//! given a `logger` gets the events of its own tasks (those inside its
//! `connection` span) as lines through its outbox instead, at `info` unless
//! `JETSTAN_LOG` says otherwise. One line per event: level, target, message,
//! fields, then the connection's cluster and client.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{span, Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::id_map::IdMap;

/// Where a connection's lines go (its outbox). A trait object, so that
/// installing the subscriber, which runs when the library loads, links
/// nothing of the JS side.
pub trait LineSink: Send + Sync {
    fn line(&self, text: String);
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Outboxes of connections with a `logger`, by the id their span carries.
/// Touched when a connection starts and when a span is created, never per
/// event.
fn sinks() -> &'static Mutex<IdMap<u64, Weak<dyn LineSink>>> {
    static SINKS: OnceLock<Mutex<IdMap<u64, Weak<dyn LineSink>>>> = OnceLock::new();
    SINKS.get_or_init(|| Mutex::new(IdMap::default()))
}

static NEXT_SINK: AtomicU64 = AtomicU64::new(1);

/// Installs the subscriber; called once when the addon loads.
pub fn init() {
    let directive = std::env::var("JETSTAN_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty());
    let filter = match directive.as_deref().map(str::trim) {
        Some(level) if LEVELS.contains(&level) => format!("jetstan={level},async_nats=warn"),
        Some(full) => full.to_string(),
        None => "jetstan=info".to_string(),
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("jetstan=info"));
    let lines = Lines {
        to_stderr: directive.is_some(),
    };
    // Another subscriber in the process (an embedding app's) wins.
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .try_init();
}

/// Registers a connection's outbox as the destination of its events;
/// returns the id its span carries.
pub fn register<T: LineSink + 'static>(sink: &Arc<T>) -> u64 {
    let id = NEXT_SINK.fetch_add(1, Ordering::Relaxed);
    let sink: Arc<dyn LineSink> = sink.clone();
    let mut sinks = sinks().lock();
    sinks.retain(|_, sink| sink.strong_count() > 0);
    sinks.insert(id, Arc::downgrade(&sink));
    id
}

struct Lines {
    to_stderr: bool,
}

struct Sink(Weak<dyn LineSink>);

/// A span's fields, formatted once when it is created.
struct SpanFields(String);

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
    sink: Option<u64>,
}

impl Visit for Line {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "sink" {
            self.sink = Some(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S> Layer<S> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut line = Line::default();
        attrs.record(&mut line);
        let mut extensions = span.extensions_mut();
        if let Some(sink) = line.sink.and_then(|id| sinks().lock().get(&id).cloned()) {
            extensions.insert(Sink(sink));
        }
        extensions.insert(SpanFields(line.fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        let mut text = format!(
            "{} {}: {}{}",
            meta.level(),
            meta.target(),
            line.message,
            line.fields
        );
        let mut sink = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                let extensions = span.extensions();
                if let Some(SpanFields(fields)) = extensions.get::<SpanFields>() {
                    text.push_str(fields);
                }
                if sink.is_none() {
                    sink = extensions
                        .get::<Sink>()
                        .and_then(|Sink(weak)| weak.upgrade());
                }
            }
        }
        match sink {
            Some(sink) => sink.line(text),
            None if self.to_stderr => eprintln!("{text}"),
            None => {}
        }
    }
}
