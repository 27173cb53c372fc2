//! A real `docker-registry serve` process on 127.0.0.1, one per test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::net::free_port;
use super::process::Owned;
use super::tls::TestCa;
use super::token_issuer::{self, TokenIssuer};
use super::tools::{DOCKER_REGISTRY, HTPASSWD};

/// User name and password for a registry or the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// User name.
    pub user: String,
    /// Password.
    pub pass: String,
}

impl Creds {
    /// Builds credentials from two string slices.
    pub fn new(user: &str, pass: &str) -> Creds {
        Creds {
            user: user.to_string(),
            pass: pass.to_string(),
        }
    }

    /// `user:pass`, as skopeo's `--creds` wants it.
    pub fn joined(&self) -> String {
        format!("{}:{}", self.user, self.pass)
    }
}

/// A running reference registry with its own storage, config and log in a temp dir.
/// Dropping it kills and reaps the process (and prints its log tail if the test failed).
pub struct Registry {
    process: Owned,
    port: u16,
    creds: Option<Creds>,
    dir: TempDir,
    /// Serves HTTPS (a test CA's certificate, or `http.tls` in the extra config).
    tls: bool,
    /// A `--cert-dir` for skopeo (client certificate of a registry that requires one).
    oracle_cert_dir: Option<PathBuf>,
}

/// How many ports are tried before giving up on a bind collision.
const START_ATTEMPTS: usize = 5;
/// How long one start may take until `/v2/` answers.
const START_TIMEOUT: Duration = Duration::from_secs(15);

impl Registry {
    /// A registry that anyone may pull from and push to.
    pub async fn start_anonymous() -> Registry {
        Self::start(None).await
    }

    /// A registry with htpasswd (bcrypt) auth for one user; anonymous requests get 401.
    pub async fn start_htpasswd(user: &str, pass: &str) -> Registry {
        Self::start(Some(Creds::new(user, pass))).await
    }

    /// A registry in token mode: it trusts bearer tokens from `issuer`, which grants
    /// everything to `user:pass`. Anonymous requests get a Bearer challenge.
    pub async fn start_token(user: &str, pass: &str, issuer: &TokenIssuer) -> Registry {
        Self::start_with(Some(Creds::new(user, pass)), Some(issuer)).await
    }

    /// A registry with extra config: `extra_yaml` is merged key by key into the generated
    /// config (e.g. `storage: {maintenance: {readonly: {enabled: true}}}` or a
    /// `validation:` section). `creds` adds htpasswd auth as [`Registry::start_htpasswd`].
    /// With `http.tls.certificate` it serves HTTPS; with `http.tls.clientcas` it requires
    /// client certificates, and is ready once it listens (the probe has none).
    pub async fn start_configured(creds: Option<Creds>, extra_yaml: &str) -> Registry {
        Self::start_full(creds, None, extra_yaml).await
    }

    /// A registry (htpasswd when `creds` is given) that stores its data in `storage`
    /// instead of its temp dir, e.g. on a small [`super::tmpfs::Tmpfs`] that fills up.
    pub async fn start_on_storage(creds: Option<Creds>, storage: &Path) -> Registry {
        let yaml = format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n",
            storage.display()
        );
        Self::start_full(creds, None, &yaml).await
    }

    /// A registry serving HTTPS with a certificate for 127.0.0.1 issued by `ca`.
    pub async fn start_tls(ca: &TestCa) -> Registry {
        Self::start_full_tls(None, None, "", Some(ca)).await
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, or `https://` for a TLS registry.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The credentials this registry accepts, `None` for an anonymous one.
    pub fn creds(&self) -> Option<&Creds> {
        self.creds.as_ref()
    }

    /// Process id of the registry process itself.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A folder of `*.cert` + `*.key` (and `*.crt`) skopeo uses to reach this registry,
    /// for one that requires client certificates.
    pub fn set_oracle_cert_dir(&mut self, dir: PathBuf) {
        self.oracle_cert_dir = Some(dir);
    }

    /// The folder set by [`Registry::set_oracle_cert_dir`].
    pub fn oracle_cert_dir(&self) -> Option<&Path> {
        self.oracle_cert_dir.as_deref()
    }

    /// Everything the registry has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Replaces the htpasswd user of an htpasswd registry (a password rotation); the
    /// registry reloads the file when it changes.
    pub fn rotate_htpasswd(&mut self, creds: Creds) {
        let path = self.dir.path().join("htpasswd");
        assert!(path.exists(), "rotate_htpasswd: not an htpasswd registry");
        write_htpasswd(&path, &creds);
        self.creds = Some(creds);
    }

    /// Path of the registry's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    async fn start(creds: Option<Creds>) -> Registry {
        Self::start_with(creds, None).await
    }

    async fn start_with(creds: Option<Creds>, issuer: Option<&TokenIssuer>) -> Registry {
        Self::start_full(creds, issuer, "").await
    }

    async fn start_full(
        creds: Option<Creds>,
        issuer: Option<&TokenIssuer>,
        extra_yaml: &str,
    ) -> Registry {
        Self::start_full_tls(creds, issuer, extra_yaml, None).await
    }

    async fn start_full_tls(
        creds: Option<Creds>,
        issuer: Option<&TokenIssuer>,
        extra_yaml: &str,
        ca: Option<&TestCa>,
    ) -> Registry {
        let exe = DOCKER_REGISTRY.path();
        let dir = tempfile::Builder::new()
            .prefix("imagersync-registry-")
            .tempdir()
            .expect("tempdir");
        let tls_yaml = match ca {
            Some(ca) => {
                let (cert, key) = ca.server_cert("127.0.0.1");
                let (cert_path, key_path) =
                    (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                std::fs::write(&cert_path, cert).expect("write tls cert");
                std::fs::write(&key_path, key).expect("write tls key");
                format!(
                    "http:\n  tls:\n    certificate: {}\n    key: {}\n",
                    cert_path.display(),
                    key_path.display()
                )
            }
            None => String::new(),
        };
        let extra_yaml = merge_yaml(&tls_yaml, extra_yaml);
        let (tls, client_auth) = tls_of(&extra_yaml);
        let auth = match (&creds, issuer) {
            (_, Some(issuer)) => {
                let bundle = dir.path().join("token-cert.pem");
                std::fs::write(&bundle, issuer.cert_pem()).expect("write token cert");
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    issuer.realm(),
                    token_issuer::SERVICE,
                    token_issuer::ISSUER,
                    bundle.display()
                )
            }
            (Some(c), None) => {
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, c);
                format!(
                    "auth:\n  htpasswd:\n    realm: imagersync-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            (None, None) => String::new(),
        };
        let log = dir.path().join("registry.log");
        let mut failures = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let config = dir.path().join("config.yml");
            let yaml = merge_yaml(&(config_yaml(dir.path(), port) + &auth), &extra_yaml);
            std::fs::write(&config, yaml).expect("write registry config");
            let mut cmd = Command::new(&exe);
            cmd.arg("serve").arg(&config).current_dir(dir.path());
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(key);
                }
            }
            let mut process = Owned::spawn(&format!("docker-registry :{port}"), cmd, &log, &log);
            match wait_ready(&mut process, port, &log, tls, client_auth).await {
                Ok(()) => {
                    return Registry {
                        process,
                        port,
                        creds,
                        dir,
                        tls,
                        oracle_cert_dir: None,
                    }
                }
                Err(e) => failures.push_str(&format!("{e}\n{}", process.log_tail(20))),
            }
        }
        panic!("docker-registry did not start after {START_ATTEMPTS} attempts:\n{failures}");
    }
}

