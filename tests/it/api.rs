//! The HTTP contract (design §2, §4, §8) route by route and status by status: home
//! page, health check, auth, methods, start-up errors and the analysis log. Unusable
//! bodies and references (400/403/413) are the table in `bad_input.rs`.

use base64::Engine as _;
use reqwest::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::common::contract::{assert_seed_shape, status_of, without_times};
use crate::common::fixture::{Pair, SourceAuth};
use crate::common::service::{
    admin, jenkins, json_of, run_expecting_exit, CURL_CONTENT_TYPE, TOOLS_LINK,
};
use crate::common::{skopeo, Cases, Creds, Format, Image, Registry, Service, ServiceConfig};

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
        (Method::PUT, RSYNC, &["GET", "HEAD", "POST"]),
        (Method::DELETE, RSYNC, &["GET", "HEAD", "POST"]),
        (Method::PATCH, "/v1/image/rsync/", &["GET", "HEAD", "POST"]),
        (Method::DELETE, "/v1/image/rsync/", &["GET", "HEAD", "POST"]),
        (Method::POST, "/check", &["GET", "HEAD"]),
        (Method::PUT, "/", &["GET", "HEAD"]),
    ];
    let mut cases = Cases::new();
    for (method, path, allowed) in table {
        let resp = send(
            &svc,
            method.clone(),
            path,
            Some(&auth),
            Some(b"{}".to_vec()),
        )
        .await;
        let status = resp.status();
        let allow = resp
            .headers()
            .get(ALLOW)
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.text().await.unwrap();
        cases.check(&format!("{method} {path}"), || {
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            let allow = allow.expect("no Allow header");
            // Exactly the route's methods (GET routes answer HEAD too), nothing more.
            let mut listed: Vec<&str> = allow.split(',').map(str::trim).collect();
            listed.sort_unstable();
            assert_eq!(listed, allowed, "Allow: {allow}");
            assert_error_body(&body);
        });
    }
    cases.finish();
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
            assert_error_body(&resp.text().await.unwrap());
        }
    }
}

