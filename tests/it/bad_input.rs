//! The bad-input table of the reliability plan (§3) as one table through the running
//! service: unusable credentials, bodies and references, catastrophic inputs and
//! registries the service may not contact.
//!
//! Both registries sit behind fault proxies that count every request, and the service
//! knows them only by the proxies' addresses; a canary stands for an internal host that
//! is not listed. For every row: the expected status, the seed's JSON shape with a
//! readable `rsync_error`, no request at either proxy or the canary, nothing in the
//! target's catalog, an answer within a sanity bound, and `/check` still healthy. A
//! last, valid request proves the counters do see traffic.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::common::contract::{assert_seed_shape, error_of, status_of};
use crate::common::fault_proxy::{Canary, FaultProxy};
use crate::common::fixture::random_password;
use crate::common::service::{admin, json_of, CURL_CONTENT_TYPE};
use crate::common::{skopeo, Cases, Creds, Format, Image, Registry, Service, ServiceConfig};

const RSYNC: &str = "/v1/image/rsync";
/// Sanity bound per row, not a benchmark: a refusal must not hang, backtrack or retry.
/// 20 s: an order of magnitude above what a refusal takes on a loaded machine; the
/// per-row request counts prove nothing was retried or contacted.
const FAST: Duration = Duration::from_secs(20);

/// Who the request claims to be.
#[derive(Clone)]
enum Auth {
    /// The service user `admin`.
    Admin,
    /// This raw `Authorization` value.
    Raw(Vec<u8>),
    /// No `Authorization` header.
    Missing,
}

/// One row: what is sent and the status it must get.
struct Row {
    name: String,
    auth: Auth,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// Sent chunked, without a `Content-Length`.
    chunked: bool,
    want: StatusCode,
    /// The `rsync_config` the answer must echo, for well-formed bodies.
    echo: Option<Value>,
}

impl Row {
    /// A row sending `body` as `admin` with `curl -d`'s content type.
    fn body(name: &str, body: impl Into<Vec<u8>>, want: StatusCode) -> Row {
        Row {
            name: name.to_owned(),
            auth: Auth::Admin,
            content_type: Some(CURL_CONTENT_TYPE),
            body: body.into(),
            chunked: false,
            want,
            echo: None,
        }
    }

    /// A row with a well-formed body naming `source` and `target`.
    fn refs(name: &str, source: &str, target: &str, want: StatusCode) -> Row {
        let body = json!({"rsync_config": {"source": source, "target": target}});
        let mut row = Row::body(name, serde_json::to_vec(&body).unwrap(), want);
        // A body over the cap is never parsed, so there is nothing to echo; a blank field
        // is echoed empty (it is no usable string).
        let usable = |s: &str| if s.trim().is_empty() { "" } else { s }.to_owned();
        row.echo = (want != StatusCode::PAYLOAD_TOO_LARGE)
            .then(|| json!({"source": usable(source), "target": usable(target)}));
        row
    }

    fn auth(mut self, auth: Auth) -> Row {
        self.auth = auth;
        self
    }

    fn content_type(mut self, content_type: Option<&'static str>) -> Row {
        self.content_type = content_type;
        self
    }

    fn chunked(mut self) -> Row {
        self.chunked = true;
        self
    }
}

/// `Basic base64(raw)`.
fn basic(raw: &[u8]) -> Vec<u8> {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
    .into_bytes()
}

/// `{"rsync_config":` padded with spaces to `len` bytes: too big, and not JSON either.
fn padded(len: usize) -> Vec<u8> {
    let mut body = b"{".to_vec();
    body.resize(len, b' ');
    body
}

