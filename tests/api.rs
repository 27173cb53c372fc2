//! The HTTP contract (design §2, §4, §8) route by route and status by status: home
//! page, health check, auth, methods, body checks, start-up errors and the analysis log.

mod common;

use base64::Engine as _;
use reqwest::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

use common::contract::{assert_seed_shape, error_of, status_of, without_times};
use common::service::{admin, jenkins, json_of, run_expecting_exit, CURL_CONTENT_TYPE, TOOLS_LINK};
use common::{Creds, Registry, Service, ServiceConfig};

const RSYNC: &str = "/v1/image/rsync";
const VALID_BODY: &str =
    r#"{"rsync_config":{"source":"127.0.0.1:1/team/app:v1","target":"127.0.0.1:2/team/app:v1"}}"#;

/// A service whose config lists no registries; enough for everything before a sync.
async fn service() -> Service {
    Service::start(&ServiceConfig::new()).await
}

/// `Basic base64(raw)` as a header value.
fn basic(raw: &[u8]) -> Vec<u8> {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
    .into_bytes()
}

/// Sends `method path` with an optional raw Authorization header and body.
async fn send(
    svc: &Service,
    method: Method,
    path: &str,
    auth: Option<&[u8]>,
    body: Option<Vec<u8>>,
) -> Response {
    let mut req = svc.client().request(method, svc.url(path));
    if let Some(raw) = auth {
        req = req.header(
            AUTHORIZATION,
            HeaderValue::from_bytes(raw).expect("header bytes"),
        );
    }
    if let Some(body) = body {
        req = req.header(CONTENT_TYPE, CURL_CONTENT_TYPE).body(body);
    }
    req.send().await.expect("request to the service")
}

