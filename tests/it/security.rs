//! Security features against the real binary: bcrypt users, per-user scopes (403,
//! nothing contacted), failed-login damping per client address (429), the global cap
//! on running syncs plus the queue (503 once both are full), and the start-up warning about a readable config file.
//!
//! These need config keys the shared `ServiceConfig` does not write, so the service is
//! started from hand-written config text (`Service::start_raw`).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::common::contract::{assert_seed_shape, error_of, status_of};
use crate::common::fixture::random_password;
use crate::common::net::free_port;
use crate::common::service::json_of;
use crate::common::tools::HTPASSWD;
use crate::common::{Format, Image, Registry, Service};

const RSYNC: &str = "/v1/image/rsync";

/// The service binary started on 127.0.0.1 with a config written by the test.
struct Svc(Service);

impl Svc {
    /// Writes `rsyncserver_yaml` (the body of the `rsyncserver:` section, indented by two
    /// spaces, without `logfile`) with file mode `mode`, starts the service and waits
    /// until `GET /check` answers.
    async fn start(rsyncserver_yaml: &str, mode: u32) -> Svc {
        Svc(Service::start_raw(rsyncserver_yaml, mode).await)
    }

    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    /// What the service printed (stdout and stderr).
    fn output(&self) -> String {
        self.0.stdout() + &self.0.stderr()
    }

    fn analysis_log(&self) -> Vec<Value> {
        self.0.logfile_entries()
    }

    /// `GET /v1/image/rsync` as `user:password` from `client`.
    async fn login(&self, client: &Client, user: &str, password: &str) -> reqwest::Response {
        client
            .get(self.url(RSYNC))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("GET the sync route")
    }

    /// `POST /v1/image/rsync` with `rsync_config` as `user:password`.
    async fn post(&self, user: &str, password: &str, config: &Value) -> (StatusCode, Value) {
        let resp = client_from("127.0.0.1")
            .post(self.url(RSYNC))
            .basic_auth(user, Some(password))
            .json(&json!({ "rsync_config": config }))
            .send()
            .await
            .expect("POST the sync route");
        json_of(resp).await
    }
}

