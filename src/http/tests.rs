//! Router-level tests, in-process through `tower::ServiceExt::oneshot`. Only paths that
//! need no registry: auth, routing, body checks, and references the engine refuses
//! before contacting anything.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use serde_json::Value;
use tower::ServiceExt;

use super::{router, AppState};
use crate::analysis_log::AnalysisLog;
use crate::config::Config;
use crate::engine::Engine;

struct Fixture {
    app: Router,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    fixture_with(
        r#"
config:
  tools: {docs: "https://example.com/<docs>"}
rsyncserver:
  auth: {admin: admin, jenkins: "pa:ss"}
"#,
    )
    .0
}

/// A fixture for `yaml`, and its state (to look at or hold its sync slots).
fn fixture_with(yaml: &str) -> (Fixture, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_yaml(yaml, Path::new("test.yaml")).unwrap();
    let log = dir.path().join("logs/analysis.log");
    let state = AppState::new(
        &config,
        Engine::new(&config.rsyncserver.rsyncconfig),
        AnalysisLog::open(&log).unwrap(),
        std::sync::Arc::new(crate::jobs::SqliteStore::in_memory().unwrap()),
    );
    let fixture = Fixture {
        app: router(state.clone()),
        log,
        _dir: dir,
    };
    (fixture, state)
}

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

fn request(method: Method, uri: &str, auth: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        builder = builder.header(header::AUTHORIZATION, basic(auth));
    }
    builder.body(body.into()).unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Response<()>, Bytes) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap();
    (parts.status, Response::from_parts(parts, ()), bytes)
}

fn json(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes));
    })
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every field of the seed's sync response is there, with the seed's types.
fn assert_seed_shape(v: &Value) {
    let data = &v["rsync_data"];
    assert!(data["rsync_status"].is_string(), "{v}");
    assert!(
        data["rsync_error"].is_null() || data["rsync_error"].is_string(),
        "{v}"
    );
    assert!(data["rsync_info"].is_string(), "{v}");
    for key in ["start_time", "end_time"] {
        chrono::DateTime::parse_from_rfc3339(data[key].as_str().unwrap()).unwrap();
    }
    assert!(data["duration_time_seconds"].is_f64(), "{v}");
    assert!(v["rsync_config"]["source"].is_string(), "{v}");
    assert!(
        v["rsync_config"]["target"].is_string() || v["rsync_config"]["target"].is_array(),
        "{v}"
    );
    assert!(v["username"].is_string(), "{v}");
}

