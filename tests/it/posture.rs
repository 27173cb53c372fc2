//! Production posture (issue 14) against the real service and real registries: the
//! queue that synchronous callers wait in, the seed's sync-onto-itself example, the
//! default-password refusal and machine-readable logs.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::contract::status_of;
use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::service::admin;
use crate::common::{skopeo, Format, Image, Registry, Service, ServiceConfig};

/// 100 synchronous POSTs at once against 8 sync slots: every one waits its turn in the
/// queue and ends 200; never more than 8 run at once; each job's wait is in the job and
/// in the queue-wait histogram. The source's manifest is trickled (fault proxy over a
/// real registry) so that each sync holds its slot long enough for the queue to fill.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_100_synchronous_posts_waits_in_line_and_all_end_200() {
    const BURST: usize = 100;
    const SLOTS: usize = 8;
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[4 * 1024]))
        .await;
    let proxy = FaultProxy::start(&src.host()).await;
    proxy.add(
        Rule::on("GET", "^/v2/team/app/manifests/")
            .every()
            .trickle(Duration::from_millis(50), 128),
    );
    let service = Service::start(&ServiceConfig {
        max_concurrent_syncs: Some(SLOTS),
        ..ServiceConfig::new()
            .entry("src", &proxy.host(), None)
            .registry("dst", &dst)
    })
    .await;
    let source = format!("{}/team/app:v1", proxy.host());
    let started = Instant::now();
    let posts = (0..BURST).map(|i| {
        let body = json!({"rsync_config": {"source": source, "target": format!("{}/prod/app:b{i}", dst.host())}});
        let service = &service;
        async move { service.post_json(Some(&admin()), &body).await }
    });
    let answers = futures_util::future::join_all(posts).await;
    let took = started.elapsed();
    let refused: Vec<_> = answers
        .iter()
        .enumerate()
        .filter(|(_, (status, _))| *status != StatusCode::OK)
        .map(|(i, (status, body))| format!("#{i}: {status} {body}"))
        .collect();
    assert!(refused.is_empty(), "not all 200:\n{}", refused.join("\n"));
    for (_, body) in &answers {
        assert_eq!(status_of(body), "successfully", "{body}");
    }

    let (status, page) = service
        .call_json(
            reqwest::Method::GET,
            "/v1/image/rsync/jobs?limit=500",
            &admin(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), BURST, "one job per POST");
    let time = |job: &Value, key: &str| -> DateTime<Utc> {
        job[key]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing: {job}"))
    };
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    let mut waits: Vec<f64> = Vec::new();
    for job in jobs {
        assert_eq!(job["state"], json!("succeeded"), "{job}");
        edges.push((time(job, "started_at"), 1));
        edges.push((time(job, "finished_at"), -1));
        waits.push(job["queued_seconds"].as_f64().expect("queued_seconds"));
    }
    // Ends before starts at the same instant: a slot given back is taken at once.
    edges.sort_by_key(|(t, delta)| (*t, *delta));
    let mut running = 0;
    let mut most = 0;
    for (_, delta) in edges {
        running += delta;
        most = most.max(running);
    }
    assert!(
        most <= SLOTS as i32,
        "{most} syncs ran at once, over {SLOTS}"
    );
    assert_eq!(most, SLOTS as i32, "the burst never filled the slots");

    let metrics = service
        .client()
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("imagersync_job_queue_wait_seconds_count {BURST}")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("imagersync_jobs_queued{replica=") && l.ends_with("} 0")),
        "queue drained: {metrics}"
    );
    waits.sort_by(f64::total_cmp);
    let p = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
    eprintln!(
        "burst: {BURST} synchronous POSTs, {SLOTS} slots: all 200 in {:.1} s; queue wait p50 {:.2} s, p90 {:.2} s, max {:.2} s",
        took.as_secs_f64(),
        p(0.5),
        p(0.9),
        p(1.0)
    );
    for i in [0, BURST - 1] {
        skopeo::assert_digest(&dst, &format!("prod/app:b{i}"), &pushed.digest).await;
    }
}

