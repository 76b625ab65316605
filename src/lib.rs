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
pub mod driver;
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

/// The JS thread runs the runtime from its own event loop (`driver`), so a
/// round trip wakes no other thread; `JETSTAN_WORKER_THREADS`, or an addon
/// loaded off the main thread, gets a multi-thread runtime with that many
/// workers (one by default: the JS thread already needs a core of its own).
#[napi_derive::module_init]
fn init_runtime() {
    log::init();
    let workers = std::env::var("JETSTAN_WORKER_THREADS")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|&count| count > 0);
    if workers.is_none() {
        if let Some(runtime) = driver::on_main_loop() {
            napi::bindgen_prelude::create_custom_tokio_runtime(runtime);
            return;
        }
    }
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.unwrap_or(1))
        .thread_name("jetstan-io")
        .enable_all()
        .build()
    {
        Ok(runtime) => napi::bindgen_prelude::create_custom_tokio_runtime(runtime),
        // napi then builds its default runtime on first use.
        Err(err) => tracing::warn!("jetstan: custom tokio runtime failed: {err}"),
    }
}
