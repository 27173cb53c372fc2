//! Fault injection against real registries (reliability plan §2, rows F1-F29): the engine
//! is driven as a library, and a scriptable proxy (`crate::common::fault_proxy`) in front of a
//! real `docker-registry` cuts, corrupts, stalls, drops or replaces exactly what a rule
//! says. After every test, whatever the outcome, [`Scene::check`] runs the plan's checks:
//! the target tag is absent or holds exactly the source digest with every blob present
//! (skopeo oracle), and no configured password, Basic header or issued token appears in
//! the report's error or log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::engine::{assert_success, engine_for};
use crate::common::fault_proxy::{Canary, FaultProxy, Reply, Rule, Seen};
use crate::common::fixture::random_password;
use crate::common::image::sha256_digest;
use crate::common::{skopeo, Format, Image, Index, Layer, Platform, Pushed, Registry, TokenIssuer};
use base64::Engine as _;
use imagersync::config::TaskConfig;
use imagersync::engine::{Engine, FailureKind, ImageStatus, SyncReport, SyncStatus};

pub(crate) const KIB: usize = 1024;
pub(crate) const MIB: usize = 1024 * KIB;
/// Source repository of every test image.
pub(crate) const REPO: &str = "team/app";
/// Target repository.
pub(crate) const TARGET: &str = "prod/app";
/// Config key of the read-only maintenance mode (distribution: `storage.maintenance`).
const READ_ONLY: &str = "storage:\n  maintenance:\n    readonly:\n      enabled: true\n";

/// Task settings of a fault test: small timeouts so nothing hangs for long.
pub(crate) fn task(retries: u32) -> TaskConfig {
    TaskConfig {
        proc_num: 4,
        retries,
        connect_timeout_seconds: 5,
        idle_timeout_seconds: 10,
        ..TaskConfig::default()
    }
}

/// Source and target registries, each behind its own fault proxy. The engine reaches
/// them only through the proxies; skopeo checks the registries directly.
pub(crate) struct Scene {
    pub(crate) src: Registry,
    pub(crate) dst: Registry,
    /// Proxy in front of `src`.
    pub(crate) sp: FaultProxy,
    /// Proxy in front of `dst`.
    pub(crate) dp: FaultProxy,
    /// Everything that must never show up in a report.
    pub(crate) secrets: Vec<String>,
}

impl Scene {
    /// Source `puller` and target `pusher`, both htpasswd with random passwords.
    pub(crate) async fn start() -> Scene {
        let (src_pass, dst_pass) = (random_password("src"), random_password("dst"));
        let (src, dst) = tokio::join!(
            Registry::start_htpasswd("puller", &src_pass),
            Registry::start_htpasswd("pusher", &dst_pass),
        );
        Scene::over(src, dst).await
    }

    /// Proxies in front of the given registries.
    pub(crate) async fn over(src: Registry, dst: Registry) -> Scene {
        let (src_host, dst_host) = (src.host(), dst.host());
        let (sp, dp) = tokio::join!(FaultProxy::start(&src_host), FaultProxy::start(&dst_host));
        let mut secrets = Vec::new();
        for creds in [src.creds(), dst.creds()].into_iter().flatten() {
            secrets.push(creds.pass.clone());
            secrets.push(base64::engine::general_purpose::STANDARD.encode(creds.joined()));
        }
        Scene {
            src,
            dst,
            sp,
            dp,
            secrets,
        }
    }

    /// An engine that knows both registries and both proxies (plain HTTP, real
    /// credentials).
    pub(crate) fn engine(&self, task: TaskConfig) -> Engine {
        engine_for(
            [
                (self.src.host(), &self.src),
                (self.dst.host(), &self.dst),
                (self.sp.host(), &self.src),
                (self.dp.host(), &self.dst),
            ],
            task,
        )
    }

    /// `SRC_PROXY/team/app:<tag>`.
    pub(crate) fn source(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.sp.host())
    }

    /// `DST_PROXY/prod/app:<tag>`.
    pub(crate) fn target(&self, tag: &str) -> String {
        format!("{}/{TARGET}:{tag}", self.dp.host())
    }

    /// The checks after every fault test: `prod/app:<tag>` at the target registry is
    /// absent, or exactly `expected` with every blob (skopeo copies it all back), and the
    /// report holds no secret.
    pub(crate) async fn check(&self, report: &SyncReport, tag: &str, expected: &Pushed) {
        self.check_with(report, tag, expected, &[], true).await;
    }

    /// [`Scene::check`] with extra secrets (issued tokens); `full_copy: false` checks the
    /// manifest with skopeo and the blobs with HEAD instead of a skopeo copy (for images
    /// with foreign layers, which skopeo would fetch from their URLs).
    pub(crate) async fn check_with(
        &self,
        report: &SyncReport,
        tag: &str,
        expected: &Pushed,
        extra_secrets: &[String],
        full_copy: bool,
    ) {
        let reference = format!("{TARGET}:{tag}");
        match skopeo::inspect_raw(&self.dst, &reference).await {
            Err(e) => {
                let lower = e.to_lowercase();
                assert!(
                    lower.contains("manifest unknown") || lower.contains("name unknown"),
                    "{reference}: neither absent nor readable: {e}"
                );
            }
            Ok(raw) => {
                assert_eq!(
                    sha256_digest(&raw),
                    expected.digest,
                    "{reference} exists but is not the source image"
                );
                if full_copy {
                    skopeo::assert_landed(&self.dst, &reference, expected).await;
                } else {
                    for blob in &expected.blobs {
                        let (status, size) = head_blob(&self.dst, TARGET, &blob.digest).await;
                        assert_eq!(
                            (status, size),
                            (200, Some(blob.size)),
                            "blob {}",
                            blob.digest
                        );
                    }
                }
            }
        }
        let mut texts = vec![report.log.clone()];
        texts.extend(report.error.clone());
        texts.extend(report.images.iter().filter_map(|i| i.error.clone()));
        for secret in self.secrets.iter().chain(extra_secrets) {
            for text in &texts {
                assert!(
                    !text.contains(secret.as_str()),
                    "a secret leaked into the report: {text}"
                );
            }
        }
    }
}

