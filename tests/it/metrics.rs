//! `GET /metrics` of the real service around real syncs between real registries: the
//! counters move by exactly what each sync did (blobs and bytes copied, skipped and
//! mounted, outcomes, retries injected by a fault proxy), and nothing identifying an
//! image or a user shows.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;

use crate::common::fault_proxy::{FaultProxy, Reply, Rule};
use crate::common::fixture::{random_password, Pair, SourceAuth};
use crate::common::{Format, Image, Registry, Service, ServiceConfig};

const KIB: usize = 1024;

/// One parsed scrape: every sample by its series (name and labels as written).
struct Scrape {
    samples: HashMap<String, f64>,
    text: String,
}

impl Scrape {
    /// The value of `series`; a series not written yet counts as 0, as Prometheus
    /// treats a counter that has not started.
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The value of a gauge that must be written on every scrape (absent is a failure,
    /// not a 0, so a gauge that vanished cannot pass as idle).
    fn gauge(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("gauge {series} missing from the scrape:\n{}", self.text),
        }
    }

    /// A job gauge (`name{replica="…"}`): its replica label and value. It must be written,
    /// with exactly one series: this process's.
    fn job_gauge(&self, name: &str) -> (String, f64) {
        let prefix = format!("{name}{{replica=\"");
        let found: Vec<(&String, &f64)> = self
            .samples
            .iter()
            .filter(|(series, _)| series.starts_with(&prefix))
            .collect();
        assert_eq!(found.len(), 1, "one {name} series:\n{}", self.text);
        let (series, value) = found[0];
        let replica = series[prefix.len()..].trim_end_matches("\"}").to_owned();
        (replica, *value)
    }

    /// How much `series` grew from `before` to `self`.
    fn delta(&self, before: &Scrape, series: &str) -> f64 {
        self.get(series) - before.get(series)
    }
}

/// Scrapes `/metrics` without credentials and checks the format on the way: the
/// content type, and that each sample belongs to the family declared just before it.
async fn scrape(service: &Service) -> Scrape {
    let response = service
        .client()
        .get(service.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let mut samples = HashMap::new();
    let mut family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap().to_owned();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let name = series.split('{').next().unwrap();
        assert!(
            name == family
                || name
                    .strip_prefix(family.as_str())
                    .is_some_and(|s| { ["_bucket", "_sum", "_count"].contains(&s) }),
            "sample {line:?} outside its family {family}"
        );
        let value: f64 = value.parse().expect("numeric sample value");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "series written twice: {series}"
        );
    }
    Scrape { samples, text }
}

fn blobs(registry: &str, kind: &str) -> String {
    format!("imagersync_blobs_total{{registry=\"{registry}\",kind=\"{kind}\"}}")
}

fn bytes(registry: &str, kind: &str) -> String {
    format!("imagersync_blob_bytes_total{{registry=\"{registry}\",kind=\"{kind}\"}}")
}

fn syncs(outcome: &str, http_status: u16) -> String {
    format!("imagersync_syncs_total{{outcome=\"{outcome}\",http_status=\"{http_status}\"}}")
}

fn sync_runs(outcome: &str) -> String {
    format!("imagersync_sync_duration_seconds_count{{outcome=\"{outcome}\"}}")
}

