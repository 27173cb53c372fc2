//! Push events (`POST /v1/events/distribution`, `POST /v1/events/harbor`) through the real
//! service process. The source registries are docker-registry 2.8 processes configured
//! with `notifications.endpoints` pointing at the service, so the envelopes are the ones a
//! real registry sends; skopeo pushes and pulls, and checks what landed.
//!
//! The registries must know the service's address before they start, and the mirrors
//! must know the registries' addresses before the service starts: so a port is picked
//! for the service first, the registries are started pointing at it, then the service is
//! started on that port (another port and new registries if it was taken meanwhile).

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::net::free_port;
use crate::common::service::admin;
use crate::common::{skopeo, wait_for, Cases, Creds, Format, Image, Registry, Service};

const KIB: usize = 1024;

/// The user registries post events as.
fn events_user() -> Creds {
    Creds::new("events", "eventspw")
}

/// The registry config that sends every event to the service on `port`, as
/// `events_user`, retrying quickly.
fn notifying(port: u16) -> String {
    notifying_to(&format!("127.0.0.1:{port}"), "")
}

/// The registry config that sends its events to `host` (`host:port`) as `events_user`,
/// retrying quickly; `extra` is more YAML for the endpoint (indented by six spaces).
fn notifying_to(host: &str, extra: &str) -> String {
    let basic = base64::engine::general_purpose::STANDARD.encode("events:eventspw");
    format!(
        "notifications:\n  endpoints:\n    - name: imagersync\n      url: http://{host}/v1/events/distribution\n      headers:\n        Authorization: [\"Basic {basic}\"]\n      timeout: 5s\n      threshold: 10\n      backoff: 1s\n{extra}"
    )
}

/// The `rsyncserver:` body: users admin (admin), events (may post events) and viewer;
/// plain-HTTP access to `hosts`; `mirrors` (YAML list items, indented by four spaces).
fn config(hosts: &[String], mirrors: &str) -> String {
    let mut auth = String::new();
    for (i, host) in hosts.iter().enumerate() {
        auth.push_str(&format!(
            "      r{i}: {{registry: \"{host}\", plain_http: true}}\n"
        ));
    }
    format!(
        "  auth: {{admin: adminpw, events: eventspw, viewer: viewerpw}}\n  admins: [admin]\n  events: {{users: [events], settle: 2s}}\n  rsyncconfig:\n    auth:\n{auth}    task: {{proc_num: 4, retries: 0}}\n  mirrors:\n{mirrors}"
    )
}

/// Debug lines of the service's own modules, to see ignored events.
fn debug_env() -> Vec<(&'static str, String)> {
    vec![("RUST_LOG", "info,imagersync=debug".to_owned())]
}

/// Starts `notifying_count` registries that notify the service, one anonymous registry
/// that does not, and the service with the mirrors `mirrors(notifying hosts, other host)`.
async fn start_rig(
    notifying_count: usize,
    mirrors: impl Fn(&[String], &str) -> String,
) -> (Vec<Registry>, Registry, Service) {
    let quiet = Registry::start_anonymous().await;
    let mut failures = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut sources = Vec::new();
        for _ in 0..notifying_count {
            sources.push(Registry::start_configured(None, &notifying(port)).await);
        }
        let hosts: Vec<String> = sources.iter().map(Registry::host).collect();
        let mut all = hosts.clone();
        all.push(quiet.host());
        let yaml = config(&all, &mirrors(&hosts, &quiet.host()));
        match Service::try_start_raw_on(port, &yaml, &debug_env()).await {
            Ok(service) => return (sources, quiet, service),
            Err(e) => failures.push_str(&e),
        }
    }
    panic!("the service did not start on a port chosen in advance:\n{failures}");
}

