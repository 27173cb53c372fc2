//! The reliability rows the first round left open (issue 16): F9 the token endpoint fails,
//! F11 a source that accepts and goes silent, F17 blob HEADs refused in a new repository,
//! F4 a source that answers a range nobody asked for. Same rig as `faults.rs`: the engine
//! as a library, fault proxies in front of real `docker-registry` processes, skopeo as
//! the oracle, and [`Scene::check`] after every sync. The rows that need the service
//! process (413, half-closed connections, webhooks, references) are in
//! `service_more.rs`.

use std::time::Duration;

use crate::common::fault_proxy::{FaultProxy, Reply, Rule};
use crate::common::fixture::random_password;
use crate::common::{skopeo, Format, Image, Registry, TokenIssuer};
use crate::faults::{
    assert_failed, blob_path, head_blob, image, task, tries, writes, Scene, KIB, MIB, REPO, TARGET,
};
use base64::Engine as _;
use imagersync::config::TaskConfig;

/// The log lines of a report that contain `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

// ---------------------------------------------------------------------------------------
// F9: the token endpoint fails.

/// A token-mode target whose realm is rewritten (by the target's proxy) to a second
/// proxy in front of the real token issuer, so the realm itself can fail on cue. The
/// realm is on 127.0.0.1 like the registry, so the realm policy lets it through.
#[tokio::test(flavor = "multi_thread")]
async fn f09_token_endpoint_failures_name_the_realm_and_recover() {
    let token_pass = random_password("token");
    let issuer = TokenIssuer::start("robot", &token_pass).await;
    let issuer_host = issuer
        .realm()
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_owned();
    let tp = FaultProxy::start(&issuer_host).await;
    let src_pass = random_password("src");
    let (src, dst) = tokio::join!(
        Registry::start_htpasswd("puller", &src_pass),
        Registry::start_token("robot", &token_pass, &issuer),
    );
    let s = Scene::over(src, dst).await;
    let img = image(Format::Oci, 64 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    s.dp.add(Rule::on("*", ".*").realm_to(&format!("{}/token", tp.url())));
    let mut secrets = vec![
        token_pass.clone(),
        base64::engine::general_purpose::STANDARD.encode(format!("robot:{token_pass}")),
    ];

    // (row, the realm's fault, idle timeout, token requests expected with one retry,
    // what the error must say besides the realm and the registry)
    let rows: Vec<(&str, Rule, u64, usize, &str)> = vec![
        (
            "500",
            Rule::on("GET", "^/token").respond(Reply::json_error(
                500,
                "UNKNOWN",
                "token service down",
            )),
            5,
            2,
            "HTTP 500",
        ),
        (
            "garbage JSON",
            Rule::on("GET", "^/token").respond(
                Reply::status(200)
                    .header("content-type", "application/json")
                    .body("<html>oops</html>"),
            ),
            5,
            1,
            "not JSON holding a token",
        ),
        (
            "10 MB chunked body",
            Rule::on("GET", "^/token").respond(Reply::status(200).filler(10 * MIB as u64, false)),
            5,
            1,
            "larger than the 1024 KiB limit",
        ),
        (
            "10 MB announced body",
            Rule::on("GET", "^/token").respond(Reply::status(200).filler(10 * MIB as u64, true)),
            5,
            1,
            "larger than the 1024 KiB limit",
        ),
        (
            "never answers",
            Rule::on("GET", "^/token").hang(),
            1,
            2,
            "timed out",
        ),
    ];
    let mut last_engine = None;
    for (row, rule, idle, token_requests, needle) in rows {
        tp.clear_rules();
        tp.clear_requests();
        s.dp.clear_requests();
        let fault = tp.add(rule);
        let engine = s.engine(TaskConfig {
            idle_timeout_seconds: idle,
            ..task(1)
        });
        let report = engine.sync(&s.source("v1"), &s.target("v1")).await;
        let error = assert_failed(
            &report,
            &[
                "token endpoint",
                &tp.host(),
                &s.dp.host(),
                "checking manifest prod/app:v1",
                needle,
            ],
        );
        assert!(
            !error.contains("authentication failed"),
            "row {row}: the realm's fault must not read as refused credentials: {error}"
        );
        assert_eq!(
            fault.fired(),
            token_requests,
            "row {row}: a transient fault is retried once, a bad answer is not:\n{}",
            tp.summary()
        );
        // No anonymous fallback: the registry only ever saw the request that drew its
        // challenge, never one sent on without a token.
        let seen = s.dp.requests();
        assert!(
            seen.iter()
                .all(|r| r.status == Some(401) && r.header("authorization").is_none()),
            "row {row}: requests reached the registry without a token:\n{}",
            s.dp.summary()
        );
        assert!(writes(&seen).is_empty());
        s.check_with(&report, "v1", &pushed, &secrets, true).await;
        last_engine = Some(engine);
    }

    // The realm recovers: the same engine (same client, same learnt challenge) syncs.
    tp.clear_rules();
    let report = last_engine
        .expect("rows ran")
        .sync(&s.source("v1"), &s.target("v1"))
        .await;
    crate::common::engine::assert_success(&report);
    secrets.extend(issuer.issued());
    s.check_with(&report, "v1", &pushed, &secrets, true).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}

// ---------------------------------------------------------------------------------------
// F11: a source that accepts the connection and never answers.

/// A listener that accepts connections and then neither reads nor writes; returns its
/// `host:port` and a counter of connections accepted.
async fn tarpit() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (host, accepted)
}