/// HEAD a blob at the registry itself (its own credentials): status and Content-Length.
pub(crate) async fn head_blob(registry: &Registry, repo: &str, digest: &str) -> (u16, Option<u64>) {
    let mut req =
        reqwest::Client::new().head(format!("{}/v2/{repo}/blobs/{digest}", registry.url()));
    if let Some(c) = registry.creds() {
        req = req.basic_auth(&c.user, Some(&c.pass));
    }
    let resp = req.send().await.expect("HEAD blob");
    // Not `content_length()`: for a HEAD answer that is the (empty) body's size.
    let size = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (resp.status().as_u16(), size)
}

/// Asserts the sync failed because of a registry, with an error holding every needle
/// (case-insensitive); returns the error.
pub(crate) fn assert_failed(report: &SyncReport, needles: &[&str]) -> String {
    assert_failed_as(report, FailureKind::Registry, needles)
}

/// [`assert_failed`] with another failure class.
pub(crate) fn assert_failed_as(report: &SyncReport, kind: FailureKind, needles: &[&str]) -> String {
    assert_eq!(
        report.status,
        SyncStatus::Failed,
        "expected a failure; log:\n{}",
        report.log
    );
    assert_eq!(report.failure, Some(kind));
    let error = report.error.clone().expect("a failed sync has an error");
    for needle in needles {
        assert!(
            error.to_lowercase().contains(&needle.to_lowercase()),
            "error lacks {needle:?}: {error}\nlog:\n{}",
            report.log
        );
    }
    assert!(
        report
            .log
            .contains("Finished, 1 sync tasks failed, 0 tasks generate failed"),
        "{}",
        report.log
    );
    error
}

/// `^/v2/<repo>/blobs/<digest>$`.
pub(crate) fn blob_path(repo: &str, digest: &str) -> String {
    format!("^/v2/{repo}/blobs/{digest}$")
}

/// Requests that write: anything but GET and HEAD.
pub(crate) fn writes(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method != "GET" && s.method != "HEAD")
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

/// Requests `method` on `regex` that were not the 401 of an authentication round trip.
pub(crate) fn tries(proxy: &FaultProxy, method: &str, regex: &str) -> usize {
    proxy
        .requests_to(method, regex)
        .iter()
        .filter(|r| r.status != Some(401))
        .count()
}

/// An image of two random layers (`big` and 64 KiB) in `format`.
pub(crate) fn image(format: Format, big: usize) -> Image {
    Image::random(format, &[big, 64 * KIB])
}

// ---------------------------------------------------------------------------------------
// The proxy itself: without rules it only relays.

