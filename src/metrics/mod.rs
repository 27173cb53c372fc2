//! Service metrics, served by `GET /metrics` in the Prometheus text format.
//!
//! [`Metrics`] is the engine's service-wide [`SyncObserver`] (blobs, bytes, retries),
//! and is told of every finished sync and every HTTP request by the API layer; the
//! gauges are read from the service's state at scrape time. One job per module:
//! [`histogram`] counts into buckets, [`text`] writes the exposition format. Knows
//! nothing of HTTP serving: the route lives in `http`.
//!
//! Every label is low-cardinality: outcomes, kinds, causes, route templates, status
//! classes and registry `host[:port]` (capped at [`MAX_REGISTRIES`] distinct values);
//! never an image name, a tag, a path with ids, or a user.

pub mod histogram;
pub mod text;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use self::histogram::{Histogram, HTTP_SECONDS, QUEUE_SECONDS, SYNC_SECONDS};
use self::text::{Exposition, Kind};
use crate::engine::{BlobKind, SyncEvent, SyncObserver};

pub use self::text::CONTENT_TYPE;

/// Distinct registries counted by name; later ones count under [`OTHER_REGISTRY`]. Users
/// may name any public registry, and every name would otherwise be a new series forever.
pub const MAX_REGISTRIES: usize = 100;

/// The `registry` label of registries beyond [`MAX_REGISTRIES`].
pub const OTHER_REGISTRY: &str = "other";

/// The `route` label of requests that matched no route (404s), so that raw paths never
/// become label values.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// How a sync request ended: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncOutcome {
    /// Every image copied (`rsync_status` `successfully`).
    Succeeded,
    /// A registry or the service made it fail (`failed`).
    Failed,
    /// The request was unusable, refused or turned away (`unusual`).
    Unusual,
    /// Cancelled by a user, before or while it ran.
    Cancelled,
}

impl SyncOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Unusual => "unusual",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Values read from the service's state when scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Syncs running now.
    pub syncs_in_flight: usize,
    /// Jobs waiting for a sync slot.
    pub jobs_queued: usize,
    /// Blob transfers streaming now, across every sync.
    pub blob_transfers_in_flight: usize,
}

/// Every counter and histogram of the service; share it in an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    tallies: Mutex<Tallies>,
}

/// Blob kinds in label order; [`kind_index`] maps a kind to its slot.
const KINDS: [BlobKind; 3] = [BlobKind::Copied, BlobKind::Mounted, BlobKind::Skipped];

fn kind_index(kind: BlobKind) -> usize {
    match kind {
        BlobKind::Copied => 0,
        BlobKind::Mounted => 1,
        BlobKind::Skipped => 2,
    }
}

#[derive(Debug, Default)]
struct Tallies {
    /// By (outcome, HTTP status).
    syncs: BTreeMap<(SyncOutcome, u16), u64>,
    sync_seconds: BTreeMap<SyncOutcome, Histogram>,
    /// Time jobs waited for a sync slot; created on the first start.
    queue_seconds: Option<Histogram>,
    /// By registry, then kind: (blobs, bytes).
    blobs: BTreeMap<String, [(u64, u64); 3]>,
    /// Referrers written, by target registry.
    referrers: BTreeMap<String, u64>,
    /// By registry, then cause.
    retries: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// By (route, method, status class).
    requests: BTreeMap<(String, &'static str, &'static str), Histogram>,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one finished sync request with the HTTP status it was (or would have been)
    /// answered with; `ran_seconds` is its duration when the engine ran it, `None` for a
    /// request refused before (those would only blur the duration histogram).
    pub fn record_sync(&self, outcome: SyncOutcome, http_status: u16, ran_seconds: Option<f64>) {
        let mut tallies = self.lock();
        *tallies.syncs.entry((outcome, http_status)).or_default() += 1;
        if let Some(seconds) = ran_seconds {
            tallies
                .sync_seconds
                .entry(outcome)
                .or_insert_with(|| Histogram::new(SYNC_SECONDS))
                .observe(seconds);
        }
    }

    /// Counts the wait of one job that got a sync slot.
    pub fn record_queue_wait(&self, seconds: f64) {
        self.lock()
            .queue_seconds
            .get_or_insert_with(|| Histogram::new(QUEUE_SECONDS))
            .observe(seconds);
    }

