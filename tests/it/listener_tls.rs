//! `rsyncserver.tls`: the service's own listener speaks HTTPS (rustls), re-reads its
//! certificate on SIGHUP and when the files change, optionally requires client
//! certificates, and refuses to start with an unusable file.
//!
//! Certificates come from throw-away CAs (rcgen); clients are curl and reqwest, each
//! trusting only the CA a step expects, so "which certificate was served" is visible as
//! "which client can connect".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Certificate, Client, Identity, StatusCode};
use tempfile::TempDir;

use crate::common::net::free_port;
use crate::common::process::Owned;
use crate::common::service::{run_expecting_exit, BIN};
use crate::common::tls::TestCa;
use crate::common::tools::CURL;

/// The service on a free port with `tls:` pointing at files in its temp dir.
struct TlsService {
    process: Owned,
    port: u16,
    dir: TempDir,
}

impl TlsService {
    /// Writes `cert`/`key` (and `client_ca`) to files, starts the service, and waits
    /// until a client trusting `ca` gets 200 from `/check` (with `identity` if given).
    async fn start(
        cert: &(String, String),
        client_ca: Option<&str>,
        ca: &str,
        identity: Option<Identity>,
    ) -> TlsService {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path(), cert);
        let ca_line = match client_ca {
            Some(pem) => {
                std::fs::write(dir.path().join("client-ca.pem"), pem).unwrap();
                format!(
                    "\n    client_ca_file: {}",
                    dir.path().join("client-ca.pem").display()
                )
            }
            None => String::new(),
        };
        let yaml = format!(
            "rsyncserver:\n  logfile: {log}\n  auth: {{admin: adminpw}}\n  tls:\n    cert_file: {c}\n    key_file: {k}{ca_line}\n",
            log = dir.path().join("a.log").display(),
            c = dir.path().join("tls.crt").display(),
            k = dir.path().join("tls.key").display(),
        );
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("--address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--configFile")
            .arg(&config)
            .current_dir(dir.path());
        let mut process = Owned::spawn(
            &format!("imagersync https :{port}"),
            cmd,
            &dir.path().join("stdout.log"),
            &dir.path().join("stderr.log"),
        );
        let service = |process| TlsService { process, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = process.exited() {
                panic!("service exited with {status}:\n{}", process.log_tail(20));
            }
            let client = client(ca, identity.clone());
            if get_check(&client, port).await.is_ok() {
                return service(process);
            }
            assert!(
                Instant::now() < deadline,
                "no HTTPS answer within 60 s:\n{}",
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/check", self.port)
    }

    /// Sends SIGHUP: "re-read the certificate files".
    fn hangup(&self) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(self.process.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill -HUP: {}", std::io::Error::last_os_error());
    }
}

/// Writes a cert/key pair to `tls.crt`/`tls.key` in `dir` the way a certificate manager
/// does: each to a temp name first, then renamed over the old file.
fn write_pair(dir: &Path, (cert, key): &(String, String)) {
    for (name, text) in [("tls.crt", cert), ("tls.key", key)] {
        let tmp: PathBuf = dir.join(format!(".{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A new client (so a new connection) trusting only `ca`, with a client certificate
/// when given.
fn client(ca: &str, identity: Option<Identity>) -> Client {
    let mut builder = Client::builder()
        .tls_certs_only([Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10));
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().expect("client")
}

async fn get_check(client: &Client, port: u16) -> Result<String, String> {
    let resp = client
        .get(format!("https://127.0.0.1:{port}/check"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("status {}", resp.status()));
    }
    resp.text().await.map_err(|e| e.to_string())
}

/// Waits (up to `limit`) until a fresh client trusting `ca` connects; false if never.
async fn eventually_trusted(port: u16, ca: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if get_check(&client(ca, None), port).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new(CURL.path())
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl")
}

/// HTTPS answers curl (`--cacert`) and reqwest with the test CA's certificate; plain
/// HTTP on the same port and a client that does not trust the CA both fail.
#[tokio::test]
async fn the_listener_serves_https_to_curl_and_reqwest() {
    let ca = TestCa::new();
    let service = TlsService::start(&ca.server_cert("127.0.0.1"), None, ca.cert_pem(), None).await;
    let ca_file = service.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();

    let out = curl(&["--cacert", ca_file.to_str().unwrap(), &service.url()]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body, r#"{"status":"healthy"}"#);

    let body = get_check(&client(ca.cert_pem(), None), service.port)
        .await
        .unwrap();
    assert_eq!(body, r#"{"status":"healthy"}"#);

    let plain = format!("http://127.0.0.1:{}/check", service.port);
    let out = curl(&[&plain]);
    assert!(
        !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("healthy"),
        "plain HTTP must not be served on a TLS listener"
    );
    let stranger = TestCa::new();
    assert!(
        get_check(&client(stranger.cert_pem(), None), service.port)
            .await
            .is_err(),
        "a client trusting another CA must not connect"
    );
}

/// A new pair renamed over the files is served to new connections after SIGHUP, while
/// a connection opened before keeps working; swapping back is picked up by the poll
/// alone (no signal).
#[tokio::test]
async fn a_swapped_certificate_is_served_after_sighup_and_after_the_poll() {
    let (old_ca, new_ca) = (TestCa::new(), TestCa::new());
    let old_pair = old_ca.server_cert("127.0.0.1");
    let service = TlsService::start(&old_pair, None, old_ca.cert_pem(), None).await;
    // One client, one pooled keep-alive connection made with the old certificate.
    let kept = client(old_ca.cert_pem(), None);
    get_check(&kept, service.port).await.unwrap();

    write_pair(service.dir.path(), &new_ca.server_cert("127.0.0.1"));
    service.hangup();
    assert!(
        eventually_trusted(service.port, new_ca.cert_pem(), Duration::from_secs(20)).await,
        "new connections never got the new certificate after SIGHUP:\n{}",
        service.process.log_tail(20)
    );
    assert!(
        get_check(&client(old_ca.cert_pem(), None), service.port)
            .await
            .is_err(),
        "a new connection still got the old certificate"
    );
    assert_eq!(
        get_check(&kept, service.port).await.as_deref(),
        Ok(r#"{"status":"healthy"}"#),
        "the connection opened before the swap was dropped"
    );

    // Back to the old pair, no signal: the poll (every 5 s) notices the new inodes.
    write_pair(service.dir.path(), &old_pair);
    assert!(
        eventually_trusted(service.port, old_ca.cert_pem(), Duration::from_secs(30)).await,
        "the poll never picked up the changed files:\n{}",
        service.process.log_tail(20)
    );
    assert!(service
        .process
        .log_tail(40)
        .contains("TLS certificate reloaded"));
}

/// With `client_ca_file`, a client without a certificate is refused during the
/// handshake (curl and reqwest) and one with a certificate that CA issued is served.
#[tokio::test]
async fn with_client_ca_file_a_client_certificate_is_required() {
    let (ca, clients) = (TestCa::new(), TestCa::new());
    let (cert, key) = clients.server_cert("ci-runner");
    let identity = Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
    let service = TlsService::start(
        &ca.server_cert("127.0.0.1"),
        Some(clients.cert_pem()),
        ca.cert_pem(),
        Some(identity.clone()),
    )
    .await;

    assert!(
        get_check(&client(ca.cert_pem(), None), service.port)
            .await
            .is_err(),
        "served a client without a certificate"
    );
    let ca_file = service.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let out = curl(&["--cacert", ca_file.to_str().unwrap(), &service.url()]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("healthy"),
        "curl without a certificate was served"
    );

    // A certificate from another CA is refused too.
    let (cert, key) = TestCa::new().server_cert("intruder");
    let foreign = Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
    assert!(
        get_check(&client(ca.cert_pem(), Some(foreign)), service.port)
            .await
            .is_err()
    );

    let body = get_check(&client(ca.cert_pem(), Some(identity)), service.port)
        .await
        .unwrap();
    assert_eq!(body, r#"{"status":"healthy"}"#);
}

/// An unusable TLS file stops start-up with exit 2 and a message naming the key.
#[test]
fn an_unusable_tls_file_fails_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.server_cert("127.0.0.1");
    let (_, other_key) = ca.server_cert("127.0.0.1");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key, other_key) = (
        file("c.pem", &cert),
        file("k.pem", &key),
        file("o.pem", &other_key),
    );
    let junk = file("junk.pem", "not a PEM file\n");
    let missing = dir.path().join("missing.pem").display().to_string();
    let cases: [(&str, String, &str); 5] = [
        (
            "missing key file",
            format!("cert_file: {cert}, key_file: {missing}"),
            "rsyncserver.tls.key_file",
        ),
        (
            "missing cert file",
            format!("cert_file: {missing}, key_file: {key}"),
            "rsyncserver.tls.cert_file",
        ),
        (
            "key of another cert",
            format!("cert_file: {cert}, key_file: {other_key}"),
            "rsyncserver.tls.key_file",
        ),
        (
            "no PEM in cert file",
            format!("cert_file: {junk}, key_file: {key}"),
            "rsyncserver.tls.cert_file",
        ),
        (
            "no PEM in client CA",
            format!("cert_file: {cert}, key_file: {key}, client_ca_file: {junk}"),
            "rsyncserver.tls.client_ca_file",
        ),
    ];
    for (label, tls, key_name) in cases {
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "rsyncserver: {{logfile: {}, auth: {{admin: adminpw}}, tls: {{{tls}}}}}\n",
                dir.path().join("a.log").display()
            ),
        )
        .unwrap();
        let exit = run_expecting_exit(&config);
        assert_eq!(exit.code, Some(2), "{label}: {exit:?}");
        assert!(
            exit.stderr.contains(key_name),
            "{label}: want {key_name} in {}",
            exit.stderr
        );
    }
}
