//! Failed-login damping: after `max_failures` failed Basic logins from one client
//! address within a sliding window, that address gets 429 with `Retry-After` until the
//! oldest of those failures has left the window.
//!
//! - Only failures count (a malformed header or wrong credentials; a request without
//!   credentials is not a guess). Successful logins neither count nor reset the tally,
//!   so a caller holding one valid account cannot interleave logins to keep guessing
//!   another's password.
//! - While an address is damped, its requests are refused before their credentials are
//!   looked at, the right password included: otherwise the refusals themselves would
//!   still tell a guesser when a guess was right. Other addresses are not affected.
//! - IPv6 clients are counted per /64 (one host usually owns a whole /64); IPv4-mapped
//!   IPv6 addresses count as their IPv4 address.
//! - Memory is bounded: at most `max_failures` instants per address and
//!   [`MAX_TRACKED_CLIENTS`] addresses; expired entries are dropped first, then the
//!   least recently failing ones.
//!
//! The address is the TCP peer. Behind a reverse proxy every caller shares the proxy's
//! address; `X-Forwarded-For` is not trusted (any client can send it). Turn damping off
//! there (`max_failures: 0`) or damp at the proxy.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LoginDampingConfig;

/// Most client addresses remembered at once.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;

/// Failure tallies per client address.
#[derive(Debug)]
pub struct LoginDamping {
    max_failures: usize,
    window: Duration,
    capacity: usize,
    clients: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// The address failures are counted under: IPv4 as is, IPv6 cut to its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

impl LoginDamping {
    /// Damping as configured in `rsyncserver.login_damping`.
    pub fn new(config: &LoginDampingConfig) -> Self {
        Self::with_limits(
            config.max_failures,
            Duration::from_secs(config.window_seconds),
            MAX_TRACKED_CLIENTS,
        )
    }

    /// Damping after `max_failures` (0: never) within `window`, remembering at most
    /// `capacity` addresses.
    pub fn with_limits(max_failures: usize, window: Duration, capacity: usize) -> Self {
        Self {
            max_failures,
            window,
            capacity: capacity.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        // A panic while holding the lock leaves consistent data (plain inserts/removes).
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(wait)` when `ip` is damped at `now`: it may try again after `wait`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let key = client_key(ip);
        let mut clients = self.lock();
        let Some(failures) = clients.get_mut(&key) else {
            return Ok(());
        };
        self.expire(failures, now);
        if failures.is_empty() {
            clients.remove(&key);
            return Ok(());
        }
        if failures.len() >= self.max_failures {
            let oldest = failures[0];
            let wait = (oldest + self.window).saturating_duration_since(now);
            return Err(wait.max(Duration::from_secs(1)));
        }
        Ok(())
    }

    /// Counts one failed login from `ip` at `now`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        let key = client_key(ip);
        let mut clients = self.lock();
        if !clients.contains_key(&key) && clients.len() >= self.capacity {
            clients.retain(|_, failures| {
                self.expire(failures, now);
                !failures.is_empty()
            });
            if clients.len() >= self.capacity {
                let stalest = clients
                    .iter()
                    .min_by_key(|(_, failures)| failures.back().copied())
                    .map(|(ip, _)| *ip);
                if let Some(stalest) = stalest {
                    clients.remove(&stalest);
                }
            }
        }
        let failures = clients.entry(key).or_default();
        self.expire(failures, now);
        failures.push_back(now);
        // Only the newest `max_failures` decide whether the address is damped.
        while failures.len() > self.max_failures {
            failures.pop_front();
        }
    }

    /// Addresses currently remembered.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn expire(&self, failures: &mut VecDeque<Instant>, now: Instant) {
        while failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            failures.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn damps_after_the_limit_within_the_window_and_recovers() {
        let d = LoginDamping::with_limits(3, MINUTE, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..3 {
            assert_eq!(d.check(a, t0), Ok(()), "failure {i} not yet damped");
            d.record_failure(a, t0 + Duration::from_secs(i * 10));
        }
        // Failures at 0, 10, 20 s: damped until the first leaves the window at 60 s.
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(d.check(a, at(20)), Err(Duration::from_secs(40)));
        assert_eq!(d.check(a, at(59)), Err(Duration::from_secs(1)));
        assert_eq!(d.check(a, at(60)), Ok(()), "oldest failure left the window");
        // One more failure at 60 s makes 3 within the window (10, 20, 60) again.
        d.record_failure(a, at(60));
        assert_eq!(d.check(a, at(61)), Err(Duration::from_secs(9)));
        // Long after: everything expired, the entry is gone.
        assert_eq!(d.check(a, at(200)), Ok(()));
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn failures_spread_over_more_than_the_window_never_damp() {
        let d = LoginDamping::with_limits(3, MINUTE, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..20u64 {
            let now = t0 + Duration::from_secs(i * 31);
            assert_eq!(d.check(a, now), Ok(()), "failure {i}");
            d.record_failure(a, now);
        }
    }

    #[test]
    fn other_addresses_are_not_affected() {
        let d = LoginDamping::with_limits(2, MINUTE, 100);
        let now = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        d.record_failure(a, now);
        d.record_failure(a, now);
        assert!(d.check(a, now).is_err());
        assert_eq!(d.check(b, now), Ok(()));
        d.record_failure(b, now);
        assert_eq!(d.check(b, now), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        let d = LoginDamping::with_limits(2, MINUTE, 100);
        let now = Instant::now();
        d.record_failure(ip("2001:db8:1:2::1"), now);
        d.record_failure(ip("2001:db8:1:2::ffff"), now);
        assert!(d.check(ip("2001:db8:1:2::42"), now).is_err());
        assert_eq!(d.check(ip("2001:db8:1:3::1"), now), Ok(()));
        d.record_failure(ip("::ffff:192.0.2.7"), now);
        d.record_failure(ip("192.0.2.7"), now);
        assert!(d.check(ip("192.0.2.7"), now).is_err());
    }

    #[test]
    fn zero_turns_damping_off() {
        let d = LoginDamping::with_limits(0, MINUTE, 100);
        let now = Instant::now();
        for _ in 0..100 {
            d.record_failure(ip("192.0.2.1"), now);
        }
        assert_eq!(d.check(ip("192.0.2.1"), now), Ok(()));
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let d = LoginDamping::with_limits(2, MINUTE, 50);
        let t0 = Instant::now();
        // A damped address, then a flood of other addresses.
        let a = ip("192.0.2.1");
        d.record_failure(a, t0);
        d.record_failure(a, t0 + Duration::from_secs(1));
        for i in 0..1000u32 {
            let other = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            d.record_failure(other, t0 + Duration::from_millis(1000 + u64::from(i)));
            assert!(d.tracked() <= 50);
        }
        // Per address at most max_failures instants are kept.
        for _ in 0..100 {
            d.record_failure(ip("192.0.2.9"), t0 + Duration::from_secs(5));
        }
        let clients = d.lock();
        assert!(clients.values().all(|f| f.len() <= 2));
        drop(clients);
        // Expired entries go first when room is needed.
        let later = t0 + Duration::from_secs(600);
        d.record_failure(ip("198.51.100.1"), later);
        assert_eq!(d.tracked(), 1);
    }
}
