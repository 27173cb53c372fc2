//! Several replicas of the service on one PostgreSQL job database: every job runs exactly
//! once and the work spreads; a replica killed mid-transfer has its job taken over by
//! another once its lease lapses, and does not touch it when it comes back.
//! Real parts throughout: Debian's postgresql-15 (tests/it/common/postgres.rs),
//! docker-registry, and skopeo as the oracle; the fault proxy only slows the source.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use regex::Regex;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::postgres::{Backend, JobDb, DATABASE};
use crate::common::service::{jenkins, json_of};
use crate::common::{skopeo, Format, Image, Registry, Service, ServiceConfig};

const KIB: usize = 1024;
const JOBS: &str = "/v1/image/rsync/jobs";

/// POSTs an async job copying `source` to `target` as jenkins; returns its id.
async fn submit(service: &Service, source: &str, target: &str) -> i64 {
    let body = json!({"async": true, "rsync_config": {"source": source, "target": target}});
    let resp = service
        .post_raw(
            "/v1/image/rsync",
            Some(&jenkins()),
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    let (status, job) = json_of(resp).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_i64().unwrap()
}

/// Polls job `id` through `service` until it ended; panics after `limit`.
async fn wait_final(service: &Service, id: i64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, job) = service
            .call_json(reqwest::Method::GET, &format!("{JOBS}/{id}"), &jenkins())
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not ended after {limit:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each job row: (id, state, owner, attempt).
async fn rows(db: &JobDb) -> Vec<(i64, String, Option<String>, i64)> {
    let mut conn = db.pg.as_ref().unwrap().connect(DATABASE).await;
    sqlx::query_as("SELECT id, state, owner, attempt FROM jobs ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_run_thirty_async_jobs_each_exactly_once_and_share_the_work() {
    let db = JobDb::start(Backend::Postgres).await;
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    let config = db.apply(
        ServiceConfig::new()
            .registry("src", &src)
            .registry("dst", &dst),
    );
    let (a, b, c) = tokio::join!(
        Service::start(&config),
        Service::start(&config),
        Service::start(&config)
    );
    let replicas = [a, b, c];
    // One image per job: the same manifest pushed by two replicas at once into one
    // repository can fail on distribution 2.8 (DIGEST_INVALID), a registry race this
    // test is not about (no cross-replica single-flight yet; see doc/design.md).
    let mut pushed = Vec::new();
    for n in 0..30 {
        let image = Image::random(Format::Oci, &[8 * KIB]);
        pushed.push(src.push_image("team/app", &format!("t{n}"), &image).await);
    }
    let mut ids = Vec::new();
    for n in 0..30 {
        let replica = &replicas[n % 3];
        let source = format!("{}/team/app:t{n}", src.host());
        let target = format!("{}/prod/app:t{n}", dst.host());
        ids.push((submit(replica, &source, &target).await, n));
    }
    for (i, (id, n)) in ids.iter().enumerate() {
        // Read through another replica than the one it was sent to.
        let job = wait_final(&replicas[(i + 1) % 3], *id, Duration::from_secs(120)).await;
        assert_eq!(job["state"], json!("succeeded"), "t{n}: {job}");
    }
    for n in [0, 13, 29] {
        skopeo::assert_landed(&dst, &format!("prod/app:t{n}"), &pushed[n]).await;
    }

    // The job rows: every job ended once, by its first attempt, held by one replica.
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 30, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.1 == "succeeded" && r.3 == 1),
        "each ran on its first attempt: {rows:?}"
    );
    let mut by_owner: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        *by_owner.entry(row.2.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(by_owner.len(), 3, "every replica ran jobs: {by_owner:?}");
    assert!(by_owner.values().all(|&n| n == 10), "{by_owner:?}");

    // Each replica's analysis log holds the jobs it ran: 30 entries in all, one per tag.
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for replica in &replicas {
        let entries = replica.logfile_entries();
        assert!(!entries.is_empty(), "a replica ran nothing");
        for entry in entries {
            let target = entry["rsync_config"]["target"].as_str().unwrap().to_owned();
            *runs.entry(target).or_default() += 1;
        }
    }
    assert_eq!(runs.len(), 30, "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "a job ran twice: {runs:?}");

    // The target registry agrees: one manifest PUT per tag (its "response completed"
    // line per request; the rig's registries log no separate access log).
    let put = Regex::new(r#"http\.request\.uri="?/v2/prod/app/manifests/(t\d+)[" ]"#).unwrap();
    let log = dst.log();
    let mut puts: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines().filter(|l| {
        l.contains("msg=\"response completed\"") && l.contains("http.request.method=PUT")
    }) {
        if let Some(found) = put.captures(line) {
            *puts.entry(found[1].to_owned()).or_default() += 1;
        }
    }
    assert_eq!(puts.len(), 30, "manifest PUTs per tag: {puts:?}");
    assert!(
        puts.values().all(|&n| n == 1),
        "a tag written twice: {puts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replicas_job_is_taken_over_after_its_lease_and_the_old_replica_keeps_off() {
    let db = JobDb::start(Backend::Postgres).await;
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let config = db.apply(
        ServiceConfig::new()
            .entry("src", &proxy.host(), None)
            .registry("dst", &dst),
    );
    let (mut a, b) = tokio::join!(Service::start(&config), Service::start(&config));
    let image = Image::random(Format::Oci, &[1536 * KIB, 24 * KIB, 16 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let largest = pushed.blobs.iter().max_by_key(|b| b.size).unwrap();
    // The big layer trickles: the job is mid-transfer for a long while.
    let slow = proxy.add(
        Rule::on("GET", &format!("^/v2/team/app/blobs/{}$", largest.digest))
            .every()
            .trickle(Duration::from_millis(100), 16 * KIB),
    );
    let source = format!("{}/team/app:v1", proxy.host());
    let target = format!("{}/prod/app:v1", dst.host());
    let id = submit(&a, &source, &target).await;
    // Wait until A is copying: the big layer started.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, job) = a
            .call_json(reqwest::Method::GET, &format!("{JOBS}/{id}"), &jenkins())
            .await;
        if job["progress"]["bytes_done"].as_u64().unwrap_or(0) > 100 * KIB as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "A never got going: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = rows(&db).await;
    assert_eq!(before[0].1, "running");
    assert_eq!(before[0].3, 1);
    let a_replica = before[0].2.clone().unwrap();

    // kill -9 A mid-transfer. B takes the job over once A's lease lapses.
    a.kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    let b_replica = loop {
        let now = rows(&db).await;
        if now[0].3 == 2 {
            assert_ne!(now[0].2.as_deref(), Some(a_replica.as_str()));
            break now[0].2.clone().unwrap();
        }
        assert!(Instant::now() < deadline, "no takeover after 60 s: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A comes back (a new process, a new replica id) while B still copies: it leaves
    // B's job alone.
    a.start_again().await;
    tokio::time::sleep(Duration::from_secs(
        2 * crate::common::postgres::TEST_LEASE_SECONDS,
    ))
    .await;
    let during = rows(&db).await;
    assert_eq!(
        (during[0].1.as_str(), during[0].2.as_deref(), during[0].3),
        ("running", Some(b_replica.as_str()), 2),
        "the job stays B's while B renews its lease"
    );

    drop(slow);
    proxy.clear_rules();
    let job = wait_final(&a, id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], json!("succeeded"), "{job}");
    assert_eq!(job["resumed"], json!(1), "{job}");
    let log = job["result"]["rsync_data"]["rsync_info"].as_str().unwrap();
    let first = log.lines().next().unwrap();
    assert!(
        first.contains("Resumed after a service restart: taken over from replica")
            && first.contains(&a_replica),
        "{log}"
    );
    let image = &job["result"]["rsync_data"]["images"][0];
    assert!(
        image["blobs_skipped"].as_u64().unwrap() >= 2,
        "blobs A sent are not sent again: {image}"
    );
    skopeo::assert_landed(&dst, "prod/app:v1", &pushed).await;
    let after = rows(&db).await;
    assert_eq!(
        (after[0].1.as_str(), after[0].3),
        ("succeeded", 2),
        "{after:?}"
    );
    // Only B ran it to the end: one finished entry, in B's analysis log.
    assert_eq!(b.logfile_entries().len(), 1, "{}", b.logfile_text());
    assert!(a.logfile_entries().is_empty(), "{}", a.logfile_text());
    eprintln!("takeover log of job {id}:\n{log}");
}

/// Reads server-sent events from `url` as jenkins, calling `seen(name, job)` for each
/// until it returns true or the stream ends; panics after `limit`.
async fn follow_events(
    service: &Service,
    url: &str,
    limit: Duration,
    mut seen: impl FnMut(&str, &Value) -> bool,
) {
    use futures_util::StreamExt as _;
    let creds = jenkins();
    let resp = service
        .client()
        .get(service.url(url))
        .basic_auth(&creds.user, Some(&creds.pass))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("events: nothing conclusive within {limit:?}"));
        let Some(chunk) = chunk else {
            panic!("the event stream ended first");
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(str::trim)
                .unwrap_or("");
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let job: Value = serde_json::from_str(data.trim()).unwrap();
            if seen(name, &job) {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_and_cancel_work_through_a_replica_that_does_not_run_the_job() {
    let db = JobDb::start(Backend::Postgres).await;
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let config = db.apply(
        ServiceConfig::new()
            .entry("src", &proxy.host(), None)
            .registry("dst", &dst),
    );
    let (a, b) = tokio::join!(Service::start(&config), Service::start(&config));
    let image = Image::random(Format::Oci, &[1024 * KIB, 16 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let largest = pushed.blobs.iter().max_by_key(|b| b.size).unwrap();
    proxy.add(
        Rule::on("GET", &format!("^/v2/team/app/blobs/{}$", largest.digest))
            .every()
            .trickle(Duration::from_millis(100), 8 * KIB),
    );
    let id = submit(
        &a,
        &format!("{}/team/app:v1", proxy.host()),
        &format!("{}/prod/app:v1", dst.host()),
    )
    .await;
    let events = format!("{JOBS}/{id}/events");

    // B streams A's progress: bytes moving, read from the job's row.
    let mut byte_counts = Vec::new();
    follow_events(&b, &events, Duration::from_secs(60), |name, job| {
        assert_eq!(name, "progress", "{job}");
        let bytes = job["progress"]["bytes_done"].as_u64().unwrap_or(0);
        byte_counts.push(bytes);
        byte_counts.iter().filter(|&&n| n > 0).count() >= 2
    })
    .await;

    // A cancel sent to B stops the copy on A; B's stream ends with it.
    let (status, asked) = b
        .call_json(reqwest::Method::DELETE, &format!("{JOBS}/{id}"), &jenkins())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    assert_eq!(asked["cancelled_by"], json!("jenkins"), "{asked}");
    let started = Instant::now();
    let mut last = Value::Null;
    follow_events(&b, &events, Duration::from_secs(30), |name, job| {
        last = job.clone();
        name == "done"
    })
    .await;
    assert_eq!(last["state"], json!("cancelled"), "{last}");
    assert_eq!(last["cancelled_by"], json!("jenkins"), "{last}");
    eprintln!("cancel through B took {:?}", started.elapsed());
    skopeo::assert_absent(&dst, "prod/app:v1").await;
    let rows = rows(&db).await;
    assert_eq!(rows[0].1, "cancelled", "{rows:?}");
}

/// `GET path` on `service`: its status, or `None` when no answer came.
async fn status_of(service: &Service, path: &str) -> Option<StatusCode> {
    service
        .client()
        .get(service.url(path))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// Polls `GET path` until it answers `want`; panics after `limit`.
async fn wait_status(service: &Service, path: &str, want: StatusCode, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = status_of(service, path).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} answered {got:?}, not {want}, for {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job as the service shows it (for a job running there, its live record, which
/// needs no database).
async fn job_of(service: &Service, id: i64) -> Value {
    let (status, job) = service
        .call_json(reqwest::Method::GET, &format!("{JOBS}/{id}"), &jenkins())
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_restarted_under_the_service_loses_no_job_and_runs_none_twice() {
    let mut db = JobDb::start(Backend::Postgres).await;
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let config = db.apply(
        ServiceConfig::new()
            .entry("src", &proxy.host(), None)
            .registry("dst", &dst),
    );
    let service = Service::start(&config).await;
    wait_status(&service, "/ready", StatusCode::OK, Duration::from_secs(10)).await;

    // Two syncs whose big layer trickles through the fault proxy: both are mid-transfer
    // when PostgreSQL goes away.
    let mut pushed = Vec::new();
    let mut ids = Vec::new();
    for n in 0..2 {
        let image = Image::random(Format::Oci, &[768 * KIB, 16 * KIB]);
        let image = src.push_image("team/app", &format!("v{n}"), &image).await;
        let largest = image.blobs.iter().max_by_key(|b| b.size).unwrap();
        proxy.add(
            Rule::on("GET", &format!("^/v2/team/app/blobs/{}$", largest.digest))
                .every()
                .trickle(Duration::from_millis(100), 16 * KIB),
        );
        let source = format!("{}/team/app:v{n}", proxy.host());
        let target = format!("{}/prod/app:v{n}", dst.host());
        ids.push(submit(&service, &source, &target).await);
        pushed.push(image);
    }
    for &id in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = job_of(&service, id).await;
            if job["progress"]["bytes_done"].as_u64().unwrap_or(0) > 32 * KIB as u64 {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} never got going: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // PostgreSQL stops (a fast shutdown: the service's connections are cut).
    let pg = db.pg.as_mut().unwrap();
    pg.stop();
    wait_status(
        &service,
        "/ready",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        status_of(&service, "/check").await,
        Some(StatusCode::OK),
        "/check is liveness: the process is fine without its database"
    );
    // The syncs go on without the database and end; their ends wait to be written.
    for &id in &ids {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job = job_of(&service, id).await;
            if job["state"] != json!("running") && job["state"] != json!("queued") {
                assert_eq!(job["state"], json!("succeeded"), "{job}");
                break;
            }
            assert!(Instant::now() < deadline, "job {id} did not end: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Still down: the jobs ended while the database was away (and well past the lease).
    assert_eq!(
        status_of(&service, "/ready").await,
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(status_of(&service, "/check").await, Some(StatusCode::OK));

    // PostgreSQL comes back on the same data and port: the service reconnects.
    db.pg.as_mut().unwrap().start_again().await;
    wait_status(&service, "/ready", StatusCode::OK, Duration::from_secs(30)).await;
    for &id in &ids {
        let job = wait_final(&service, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], json!("succeeded"), "{job}");
        assert_eq!(job["resumed"], json!(0), "ran once, not resumed: {job}");
    }
    // The ends reached the rows: nothing left running or queued, each by its first attempt.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = rows(&db).await;
        if now.iter().all(|r| r.1 == "succeeded") {
            assert!(now.iter().all(|r| r.3 == 1), "a job was run again: {now:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job rows not written after the database came back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (n, image) in pushed.iter().enumerate() {
        skopeo::assert_landed(&dst, &format!("prod/app:v{n}"), image).await;
    }

    // New jobs are taken and run.
    proxy.clear_rules();
    let image = Image::random(Format::Oci, &[8 * KIB]);
    let after = src.push_image("team/app", "after", &image).await;
    let id = submit(
        &service,
        &format!("{}/team/app:after", proxy.host()),
        &format!("{}/prod/app:after", dst.host()),
    )
    .await;
    let job = wait_final(&service, id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], json!("succeeded"), "{job}");
    skopeo::assert_landed(&dst, "prod/app:after", &after).await;

    let rows = rows(&db).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.1 == "succeeded" && r.3 == 1),
        "no job lost, stuck or run twice: {rows:?}"
    );
    // Each ran once: one entry per target in the analysis log.
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for entry in service.logfile_entries() {
        let target = entry["rsync_config"]["target"].as_str().unwrap().to_owned();
        *runs.entry(target).or_default() += 1;
    }
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "a job ran twice: {runs:?}");
}