#[tokio::test(flavor = "multi_thread")]
async fn f11_silent_source_times_out_names_the_step_and_is_retried() {
    let s = Scene::start().await;
    let img = image(Format::Oci, 64 * KIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let quick = TaskConfig {
        idle_timeout_seconds: 1,
        connect_timeout_seconds: 1,
        ..task(1)
    };

    // 1. Accepts the TCP connection, never reads, never answers.
    let (silent, accepted) = tarpit().await;
    let engine = crate::common::engine::engine_for(
        [
            (silent.clone(), &s.src),
            (s.dp.host(), &s.dst),
            (s.dst.host(), &s.dst),
        ],
        quick.clone(),
    );
    let report = engine
        .sync(&format!("{silent}/{REPO}:v1"), &s.target("v1"))
        .await;
    assert_failed(
        &report,
        &["timed out", &silent, "fetching manifest team/app:v1"],
    );
    assert!(report.log.contains("retry 1/1"), "{}", report.log);
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "first try and one retry, each on a fresh connection"
    );
    assert!(writes(&s.dp.requests()).is_empty());
    s.check(&report, "v1", &pushed).await;

    // 2. Answers the manifest's headers, then stalls before the first body byte.
    let stall =
        s.sp.add(Rule::on("GET", "/manifests/v1$").trickle(Duration::from_secs(3600), 1));
    let report = s
        .engine(quick.clone())
        .sync(&s.source("v1"), &s.target("v1"))
        .await;
    assert_failed(
        &report,
        &["timed out", &s.sp.host(), "fetching manifest team/app:v1"],
    );
    // Two tries after the challenge round trip (whose 401 the rule stalled too).
    assert_eq!(stall.fired(), 3, "{}", s.sp.summary());
    assert_eq!(
        tries(&s.sp, "GET", "/manifests/v1$"),
        2,
        "{}",
        s.sp.summary()
    );
    assert!(writes(&s.dp.requests()).is_empty());
    s.check(&report, "v1", &pushed).await;

    // 3. Never completes the TCP handshake: a listener whose accept queue is full drops
    // further SYNs, so only the connect timeout ends the wait.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let full_host = full.local_addr().unwrap().to_string();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        // The kernel completes a backlog's worth of handshakes without accept().
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(&full_host),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let engine = crate::common::engine::engine_for(
        [(full_host.clone(), &s.src), (s.dp.host(), &s.dst)],
        quick,
    );
    let report = engine
        .sync(&format!("{full_host}/{REPO}:v1"), &s.target("v1"))
        .await;
    assert_failed(
        &report,
        &["timed out", &full_host, "fetching manifest team/app:v1"],
    );
    assert!(report.log.contains("retry 1/1"), "{}", report.log);
    drop((fillers, full));

    // The source answers again: the same sync passes.
    s.sp.clear_rules();
    let report = s
        .engine(task(1))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;
    crate::common::engine::assert_success(&report);
    s.check(&report, "v1", &pushed).await;
}

// ---------------------------------------------------------------------------------------
// F17: blob HEADs refused in a repository the target does not have yet.