/// The seed's documented example syncs an image onto itself: 200 `successfully`, the
/// image `already_synced`, a log line saying so, and not one write at the registry (a
/// fault proxy over the real registry records every request), `force` or not. What
/// cannot work is still refused: a bad reference (400), a missing image (502).
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_onto_itself_answers_200_already_synced_and_writes_nothing() {
    let registry = Registry::start_anonymous().await;
    let pushed = registry
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * 1024]))
        .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    let service = Service::start(&ServiceConfig::new().entry("reg", &proxy.host(), None)).await;
    let image = format!("{}/team/app:v1", proxy.host());
    let by_digest = format!("{}/team/app@{}", proxy.host(), pushed.digest);
    for (label, body) in [
        ("tag", json!({"source": image, "target": image})),
        (
            "forced",
            json!({"source": image, "target": image, "force": true}),
        ),
        ("digest", json!({"source": by_digest, "target": by_digest})),
        (
            "platform filter",
            json!({"source": image, "target": image, "platforms": ["linux/arm64"]}),
        ),
    ] {
        let (status, answer) = service
            .post_json(Some(&admin()), &json!({"rsync_config": body}))
            .await;
        assert_eq!(status, StatusCode::OK, "{label}: {answer}");
        assert_eq!(status_of(&answer), "successfully", "{label}: {answer}");
        let images = answer["rsync_data"]["images"].as_array().unwrap();
        assert_eq!(images.len(), 1, "{label}: {answer}");
        assert_eq!(
            images[0]["status"],
            json!("already_synced"),
            "{label}: {answer}"
        );
        let info = answer["rsync_data"]["rsync_info"].as_str().unwrap();
        assert!(
            info.contains("source and target are the same image"),
            "{label}: no log line: {info}"
        );
    }
    let writes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| !matches!(r.method.as_str(), "GET" | "HEAD"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "wrote to the registry: {writes:?}");
    skopeo::assert_digest(&registry, "team/app:v1", &pushed.digest).await;

    // Still refused: what cannot work.
    for (label, reference, want) in [
        (
            "upper-case repository",
            format!("{}/Team/app:v1", proxy.host()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing image",
            format!("{}/team/app:nope", proxy.host()),
            StatusCode::BAD_GATEWAY,
        ),
    ] {
        let (status, answer) = service
            .post_json(
                Some(&admin()),
                &json!({"rsync_config": {"source": reference, "target": reference}}),
            )
            .await;
        assert_eq!(status, want, "{label}: {answer}");
        assert_ne!(status_of(&answer), "successfully", "{label}: {answer}");
    }
}

/// A config file `rsyncserver.auth: {auth}` in a fresh dir; returns (dir, path).
fn config_with_auth(auth: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "rsyncserver:\n  logfile: {}\n  jobs: {{database: {}}}\n  auth: {auth}\n",
            dir.path().join("a.log").display(),
            dir.path().join("jobs.sqlite3").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (dir, path)
}

