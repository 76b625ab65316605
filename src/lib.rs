//! jetstan: the node-nats-streaming 0.3.2 API on a Rust core.
//!
//! Layers, top to bottom: `connection` (the napi class: convert and
//! forward), `outbox` (batched hand-off to the JS thread), the two backends
//! — `jetstream` (STAN semantics on streams and consumers) and `stan` (the
//! legacy wire protocol) — over `link` (the NATS connection both use), and
//! the backend-neutral `options`, `subject` and `error` modules.

#![deny(clippy::all)]

pub mod connection;
pub mod error;
pub mod jetstream;
pub mod kv;
pub mod link;
pub mod options;
pub mod outbox;
pub mod stan;
pub mod subject;
