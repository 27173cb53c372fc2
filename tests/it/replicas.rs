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

use crate::common::fault_proxy::{FaultProxy, Rule, RuleHandle};
use crate::common::postgres::{Backend, JobDb, DATABASE};
use crate::common::service::{jenkins, json_of};
use crate::common::webhook::WebhookReceiver;
use crate::common::{skopeo, Format, Image, Pushed, Registry, Service, ServiceConfig};

const KIB: usize = 1024;
const JOBS: &str = "/v1/image/rsync/jobs";

/// POSTs an async job copying `source` to `target` as jenkins; returns its id.
/// Pushes an image of `layers` to `team/app:tag` at `src` and makes `proxy` (in front of
/// `src`) trickle its largest blob, `per_tick` bytes every 100 ms, so a job copying it
/// stays mid-transfer as long as the test needs; returns the image and the rule.
async fn push_slowed(
    src: &Registry,
    proxy: &FaultProxy,
    tag: &str,
    layers: &[usize],
    per_tick: usize,
) -> (Pushed, RuleHandle) {
    let pushed = src
        .push_image("team/app", tag, &Image::random(Format::Oci, layers))
        .await;
    let largest = pushed.blobs.iter().max_by_key(|b| b.size).unwrap();
    let rule = proxy.add(
        Rule::on("GET", &format!("^/v2/team/app/blobs/{}$", largest.digest))
            .every()
            .trickle(Duration::from_millis(100), per_tick),
    );
    (pushed, rule)
}

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
    // The big layer trickles: the job is mid-transfer for a long while.
    let (pushed, slow) = push_slowed(
        &src,
        &proxy,
        "v1",
        &[1536 * KIB, 24 * KIB, 16 * KIB],
        16 * KIB,
    )
    .await;
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
    let _ = push_slowed(&src, &proxy, "v1", &[1024 * KIB, 16 * KIB], 8 * KIB).await;
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

