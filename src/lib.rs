//! jetstan: the node-nats-streaming 0.3.2 API on a Rust core.
//!
//! Layers, top to bottom: `connection` (the napi class: convert and
//! forward), `outbox` (batched hand-off to the JS thread), `session` (one
//! task per connection owning its lifecycle, with `publish` for what is in
//! flight), the two backends behind its `Protocol` trait — `jetstream`
//! (STAN semantics on streams and consumers) and `stan` (the legacy wire
//! protocol) — over `link` (the NATS connection both use, with `auth` for
//! credentials and TLS), and the
//! backend-neutral `options`, `subject` and `error` modules.

#![deny(clippy::all)]

pub mod auth;
pub mod connection;
pub mod deadline;
pub mod error;
pub mod id_map;
pub mod jetstream;
pub mod kv;
pub mod link;
pub mod log;
pub mod options;
pub mod outbox;
pub mod publish;
pub mod session;
pub mod stan;
pub mod subject;

/// One tokio worker by default: the JS thread already needs a core of its
/// own, and keeping the publish, consume and NATS-connection tasks on one
/// thread turns their wakes into queue pushes instead of cross-core futex
/// calls. `JETSTAN_WORKER_THREADS` raises it for hosts with cores to spare.
#[napi_derive::module_init]
fn init_runtime() {
    log::init();
    let workers = std::env::var("JETSTAN_WORKER_THREADS")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|&count| count > 0)
        .unwrap_or(1);
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("jetstan-io")
        .enable_all()
        .build()
    {
        Ok(runtime) => napi::bindgen_prelude::create_custom_tokio_runtime(runtime),
        // napi then builds its default runtime on first use.
        Err(err) => tracing::warn!("jetstan: custom tokio runtime failed: {err}"),
    }
}