/// Every row of the plan's table. `p` and `q` are the source and target proxies (listed
/// in the config), `canary` an internal host that is not.
fn table(p: &str, q: &str, canary: &str) -> Vec<Row> {
    use StatusCode as S;
    let (bad, big, denied, unauth) = (
        S::BAD_REQUEST,
        S::PAYLOAD_TOO_LARGE,
        S::FORBIDDEN,
        S::UNAUTHORIZED,
    );
    let src = format!("{p}/team/app:v1");
    let dst = format!("{q}/prod/app:v1");
    let valid =
        serde_json::to_vec(&json!({"rsync_config": {"source": src, "target": dst}})).unwrap();
    let long_ref = |n: usize| format!("{}!", "a-".repeat(n));
    let with_source = |name: &str, s: &str| Row::refs(name, s, &dst, bad);
    let hex64 = "0123456789abcdef".repeat(4);
    vec![
        // Authentication comes first: nothing else of the request is looked at.
        Row::body("no Authorization", valid.clone(), unauth).auth(Auth::Missing),
        Row::body("wrong password", valid.clone(), unauth).auth(Auth::Raw(basic(b"admin:no"))),
        Row::body("64 KiB Authorization header", valid.clone(), unauth).auth(Auth::Raw(
            [b"Basic ".as_slice(), &[b'A'; 64 * 1024]].concat(),
        )),
        Row::body("bad auth with a 100 KiB body", padded(100 * 1024), unauth)
            .auth(Auth::Raw(basic(b"admin:nope"))),
        // Bodies that are not the request (any content type; the seed took `curl -d`).
        Row::body("malformed JSON", r#"{"rsync_config":"#, bad),
        Row::body("empty body", "", bad).content_type(Some("application/json")),
        Row::body("blank body", "  \n", bad).content_type(Some("text/plain")),
        Row::body("non-UTF-8 bytes", &b"{\"rsync_config\":\xff}"[..], bad).content_type(None),
        Row::body("empty object", "{}", bad),
        Row::body("array", "[]", bad).content_type(Some("application/json")),
        Row::body("null", "null", bad).content_type(Some("text/plain")),
        Row::body("rsync_config not an object", r#"{"rsync_config":"x"}"#, bad),
        Row::body("empty rsync_config", r#"{"rsync_config":{}}"#, bad).content_type(None),
        Row::body(
            "missing target",
            format!(r#"{{"rsync_config":{{"source":"{src}"}}}}"#),
            bad,
        ),
        Row::body(
            "missing source",
            format!(r#"{{"rsync_config":{{"target":"{dst}"}}}}"#),
            bad,
        ),
        Row::body(
            "source a number",
            format!(r#"{{"rsync_config":{{"source":123,"target":"{dst}"}}}}"#),
            bad,
        ),
        Row::body(
            "source an array",
            format!(r#"{{"rsync_config":{{"source":["{src}"],"target":"{dst}"}}}}"#),
            bad,
        ),
        Row::body(
            "source an object",
            format!(r#"{{"rsync_config":{{"source":{{}},"target":"{dst}"}}}}"#),
            bad,
        ),
        Row::body(
            "target null",
            format!(r#"{{"rsync_config":{{"source":"{src}","target":null}}}}"#),
            bad,
        ),
        Row::body(
            "target an empty list",
            format!(r#"{{"rsync_config":{{"source":"{src}","target":[]}}}}"#),
            bad,
        ),
        Row::body(
            "duplicate source key",
            format!(r#"{{"rsync_config":{{"source":"{src}","source":"{src}","target":"{dst}"}}}}"#),
            bad,
        ),
        Row::body("form-encoded", "source=a&target=b", bad),
        Row::body(
            "trailing garbage",
            format!(r#"{{"rsync_config":{{"source":"{src}","target":"{dst}"}}}} x"#),
            bad,
        ),
        Row::body("10 000 nested arrays", "[".repeat(10_000), bad),
        Row::body("2 000 nested objects", r#"{"a":"#.repeat(2_000), bad),
        // Size: the cap is 16 KiB, checked before anything is parsed.
        Row::body("exactly 16 KiB", padded(16 * 1024), bad),
        Row::body("16 KiB + 1", padded(16 * 1024 + 1), big),
        Row::body("3 MB", padded(3_000_000), big),
        Row::body("3 MB chunked, no Content-Length", padded(3_000_000), big).chunked(),
        Row::refs(
            "1 MB catastrophic reference a-a-a-…!",
            &long_ref(500_000),
            &dst,
            big,
        ),
        // References that are not image references.
        with_source("empty source", ""),
        Row::refs("empty target", &src, "", bad),
        with_source("blank source", "   "),
        with_source("trailing space", &format!("{src} ")),
        with_source("trailing newline", &format!("{src}\n")),
        with_source("NUL byte", &format!("{src}\0x")),
        with_source("upper-case repository", &format!("{p}/Team/app:v1")),
        with_source(
            "upper case under implicit docker.io",
            "Uppercase/lowercase:tag",
        ),
        with_source("../ in the path", &format!("{p}/team/../app:v1")),
        with_source("%2e%2e in the path", &format!("{p}/team/%2e%2e/app:v1")),
        with_source("// in the path", &format!("{p}/team//app:v1")),
        with_source("leading ../", "../../etc/passwd:v1"),
        with_source(
            "repository over 255 characters",
            &format!("{p}/{}:v1", "a".repeat(256)),
        ),
        with_source(
            "tag over 128 characters",
            &format!("{p}/team/app:{}", "t".repeat(129)),
        ),
        with_source(
            "reference over 512 bytes",
            &format!("{p}/{}app:v1", "ab/".repeat(180)),
        ),
        with_source("10 KB catastrophic reference a-a-a-…!", &long_ref(5_000)),
        with_source("10 KB of a.a.a…", &"a.".repeat(5_000)),
        with_source("unicode tag", &format!("{p}/team/app:täg")),
        with_source("CJK tag", &format!("{p}/team/app:标签")),
        with_source("unicode repository", &format!("{p}/ä:v1")),
        with_source("short digest", &format!("{p}/team/app@sha256:abc")),
        with_source(
            "sha256 with 128 hex digits",
            &format!("{p}/team/app@sha256:{hex64}{hex64}"),
        ),
        with_source("md5 digest", &format!("{p}/team/app@md5:{}", &hex64[..32])),
        with_source(
            "upper-case hex digest",
            &format!("{p}/team/app@sha256:{}", hex64.to_uppercase()),
        ),
        with_source("scheme", &format!("https://{src}")),
        with_source("user:password@host", &format!("user:pw@{src}")),
        with_source("IPv6 literal without its ']'", "[::1:5000/team/app:v1"),
        with_source("IPv4 in brackets", "[127.0.0.1]:5000/team/app:v1"),
        with_source("port out of range", "127.0.0.1:99999/team/app:v1"),
        with_source("shell characters", &format!("{src};rm -rf /")),
        Row::refs(
            "two tags renamed to three",
            &format!("{p}/team/app:v1,v2"),
            &format!("{q}/prod/app:a,b,c"),
            bad,
        ),
        with_source("unbalanced regex rule", &format!("{p}/team/app:/(a+/")),
        with_source(
            "regex rule over the size limit",
            &format!("{p}/team/app:/(a{{1000}}){{1000}}/"),
        ),
        Row::refs(
            "target a regex rule",
            &format!("{p}/team/app:/v.*/"),
            &format!("{q}/prod/app:/x/"),
            bad,
        ),
        // Registries the service may not contact: refused before DNS or TCP.
        // (Non-loopback addresses: see the network-namespace test below.)
        // An IPv6 literal is a valid host (docker's grammar) and meets the same allow-list.
        Row::refs(
            "IPv6 loopback literal",
            "[::1]:5000/team/app:v1",
            &dst,
            denied,
        ),
        Row::refs(
            "LOCALHOST in capitals",
            "LOCALHOST:5000/team/app:v1",
            &dst,
            denied,
        ),
        Row::refs(
            "unlisted loopback source (canary)",
            &format!("{canary}/team/app:v1"),
            &dst,
            denied,
        ),
        Row::refs(
            "unlisted loopback target (canary)",
            &src,
            &format!("{canary}/prod/app:v1"),
            denied,
        ),
    ]
}

/// The loopback address row `i` is sent from (failed logins are damped per address).
fn row_address(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, 3, (i % 250) as u8 + 1])
}

/// Sends `row` from its own loopback address on a raw connection, writing and reading at
/// once, so the answer is read whatever happens to the writing (the server stops reading
/// a body beyond its drain bound, 64 MiB).
async fn send(svc: &Service, row: &Row, i: usize) -> Result<(StatusCode, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind((row_address(i), 0).into())
        .map_err(|e| e.to_string())?;
    let addr = svc.url("").trim_start_matches("http://").parse().unwrap();
    let conn = socket.connect(addr).await.map_err(|e| e.to_string())?;
    // Not `into_split`: its write half sends FIN when dropped; the service answers a
    // half-closed connection too, but a row should not depend on that.
    let (mut reader, mut writer) = tokio::io::split(conn);
    let mut head = format!("POST {RSYNC} HTTP/1.1\r\nHost: imagersync\r\nConnection: close\r\n");
    head.push_str(&if row.chunked {
        "Transfer-Encoding: chunked\r\n".to_owned()
    } else {
        format!("Content-Length: {}\r\n", row.body.len())
    });
    if let Some(ct) = row.content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    let auth = match &row.auth {
        Auth::Admin => Some(basic(admin().joined().as_bytes())),
        Auth::Raw(raw) => Some(raw.clone()),
        Auth::Missing => None,
    };
    if let Some(auth) = auth {
        head.push_str(&format!(
            "Authorization: {}\r\n",
            String::from_utf8_lossy(&auth)
        ));
    }
    head.push_str("\r\n");
    let body = row.body.clone();
    let chunked = row.chunked;
    let write = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        if !chunked {
            return writer.write_all(&body).await;
        }
        for chunk in body.chunks(64 * 1024) {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answer)).await;
    write.abort();
    if answer.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let status = StatusCode::from_u16(code).map_err(|e| e.to_string())?;
    Ok((status, body.to_owned()))
}

/// The repositories the target registry holds, asked of the registry itself.
async fn catalog(dst: &Registry) -> Value {
    let creds = dst.creds().expect("htpasswd target");
    let resp = Client::new()
        .get(format!("{}/v2/_catalog", dst.url()))
        .basic_auth(&creds.user, Some(&creds.pass))
        .send()
        .await
        .expect("catalog of the target");
    json_of(resp).await.1["repositories"].clone()
}

/// Asserts an answer's body is the seed's shape with a readable error for `row`, echoing
/// what it asked for.
fn assert_refusal(row: &Row, status: StatusCode, text: &str) {
    let want = row.want;
    assert_eq!(status, want, "{text}");
    let body: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("HTTP {status}: body is not JSON ({e}): {text}"));
    assert_seed_shape(&body);
    assert_ne!(status_of(&body), "successfully", "{body}");
    if want == StatusCode::BAD_REQUEST {
        assert_eq!(status_of(&body), "unusual", "{body}");
    }
    let error = error_of(&body).unwrap_or_else(|| panic!("no rsync_error: {body}"));
    assert!(error.len() > 10, "rsync_error too short: {error:?}");
    assert!(
        !error.chars().any(char::is_control),
        "rsync_error holds raw control characters: {error:?}"
    );
    assert!(
        error.len() < 2_000,
        "rsync_error echoes too much: {error:.200}…"
    );
    if let Some(echo) = &row.echo {
        assert_eq!(&body["rsync_config"], echo, "echo of the request");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_is_refused_fast_with_no_registry_contacted() {
    let dst_creds = Creds::new("pusher", &random_password("dst"));
    let (src, dst, canary) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd(&dst_creds.user, &dst_creds.pass),
        Canary::start(),
    );
    let (src_host, dst_host) = (src.host(), dst.host());
    let (sp, dp) = tokio::join!(FaultProxy::start(&src_host), FaultProxy::start(&dst_host));
    let config = ServiceConfig::new().entry("src", &sp.host(), None).entry(
        "dst",
        &dp.host(),
        Some(dst_creds),
    );
    let svc = Service::start(&config).await;
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[64 * 1024]))
        .await;

    let rows = table(&sp.host(), &dp.host(), &canary.host());
    let mut cases = Cases::new();
    for (i, row) in rows.iter().enumerate() {
        let seen_before = canary.requests().len();
        sp.clear_requests();
        dp.clear_requests();
        let started = Instant::now();
        let answer = send(&svc, row, i).await;
        let took = started.elapsed();
        let check = svc.health().await;
        let contacted: Vec<String> = sp
            .requests()
            .into_iter()
            .chain(dp.requests())
            .chain(canary.requests().into_iter().skip(seen_before))
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        let repositories = catalog(&dst).await;
        cases.check(&row.name, || {
            let (status, text) = answer.unwrap_or_else(|e| panic!("{e}"));
            assert_refusal(row, status, &text);
            assert!(took < FAST, "took {took:?}");
            assert!(contacted.is_empty(), "registries contacted: {contacted:?}");
            assert_eq!(
                repositories,
                json!([]),
                "something was written at the target"
            );
            assert!(
                matches!(check, Ok(StatusCode::OK)),
                "/check after the row: {check:?}"
            );
        });
    }
    cases.finish();

    // The control: a valid request through the same proxies is seen by both, and lands.
    let (status, body) = svc
        .sync(
            &format!("{}/team/app:v1", sp.host()),
            &format!("{}/prod/app:v1", dp.host()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!sp.requests().is_empty() && !dp.requests().is_empty());
    assert!(canary.requests().is_empty());
    skopeo::assert_landed(&dst, "prod/app:v1", &pushed).await;
}

/// A source (or target) naming a non-loopback internal address, and the address to put on
/// the namespace's `lo` so that even a broken allow-list could only reach itself.
const OFF_MACHINE_ROWS: [(&str, &str, &str); 4] = [
    (
        "link-local metadata address",
        "169.254.169.254/latest:meta",
        "source",
    ),
    ("private address", "10.0.0.5/team/app:v1", "source"),
    (
        "private address with a port",
        "10.0.0.5:5000/team/app:v1",
        "source",
    ),
    (
        "private address as the target",
        "10.0.0.5/prod/app:v1",
        "target",
    ),
];

/// Rows naming addresses that are not loopback run in a network namespace this test
/// creates (`unshare --net`), the addresses on that namespace's own `lo`: the service
/// and curl (the test's client cannot enter the namespace) live there, so should the
/// allow-list regress, its packets reach only that namespace, never the network. A
/// request that got through would meet no listener there and fail with 502, not 403.
#[test]
fn non_loopback_addresses_are_refused_inside_a_private_network_namespace() {
    use crate::common::tools::{CURL, IP, UNSHARE};
    let (unshare, ip, curl) = (UNSHARE.path(), IP.path(), CURL.path());
    let dir = tempfile::tempdir().unwrap();
    // The listed target is a loopback port nobody listens on: every row must be refused
    // before it would be contacted.
    let listed = "127.0.0.1:9";
    let config = dir.path().join("config.yaml");
    let yaml = ServiceConfig::new()
        .entry("dst", listed, None)
        .to_yaml(&dir.path().join("rsync.log"));
    std::fs::write(&config, yaml).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (i, (_, named, side)) in OFF_MACHINE_ROWS.iter().enumerate() {
        let other = format!("{listed}/prod/app:v1");
        let (source, target) = match *side {
            "source" => (named.to_string(), other),
            _ => (format!("{listed}/team/app:v1"), named.to_string()),
        };
        let body = json!({"rsync_config": {"source": source, "target": target}});
        std::fs::write(dir.path().join(format!("row-{i}.json")), body.to_string()).unwrap();
    }
    let script = r#"
set -e
"$IP" link set lo up
"$IP" addr add 10.0.0.5/32 dev lo
"$IP" addr add 169.254.169.254/32 dev lo
"$IP" -4 addr show dev lo > "$DIR/addresses"
"$BIN" --address 127.0.0.1:8080 --configFile "$DIR/config.yaml" > "$DIR/service.out" 2> "$DIR/service.err" &
pid=$!
i=0
until "$CURL" -sf -o /dev/null http://127.0.0.1:8080/check; do
    i=$((i + 1))
    if [ "$i" -gt 1200 ]; then echo "the service never answered /check" >&2; kill "$pid"; exit 1; fi
    sleep 0.1
done
for row in "$DIR"/row-*.json; do
    "$CURL" -s -u admin:adminpw -H 'Content-Type: application/json' --data-binary @"$row"         -o "$row.body" -w '%{http_code}' http://127.0.0.1:8080/v1/image/rsync > "$row.status"
done
kill "$pid"
wait "$pid" || true
"#;
    let out = std::process::Command::new(&unshare)
        .args(["--net", "sh", "-c", script])
        .env("IP", &ip)
        .env("CURL", &curl)
        .env("BIN", crate::common::service::BIN)
        .env("DIR", dir.path())
        .current_dir(dir.path())
        .output()
        .expect("run unshare");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "unshare --net failed (needs root): {}\n{}\nservice: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        read("service.err")
    );
    let addresses = read("addresses");
    assert!(
        addresses.contains("10.0.0.5/32") && addresses.contains("169.254.169.254/32"),
        "the namespace's lo lacks the addresses: {addresses}"
    );
    let mut cases = Cases::new();
    for (i, (name, named, _)) in OFF_MACHINE_ROWS.iter().enumerate() {
        let status = read(&format!("row-{i}.json.status"));
        let text = read(&format!("row-{i}.json.body"));
        cases.check(name, || {
            assert_eq!(status, "403", "{text}");
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"));
            assert_seed_shape(&body);
            let error = error_of(&body).unwrap_or_else(|| panic!("no rsync_error: {body}"));
            let host = named.split('/').next().unwrap();
            assert!(
                error.contains(host) && error.contains("internal address"),
                "{error}"
            );
        });
    }
    cases.finish();
}