/// The router's own error body as doc/api.md documents it: `{"error":"…"}` and nothing
/// else, with a message that says something.
fn assert_error_body(body: &str) {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let object = value.as_object().expect("a JSON object");
    assert_eq!(object.len(), 1, "only `error`: {body}");
    let error = object["error"].as_str().expect("`error` is a string");
    assert!(error.len() > 10, "a readable message: {body}");
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
    let mut cases = Cases::new();
    // More failed logins than one address may make before it is damped with 429
    // (tests/security.rs), so each case comes from its own loopback address.
    for (i, (name, header)) in refused_credentials().into_iter().enumerate() {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 1, i as u8 + 1]))
            .build()
            .unwrap();
        for method in [Method::GET, Method::POST] {
            let body = (method == Method::POST).then(|| VALID_BODY.as_bytes().to_vec());
            let mut req = client.request(method.clone(), svc.url(RSYNC));
            if let Some(raw) = header.as_deref() {
                req = req.header(AUTHORIZATION, HeaderValue::from_bytes(raw).unwrap());
            }
            if let Some(body) = body {
                req = req.header(CONTENT_TYPE, CURL_CONTENT_TYPE).body(body);
            }
            let resp = req.send().await.expect("request to the service");
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let (status, body) = json_of(resp).await;
            cases.check(&format!("{method} with {name}"), || {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
                assert!(
                    challenge.starts_with(r#"Basic realm="imagersync""#),
                    "WWW-Authenticate {challenge:?}"
                );
                if method == Method::POST {
                    assert_seed_shape(&body);
                    assert_ne!(status_of(&body), "successfully");
                }
            });
        }
    }
    cases.finish();
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
    let mut cases = Cases::new();
    for (name, header, user) in table {
        let (status, body) =
            json_of(send(&svc, Method::GET, RSYNC, Some(&header), None).await).await;
        cases.check(name, || {
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["username"], json!(user));
        });
    }
    cases.finish();
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
    assert_eq!(exit.code, Some(2), "a config problem exits 2: {exit:?}");
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
    let mut cases = Cases::new();
    for (i, (name, yaml, key)) in table.into_iter().enumerate() {
        let path = dir.path().join(format!("broken-{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let exit = run_expecting_exit(&path);
        cases.check(name, || {
            assert_eq!(exit.code, Some(2), "a config problem exits 2: {exit:?}");
            let lines = stderr_lines(&exit.stderr);
            assert_eq!(lines.len(), 1, "one stderr line expected: {exit:?}");
            assert!(
                lines[0].contains(&path.display().to_string()),
                "file not named: {exit:?}"
            );
            assert!(lines[0].contains(key), "key {key:?} not named: {exit:?}");
        });
    }
    cases.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sync_appends_one_json_line_to_the_logfile() {
    let registry = Registry::start_anonymous().await;
    let svc = Service::start(&ServiceConfig::new().registry("lab", &registry)).await;
    assert_eq!(
        svc.logfile_entries().len(),
        0,
        "no line before the first sync"
    );

    let missing = format!("{}/team/app:missing", registry.host());
    let target = format!("{}/team/copy:v1", registry.host());
    let requests = [
        (missing.as_str(), &target),
        ("127.0.0.1:1/Upper:t", &target),
    ];
    for (n, (source, target)) in requests.into_iter().enumerate() {
        let (status, _) = svc.sync(source, target).await;
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{status}"
        );
        assert!(
            svc.logfile().exists(),
            "the service creates logs/ and the file"
        );
        let entries = svc.logfile_entries();
        let text = svc.logfile_text();
        assert_eq!(entries.len(), n + 1, "one line per sync:\n{text}");
        let last = entries.last().unwrap();
        assert!(last.is_object(), "{last}");
        assert!(
            last.to_string().contains(source),
            "entry names the source: {last}"
        );
    }
}

/// Sends `request` on a fresh connection and reads one answer; then, unless that
/// answer said `Connection: close`, sends `GET /check` on the same connection and
/// expects a 200: a server must not silently drop a connection it left open.
async fn keeps_its_word_on_keep_alive(svc: &Service, request: Vec<u8>) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let addr = svc.url("").trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    conn.write_all(&request)
        .await
        .map_err(|e| format!("writing the request: {e}"))?;
    let first = read_response(&mut conn).await?;
    let status_line = first.lines().next().unwrap_or_default().to_string();
    if first.to_lowercase().contains("\r\nconnection: close\r\n") {
        return Ok(status_line);
    }
    let check = b"GET /check HTTP/1.1\r\nHost: test\r\n\r\n";
    let second = match conn.write_all(check).await {
        Ok(()) => read_response(&mut conn).await,
        Err(e) => Err(e.to_string()),
    };
    match second {
        Ok(text) if text.starts_with("HTTP/1.1 200") => Ok(status_line),
        other => Err(format!(
            "after {status_line:?} without `Connection: close`, the connection was not usable: {other:?}"
        )),
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body from `conn`.
async fn read_response(conn: &mut tokio::net::TcpStream) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .map_err(|_| "timed out reading a response".to_string())?
            .map_err(|e| format!("reading a response: {e}"))?;
        if read == 0 {
            return Err(format!(
                "connection closed; read so far: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_bodies_do_not_break_keep_alive_connections() {
    let svc = service().await;
    let request = |auth: &Creds, len: usize| {
        let token = base64::engine::general_purpose::STANDARD.encode(auth.joined());
        let mut bytes = format!(
            "POST {RSYNC} HTTP/1.1\r\nHost: test\r\nAuthorization: Basic {token}\r\n\
             Content-Type: {CURL_CONTENT_TYPE}\r\nContent-Length: {len}\r\n\r\n{{"
        )
        .into_bytes();
        bytes.resize(bytes.len() + len - 1, b' ');
        bytes
    };
    let table = [
        (
            "413 for 16 KiB + 1",
            request(&admin(), 16 * 1024 + 1),
            "413",
        ),
        ("413 for 100 KiB", request(&admin(), 100 * 1024), "413"),
        (
            "401 with a 100 KiB body",
            request(&Creds::new("admin", "no"), 100 * 1024),
            "401",
        ),
        ("400 for a blank body", request(&admin(), 1), "400"),
    ];
    let mut cases = Cases::new();
    for (name, bytes, want) in table {
        let outcome = keeps_its_word_on_keep_alive(&svc, bytes).await;
        cases.check(name, || {
            let status_line = outcome.unwrap_or_else(|e| panic!("{e}"));
            assert!(status_line.contains(want), "{status_line}");
        });
    }
    cases.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_analysis_log_is_reopened_for_each_line_so_logrotate_can_move_it() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let pushed = pair
        .src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * 1024]))
        .await;
    let source = pair.src_ref("team/app:v1");
    let (one, two) = (pair.dst_ref("team/app:one"), pair.dst_ref("team/app:two"));
    let (status, body) = pair.service.sync(&source, &one).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let log = pair.service.logfile();
    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(lines(&log).len(), 1);

    // What logrotate does without copytruncate: rename the file, the service keeps going.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let (status, body) = pair.service.sync(&source, &two).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let old = lines(&rotated);
    let new = lines(&log);
    assert_eq!(old.len(), 1, "nothing more went to the moved file: {old:?}");
    assert_eq!(new.len(), 1, "a new file at the configured path: {new:?}");
    assert!(old[0].to_string().contains("team/app:one"), "{}", old[0]);
    assert!(new[0].to_string().contains("team/app:two"), "{}", new[0]);
    assert_eq!(new[0]["rsync_data"]["rsync_status"], "successfully");
    skopeo::assert_landed(&pair.dst, "team/app:two", &pushed).await;
}