/// A client whose connections come from `ip` (any of 127/8 routes to lo on Linux).
fn client_from(ip: &str) -> Client {
    Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// `htpasswd -nbB -C cost user password`, the hash part.
fn htpasswd_hash(user: &str, password: &str, cost: u32) -> String {
    let out = Command::new(HTPASSWD.path())
        .args(["-nbB", "-C", &cost.to_string(), user, password])
        .output()
        .expect("run htpasswd");
    assert!(out.status.success(), "htpasswd failed: {out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let hash = line.trim().split_once(':').unwrap().1.to_owned();
    assert!(hash.starts_with("$2y$"), "htpasswd -B writes $2y$: {hash}");
    hash
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn bcrypt_users_log_in_and_unknown_users_take_as_long() {
    let b_pass = random_password("bcrypt-b");
    let y_pass = random_password("bcrypt-y");
    let plain_pass = random_password("plain");
    // Cost 12: one verification takes long enough (~0.1-0.3 s) to see in timings.
    let b_hash = bcrypt::hash_with_result(&b_pass, 12)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoB);
    let y_hash = htpasswd_hash("yuser", &y_pass, 12);
    let svc = Svc::start(
        &format!(
            "  auth: {{buser: '{b_hash}', yuser: '{y_hash}', plain: '{plain_pass}'}}\n  \
             login_damping: {{max_failures: 0}}\n"
        ),
        0o600,
    )
    .await;
    let client = client_from("127.0.0.1");
    for (user, pass) in [
        ("buser", b_pass.as_str()),
        ("yuser", y_pass.as_str()),
        ("plain", plain_pass.as_str()),
    ] {
        let (status, body) = json_of(svc.login(&client, user, pass).await).await;
        assert_eq!(status, StatusCode::OK, "{user}: {body}");
        assert_eq!(body["username"], user);
    }
    for (name, user, pass) in [
        ("wrong password", "buser", "nope"),
        ("the hash itself", "buser", b_hash.as_str()),
        ("another user's password", "yuser", b_pass.as_str()),
        ("unknown user", "ghost", b_pass.as_str()),
        ("plain user, wrong password", "plain", "nope"),
    ] {
        let resp = svc.login(&client, user, pass).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert!(resp.headers().contains_key(WWW_AUTHENTICATE), "{name}");
    }

    // Unknown users run a dummy bcrypt of the same cost: they are not answered faster.
    let timed = |user: &'static str, pass: &'static str| {
        let client = client.clone();
        let url = svc.url(RSYNC);
        async move {
            let started = Instant::now();
            let status = client
                .get(url)
                .basic_auth(user, Some(pass))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            started.elapsed()
        }
    };
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    let mut plain_wrong = Vec::new();
    for _ in 0..3 {
        wrong.push(timed("buser", "wrong").await);
        unknown.push(timed("nobody-here", "wrong").await);
        plain_wrong.push(timed("plain", "wrong").await);
    }
    let (wrong, unknown, plain_wrong) = (median(wrong), median(unknown), median(plain_wrong));
    eprintln!("median 401: wrong bcrypt password {wrong:?}, unknown user {unknown:?}, wrong plain password {plain_wrong:?}");
    assert!(
        wrong > Duration::from_millis(20),
        "cost 12 is not free: {wrong:?}"
    );
    for (name, t) in [("unknown user", unknown), ("plain user", plain_wrong)] {
        assert!(
            // An order of magnitude of room for a loaded machine: a user the service skips
            // bcrypt for would answer in microseconds, far outside it.
            t * 10 > wrong && t < wrong * 10,
            "{name}: {t:?} vs wrong bcrypt password {wrong:?}: timing tells users apart"
        );
    }

    // Successful bcrypt logins are cached: 20 more cost far less than 20 verifications.
    let started = Instant::now();
    for _ in 0..20 {
        let resp = svc.login(&client, "yuser", &y_pass).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let twenty = started.elapsed();
    eprintln!("20 cached bcrypt logins: {twenty:?}");
    // Uncached, twenty logins cost twenty bcrypt runs; half that leaves room for noise.
    assert!(
        twenty < wrong * 10,
        "20 logins took {twenty:?}, one bcrypt run takes {wrong:?}: no cache?"
    );

    let output = svc.output();
    for secret in [&b_pass, &y_pass, &plain_pass, &b_hash, &y_hash] {
        assert!(
            !output.contains(secret.as_str()),
            "service output shows a secret:\n{output}"
        );
    }
}

/// References the scoped user may not use, and the repository each names.
const REFUSED_REPOS: [&str; 5] = [
    "other/app",
    "teamx/app",
    "elsewhere/app",
    "prodx/app",
    "team/copy",
];

#[tokio::test(flavor = "multi_thread")]
async fn scopes_refuse_with_403_and_contact_no_registry() {
    let reg = Registry::start_anonymous().await;
    let host = reg.host();
    reg.push_image("team/app", "v1", &Image::random(Format::Oci, &[4096]))
        .await;
    let svc = Svc::start(
        &format!(
            "  auth: {{admin: adminpw, ci: cipw}}\n  \
             scopes:\n    ci:\n      source: ['{host}/team']\n      target: ['{host}/team', '{host}/prod']\n  \
             rsyncconfig:\n    auth:\n      reg: {{registry: '{host}', plain_http: true}}\n    \
             task: {{retries: 0}}\n"
        ),
        0o600,
    )
    .await;
    let r = |repo: &str| format!("{host}/{repo}:v1");
    let cases = [
        (
            "source outside the scope",
            json!({"source": r("other/app"), "target": r("team/copy")}),
            format!("from {host}/other/app"),
        ),
        (
            "source at a prefix boundary (team vs teamx)",
            json!({"source": r("teamx/app"), "target": r("team/copy")}),
            format!("from {host}/teamx/app"),
        ),
        (
            "one of two targets outside the scope",
            json!({"source": r("team/app"), "target": [r("team/copy"), r("elsewhere/app")]}),
            format!("to {host}/elsewhere/app"),
        ),
        (
            "target at a prefix boundary (prod vs prodx)",
            json!({"source": r("team/app"), "target": r("prodx/app")}),
            format!("to {host}/prodx/app"),
        ),
    ];
    for (name, config, needle) in &cases {
        let started = Instant::now();
        let (status, body) = svc.post("ci", "cipw", config).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {body}");
        assert!(started.elapsed() < Duration::from_secs(2), "{name}: slow");
        assert_seed_shape(&body);
        assert_eq!(status_of(&body), "unusual", "{name}");
        assert_eq!(body["rsync_data"]["failure"], "not_allowed", "{name}");
        assert_eq!(body["username"], "ci", "{name}");
        let error = error_of(&body).unwrap_or_default();
        assert!(error.contains(needle.as_str()), "{name}: {error}");
        assert!(error.contains("user ci"), "{name}: {error}");
    }
    // Nothing reached the registry for any refused repository (team/app's source was
    // allowed, but its request was refused as a whole).
    let log = reg.log();
    for repo in REFUSED_REPOS {
        assert!(
            !log.contains(&format!("/v2/{repo}/")),
            "the registry saw a request for {repo}:\n{log}"
        );
    }
    let lines = svc.analysis_log();
    assert_eq!(lines.len(), cases.len());
    assert!(lines
        .iter()
        .all(|l| l["http_status"] == 403 && l["username"] == "ci"));

    // Inside the scope the sync runs; a user without scopes is unrestricted. The
    // registry's log does record repositories (so the check above means something).
    let (status, body) = svc
        .post(
            "ci",
            "cipw",
            &json!({"source": r("team/app"), "target": r("prod/app")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = svc
        .post(
            "admin",
            "adminpw",
            &json!({"source": r("team/app"), "target": r("elsewhere/app")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let log = reg.log();
    for repo in ["prod/app", "elsewhere/app"] {
        assert!(
            log.contains(&format!("/v2/{repo}/")),
            "no {repo} in the registry log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_are_damped_per_address_with_429() {
    let right = random_password("right");
    let wrong = random_password("wrong");
    let svc = Svc::start(&format!("  auth: {{ci: '{right}'}}\n"), 0o600).await;
    let (local, attacker, mixed) = (
        client_from("127.0.0.1"),
        client_from("127.0.0.2"),
        client_from("127.0.0.3"),
    );
    // Ten failures from 127.0.0.2 are answered 401; the eleventh is 429.
    for i in 0..10 {
        let resp = svc.login(&attacker, "intruder", &wrong).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "failure {}", i + 1);
    }
    let resp = svc.login(&attacker, "intruder", &wrong).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(!resp.headers().contains_key(WWW_AUTHENTICATE));
    let (_, body) = json_of(resp).await;
    assert_seed_shape(&body);
    assert_eq!(status_of(&body), "unusual");
    assert_eq!(body["rsync_data"]["failure"], "rate_limited", "{body}");
    assert!(error_of(&body)
        .unwrap_or_default()
        .contains("too many failed logins"));
    // While damped, that address is refused even with the right password, POST included.
    let resp = svc.login(&attacker, "ci", &right).await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "right password, damped address"
    );
    let resp = attacker
        .post(svc.url(RSYNC))
        .basic_auth("ci", Some(&right))
        // Loopback names only: were damping to regress, nothing leaves the machine.
        .body(r#"{"rsync_config":{"source":"127.0.0.1:9/x:1","target":"127.0.0.1:9/y:1"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);

    // Another address is not affected: right password 200, wrong one 401.
    assert_eq!(
        svc.login(&local, "ci", &right).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        svc.login(&local, "ci", &wrong).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Successful logins neither count nor reset the tally: 9 failures, 5 successes, the
    // 10th failure is still a 401, and then the address is damped.
    for _ in 0..9 {
        assert_eq!(
            svc.login(&mixed, "ci", &wrong).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..5 {
        assert_eq!(
            svc.login(&mixed, "ci", &right).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        svc.login(&mixed, "ci", &wrong).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        svc.login(&mixed, "ci", &right).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Failures are logged with user and address, never with a password.
    let output = svc.output();
    assert!(
        output.lines().any(|l| l.contains("authentication failed")
            && l.contains("intruder")
            && l.contains("127.0.0.2")),
        "no failure line with user and address:\n{output}"
    );
    assert!(output.contains("too many failed logins"), "{output}");
    assert!(
        !output.contains(&wrong) && !output.contains(&right),
        "a password in the log:\n{output}"
    );
    assert!(svc.analysis_log().is_empty(), "no sync ran");
}

/// A TCP listener that accepts connections and never answers: a registry that hangs.
async fn tarpit() -> (SocketAddr, tokio::sync::watch::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
            tx.send_replace(held.len());
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_service_and_queue_answer_503_at_once_and_free_the_slot() {
    let (hang, mut accepted) = tarpit().await;
    let closed = free_port();
    let svc = Svc::start(
        &format!(
            "  auth: {{admin: adminpw}}\n  max_concurrent_syncs: 1\n  jobs: {{max_queued: 0}}\n  \
             rsyncconfig:\n    auth:\n      \
             hang: {{registry: '{hang}', plain_http: true}}\n      \
             closed: {{registry: '127.0.0.1:{closed}', plain_http: true}}\n    \
             task: {{retries: 0, idle_timeout_seconds: 3, connect_timeout_seconds: 3}}\n"
        ),
        0o600,
    )
    .await;
    let svc = std::sync::Arc::new(svc);
    let hanging =
        json!({"source": format!("{hang}/team/app:v1"), "target": format!("{hang}/team/copy:v1")});
    let first = tokio::spawn({
        let svc = svc.clone();
        let config = hanging.clone();
        async move {
            let started = Instant::now();
            let answer = svc.post("admin", "adminpw", &config).await;
            (answer, started.elapsed())
        }
    });
    // The first sync holds the only slot once it talks to the hanging registry.
    tokio::time::timeout(Duration::from_secs(10), accepted.wait_for(|n| *n > 0))
        .await
        .expect("the first sync never reached the hanging registry")
        .unwrap();
    let started = Instant::now();
    let (status, body) = {
        let resp = client_from("127.0.0.1")
            .post(svc.url(RSYNC))
            .basic_auth("admin", Some("adminpw"))
            .json(&json!({"rsync_config": hanging}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()[RETRY_AFTER], "10");
        json_of(resp).await
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        // Not a speed test: queued behind the hanging sync, it would never come.
        started.elapsed() < Duration::from_secs(10),
        "503 must come without waiting for the running sync"
    );
    assert_seed_shape(&body);
    assert_eq!(status_of(&body), "unusual");
    assert_eq!(body["rsync_data"]["failure"], "busy", "{body}");
    assert_eq!(body["username"], "admin");
    let error = error_of(&body).unwrap_or_default();
    assert!(
        error.contains("busy")
            && error.contains("max_concurrent_syncs")
            && error.contains("max_queued"),
        "{error}"
    );

    // The first ends on the idle timeout (502) and gives its slot back.
    let ((status, body), took) = first.await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        took < Duration::from_secs(30),
        "idle timeout not applied: {took:?}"
    );
    let (status, body) = svc
        .post(
            "admin",
            "adminpw",
            &json!({"source": format!("127.0.0.1:{closed}/team/app:v1"), "target": format!("127.0.0.1:{closed}/team/copy:v1")}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "slot not freed? {body}");
    let statuses: Vec<u64> = svc
        .analysis_log()
        .iter()
        .map(|l| l["http_status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 502, 502]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_readable_by_others_is_warned_about_without_its_secrets() {
    let pass = random_password("visible");
    let users = format!("  auth: {{admin: '{pass}'}}\n");
    let open = Svc::start(&users, 0o644).await;
    let closed = Svc::start(&users, 0o600).await;
    let open_output = open.output();
    assert!(
        open_output.contains("group/others can read it") && open_output.contains("chmod 600"),
        "no warning for a 0644 config:\n{open_output}"
    );
    assert!(open_output.contains("644"), "{open_output}");
    assert!(
        !open_output.contains(&pass),
        "the warning shows the password:\n{open_output}"
    );
    let closed_output = closed.output();
    assert!(
        !closed_output.contains("group/others can read it"),
        "warning for a 0600 config:\n{closed_output}"
    );
}