/// Whether a registry config serves HTTPS (`http.tls.certificate`) and whether it requires
/// client certificates (`http.tls.clientcas`).
fn tls_of(yaml: &str) -> (bool, bool) {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap_or_default();
    let tls = &value["http"]["tls"];
    (!tls["certificate"].is_null(), !tls["clientcas"].is_null())
}

/// Waits until the registry has bound its port (it logs `listening on`) and `GET /v2/`
/// answers 200, or 401 in auth mode; a registry that requires client certificates is
/// ready once bound. Errors when it exits or takes too long.
async fn wait_ready(
    process: &mut Owned,
    port: u16,
    log: &Path,
    tls: bool,
    client_auth: bool,
) -> Result<(), String> {
    // Readiness only: the certificate itself is what the tests check.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("readiness client");
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/v2/");
    let deadline = Instant::now() + START_TIMEOUT;
    let listening = format!("listening on 127.0.0.1:{port}");
    while Instant::now() < deadline {
        if let Some(status) = process.exited() {
            return Err(format!(
                "docker-registry on port {port} exited with {status}"
            ));
        }
        let bound = std::fs::read_to_string(log)
            .map(|t| t.contains(&listening))
            .unwrap_or(false);
        if bound && client_auth {
            return Ok(());
        }
        if bound {
            if let Ok(resp) = client.get(&url).send().await {
                if matches!(resp.status().as_u16(), 200 | 401) {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!(
        "docker-registry on port {port} not ready after {START_TIMEOUT:?}"
    ))
}

/// The registry's config without auth: filesystem storage in `dir`, deletes enabled,
/// plain HTTP on 127.0.0.1:`port`.
fn config_yaml(dir: &Path, port: u16) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: imagersync-test-secret\n",
        data = dir.join("data").display(),
    )
}

/// `base` with `extra` merged in: mappings key by key, anything else replaced.
fn merge_yaml(base: &str, extra: &str) -> String {
    use serde_yaml_ng::Value;
    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Mapping(into), Value::Mapping(from)) => {
                for (k, v) in from {
                    match into.get_mut(&k) {
                        Some(existing) => merge(existing, v),
                        None => {
                            into.insert(k, v);
                        }
                    }
                }
            }
            (into, from) => *into = from,
        }
    }
    if extra.trim().is_empty() {
        return base.to_owned();
    }
    if base.trim().is_empty() {
        return extra.to_owned();
    }
    let mut value: Value = serde_yaml_ng::from_str(base).expect("registry config parses");
    let extra: Value = serde_yaml_ng::from_str(extra).expect("extra registry config parses");
    merge(&mut value, extra);
    serde_yaml_ng::to_string(&value).expect("registry config serialises")
}

/// Writes a bcrypt htpasswd file with `htpasswd -Bbn`.
fn write_htpasswd(path: &Path, creds: &Creds) {
    let out = Command::new(HTPASSWD.path())
        .args(["-Bbn", &creds.user, &creds.pass])
        .output()
        .expect("run htpasswd");
    assert!(
        out.status.success(),
        "htpasswd -Bbn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, &out.stdout).expect("write htpasswd file");
}
