//! Mirrors (`rsyncserver.mirrors`) through the real service process against real
//! registries: schedules follow new tags, tag filters select exactly the right tags, runs
//! of one mirror never overlap, an overdue mirror runs after a restart, and the mirror
//! routes are for admins only.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::service::admin;
use crate::common::{skopeo, wait_for, Creds, Format, Image, Registry, Service};

const KIB: usize = 1024;

/// The `rsyncserver:` body: users admin (an admin) and viewer, plain-HTTP access to
/// `hosts`, and `mirrors` (YAML list items, indented by four spaces).
fn config(hosts: &[String], mirrors: &str) -> String {
    let mut auth = String::new();
    for (i, host) in hosts.iter().enumerate() {
        auth.push_str(&format!(
            "      r{i}: {{registry: \"{host}\", plain_http: true}}\n"
        ));
    }
    format!(
        "  auth: {{admin: adminpw, viewer: viewerpw}}\n  admins: [admin]\n  rsyncconfig:\n    auth:\n{auth}    task: {{proc_num: 4, retries: 0}}\n  mirrors:\n{mirrors}"
    )
}

/// The tags of `repo` at `registry`, sorted; empty when the repository does not exist.
async fn tags(registry: &Registry, repo: &str) -> Vec<String> {
    let url = format!("{}/v2/{repo}/tags/list", registry.url());
    let resp = reqwest::get(&url).await.expect("tags/list");
    if resp.status() == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    let body: Value = resp.json().await.expect("tags json");
    let mut tags: Vec<String> = body["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
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

/// Waits until job `id` has ended and returns it.
async fn finished_job(service: &Service, id: i64) -> Value {
    wait_for(
        &format!("job {id} to end"),
        Duration::from_secs(60),
        || async {
            let path = format!("/v1/image/rsync/jobs/{id}");
            let (_, job) = service.call_json(Method::GET, &path, &admin()).await;
            matches!(
                job["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
            .then_some(job)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_2s_follows_new_tags() {
    let (src, dst) = tokio::join!(Registry::start_anonymous(), Registry::start_anonymous());
    let image = Image::random(Format::Oci, &[16 * KIB]);
    src.push_image("team/app", "v1", &image).await;
    let mirrors = format!(
        "    - name: app\n      source: {}/team/app\n      target: {}/team/app\n      every: 2s\n",
        src.host(),
        dst.host()
    );
    let service = Service::start_raw(&config(&[src.host(), dst.host()], &mirrors), 0o600).await;
    wait_for("v1 at the target", Duration::from_secs(30), || async {
        (tags(&dst, "team/app").await == ["v1"]).then_some(())
    })
    .await;
    skopeo::assert_digest(&dst, "team/app:v1", &image.digest).await;
    let newer = Image::random(Format::Oci, &[16 * KIB]);
    src.push_image("team/app", "v2", &newer).await;
    wait_for("v2 at the target", Duration::from_secs(30), || async {
        (tags(&dst, "team/app").await == ["v1", "v2"]).then_some(())
    })
    .await;
    skopeo::assert_digest(&dst, "team/app:v2", &newer.digest).await;

    let jobs = mirror_jobs(&service, "app").await;
    assert!(jobs.len() >= 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(job["user"], "mirror:app");
        assert_eq!(job["trigger"], "schedule");
    }
    let (status, listing) = service
        .call_json(Method::GET, "/v1/mirrors", &admin())
        .await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    let mirror = &listing["mirrors"][0];
    assert_eq!(mirror["name"], "app");
    assert_eq!(mirror["every"], "2s");
    assert!(mirror["last_job"]["id"].as_i64().is_some(), "{mirror}");
    assert!(mirror["next_run"].as_str().is_some(), "{mirror}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_filters_select_exactly_the_right_tags_and_routes_are_for_admins() {
    let (src, dst) = tokio::join!(Registry::start_anonymous(), Registry::start_anonymous());
    let image = Image::random(Format::Oci, &[4 * KIB]);
    let all = [
        "1.9.0",
        "1.9.0-rc1",
        "1.10.0",
        "v2.0.0",
        "latest",
        "2.0.0-alpine",
        "v1.2.0",
    ];
    for tag in all {
        src.push_image("team/app", tag, &image).await;
    }
    let (s, d) = (src.host(), dst.host());
    let mirror = |name: &str, tags: &str| {
        format!("    - name: {name}\n      source: {s}/team/app\n      target: {d}/{name}/app\n      tags: {tags}\n")
    };
    let mirrors = [
        mirror("semver-keep", "{semver: \">=1.2.0\", keep_latest: 2}"),
        mirror("allow-deny", "{allow: [\"^1\\\\.\"], deny: [\"-rc\"]}"),
        mirror(
            "all-four",
            "{semver: \">=1.0.0\", allow: [\"^v\", \"^1\"], deny: [\"^v1\"], keep_latest: 5}",
        ),
        mirror("none", "{allow: [\"^nothing$\"]}"),
    ]
    .concat();
    let service = Service::start_raw(&config(&[s.clone(), d.clone()], &mirrors), 0o600).await;

    let viewer = Creds::new("viewer", "viewerpw");
    let (status, _) = service.call_json(Method::GET, "/v1/mirrors", &viewer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = service
        .call_json(Method::POST, "/v1/mirrors/allow-deny/run", &viewer)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = service
        .call_json(Method::POST, "/v1/mirrors/nope/run", &admin())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = service
        .call_json(Method::POST, "/v1/mirrors/none/run", &admin())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let cases: [(&str, &[&str]); 3] = [
        ("semver-keep", &["1.10.0", "v2.0.0"]),
        ("allow-deny", &["1.10.0", "1.9.0"]),
        ("all-four", &["1.10.0", "1.9.0", "v2.0.0"]),
    ];
    for (name, want) in cases {
        let (status, job) = service
            .call_json(Method::POST, &format!("/v1/mirrors/{name}/run"), &admin())
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {job}");
        assert_eq!(job["trigger"], "manual");
        assert_eq!(job["user"], format!("mirror:{name}"));
        let done = finished_job(&service, job["id"].as_i64().unwrap()).await;
        assert_eq!(done["state"], "succeeded", "{name}: {done}");
        assert_eq!(tags(&dst, &format!("{name}/app")).await, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_of_one_mirror_never_overlap() {
    let (src, dst) = tokio::join!(Registry::start_anonymous(), Registry::start_anonymous());
    // A fault proxy over the real source slows the layer (~3 s), so due times fall inside
    // a run; no packaged registry can be made slow.
    let proxy = FaultProxy::start(&src.host()).await;
    let image = Image::random(Format::Oci, &[24 * KIB]);
    src.push_image("team/app", "v1", &image).await;
    let layer = image.layers[0].digest.clone();
    proxy.add(
        Rule::on("GET", &format!("/blobs/{layer}")).trickle(Duration::from_millis(500), 4 * KIB),
    );
    let mirrors = format!(
        "    - name: slow\n      source: {}/team/app\n      target: {}/team/app\n      every: 1s\n",
        proxy.host(),
        dst.host()
    );
    let service = Service::start_raw(&config(&[proxy.host(), dst.host()], &mirrors), 0o600).await;
    // While the first run is running, a manual run is refused and due runs are skipped.
    let first = wait_for("the first run", Duration::from_secs(20), || async {
        mirror_jobs(&service, "slow").await.into_iter().next()
    })
    .await;
    let (status, body) = service
        .call_json(Method::POST, "/v1/mirrors/slow/run", &admin())
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    finished_job(&service, first["id"].as_i64().unwrap()).await;
    wait_for("a second run", Duration::from_secs(20), || async {
        (mirror_jobs(&service, "slow").await.len() >= 2).then_some(())
    })
    .await;
    wait_for(
        "a skipped due run in the log",
        Duration::from_secs(20),
        || async {
            service
                .stderr()
                .contains("scheduled run skipped")
                .then_some(())
                .or_else(|| {
                    service
                        .stdout()
                        .contains("scheduled run skipped")
                        .then_some(())
                })
        },
    )
    .await;
    // Each job was created only after the one before it had ended.
    let jobs = mirror_jobs(&service, "slow").await;
    for pair in jobs.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let ended = before["finished_at"].as_str();
        let created = after["created_at"].as_str().unwrap();
        let ended = ended.unwrap_or_else(|| {
            panic!(
                "job {} still running while {} was created",
                before["id"], after["id"]
            )
        });
        let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
        assert!(parse(ended) <= parse(created), "overlap: {before}\n{after}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overdue_mirror_runs_once_after_a_restart() {
    let (src, dst) = tokio::join!(Registry::start_anonymous(), Registry::start_anonymous());
    let image = Image::random(Format::Oci, &[4 * KIB]);
    src.push_image("team/app", "v1", &image).await;
    let hosts = [src.host(), dst.host()];
    let mirror = |schedule: &str| {
        format!(
            "    - name: app\n      source: {}/team/app\n      target: {}/team/app\n      {schedule}\n",
            src.host(),
            dst.host()
        )
    };
    // Yearly: never due during the test, except that it never ran.
    let yearly = mirror("cron: \"0 0 1 1 *\"");
    let mut service = Service::start_raw(&config(&hosts, &yearly), 0o600).await;
    let first = wait_for("the first run", Duration::from_secs(20), || async {
        mirror_jobs(&service, "app").await.into_iter().next()
    })
    .await;
    finished_job(&service, first["id"].as_i64().unwrap()).await;
    skopeo::assert_digest(&dst, "team/app:v1", &image.digest).await;

    // Not overdue: a restart runs nothing and the next run is next January.
    service.restart_raw(&config(&hosts, &yearly)).await;
    let (_, listing) = service
        .call_json(Method::GET, "/v1/mirrors", &admin())
        .await;
    let next = listing["mirrors"][0]["next_run"]
        .as_str()
        .expect("next_run")
        .to_owned();
    assert!(next.contains("-01-01T"), "{listing}");
    assert_eq!(mirror_jobs(&service, "app").await.len(), 1);

    // Every second: the last run is older than that, so it is overdue and runs at start.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    service
        .restart_raw(&config(&hosts, &mirror("every: 1h")))
        .await;
    let (_, listing) = service
        .call_json(Method::GET, "/v1/mirrors", &admin())
        .await;
    assert_eq!(
        mirror_jobs(&service, "app").await.len(),
        1,
        "an hour has not passed: {listing}"
    );
    service
        .restart_raw(&config(&hosts, &mirror("every: 1s")))
        .await;
    let jobs = wait_for("the overdue run", Duration::from_secs(20), || async {
        let jobs = mirror_jobs(&service, "app").await;
        (jobs.len() >= 2).then_some(jobs)
    })
    .await;
    assert_eq!(jobs[1]["trigger"], "schedule");
}