/// Guessable service passwords on an address other hosts can reach: start-up refused
/// (exit 2) with the user's name, the key and how to set a password, never the
/// password. On loopback the same config starts and warns; a strong password starts on
/// 0.0.0.0 (probed over loopback: no packet leaves the machine).
#[tokio::test(flavor = "multi_thread")]
async fn a_default_password_is_refused_on_an_open_address_and_warned_about_on_loopback() {
    use crate::common::net::free_port;
    use crate::common::service::{run_expecting_exit_on, BIN};
    let hash_of_name = bcrypt::hash("deploy", 4).unwrap();
    let open = || format!("0.0.0.0:{}", free_port());
    let mut table = crate::common::Cases::new();
    for (label, auth, user) in [
        ("shipped admin: admin", "{admin: admin}".to_owned(), "admin"),
        (
            "the user's own name",
            "{ci: ci, ok: 'Zq8-long-pass'}".to_owned(),
            "ci",
        ),
        (
            "shipped value under another user",
            "{jenkins: admin}".to_owned(),
            "jenkins",
        ),
        (
            "shipped bcrypt example's password",
            "{ci: change-me}".to_owned(),
            "ci",
        ),
        (
            "bcrypt hash of the user's name",
            format!("{{deploy: '{hash_of_name}'}}"),
            "deploy",
        ),
    ] {
        let (_dir, path) = config_with_auth(&auth);
        let exit = run_expecting_exit_on(&path, &open());
        table.check(label, || {
            assert_eq!(exit.code, Some(2), "{exit:?}");
            for part in [
                "rsyncserver.auth",
                user,
                "htpasswd -nbB",
                "--address 127.0.0.1",
            ] {
                assert!(
                    exit.stderr.contains(part),
                    "no {part:?} in: {}",
                    exit.stderr
                );
            }
            assert!(!exit.stderr.contains("change-me"), "{}", exit.stderr);
        });
    }
    table.finish();

    // Loopback: starts, and says so.
    let service = Service::start_raw("  auth: {admin: admin}\n", 0o600).await;
    let out = service.stdout();
    assert!(
        out.contains("default password") && out.contains("admin"),
        "no warning on loopback:\n{out}"
    );
    // A strong password on 0.0.0.0: starts.
    let (dir, path) = config_with_auth("{admin: 'Zq8-long-pass-2026'}");
    let port = free_port();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--address")
        .arg(format!("0.0.0.0:{port}"))
        .arg("--configFile")
        .arg(&path)
        .current_dir(dir.path());
    let (o, e) = (dir.path().join("out.log"), dir.path().join("err.log"));
    let mut process = crate::common::process::Owned::spawn("imagersync 0.0.0.0", cmd, &o, &e);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let check = client
            .get(format!("http://127.0.0.1:{port}/check"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if check.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        assert!(
            process.exited().is_none() && Instant::now() < deadline,
            "a strong password on 0.0.0.0 did not start:\n{}",
            process.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--log-format json`: every line the service prints is one JSON object; the request's
/// line carries the request id (the caller's `X-Request-Id`, echoed back), the user and
/// the job id; the sync's line, logged by the job, carries the job id and user.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_parse_line_by_line_and_carry_request_user_and_job() {
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    src.push_image("team/app", "v1", &Image::random(Format::Oci, &[4 * 1024]))
        .await;
    let config = ServiceConfig::new()
        .registry("src", &src)
        .registry("dst", &dst);
    let service = Service::start_with_args(&config, &["--log-format", "json"]).await;
    let creds = admin();
    let body = json!({"rsync_config": {
        "source": format!("{}/team/app:v1", src.host()),
        "target": format!("{}/prod/app:v1", dst.host()),
    }});
    let resp = service
        .client()
        .post(service.url("/v1/image/rsync"))
        .basic_auth(&creds.user, Some(&creds.pass))
        .header("x-request-id", "ci-run-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "ci-run-42");
    let job: i64 = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Without one, the service makes an id and answers with it.
    let resp = service
        .client()
        .get(service.url("/nope"))
        .send()
        .await
        .unwrap();
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!made.is_empty());

    let out = service.stdout();
    let lines: Vec<Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    // The field `key` of the line's spans (innermost last), if any.
    let span_field = |line: &Value, key: &str| -> Option<Value> {
        line["spans"]
            .as_array()?
            .iter()
            .rev()
            .find_map(|s| s.get(key).cloned())
    };
    let request_line = lines
        .iter()
        .find(|l| l["message"] == json!("request") && l["method"] == json!("POST"))
        .unwrap_or_else(|| panic!("no request line:\n{out}"));
    assert_eq!(
        span_field(request_line, "request_id"),
        Some(json!("ci-run-42")),
        "{request_line}"
    );
    assert_eq!(
        span_field(request_line, "user"),
        Some(json!("admin")),
        "{request_line}"
    );
    assert_eq!(
        span_field(request_line, "job"),
        Some(json!(job)),
        "{request_line}"
    );
    let sync_line = lines
        .iter()
        .find(|l| l["message"] == json!("sync"))
        .unwrap_or_else(|| panic!("no sync line:\n{out}"));
    assert_eq!(
        span_field(sync_line, "job"),
        Some(json!(job)),
        "{sync_line}"
    );
    assert_eq!(
        span_field(sync_line, "user"),
        Some(json!("admin")),
        "{sync_line}"
    );
    assert_eq!(sync_line["status"], json!("successfully"), "{sync_line}");
    assert!(
        lines
            .iter()
            .any(|l| span_field(l, "request_id") == Some(json!(made))),
        "the made-up id is in no line:\n{out}"
    );
    assert!(!out.contains(&password), "a secret in the log");
}