/// Every job of mirror `name`, oldest first.
async fn mirror_jobs(service: &Service, name: &str) -> Vec<Value> {
    let path = format!("/v1/image/rsync/jobs?user=mirror:{name}&limit=500");
    let (status, body) = service.call_json(Method::GET, &path, &admin()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut jobs = body["jobs"].as_array().cloned().unwrap_or_default();
    jobs.reverse();
    jobs
}

/// Waits until every job of mirror `name` has ended and there is at least `at_least`;
/// returns them, oldest first.
async fn settled_jobs(service: &Service, name: &str, at_least: usize) -> Vec<Value> {
    wait_for(
        &format!("{at_least}+ ended jobs of mirror {name}"),
        Duration::from_secs(90),
        || async {
            let jobs = mirror_jobs(service, name).await;
            let ended = jobs.iter().all(|j| {
                matches!(
                    j["state"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            });
            (ended && jobs.len() >= at_least).then_some(jobs)
        },
    )
    .await
}

/// Lines of the service's stdout containing every one of `parts`.
fn log_lines(service: &Service, parts: &[&str]) -> usize {
    service
        .stdout()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Posts `body` to an events route as `creds` (none: no Authorization).
async fn post_event(
    service: &Service,
    path: &str,
    creds: Option<&Creds>,
    content_type: Option<&str>,
    body: &[u8],
) -> (StatusCode, Value) {
    let resp = service
        .post_raw(path, creds, content_type, body.to_vec())
        .await;
    crate::common::service::json_of(resp).await
}

const V1_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// One distribution envelope with a tagged manifest push.
fn push_envelope(id: &str, host: &str, repo: &str, tag: &str, agent: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"events": [{
        "id": id,
        "timestamp": "2026-12-01T10:00:00Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "size": 500,
            "length": 500,
            "repository": repo,
            "url": format!("http://{host}/v2/{repo}/manifests/{tag}"),
            "tag": tag
        },
        "request": {"id": "r1", "addr": "127.0.0.1:4000", "host": host, "method": "PUT", "useragent": agent},
        "actor": {},
        "source": {"addr": "x:5000", "instanceID": "i"}
    }]}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_lands_a_pull_does_nothing_and_opposite_mirrors_do_not_loop() {
    // Two notifying registries with a mirror each way: a → b and b → a, both on_push.
    let (regs, staging, service) = start_rig(2, |hosts, _| {
        format!(
            "    - {{name: a-to-b, source: {a}/team/app, target: {b}/team/app, on_push: true}}\n    - {{name: b-to-a, source: {b}/team/app, target: {a}/team/app, on_push: true}}\n",
            a = hosts[0],
            b = hosts[1]
        )
    })
    .await;
    let (a, b) = (&regs[0], &regs[1]);
    let image = Image::random(Format::Oci, &[16 * KIB]);
    staging.push_image("stage/app", "v1", &image).await;

    // A push by skopeo into a: its event queues one job of a-to-b, which lands in b.
    skopeo::copy(&staging, "stage/app:v1", a, "team/app:v1").await;
    let jobs = settled_jobs(&service, "a-to-b", 1).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "succeeded", "{}", jobs[0]);
    assert_eq!(jobs[0]["trigger"], "push");
    assert_eq!(
        jobs[0]["request"]["source"],
        format!("{}/team/app:v1", a.host())
    );
    skopeo::assert_digest(b, "team/app:v1", &image.digest).await;

    // That copy was a push into b, by imagersync: b announces it, and it is ignored.
    wait_for(
        "b's event of imagersync's own push to be ignored",
        Duration::from_secs(30),
        || async {
            (log_lines(&service, &["pushed by imagersync itself", "team/app"]) >= 1).then_some(())
        },
    )
    .await;
    assert!(mirror_jobs(&service, "b-to-a").await.is_empty());

    // A pull from a (skopeo reads the manifest) is announced and ignored.
    let pulls_before = log_lines(&service, &["event ignored", "pull"]);
    skopeo::assert_digest(a, "team/app:v1", &image.digest).await;
    wait_for("the pull event", Duration::from_secs(30), || async {
        (log_lines(&service, &["event ignored", "pull"]) > pulls_before).then_some(())
    })
    .await;
    assert_eq!(mirror_jobs(&service, "a-to-b").await.len(), 1);
    assert!(mirror_jobs(&service, "b-to-a").await.is_empty());

    // An envelope saying imagersync pushed does nothing either.
    let body = push_envelope("own-1", &a.host(), "team/app", "v1", "imagersync/0.1.0");
    let (status, answer) = post_event(
        &service,
        "/v1/events/distribution",
        Some(&events_user()),
        Some(V1_TYPE),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["queued"], 0, "{answer}");
    assert_eq!(answer["events"][0]["result"], "ignored", "{answer}");
    assert_eq!(mirror_jobs(&service, "a-to-b").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_gives_at_most_two_jobs_and_a_resent_envelope_adds_none() {
    let (regs, dst, service) = start_rig(1, |hosts, quiet| {
        format!(
            "    - {{name: app, source: {}/team/app, target: {quiet}/team/app, on_push: true}}\n",
            hosts[0]
        )
    })
    .await;
    let src = &regs[0];
    // 20 pushes of one tag, each a different image, as fast as the registry takes them.
    let mut last = String::new();
    for _ in 0..20 {
        let image = Image::random(Format::Oci, &[4 * KIB]);
        src.push_image("team/app", "burst", &image).await;
        last = image.digest.clone();
    }
    // Every one of the 20 announcements acted on (queued or joined) ...
    wait_for(
        "20 push events acted on",
        Duration::from_secs(60),
        || async { (log_lines(&service, &["push event", "tag=burst"]) >= 20).then_some(()) },
    )
    .await;
    // ... made at most two jobs, and the last push is what the target holds.
    let jobs = settled_jobs(&service, "app", 1).await;
    eprintln!("20 pushes of one tag gave {} job(s)", jobs.len());
    assert!(
        jobs.len() <= 2,
        "{} jobs for one burst: {jobs:?}",
        jobs.len()
    );
    for job in &jobs {
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["trigger"], "push");
    }
    skopeo::assert_digest(&dst, "team/app:burst", &last).await;

    // An envelope accepted once and sent again (its 2xx got lost) adds nothing, also
    // after its job ended.
    let image = Image::random(Format::Oci, &[4 * KIB]);
    src.push_image("team/app", "again", &image).await;
    let before = settled_jobs(&service, "app", jobs.len() + 1).await.len();
    let body = push_envelope("resent-1", &src.host(), "team/app", "again", "skopeo/1.9.3");
    let (status, first) = post_event(
        &service,
        "/v1/events/distribution",
        Some(&events_user()),
        Some("application/json"),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["queued"], 1, "{first}");
    let after_first = settled_jobs(&service, "app", before + 1).await;
    assert_eq!(after_first.len(), before + 1);
    let (status, second) = post_event(
        &service,
        "/v1/events/distribution",
        Some(&events_user()),
        Some("application/vnd.docker.distribution.events.v2+json"),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["events"][0]["result"], "duplicate", "{second}");
    assert_eq!(second["queued"], 0);
    assert_eq!(mirror_jobs(&service, "app").await.len(), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_resending_an_accepted_event_adds_no_job() {
    // The registry's endpoint is a fault proxy in front of the service: the first
    // delivery reaches the service (which stores the job and answers 200), and the proxy
    // then closes the connection unanswered, as a lost answer would. The registry sends
    // the same envelope again. Blob events are not sent (ignoredmediatypes), so the first
    // delivery is the tagged manifest push.
    let dst = Registry::start_anonymous().await;
    let mut failures = String::new();
    let mut started = None;
    for _ in 0..5 {
        let port = free_port();
        let proxy = FaultProxy::start(&format!("127.0.0.1:{port}")).await;
        let extra = "      ignoredmediatypes: [application/octet-stream]\n";
        let src = Registry::start_configured(None, &notifying_to(&proxy.host(), extra)).await;
        let mirrors = format!(
            "    - {{name: app, source: {}/team/app, target: {}/team/app, on_push: true}}\n",
            src.host(),
            dst.host()
        );
        let yaml = config(&[src.host(), dst.host()], &mirrors);
        match Service::try_start_raw_on(port, &yaml, &debug_env()).await {
            Ok(service) => {
                started = Some((proxy, src, service));
                break;
            }
            Err(e) => failures.push_str(&e),
        }
    }
    let Some((proxy, src, service)) = started else {
        panic!("the service did not start on a port chosen in advance:\n{failures}");
    };
    let lost = proxy.add(
        Rule::on("POST", "^/v1/events/distribution$")
            .first(1)
            .drop_response(),
    );
    let image = Image::random(Format::Oci, &[4 * KIB]);
    src.push_image("team/app", "v1", &image).await;
    wait_for("the resent envelope", Duration::from_secs(60), || async {
        (log_lines(&service, &["already acted on (a resend)"]) >= 1).then_some(())
    })
    .await;
    assert_eq!(lost.fired(), 1, "the first answer was lost");
    let deliveries = proxy.requests_to("POST", "^/v1/events/distribution$");
    assert!(deliveries.len() >= 2, "{deliveries:?}");
    let jobs = settled_jobs(&service, "app", 1).await;
    assert_eq!(
        jobs.len(),
        1,
        "one job for one push, resent or not: {jobs:?}"
    );
    assert_eq!(jobs[0]["state"], "succeeded", "{}", jobs[0]);
    skopeo::assert_digest(&dst, "team/app:v1", &image.digest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn harbor_webhook_queues_the_right_job_and_events_need_a_listed_user() {
    let (src, dst) = tokio::join!(Registry::start_anonymous(), Registry::start_anonymous());
    let image = Image::random(Format::Oci, &[8 * KIB]);
    src.push_image("library/app", "v2", &image).await;
    let mirrors = format!(
        "    - {{name: harbor, source: {}/library/app, target: {}/library/app, on_push: true, tags: {{allow: [\"^v\"]}}}}\n    - {{name: scheduled-only, source: {}/library/app, target: {}/other/app}}\n",
        src.host(),
        dst.host(),
        src.host(),
        dst.host()
    );
    let service = Service::start_raw(&config(&[src.host(), dst.host()], &mirrors), 0o600).await;
    let fixture = include_str!("fixtures/harbor_push_artifact.json")
        .replace("@HOST@", &src.host())
        .replace("@DIGEST@", &image.digest);

    // Only users of rsyncserver.events.users: none 401, a wrong password 401, a
    // service user not listed (even an admin) 403.
    for (creds, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (
            Some(Creds::new("events", "wrong")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(Creds::new("viewer", "viewerpw")),
            StatusCode::FORBIDDEN,
        ),
        (Some(admin()), StatusCode::FORBIDDEN),
    ] {
        for path in ["/v1/events/harbor", "/v1/events/distribution"] {
            let (status, body) = post_event(
                &service,
                path,
                creds.as_ref(),
                Some("application/json"),
                fixture.as_bytes(),
            )
            .await;
            assert_eq!(status, want, "{path} as {creds:?}: {body}");
        }
    }
    assert!(mirror_jobs(&service, "harbor").await.is_empty());

    let (status, answer) = post_event(
        &service,
        "/v1/events/harbor",
        Some(&events_user()),
        Some("application/json"),
        fixture.as_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["queued"], 1, "{answer}");
    assert_eq!(answer["events"][0]["mirror"], "harbor");
    assert_eq!(answer["events"][0]["tag"], "v2");
    let jobs = settled_jobs(&service, "harbor", 1).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job["user"], "mirror:harbor");
    assert_eq!(job["trigger"], "push");
    assert_eq!(
        job["request"]["source"],
        format!("{}/library/app:v2", src.host())
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    skopeo::assert_digest(&dst, "library/app:v2", &image.digest).await;
    // The mirror without on_push was not run.
    assert!(mirror_jobs(&service, "scheduled-only").await.is_empty());

    // A pull, and a push of a tag the filters drop, do nothing.
    let pull = fixture.replace("PUSH_ARTIFACT", "PULL_ARTIFACT");
    let dropped = fixture.replace("v2", "latest");
    for body in [pull, dropped] {
        let (status, answer) = post_event(
            &service,
            "/v1/events/harbor",
            Some(&events_user()),
            Some("application/json"),
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["events"][0]["result"], "ignored", "{answer}");
    }
    assert_eq!(mirror_jobs(&service, "harbor").await.len(), 1);
}

/// A row of the bad-input table: name, route, Content-Type, body, status, what the
/// error says.
type BadInput = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread")]
async fn malformed_envelopes_are_a_clear_400_and_the_service_stays_up() {
    let service = Service::start_raw(&config(&[], "    []\n"), 0o600).await;
    let dist = "/v1/events/distribution";
    let harbor = "/v1/events/harbor";
    let json = Some("application/json");
    let table: Vec<BadInput> = vec![
        ("not JSON", dist, json, b"{events:".to_vec(), 400, "not a distribution notification envelope"),
        ("empty body", dist, json, Vec::new(), 400, "not a distribution notification envelope"),
        ("no events key", dist, json, br#"{"event":[]}"#.to_vec(), 400, "events"),
        ("events not a list", dist, json, br#"{"events":{}}"#.to_vec(), 400, "events"),
        ("event not an object", dist, json, br#"{"events":[1]}"#.to_vec(), 400, "event 0"),
        ("event without id", dist, json, br#"{"events":[{"action":"push"}]}"#.to_vec(), 400, "no `id`"),
        ("event without action", dist, json, br#"{"events":[{"id":"x"}]}"#.to_vec(), 400, "no `action`"),
        ("action not a string", dist, json, br#"{"events":[{"id":"x","action":5}]}"#.to_vec(), 400, "event 0"),
        (
            "tagged push without repository",
            dist,
            json,
            br#"{"events":[{"id":"x","action":"push","target":{"tag":"v1"},"request":{"host":"r:5000"}}]}"#.to_vec(),
            400,
            "target.repository",
        ),
        (
            "tagged push naming no registry",
            dist,
            json,
            br#"{"events":[{"id":"x","action":"push","target":{"repository":"a","tag":"v1","url":"not a url"}}]}"#.to_vec(),
            400,
            "request.host",
        ),
        ("not JSON content type", dist, Some("text/plain"), br#"{"events":[]}"#.to_vec(), 415, "not JSON"),
        ("harbor: not JSON", harbor, json, b"<xml/>".to_vec(), 400, "Harbor webhook payload"),
        ("harbor: no event_data", harbor, json, br#"{"type":"PUSH_ARTIFACT"}"#.to_vec(), 400, "event_data"),
        (
            "harbor: resources not a list",
            harbor,
            json,
            br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":"x"}}"#.to_vec(),
            400,
            "Harbor webhook payload",
        ),
        (
            "harbor: resource_url without a path",
            harbor,
            json,
            br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v1","resource_url":"justahost"}]}}"#.to_vec(),
            400,
            "resource_url",
        ),
        ("too large", dist, json, vec![b' '; (1 << 20) + 1], 413, "larger than"),
    ];
    let mut cases = Cases::new();
    for (name, path, content_type, body, want, says) in &table {
        let (status, answer) =
            post_event(&service, path, Some(&events_user()), *content_type, body).await;
        let error = answer["error"].as_str().unwrap_or_default();
        cases.check(name, || {
            assert!(
                status.as_u16() == *want && error.contains(says),
                "HTTP {status}, want {want} saying {says:?}: {answer}"
            )
        });
    }
    cases.finish();
    // An empty envelope is fine, and the service still answers.
    let (status, answer) = post_event(
        &service,
        dist,
        Some(&events_user()),
        Some(V1_TYPE),
        br#"{"events":[]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(service.health().await.unwrap(), StatusCode::OK);
}
