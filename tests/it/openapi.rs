//! The answers that need real registries, checked against `doc/openapi.json` with the same
//! checker as the unit tests in src/http/openapi.rs: a successful synchronous sync, a job
//! while it runs (with progress) and the same job once it has succeeded.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::fixture::random_password;
use crate::common::schema::fits;
use crate::common::service::admin;
use crate::common::{skopeo, Format, Image, Registry, Service, ServiceConfig};

const KIB: usize = 1024;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/doc/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("openapi.json")
}

/// Panics with the mismatch and the answer when `value` does not fit schema `name`.
fn check(spec: &Value, name: &str, value: &Value) {
    let schema = json!({"$ref": format!("#/components/schemas/{name}")});
    if let Err(e) = fits(spec, &schema, value, name) {
        panic!("{e}\n{value:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successful_sync_and_a_job_with_progress_fit_the_described_schemas() {
    let spec = spec();
    let dst_pass = random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &dst_pass),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let service = Service::start(
        &ServiceConfig::new()
            .entry("src-proxy", &proxy.host(), None)
            .registry("dst", &dst),
    )
    .await;

    // A synchronous sync that succeeds.
    let quick = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[16 * KIB]))
        .await;
    let (status, answer) = service
        .sync(
            &format!("{}/team/app:v1", proxy.host()),
            &format!("{}/prod/app:v1", dst.host()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["rsync_data"]["rsync_status"], "successfully");
    check(&spec, "SyncResponse", &answer);
    skopeo::assert_landed(&dst, "prod/app:v1", &quick).await;

    // A job whose layer trickles (~3 s): read while it runs, with progress.
    let slow = src
        .push_image("team/app", "v2", &Image::random(Format::Oci, &[256 * KIB]))
        .await;
    let layer = slow.blobs.iter().max_by_key(|b| b.size).unwrap();
    proxy.add(
        Rule::on("GET", &format!("^/v2/team/app/blobs/{}$", layer.digest))
            .every()
            .trickle(Duration::from_millis(100), 8 * KIB),
    );
    let body = json!({"async": true, "rsync_config": {
        "source": format!("{}/team/app:v2", proxy.host()),
        "target": format!("{}/prod/app:v2", dst.host())}});
    let (status, job) = service.post_json(Some(&admin()), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    check(&spec, "Job", &job);
    let uri = job["links"]["self"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let (_, job) = service
            .call_json(reqwest::Method::GET, &uri, &admin())
            .await;
        let bytes_done = job["progress"]["bytes_done"].as_u64().unwrap_or(0);
        if job["state"] == "running" && bytes_done > 0 {
            break job;
        }
        assert!(
            job["finished_at"].is_null(),
            "the job ended before it was seen running: {job}"
        );
        assert!(
            Instant::now() < deadline,
            "never running with progress: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(running["progress"]["images"]
        .as_array()
        .is_some_and(|i| !i.is_empty()));
    check(&spec, "Job", &running);

    let done = loop {
        let (_, job) = service
            .call_json(reqwest::Method::GET, &uri, &admin())
            .await;
        if job["finished_at"].is_string() {
            break job;
        }
        assert!(Instant::now() < deadline, "never finished: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    check(&spec, "Job", &done);
    check(&spec, "SyncResponse", &done["result"]);
    let (_, page) = service
        .call_json(reqwest::Method::GET, "/v1/image/rsync/jobs", &admin())
        .await;
    check(&spec, "JobPage", &page);
    skopeo::assert_landed(&dst, "prod/app:v2", &slow).await;
}
