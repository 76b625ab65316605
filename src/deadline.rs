//! Waiting on the earliest of a queue of deadlines that may be empty.

use tokio::time::Instant;

/// Sleeps until `deadline`; with none, never wakes, so a `select!` arm on it
/// stays quiet until there is something to time out.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
