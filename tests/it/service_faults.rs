//! Fault rows of the reliability plan that need the whole service process rather than the
//! engine as a library (those are in `faults.rs`): F12, the target's disk fills up, and
//! F28, SIGTERM while a sync is running. Real registries, skopeo as the oracle.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::contract::{assert_sync_shape, error_of, status_of};
use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::fixture::random_password;
use crate::common::service::json_of;
use crate::common::tmpfs::Tmpfs;
use crate::common::{skopeo, Creds, Format, Image, Registry, Service, ServiceConfig};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Asserts `GET /check` answers 200: the service survived what came before.
async fn assert_healthy(svc: &Service) {
    let status = svc.health().await.expect("GET /check after the fault");
    assert_eq!(status, StatusCode::OK);
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

// ---------------------------------------------------------------------------------------
// F28: SIGTERM while a sync runs.

/// POSTs a sync as `admin` on a fresh connection; owned, so it can run in a task while
/// the test signals the service.
async fn post_sync(url: String, source: String, target: String) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .basic_auth("admin", Some("adminpw"))
        .json(&json!({"rsync_config": {"source": source, "target": target}}))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("the in-flight sync gets an answer");
    json_of(resp).await
}

/// Tries to open connections to `addr` until one is refused, within `within`.
/// Returns how long that took; panics if the service kept accepting.
async fn wait_refused(addr: SocketAddr, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return started.elapsed()
            }
            Err(e) => panic!("connecting to {addr} failed oddly: {e}"),
            Ok(_) => {
                assert!(
                    started.elapsed() < within,
                    "{addr} still accepts connections {within:?} after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn f28_sigterm_mid_sync_finishes_the_sync_refuses_new_connections_and_exits_0() {
    let dst_creds = Creds::new("pusher", &random_password("dst"));
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd(&dst_creds.user, &dst_creds.pass),
    );
    let sp = FaultProxy::start(&src.host()).await;
    let config = ServiceConfig::new()
        .entry("src", &sp.host(), None)
        .registry("dst", &dst);
    let mut svc = Service::start(&config).await;
    let image = Image::random(Format::Oci, &[2 * MIB, 64 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    // The big layer crawls: 16 KiB every 100 ms, about 13 s for the whole of it, so the
    // checks made while it runs have seconds of room on a loaded machine.
    let layer = &image.layers[0].digest;
    let slow = sp.add(
        Rule::on("GET", &format!("^/v2/team/app/blobs/{layer}$"))
            .trickle(Duration::from_millis(100), 16 * KIB),
    );

    let sync = tokio::spawn(post_sync(
        svc.url("/v1/image/rsync"),
        format!("{}/team/app:v1", sp.host()),
        format!("{}/prod/app:v1", dst.host()),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while slow.fired() == 0 {
        assert!(Instant::now() < deadline, "the layer GET never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    svc.terminate();
    let signalled = Instant::now();

    let addr: SocketAddr = svc
        .url("")
        .trim_start_matches("http://")
        .parse()
        .expect("service address");
    let refused_after = wait_refused(addr, Duration::from_secs(10)).await;
    assert!(
        !sync.is_finished(),
        "the refusal must come while the sync still runs (refused after {refused_after:?})"
    );

    let (status, body) = sync.await.expect("sync task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_sync_shape(&body);
    assert_eq!(status_of(&body), "successfully", "{body}");
    skopeo::assert_landed(&dst, "prod/app:v1", &pushed).await;
    assert_eq!(
        slow.fired(),
        1,
        "the layer came in one piece:\n{}",
        sp.summary()
    );

    let exit = svc.wait_exit(Duration::from_secs(60));
    let took = signalled.elapsed();
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM ({took:?}): {exit:?}\n{}",
        svc.stderr()
    );
    let logs = svc.stdout() + &svc.stderr();
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_exits_at_once_without_waiting_for_the_sync() {
    let dst_creds = Creds::new("pusher", &random_password("dst"));
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd(&dst_creds.user, &dst_creds.pass),
    );
    let sp = FaultProxy::start(&src.host()).await;
    let config = ServiceConfig::new()
        .entry("src", &sp.host(), None)
        .registry("dst", &dst);
    let mut svc = Service::start(&config).await;
    let image = Image::random(Format::Oci, &[512 * KIB]);
    src.push_image("team/app", "v1", &image).await;
    // 1 KiB every 100 ms: the sync would need almost a minute; the service must not.
    let layer = &image.layers[0].digest;
    let slow = sp.add(
        Rule::on("GET", &format!("^/v2/team/app/blobs/{layer}$"))
            .trickle(Duration::from_millis(100), KIB),
    );
    let sync = tokio::spawn(
        reqwest::Client::new()
            .post(svc.url("/v1/image/rsync"))
            .basic_auth("admin", Some("adminpw"))
            .json(&json!({"rsync_config": {
                "source": format!("{}/team/app:v1", sp.host()),
                "target": format!("{}/prod/app:v1", dst.host())}}))
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while slow.fired() == 0 {
        assert!(Instant::now() < deadline, "the layer GET never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The first signal starts the drain (seen as refused connections) ...
    svc.terminate();
    let addr: SocketAddr = svc
        .url("")
        .trim_start_matches("http://")
        .parse()
        .expect("service address");
    wait_refused(addr, Duration::from_secs(30)).await;
    // ... the second one ends the process while the sync is still running.
    svc.terminate();
    let exit = svc.wait_exit(Duration::from_secs(30));
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "exit after the second SIGTERM: {exit:?}\n{}",
        svc.stderr()
    );
    let answer = sync.await.expect("sync task");
    assert!(
        answer.is_err(),
        "the sync's caller got an answer, so the service waited for it: {answer:?}"
    );
    skopeo::assert_absent(&dst, "prod/app:v1").await;
    let logs = svc.stdout() + &svc.stderr();
    assert!(logs.contains("second stop signal"), "{logs}");
}
