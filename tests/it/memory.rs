//! Bounded memory whatever the layer size (README): a 256 MiB layer through the real
//! service, its peak resident memory read from the kernel. The bound leaves room for
//! noise and a debug build; the figure itself is the benchmark's job (doc/perf.md).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::common::contract::{count, image_of, status_of};
use crate::common::fixture::{Pair, SourceAuth};
use crate::common::{skopeo, StreamedBlob};

const MIB: u64 = 1024 * 1024;
/// 256 MiB: far above any buffer the service could hold without noticing.
const LAYER: u64 = 256 * MIB;
/// Peak resident memory the service may reach, whole process, start-up included.
const PEAK_BOUND: u64 = 48 * MIB;

/// The kernel's peak resident set (`VmHWM`) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"));
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_256_mib_layer_goes_through_the_service_in_bounded_memory() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    // Generated and pushed in 1 MiB chunks: the test holds no whole layer either.
    let pushed = pair
        .src
        .push_streamed_image("big/app", "v1", StreamedBlob::random(LAYER))
        .await;
    let pid = pair.service.pid();
    let at_start = peak_rss(pid);

    // The rig's client has a 2-minute limit; a debug build on a loaded machine may need
    // longer for 256 MiB, so this call gets a deadline for a hung test instead.
    let resp = reqwest::Client::new()
        .post(pair.service.url("/v1/image/rsync"))
        .basic_auth("admin", Some("adminpw"))
        .json(&json!({"rsync_config": {
            "source": pair.src_ref("big/app:v1"), "target": pair.dst_ref("big/app:v1")}}))
        .timeout(Duration::from_secs(900))
        .send()
        .await
        .expect("sync answered");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_of(&body), "successfully", "{body}");
    let image = image_of(&body, 0);
    assert_eq!(image["digest"], json!(pushed.digest), "{body}");
    assert_eq!(count(image, "bytes_copied"), pushed.blob_bytes(), "{body}");

    let peak = peak_rss(pid);
    eprintln!(
        "service peak RSS: {} KiB at start, {} KiB after a {} MiB layer",
        at_start / 1024,
        peak / 1024,
        LAYER / MIB
    );
    assert!(
        peak < PEAK_BOUND,
        "peak RSS {} MiB after a {} MiB layer (bound {} MiB): the layer is buffered",
        peak / MIB,
        LAYER / MIB,
        PEAK_BOUND / MIB
    );

    // What landed, asked of the target itself: the manifest byte for byte, and the layer
    // at its full size (distribution checks a pushed blob's digest before it accepts it).
    skopeo::assert_digest(&pair.dst, "big/app:v1", &pushed.digest).await;
    let creds = pair.dst_creds();
    for blob in &pushed.blobs {
        let resp = reqwest::Client::new()
            .head(format!(
                "{}/v2/big/app/blobs/{}",
                pair.dst.url(),
                blob.digest
            ))
            .basic_auth(&creds.user, Some(&creds.pass))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{}", blob.digest);
        assert_eq!(
            resp.headers()["content-length"].to_str().unwrap(),
            blob.size.to_string(),
            "{}",
            blob.digest
        );
    }
}
