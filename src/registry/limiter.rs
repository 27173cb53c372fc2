//! One pause shared by every request to a registry: when it answers 429, every sync that
//! talks to it waits out the same `Retry-After` instead of each hammering it in turn.
//! It also keeps the pull quota Docker Hub announces (`ratelimit-limit`,
//! `ratelimit-remaining`), so pulls can wait before the quota runs out instead of failing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pause applied when a 429 names no `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause one answer can impose on everyone.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Shortest and longest wait before the quota is looked at again.
const MIN_QUOTA_WAIT: Duration = Duration::from_secs(1);
const MAX_QUOTA_WAIT: Duration = Duration::from_secs(300);

/// How often a registry's pause is read from the [`SharedPauses`] (before a request).
const SHARED_REFRESH: Duration = Duration::from_secs(1);
/// Longest a request waits to read the shared pause; a store that does not answer in
/// time is taken as no pause (the request goes ahead as on a single replica).
const SHARED_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// A future of [`SharedPauses`].
pub type PauseFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// 429 pauses kept outside this process, so that the replicas of the service honour a
/// pause any one of them learnt (the job database of several replicas implements it; the
/// registry layer only knows this seam). Times are the store's: a pause is handed over as
/// the time left, so the replicas' clocks do not matter.
pub trait SharedPauses: Send + Sync {
    /// Records that `registry` asked every client to wait `pause` from now. A failure is
    /// the implementation's to log: the local pause holds anyway.
    fn pause<'a>(&'a self, registry: &'a str, pause: Duration) -> PauseFuture<'a, ()>;
    /// How long is left of `registry`'s pause, if one runs.
    fn remaining<'a>(&'a self, registry: &'a str) -> PauseFuture<'a, Option<Duration>>;
}

/// The pull quota a registry last announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Pulls allowed per window.
    pub limit: u64,
    /// Pulls left in the current window.
    pub remaining: u64,
    /// Length of the window.
    pub window: Duration,
}

impl Quota {
    /// Reads `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 20;w=21600`; `None`
    /// when the answer carries no quota (Docker Hub sends none for unlimited accounts).
    pub fn from_headers(limit: Option<&str>, remaining: Option<&str>) -> Option<Quota> {
        fn parse(v: &str) -> Option<(u64, Option<u64>)> {
            let mut parts = v.split(';');
            let n = parts.next()?.trim().parse().ok()?;
            let w = parts.find_map(|p| p.trim().strip_prefix("w=")?.parse().ok());
            Some((n, w))
        }
        let (limit, w1) = parse(limit?)?;
        let (remaining, w2) = parse(remaining?)?;
        let window = Duration::from_secs(w2.or(w1).unwrap_or(21_600));
        Some(Quota {
            limit,
            remaining,
            window,
        })
    }

    /// How long until about one pull is given back: the window shared by the limit.
    pub fn refill(&self) -> Duration {
        (self.window / self.limit.max(1) as u32).clamp(MIN_QUOTA_WAIT, MAX_QUOTA_WAIT)
    }
}

/// The shared "not before" instant and pull quota of one registry host.
#[derive(Default)]
pub struct RateLimiter {
    not_before: Mutex<Option<Instant>>,
    quota: Mutex<Option<Quota>>,
    /// The host, as the shared pauses know it.
    host: String,
    /// Pauses shared with the other replicas, if any.
    shared: Option<Arc<dyn SharedPauses>>,
    /// When the shared pause was last read.
    read_at: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("host", &self.host)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The limiter of `host`, honouring and telling the `shared` pauses when given.
    pub fn new(host: &str, shared: Option<Arc<dyn SharedPauses>>) -> Self {
        Self {
            host: host.to_owned(),
            shared,
            ..Self::default()
        }
    }

    /// Waits until the registry may be asked again (a pause another replica learnt
    /// included: read at most once a [`SHARED_REFRESH`]).
    pub async fn ready(&self) {
        self.read_shared().await;
        let until = *self.not_before.lock().expect("rate limiter lock");
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Records the quota an answer announced.
    pub fn record_quota(&self, quota: Quota) {
        *self.quota.lock().expect("rate limiter lock") = Some(quota);
    }

    /// While fewer than `floor` pulls remain: how long to wait before looking again, and
    /// why (for the sync log and the job).
    pub fn pull_pause(&self, floor: u64) -> Option<(Duration, String)> {
        let quota = (*self.quota.lock().expect("rate limiter lock"))?;
        (quota.remaining < floor).then(|| {
            (
                quota.refill(),
                format!(
                    "only {} of {} pulls left in the registry's {}s window (ratelimit-remaining, floor {floor})",
                    quota.remaining,
                    quota.limit,
                    quota.window.as_secs(),
                ),
            )
        })
    }

    /// Records a 429 answer: nobody asks again before `retry_after` (capped) has passed,
    /// here and, through the shared pauses, on every replica.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let pause = retry_after.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
        self.hold_until(Instant::now() + pause);
        if let Some(shared) = self.shared.clone() {
            let host = self.host.clone();
            // Not awaited: the caller's error goes back at once; the others learn it
            // within a round trip.
            tokio::spawn(async move { shared.pause(&host, pause).await });
        }
    }

    fn hold_until(&self, until: Instant) {
        let mut not_before = self.not_before.lock().expect("rate limiter lock");
        if not_before.is_none_or(|t| t < until) {
            *not_before = Some(until);
        }
    }

    /// Takes on the shared pause of this host, if one runs; read at most once a
    /// [`SHARED_REFRESH`] (the requests meanwhile use what was read last).
    async fn read_shared(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        {
            let mut read_at = self.read_at.lock().expect("rate limiter lock");
            if read_at.is_some_and(|t| t.elapsed() < SHARED_REFRESH) {
                return;
            }
            *read_at = Some(Instant::now());
        }
        let read = tokio::time::timeout(SHARED_READ_TIMEOUT, shared.remaining(&self.host)).await;
        if let Ok(Some(left)) = read {
            self.hold_until(Instant::now() + left.min(MAX_PAUSE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_hub_quota_headers() {
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<(u64, u64, u64)>);
        let cases: &[Case] = &[
            (
                Some("100;w=21600"),
                Some("20;w=21600"),
                Some((100, 20, 21600)),
            ),
            (Some("200"), Some("0;w=60"), Some((200, 0, 60))),
            (Some("100;w=21600"), None, None),
            (None, None, None),
            (Some("many"), Some("1"), None),
        ];
        for (limit, remaining, want) in cases {
            let got = Quota::from_headers(*limit, *remaining)
                .map(|q| (q.limit, q.remaining, q.window.as_secs()));
            assert_eq!(got, *want, "{limit:?} {remaining:?}");
        }
        let limiter = RateLimiter::default();
        assert!(limiter.pull_pause(5).is_none(), "no quota seen: no wait");
        limiter.record_quota(Quota::from_headers(Some("100;w=21600"), Some("4;w=21600")).unwrap());
        let (wait, why) = limiter.pull_pause(5).unwrap();
        assert_eq!(wait, Duration::from_secs(216));
        assert!(why.contains("only 4 of 100 pulls left"), "{why}");
        limiter.record_quota(Quota::from_headers(Some("100;w=21600"), Some("5;w=21600")).unwrap());
        assert!(limiter.pull_pause(5).is_none());
    }

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
