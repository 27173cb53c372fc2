//! The rows of issue 16 that need the service process, against the real binary and real
//! registries: a too-large body is answered 413 with its JSON (not cut), a half-closed
//! connection still gets its answer, callback URLs to internal addresses are refused
//! unless allowed (including DNS rebinding, inside a network namespace), and image
//! references with an IPv6 literal host or a 255-character repository name.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::fixture::{random_password, Pair, SourceAuth};
use crate::common::service::admin;
use crate::common::webhook::WebhookReceiver;
use crate::common::{skopeo, Format, Image, Registry, Service, ServiceConfig};

const KIB: usize = 1024;
const RSYNC: &str = "/v1/image/rsync";

/// `Basic base64(admin:adminpw)`.
fn admin_basic() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(admin().joined())
    )
}

/// An answer read off a raw socket: status, headers (lower-case names) and body.
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

impl RawAnswer {
    fn parse(bytes: &[u8]) -> Result<RawAnswer, String> {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no end of headers in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok(RawAnswer {
            status,
            head: head.to_lowercase(),
            body: body.to_owned(),
        })
    }

    /// The body as JSON (a chunked body is de-chunked first).
    fn json(&self) -> Value {
        let body = if self.head.contains("transfer-encoding: chunked") {
            dechunk(&self.body)
        } else {
            self.body.clone()
        };
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
    }
}

/// The payload of a chunked body.
fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        text = &rest[n + 2..];
    }
    out
}

/// Sends `head` then `body` on a raw connection while reading the answer to the end;
/// returns the answer and whether every byte of the body could be written.
async fn raw_exchange(service: &Service, head: String, body: Bytes) -> (Vec<u8>, bool) {
    let addr = service.url("").trim_start_matches("http://").to_owned();
    let conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // `split`, not `into_split`: the write half must not half-close when the writer ends.
    let (mut reader, mut writer) = tokio::io::split(conn);
    let write = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&body).await?;
        writer.flush().await?;
        // Keep the write half open until the reader is done.
        Ok::<_, std::io::Error>(writer)
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut answer))
        .await
        .expect("the answer within a minute");
    assert!(read.is_ok() || !answer.is_empty(), "read failed: {read:?}");
    let wrote = matches!(write.await, Ok(Ok(_)));
    (answer, wrote)
}

/// Asserts `json` is the service's 413 answer in the seed's shape.
fn assert_413_json(json: &Value, how: &str) {
    let error = json["rsync_data"]["rsync_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("larger than 16384 bytes"),
        "{how}: not the 413 JSON: {json}"
    );
    assert_eq!(
        json["rsync_data"]["rsync_status"],
        json!("unusual"),
        "{how}: {json}"
    );
}

// ---------------------------------------------------------------------------------------
// 413 answered, not cut.

