//! Service metrics, served by `GET /metrics` in the Prometheus text format.
//!
//! [`Metrics`] is the engine's service-wide [`SyncObserver`] (blobs, bytes, retries),
//! and is told of every finished sync and every HTTP request by the API layer; the
//! gauges are read from the service's state at scrape time. Knows nothing of HTTP
//! serving: the route lives in `http`.
//!
//! Counters, gauges, histograms and the text exposition (format 0.0.4, label values and
//! help escaped) are `prometheus-client`'s, the Prometheus project's Rust client. What
//! stays here is what the service decides: which families exist, their names, labels and
//! bucket bounds, and the cap on registry names.
//!
//! Every label is low-cardinality: outcomes, kinds, causes, route templates, status
//! classes and registry `host[:port]` (capped at [`MAX_REGISTRIES`] distinct values);
//! never an image name, a tag, a path with ids, or a user. The job gauges carry the
//! `replica` id of the process (one value per process), so that the replicas sharing one
//! PostgreSQL job database can be told apart and summed.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::engine::{BlobKind, SyncEvent, SyncObserver};

/// `Content-Type` of the exposition: the Prometheus text format, version 0.0.4.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Distinct registries counted by name; later ones count under [`OTHER_REGISTRY`]. Users
/// may name any public registry, and every name would otherwise be a new series forever.
pub const MAX_REGISTRIES: usize = 100;

/// The `registry` label of registries beyond [`MAX_REGISTRIES`].
pub const OTHER_REGISTRY: &str = "other";

/// The `route` label of requests that matched no route (404s), so that raw paths never
/// become label values.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Bucket bounds (seconds) for HTTP requests: most answer in milliseconds, a synchronous
/// sync POST in seconds to minutes.
pub const HTTP_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Bucket bounds (seconds) for a job's wait in the queue: none at all while a slot is
/// free, up to a whole sync's length (or several) when the service is full.
pub const QUEUE_SECONDS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Bucket bounds (seconds) for whole syncs: a small image between nearby registries
/// takes a second or two, a big multi-platform one across regions many minutes.
pub const SYNC_SECONDS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

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
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// This process's replica id (the owner it writes into the job rows it holds): the
    /// `replica` label of the job gauges.
    pub replica: String,
    /// Syncs running now.
    pub syncs_in_flight: usize,
    /// Jobs waiting for a sync slot.
    pub jobs_queued: usize,
    /// Blob transfers streaming now, across every sync.
    pub blob_transfers_in_flight: usize,
}

// Label sets; the field order is the order of the labels in the exposition.

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SyncLabels {
    outcome: &'static str,
    http_status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BlobLabels {
    registry: String,
    kind: &'static str,
}

/// The label of the job gauges: which replica's jobs they count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

/// The label set of a family with one series and no labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NoLabels {}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetryLabels {
    registry: String,
    cause: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// A family of histograms over fixed bounds, one per label set.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_SECONDS.iter().copied())
}

fn queue_histogram() -> Histogram {
    Histogram::new(QUEUE_SECONDS.iter().copied())
}

fn sync_histogram() -> Histogram {
    Histogram::new(SYNC_SECONDS.iter().copied())
}