#[tokio::test(flavor = "multi_thread")]
async fn proxy_without_rules_relays_everything() {
    let s = Scene::start().await;
    let img = image(Format::Docker, 4 * MIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let report = s
        .engine(task(0))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert_success(&report);
    // Upload sessions stayed on the proxy: its Location rewrite sent every PUT through it.
    let puts =
        s.dp.requests_to("PUT", "^/v2/prod/app/blobs/uploads/[^?]+\\?");
    assert_eq!(puts.len(), pushed.blobs.len(), "{}", s.dp.summary());
    for blob in &pushed.blobs {
        let gets = s.sp.requests_to("GET", &blob_path(REPO, &blob.digest));
        let got: Vec<u64> = gets.iter().map(|g| g.response_bytes).collect();
        assert!(
            got.contains(&blob.size),
            "{}: streamed {got:?}",
            blob.digest
        );
        let put = puts
            .iter()
            .find(|p| p.path.contains(&blob.digest.replace(':', "%3A")))
            .expect("the blob's PUT");
        assert_eq!(put.request_bytes, blob.size);
    }
    assert!(s
        .dp
        .requests()
        .iter()
        .any(|r| r.header("authorization").is_some()));
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

// ---------------------------------------------------------------------------------------
// F1-F3: the source blob stream breaks or lies.

#[tokio::test(flavor = "multi_thread")]
async fn f01_source_blob_cut_once_is_retried() {
    let s = Scene::start().await;
    let img = image(Format::Oci, MIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let layer = &img.layers[0].digest;
    let cut = s.sp.add(
        Rule::on("GET", &blob_path(REPO, layer))
            .nth(1)
            .cut_after(256 * KIB as u64),
    );
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert_success(&report);
    assert_eq!(cut.fired(), 1);
    assert_eq!(
        s.sp.requests_to("GET", &blob_path(REPO, layer)).len(),
        2,
        "one cut GET, one whole GET:\n{}",
        s.sp.summary()
    );
    assert!(report.log.contains("retry 1/2"), "{}", report.log);
    assert_eq!(report.images[0].bytes_copied, pushed.blob_bytes());
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f02_source_blob_cut_every_time_fails_after_bounded_retries() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 512 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let layer = &img.layers[0].digest;
    s.sp.add(Rule::on("GET", &blob_path(REPO, layer)).cut_after(100 * KIB as u64));
    let started = Instant::now();
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert!(started.elapsed() < Duration::from_secs(20));
    assert_failed(&report, &[&s.sp.host(), layer, "fetching blob"]);
    assert_eq!(
        s.sp.requests_to("GET", &blob_path(REPO, layer)).len(),
        3,
        "first try and two retries:\n{}",
        s.sp.summary()
    );
    assert!(report.log.contains("retry 2/2"), "{}", report.log);
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_absent(&s.dst, &format!("{TARGET}:v1")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f03_corrupt_source_byte_is_a_digest_mismatch_and_nothing_lands() {
    let s = Scene::start().await;
    let img = image(Format::Docker, 512 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let layer = &img.layers[0].digest;
    s.sp.add(Rule::on("GET", &blob_path(REPO, layer)).flip_byte(300 * KIB as u64));
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert_failed(&report, &["digest mismatch", layer, &s.sp.host()]);
    assert_eq!(
        s.sp.requests_to("GET", &blob_path(REPO, layer)).len(),
        1,
        "a digest mismatch is never retried:\n{}",
        s.sp.summary()
    );
    assert_eq!(
        head_blob(&s.dst, TARGET, layer).await.0,
        404,
        "the corrupt blob must not land"
    );
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_absent(&s.dst, &format!("{TARGET}:v1")).await;
}

// ---------------------------------------------------------------------------------------
// F5-F7: the target fails, loses answers or rate-limits.

#[tokio::test(flavor = "multi_thread")]
async fn f05_target_500_on_a_blob_put_is_retried_at_blob_level() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 512 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let put = s.dp.add(
        Rule::on("PUT", r"/blobs/uploads/.*digest=")
            .every_kth(3)
            .respond(Reply::json_error(500, "UNKNOWN", "storage backend hiccup")),
    );
    let patch =
        s.dp.add(Rule::on("PATCH", ".*").respond(Reply::json_error(500, "UNKNOWN", "patch")));
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert_success(&report);
    assert_eq!(put.fired(), 1, "{}", s.dp.summary());
    assert_eq!(patch.matched(), 0, "the engine uploads with POST + one PUT");
    let blobs = pushed.blobs.len();
    assert_eq!(s.dp.requests_to("PUT", "/blobs/uploads/").len(), blobs + 1);
    assert_eq!(
        s.dp.requests_to("POST", "/blobs/uploads/").len(),
        blobs + 1,
        "the retry opens a fresh upload session"
    );
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

/// F6 on a target repository that already exists: every blob is checked with a HEAD
/// before its upload, and the retry's HEAD finds the blob whose PUT answer was lost.
#[tokio::test(flavor = "multi_thread")]
async fn f06_lost_answer_to_the_final_blob_put_is_found_by_head() {
    let s = Scene::start().await;
    // The target repository exists (it holds another tag), so blobs are checked first.
    s.dst
        .push_image(TARGET, "old", &image(Format::Oci, KIB))
        .await;
    let (report, pushed, digest) = lose_one_put_answer(&s).await;
    assert_eq!(
        s.dp.requests_to("HEAD", &blob_path(TARGET, &digest)).len(),
        2,
        "the first attempt's HEAD misses, the retry's HEAD finds the blob:\n{}",
        s.dp.summary()
    );
    assert_eq!(report.images[0].blobs_skipped, 1);
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

/// F6 on a new target repository: small blobs go up without a HEAD first, but the retry
/// after the lost PUT answer still checks, finds the blob, and sends nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn f06_lost_put_answer_in_a_new_repository_is_found_by_the_retry_head() {
    let s = Scene::start().await;
    let (report, pushed, digest) = lose_one_put_answer(&s).await;
    let seen = s.dp.requests();
    let lost = seen
        .iter()
        .position(|r| r.rule.is_some())
        .expect("the dropped PUT");
    let heads: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is("HEAD", &blob_path(TARGET, &digest)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(heads.len(), 1, "only the retry checks:\n{}", s.dp.summary());
    assert!(heads[0] > lost, "the HEAD follows the lost PUT");
    assert_eq!(report.images[0].blobs_skipped, 1);
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

/// Syncs a small two-layer image while the answer to its first blob PUT is dropped;
/// checks that the sync passes with every blob sent once. Returns the report, the image
/// and the digest of the blob whose answer was lost.
async fn lose_one_put_answer(s: &Scene) -> (SyncReport, Pushed, String) {
    let img = image(Format::Oci, 512 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let dropped = s.dp.add(
        Rule::on("PUT", r"/blobs/uploads/.*digest=")
            .nth(1)
            .drop_response(),
    );
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert_success(&report);
    assert_eq!(dropped.fired(), 1);
    let lost =
        s.dp.requests()
            .into_iter()
            .find(|r| r.rule.is_some())
            .expect("the dropped PUT");
    assert_eq!(lost.status, None);
    let digest = lost
        .path
        .split("digest=")
        .nth(1)
        .expect("digest in query")
        .replace("%3A", ":");
    assert_eq!(
        s.dp.requests_to("PUT", &format!("/{TARGET}/blobs/uploads/"))
            .len(),
        pushed.blobs.len(),
        "no blob is sent twice"
    );
    (report, pushed, digest)
}

/// Requests per blob at the target: into a new repository a small blob costs POST + PUT
/// (no HEAD), a blob above 1 MiB still gets its HEAD first; into a repository that
/// exists, every blob is checked, and the ones present are not sent again.
#[tokio::test(flavor = "multi_thread")]
async fn new_target_repository_skips_the_head_check_of_small_blobs_only() {
    let s = Scene::start().await;
    let (large, small) = (Layer::random(2 * MIB), Layer::random(64 * KIB));
    let amd64 = Image::new(
        Format::Oci,
        Platform::AMD64,
        vec![large.clone(), small.clone()],
    );
    let arm64 = Image::new(
        Format::Oci,
        Platform::ARM64,
        vec![large.clone(), small.clone()],
    );
    let pushed = s.src.push_image(REPO, "v1", &amd64).await;
    let pushed_arm = s.src.push_image(REPO, "v2", &arm64).await;
    let per_blob =
        |method: &str, digest: &str| s.dp.requests_to(method, &blob_path(TARGET, digest)).len();
    let puts = |digest: &str| {
        s.dp.requests_to(
            "PUT",
            &format!(
                "/{TARGET}/blobs/uploads/.*digest={}",
                digest.replace(':', "%3A")
            ),
        )
        .len()
    };

    let report = s
        .engine(task(0))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;
    assert_success(&report);
    assert_eq!(
        tries(&s.dp, "GET", &format!("^/v2/{TARGET}/tags/list")),
        1,
        "one question whether the repository is new:\n{}",
        s.dp.summary()
    );
    for blob in [&small.digest, &amd64.config_digest] {
        assert_eq!(
            (per_blob("HEAD", blob), puts(blob)),
            (0, 1),
            "small blob {blob}:\n{}",
            s.dp.summary()
        );
    }
    assert_eq!(
        (per_blob("HEAD", &large.digest), puts(&large.digest)),
        (1, 1),
        "large blob"
    );
    assert_eq!(
        tries(&s.dp, "POST", &format!("^/v2/{TARGET}/blobs/uploads/")),
        3,
        "one upload session per blob"
    );
    assert_eq!(report.images[0].blobs_copied, 3);
    s.check(&report, "v1", &pushed).await;

    // The repository now exists: a fresh engine (no memory of the first sync) checks every
    // blob of the second image, sends only its config, and skips the shared layers.
    s.dp.clear_requests();
    let report = s
        .engine(task(0))
        .sync(&s.source("v2"), &s.target("v2"))
        .await;
    assert_success(&report);
    for blob in [&small.digest, &large.digest, &arm64.config_digest] {
        assert_eq!(
            per_blob("HEAD", blob),
            1,
            "blob {blob}:\n{}",
            s.dp.summary()
        );
    }
    assert_eq!(
        (
            puts(&small.digest),
            puts(&large.digest),
            puts(&arm64.config_digest)
        ),
        (0, 0, 1)
    );
    assert_eq!(
        (
            report.images[0].blobs_skipped,
            report.images[0].blobs_copied
        ),
        (2, 1)
    );
    s.check(&report, "v2", &pushed_arm).await;
}

/// The gap between the request a rule fired on and the next request matching `regex`.
fn wait_after(seen: &[Seen], method: &str, regex: &str) -> Duration {
    let matching: Vec<&Seen> = seen.iter().filter(|s| s.is(method, regex)).collect();
    let fired = matching
        .iter()
        .position(|s| s.rule.is_some())
        .expect("the rule fired");
    let next = matching
        .get(fired + 1)
        .expect("the request was tried again");
    next.at.duration_since(matching[fired].at)
}

#[tokio::test(flavor = "multi_thread")]
async fn f07_429_with_retry_after_is_waited_out() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 256 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let manifest_get = r"^/v2/team/app/manifests/v1$";
    let post = r"^/v2/prod/app/blobs/uploads/$";
    let manifest_put = r"^/v2/prod/app/manifests/v1$";
    s.sp.add(
        Rule::on("GET", manifest_get)
            .nth(1)
            .respond(Reply::too_many_requests(2, true)),
    );
    s.dp.add(
        Rule::on("POST", post)
            .nth(1)
            .respond(Reply::too_many_requests(2, false)),
    );
    s.dp.add(
        Rule::on("PUT", manifest_put)
            .nth(1)
            .respond(Reply::too_many_requests(1, true)),
    );
    // One blob at a time, so the POST after the 429 is the same blob's retry.
    let engine = s.engine(TaskConfig {
        proc_num: 1,
        ..task(2)
    });
    let started = Instant::now();
    let report = engine.sync(&s.source("v1"), &s.target("v1")).await;

    assert_success(&report);
    assert!(started.elapsed() >= Duration::from_secs(5));
    let src_seen = s.sp.requests();
    let dst_seen = s.dp.requests();
    for (what, gap, asked) in [
        (
            "source manifest GET",
            wait_after(&src_seen, "GET", manifest_get),
            2,
        ),
        ("target blob POST", wait_after(&dst_seen, "POST", post), 2),
        (
            "target manifest PUT",
            wait_after(&dst_seen, "PUT", manifest_put),
            1,
        ),
    ] {
        assert!(
            gap >= Duration::from_secs(asked),
            "{what}: retried after {gap:?}, Retry-After was {asked}s"
        );
        assert!(
            gap < Duration::from_secs(asked + 5),
            "{what}: waited {gap:?}"
        );
    }
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f07_429_with_retry_after_an_hour_fails_fast() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 64 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    s.sp.add(Rule::on("GET", "/manifests/").respond(Reply::too_many_requests(3600, true)));
    let started = Instant::now();
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // A registry's rate limit is its own failure class (HTTP 429 from the API), and the
    // error says how long the registry asked to wait.
    assert_failed_as(
        &report,
        FailureKind::RateLimited,
        &["429", "rate limit", "asking to wait 3600s", &s.sp.host()],
    );
    assert_eq!(s.sp.requests_to("GET", "/manifests/").len(), 1);
    assert!(writes(&s.dp.requests()).is_empty());
    s.check(&report, "v1", &pushed).await;
}

/// Notes the first rate-limited retry the engine reports.
#[derive(Default)]
struct RateLimited {
    seen: std::sync::atomic::AtomicBool,
}

impl imagersync::engine::SyncObserver for RateLimited {
    fn on_event(&self, event: &imagersync::engine::SyncEvent<'_>) {
        if let imagersync::engine::SyncEvent::Retry {
            cause: "rate_limited",
            ..
        } = event
        {
            self.seen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn f07_a_429_pauses_every_request_to_that_registry() {
    let s = Scene::start().await;
    let (a, b) = (image(Format::Oci, 64 * KIB), image(Format::Oci, 64 * KIB));
    let pushed_a = s.src.push_image(REPO, "a", &a).await;
    let pushed_b = s.src.push_image(REPO, "b", &b).await;
    let throttled = s.dp.add(
        Rule::on("POST", r"^/v2/prod/app/blobs/uploads/$")
            .nth(1)
            .respond(Reply::too_many_requests(3, true)),
    );
    // The engine reports a rate-limited retry only after it has read the 429 and paused
    // the registry: the second sync starts on that event, not after a guessed delay.
    let read_429 = Arc::new(RateLimited::default());
    let engine = Arc::new(s.engine(task(2)).with_observer(read_429.clone()));
    let first = {
        let (engine, source, target) = (engine.clone(), s.source("a"), s.target("a"));
        tokio::spawn(async move { engine.sync(&source, &target).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_429.seen.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the 429 never reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(throttled.fired(), 1);
    let other = format!("{}/prod/other:b", s.dp.host());
    let second = engine.sync(&s.source("b"), &other).await;
    let first = first.await.unwrap();

    assert_success(&first);
    assert_success(&second);
    let seen = s.dp.requests();
    let throttled_at = seen.iter().find(|r| r.rule.is_some()).expect("the 429").at;
    let earliest = seen
        .iter()
        .filter(|r| r.path.starts_with("/v2/prod/other/"))
        .map(|r| r.at)
        .min()
        .expect("the second sync reached the target");
    let waited = earliest.duration_since(throttled_at);
    assert!(
        waited >= Duration::from_millis(2900),
        "the second sync asked the throttled registry {waited:?} after its 429 (Retry-After: 3)"
    );
    s.check(&first, "a", &pushed_a).await;
    skopeo::assert_landed(&s.dst, "prod/other:b", &pushed_b).await;
}

// ---------------------------------------------------------------------------------------
// F10: stalls.

#[tokio::test(flavor = "multi_thread")]
async fn f10_trickling_source_manifest_hits_the_idle_timeout() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 64 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    s.sp.add(Rule::on("GET", "/manifests/v1$").trickle(Duration::from_secs(3), 1));
    let engine = s.engine(TaskConfig {
        idle_timeout_seconds: 1,
        ..task(1)
    });
    let started = Instant::now();
    let report = engine.sync(&s.source("v1"), &s.target("v1")).await;

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_failed(&report, &["timed out", &s.sp.host(), "fetching manifest"]);
    assert_eq!(
        tries(&s.sp, "GET", "/manifests/v1$"),
        2,
        "{}",
        s.sp.summary()
    );
    assert!(writes(&s.dp.requests()).is_empty());
    s.check(&report, "v1", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f10_trickling_source_blob_hits_the_idle_timeout() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 256 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let layer = &img.layers[0].digest;
    s.sp.add(Rule::on("GET", &blob_path(REPO, layer)).trickle(Duration::from_secs(3), 1));
    let engine = s.engine(TaskConfig {
        idle_timeout_seconds: 1,
        ..task(1)
    });
    let started = Instant::now();
    let report = engine.sync(&s.source("v1"), &s.target("v1")).await;

    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    // The source went silent, so the error must name the source and the blob.
    assert_failed(&report, &["timed out", &s.sp.host(), layer]);
    assert_eq!(s.sp.requests_to("GET", &blob_path(REPO, layer)).len(), 2);
    s.check(&report, "v1", &pushed).await;
}

/// The idle timeout limits silence, not the length of a transfer: a source that sends
/// steadily but slowly makes the target PUT last longer than the idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn f10_slow_but_steady_transfer_outlasts_the_idle_timeout() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 512 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let layer = &img.layers[0].digest;
    // About 520 KiB in 32 KiB pieces every 250 ms: ~4 s, never silent for more than 0.25 s.
    s.sp.add(
        Rule::on("GET", &blob_path(REPO, layer)).trickle(Duration::from_millis(250), 32 * KIB),
    );
    let engine = s.engine(TaskConfig {
        idle_timeout_seconds: 2,
        ..task(0)
    });
    let report = engine.sync(&s.source("v1"), &s.target("v1")).await;

    assert_success(&report);
    s.check(&report, "v1", &pushed).await;
}

// ---------------------------------------------------------------------------------------
// F13-F16: what the target accepts.

#[tokio::test(flavor = "multi_thread")]
async fn f13_read_only_target_fails_fast_without_retries() {
    let (src_pass, dst_pass) = (random_password("src"), random_password("dst"));
    let (src, dst) = tokio::join!(
        Registry::start_htpasswd("puller", &src_pass),
        Registry::start_configured(
            Some(crate::common::Creds::new("pusher", &dst_pass)),
            READ_ONLY
        ),
    );
    let s = Scene::over(src, dst).await;
    let img = image(Format::Oci, 256 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    // No backoff for a 405: the counts below (at most one POST per blob, no retry in the
    // log) prove it without a clock.
    assert_failed(&report, &["405", &s.dp.host(), "refuses writes"]);
    // POSTs still in flight when the first 405 stops the sync get no answer (None).
    let posts = s.dp.requests_to("POST", "/blobs/uploads/");
    let answered: Vec<u16> = posts.iter().filter_map(|p| p.status).collect();
    assert!(
        !answered.is_empty() && answered.iter().all(|&st| st == 405),
        "{}",
        s.dp.summary()
    );
    assert!(posts.len() <= pushed.blobs.len(), "a 405 is not retried");
    assert!(!report.log.contains("retry"), "{}", report.log);
    s.check(&report, "v1", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f14_target_refusing_patch_does_not_matter() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 2 * MIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let patch = s.dp.add(Rule::on("PATCH", ".*").respond(Reply::json_error(
        405,
        "UNSUPPORTED",
        "chunked uploads are not supported",
    )));
    let report = s
        .engine(task(1))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert_success(&report);
    assert_eq!(patch.matched(), 0, "monolithic PUT uploads only");
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f15_mount_answered_202_falls_back_to_an_upload() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 256 * KIB);
    // Same registry: the engine knows the blobs are in team/app and tries to mount them.
    let pushed = s.dst.push_image(REPO, "v1", &img).await;
    let mount = s.dp.add(
        Rule::on("POST", r"/blobs/uploads/\?.*mount=").respond(
            Reply::status(202)
                .header("location", "/v2/prod/app/blobs/uploads/fake-mount-session")
                .header("docker-upload-uuid", "fake-mount-session")
                .header("range", "0-0"),
        ),
    );
    let source = format!("{}/{REPO}:v1", s.dp.host());
    let report = s.engine(task(1)).sync(&source, &s.target("v1")).await;

    assert_success(&report);
    let n = pushed.blobs.len();
    assert_eq!(mount.fired(), n, "{}", s.dp.summary());
    let img_result = &report.images[0];
    assert_eq!(
        (img_result.blobs_mounted, img_result.blobs_copied),
        (0, n as u64)
    );
    assert_eq!(
        s.dp.requests_to("DELETE", "fake-mount-session").len(),
        n,
        "the session a declined mount opened is cancelled"
    );
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f16_target_already_in_sync_gets_no_writes() {
    let s = Scene::start().await;
    let index = Index::random(
        Format::Oci,
        &[Platform::AMD64, Platform::ARM64],
        128 * KIB,
        32 * KIB,
    );
    let pushed = s.src.push_index(REPO, "v1", &index).await;
    let engine = s.engine(task(1));
    assert_success(&engine.sync(&s.source("v1"), &s.target("v1")).await);
    s.dp.clear_requests();

    let again = engine.sync(&s.source("v1"), &s.target("v1")).await;
    assert_success(&again);
    assert_eq!(again.images[0].status, ImageStatus::AlreadySynced);
    let seen = s.dp.requests();
    assert!(writes(&seen).is_empty(), "{}", s.dp.summary());
    assert!(!seen.is_empty(), "the target was checked");
    // A fresh engine (no memory of the first sync) must not write either.
    s.dp.clear_requests();
    let fresh = s
        .engine(task(1))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;
    assert_success(&fresh);
    assert!(writes(&s.dp.requests()).is_empty(), "{}", s.dp.summary());
    s.check(&fresh, "v1", &pushed).await;
}

// ---------------------------------------------------------------------------------------
// F18-F21: what the source serves and the target answers.

#[tokio::test(flavor = "multi_thread")]
async fn f18_missing_index_child_fails_before_any_write() {
    let s = Scene::start().await;
    let index = Index::random(
        Format::Oci,
        &[Platform::AMD64, Platform::ARM64, Platform::ARMV7],
        64 * KIB,
        16 * KIB,
    );
    let pushed = s.src.push_index(REPO, "v1", &index).await;
    let missing = &index.images[1].digest;
    s.sp.add(
        Rule::on("GET", &format!("/manifests/{missing}$")).respond(Reply::json_error(
            404,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        )),
    );
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert_failed(&report, &[&s.sp.host(), missing, "404"]);
    let seen = s.dp.requests();
    assert!(
        writes(&seen).is_empty(),
        "nothing may be written:\n{}",
        s.dp.summary()
    );
    assert!(seen.iter().all(|r| r.method != "PUT"));
    s.check(&report, "v1", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f20_manifest_blob_unknown_on_manifest_put_is_retried() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 128 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let blob_unknown =
        || Reply::json_error(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry");
    // Once (eventual consistency): retried after a pause, then it lands.
    let once = s.dp.add(
        Rule::on("PUT", "/manifests/v1$")
            .nth(1)
            .respond(blob_unknown()),
    );
    let engine = s.engine(task(1));
    let report = engine.sync(&s.source("v1"), &s.target("v1")).await;
    assert_success(&report);
    assert_eq!((once.fired(), once.matched()), (1, 2), "{}", s.dp.summary());
    let gap = wait_after(&s.dp.requests(), "PUT", "/manifests/v1$");
    assert!(
        gap >= Duration::from_millis(900),
        "retried after only {gap:?}"
    );
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;

    // Always: bounded retries, then a clear error and no tag.
    let always =
        s.dp.add(Rule::on("PUT", "/manifests/v2$").respond(blob_unknown()));
    let report = engine.sync(&s.source("v1"), &s.target("v2")).await;
    assert_failed(
        &report,
        &[
            "400",
            "MANIFEST_BLOB_UNKNOWN",
            &s.dp.host(),
            "pushing manifest",
        ],
    );
    assert_eq!(always.fired(), 2, "one try and one retry");
    s.check(&report, "v2", &pushed).await;
    skopeo::assert_absent(&s.dst, &format!("{TARGET}:v2")).await;
}

/// distribution answers DIGEST_INVALID to a manifest PUT that raced another PUT of the
/// same bytes (another replica or tool); the front here plays that registry.
#[tokio::test(flavor = "multi_thread")]
async fn f20_digest_invalid_on_manifest_put_is_pushed_once_more() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 128 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let raced = || {
        Reply::json_error(
            400,
            "DIGEST_INVALID",
            "provided digest did not match uploaded content",
        )
    };
    let once =
        s.dp.add(Rule::on("PUT", "/manifests/v1$").nth(1).respond(raced()));
    let engine = s.engine(task(1));
    let report = engine.sync(&s.source("v1"), &s.target("v1")).await;
    assert_success(&report);
    assert_eq!((once.fired(), once.matched()), (1, 2), "{}", s.dp.summary());
    assert!(
        report.log.contains("as DIGEST_INVALID") && report.log.contains("pushing it once more"),
        "{}",
        report.log
    );
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;

    // Refused every time: one more PUT only, then a clear error and no tag.
    let always = s.dp.add(Rule::on("PUT", "/manifests/v2$").respond(raced()));
    let report = engine.sync(&s.source("v1"), &s.target("v2")).await;
    assert_failed(
        &report,
        &["400", "DIGEST_INVALID", &s.dp.host(), "pushing manifest"],
    );
    assert_eq!(always.fired(), 2, "the PUT and one more");
    skopeo::assert_absent(&s.dst, &format!("{TARGET}:v2")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f21_oversize_source_manifest_is_refused() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 64 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    // 5 MiB announced, 5 MiB chunked, and 64 MiB chunked (only socket buffers' worth of
    // it may leave the proxy before the engine gives up).
    let cases = [
        ("v1", 5 * MIB as u64, true),
        ("v2", 5 * MIB as u64, false),
        ("v3", 64 * MIB as u64, false),
    ];
    for (tag, len, content_length) in cases {
        s.sp.add(
            Rule::on("GET", &format!("/manifests/{tag}$")).respond(
                Reply::status(200)
                    .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                    .filler(len, content_length),
            ),
        );
    }
    let engine = s.engine(task(2));
    for (tag, _, _) in cases {
        let report = engine.sync(&s.source(tag), &s.target(tag)).await;
        assert_failed(&report, &[&s.sp.host(), "larger than the 4096 KiB limit"]);
        s.check(&report, tag, &pushed).await;
    }
    assert_eq!(
        tries(&s.sp, "GET", "/manifests/"),
        3,
        "an oversize manifest is not retried:\n{}",
        s.sp.summary()
    );
    let huge = s.sp.requests_to("GET", "/manifests/v3$");
    assert!(
        huge.iter().all(|r| r.response_bytes < 16 * MIB as u64),
        "the engine read on: {}",
        s.sp.summary()
    );
    assert!(writes(&s.dp.requests()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn f21_huge_error_body_is_not_read_whole() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 64 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let huge = 50 * MIB as u64;
    s.dp.add(
        Rule::on("POST", "/blobs/uploads/")
            .nth(1)
            .respond(Reply::status(500).filler(huge, true)),
    );
    s.dp.add(Rule::on("POST", "/blobs/uploads/").respond(Reply::status(500).filler(huge, false)));
    let engine = s.engine(TaskConfig {
        proc_num: 1,
        ..task(1)
    });
    let report = engine.sync(&s.source("v1"), &s.target("v1")).await;

    assert_failed(&report, &["500", &s.dp.host()]);
    let posts = s.dp.requests_to("POST", "/blobs/uploads/");
    assert_eq!(posts.len(), 2, "a 500 is retried once:\n{}", s.dp.summary());
    for p in &posts {
        assert!(
            p.response_bytes < 16 * MIB as u64,
            "the engine took {} bytes of a {huge}-byte error body",
            p.response_bytes
        );
    }
    s.check(&report, "v1", &pushed).await;
}

// ---------------------------------------------------------------------------------------
// F22-F24: second-hop URLs that lead elsewhere (SSRF, credential leaks).

#[tokio::test(flavor = "multi_thread")]
async fn f22_foreign_layer_urls_are_never_fetched() {
    let canary = Canary::start().await;
    // Both registries accept foreign layers pointing at plain-http loopback URLs.
    let allow =
        "validation:\n  manifests:\n    urls:\n      allow:\n        - ^http://127\\.0\\.0\\.1\n";
    let (src_pass, dst_pass) = (random_password("src"), random_password("dst"));
    let (src, dst) = tokio::join!(
        Registry::start_configured(Some(crate::common::Creds::new("puller", &src_pass)), allow),
        Registry::start_configured(Some(crate::common::Creds::new("pusher", &dst_pass)), allow),
    );
    let s = Scene::over(src, dst).await;
    let base = Image::random(Format::Docker, &[64 * KIB]);
    let foreign = Layer::random(32 * KIB);
    let foreign_url = format!("{}/layers/{}", canary.url(), foreign.digest);
    let mut manifest: serde_json::Value = serde_json::from_slice(&base.manifest).unwrap();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": foreign.digest,
            "size": foreign.data.len(),
            "urls": [foreign_url],
        }));
    let bytes = bytes::Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
    let img = Image {
        digest: sha256_digest(&bytes),
        manifest: bytes,
        ..base.clone()
    };
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let foreign_get =
        s.sp.add(
            Rule::on("GET", &blob_path(REPO, &foreign.digest)).respond(Reply::json_error(
                404,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
            )),
        );
    let report = s
        .engine(task(1))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert!(
        canary.requests().is_empty(),
        "the engine fetched a foreign URL: {:?}",
        canary.requests()
    );
    assert_eq!(
        foreign_get.matched(),
        0,
        "the foreign layer is not fetched at all"
    );
    // Copied by descriptor (the target accepts such URLs): same digest, the foreign
    // layer itself is not in the target registry.
    assert_success(&report);
    assert!(report.log.contains("Skip foreign layer"), "{}", report.log);
    let expected = Pushed {
        blobs: base.blobs(),
        ..pushed.clone()
    };
    s.check_with(&report, "v1", &expected, &[], false).await;
    assert_eq!(head_blob(&s.dst, TARGET, &foreign.digest).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn f23_upload_location_on_another_host_gets_no_credentials_or_data() {
    let canary = Canary::start().await;
    let s = Scene::start().await;
    let img = image(Format::Oci, 256 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let moved =
        s.dp.add(Rule::on("POST", r"/blobs/uploads/$").location_to(&canary.url()));
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert!(moved.fired() >= 1);
    assert!(
        canary.requests().is_empty(),
        "the canary was contacted: {:?}",
        canary.requests()
    );
    assert_failed(&report, &[&s.dp.host(), "another host"]);
    assert!(s.dp.requests_to("PUT", ".*").is_empty());
    s.check(&report, "v1", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f24_token_realm_pointing_at_an_internal_host_gets_no_credentials() {
    let canary = Canary::start_on("127.0.0.2").await;
    let token_pass = random_password("token");
    let issuer = TokenIssuer::start("robot", &token_pass).await;
    let src_pass = random_password("src");
    let (src, dst) = tokio::join!(
        Registry::start_htpasswd("puller", &src_pass),
        Registry::start_token("robot", &token_pass, &issuer),
    );
    let s = Scene::over(src, dst).await;
    let img = image(Format::Oci, 128 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let realm = format!("{}/token", canary.url());
    let rewritten = s.dp.add(Rule::on("*", ".*").realm_to(&realm));
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert!(rewritten.fired() >= 1);
    assert!(
        canary.requests().is_empty(),
        "credentials went to the rewritten realm: {:?}",
        canary.requests()
    );
    assert_eq!(issuer.requests(), 0);
    assert_failed(&report, &[&s.dp.host(), "realm", "refused"]);
    let mut secrets = vec![
        token_pass.clone(),
        base64::engine::general_purpose::STANDARD.encode(format!("robot:{token_pass}")),
    ];
    secrets.extend(issuer.issued());
    s.check_with(&report, "v1", &pushed, &secrets, true).await;

    // Without the rewrite the same engine config works: the refusal was the realm's.
    s.dp.clear_rules();
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;
    assert_success(&report);
    secrets.extend(issuer.issued());
    s.check_with(&report, "v1", &pushed, &secrets, true).await;
}

// ---------------------------------------------------------------------------------------
// F27, F29.

/// Runs ten identical syncs at once on one engine and checks them all.
async fn ten_at_once(s: &Scene, engine: Arc<Engine>, pushed: &Pushed) {
    let runs: Vec<_> = (0..10)
        .map(|_| {
            let (engine, source, target) = (engine.clone(), s.source("v1"), s.target("v1"));
            tokio::spawn(async move { engine.sync(&source, &target).await })
        })
        .collect();
    let mut reports = Vec::new();
    for run in runs {
        reports.push(run.await.expect("sync task"));
    }
    for report in &reports {
        assert_success(report);
        assert_eq!(
            report.images[0].digest.as_deref(),
            Some(pushed.digest.as_str())
        );
    }
    let copied: u64 = reports.iter().map(|r| r.images[0].blobs_copied).sum();
    assert_eq!(copied, pushed.blobs.len() as u64, "each blob is sent once");
    assert_eq!(
        s.dp.requests_to("PUT", "/blobs/uploads/").len(),
        pushed.blobs.len(),
        "{}",
        s.dp.summary()
    );
    assert!(
        s.dp.requests_to("PUT", &format!("/{TARGET}/manifests/v1$"))
            .len()
            <= 10
    );
    for report in &reports {
        s.check(report, "v1", pushed).await;
    }
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f27_ten_identical_concurrent_syncs_all_succeed() {
    let s = Scene::start().await;
    let img = Image::random(Format::Oci, &[MIB, 512 * KIB, 64 * KIB]);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let engine = Arc::new(s.engine(task(2)));
    // One small sync first, so both registries' auth challenges are known.
    s.src
        .push_image(REPO, "warm", &image(Format::Oci, KIB))
        .await;
    let report = engine
        .sync(&s.source("warm"), &format!("{}/warm/app:v1", s.dp.host()))
        .await;
    assert_success(&report);
    s.dp.clear_requests();
    ten_at_once(&s, engine, &pushed).await;
}

/// The same on an engine that has not talked to either registry yet: every sync's first
/// request arrives without credentials and gets the registry's 401 challenge at once.
#[tokio::test(flavor = "multi_thread")]
async fn f27_ten_identical_concurrent_syncs_on_a_fresh_engine() {
    let s = Scene::start().await;
    let img = Image::random(Format::Oci, &[512 * KIB, 64 * KIB]);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    ten_at_once(&s, Arc::new(s.engine(task(2))), &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn f29_binary_502_is_retried_and_keeps_its_status() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 64 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let binary: &[u8] = &[0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, 0x9f, 0x00, 0xfe];
    let bad_gateway = || {
        Reply::status(502)
            .header("content-type", "application/octet-stream")
            .body(binary.to_vec())
    };
    // Once: the retry passes.
    let once = s.sp.add(
        Rule::on("GET", "/manifests/v1$")
            .nth(1)
            .respond(bad_gateway()),
    );
    let engine = s.engine(task(1));
    let report = engine.sync(&s.source("v1"), &s.target("v1")).await;
    assert_success(&report);
    assert_eq!(once.fired(), 1);
    assert_eq!(
        tries(&s.sp, "GET", "/manifests/v1$"),
        2,
        "{}",
        s.sp.summary()
    );
    s.check(&report, "v1", &pushed).await;

    // Always: bounded retries, and the error still says 502.
    s.sp.add(Rule::on("GET", "/manifests/v1$").respond(bad_gateway()));
    let report = engine.sync(&s.source("v1"), &s.target("v2")).await;
    let error = assert_failed(&report, &["502", &s.sp.host(), "fetching manifest"]);
    assert!(
        !error.contains('\u{fffd}'),
        "binary bytes in the error: {error}"
    );
    assert_eq!(
        tries(&s.sp, "GET", "/manifests/v1$"),
        4,
        "{}",
        s.sp.summary()
    );
    s.check(&report, "v2", &pushed).await;
}

// ---------------------------------------------------------------------------------------
// F30: schema 1.

#[tokio::test(flavor = "multi_thread")]
async fn f30_schema1_source_is_refused_clearly_and_not_retried() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 16 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let schema1 = br#"{"schemaVersion":1,"name":"team/app","tag":"v1","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#;
    s.sp.add(
        Rule::on("GET", "/manifests/v1$").respond(
            Reply::status(200)
                .header(
                    "content-type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )
                .body(schema1.to_vec()),
        ),
    );
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    assert_failed(&report, &["schema 1", &s.sp.host()]);
    assert_eq!(tries(&s.sp, "GET", "/manifests/v1$"), 1, "not retried");
    assert!(writes(&s.dp.requests()).is_empty());
    s.check(&report, "v1", &pushed).await;
}

// ---------------------------------------------------------------------------------------
// The service-wide transfer cap.

#[tokio::test(flavor = "multi_thread")]
async fn the_transfer_cap_holds_across_concurrent_syncs() {
    let s = Scene::start().await;
    let (a, b) = (
        Image::random(Format::Oci, &[96 * KIB, 96 * KIB, 96 * KIB]),
        Image::random(Format::Oci, &[96 * KIB, 96 * KIB, 96 * KIB]),
    );
    s.src.push_image(REPO, "a", &a).await;
    s.src.push_image(REPO, "b", &b).await;
    // Every source blob takes about a second, so overlapping transfers would show.
    s.sp.add(Rule::on("GET", "/blobs/sha256:").trickle(Duration::from_millis(100), 12 * KIB));
    let engine = Arc::new(s.engine(TaskConfig {
        proc_num: 4,
        max_transfers: 2,
        ..task(0)
    }));
    let runs: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|tag| {
            let (engine, source, target) = (engine.clone(), s.source(tag), s.target(tag));
            tokio::spawn(async move { engine.sync(&source, &target).await })
        })
        .collect();
    for run in runs {
        assert_success(&run.await.unwrap());
    }
    // A layer stream lasts at least 0.8 s here (8 pieces, 100 ms apart). Three layer GETs
    // starting within 0.7 s would mean three streams at once; the cap allows two.
    let layers: Vec<&String> = a
        .layers
        .iter()
        .chain(&b.layers)
        .map(|l| &l.digest)
        .collect();
    let mut starts: Vec<Instant> =
        s.sp.requests_to("GET", "/blobs/sha256:")
            .iter()
            .filter(|r| layers.iter().any(|d| r.path.contains(d.as_str())))
            .map(|r| r.at)
            .collect();
    starts.sort();
    assert_eq!(starts.len(), 6);
    for window in starts.windows(3) {
        let spread = window[2].duration_since(window[0]);
        assert!(
            spread >= Duration::from_millis(700),
            "three layer streams started within {spread:?}"
        );
    }
}
