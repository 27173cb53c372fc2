//! One pause shared by every request to a registry: when it answers 429, every sync that
//! talks to it waits out the same `Retry-After` instead of each hammering it in turn.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pause applied when a 429 names no `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause one answer can impose on everyone.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The shared "not before" instant of one registry host.
#[derive(Debug, Default)]
pub struct RateLimiter {
    not_before: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// Waits until the registry may be asked again.
    pub async fn ready(&self) {
        let until = *self.not_before.lock().expect("rate limiter lock");
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Records a 429 answer: nobody asks again before `retry_after` (capped) has passed.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let pause = retry_after.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
        let until = Instant::now() + pause;
        let mut not_before = self.not_before.lock().expect("rate limiter lock");
        if not_before.is_none_or(|t| t < until) {
            *not_before = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn everyone_waits_out_the_same_pause() {
        let limiter = RateLimiter::default();
        let start = tokio::time::Instant::now();
        limiter.ready().await;
        assert!(start.elapsed() < Duration::from_millis(10));
        limiter.throttled(Some(Duration::from_secs(2)));
        limiter.throttled(Some(Duration::from_secs(1)));
        limiter.ready().await;
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "the longer pause wins"
        );
        limiter.throttled(Some(Duration::from_secs(3600)));
        let before = tokio::time::Instant::now();
        limiter.ready().await;
        assert!(before.elapsed() <= MAX_PAUSE);
    }
}