#[tokio::test]
async fn check_and_home() {
    let f = fixture();
    let (status, _, body) = send(&f.app, request(Method::GET, "/check", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body), serde_json::json!({"status": "healthy"}));

    let (status, parts, body) = send(&f.app, request(Method::GET, "/", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(parts.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(
        parts.headers()[header::CONTENT_SECURITY_POLICY],
        // As doc/api.md documents it, not the constant the code sends.
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
         object-src 'none'"
    );
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(page.contains("imagersync") && page.contains(env!("CARGO_PKG_VERSION")));
    assert!(page.contains("https://example.com/&lt;docs&gt;"));

    let (status, _, _) = send(&f.app, request(Method::HEAD, "/check", None, "")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn get_on_the_sync_route_hints_at_post() {
    let f = fixture();
    for path in ["/v1/image/rsync", "/v1/image/rsync/"] {
        let (status, _, body) =
            send(&f.app, request(Method::GET, path, Some("admin:admin"), "")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            json(&body),
            serde_json::json!({"username": "admin", "error": "use POST to sync an image"})
        );
    }
}

#[tokio::test]
async fn auth_failures_are_401_in_seed_shape() {
    let f = fixture();
    let cases = [
        (None, "required"),
        (Some("admin:wrong"), "failed"),
        (Some("nobody:admin"), "failed"),
        (Some("jenkins:pa"), "failed"),
    ];
    for (auth, word) in cases {
        for method in [Method::GET, Method::POST] {
            let (status, parts, body) = send(
                &f.app,
                request(method.clone(), "/v1/image/rsync", auth, "{}"),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?} {method}");
            assert_eq!(
                parts.headers()[header::WWW_AUTHENTICATE],
                r#"Basic realm="imagersync", charset="UTF-8""#
            );
            let v = json(&body);
            assert_seed_shape(&v);
            assert_eq!(v["rsync_data"]["rsync_status"], "unusual");
            assert!(v["rsync_data"]["rsync_error"]
                .as_str()
                .unwrap()
                .contains(word));
        }
    }
    // Bearer and lower-case basic.
    let bearer = Request::post("/v1/image/rsync")
        .header(header::AUTHORIZATION, "Bearer abc")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f.app, bearer).await.0, StatusCode::UNAUTHORIZED);
    let lower = Request::get("/v1/image/rsync")
        .header(header::AUTHORIZATION, "basic YWRtaW46YWRtaW4=")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&f.app, lower).await.0, StatusCode::OK);
    // 401s are not syncs: nothing in the analysis log.
    assert!(log_lines(&f.log).is_empty());
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_identical_bytes() {
    let f = fixture();
    let (_, _, a) = send(
        &f.app,
        request(Method::POST, "/v1/image/rsync", Some("ghost:admin"), ""),
    )
    .await;
    let (_, _, b) = send(
        &f.app,
        request(Method::POST, "/v1/image/rsync", Some("admin:nimda"), ""),
    )
    .await;
    assert_eq!(a, b);
    let text = String::from_utf8_lossy(&a);
    assert!(!text.contains("ghost") && !text.contains("admin"), "{text}");
}

#[tokio::test]
async fn auth_is_checked_before_the_body_is_read() {
    let f = fixture();
    let polled = Arc::new(AtomicBool::new(false));
    let flag = polled.clone();
    // An endless 1 MiB-per-chunk body that notes whether anyone read it.
    let stream = futures_util::stream::repeat_with(move || {
        flag.store(true, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1 << 20]))
    });
    let req = request(
        Method::POST,
        "/v1/image/rsync",
        Some("admin:bad"),
        Body::from_stream(stream),
    );
    let (status, _, _) = send(&f.app, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        !polled.load(Ordering::SeqCst),
        "the body was read before auth"
    );
}

