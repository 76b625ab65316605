//! STAN semantics on JetStream streams and consumers (the default backend).

mod consumer;
pub mod fast_ingest;
pub use consumer::Identity;
pub mod manage;
mod presence;
mod pull;
mod session;
pub mod streams;

pub use session::JetStream;