#[tokio::test(flavor = "multi_thread")]
async fn f17_refused_blob_heads_mean_unknown_but_a_refused_upload_fails() {
    let s = Scene::start().await;
    // Two layers above 1 MiB: HEADed even in a new repository.
    let img = Image::random(Format::Oci, &[2 * MIB, 3 * MIB / 2]);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let denied =
        s.dp.add(
            Rule::on("HEAD", "^/v2/prod/app/blobs/sha256:").respond(Reply::json_error(
                403,
                "DENIED",
                "requested access to the resource is denied",
            )),
        );
    let report = s
        .engine(task(1))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;

    crate::common::engine::assert_success(&report);
    assert!(denied.fired() >= 2, "{}", s.dp.summary());
    let noted = lines_with(&report.log, "answered HTTP 403 to a blob check");
    assert_eq!(
        noted.len(),
        1,
        "logged once per repository:\n{}",
        report.log
    );
    assert!(noted[0].contains("prod/app"), "{}", noted[0]);
    assert_eq!(report.images[0].blobs_copied, pushed.blobs.len() as u64);
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;

    // The upload itself refused: a clear failure naming the step, nothing tagged.
    let other = Image::random(Format::Oci, &[2 * MIB, 64 * KIB]);
    let pushed_other = s.src.push_image(REPO, "v2", &other).await;
    s.dp.add(
        Rule::on("POST", "^/v2/prod/app/blobs/uploads/").respond(Reply::json_error(
            403,
            "DENIED",
            "requested access to the resource is denied",
        )),
    );
    let report = s
        .engine(task(1))
        .sync(&s.source("v2"), &s.target("v2"))
        .await;
    assert_failed(
        &report,
        &[&s.dp.host(), "pushing blob", "HTTP 403", "DENIED"],
    );
    s.check(&report, "v2", &pushed_other).await;
    skopeo::assert_absent(&s.dst, &format!("{TARGET}:v2")).await;
}

// ---------------------------------------------------------------------------------------
// F4: a source that ignores `Range`, or answers the wrong `Content-Range` after a cut.

#[tokio::test(flavor = "multi_thread")]
async fn f04_partial_answers_are_never_spliced() {
    let s = Scene::start().await;
    let img = image(Format::Oci, MIB);
    let pushed = s.src.push_image(REPO, "v1", &img).await;
    let layer = &img.layers[0].digest;
    let cut_at = 256 * KIB as u64;

    // Cut, then on the retry a 206 with the rest from the cut on (what a resuming
    // client would splice): refused, not retried, nothing of the blob at the target.
    s.sp.add(
        Rule::on("GET", &blob_path(REPO, layer))
            .nth(1)
            .cut_after(cut_at),
    );
    let partial = s.sp.add(
        Rule::on("GET", &blob_path(REPO, layer))
            .nth(2)
            .partial_from(cut_at),
    );
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;
    assert_failed(
        &report,
        &[&s.sp.host(), layer, "206 Partial Content", "never spliced"],
    );
    assert_eq!(partial.fired(), 1);
    assert_eq!(
        s.sp.requests_to("GET", &blob_path(REPO, layer)).len(),
        2,
        "{}",
        s.sp.summary()
    );
    assert_eq!(head_blob(&s.dst, TARGET, layer).await.0, 404);
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_absent(&s.dst, &format!("{TARGET}:v1")).await;

    // A cut, then a source that would ignore any `Range`: the retry asks for the whole
    // blob from byte 0 (no `Range` at all), gets it, and the digest check passes.
    s.sp.clear_rules();
    s.sp.clear_requests();
    s.sp.add(
        Rule::on("GET", &blob_path(REPO, layer))
            .nth(1)
            .cut_after(cut_at),
    );
    let report = s
        .engine(task(2))
        .sync(&s.source("v1"), &s.target("v1"))
        .await;
    crate::common::engine::assert_success(&report);
    let gets = s.sp.requests_to("GET", &blob_path(REPO, layer));
    assert_eq!(gets.len(), 2, "{}", s.sp.summary());
    assert!(gets.iter().all(|g| g.header("range").is_none()), "{gets:?}");
    let size = img.layers[0].data.len() as u64;
    assert_eq!(
        gets[1].response_bytes, size,
        "the retry streamed the whole blob"
    );
    s.check(&report, "v1", &pushed).await;
    skopeo::assert_landed(&s.dst, &format!("{TARGET}:v1"), &pushed).await;
}