#[tokio::test(flavor = "multi_thread")]
async fn too_large_body_gets_its_413_json_not_a_broken_pipe() {
    let service = Service::start(&ServiceConfig::new()).await;
    let url = service.url(RSYNC);
    let client = reqwest::Client::new();
    let creds = admin();

    // reqwest writes the whole body before it reads: it must still see the 413.
    let resp = client
        .post(&url)
        .basic_auth(&creds.user, Some(&creds.pass))
        .body(vec![b' '; 3 << 20])
        .send()
        .await
        .expect("reqwest gets the answer, not a broken pipe (Content-Length)");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        resp.headers()
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close")
    );
    assert_413_json(&resp.json().await.unwrap(), "reqwest, Content-Length");

    let pieces = (0..48).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 * KIB])));
    let resp = client
        .post(&url)
        .basic_auth(&creds.user, Some(&creds.pass))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .expect("reqwest gets the answer, not a broken pipe (chunked)");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_413_json(&resp.json().await.unwrap(), "reqwest, chunked");

    // A raw socket writes every byte of the body and then reads the whole 413 JSON.
    let body = Bytes::from(vec![b' '; 8 << 20]);
    let head = format!(
        "POST {RSYNC} HTTP/1.1\r\nHost: imagersync\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        admin_basic(),
        body.len()
    );
    let (answer, wrote) = raw_exchange(&service, head, body).await;
    let answer = RawAnswer::parse(&answer).unwrap();
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert!(
        wrote,
        "the service read the whole 8 MiB body before answering"
    );
    assert!(answer.head.contains("connection: close"), "{}", answer.head);
    assert_413_json(&answer.json(), "raw socket");

    // Beyond the drain bound (64 MiB announced) it is answered at once, unread, and
    // the connection closed, as before: only the headers are sent here.
    let head = format!(
        "POST {RSYNC} HTTP/1.1\r\nHost: imagersync\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        admin_basic(),
        100u64 << 20
    );
    let (answer, _) = raw_exchange(&service, head, Bytes::new()).await;
    let answer = RawAnswer::parse(&answer).unwrap();
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert_413_json(&answer.json(), "raw socket, 100 MiB announced");

    assert_eq!(service.health().await.unwrap(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// Half-closed connections.

#[tokio::test(flavor = "multi_thread")]
async fn a_half_closed_connection_still_gets_its_answer() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let image = Image::random(Format::Oci, &[512 * KIB, 16 * KIB]);
    let pushed = pair.src.push_image("team/app", "v1", &image).await;
    let addr = pair
        .service
        .url("")
        .trim_start_matches("http://")
        .to_owned();

    // HTTP/1.0 style: the request, then shutdown(Write), then read until the end.
    let ask = |request: String| {
        let addr = addr.clone();
        async move {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            conn.write_all(request.as_bytes()).await.unwrap();
            conn.shutdown().await.expect("half-close the sending side");
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(120), conn.read_to_end(&mut answer))
                .await
                .expect("an answer in time")
                .expect("read");
            answer
        }
    };
    let answer = ask("GET /check HTTP/1.0\r\nHost: imagersync\r\n\r\n".into()).await;
    let check = RawAnswer::parse(&answer).expect("an answer to GET /check");
    assert_eq!(check.status, 200, "{}", check.head);

    // A sync takes a while: the half-close arrives long before the answer is ready.
    let body = serde_json::to_vec(&json!({"rsync_config": {
        "source": pair.src_ref("team/app:v1"),
        "target": pair.dst_ref("team/app:v1"),
    }}))
    .unwrap();
    let request = format!(
        "POST {RSYNC} HTTP/1.1\r\nHost: imagersync\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        admin_basic(),
        body.len(),
        String::from_utf8(body).unwrap()
    );
    let answer = ask(request).await;
    let answer = RawAnswer::parse(&answer).expect("an answer to the half-closed sync");
    assert_eq!(answer.status, 200, "{}\n{}", answer.head, answer.body);
    let json = answer.json();
    assert_eq!(
        json["rsync_data"]["rsync_status"],
        json!("successfully"),
        "{json}"
    );
    skopeo::assert_landed(&pair.dst, "team/app:v1", &pushed).await;
}

// ---------------------------------------------------------------------------------------
// References as the reference grammar reads them.

