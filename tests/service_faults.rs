//! Fault rows of the reliability plan that need the whole service process rather than the
//! engine as a library (those are in `faults.rs`): F12, the target's disk fills up.
//! Real registries, skopeo as the oracle.

mod common;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use common::contract::{assert_sync_shape, error_of, status_of};
use common::fixture::random_password;
use common::service::json_of;
use common::tmpfs::Tmpfs;
use common::{skopeo, Creds, Format, Image, Registry, Service, ServiceConfig};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Asserts `GET /check` answers 200 healthy: the service survived what came before.
async fn assert_healthy(svc: &Service) {
    let resp = svc
        .client()
        .get(svc.url("/check"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("GET /check after the fault");
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "healthy"}));
}

// ---------------------------------------------------------------------------------------
// F12: the target registry's storage is full.

#[tokio::test(flavor = "multi_thread")]
async fn f12_target_disk_full_fails_clearly_then_a_retry_with_room_succeeds() {
    // Declared first so it is dropped (unmounted) after the registry writing to it.
    let disk = Tmpfs::mount(4 * MIB as u64);
    let dst_creds = Creds::new("pusher", &random_password("dst"));
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_on_storage(Some(dst_creds), disk.path()),
    );
    let config = ServiceConfig {
        retries: 1,
        ..ServiceConfig::new()
    }
    .registry("src", &src)
    .registry("dst", &dst);
    let svc = Service::start(&config).await;
    // One layer three times the size of the disk, and a small one.
    let image = Image::random(Format::Oci, &[12 * MIB, 64 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let (source, target) = (
        format!("{}/team/app:v1", src.host()),
        format!("{}/prod/app:v1", dst.host()),
    );

    let started = Instant::now();
    let (status, body) = svc.sync(&source, &target).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded retries: took {:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_sync_shape(&body);
    assert_eq!(status_of(&body), "failed", "{body}");
    assert_eq!(body["rsync_data"]["failure"], json!("registry"), "{body}");
    let error = error_of(&body).expect("rsync_error").to_lowercase();
    for needle in [dst.host().as_str(), "blob", "http 500", "full disk"] {
        assert!(error.contains(needle), "error lacks {needle:?}: {error}");
    }
    assert!(
        dst.log().contains("no space left on device"),
        "the registry did hit a full disk:\n{}",
        dst.log()
    );
    skopeo::assert_absent(&dst, "prod/app:v1").await;
    assert_healthy(&svc).await;
    // Expected leftover (reliability plan F12): the registry keeps the partial upload
    // directories of the failed sessions until its upload purge (168 h by default).

    // The operator makes room; the same request now succeeds.
    disk.resize(64 * MIB as u64);
    let (status, body) = svc.sync(&source, &target).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_of(&body), "successfully", "{body}");
    skopeo::assert_landed(&dst, "prod/app:v1", &pushed).await;
}
