//! A fixed-bucket histogram, as Prometheus' classic histograms count: each observation
//! lands in the first bucket whose upper bound (`le`) is at least the value.

/// Bucket bounds (seconds) for HTTP requests: most answer in milliseconds, a synchronous
/// sync POST in seconds to minutes.
pub const HTTP_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Bucket bounds (seconds) for whole syncs: a small image between nearby registries
/// takes a second or two, a big multi-platform one across regions many minutes.
pub const SYNC_SECONDS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Bucket bounds (seconds) for a job's wait in the queue: none at all while a slot is
/// free, up to a whole sync's length (or several) when the service is full.
pub const QUEUE_SECONDS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Counts per bucket, plus the sum and count of every observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then the `+Inf` bucket; not cumulative (made so when written).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds`, which must be ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts `value`.
    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, observations at or below it)` per bucket, `None` being `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        let bounds = self.bounds.iter().copied().map(Some).chain([None]);
        bounds.zip(&self.counts).scan(0, |total, (bound, &n)| {
            *total += n;
            Some((bound, *total))
        })
    }

    /// Sum of every observed value.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(1.0);
        h.observe(2.5);
        let buckets: Vec<_> = h.cumulative().collect();
        assert_eq!(buckets, [(Some(1.0), 1), (Some(2.0), 1), (None, 2)]);
        assert_eq!((h.sum(), h.count()), (3.5, 2));
    }

    #[test]
    fn bounds_are_ascending() {
        for bounds in [HTTP_SECONDS, SYNC_SECONDS] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