const POST_SYNC_2XX: &str = r#"imagersync_http_request_duration_seconds_count{route="/v1/image/rsync",method="POST",status_class="2xx"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn counters_follow_real_syncs() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let image = Image::random(Format::Oci, &[300 * KIB, 40 * KIB]);
    let pushed = pair.src.push_image("team/app", "v1", &image).await;
    let dst = pair.dst.host();
    let blob_count = pushed.blobs.len() as f64;
    let blob_bytes = pushed.blob_bytes() as f64;
    assert_eq!(blob_count, 3.0, "config and two layers");

    let before = scrape(&pair.service).await;
    assert_eq!(before.job_gauge("imagersync_syncs_in_flight").1, 0.0);
    // The job gauges name the replica: the id the service logged at start (the owner it
    // writes into the job rows it holds on a shared database).
    let logged = pair
        .service
        .stdout()
        .lines()
        .find(|l| l.contains("imagersync listening"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("replica="))
        })
        .map(|r| r.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no replica id at start:\n{}", pair.service.stdout()));
    for name in ["imagersync_syncs_in_flight", "imagersync_jobs_queued"] {
        let (replica, value) = before.job_gauge(name);
        assert_eq!(replica, logged, "{name}:\n{}", before.text);
        assert_eq!(value, 0.0, "{name}:\n{}", before.text);
    }
    assert_eq!(
        before.get(&format!(
            "imagersync_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );

    // First copy: every blob streamed.
    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = scrape(&pair.service).await;
    assert_eq!(first.delta(&before, &blobs(&dst, "copied")), blob_count);
    assert_eq!(first.delta(&before, &bytes(&dst, "copied")), blob_bytes);
    assert_eq!(first.delta(&before, &blobs(&dst, "skipped")), 0.0);
    assert_eq!(first.delta(&before, &blobs(&dst, "mounted")), 0.0);
    assert_eq!(first.delta(&before, &syncs("succeeded", 200)), 1.0);
    assert_eq!(first.delta(&before, &sync_runs("succeeded")), 1.0);
    assert_eq!(first.delta(&before, POST_SYNC_2XX), 1.0);
    assert_eq!(first.job_gauge("imagersync_syncs_in_flight").1, 0.0);
    assert_eq!(first.gauge("imagersync_blob_transfers_in_flight"), 0.0);
    assert!(
        !first.text.contains("team/app") && !first.text.contains("admin"),
        "no image or user names in metrics:\n{}",
        first.text
    );

    // Same repository, new tag: the blobs are there, so each is skipped, none sent.
    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v2"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = scrape(&pair.service).await;
    assert_eq!(second.delta(&first, &blobs(&dst, "skipped")), blob_count);
    assert_eq!(second.delta(&first, &bytes(&dst, "skipped")), blob_bytes);
    assert_eq!(second.delta(&first, &blobs(&dst, "copied")), 0.0);
    assert_eq!(second.delta(&first, &bytes(&dst, "copied")), 0.0);
    assert_eq!(second.delta(&first, &syncs("succeeded", 200)), 1.0);

    // Another repository of the target: blobs are mounted from team/app, none sent.
    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/app:v1"), &pair.dst_ref("mirror/app:v1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let third = scrape(&pair.service).await;
    let mounted = third.delta(&second, &blobs(&dst, "mounted"));
    assert!(mounted >= 1.0, "mounts must count:\n{}", third.text);
    assert_eq!(
        mounted + third.delta(&second, &blobs(&dst, "skipped")),
        blob_count
    );
    assert_eq!(
        third.delta(&second, &bytes(&dst, "mounted"))
            + third.delta(&second, &bytes(&dst, "skipped")),
        blob_bytes
    );
    assert_eq!(third.delta(&second, &blobs(&dst, "copied")), 0.0);

    // The same tag again: already in sync, so no blob is even looked at.
    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A source tag that does not exist: the sync fails at the registry (502).
    let (status, body) = pair
        .service
        .sync(
            &pair.src_ref("team/app:nope"),
            &pair.dst_ref("team/app:nope"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // An unusable body is refused before the engine: counted, but not as a run.
    let (status, body) = pair
        .service
        .post_json(
            Some(&crate::common::service::admin()),
            &json!({"rsync_config": {"source": "a:1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let last = scrape(&pair.service).await;
    assert_eq!(last.delta(&third, &syncs("failed", 502)), 1.0);
    assert_eq!(last.delta(&third, &sync_runs("failed")), 1.0);
    assert_eq!(last.delta(&third, &syncs("unusual", 400)), 1.0);
    assert_eq!(last.delta(&third, &sync_runs("unusual")), 0.0);
    assert_eq!(last.delta(&third, &syncs("succeeded", 200)), 1.0);
    for outcome in ["copied", "mounted", "skipped"] {
        assert_eq!(
            last.delta(&third, &blobs(&dst, outcome)),
            0.0,
            "{outcome}: neither an in-sync nor a failed sync moves a blob"
        );
    }
    // Every sync above went through the same route; the earlier scrapes too.
    assert_eq!(last.delta(&before, POST_SYNC_2XX), 4.0);
    assert_eq!(
        last.delta(
            &before,
            r#"imagersync_http_request_duration_seconds_count{route="/metrics",method="GET",status_class="2xx"}"#
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_from_the_target_counts_one_retry() {
    let dst_pass = random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &dst_pass),
    );
    let proxy = FaultProxy::start(&dst.host()).await;
    // The service reaches the target only through the proxy, with the target's
    // credentials (listing the proxy also allows its loopback address).
    let config = ServiceConfig::new().registry("src", &src).entry(
        "dst-proxy",
        &proxy.host(),
        dst.creds().cloned(),
    );
    let service = Service::start(&config).await;
    let image = Image::random(Format::Docker, &[200 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let put = proxy.add(
        Rule::on("PUT", r"/blobs/uploads/.*digest=")
            .nth(1)
            .respond(Reply::json_error(500, "UNKNOWN", "storage backend hiccup")),
    );

    let before = scrape(&service).await;
    let (status, body) = service
        .sync(
            &format!("{}/team/app:v1", src.host()),
            &format!("{}/team/app:v1", proxy.host()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", proxy.summary());
    assert_eq!(put.fired(), 1, "{}", proxy.summary());
    let after = scrape(&service).await;
    let target = proxy.host();
    assert_eq!(
        after.delta(
            &before,
            &format!("imagersync_retries_total{{registry=\"{target}\",cause=\"server_error\"}}")
        ),
        1.0,
        "{}",
        after.text
    );
    let retries: f64 = after
        .samples
        .iter()
        .filter(|(series, _)| series.starts_with("imagersync_retries_total"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        retries, 1.0,
        "only the injected fault is retried:\n{}",
        after.text
    );
    // The retried blob still counts once, under the registry the service was told.
    assert_eq!(
        after.delta(&before, &blobs(&target, "copied")),
        pushed.blobs.len() as f64
    );
    assert_eq!(
        after.delta(&before, &bytes(&target, "copied")),
        pushed.blob_bytes() as f64
    );
    assert_eq!(after.delta(&before, &syncs("succeeded", 200)), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_gauges_show_a_running_sync() {
    // The source sits behind a fault proxy that trickles the layer (~3 s), so the sync is
    // certainly running while the test scrapes.
    let dst_pass = random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &dst_pass),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let config = ServiceConfig::new()
        .entry("src-proxy", &proxy.host(), None)
        .registry("dst", &dst);
    let service = Service::start(&config).await;
    let image = Image::random(Format::Oci, &[256 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let layer = pushed.blobs.iter().max_by_key(|b| b.size).unwrap();
    let layer_get = format!("^/v2/team/app/blobs/{}$", layer.digest);
    proxy.add(
        Rule::on("GET", &layer_get)
            .every()
            .trickle(std::time::Duration::from_millis(100), 8 * KIB),
    );

    let sync = tokio::spawn({
        let source = format!("{}/team/app:v1", proxy.host());
        let target = format!("{}/team/app:v1", dst.host());
        let client = reqwest::Client::new();
        let url = service.url("/v1/image/rsync");
        async move {
            client
                .post(url)
                .basic_auth("admin", Some("adminpw"))
                .json(&json!({"rsync_config": {"source": source, "target": target}}))
                .send()
                .await
                .expect("sync answered")
                .status()
        }
    });
    // Wait on the event (the layer's GET reached the source), then scrape while it trickles.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.requests_to("GET", &layer_get).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the layer was never fetched:\n{}",
            proxy.summary()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let during = scrape(&service).await;
    assert!(
        !sync.is_finished(),
        "the trickled sync ended before the scrape"
    );
    assert_eq!(
        during.job_gauge("imagersync_syncs_in_flight").1,
        1.0,
        "{}",
        during.text
    );
    assert!(
        during.gauge("imagersync_blob_transfers_in_flight") >= 1.0,
        "{}",
        during.text
    );

    assert_eq!(sync.await.unwrap(), StatusCode::OK);
    let after = scrape(&service).await;
    assert_eq!(after.job_gauge("imagersync_syncs_in_flight").1, 0.0);
    assert_eq!(after.gauge("imagersync_blob_transfers_in_flight"), 0.0);
}