fn creds_header(c: &Creds) -> Vec<u8> {
    basic(c.joined().as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn home_page_is_html_with_the_tools_links() {
    let svc = service().await;
    let resp = send(&svc, Method::GET, "/", None, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "content-type {ct}");
    let page = resp.text().await.unwrap();
    assert!(page.contains(TOOLS_LINK), "tools link missing:\n{page}");
    assert!(
        page.to_lowercase().contains("imagersync"),
        "name missing:\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_says_healthy_without_auth() {
    let svc = service().await;
    let (status, body) = json_of(send(&svc, Method::GET, "/check", None, None).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "healthy"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn get_rsync_tells_to_post_on_both_spellings() {
    let svc = service().await;
    for path in [RSYNC, "/v1/image/rsync/"] {
        for user in [admin(), jenkins()] {
            let resp = send(&svc, Method::GET, path, Some(&creds_header(&user)), None).await;
            let (status, body) = json_of(resp).await;
            assert_eq!(status, StatusCode::OK, "GET {path} as {}", user.user);
            assert_eq!(body["username"], json!(user.user), "{body}");
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn other_methods_are_405_with_an_allow_header() {
    let svc = service().await;
    let auth = creds_header(&admin());
    let table: [(Method, &str, &[&str]); 6] = [
        (Method::PUT, RSYNC, &["GET", "POST"]),
        (Method::DELETE, RSYNC, &["GET", "POST"]),
        (Method::PATCH, "/v1/image/rsync/", &["GET", "POST"]),
        (Method::DELETE, "/v1/image/rsync/", &["GET", "POST"]),
        (Method::POST, "/check", &["GET"]),
        (Method::PUT, "/", &["GET"]),
    ];
    for (method, path, allowed) in table {
        let resp = send(
            &svc,
            method.clone(),
            path,
            Some(&auth),
            Some(b"{}".to_vec()),
        )
        .await;
        assert_eq!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let allow = resp
            .headers()
            .get(ALLOW)
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"))
            .to_str()
            .unwrap()
            .to_string();
        for m in allowed {
            assert!(
                allow.contains(m),
                "{method} {path}: Allow {allow:?} lacks {m}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_are_404() {
    let svc = service().await;
    let auth = creds_header(&admin());
    for path in [
        "/nope",
        "/v1/image/rsync/extra",
        "/v1/image",
        "/v2/",
        "/check/x",
    ] {
        for header in [None, Some(auth.as_slice())] {
            let resp = send(&svc, Method::GET, path, header, None).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "GET {path}");
        }
    }
}

/// Authorization headers that must all be refused, by name.
fn refused_credentials() -> Vec<(&'static str, Option<Vec<u8>>)> {
    vec![
        ("no header", None),
        ("wrong password", Some(basic(b"admin:wrong"))),
        ("unknown user", Some(basic(b"nobody:adminpw"))),
        ("user name in another case", Some(basic(b"Admin:adminpw"))),
        ("password cut at its colon", Some(basic(b"jenkins:pa"))),
        (
            "password with a trailing space",
            Some(basic(b"admin:adminpw ")),
        ),
        ("empty user and password", Some(basic(b":"))),
        ("bearer scheme", Some(b"Bearer x".to_vec())),
        ("bad base64", Some(b"Basic !!!not-base64!!!".to_vec())),
        ("no colon", Some(basic(b"adminadminpw"))),
        (
            "non-UTF-8 credentials",
            Some(basic(b"admin:\xff\xfeadminpw")),
        ),
        ("scheme only", Some(b"Basic".to_vec())),
        ("empty credentials", Some(b"Basic ".to_vec())),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_are_401_with_a_basic_challenge() {
    let svc = service().await;
    for (name, header) in refused_credentials() {
        for method in [Method::GET, Method::POST] {
            let body = (method == Method::POST).then(|| VALID_BODY.as_bytes().to_vec());
            let resp = send(&svc, method.clone(), RSYNC, header.as_deref(), body).await;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let (status, body) = json_of(resp).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} with {name}: {body}"
            );
            assert!(
                challenge.starts_with(r#"Basic realm="imagersync""#),
                "{method} with {name}: WWW-Authenticate {challenge:?}"
            );
            if method == Method::POST {
                assert_seed_shape(&body);
                assert_ne!(status_of(&body), "successfully", "{name}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_and_wrong_password_look_the_same() {
    let svc = service().await;
    let mut answers = Vec::new();
    for raw in [&b"nobody:adminpw"[..], b"admin:wrong"] {
        let resp = send(
            &svc,
            Method::POST,
            RSYNC,
            Some(&basic(raw)),
            Some(VALID_BODY.into()),
        )
        .await;
        let challenge = resp.headers().get(WWW_AUTHENTICATE).cloned();
        let (status, mut body) = json_of(resp).await;
        body["username"] = Value::Null; // an echo of the name tried reveals nothing
        answers.push((status, challenge, without_times(&body)));
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn scheme_is_case_insensitive_and_passwords_may_hold_colons() {
    let svc = service().await;
    let token = base64::engine::general_purpose::STANDARD.encode("admin:adminpw");
    let table: [(&str, Vec<u8>, &str); 4] = [
        (
            "lowercase scheme",
            format!("basic {token}").into_bytes(),
            "admin",
        ),
        (
            "uppercase scheme",
            format!("BASIC {token}").into_bytes(),
            "admin",
        ),
        ("colon in password", basic(b"jenkins:pa:ss"), "jenkins"),
        ("plain", basic(b"admin:adminpw"), "admin"),
    ];
    for (name, header, user) in table {
        let (status, body) =
            json_of(send(&svc, Method::GET, RSYNC, Some(&header), None).await).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["username"], json!(user), "{name}");
    }
}

/// A 400 answer in the seed shape: `unusual`, a readable error, the caller's name.
fn assert_unusual(name: &str, status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
    assert_seed_shape(body);
    assert_eq!(status_of(body), "unusual", "{name}: {body}");
    assert!(
        error_of(body).is_some_and(|e| e.len() > 10),
        "{name}: rsync_error {body}"
    );
    assert_eq!(body["username"], json!("admin"), "{name}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_bodies_are_400_whatever_the_content_type() {
    let svc = service().await;
    let table: [(&str, &str); 14] = [
        ("malformed JSON", r#"{"rsync_config":"#),
        ("empty body", ""),
        ("blank body", "  \n"),
        ("empty object", "{}"),
        ("array", "[]"),
        ("null", "null"),
        ("rsync_config not an object", r#"{"rsync_config":"x"}"#),
        ("empty rsync_config", r#"{"rsync_config":{}}"#),
        (
            "missing target",
            r#"{"rsync_config":{"source":"127.0.0.1:1/a:v1"}}"#,
        ),
        (
            "missing source",
            r#"{"rsync_config":{"target":"127.0.0.1:1/a:v1"}}"#,
        ),
        (
            "source a number",
            r#"{"rsync_config":{"source":123,"target":"127.0.0.1:1/a:v1"}}"#,
        ),
        (
            "target null",
            r#"{"rsync_config":{"source":"127.0.0.1:1/a:v1","target":null}}"#,
        ),
        ("not JSON at all", "source=a&target=b"),
        (
            "trailing garbage",
            r#"{"rsync_config":{"source":"a","target":"b"}} x"#,
        ),
    ];
    let content_types = [
        Some(CURL_CONTENT_TYPE),
        Some("application/json"),
        Some("text/plain"),
        None,
    ];
    for (i, (name, body)) in table.into_iter().enumerate() {
        let ct = content_types[i % content_types.len()];
        let resp = svc
            .post_raw(RSYNC, Some(&admin()), ct, body.as_bytes().to_vec())
            .await;
        let (status, answer) = json_of(resp).await;
        assert_unusual(&format!("{name} ({ct:?})"), status, &answer);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_references_are_400_and_echoed() {
    let svc = Service::start(&ServiceConfig::new().entry("dead", "127.0.0.1:1", None)).await;
    let good = "127.0.0.1:1/team/app:v1";
    let table: [(&str, &str, &str); 7] = [
        ("upper-case repository", "127.0.0.1:1/Upper:t", good),
        ("space in the tag", "a:t ", good),
        ("empty source", "", good),
        ("empty target", good, ""),
        ("short digest", "127.0.0.1:1/team/app@sha256:abc", good),
        ("bad characters", "127.0.0.1:1/team/app:v1;rm -rf", good),
        (
            "two tags become one",
            "127.0.0.1:1/team/app:v1,v2",
            "127.0.0.1:1/team/app:a,b,c",
        ),
    ];
    for (name, source, target) in table {
        let body = json!({"rsync_config": {"source": source, "target": target}});
        let (status, answer) = svc.post_json(Some(&admin()), &body).await;
        assert_unusual(name, status, &answer);
        assert_eq!(answer["rsync_config"], body["rsync_config"], "{name}: echo");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_16_kib_are_413_after_auth() {
    let svc = service().await;
    let padded = |len: usize| {
        let mut body = b"{".to_vec();
        body.resize(len, b' ');
        body
    };
    let cases: [(&str, Option<Creds>, Vec<u8>, StatusCode); 4] = [
        (
            "100 KiB",
            Some(admin()),
            padded(100 * 1024),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "16 KiB + 1",
            Some(admin()),
            padded(16 * 1024 + 1),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "exactly 16 KiB",
            Some(admin()),
            padded(16 * 1024),
            StatusCode::BAD_REQUEST,
        ),
        (
            "100 KiB, bad auth",
            Some(Creds::new("admin", "nope")),
            padded(100 * 1024),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (name, creds, body, want) in cases {
        let resp = svc
            .post_raw(RSYNC, creds.as_ref(), Some(CURL_CONTENT_TYPE), body)
            .await;
        let (status, answer) = json_of(resp).await;
        assert_eq!(status, want, "{name}: {answer}");
        assert_seed_shape(&answer);
        assert!(error_of(&answer).is_some(), "{name}: {answer}");
    }
}

/// The lines a refused start-up printed on stderr, blank lines dropped.
fn stderr_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn startup_stops_on_a_missing_config_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-config.yaml");
    let exit = run_expecting_exit(&path);
    assert_ne!(exit.code, Some(0), "{exit:?}");
    let lines = stderr_lines(&exit.stderr);
    assert_eq!(lines.len(), 1, "one stderr line expected: {exit:?}");
    assert!(lines[0].contains(&path.display().to_string()), "{exit:?}");
}

#[test]
fn startup_stops_on_a_broken_config_naming_the_file_and_key() {
    let table: [(&str, &str, &str); 5] = [
        ("yaml syntax", "rsyncserver: [\n", ""),
        ("no rsyncserver section", "config: {}\n", "rsyncserver"),
        (
            "proc_num not a number",
            "rsyncserver:\n  auth: {admin: x}\n  rsyncconfig:\n    task: {proc_num: many}\n",
            "proc_num",
        ),
        ("misspelt key", "rsyncserver:\n  auth: {admin: x}\n  logfiel: x.log\n", "logfiel"),
        (
            "registry entry without registry",
            "rsyncserver:\n  auth: {admin: x}\n  rsyncconfig:\n    auth:\n      cn: {username: u}\n",
            "registry",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, yaml, key)) in table.into_iter().enumerate() {
        let path = dir.path().join(format!("broken-{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let exit = run_expecting_exit(&path);
        assert_ne!(exit.code, Some(0), "{name}: {exit:?}");
        let lines = stderr_lines(&exit.stderr);
        assert_eq!(lines.len(), 1, "{name}: one stderr line expected: {exit:?}");
        assert!(
            lines[0].contains(&path.display().to_string()),
            "{name}: file not named: {exit:?}"
        );
        assert!(
            lines[0].contains(key),
            "{name}: key {key:?} not named: {exit:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sync_appends_one_json_line_to_the_logfile() {
    let registry = Registry::start_anonymous().await;
    let svc = Service::start(&ServiceConfig::new().registry("lab", &registry)).await;
    assert!(
        !svc.logfile().parent().unwrap().exists(),
        "logs/ must not exist before the first sync"
    );

    let missing = format!("{}/team/app:missing", registry.host());
    let target = format!("{}/team/copy:v1", registry.host());
    let requests = [
        (missing.as_str(), target.as_str()),
        ("127.0.0.1:1/Upper:t", target.as_str()),
    ];
    for (n, (source, target)) in requests.into_iter().enumerate() {
        let (status, _) = svc.sync(source, target).await;
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{status}"
        );
        let entries = svc.logfile_entries();
        assert_eq!(
            entries.len(),
            n + 1,
            "one line per sync:\n{}",
            svc.logfile_text()
        );
        let last = entries.last().unwrap();
        assert!(last.is_object(), "{last}");
        assert!(
            last.to_string().contains(source),
            "entry names the source: {last}"
        );
    }
}