#[tokio::test]
async fn unread_bodies_close_the_connection_and_say_so() {
    let f = fixture();
    let with_length = |auth: &str, body: String| {
        let length = body.len();
        let mut req = request(Method::POST, "/v1/image/rsync", Some(auth), body);
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, length.into());
        req
    };
    let big = "x".repeat(100 * 1024);
    let (status, parts, _) = send(&f.app, with_length("admin:no", big.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(parts.headers()[header::CONNECTION], "close");
    let (status, parts, _) = send(&f.app, with_length("admin:admin", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(parts.headers()[header::CONNECTION], "close");
    // Nothing left unread: keep-alive stays possible.
    let get = request(Method::GET, "/v1/image/rsync", Some("admin:no"), "");
    let (status, parts, _) = send(&f.app, get).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(parts.headers().get(header::CONNECTION).is_none());
    let (status, parts, _) = send(&f.app, with_length("admin:admin", "{}".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(parts.headers().get(header::CONNECTION).is_none());
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let f = fixture();
    for (method, path) in [
        (Method::PUT, "/v1/image/rsync"),
        (Method::DELETE, "/v1/image/rsync/"),
        (Method::PATCH, "/v1/image/rsync"),
        (Method::POST, "/check"),
        (Method::DELETE, "/"),
    ] {
        let (status, parts, body) = send(&f.app, request(method.clone(), path, None, "")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let allow = parts.headers()[header::ALLOW].to_str().unwrap().to_owned();
        assert!(allow.contains("GET"), "{method} {path}: {allow}");
        if path.starts_with("/v1") {
            assert!(allow.contains("POST"), "{allow}");
        }
        assert!(json(&body)["error"].is_string());
    }
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let f = fixture();
    for path in ["/nope", "/v1/image", "/v1/image/rsync/x", "/check/"] {
        let (status, _, body) =
            send(&f.app, request(Method::GET, path, Some("admin:admin"), "")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(json(&body)["error"].is_string());
    }
}

#[tokio::test]
async fn bad_bodies_are_400_and_logged() {
    let f = fixture();
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "application/x-www-form-urlencoded",
            b"{\"rsync_config\":",
            "not valid JSON",
        ),
        ("application/json", b"{}", "rsync_config is missing"),
        (
            "text/plain",
            br#"{"rsync_config":{"source":"a:1"}}"#,
            "rsync_config.target",
        ),
        (
            "",
            br#"{"rsync_config":{"source":1,"target":"b"}}"#,
            "rsync_config.source",
        ),
        ("application/json", b"\xff\xfe", "UTF-8"),
    ];
    for (content_type, body, needle) in cases {
        let mut req = request(
            Method::POST,
            "/v1/image/rsync",
            Some("jenkins:pa:ss"),
            Bytes::from_static(body),
        );
        if !content_type.is_empty() {
            req.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        }
        let (status, _, bytes) = send(&f.app, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{needle}");
        let v = json(&bytes);
        assert_seed_shape(&v);
        assert_eq!(v["rsync_data"]["rsync_status"], "unusual");
        assert_eq!(v["username"], "jenkins");
        let error = v["rsync_data"]["rsync_error"].as_str().unwrap();
        assert!(error.contains(needle), "{needle}: {error}");
    }
    let lines = log_lines(&f.log);
    assert_eq!(lines.len(), cases.len());
    for line in &lines {
        assert_eq!(line["http_status"], 400);
        assert_eq!(line["username"], "jenkins");
        assert!(line["time"].is_string() && line["rsync_data"].is_object());
    }
    let text = std::fs::read_to_string(&f.log).unwrap();
    assert!(!text.contains("pa:ss"), "no password in the analysis log");
}

#[tokio::test]
async fn body_over_the_cap_is_413() {
    let f = fixture();
    let big = format!(
        r#"{{"rsync_config":{{"source":"a:1","target":"b:1"}},"pad":"{}"}}"#,
        "x".repeat(20 * 1024)
    );
    let (status, _, bytes) = send(
        &f.app,
        request(Method::POST, "/v1/image/rsync", Some("admin:admin"), big),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let v = json(&bytes);
    assert_seed_shape(&v);
    assert_eq!(v["rsync_data"]["rsync_status"], "unusual");
    assert_eq!(log_lines(&f.log)[0]["http_status"], 413);
}

#[tokio::test]
async fn unusable_reference_reaches_the_engine_and_is_400() {
    let f = fixture();
    let body = r#"{"rsync_config":{"source":"Bad Reference!!","target":"reg.example.com/a:1"}}"#;
    let (status, _, bytes) = send(
        &f.app,
        request(Method::POST, "/v1/image/rsync/", Some("admin:admin"), body),
    )
    .await;
    let v = json(&bytes);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_seed_shape(&v);
    assert_eq!(v["rsync_data"]["rsync_status"], "unusual");
    assert_eq!(v["rsync_data"]["failure"], "bad_input");
    assert_eq!(v["rsync_config"]["source"], "Bad Reference!!");
    assert!(v["rsync_data"]["images"].is_array());
    let lines = log_lines(&f.log);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["rsync_config"]["source"], "Bad Reference!!");
}

/// What the server adds to every request it accepts: the peer address.
fn from_ip(mut request: Request<Body>, ip: &str) -> Request<Body> {
    let addr: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    request
}

#[tokio::test]
async fn failed_logins_from_one_address_are_damped_with_429() {
    let (f, _) = fixture_with(
        "rsyncserver: {auth: {admin: admin}, login_damping: {max_failures: 3, window_seconds: 60}}",
    );
    let get = |auth: Option<&str>, ip: &str| {
        from_ip(request(Method::GET, "/v1/image/rsync", auth, ""), ip)
    };
    // No credentials at all is not a guess: never counted.
    for _ in 0..5 {
        assert_eq!(
            send(&f.app, get(None, "192.0.2.1")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // Successes neither count nor reset the tally.
    assert_eq!(
        send(&f.app, get(Some("admin:x"), "192.0.2.1")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&f.app, get(Some("admin:admin"), "192.0.2.1")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&f.app, get(Some("nobody:x"), "192.0.2.1")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&f.app, get(Some("admin:admin"), "192.0.2.1")).await.0,
        StatusCode::OK
    );
    let malformed = from_ip(
        Request::get("/v1/image/rsync")
            .header(header::AUTHORIZATION, "Basic !!!")
            .body(Body::empty())
            .unwrap(),
        "192.0.2.1",
    );
    assert_eq!(send(&f.app, malformed).await.0, StatusCode::UNAUTHORIZED);
    // Three failures: the address is damped, the right password included.
    for auth in [Some("admin:y"), Some("admin:admin"), None] {
        let (status, parts, body) = send(&f.app, get(auth, "192.0.2.1")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{auth:?}");
        let retry: u64 = parts.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert!(parts.headers().get(header::WWW_AUTHENTICATE).is_none());
        let v = json(&body);
        assert_seed_shape(&v);
        assert_eq!(v["rsync_data"]["rsync_status"], "unusual");
        assert_eq!(v["username"], "");
        let error = v["rsync_data"]["rsync_error"].as_str().unwrap();
        assert!(error.contains("too many failed logins"), "{error}");
    }
    // POST too, before the body is looked at.
    let post = from_ip(
        request(Method::POST, "/v1/image/rsync", Some("admin:admin"), "{}"),
        "192.0.2.1",
    );
    assert_eq!(send(&f.app, post).await.0, StatusCode::TOO_MANY_REQUESTS);
    // Another address is not affected, nor is one without a peer address.
    assert_eq!(
        send(&f.app, get(Some("admin:admin"), "192.0.2.2")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&f.app, get(Some("admin:z"), "192.0.2.2")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let no_peer = request(Method::GET, "/v1/image/rsync", Some("admin:admin"), "");
    assert_eq!(send(&f.app, no_peer).await.0, StatusCode::OK);
    assert!(log_lines(&f.log).is_empty(), "no sync was logged");
}

const SCOPED: &str = r#"
rsyncserver:
  auth: {admin: admin, ci: cipw}
  scopes:
    ci:
      source: ["127.0.0.1:1/team"]
      target: ["127.0.0.1:2/team", "127.0.0.1:3"]
  rsyncconfig:
    auth:
      a: {registry: "127.0.0.1:1", insecure: true}
      b: {registry: "127.0.0.1:2", insecure: true}
      c: {registry: "127.0.0.1:3", insecure: true}
    task: {retries: 0}
"#;

#[tokio::test]
async fn scopes_refuse_with_403_before_the_engine() {
    let (f, _) = fixture_with(SCOPED);
    let cases: &[(&str, serde_json::Value, &str)] = &[
        (
            "source outside",
            serde_json::json!({"source": "127.0.0.1:1/other/app:v1", "target": "127.0.0.1:2/team/app:v1"}),
            "from 127.0.0.1:1/other/app",
        ),
        (
            "prefix boundary",
            serde_json::json!({"source": "127.0.0.1:1/teamx/app:v1", "target": "127.0.0.1:2/team/app:v1"}),
            "from 127.0.0.1:1/teamx/app",
        ),
        (
            "one of two targets outside",
            serde_json::json!({"source": "127.0.0.1:1/team/app:v1",
                               "target": ["127.0.0.1:3/any/app:v1", "127.0.0.1:2/elsewhere/app:v1"]}),
            "to 127.0.0.1:2/elsewhere/app",
        ),
    ];
    for (name, config, needle) in cases {
        let body = serde_json::json!({ "rsync_config": config }).to_string();
        let started = std::time::Instant::now();
        let (status, _, bytes) = send(
            &f.app,
            request(Method::POST, "/v1/image/rsync", Some("ci:cipw"), body),
        )
        .await;
        let v = json(&bytes);
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {v}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{name}: slow"
        );
        assert_seed_shape(&v);
        assert_eq!(v["rsync_data"]["rsync_status"], "unusual", "{name}");
        assert_eq!(v["rsync_data"]["failure"], "not_allowed", "{name}");
        assert_eq!(
            v["rsync_data"]["rsync_info"], "",
            "{name}: the engine did not run"
        );
        assert_eq!(v["username"], "ci");
        assert_eq!(
            v["rsync_config"]["source"], config["source"],
            "{name}: echoed"
        );
        let error = v["rsync_data"]["rsync_error"].as_str().unwrap();
        assert!(
            error.contains(needle) && error.contains("user ci"),
            "{name}: {error}"
        );
    }
    let lines = log_lines(&f.log);
    assert_eq!(lines.len(), cases.len());
    assert!(lines.iter().all(|l| l["http_status"] == 403));

    // Within scope, and an unrestricted user outside it: the engine runs (and fails
    // against the closed ports: 502, not 403).
    for (auth, source) in [
        ("ci:cipw", "127.0.0.1:1/team/app:v1"),
        ("admin:admin", "127.0.0.1:1/other/app:v1"),
    ] {
        let body = format!(
            r#"{{"rsync_config":{{"source":"{source}","target":"127.0.0.1:3/x/app:v1"}}}}"#
        );
        let (status, _, bytes) = send(
            &f.app,
            request(Method::POST, "/v1/image/rsync", Some(auth), body),
        )
        .await;
        let v = json(&bytes);
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{auth} {source}: {v}");
        assert_eq!(v["rsync_data"]["rsync_status"], "failed");
    }
}

#[tokio::test]
async fn a_full_service_with_a_full_queue_answers_503_at_once() {
    let (f, state) = fixture_with(
        "rsyncserver: {auth: {admin: admin}, max_concurrent_syncs: 2, jobs: {max_queued: 0}}",
    );
    assert_eq!(state.max_concurrent_syncs(), 2);
    let held = state
        .sync_slots()
        .clone()
        .try_acquire_many_owned(2)
        .unwrap();
    let body = r#"{"rsync_config":{"source":"Bad Reference!!","target":"reg.example.com/a:1"}}"#;
    let (status, parts, bytes) = send(
        &f.app,
        request(Method::POST, "/v1/image/rsync", Some("admin:admin"), body),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        parts.headers()[header::RETRY_AFTER],
        super::handlers::BUSY_RETRY_AFTER_SECONDS
            .to_string()
            .as_str()
    );
    let v = json(&bytes);
    assert_seed_shape(&v);
    assert_eq!(v["rsync_data"]["rsync_status"], "unusual");
    assert_eq!(v["username"], "admin");
    assert_eq!(v["rsync_config"]["source"], "Bad Reference!!");
    let error = v["rsync_data"]["rsync_error"].as_str().unwrap();
    assert!(
        error.contains("busy") && error.contains("max_queued"),
        "{error}"
    );
    assert_eq!(log_lines(&f.log)[0]["http_status"], 503);
    // A slot frees: the next request runs (and is refused by the engine, 400).
    drop(held);
    let (status, _, _) = send(
        &f.app,
        request(Method::POST, "/v1/image/rsync", Some("admin:admin"), body),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        state.sync_slots().available_permits(),
        2,
        "the slot is given back"
    );
}

#[test]
fn debug_of_config_and_state_shows_no_secret() {
    let hash = bcrypt::hash("hashed-user-pw", 4).unwrap();
    std::env::set_var("IMAGERSYNC_DEBUG_TEST_PW", "env-registry-pw");
    let yaml = format!(
        r#"
rsyncserver:
  auth: {{admin: "plain-admin-pw", jenkins: "{hash}"}}
  scopes: {{jenkins: {{target: [reg.example.com/team]}}}}
  rsyncconfig:
    auth:
      a: {{registry: reg.example.com, username: robot, password: "registry-pw-1"}}
      b: {{registry: other.example.com, username: robot2, password: "${{IMAGERSYNC_DEBUG_TEST_PW}}"}}
"#
    );
    let (_f, state) = fixture_with(&yaml);
    let config = Config::from_yaml(&yaml, Path::new("t.yaml")).unwrap();
    for (what, text) in [
        ("config", format!("{config:?}")),
        ("config (pretty)", format!("{config:#?}")),
        ("state", format!("{state:?}")),
        ("state (pretty)", format!("{state:#?}")),
    ] {
        for secret in [
            "plain-admin-pw",
            hash.as_str(),
            "hashed-user-pw",
            "registry-pw-1",
            "env-registry-pw",
        ] {
            assert!(
                !text.contains(secret),
                "{what} Debug shows {secret:?}:\n{text}"
            );
        }
    }
    // Still useful: it says what is there.
    assert!(format!("{state:?}").contains("2 users"));
    assert!(format!("{config:?}").contains("robot"));
}

/// The value of the sample written exactly as `series` in a scrape, if any.
fn sample(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

#[tokio::test]
async fn metrics_need_no_auth_and_label_requests_by_route_template() {
    let f = fixture();
    let scrape = request(Method::GET, "/metrics", None, "");
    let (status, head, _) = send(&f.app, scrape).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let job = "/v1/image/rsync/jobs/987654";
    send(&f.app, request(Method::GET, job, Some("admin:admin"), "")).await;
    send(
        &f.app,
        request(Method::GET, "/no-such-secretpath", None, ""),
    )
    .await;
    send(
        &f.app,
        request(Method::GET, "/v1/image/rsync", Some("x:y"), ""),
    )
    .await;
    let bad = r#"{"rsync_config":{"source":"a:1"}}"#;
    send(
        &f.app,
        request(Method::POST, "/v1/image/rsync", Some("admin:admin"), bad),
    )
    .await;
    let (status, _, _) = send(&f.app, request(Method::POST, "/metrics", None, "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let (_, _, body) = send(&f.app, request(Method::GET, "/metrics", None, "")).await;
    let text = std::str::from_utf8(&body).unwrap();
    let requests = |labels: &str| {
        sample(
            text,
            &format!("imagersync_http_request_duration_seconds_count{{{labels}}}"),
        )
    };
    assert_eq!(
        requests(r#"route="/v1/image/rsync/jobs/{id}",method="GET",status_class="4xx""#).as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        requests(r#"route="unmatched",method="GET",status_class="4xx""#).as_deref(),
        Some("1")
    );
    assert_eq!(
        requests(r#"route="/metrics",method="GET",status_class="2xx""#).as_deref(),
        Some("1"),
        "the first scrape counts; this one is still being answered"
    );
    assert_eq!(
        requests(r#"route="/metrics",method="POST",status_class="4xx""#).as_deref(),
        Some("1")
    );
    assert!(
        !text.contains("987654") && !text.contains("secretpath"),
        "raw paths leak: {text}"
    );
    // The refused body is a sync request; the failed login is not (no sync was asked of
    // an authenticated user), and neither ran the engine.
    assert_eq!(
        sample(
            text,
            r#"imagersync_syncs_total{outcome="unusual",http_status="400"}"#
        )
        .as_deref(),
        Some("1")
    );
    assert!(!text.contains(r#"http_status="401""#), "{text}");
    assert!(
        !text.contains("imagersync_sync_duration_seconds_count"),
        "{text}"
    );
}

#[tokio::test]
async fn a_synchronous_post_behind_taken_slots_waits_in_the_queue_then_runs() {
    let (f, state) = fixture_with("rsyncserver: {auth: {admin: admin}, max_concurrent_syncs: 1}");
    let held = state.sync_slots().clone().try_acquire_owned().unwrap();
    let body = r#"{"rsync_config":{"source":"Bad Reference!!","target":"reg.example.com/a:1"}}"#;
    let app = f.app.clone();
    let waiting = tokio::spawn(async move {
        send(
            &app,
            request(Method::POST, "/v1/image/rsync", Some("admin:admin"), body),
        )
        .await
    });
    while state.jobs().queued() == 0 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "must wait for the slot, not answer");
    drop(held);
    let (status, parts, _) = waiting.await.unwrap();
    // It ran: the engine refused the reference (400), not the queue (503).
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(parts.headers().contains_key(header::CONTENT_LOCATION));
    assert_eq!(state.jobs().queued(), 0);
    let metrics = state.metrics().render(state.gauges());
    assert!(
        metrics.contains("imagersync_job_queue_wait_seconds_count 1"),
        "{metrics}"
    );
}