/// A family whose `# HELP` and `# TYPE` lines are written before its first series too:
/// prometheus-client leaves out a family with no series, and doc/api.md promises every
/// family in every scrape.
#[derive(Debug)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Every counter and histogram of the service; share it in an `Arc`.
pub struct Metrics {
    /// Every family below, in exposition order.
    registry: Registry,
    syncs: Family<SyncLabels, Counter>,
    sync_seconds: Histograms<OutcomeLabels>,
    /// One series, created by the first job that starts.
    queue_seconds: Histograms<NoLabels>,
    /// One series, this replica's (set at each scrape).
    syncs_in_flight: Family<ReplicaLabels, Gauge>,
    /// One series, this replica's (set at each scrape).
    jobs_queued: Family<ReplicaLabels, Gauge>,
    blobs: Family<BlobLabels, Counter>,
    blob_bytes: Family<BlobLabels, Counter>,
    referrers: Family<RegistryLabels, Counter>,
    blob_transfers_in_flight: Gauge,
    retries: Family<RetryLabels, Counter>,
    requests: Histograms<RequestLabels>,
    /// Registry names given their own series, per family (blobs, retries).
    blob_registries: Mutex<HashSet<String>>,
    retry_registries: Mutex<HashSet<String>>,
    referrer_registries: Mutex<HashSet<String>>,
    /// Held while the gauges are set and the exposition written, so a scrape shows the
    /// gauges its caller read.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Blob kinds in label order.
const KINDS: [BlobKind; 3] = [BlobKind::Copied, BlobKind::Mounted, BlobKind::Skipped];

impl Metrics {
    /// Empty metrics: every family declared, no series counted yet.
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            syncs: Family::default(),
            sync_seconds: Family::new_with_constructor(sync_histogram),
            queue_seconds: Family::new_with_constructor(queue_histogram),
            syncs_in_flight: Family::default(),
            jobs_queued: Family::default(),
            blobs: Family::default(),
            blob_bytes: Family::default(),
            referrers: Family::default(),
            blob_transfers_in_flight: Gauge::default(),
            retries: Family::default(),
            requests: Family::new_with_constructor(http_histogram),
            blob_registries: Mutex::default(),
            retry_registries: Mutex::default(),
            referrer_registries: Mutex::default(),
            scrape: Mutex::default(),
        };
        metrics.register()
    }

    /// Registers every family, in exposition order. prometheus-client adds the `_total`
    /// suffix of counters, the `_info` suffix of the build info, and a full stop after
    /// each help text.
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "imagersync_build",
            "Always 1; the version label says which build runs",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        r.register(
            "imagersync_syncs",
            "Sync requests answered, by outcome and HTTP status, refused ones included",
            Declared(self.syncs.clone()),
        );
        r.register(
            "imagersync_sync_duration_seconds",
            "Time from start to end of syncs the engine ran, by outcome",
            Declared(self.sync_seconds.clone()),
        );
        r.register(
            "imagersync_job_queue_wait_seconds",
            "Time jobs (synchronous and asynchronous) waited for a free sync slot before they started",
            Declared(self.queue_seconds.clone()),
        );
        r.register(
            "imagersync_syncs_in_flight",
            "Syncs running now on this replica",
            Declared(self.syncs_in_flight.clone()),
        );
        r.register(
            "imagersync_jobs_queued",
            "Sync jobs (synchronous and asynchronous) waiting for a free sync slot on this replica",
            Declared(self.jobs_queued.clone()),
        );
        r.register(
            "imagersync_blobs",
            "Blobs that reached a target registry, by how: copied, mounted or skipped (already there)",
            Declared(self.blobs.clone()),
        );
        r.register(
            "imagersync_blob_bytes",
            "Size of those blobs in bytes; only kind=\"copied\" bytes crossed the network",
            Declared(self.blob_bytes.clone()),
        );
        r.register(
            "imagersync_referrers",
            "Referrers (signatures, attestations, SBOMs) written to a target registry",
            Declared(self.referrers.clone()),
        );
        r.register(
            "imagersync_blob_transfers_in_flight",
            "Blob transfers streaming now, across every sync",
            self.blob_transfers_in_flight.clone(),
        );
        r.register(
            "imagersync_retries",
            "Registry steps that failed and were tried again, by registry and cause",
            Declared(self.retries.clone()),
        );
        r.register(
            "imagersync_http_request_duration_seconds",
            "Time to answer HTTP requests (until the response head), by route template, method and status class",
            Declared(self.requests.clone()),
        );
        self
    }

    /// Counts one finished sync request with the HTTP status it was (or would have been)
    /// answered with; `ran_seconds` is its duration when the engine ran it, `None` for a
    /// request refused before (those would only blur the duration histogram).
    pub fn record_sync(&self, outcome: SyncOutcome, http_status: u16, ran_seconds: Option<f64>) {
        let outcome = outcome.as_str();
        self.syncs
            .get_or_create(&SyncLabels {
                outcome,
                http_status,
            })
            .inc();
        if let Some(seconds) = ran_seconds {
            self.sync_seconds
                .get_or_create(&OutcomeLabels { outcome })
                .observe(seconds);
        }
    }

    /// Counts the wait of one job that got a sync slot.
    pub fn record_queue_wait(&self, seconds: f64) {
        self.queue_seconds
            .get_or_create(&NoLabels {})
            .observe(seconds);
    }

    /// Counts one answered HTTP request. `route` must be a route template (or
    /// [`UNMATCHED_ROUTE`]), never a raw path; unknown methods count as `other`.
    pub fn record_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            route: route.to_owned(),
            method: method_label(method),
            status_class: status_class(status),
        };
        self.requests.get_or_create(&labels).observe(seconds);
    }

    /// The whole exposition, with `gauges` read by the caller just before.
    pub fn render(&self, gauges: Gauges) -> String {
        let _scrape = lock(&self.scrape);
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let replica = ReplicaLabels {
            replica: gauges.replica,
        };
        // Cleared first, so the exposition only ever holds this replica's one series.
        for (family, value) in [
            (&self.syncs_in_flight, gauges.syncs_in_flight),
            (&self.jobs_queued, gauges.jobs_queued),
        ] {
            family.clear();
            family.get_or_create(&replica).set(as_gauge(value));
        }
        self.blob_transfers_in_flight
            .set(as_gauge(gauges.blob_transfers_in_flight));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
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
                let (registry, first) = registry_label(&self.blob_registries, registry);
                if first {
                    // A registry's three kinds appear together, zeros included, so a
                    // query per kind finds a series from the first blob on.
                    for kind in KINDS {
                        let labels = BlobLabels {
                            registry: registry.clone(),
                            kind: kind.as_str(),
                        };
                        drop(self.blobs.get_or_create(&labels));
                        drop(self.blob_bytes.get_or_create(&labels));
                    }
                }
                let labels = BlobLabels {
                    registry,
                    kind: kind.as_str(),
                };
                self.blobs.get_or_create(&labels).inc();
                self.blob_bytes.get_or_create(&labels).inc_by(bytes);
            }
            SyncEvent::ReferrerCopied { registry, .. } => {
                let (registry, _) = registry_label(&self.referrer_registries, registry);
                self.referrers
                    .get_or_create(&RegistryLabels { registry })
                    .inc();
            }
            SyncEvent::Retry { registry, cause } => {
                let (registry, _) = registry_label(&self.retry_registries, registry);
                self.retries
                    .get_or_create(&RetryLabels { registry, cause })
                    .inc();
            }
            _ => {}
        }
    }
}

/// A counter that cannot be trusted is still better than a panicking observer, so a
/// poisoned lock (a panic while counting) is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `registry` label for `registry`: itself, or [`OTHER_REGISTRY`] once
/// [`MAX_REGISTRIES`] others are known; and whether the label is new.
fn registry_label(known: &Mutex<HashSet<String>>, registry: &str) -> (String, bool) {
    let mut known = lock(known);
    let label = if known.contains(registry) || known.len() < MAX_REGISTRIES {
        registry
    } else {
        OTHER_REGISTRY
    };
    // Looked up first so the common case (a known registry) allocates only the label.
    let first = !known.contains(label);
    if first {
        known.insert(label.to_owned());
    }
    (label.to_owned(), first)
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
            replica: "host-42-abcd".into(),
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
            value(
                &text,
                r#"imagersync_syncs_in_flight{replica="host-42-abcd"}"#
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(&text, r#"imagersync_jobs_queued{replica="host-42-abcd"}"#).as_deref(),
            Some("3")
        );
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
    fn bucket_bounds_are_ascending() {
        for bounds in [HTTP_SECONDS, SYNC_SECONDS, QUEUE_SECONDS] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        }
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