    /// Counts one answered HTTP request. `route` must be a route template (or
    /// [`UNMATCHED_ROUTE`]), never a raw path; unknown methods count as `other`.
    pub fn record_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let key = (route.to_owned(), method_label(method), status_class(status));
        self.lock()
            .requests
            .entry(key)
            .or_insert_with(|| Histogram::new(HTTP_SECONDS))
            .observe(seconds);
    }

    /// The whole exposition, with `gauges` read by the caller just before.
    pub fn render(&self, gauges: Gauges) -> String {
        let tallies = self.lock();
        let mut text = Exposition::default();

        text.family(
            "imagersync_build_info",
            "Always 1; the version label says which build runs.",
            Kind::Gauge,
        );
        text.sample(
            "imagersync_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );

        let name = "imagersync_syncs_total";
        text.family(
            name,
            "Sync requests answered, by outcome and HTTP status, refused ones included.",
            Kind::Counter,
        );
        for ((outcome, status), n) in &tallies.syncs {
            let status = status.to_string();
            text.sample(
                name,
                &[
                    ("outcome", outcome.as_str()),
                    ("http_status", status.as_str()),
                ],
                *n,
            );
        }

        let name = "imagersync_sync_duration_seconds";
        text.family(
            name,
            "Time from start to end of syncs the engine ran, by outcome.",
            Kind::Histogram,
        );
        for (outcome, histogram) in &tallies.sync_seconds {
            text.histogram(name, &[("outcome", outcome.as_str())], histogram);
        }

        let name = "imagersync_job_queue_wait_seconds";
        text.family(
            name,
            "Time jobs (synchronous and asynchronous) waited for a free sync slot before they started.",
            Kind::Histogram,
        );
        if let Some(histogram) = &tallies.queue_seconds {
            text.histogram(name, &[], histogram);
        }

        gauge(
            &mut text,
            "imagersync_syncs_in_flight",
            "Syncs running now.",
            gauges.syncs_in_flight,
        );
        gauge(
            &mut text,
            "imagersync_jobs_queued",
            "Sync jobs (synchronous and asynchronous) waiting for a free sync slot.",
            gauges.jobs_queued,
        );

        let name = "imagersync_blobs_total";
        text.family(
            name,
            "Blobs that reached a target registry, by how: copied, mounted or skipped (already there).",
            Kind::Counter,
        );
        for (registry, kinds) in &tallies.blobs {
            for (kind, (blobs, _)) in KINDS.iter().zip(kinds) {
                text.sample(
                    name,
                    &[("registry", registry.as_str()), ("kind", kind.as_str())],
                    *blobs,
                );
            }
        }
        let name = "imagersync_blob_bytes_total";
        text.family(
            name,
            "Size of those blobs in bytes; only kind=\"copied\" bytes crossed the network.",
            Kind::Counter,
        );
        for (registry, kinds) in &tallies.blobs {
            for (kind, (_, bytes)) in KINDS.iter().zip(kinds) {
                text.sample(
                    name,
                    &[("registry", registry.as_str()), ("kind", kind.as_str())],
                    *bytes,
                );
            }
        }
        let name = "imagersync_referrers_total";
        text.family(
            name,
            "Referrers (signatures, attestations, SBOMs) written to a target registry.",
            Kind::Counter,
        );
        for (registry, n) in &tallies.referrers {
            text.sample(name, &[("registry", registry.as_str())], *n);
        }
        gauge(
            &mut text,
            "imagersync_blob_transfers_in_flight",
            "Blob transfers streaming now, across every sync.",
            gauges.blob_transfers_in_flight,
        );

        let name = "imagersync_retries_total";
        text.family(
            name,
            "Registry steps that failed and were tried again, by registry and cause.",
            Kind::Counter,
        );
        for (registry, causes) in &tallies.retries {
            for (cause, n) in causes {
                text.sample(
                    name,
                    &[("registry", registry.as_str()), ("cause", *cause)],
                    *n,
                );
            }
        }

        let name = "imagersync_http_request_duration_seconds";
        text.family(
            name,
            "Time to answer HTTP requests (until the response head), by route template, method and status class.",
            Kind::Histogram,
        );
        for ((route, method, class), histogram) in &tallies.requests {
            let labels = [
                ("route", route.as_str()),
                ("method", *method),
                ("status_class", *class),
            ];
            text.histogram(name, &labels, histogram);
        }

        text.finish()
    }

    /// A counter that cannot be trusted is still better than a panicking observer, so a
    /// poisoned lock (a panic while counting) is used as it is.
    fn lock(&self) -> MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SyncObserver for Metrics {
    fn on_event(&self, event: &SyncEvent<'_>) {
        match *event {
            SyncEvent::BlobDone {
                registry,
                kind,
                bytes,
                ..
            } => {
                let mut tallies = self.lock();
                let slot = &mut registry_slot(&mut tallies.blobs, registry)[kind_index(kind)];
                slot.0 += 1;
                slot.1 += bytes;
            }
            SyncEvent::ReferrerCopied { registry, .. } => {
                *registry_slot(&mut self.lock().referrers, registry) += 1;
            }
            SyncEvent::Retry { registry, cause } => {
                let mut tallies = self.lock();
                *registry_slot(&mut tallies.retries, registry)
                    .entry(cause)
                    .or_default() += 1;
            }
            _ => {}
        }
    }
}

fn gauge(text: &mut Exposition, name: &str, help: &str, value: usize) {
    text.family(name, help, Kind::Gauge);
    text.sample(name, &[], value as u64);
}

/// The entry of `registry`, or of [`OTHER_REGISTRY`] once [`MAX_REGISTRIES`] are known.
fn registry_slot<'m, V: Default>(map: &'m mut BTreeMap<String, V>, registry: &str) -> &'m mut V {
    let key = if map.contains_key(registry) || map.len() < MAX_REGISTRIES {
        registry
    } else {
        OTHER_REGISTRY
    };
    // Looked up first so the common case (a known registry) allocates nothing.
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// The standard methods by name; anything else (a client may send any token) as `other`.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample written exactly as `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn empty_metrics_still_declare_every_family() {
        let text = Metrics::new().render(Gauges {
            syncs_in_flight: 2,
            jobs_queued: 3,
            blob_transfers_in_flight: 4,
        });
        for (name, kind) in [
            ("imagersync_build_info", "gauge"),
            ("imagersync_syncs_total", "counter"),
            ("imagersync_sync_duration_seconds", "histogram"),
            ("imagersync_job_queue_wait_seconds", "histogram"),
            ("imagersync_syncs_in_flight", "gauge"),
            ("imagersync_jobs_queued", "gauge"),
            ("imagersync_blobs_total", "counter"),
            ("imagersync_blob_bytes_total", "counter"),
            ("imagersync_referrers_total", "counter"),
            ("imagersync_blob_transfers_in_flight", "gauge"),
            ("imagersync_retries_total", "counter"),
            ("imagersync_http_request_duration_seconds", "histogram"),
        ] {
            assert!(
                text.contains(&format!("\n# TYPE {name} {kind}\n")),
                "{name} {kind} missing:\n{text}"
            );
        }
        let version = format!(
            "imagersync_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &version).as_deref(), Some("1"));
        assert_eq!(
            value(&text, "imagersync_syncs_in_flight").as_deref(),
            Some("2")
        );
        assert_eq!(value(&text, "imagersync_jobs_queued").as_deref(), Some("3"));
        assert_eq!(
            value(&text, "imagersync_blob_transfers_in_flight").as_deref(),
            Some("4")
        );
    }

    #[test]
    fn blob_and_retry_events_count_by_registry_and_kind() {
        let metrics = Metrics::new();
        for (kind, bytes) in [
            (BlobKind::Copied, 100),
            (BlobKind::Copied, 50),
            (BlobKind::Skipped, 7),
        ] {
            metrics.on_event(&SyncEvent::BlobDone {
                image: 0,
                registry: "dst:5000",
                kind,
                bytes,
            });
        }
        metrics.on_event(&SyncEvent::Retry {
            registry: "src:5000",
            cause: "server_error",
        });
        for _ in 0..3 {
            metrics.on_event(&SyncEvent::ReferrerCopied {
                image: 0,
                registry: "dst:5000",
            });
        }
        let text = metrics.render(Gauges::default());
        assert_eq!(
            value(&text, "imagersync_referrers_total{registry=\"dst:5000\"}").as_deref(),
            Some("3")
        );
        let series =
            |name: &str, kind: &str| format!("{name}{{registry=\"dst:5000\",kind=\"{kind}\"}}");
        assert_eq!(
            value(&text, &series("imagersync_blobs_total", "copied")).as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&text, &series("imagersync_blob_bytes_total", "copied")).as_deref(),
            Some("150")
        );
        assert_eq!(
            value(&text, &series("imagersync_blobs_total", "mounted")).as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&text, &series("imagersync_blob_bytes_total", "skipped")).as_deref(),
            Some("7")
        );
        assert_eq!(
            value(
                &text,
                r#"imagersync_retries_total{registry="src:5000",cause="server_error"}"#
            )
            .as_deref(),
            Some("1")
        );
    }

    #[test]
    fn syncs_count_by_outcome_and_only_runs_have_durations() {
        let metrics = Metrics::new();
        metrics.record_sync(SyncOutcome::Succeeded, 200, Some(1.5));
        metrics.record_sync(SyncOutcome::Succeeded, 200, Some(0.2));
        metrics.record_sync(SyncOutcome::Unusual, 400, None);
        let text = metrics.render(Gauges::default());
        assert_eq!(
            value(
                &text,
                r#"imagersync_syncs_total{outcome="succeeded",http_status="200"}"#
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(
                &text,
                r#"imagersync_syncs_total{outcome="unusual",http_status="400"}"#
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &text,
                r#"imagersync_sync_duration_seconds_count{outcome="succeeded"}"#
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(
                &text,
                r#"imagersync_sync_duration_seconds_bucket{outcome="succeeded",le="1"}"#
            )
            .as_deref(),
            Some("1")
        );
        assert!(!text.contains(r#"imagersync_sync_duration_seconds_count{outcome="unusual"}"#));
    }

    #[test]
    fn requests_count_by_route_method_and_class() {
        let metrics = Metrics::new();
        metrics.record_request("/v1/image/rsync/jobs/{id}", "GET", 404, 0.002);
        metrics.record_request("/v1/image/rsync/jobs/{id}", "GET", 200, 0.002);
        metrics.record_request("/v1/image/rsync/jobs/{id}", "GET", 204, 0.002);
        metrics.record_request(UNMATCHED_ROUTE, "BREW", 404, 0.001);
        let text = metrics.render(Gauges::default());
        let count = |labels: &str| {
            value(
                &text,
                &format!("imagersync_http_request_duration_seconds_count{{{labels}}}"),
            )
        };
        assert_eq!(
            count(r#"route="/v1/image/rsync/jobs/{id}",method="GET",status_class="2xx""#)
                .as_deref(),
            Some("2")
        );
        assert_eq!(
            count(r#"route="/v1/image/rsync/jobs/{id}",method="GET",status_class="4xx""#)
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            count(r#"route="unmatched",method="other",status_class="4xx""#).as_deref(),
            Some("1")
        );
        assert!(!text.contains("BREW"));
    }

    #[test]
    fn registries_beyond_the_cap_count_as_other() {
        let metrics = Metrics::new();
        for i in 0..=MAX_REGISTRIES {
            metrics.on_event(&SyncEvent::Retry {
                registry: &format!("reg{i}.example.com"),
                cause: "network",
            });
        }
        metrics.on_event(&SyncEvent::Retry {
            registry: "reg0.example.com",
            cause: "network",
        });
        let text = metrics.render(Gauges::default());
        let retries = |registry: &str| {
            value(
                &text,
                &format!("imagersync_retries_total{{registry=\"{registry}\",cause=\"network\"}}"),
            )
        };
        assert_eq!(
            retries("reg0.example.com").as_deref(),
            Some("2"),
            "known ones still count"
        );
        assert_eq!(retries(OTHER_REGISTRY).as_deref(), Some("1"));
        assert_eq!(retries(&format!("reg{MAX_REGISTRIES}.example.com")), None);
    }

    #[test]
    fn registry_label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.on_event(&SyncEvent::Retry {
            registry: "evil\"}\nimagersync_fake 1",
            cause: "network",
        });
        let text = metrics.render(Gauges::default());
        assert!(
            !text.lines().any(|l| l.starts_with("imagersync_fake")),
            "{text}"
        );
        assert!(
            text.contains(r#"registry="evil\"}\nimagersync_fake 1""#),
            "{text}"
        );
    }
}