/// Samples, until `stop`, how many job rows say running at one instant (one snapshot
/// per query); returns the highest count and the number of samples.
fn sample_running(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(i64, usize)> {
    tokio::spawn(async move {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        let (mut highest, mut samples) = (0, 0);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let running: i64 =
                sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            highest = highest.max(running);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (highest, samples)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_syncs_holds_across_replicas_for_async_and_synchronous_jobs() {
    const LIMIT: usize = 2;
    let db = JobDb::start(Backend::Postgres).await;
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let mut config = db.apply(
        ServiceConfig::new()
            .entry("src", &proxy.host(), None)
            .registry("dst", &dst),
    );
    // Each replica alone would run LIMIT syncs: three of them, 3 × LIMIT, unless the
    // limit is counted over the shared database.
    config.max_concurrent_syncs = Some(LIMIT);
    let (a, b, c) = tokio::join!(
        Service::start(&config),
        Service::start(&config),
        Service::start(&config)
    );
    let replicas = [a, b, c];
    // Nine slow jobs (the big layer trickles for about a second): seven async ones,
    // round-robin, then two synchronous POSTs that must wait for shared slots too.
    let mut pushed = Vec::new();
    for n in 0..9 {
        let (image, _) = push_slowed(
            &src,
            &proxy,
            &format!("t{n}"),
            &[96 * KIB, 8 * KIB],
            8 * KIB,
        )
        .await;
        pushed.push(image);
    }
    let source = |n: usize| format!("{}/team/app:t{n}", proxy.host());
    let target = |n: usize| format!("{}/prod/app:t{n}", dst.host());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_running(db.pg.as_ref().unwrap().url(DATABASE), stop.clone());
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(submit(&replicas[n % 3], &source(n), &target(n)).await);
    }
    let asyncs = async {
        for id in &ids {
            let job = wait_final(&replicas[0], *id, Duration::from_secs(180)).await;
            assert_eq!(job["state"], json!("succeeded"), "{job}");
        }
    };
    let (source7, target7, source8, target8) = (source(7), target(7), source(8), target(8));
    let ((first, second), ()) = tokio::join!(
        async {
            tokio::join!(
                replicas[1].sync(&source7, &target7),
                replicas[2].sync(&source8, &target8)
            )
        },
        asyncs
    );
    for (status, answer) in [first, second] {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (highest, samples) = sampler.await.unwrap();
    eprintln!("running jobs at once: at most {highest} in {samples} samples");
    assert!(
        highest as usize <= LIMIT,
        "{highest} jobs ran at once over the replicas; the limit is {LIMIT}"
    );
    assert_eq!(highest as usize, LIMIT, "the jobs never used every slot");

    // The records agree: at no job's start did more than LIMIT jobs run (a start is
    // stamped after the slot was granted, an end before the slot is given back).
    let mut conn = db.pg.as_ref().unwrap().connect(DATABASE).await;
    let overlap: i64 = sqlx::query_scalar(
        "SELECT max((SELECT count(*) FROM jobs o
                     WHERE (o.record->>'started_at')::timestamptz
                               <= (j.record->>'started_at')::timestamptz
                       AND (o.record->>'finished_at')::timestamptz
                               > (j.record->>'started_at')::timestamptz))
         FROM jobs j",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        (1..=LIMIT as i64).contains(&overlap),
        "{overlap} jobs overlapped"
    );

    // Every job ended once, on its first attempt; each target written by one run.
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 9, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.1 == "succeeded" && r.3 == 1),
        "{rows:?}"
    );
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for replica in &replicas {
        for entry in replica.logfile_entries() {
            let target = entry["rsync_config"]["target"].as_str().unwrap().to_owned();
            *runs.entry(target).or_default() += 1;
        }
    }
    assert_eq!(runs.len(), 9, "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "a job ran twice: {runs:?}");
    for n in [0, 7, 8] {
        skopeo::assert_landed(&dst, &format!("prod/app:t{n}"), &pushed[n]).await;
    }
}

/// Waits until job `id`'s row satisfies `done`; returns it. Panics after `limit`.
async fn wait_row(
    db: &JobDb,
    what: &str,
    limit: Duration,
    done: impl Fn(&(i64, String, Option<String>, i64)) -> bool,
) -> (i64, String, Option<String>, i64) {
    let deadline = Instant::now() + limit;
    loop {
        let now = rows(db).await;
        if let Some(row) = now.first().filter(|r| done(r)) {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_runs_are_cut_off_three_times_is_failed_instead_of_taken_over_again() {
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
    let mut replicas = [a, b];
    // The big layer trickles for minutes: every run is cut off mid-transfer.
    let (pushed, _) = push_slowed(&src, &proxy, "v1", &[1024 * KIB, 16 * KIB], 4 * KIB).await;
    let largest = pushed.blobs.iter().max_by_key(|b| b.size).unwrap();
    let id = submit(
        &replicas[0],
        &format!("{}/team/app:v1", proxy.host()),
        &format!("{}/prod/app:v1", dst.host()),
    )
    .await;

    // Three times: kill -9 the replica running the job; the other one takes it over (or,
    // the third time, gives it up); the killed one comes back as a new replica.
    let mut killed = Vec::new();
    for attempt in 1..=3 {
        let row = wait_row(&db, "the job runs", Duration::from_secs(60), |r| {
            r.1 == "running" && r.3 == attempt
        })
        .await;
        let owner = row.2.unwrap();
        let holder = replicas
            .iter()
            .position(|s| owner.contains(&format!("-{}-", s.pid())))
            .unwrap_or_else(|| panic!("no replica has the id {owner}"));
        replicas[holder].kill();
        killed.push(owner);
        wait_row(&db, "the job is taken over", Duration::from_secs(60), |r| {
            r.3 == attempt + 1
        })
        .await;
        replicas[holder].start_again().await;
    }

    // The fourth attempt did not run: the job failed, saying why.
    let job = wait_final(&replicas[0], id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], json!("failed"), "{job}");
    assert_eq!(job["http_status"], json!(500), "{job}");
    let message = job["result"]["rsync_data"]["rsync_info"]
        .as_str()
        .or_else(|| job["result"]["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    let text = job["result"].to_string();
    assert!(
        text.contains("cut off 3 times") && killed.iter().all(|r| text.contains(r.as_str())),
        "{message} {job}"
    );
    let row = rows(&db).await.remove(0);
    assert_eq!((row.1.as_str(), row.3), ("failed", 4), "{row:?}");
    let mut conn = db.pg.as_ref().unwrap().connect(DATABASE).await;
    let interrupted: Vec<String> =
        sqlx::query_scalar("SELECT interrupted_by FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(interrupted, killed);
    // Nobody runs it any more: the big layer is not fetched again.
    let fetches = proxy.requests_to("GET", &format!("^/v2/team/app/blobs/{}$", largest.digest));
    tokio::time::sleep(Duration::from_secs(
        2 * crate::common::postgres::TEST_LEASE_SECONDS,
    ))
    .await;
    let later = proxy.requests_to("GET", &format!("^/v2/team/app/blobs/{}$", largest.digest));
    assert_eq!(fetches.len(), later.len(), "the given-up job ran again");
    skopeo::assert_absent(&dst, "prod/app:v1").await;
    eprintln!("given-up job {id}: {text}");
}

/// Waits until `receiver` got `count` requests; panics after `limit`.
async fn wait_deliveries(receiver: &WebhookReceiver, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while receiver.deliveries().len() < count {
        assert!(
            Instant::now() < deadline,
            "{count} webhook requests not within {limit:?}: {:?}",
            receiver.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// POSTs an async job with a `callback_url` as jenkins; returns its id.
async fn submit_with_callback(service: &Service, source: &str, target: &str, hook: &str) -> i64 {
    let body = json!({"async": true, "callback_url": hook,
                      "rsync_config": {"source": source, "target": target}});
    let (status, job) = service.post_json(Some(&jenkins()), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_is_sent_once_by_whichever_replica_finishes_the_job_or_by_another_if_it_dies() {
    let db = JobDb::start(Backend::Postgres).await;
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let config = db.apply(ServiceConfig {
        callback_allowed_hosts: vec!["127.0.0.1".into()],
        ..ServiceConfig::new()
            .entry("src", &proxy.host(), None)
            .registry("dst", &dst)
    });
    let (mut a, mut b) = tokio::join!(Service::start(&config), Service::start(&config));

    // 1. A runs a slow job and is killed mid-transfer: B takes it over, finishes it and
    //    sends its webhook; A, back, sends nothing.
    let (_, slow) = push_slowed(&src, &proxy, "v1", &[1024 * KIB, 16 * KIB], 16 * KIB).await;
    let first = WebhookReceiver::start(&[]).await;
    let id = submit_with_callback(
        &a,
        &format!("{}/team/app:v1", proxy.host()),
        &format!("{}/prod/app:v1", dst.host()),
        &first.url(),
    )
    .await;
    wait_row(&db, "A runs the job", Duration::from_secs(60), |r| {
        r.1 == "running"
    })
    .await;
    a.kill();
    let taken = wait_row(&db, "B takes the job over", Duration::from_secs(60), |r| {
        r.3 == 2
    })
    .await;
    let b_replica = taken.2.unwrap();
    a.start_again().await;
    drop(slow);
    proxy.clear_rules();
    let job = wait_final(&b, id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], json!("succeeded"), "{job}");
    wait_deliveries(&first, 1, Duration::from_secs(30)).await;

    // 2. B finishes a job and dies while its webhook is retried (the receiver answered
    //    500 once): A finds the delivery nobody completes once B's claim lapses, and
    //    sends it.
    let image = Image::random(Format::Oci, &[16 * KIB]);
    src.push_image("team/app", "v2", &image).await;
    let second = WebhookReceiver::start(&[500]).await;
    let id2 = submit_with_callback(
        &b,
        &format!("{}/team/app:v2", proxy.host()),
        &format!("{}/prod/app:v2", dst.host()),
        &second.url(),
    )
    .await;
    wait_deliveries(&second, 1, Duration::from_secs(60)).await;
    b.kill();
    wait_deliveries(&second, 2, Duration::from_secs(60)).await;
    let job2 = wait_final(&a, id2, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let job2 = loop {
        let (_, job) = a
            .call_json(reqwest::Method::GET, &format!("{JOBS}/{id2}"), &jenkins())
            .await;
        if job["callback"]["delivered"] == json!(true) {
            break job;
        }
        assert!(Instant::now() < deadline, "never recorded: {job} {job2}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job2["state"], json!("succeeded"), "{job2}");

    // Nothing more comes, from any replica, once every claim could have lapsed.
    b.start_again().await;
    tokio::time::sleep(Duration::from_secs(
        3 * crate::common::postgres::TEST_LEASE_SECONDS,
    ))
    .await;
    let got: Vec<(String, u16)> = first
        .deliveries()
        .iter()
        .map(|d| {
            (
                d.header("x-imagersync-job").unwrap_or("").to_owned(),
                d.status,
            )
        })
        .collect();
    assert_eq!(got, vec![(id.to_string(), 200)], "job {id}'s webhook");
    let sent: Value = serde_json::from_slice(&first.deliveries()[0].body).unwrap();
    assert_eq!(sent["state"], json!("succeeded"), "{sent}");
    let statuses: Vec<u16> = second.deliveries().iter().map(|d| d.status).collect();
    assert_eq!(
        statuses,
        vec![500, 200],
        "job {id2}'s webhook: B's try, then A's"
    );

    // The outbox says who sent each.
    let mut conn = db.pg.as_ref().unwrap().connect(DATABASE).await;
    let outbox: Vec<(i64, Option<String>, bool)> =
        sqlx::query_as("SELECT id, callback_by, callback_done FROM jobs ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(outbox[0], (id, Some(b_replica.clone()), true), "{outbox:?}");
    assert!(
        outbox[1].2 && outbox[1].1.as_deref().is_some_and(|r| r != b_replica),
        "job {id2}'s webhook was sent by A: {outbox:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_pause_learnt_by_one_replica_holds_for_the_others() {
    const RETRY_AFTER: u64 = 5;
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
    let first = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let second = src
        .push_image("team/other", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    // The source answers A's first request for team/app with a 429 (a front over the
    // real registry: no packaged registry rate-limits).
    for method in ["GET", "HEAD"] {
        proxy.add(
            Rule::on(method, "^/v2/team/app/manifests/v1$")
                .first(1)
                .respond(crate::common::fault_proxy::Reply::too_many_requests(
                    RETRY_AFTER,
                    true,
                )),
        );
    }
    let id_a = submit(
        &a,
        &format!("{}/team/app:v1", proxy.host()),
        &format!("{}/prod/app:v1", dst.host()),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let throttled = loop {
        if let Some(seen) = proxy.requests().into_iter().find(|s| s.status == Some(429)) {
            break seen.at;
        }
        assert!(Instant::now() < deadline, "no 429: {}", proxy.summary());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // A shares the pause: a row for the source's host, ending by the database's clock.
    let mut conn = db.pg.as_ref().unwrap().connect(DATABASE).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM paused_until - now())::float8 FROM registry_pauses
             WHERE registry = $1",
        )
        .bind(proxy.host())
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some(left) = left {
            break left;
        }
        assert!(Instant::now() < deadline, "A never shared its pause");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        left > 0.0 && left <= RETRY_AFTER as f64,
        "{left} s left of the pause"
    );

    // B, asked now for another repository of the same registry, waits the pause out
    // before its first request to it.
    let id_b = submit(
        &b,
        &format!("{}/team/other:v1", proxy.host()),
        &format!("{}/prod/other:v1", dst.host()),
    )
    .await;
    for (service, id) in [(&a, id_a), (&b, id_b)] {
        let job = wait_final(service, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], json!("succeeded"), "{job}");
    }
    let b_first = proxy
        .requests()
        .into_iter()
        .filter(|s| s.path.starts_with("/v2/team/other/"))
        .map(|s| s.at)
        .min()
        .expect("B asked the source");
    let after = b_first.duration_since(throttled);
    eprintln!("B's first request to the paused registry came {after:?} after A's 429");
    assert!(
        after >= Duration::from_secs(RETRY_AFTER - 1),
        "B asked the paused registry {after:?} after A's 429 (Retry-After: {RETRY_AFTER}): {}",
        proxy.summary()
    );
    skopeo::assert_landed(&dst, "prod/app:v1", &first).await;
    skopeo::assert_landed(&dst, "prod/other:v1", &second).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_the_running_replica_by_notification_before_its_next_heartbeat() {
    let db = JobDb::start(Backend::Postgres).await;
    let password = crate::common::fixture::random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &password),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    // A long lease: the heartbeat that would carry the cancel comes only every 20 s.
    let config = ServiceConfig {
        lease_seconds: Some(60),
        ..db.apply(
            ServiceConfig::new()
                .entry("src", &proxy.host(), None)
                .registry("dst", &dst),
        )
    };
    let (mut a, b) = tokio::join!(Service::start(&config), Service::start(&config));
    let _ = push_slowed(&src, &proxy, "v1", &[1024 * KIB, 16 * KIB], 4 * KIB).await;
    let id = submit(
        &a,
        &format!("{}/team/app:v1", proxy.host()),
        &format!("{}/prod/app:v1", dst.host()),
    )
    .await;
    wait_row(&db, "A runs the job", Duration::from_secs(60), |r| {
        r.1 == "running"
    })
    .await;
    let (status, asked) = b
        .call_json(reqwest::Method::DELETE, &format!("{JOBS}/{id}"), &jenkins())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    // A acts on the notification (its log says so), not on a heartbeat.
    a.wait_stdout(
        "cancel request received through a database notification",
        1,
        Duration::from_secs(15),
    )
    .await;
    let job = wait_final(&b, id, Duration::from_secs(15)).await;
    assert_eq!(job["state"], json!("cancelled"), "{job}");
    assert_eq!(job["cancelled_by"], json!("jenkins"), "{job}");
    skopeo::assert_absent(&dst, "prod/app:v1").await;
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
        let (image, _) = push_slowed(
            &src,
            &proxy,
            &format!("v{n}"),
            &[768 * KIB, 16 * KIB],
            16 * KIB,
        )
        .await;
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
