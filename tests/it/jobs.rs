//! Jobs through the real service and real registries: asynchronous POST, progress,
//! listing and privacy, cancel, server-sent events, resume after a crash, and the
//! completion webhook. skopeo checks what landed (or that nothing did).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::contract::{assert_sync_shape, status_of};
use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::fixture::{Pair, SourceAuth};
use crate::common::postgres::{Backend, JobDb, DATABASE};
use crate::common::service::{admin, jenkins, json_of};
use crate::common::webhook::WebhookReceiver;
use crate::common::{skopeo, Creds, Format, Image, Pushed, Registry, Service, ServiceConfig};
use imagersync::jobs::{JobState, JobStore, PostgresStore, SqliteStore};

const KIB: usize = 1024;
const JOBS: &str = "/v1/image/rsync/jobs";

/// The service's source registry reached through a fault proxy, so tests can slow it.
struct Slowed {
    src: Registry,
    dst: Registry,
    proxy: FaultProxy,
    service: Service,
}

impl Slowed {
    async fn start(db: &JobDb, configure: impl FnOnce(ServiceConfig) -> ServiceConfig) -> Slowed {
        let password = crate::common::fixture::random_password("dst");
        let (src, dst) = tokio::join!(
            Registry::start_anonymous(),
            Registry::start_htpasswd("pusher", &password),
        );
        let proxy = FaultProxy::start(&src.host()).await;
        let config = db.apply(configure(
            ServiceConfig::new()
                .entry("src", &proxy.host(), None)
                .registry("dst", &dst),
        ));
        let service = Service::start(&config).await;
        Slowed {
            src,
            dst,
            proxy,
            service,
        }
    }

    /// Pushes a fresh image and slows its largest layer's download to `bytes` per 100 ms.
    async fn push_slowed(&self, tag: &str, sizes: &[usize], bytes: usize) -> Pushed {
        let image = Image::random(Format::Oci, sizes);
        let pushed = self.src.push_image("team/app", tag, &image).await;
        let largest = pushed.blobs.iter().max_by_key(|b| b.size).unwrap();
        self.proxy.add(
            Rule::on("GET", &format!("^/v2/team/app/blobs/{}$", largest.digest))
                .every()
                .trickle(Duration::from_millis(100), bytes),
        );
        pushed
    }

    /// Pushes a slowed image as `tag` and submits an async job copying it to
    /// `prod/app:tag` as jenkins; returns what was pushed and the job id.
    async fn submit_slowed(&self, tag: &str, sizes: &[usize], bytes: usize) -> (Pushed, i64) {
        let pushed = self.push_slowed(tag, sizes, bytes).await;
        let body = async_body(&self.source(tag), &self.target(tag));
        let job = submit(&self.service, &jenkins(), &body).await;
        (pushed, job["id"].as_i64().unwrap())
    }

    fn source(&self, tag: &str) -> String {
        format!("{}/team/app:{tag}", self.proxy.host())
    }

    fn target(&self, tag: &str) -> String {
        format!("{}/prod/app:{tag}", self.dst.host())
    }
}

fn body(source: &str, target: &str) -> Value {
    json!({"rsync_config": {"source": source, "target": target}})
}

fn async_body(source: &str, target: &str) -> Value {
    json!({"async": true, "rsync_config": {"source": source, "target": target}})
}

/// `GET path` with Basic `creds`; status and JSON.
async fn get(service: &Service, creds: &Creds, path: &str) -> (StatusCode, Value) {
    service.call_json(reqwest::Method::GET, path, creds).await
}

/// `DELETE path` with Basic `creds`.
async fn delete(service: &Service, creds: &Creds, path: &str) -> (StatusCode, Value) {
    service
        .call_json(reqwest::Method::DELETE, path, creds)
        .await
}

/// POSTs an async job as `creds`; asserts the 202 and returns the job.
async fn submit(service: &Service, creds: &Creds, body: &Value) -> Value {
    let resp = service
        .post_raw(
            "/v1/image/rsync",
            Some(creds),
            Some("application/json"),
            serde_json::to_vec(body).unwrap(),
        )
        .await;
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, job) = json_of(resp).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_i64().unwrap_or_else(|| panic!("no id: {job}"));
    assert_eq!(location.as_deref(), Some(format!("{JOBS}/{id}").as_str()));
    assert_eq!(job["links"]["self"], json!(format!("{JOBS}/{id}")));
    assert!(
        ["queued", "running"].contains(&job["state"].as_str().unwrap()),
        "{job}"
    );
    job
}

/// Waits until jenkins' job `id` holds a sync slot (state `running`).
async fn wait_running(service: &Service, id: i64) -> Value {
    wait_for(
        service,
        &jenkins(),
        id,
        Duration::from_secs(60),
        "running",
        |job| job["state"] == json!("running"),
    )
    .await
}

/// Polls job `id` until `done(job)` holds; panics after `limit`.
async fn wait_for(
    service: &Service,
    creds: &Creds,
    id: i64,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, job) = get(service, creds, &format!("{JOBS}/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: not {what} after {limit:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_final(job: &Value) -> bool {
    ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or(""))
}

