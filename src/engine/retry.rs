//! Trying again what can pass: exponential backoff with jitter, `Retry-After` honoured
//! up to a cap, and nothing retried that cannot succeed (401, 403, 404, bad input).

use std::future::Future;
use std::time::Duration;

use super::progress::{Observers, SyncEvent};
use super::synclog::SyncLog;
use crate::registry::RegistryError;

/// First wait before a retry.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest single wait; a `Retry-After` beyond it fails instead of stalling the sync.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How many times to retry, from `task.retries`, and whom to tell about each retry.
#[derive(Clone, Default)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Told of every retry (metrics count them by cause).
    pub observers: Observers,
    /// The longest this sync may wait for a registry's rate limit (its caller waits for
    /// the answer); `None`: as long as the quota asks, and [`MAX_BACKOFF`] for a 429.
    pub max_wait: Option<Duration>,
}

impl RetryPolicy {
    /// Runs `attempt` until it succeeds, fails for good, or the retries are spent.
    pub async fn run<T, F, Fut>(
        &self,
        log: &SyncLog,
        what: &str,
        mut attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut tried = 0;
        loop {
            let err = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !err.is_retryable() || tried >= self.retries {
                return Err(err);
            }
            let wait = match err.retry_after() {
                Some(asked) if err.is_rate_limited() => {
                    // A 429 asking for more than this sync may wait fails now, saying how
                    // long the wait would be, instead of waiting into the caller's timeout.
                    let limit = self.max_wait.map_or(MAX_BACKOFF, |w| w.min(MAX_BACKOFF));
                    if asked > limit {
                        return Err(RegistryError::RateLimited {
                            registry: err.registry().to_owned(),
                            step: what.to_owned(),
                            cause: format!("HTTP 429 Too Many Requests, asking to wait {}s (Retry-After or the quota window)", asked.as_secs()),
                            wait: asked,
                            limit,
                        });
                    }
                    asked
                }
                Some(asked) if asked > MAX_BACKOFF => return Err(err),
                Some(asked) => asked,
                None => backoff(tried),
            };
            tried += 1;
            self.observers.emit(&SyncEvent::Retry {
                registry: err.registry(),
                cause: err.retry_cause(),
            });
            let message = format!(
                "{what} failed, retry {tried}/{} in {:.1}s: {err}",
                self.retries,
                wait.as_secs_f64()
            );
            log.warn(&message);
            if err.is_rate_limited() {
                self.observers.emit(&SyncEvent::RateLimitWait {
                    image: None,
                    registry: err.registry(),
                    wait,
                    reason: &message,
                    again: false,
                });
                tokio::time::sleep(wait).await;
                self.observers.emit(&SyncEvent::RateLimitOver {
                    registry: err.registry(),
                });
            } else {
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Exponential wait for retry number `n` (from 0), with up to 20% jitter, capped.
fn backoff(n: u32) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1 << n.min(5)).min(MAX_BACKOFF);
    // Jitter only has to spread concurrent retries apart; the clock's nanoseconds suffice.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = base.mul_f64(f64::from(nanos % 1000) / 5000.0);
    (base + jitter).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn err(status: u16, retry_after: Option<u64>) -> RegistryError {
        RegistryError::Status {
            registry: "r".into(),
            step: "s".into(),
            status,
            code: None,
            detail: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) >= FIRST_BACKOFF && backoff(0) < FIRST_BACKOFF * 2);
        assert!(backoff(2) >= FIRST_BACKOFF * 4);
        assert!(backoff(30) <= MAX_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_what_can_pass() {
        let log = SyncLog::default();
        let policy = RetryPolicy {
            retries: 2,
            ..RetryPolicy::default()
        };
        for (status, retry_after, want_calls) in [
            (503, None, 3),
            (429, Some(2), 3),
            (429, Some(3600), 1),
            (401, None, 1),
            (404, None, 1),
        ] {
            let calls = AtomicU32::new(0);
            let r: Result<(), _> = policy
                .run(&log, "x", || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(err(status, retry_after)) }
                })
                .await;
            assert!(r.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), want_calls, "status {status}");
        }
    }
}
