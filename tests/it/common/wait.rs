//! Waiting on an event rather than sleeping for a guessed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 200 ms until it yields a value, for at most `limit` (a deadline
/// for a hung test, not a speed limit); the panic names `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