/// Asserts the job succeeded with the full synchronous answer and complete progress.
fn assert_succeeded(job: &Value, pushed: &Pushed) {
    assert_eq!(job["state"], json!("succeeded"), "{job}");
    assert_eq!(job["http_status"], json!(200), "{job}");
    let result = &job["result"];
    assert_sync_shape(result);
    assert_eq!(status_of(result), "successfully", "{job}");
    assert_eq!(
        result["rsync_data"]["images"][0]["digest"],
        json!(pushed.digest)
    );
    let progress = &job["progress"];
    let blobs = pushed.blobs.len() as u64;
    assert_eq!(progress["blobs_total"], json!(blobs), "{job}");
    assert_eq!(progress["blobs_done"], json!(blobs), "{job}");
    assert_eq!(progress["bytes_total"], json!(pushed.blob_bytes()), "{job}");
    assert_eq!(progress["bytes_done"], json!(pushed.blob_bytes()), "{job}");
    assert_eq!(progress["images"][0]["step"], json!("done"), "{job}");
    assert!(
        job["finished_at"].is_string() && job["started_at"].is_string(),
        "{job}"
    );
}

async fn async_post_answers_202_at_once_and_the_job_ends_with_the_synchronous_answer(
    backend: Backend,
) {
    let db = JobDb::start(backend).await;
    let pair = Pair::start_with_db(&db, SourceAuth::Anonymous, |c, _, dst| {
        c.registry("dst", dst)
    })
    .await;
    let image = Image::random(Format::Oci, &[256 * KIB, 64 * KIB]);
    let pushed = pair.src.push_image("team/app", "v1", &image).await;
    let service = &pair.service;

    let job = submit(
        service,
        &jenkins(),
        &async_body(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1")),
    )
    .await;
    assert_eq!(job["user"], json!("jenkins"));
    assert_eq!(job["async"], json!(true));
    let id = job["id"].as_i64().unwrap();
    let job = wait_for(
        service,
        &jenkins(),
        id,
        Duration::from_secs(30),
        "final",
        is_final,
    )
    .await;
    assert_succeeded(&job, &pushed);
    assert_eq!(job["result"]["username"], json!("jenkins"));
    skopeo::assert_landed(&pair.dst, "team/app:v1", &pushed).await;

    // `Prefer: respond-async` asks for the same; the image is there now, so nothing moves.
    let resp = service
        .client()
        .post(service.url("/v1/image/rsync"))
        .basic_auth("jenkins", Some(&jenkins().pass))
        .header("prefer", "respond-async")
        .json(&body(
            &pair.src_ref("team/app:v1"),
            &pair.dst_ref("team/app:v1"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let (_, second) = json_of(resp).await;
    let second = wait_for(
        service,
        &jenkins(),
        second["id"].as_i64().unwrap(),
        Duration::from_secs(30),
        "final",
        is_final,
    )
    .await;
    assert_eq!(
        second["result"]["rsync_data"]["images"][0]["status"],
        json!("already_synced"),
        "{second}"
    );

    // A plain POST still waits and answers as before, and names its job.
    let resp = service
        .post_raw(
            "/v1/image/rsync",
            Some(&jenkins()),
            Some("application/json"),
            serde_json::to_vec(&body(
                &pair.src_ref("team/app:v1"),
                &pair.dst_ref("team/app:v2"),
            ))
            .unwrap(),
        )
        .await;
    let job_path = resp
        .headers()
        .get("content-location")
        .expect("Content-Location names the job")
        .to_str()
        .unwrap()
        .to_owned();
    let (status, answer) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(status_of(&answer), "successfully");
    assert!(
        answer.get("id").is_none(),
        "the seed's body, not a job: {answer}"
    );
    let (_, job) = get(service, &jenkins(), &job_path).await;
    assert_eq!(job["async"], json!(false));
    assert_eq!(job["result"], answer, "the job keeps the answer it gave");
    skopeo::assert_landed(&pair.dst, "team/app:v2", &pushed).await;
}

async fn jobs_are_listed_filtered_paged_and_private_to_their_user(backend: Backend) {
    let db = JobDb::start(backend).await;
    let pair = Pair::start_with_db(&db, SourceAuth::Anonymous, |config, _, dst| ServiceConfig {
        admins: vec!["admin".into()],
        ..config.registry("dst", dst)
    })
    .await;
    let service = &pair.service;
    let image = Image::random(Format::Oci, &[16 * KIB]);
    pair.src.push_image("team/app", "v1", &image).await;
    let ok = async_body(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1"));
    // Passes the body check, fails at the source: a failed job.
    let missing = async_body(
        &pair.src_ref("team/app:nope"),
        &pair.dst_ref("team/app:nope"),
    );
    let mut ids = Vec::new();
    for (creds, body) in [(jenkins(), &ok), (jenkins(), &missing), (admin(), &ok)] {
        let job = submit(service, &creds, body).await;
        let id = job["id"].as_i64().unwrap();
        wait_for(
            service,
            &creds,
            id,
            Duration::from_secs(30),
            "final",
            is_final,
        )
        .await;
        ids.push(id);
    }
    let ids_of = |page: &Value| -> Vec<i64> {
        page["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("no jobs list: {page}"))
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };

    let (status, page) = get(service, &jenkins(), JOBS).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        ids_of(&page),
        vec![ids[1], ids[0]],
        "own jobs, newest first"
    );
    let (_, failed) = get(service, &jenkins(), &format!("{JOBS}?state=failed")).await;
    assert_eq!(ids_of(&failed), vec![ids[1]]);
    assert_eq!(failed["jobs"][0]["http_status"], json!(502), "{failed}");
    let listed = &failed["jobs"][0]["result"]["rsync_data"];
    assert!(
        listed["rsync_error"].as_str().unwrap().contains("nope"),
        "{failed}"
    );
    assert!(
        listed.get("rsync_info").is_none() && listed.get("images").is_none(),
        "a listing leaves out the log and per-image results: {failed}"
    );
    let (_, first) = get(service, &jenkins(), &format!("{JOBS}?limit=1")).await;
    assert_eq!(ids_of(&first), vec![ids[1]]);
    let next = first["next"].as_str().expect("a full page links the next");
    let (_, second) = get(service, &jenkins(), next).await;
    assert_eq!(ids_of(&second), vec![ids[0]]);
    let since = chrono::Utc::now().timestamp() + 3600;
    let (_, none) = get(service, &jenkins(), &format!("{JOBS}?since={since}")).await;
    assert_eq!(ids_of(&none), Vec::<i64>::new());

    // Someone else's job does not exist for jenkins; an admin sees everyone's.
    let (status, _) = get(service, &jenkins(), &format!("{JOBS}/{}", ids[2])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = delete(service, &jenkins(), &format!("{JOBS}/{}", ids[2])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(service, &jenkins(), &format!("{JOBS}?user=admin")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, all) = get(service, &admin(), JOBS).await;
    assert_eq!(ids_of(&all), vec![ids[2], ids[1], ids[0]]);
    let (_, theirs) = get(service, &admin(), &format!("{JOBS}?user=jenkins")).await;
    assert_eq!(ids_of(&theirs), vec![ids[1], ids[0]]);
    let (status, _) = get(service, &admin(), &format!("{JOBS}/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);

    // Bad parameters are refused clearly; no credentials, no jobs.
    let (status, body) = get(service, &jenkins(), &format!("{JOBS}?state=done")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("succeeded"),
        "{body}"
    );
    let resp = service
        .client()
        .get(service.url(JOBS))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = delete(service, &jenkins(), &format!("{JOBS}/{}", ids[0])).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a finished job cannot be cancelled"
    );
}

async fn cancel_stops_a_running_job_and_leaves_no_tag(backend: Backend) {
    let db = JobDb::start(backend).await;
    let s = Slowed::start(&db, |c| c).await;
    // 1 MiB at 16 KiB per 100 ms: about 6 s, plenty of time to cancel mid-way.
    let (pushed, id) = s
        .submit_slowed("v1", &[1024 * KIB, 32 * KIB], 16 * KIB)
        .await;
    wait_for(
        &s.service,
        &jenkins(),
        id,
        Duration::from_secs(20),
        "moving bytes",
        |j| j["progress"]["bytes_done"].as_u64().unwrap_or(0) > 0,
    )
    .await;

    let (status, cancelled) = delete(&s.service, &jenkins(), &format!("{JOBS}/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancelled}");
    assert_eq!(cancelled["cancelled_by"], json!("jenkins"));
    let started = Instant::now();
    let job = wait_for(
        &s.service,
        &jenkins(),
        id,
        Duration::from_secs(10),
        "final",
        is_final,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "transfers stop at once, not after the 6 s the blob needs"
    );
    assert_eq!(job["state"], json!("cancelled"), "{job}");
    assert_eq!(job["http_status"], json!(409), "{job}");
    assert_eq!(
        job["result"]["rsync_data"]["failure"],
        json!("cancelled"),
        "{job}"
    );
    let error = job["result"]["rsync_data"]["rsync_error"].as_str().unwrap();
    assert!(error.contains("cancelled"), "{error}");
    skopeo::assert_absent(&s.dst, "prod/app:v1").await;

    // The service goes on, and the same image copies in full once the source is fast.
    s.proxy.clear_rules();
    let (status, answer) = s.service.sync(&s.source("v1"), &s.target("v1")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    skopeo::assert_landed(&s.dst, "prod/app:v1", &pushed).await;
}

async fn queued_jobs_wait_for_a_slot_and_can_be_cancelled_before_they_start(backend: Backend) {
    let db = JobDb::start(backend).await;
    let s = Slowed::start(&db, |c| ServiceConfig {
        max_concurrent_syncs: Some(1),
        ..c
    })
    .await;
    // 512 KiB at 8 KiB per 100 ms: the slot stays taken for ~6 s, seconds of room for
    // the checks below on a loaded machine.
    let slow = s.push_slowed("v1", &[512 * KIB], 8 * KIB).await;
    let quick = s
        .src
        .push_image("team/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let first = submit(
        &s.service,
        &jenkins(),
        &async_body(&s.source("v1"), &s.target("v1")),
    )
    .await;
    let second = submit(
        &s.service,
        &jenkins(),
        &async_body(&s.source("v2"), &s.target("v2")),
    )
    .await;
    let third = submit(
        &s.service,
        &jenkins(),
        &async_body(&s.source("v2"), &s.target("v3")),
    )
    .await;
    let (first, second, third) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
        third["id"].as_i64().unwrap(),
    );
    // Wait on the event the checks need: the first job holds the only slot.
    wait_running(&s.service, first).await;
    let (_, waiting) = get(&s.service, &jenkins(), &format!("{JOBS}/{second}")).await;
    assert_eq!(
        waiting["state"],
        json!("queued"),
        "one slot, taken: {waiting}"
    );
    // A caller who waits queues behind them too (no 503); when it hangs up while still
    // queued, its job is cancelled and never runs. Queued jobs are not disturbed.
    let ci = jenkins();
    let hung_up = s
        .service
        .client()
        .post(s.service.url("/v1/image/rsync"))
        .basic_auth(&ci.user, Some(&ci.pass))
        .json(&body(&s.source("v2"), &s.target("v4")))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(
        hung_up.as_ref().is_err_and(|e| e.is_timeout()),
        "a synchronous POST behind a taken slot must wait, not answer: {hung_up:?}"
    );
    let abandoned = wait_for_listed(&s.service, &ci, "target=v4 cancelled", |job| {
        job["request"]["targets"][0] == json!(s.target("v4")) && job["state"] == json!("cancelled")
    })
    .await;
    assert!(
        abandoned["started_at"].is_null(),
        "never started: {abandoned}"
    );
    assert!(
        abandoned["cancelled_by"]
            .as_str()
            .unwrap_or_default()
            .contains("hung up"),
        "{abandoned}"
    );
    let (status, _) = delete(&s.service, &jenkins(), &format!("{JOBS}/{third}")).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let ci = jenkins();
    let done = |id| {
        wait_for(
            &s.service,
            &ci,
            id,
            Duration::from_secs(60),
            "final",
            is_final,
        )
    };
    let (first, second, third) = (done(first).await, done(second).await, done(third).await);
    assert_succeeded(&first, &slow);
    assert_succeeded(&second, &quick);
    assert_eq!(third["state"], json!("cancelled"), "{third}");
    assert!(third["started_at"].is_null(), "never started: {third}");
    assert!(
        third["result"]["rsync_data"]["rsync_error"]
            .as_str()
            .unwrap()
            .contains("before it started"),
        "{third}"
    );
    skopeo::assert_absent(&s.dst, "prod/app:v3").await;
    skopeo::assert_absent(&s.dst, "prod/app:v4").await;
    skopeo::assert_landed(&s.dst, "prod/app:v2", &quick).await;
    // The queued jobs' wait shows in them.
    let waited = second["queued_seconds"].as_f64().expect("queued_seconds");
    assert!(waited > 0.0, "second waited for the slot: {second}");
}

/// Polls the job listing until a job matches `what`; panics with the listing after 30 s.
async fn wait_for_listed(
    service: &Service,
    creds: &Creds,
    label: &str,
    what: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = get(service, creds, JOBS).await;
        if let Some(job) = page["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| what(j)))
        {
            return job.clone();
        }
        assert!(Instant::now() < deadline, "no job {label} in {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads server-sent events until the `done` event; returns (name, job) pairs.
async fn read_events(service: &Service, creds: &Creds, id: i64) -> Vec<(String, Value)> {
    let resp = service
        .client()
        .get(service.url(&format!("{JOBS}/{id}/events")))
        .basic_auth(&creds.user, Some(&creds.pass))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut stream = resp.bytes_stream();
    let (mut text, mut events) = (String::new(), Vec::new());
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an event or a keep-alive within 30 s")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                events.push((name.clone(), serde_json::from_str(&data).unwrap()));
            }
            if name == "done" {
                return events;
            }
        }
    }
    panic!("the stream ended without a done event: {events:?}");
}

async fn events_stream_progress_as_it_happens_then_done(backend: Backend) {
    let db = JobDb::start(backend).await;
    let s = Slowed::start(&db, |c| c).await;
    // 512 KiB at 32 KiB per 100 ms: about 1.6 s of visible progress.
    let (pushed, id) = s
        .submit_slowed("v1", &[512 * KIB, 16 * KIB], 32 * KIB)
        .await;
    let events = read_events(&s.service, &jenkins(), id).await;

    let (last_name, last) = events.last().unwrap();
    assert_eq!(last_name, "done");
    assert_succeeded(last, &pushed);
    let progress: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, j)| j)
        .collect();
    let mid_way = progress.iter().filter(|j| {
        let done = j["progress"]["bytes_done"].as_u64().unwrap();
        j["state"] == json!("running") && done > 0 && done < pushed.blob_bytes()
    });
    assert!(
        mid_way.count() >= 2,
        "progress events while bytes move: {progress:?}"
    );
    let bytes: Vec<u64> = progress
        .iter()
        .map(|j| j["progress"]["bytes_done"].as_u64().unwrap())
        .collect();
    assert!(
        bytes.windows(2).all(|w| w[0] <= w[1]),
        "bytes only grow: {bytes:?}"
    );

    // A finished job's stream is its done event, at once.
    let again = read_events(&s.service, &jenkins(), id).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1["state"], json!("succeeded"));
    // Someone else's job has no stream.
    let resp = s
        .service
        .client()
        .get(s.service.url(&format!("{JOBS}/{id}/events")))
        .basic_auth("admin", Some(&admin().pass))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

async fn a_job_running_when_the_service_dies_is_resumed_after_the_restart(backend: Backend) {
    let db = JobDb::start(backend).await;
    let mut s = Slowed::start(&db, |c| c).await;
    let earlier = s
        .src
        .push_image("team/app", "v0", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    // Another repository: prod/app must be new, where small blobs go without a HEAD
    // check, unless the job is a resumed one.
    let other = format!("{}/prod/other:v0", s.dst.host());
    let (status, answer) = s.service.sync(&s.source("v0"), &other).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Two small layers land quickly; the big one trickles while the service is killed.
    let (pushed, id) = s
        .submit_slowed("v1", &[2048 * KIB, 24 * KIB, 16 * KIB], 16 * KIB)
        .await;
    wait_for(
        &s.service,
        &jenkins(),
        id,
        Duration::from_secs(30),
        "two blobs in",
        |j| {
            j["progress"]["blobs_done"].as_u64().unwrap_or(0) >= 2
                && j["progress"]["bytes_done"].as_u64().unwrap_or(0) > 100 * KIB as u64
        },
    )
    .await;

    s.proxy.clear_rules();
    s.service.crash_and_restart().await;
    let job = wait_for(
        &s.service,
        &jenkins(),
        id,
        Duration::from_secs(60),
        "final",
        is_final,
    )
    .await;
    assert_succeeded(&job, &pushed);
    assert_eq!(job["resumed"], json!(1), "{job}");
    let log = job["result"]["rsync_data"]["rsync_info"].as_str().unwrap();
    assert!(
        log.lines()
            .next()
            .unwrap()
            .contains("Resumed after a service restart"),
        "{log}"
    );
    let image = &job["result"]["rsync_data"]["images"][0];
    assert!(
        image["blobs_skipped"].as_u64().unwrap() >= 2,
        "blobs sent before the crash are not sent again: {image}"
    );
    skopeo::assert_landed(&s.dst, "prod/app:v1", &pushed).await;

    // History survives too: the synchronous job from before the crash is still listed.
    let (_, page) = get(&s.service, &admin(), JOBS).await;
    let sources: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["request"]["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec![s.source("v0")], "admin's own jobs: {page}");
    skopeo::assert_landed(&s.dst, "prod/other:v0", &earlier).await;
}

async fn the_webhook_gets_the_finished_job_without_credentials_and_is_retried(backend: Backend) {
    let db = JobDb::start(backend).await;
    // The receiver is on loopback: an internal address, so it must be listed.
    let pair = Pair::start_with_db(&db, SourceAuth::Anonymous, |config, _, dst| ServiceConfig {
        callback_allowed_hosts: vec!["127.0.0.1".into()],
        ..config.registry("dst", dst)
    })
    .await;
    let service = &pair.service;
    let image = Image::random(Format::Oci, &[16 * KIB]);
    let pushed = pair.src.push_image("team/app", "v1", &image).await;
    let receiver = WebhookReceiver::start(&[500]).await;
    let mut request = async_body(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1"));
    request["callback_url"] = json!(receiver.url());
    let job = submit(service, &jenkins(), &request).await;
    let id = job["id"].as_i64().unwrap();
    let job = wait_for(
        service,
        &jenkins(),
        id,
        Duration::from_secs(30),
        "delivered",
        |j| j["callback"]["delivered"] == json!(true),
    )
    .await;
    assert_succeeded(&job, &pushed);
    assert_eq!(
        job["callback"]["attempts"],
        json!(2),
        "500 first, then 200: {job}"
    );

    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 2);
    for d in &deliveries {
        assert_eq!(d.method, "POST");
        assert_eq!(d.path, "/hook");
        assert_eq!(d.header("authorization"), None, "never credentials");
        assert_eq!(d.header("x-imagersync-job"), Some(id.to_string().as_str()));
        let sent: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(sent["id"], json!(id));
        assert_eq!(sent["state"], json!("succeeded"));
        assert_eq!(
            sent["result"]["rsync_data"]["rsync_status"],
            json!("successfully")
        );
        let text = String::from_utf8_lossy(&d.body);
        assert!(!text.contains(&jenkins().pass) && !text.contains(&pair.dst_creds().pass));
    }

    // A callback with credentials in it is refused before anything runs.
    let before = receiver.deliveries().len();
    request["callback_url"] = json!(receiver.url().replace("http://", "http://u:p@"));
    let (status, answer) = service.post_json(Some(&jenkins()), &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["rsync_data"]["rsync_error"]
            .as_str()
            .unwrap()
            .contains("without credentials"),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.deliveries().len(), before);
}

async fn a_full_queue_answers_503_and_names_jobs_max_queued(backend: Backend) {
    let db = JobDb::start(backend).await;
    let s = Slowed::start(&db, |c| ServiceConfig {
        max_concurrent_syncs: Some(1),
        max_queued: Some(1),
        ..c
    })
    .await;
    // ~6 s in the only slot: the queue checks below happen while it is taken.
    let (slow, first) = s.submit_slowed("v1", &[512 * KIB], 8 * KIB).await;
    wait_running(&s.service, first).await;
    let quick = s
        .src
        .push_image("team/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let queued = submit(
        &s.service,
        &jenkins(),
        &async_body(&s.source("v2"), &s.target("v2")),
    )
    .await;
    assert_eq!(queued["state"], json!("queued"), "{queued}");

    // One more than jobs.max_queued: 503 with Retry-After, the seed's shape, nothing stored.
    let resp = s
        .service
        .post_raw(
            "/v1/image/rsync",
            Some(&jenkins()),
            Some("application/json"),
            serde_json::to_vec(&async_body(&s.source("v2"), &s.target("v3"))).unwrap(),
        )
        .await;
    assert_eq!(resp.headers()["retry-after"], "10");
    let (status, refused) = json_of(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_sync_shape(&refused);
    let error = refused["rsync_data"]["rsync_error"].as_str().unwrap();
    assert!(
        error.contains("rsyncserver.jobs.max_queued") && error.contains("queue is full"),
        "{error}"
    );
    let (_, page) = get(&s.service, &jenkins(), JOBS).await;
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        2,
        "the refused job is not stored: {page}"
    );

    let ci = jenkins();
    let done = |id| {
        wait_for(
            &s.service,
            &ci,
            id,
            Duration::from_secs(60),
            "final",
            is_final,
        )
    };
    assert_succeeded(&done(first).await, &slow);
    let queued = done(queued["id"].as_i64().unwrap()).await;
    assert_succeeded(&queued, &quick);
    skopeo::assert_absent(&s.dst, "prod/app:v3").await;
}

async fn the_webhook_stops_after_four_attempts_and_never_follows_a_redirect(backend: Backend) {
    let db = JobDb::start(backend).await;
    // The receivers are on loopback: internal, so listed.
    let pair = Pair::start_with_db(&db, SourceAuth::Anonymous, |config, _, dst| ServiceConfig {
        callback_allowed_hosts: vec!["127.0.0.1".into()],
        ..config.registry("dst", dst)
    })
    .await;
    let service = &pair.service;
    let pushed = pair
        .src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let failing = WebhookReceiver::start(&[500; 8]).await;
    let elsewhere = WebhookReceiver::start(&[]).await;
    let redirecting = WebhookReceiver::redirecting(307, &elsewhere.url()).await;

    let mut ids = Vec::new();
    for (tag, receiver) in [("a", &failing), ("b", &redirecting)] {
        let mut request = async_body(
            &pair.src_ref("team/app:v1"),
            &pair.dst_ref(&format!("team/{tag}:v1")),
        );
        request["callback_url"] = json!(receiver.url());
        ids.push(
            submit(service, &jenkins(), &request).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    // The callback status is saved once the delivery loop ends (backoff 1 + 2 + 4 s).
    let ci = jenkins();
    let ended = |id| {
        wait_for(
            service,
            &ci,
            id,
            Duration::from_secs(120),
            "given up",
            |j| j["callback"]["attempts"].is_number(),
        )
    };
    let (a, b) = (ended(ids[0]).await, ended(ids[1]).await);
    for (job, receiver, status) in [(&a, &failing, "500"), (&b, &redirecting, "307")] {
        assert_succeeded(job, &pushed);
        assert_eq!(job["callback"]["attempts"], json!(4), "{job}");
        assert_eq!(job["callback"]["delivered"], json!(false), "{job}");
        assert!(
            job["callback"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(status)),
            "{job}"
        );
        assert_eq!(receiver.deliveries().len(), 4, "exactly four attempts");
    }
    assert!(
        elsewhere.deliveries().is_empty(),
        "the redirect was followed: {:?}",
        elsewhere.deliveries()
    );
}

async fn finished_jobs_older_than_history_days_are_deleted_at_start(backend: Backend) {
    let db = JobDb::start(backend).await;
    let pair = Pair::start_with_db(&db, SourceAuth::Anonymous, |c, _, dst| ServiceConfig {
        history_days: Some(30),
        ..c.registry("dst", dst)
    })
    .await;
    pair.src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let (source, targets) = (
        pair.src_ref("team/app:v1"),
        [
            pair.dst_ref("team/app:old"),
            pair.dst_ref("team/app:recent"),
        ],
    );
    let mut service = pair.service;
    let mut ids = Vec::new();
    for target in &targets {
        let request = async_body(&source, target);
        let id = submit(&service, &jenkins(), &request).await["id"]
            .as_i64()
            .unwrap();
        wait_for(
            &service,
            &jenkins(),
            id,
            Duration::from_secs(60),
            "final",
            is_final,
        )
        .await;
        ids.push(id);
    }
    let (old, recent) = (ids[0], ids[1]);
    service.terminate();
    let exit = service.wait_exit(Duration::from_secs(60));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", service.stderr());

    // Age one job past history_days in the database the service wrote (its creation time
    // is what pruning reads), then start again: pruning runs at start-up.
    assert!(db.age_job(&service, old, 40).await, "job {old} is stored");
    service.start_again().await;

    let (status, gone) = get(&service, &jenkins(), &format!("{JOBS}/{old}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "pruned: {gone}");
    let (status, kept) = get(&service, &jenkins(), &format!("{JOBS}/{recent}")).await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert_eq!(kept["state"], json!("succeeded"), "{kept}");
}

async fn queued_jobs_stay_queued_across_a_graceful_stop_and_run_after_the_restart(
    backend: Backend,
) {
    let db = JobDb::start(backend).await;
    let mut s = Slowed::start(&db, |c| ServiceConfig {
        max_concurrent_syncs: Some(1),
        ..c
    })
    .await;
    let (slow, first) = s.submit_slowed("v1", &[512 * KIB], 8 * KIB).await;
    wait_running(&s.service, first).await;
    let quick = s
        .src
        .push_image("team/app", "v2", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let queued = submit(
        &s.service,
        &jenkins(),
        &async_body(&s.source("v2"), &s.target("v2")),
    )
    .await["id"]
        .as_i64()
        .unwrap();

    // SIGTERM while the first runs: it finishes, the queued one does not start.
    s.service.terminate();
    let exit = s.service.wait_exit(Duration::from_secs(120));
    assert_eq!(
        exit.and_then(|st| st.code()),
        Some(0),
        "{}",
        s.service.stderr()
    );
    skopeo::assert_landed(&s.dst, "prod/app:v1", &slow).await;
    skopeo::assert_absent(&s.dst, "prod/app:v2").await;
    // What the stopped service left in its database.
    let left = db.stored_state(&s.service, queued).await;
    assert_eq!(left.as_deref(), Some("queued"), "the queued job is kept");
    let first = db.stored_state(&s.service, first).await;
    assert_eq!(first.as_deref(), Some("succeeded"));

    s.service.start_again().await;
    let job = wait_for(
        &s.service,
        &jenkins(),
        queued,
        Duration::from_secs(60),
        "final",
        is_final,
    )
    .await;
    assert_succeeded(&job, &quick);
    skopeo::assert_landed(&s.dst, "prod/app:v2", &quick).await;
}

// ---- The store seam itself, on both backends: fencing, claims, readiness. ----

/// Opens the crate's own store on `db` (for SQLite, a file in `dir`).
async fn open_store(db: &JobDb, dir: &std::path::Path) -> Arc<dyn JobStore> {
    match &db.pg {
        None => Arc::new(SqliteStore::open(&dir.join("jobs.sqlite3")).unwrap()),
        Some(pg) => Arc::new(
            PostgresStore::connect(&pg.url(DATABASE), "test database")
                .await
                .unwrap(),
        ),
    }
}

/// Runs a store call on a blocking thread, as the service does.
async fn on_store<T: Send + 'static>(
    store: &Arc<dyn JobStore>,
    call: impl FnOnce(&dyn JobStore) -> T + Send + 'static,
) -> T {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .unwrap()
}

fn new_job(n: usize) -> imagersync::jobs::JobRecord {
    imagersync::jobs::NewJob {
        user: "jenkins".into(),
        trigger: imagersync::jobs::Trigger::Request,
        request: imagersync::engine::SyncRequest {
            source: format!("r/a:v{n}"),
            targets: vec![format!("r/b:v{n}")],
            ..imagersync::engine::SyncRequest::default()
        },
        rsync_config: json!({"source": format!("r/a:v{n}"), "target": format!("r/b:v{n}")}),
        asynchronous: true,
        callback_url: None,
        max_wait: None,
    }
    .into_record(chrono::Utc::now())
}

async fn a_replica_whose_lease_lapsed_cannot_write_the_job_any_more(backend: Backend) {
    let db = JobDb::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&db, dir.path()).await;
    const LEASE: Duration = Duration::from_secs(30);
    // r1 holds the job with a lease that lapses at once (as if r1 had stopped renewing).
    let (job, r1) = on_store(&store, |s| s.create(new_job(1), "r1", Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(r1.attempt, 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claimed = on_store(&store, |s| s.claim("r2", LEASE, 10, false))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the lapsed job is taken over");
    let r2 = claimed[0].fence.clone();
    assert_eq!((claimed[0].job.id, r2.attempt), (job.id, 2));
    assert_eq!(claimed[0].previous_owner.as_deref(), Some("r1"));

    // r1 comes back: its writes and its heartbeat are refused, the row is r2's.
    let mut stale = job.clone();
    stale.state = JobState::Failed;
    let (copy, fence) = (stale.clone(), r1.clone());
    assert!(!on_store(&store, move |s| s.save(&copy, &fence))
        .await
        .unwrap());
    let id = job.id;
    let renewed = on_store(&store, move |s| s.renew("r1", &[(id, 1)], LEASE))
        .await
        .unwrap();
    assert!(renewed.is_empty(), "r1 no longer holds it: {renewed:?}");
    let stored = on_store(&store, move |s| s.get(id)).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Queued, "r1's write changed nothing");

    // r2 writes and renews; nobody else can take it while r2's lease runs.
    let mut running = job.clone();
    running.state = JobState::Running;
    let (copy, fence) = (running, r2.clone());
    assert!(on_store(&store, move |s| s.save(&copy, &fence))
        .await
        .unwrap());
    let renewed = on_store(&store, move |s| s.renew("r2", &[(id, 2)], LEASE))
        .await
        .unwrap();
    let renewed: Vec<i64> = renewed.iter().map(|r| r.id).collect();
    assert_eq!(renewed, vec![id]);
    let others = on_store(&store, |s| s.claim("r3", LEASE, 10, false))
        .await
        .unwrap();
    assert!(others.is_empty(), "a live lease is not taken: {others:?}");
    let stored = on_store(&store, move |s| s.get(id)).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Running);
}

async fn concurrent_claims_take_each_job_exactly_once(backend: Backend) {
    let db = JobDb::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&db, dir.path()).await;
    let mut ids = Vec::new();
    for n in 0..24 {
        let (job, _) = on_store(&store, move |s| {
            s.create(new_job(n), "gone", Duration::ZERO)
        })
        .await
        .unwrap();
        ids.push(job.id);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Four claimers at once, two jobs at a time, until nothing is left.
    let claimers = (0..4).map(|n| {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            let owner = format!("r{n}");
            let mut got = Vec::new();
            loop {
                let claimed = store
                    .claim(&owner, Duration::from_secs(30), 2, false)
                    .unwrap();
                if claimed.is_empty() {
                    return got;
                }
                got.extend(claimed.into_iter().map(|c| (c.job.id, c.fence.attempt)));
            }
        })
    });
    let mut taken: Vec<(i64, i64)> = futures_util::future::join_all(claimers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    taken.sort_unstable();
    let taken_ids: Vec<i64> = taken.iter().map(|t| t.0).collect();
    assert_eq!(taken_ids, ids, "each job taken exactly once");
    assert!(
        taken.iter().all(|t| t.1 == 2),
        "one new attempt each: {taken:?}"
    );
}

async fn ready_answers_while_the_job_database_answers(backend: Backend) {
    let mut db = JobDb::start(backend).await;
    let pair = Pair::start_with_db(&db, SourceAuth::Anonymous, |c, _, dst| {
        c.registry("dst", dst)
    })
    .await;
    let service = &pair.service;
    let ready = |service: &Service| {
        let url = service.url("/ready");
        let client = service.client().clone();
        async move { json_of(client.get(url).send().await.unwrap()).await }
    };
    let (status, body) = ready(service).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "ready"}));
    let Some(pg) = db.pg.as_mut() else {
        return;
    };
    // PostgreSQL goes away under the running service: not ready, still alive.
    pg.stop();
    let (status, body) = ready(service).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], json!("unavailable"), "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("job database"),
        "{body}"
    );
    assert_eq!(
        service.health().await.unwrap(),
        StatusCode::OK,
        "/check is liveness only"
    );

    // Back again: the service reconnects by itself and runs jobs.
    pg.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready(service).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after 30 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let image = Image::random(Format::Oci, &[16 * KIB]);
    let pushed = pair.src.push_image("team/app", "v1", &image).await;
    let (status, answer) = service
        .sync(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    skopeo::assert_landed(&pair.dst, "team/app:v1", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_starting_together_on_an_empty_database_migrate_it_once() {
    let db = JobDb::start(Backend::Postgres).await;
    let config = db.apply(ServiceConfig::new());
    let (a, b) = tokio::join!(Service::start(&config), Service::start(&config));
    for service in [&a, &b] {
        assert_eq!(service.health().await.unwrap(), StatusCode::OK);
    }
    let mut conn = db.pg.as_ref().unwrap().connect(DATABASE).await;
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    // Every migration of migrations/postgres, each applied once.
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count();
    let want: Vec<(i64, bool)> = (1..=files as i64).map(|v| (v, true)).collect();
    assert_eq!(applied, want, "each migration applied once");
    // And both replicas use the one schema.
    let job = submit(
        &a,
        &jenkins(),
        &async_body("127.0.0.1:1/a:v1", "127.0.0.1:1/b:v1"),
    )
    .await;
    let id = job["id"].as_i64().unwrap();
    let (status, seen) = get(&b, &jenkins(), &format!("{JOBS}/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
}

/// Every test above, once per job store: `jobs::sqlite::NAME` and `jobs::postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(crate::common::postgres::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(crate::common::postgres::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    async_post_answers_202_at_once_and_the_job_ends_with_the_synchronous_answer,
    jobs_are_listed_filtered_paged_and_private_to_their_user,
    cancel_stops_a_running_job_and_leaves_no_tag,
    queued_jobs_wait_for_a_slot_and_can_be_cancelled_before_they_start,
    events_stream_progress_as_it_happens_then_done,
    a_job_running_when_the_service_dies_is_resumed_after_the_restart,
    the_webhook_gets_the_finished_job_without_credentials_and_is_retried,
    a_full_queue_answers_503_and_names_jobs_max_queued,
    the_webhook_stops_after_four_attempts_and_never_follows_a_redirect,
    finished_jobs_older_than_history_days_are_deleted_at_start,
    queued_jobs_stay_queued_across_a_graceful_stop_and_run_after_the_restart,
    a_replica_whose_lease_lapsed_cannot_write_the_job_any_more,
    concurrent_claims_take_each_job_exactly_once,
    ready_answers_while_the_job_database_answers,
);