/// A TCP relay on `[::1]:0` to `upstream` (`127.0.0.1:PORT`): the registry reached over an
/// IPv6 literal (docker-registry itself is started on 127.0.0.1 by the rig).
async fn ipv6_relay(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("bind [::1] (IPv6 loopback needed)");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    format!("[::1]:{}", addr.port())
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_literal_hosts_and_255_character_repositories_are_accepted() {
    let (src_pass, dst_pass) = (random_password("src"), random_password("dst"));
    let (src, dst) = tokio::join!(
        Registry::start_htpasswd("puller", &src_pass),
        Registry::start_htpasswd("pusher", &dst_pass),
    );
    let relay = ipv6_relay(src.host()).await;
    let config = ServiceConfig::new()
        .registry("src", &src)
        .entry("src-v6", &relay, src.creds().cloned())
        .registry("dst", &dst);
    let pair = Pair {
        service: Service::start(&config).await,
        src,
        dst,
    };
    let image = Image::random(Format::Oci, &[64 * KIB]);
    let pushed = pair.src.push_image("team/app", "v1", &image).await;

    // An IPv6 literal source, listed in the config: synced.
    let (status, answer) = pair
        .service
        .sync(
            &format!("{relay}/team/app:v1"),
            &pair.dst_ref("team/app:v6"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    skopeo::assert_landed(&pair.dst, "team/app:v6", &pushed).await;

    // Not listed: the same allow-list as any internal address (403), not a grammar 400.
    let (status, answer) = pair
        .service
        .sync("[::1]:1/team/app:v1", &pair.dst_ref("team/app:x"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let error = answer["rsync_data"]["rsync_error"].as_str().unwrap();
    assert!(
        error.contains("[::1]:1") && error.contains("not allowed"),
        "{error}"
    );

    // A repository name of exactly 255 characters: synced (checked at the registry
    // itself: skopeo's own parser still counts the host into the 255).
    let long = "a".repeat(255);
    let (status, answer) = pair
        .service
        .sync(
            &pair.src_ref("team/app:v1"),
            &pair.dst_ref(&format!("{long}:v1")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let creds = pair.dst_creds();
    let landed = reqwest::Client::new()
        .head(format!("{}/v2/{long}/manifests/v1", pair.dst.url()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .basic_auth(&creds.user, Some(&creds.pass))
        .send()
        .await
        .unwrap();
    assert_eq!(landed.status(), StatusCode::OK);
    assert_eq!(
        landed.headers()["docker-content-digest"].to_str().unwrap(),
        pushed.digest
    );

    // What the grammar refuses stays refused (400), before any registry is asked.
    for bad in [
        format!("{}/{}:v1", pair.src.host(), "a".repeat(256)),
        "[::1:5000/team/app:v1".to_owned(),
        "[zz::1]:5000/team/app:v1".to_owned(),
        "[::1]x/team/app:v1".to_owned(),
    ] {
        let (status, answer) = pair.service.sync(&bad, &pair.dst_ref("team/app:bad")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
    }
}

// ---------------------------------------------------------------------------------------
// Webhooks to internal addresses.

/// An asynchronous sync (from a source that fails at once) with `callback_url`.
fn job_with_callback(callback: &str) -> Value {
    json!({"async": true, "callback_url": callback, "rsync_config": {
        "source": "127.0.0.1:1/team/app:v1", "target": "127.0.0.1:1/team/copy:v1"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_to_loopback_are_refused_unless_listed() {
    let receiver = WebhookReceiver::start_on("127.0.0.2", &[]).await;
    let port = receiver
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/hook")
        .to_owned();
    let config = ServiceConfig {
        retries: 0,
        callback_allowed_hosts: vec!["127.0.0.2".into()],
        ..ServiceConfig::new().entry("dead", "127.0.0.1:1", None)
    };
    let service = Service::start(&config).await;
    for callback in [
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.3:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
    ] {
        let (status, answer) = service
            .post_json(Some(&admin()), &job_with_callback(&callback))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{callback}: {answer}");
        let error = answer["rsync_data"]["rsync_error"]
            .as_str()
            .unwrap_or_default();
        assert!(
            error.contains("internal") && error.contains("callback_allowed_hosts"),
            "{callback}: {error}"
        );
    }
    let (status, job) = service
        .post_json(Some(&admin()), &job_with_callback(&receiver.url()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.deliveries().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the listed receiver got nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = receiver.deliveries();
    assert_eq!(delivered.len(), 1, "only the listed callback was called");
    let sent: Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert_eq!(sent["id"], job["id"]);
}

/// Receives webhooks on `argv[1]:argv[2]`, appending `path body` lines to `argv[3]`.
const RECEIVER_PY: &str = r#"
import sys, http.server
host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        with open(log, 'ab') as f:
            f.write(self.path.encode() + b' ' + body.replace(b'\n', b' ') + b'\n')
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((host, port), H).serve_forever()
"#;

/// Accepts connections on 127.0.0.1:argv[1] and never answers: a source that keeps a
/// job running until the service's idle timeout.
const TARPIT_PY: &str = r#"
import sys, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(16)
held = []
while True:
    held.append(s.accept())
"#;

/// Everything inside a fresh network and mount namespace: its own `lo` carrying the
/// metadata address, a private network and a "public" documentation address, its own
/// /etc/hosts (bind-mounted), the receivers, the service; nothing can leave the machine.
const NAMESPACE_SH: &str = r#"
set -eu
D="$1"; BIN="$2"
ip link set lo up
for a in 169.254.169.254 10.1.2.3 10.9.9.9 198.51.100.7; do ip addr add "$a/32" dev lo; done
mount --bind "$D/hosts" /etc/hosts
python3 "$D/receiver.py" 169.254.169.254 80 "$D/metadata.log" &
python3 "$D/receiver.py" 10.1.2.3 8080 "$D/listed.log" &
python3 "$D/receiver.py" 10.9.9.9 8080 "$D/unlisted.log" &
python3 "$D/receiver.py" 198.51.100.7 8080 "$D/public.log" &
python3 "$D/tarpit.py" 7001 &
# Every listener up before anything is asked of the service (the tarpit must hold jobs).
python3 - <<'PY'
import socket, time
for host, port in [("169.254.169.254", 80), ("10.1.2.3", 8080), ("10.9.9.9", 8080),
                   ("198.51.100.7", 8080), ("127.0.0.1", 7001)]:
    for _ in range(300):
        try:
            socket.create_connection((host, port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit(f"{host}:{port} never listened")
PY
"$BIN" --address 127.0.0.1:18080 --configFile "$D/config.yaml" > "$D/service.out" 2>&1 &
i=0; until curl -sf http://127.0.0.1:18080/check > /dev/null; do i=$((i+1)); [ $i -lt 200 ] || exit 3; sleep 0.1; done
post() {
  curl -s -o "$D/$1.json" -w '%{http_code}' -u admin:adminpw -H 'Content-Type: application/json' \
    -d "{\"async\":true,\"callback_url\":\"$2\",\"rsync_config\":{\"source\":\"127.0.0.1:7001/team/app:v1\",\"target\":\"127.0.0.1:7001/team/copy:v1\"}}" \
    http://127.0.0.1:18080/v1/image/rsync > "$D/$1.code"
}
post metadata http://169.254.169.254/latest/meta-data
post unlisted http://10.9.9.9:8080/hook
post listed http://10.1.2.3:8080/hook
post rebound http://hook.test:8080/hook
# Between submit and delivery the name moves inside (the job waits on the tarpit).
echo "10.9.9.9 hook.test" > "$D/hosts"
for job in listed rebound; do
  id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['id'])" "$D/$job.json")
  i=0
  until curl -s -u admin:adminpw "http://127.0.0.1:18080/v1/image/rsync/jobs/$id" > "$D/$job.final.json" \
      && grep -q '"callback":{' "$D/$job.final.json"; do
    i=$((i+1)); [ $i -lt 600 ] || exit 4; sleep 0.1
  done
done
"#;

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_to_internal_networks_and_rebound_names_are_refused_in_a_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("receiver.py"), RECEIVER_PY).unwrap();
    std::fs::write(d.join("tarpit.py"), TARPIT_PY).unwrap();
    std::fs::write(d.join("run.sh"), NAMESPACE_SH).unwrap();
    std::fs::write(
        d.join("hosts"),
        "127.0.0.1 localhost\n198.51.100.7 hook.test\n",
    )
    .unwrap();
    let config = json!({
        "config": {"tools": {"github": crate::common::service::TOOLS_LINK}},
        "rsyncserver": {
            "logfile": d.join("rsync_analysis.log").display().to_string(),
            "auth": {"admin": "adminpw"},
            "jobs": {
                "database": d.join("jobs.sqlite3").display().to_string(),
                "callback_allowed_hosts": ["10.1.2.0/24"],
            },
            "rsyncconfig": {
                "auth": {"tarpit": {"registry": "127.0.0.1:7001", "insecure": true}},
                "task": {"retries": 0, "idle_timeout_seconds": 3, "connect_timeout_seconds": 3},
            },
        },
    });
    let config_path = d.join("config.yaml");
    std::fs::write(&config_path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    std::fs::set_permissions(
        &config_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // A PID namespace too: when the script ends, every process it started dies with it.
    let log = std::fs::File::create(d.join("script.log")).unwrap();
    let status = tokio::process::Command::new("timeout")
        .args([
            "120",
            "unshare",
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-x",
        ])
        .arg(d.join("run.sh"))
        .arg(d)
        .arg(crate::common::service::BIN)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .status()
        .await
        .expect("run unshare (util-linux) as root");
    let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    assert!(
        status.success(),
        "namespace script failed: {status:?}\n{}\nservice:\n{}",
        read("script.log"),
        read("service.out")
    );
    let json_of =
        |name: &str| -> Value { serde_json::from_str(&read(name)).unwrap_or(Value::Null) };

    // Refused at submit: the metadata address and an unlisted private one.
    for refused in ["metadata", "unlisted"] {
        assert_eq!(
            read(&format!("{refused}.code")),
            "400",
            "{refused}: {}",
            read(&format!("{refused}.json"))
        );
        let error = json_of(&format!("{refused}.json"))["rsync_data"]["rsync_error"].to_string();
        assert!(
            error.contains("callback_allowed_hosts"),
            "{refused}: {error}"
        );
        assert_eq!(read(&format!("{refused}.log")), "", "{refused} was called");
    }
    // Listed by its network: delivered to the receiver in the namespace.
    assert_eq!(read("listed.code"), "202", "{}", read("listed.json"));
    let listed = json_of("listed.final.json");
    assert_eq!(listed["callback"]["delivered"], json!(true), "{listed}");
    assert!(
        read("listed.log").starts_with("/hook "),
        "{}",
        read("listed.log")
    );
    // Public at submit, internal at delivery: refused then, recorded in the job.
    assert_eq!(read("rebound.code"), "202", "{}", read("rebound.json"));
    let rebound = json_of("rebound.final.json");
    assert_eq!(rebound["callback"]["refused"], json!(true), "{rebound}");
    assert_eq!(rebound["callback"]["delivered"], json!(false), "{rebound}");
    assert!(
        rebound["callback"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("10.9.9.9"),
        "{rebound}"
    );
    assert_eq!(
        read("public.log"),
        "",
        "the rebound name was called at its old address"
    );
    assert_eq!(
        read("unlisted.log"),
        "",
        "the rebound name was called at its new address"
    );
}
