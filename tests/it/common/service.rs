//! The service under test: its config file, the binary on a free port, and requests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::net::free_port;
use super::process::Owned;
use super::registry::{Creds, Registry};

/// Path of the service binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_imagersync_service_bin");
/// The link every test config lists under `config.tools`.
pub const TOOLS_LINK: &str = "https://example.com/imagersync";
/// How long one request to the service may take (a sync included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The service user `admin` / `adminpw`.
pub fn admin() -> Creds {
    Creds::new("admin", "adminpw")
}

/// The service user `jenkins` whose password contains a colon: `pa:ss`.
pub fn jenkins() -> Creds {
    Creds::new("jenkins", "pa:ss")
}

/// One entry of `rsyncserver.rsyncconfig.auth`.
#[derive(Debug, Clone)]
pub struct RegistryEntry {
    /// The map key (free text).
    pub key: String,
    /// `host:port` or `host:port/namespace` prefix.
    pub registry: String,
    /// Credentials, `None` for anonymous.
    pub creds: Option<Creds>,
    /// Plain HTTP.
    pub insecure: bool,
}

/// What goes into the service's config file.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Service users (HTTP Basic).
    pub users: Vec<Creds>,
    /// Registry credentials.
    pub registries: Vec<RegistryEntry>,
    /// `task.proc_num`.
    pub proc_num: usize,
    /// `task.retries`.
    pub retries: u32,
    /// `rsyncserver.admins`.
    pub admins: Vec<String>,
    /// `rsyncserver.max_concurrent_syncs`, when set.
    pub max_concurrent_syncs: Option<usize>,
    /// `rsyncserver.jobs.callback_allowed_hosts`.
    pub callback_allowed_hosts: Vec<String>,
    /// `rsyncserver.jobs.max_queued`, when set.
    pub max_queued: Option<usize>,
    /// `rsyncserver.jobs.history_days`, when set.
    pub history_days: Option<u32>,
    /// `rsyncserver.jobs.database`, when set (else the default SQLite file).
    pub job_database: Option<String>,
    /// `rsyncserver.jobs.lease_seconds`, when set.
    pub lease_seconds: Option<u64>,
    /// `rsyncserver.mirrors` entries, as JSON objects.
    pub mirrors: Vec<Value>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            users: vec![admin(), jenkins()],
            registries: Vec::new(),
            proc_num: 5,
            retries: 2,
            admins: Vec::new(),
            max_queued: None,
            history_days: None,
            job_database: None,
            lease_seconds: None,
            max_concurrent_syncs: None,
            callback_allowed_hosts: Vec::new(),
            mirrors: Vec::new(),
        }
    }
}

impl ServiceConfig {
    /// Users `admin` and `jenkins`, no registries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `registry` under `key`, plain HTTP, with the credentials it accepts.
    pub fn registry(self, key: &str, registry: &Registry) -> Self {
        let creds = registry.creds().cloned();
        self.entry(key, &registry.host(), creds)
    }

    /// Adds an entry for the `prefix` (`host:port[/namespace]`), plain HTTP.
    pub fn entry(mut self, key: &str, prefix: &str, creds: Option<Creds>) -> Self {
        self.registries.push(RegistryEntry {
            key: key.to_string(),
            registry: prefix.to_string(),
            creds,
            insecure: true,
        });
        self
    }

    /// The YAML text of the config file, logging to `logfile`.
    pub fn to_yaml(&self, logfile: &Path) -> String {
        let users: serde_json::Map<String, Value> = self
            .users
            .iter()
            .map(|c| (c.user.clone(), json!(c.pass)))
            .collect();
        let auth: serde_json::Map<String, Value> = self
            .registries
            .iter()
            .map(|e| {
                let mut v = json!({"registry": e.registry, "insecure": e.insecure});
                if let Some(c) = &e.creds {
                    v["username"] = json!(c.user);
                    v["password"] = json!(c.pass);
                }
                (e.key.clone(), v)
            })
            .collect();
        let mut doc = json!({
            "config": {"tools": {"github": TOOLS_LINK}},
            "rsyncserver": {
                "logfile": logfile.display().to_string(),
                "auth": users,
                "rsyncconfig": {"auth": auth, "task": {"proc_num": self.proc_num, "retries": self.retries}},
            },
        });
        if !self.admins.is_empty() {
            doc["rsyncserver"]["admins"] = json!(self.admins);
        }
        if !self.callback_allowed_hosts.is_empty() {
            doc["rsyncserver"]["jobs"] =
                json!({"callback_allowed_hosts": self.callback_allowed_hosts});
        }
        if let Some(max) = self.max_concurrent_syncs {
            doc["rsyncserver"]["max_concurrent_syncs"] = json!(max);
        }
        if let Some(max) = self.max_queued {
            doc["rsyncserver"]["jobs"]["max_queued"] = json!(max);
        }
        if let Some(days) = self.history_days {
            doc["rsyncserver"]["jobs"]["history_days"] = json!(days);
        }
        if let Some(database) = &self.job_database {
            doc["rsyncserver"]["jobs"]["database"] = json!(database);
        }
        if let Some(lease) = self.lease_seconds {
            doc["rsyncserver"]["jobs"]["lease_seconds"] = json!(lease);
        }
        if !self.mirrors.is_empty() {
            doc["rsyncserver"]["mirrors"] = json!(self.mirrors);
        }
        serde_yaml_ng::to_string(&doc).expect("config yaml")
    }
}

/// A running `imagersync_service_bin`, killed and reaped when dropped.
pub struct Service {
    process: Owned,
    port: u16,
    dir: TempDir,
    client: Client,
    args: Vec<String>,
    /// Environment variables set for the service process only (e.g. `PATH`).
    env: Vec<(String, String)>,
}

/// How long start-up may take until `GET /check` answers 200.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Service {
    /// Writes `config` to a temp dir (log file in `logs/` there, not created yet) and
    /// starts the service on a free port; returns once `GET /check` is 200.
    pub async fn start(config: &ServiceConfig) -> Service {
        Self::start_with_args(config, &[]).await
    }

    /// Like [`Service::start`], with more command-line flags (e.g. `--log-format json`).
    pub async fn start_with_args(config: &ServiceConfig, args: &[&str]) -> Service {
        // It holds passwords: owner-only, as an operator would keep it.
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Self::start_with(|logfile| config.to_yaml(logfile), 0o600, args, Vec::new()).await
    }

    /// Like [`Service::start`] with a hand-written config: `rsyncserver_yaml` is the body
    /// of the `rsyncserver:` section (indented by two spaces, without `logfile`), for keys
    /// [`ServiceConfig`] does not write; the file gets mode `mode`.
    pub async fn start_raw(rsyncserver_yaml: &str, mode: u32) -> Service {
        let text = |logfile: &Path| {
            format!(
                "rsyncserver:\n  logfile: {}\n{rsyncserver_yaml}",
                logfile.display()
            )
        };
        Self::start_with(text, mode, Vec::new(), Vec::new()).await
    }

    /// [`Service::start_raw`] with extra environment variables for the service process
    /// only (the test process's own environment is left alone).
    pub async fn start_raw_env(rsyncserver_yaml: &str, env: &[(&str, String)]) -> Service {
        let text = |logfile: &Path| {
            format!(
                "rsyncserver:\n  logfile: {}\n{rsyncserver_yaml}",
                logfile.display()
            )
        };
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Self::start_with(text, 0o600, Vec::new(), env).await
    }

    /// [`Service::start_raw_env`] on `port`, in one attempt: for a service whose address
    /// must be known before it starts (a registry's notification endpoint points at it).
    /// An error when the port was taken meanwhile; the caller tries another.
    pub async fn try_start_raw_on(
        port: u16,
        rsyncserver_yaml: &str,
        env: &[(&str, String)],
    ) -> Result<Service, String> {
        let dir = tempfile::Builder::new()
            .prefix("imagersync-service-")
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("config.yaml");
        let logfile = dir.path().join("logs").join("rsync_analysis.log");
        let text = format!(
            "rsyncserver:\n  logfile: {}\n{rsyncserver_yaml}",
            logfile.display()
        );
        std::fs::write(&config_path, text).expect("write service config");
        std::fs::set_permissions(
            &config_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod config");
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let (process, port) = launch_on(dir.path(), &client, &[], &env, port).await?;
        Ok(Service {
            process,
            port,
            dir,
            client,
            args: Vec::new(),
            env,
        })
    }

    /// Writes the config made by `config_text(logfile)` with file mode `mode` and starts
    /// the service on a free port; returns once `GET /check` is 200.
    async fn start_with(
        config_text: impl Fn(&Path) -> String,
        mode: u32,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Service {
        let dir = tempfile::Builder::new()
            .prefix("imagersync-service-")
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("config.yaml");
        let logfile = dir.path().join("logs").join("rsync_analysis.log");
        std::fs::write(&config_path, config_text(&logfile)).expect("write service config");
        std::fs::set_permissions(
            &config_path,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .expect("chmod config");
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client");
        let (process, port) = launch(dir.path(), &client, &args, &env).await;
        Service {
            process,
            port,
            dir,
            client,
            args,
            env,
        }
    }

    /// Kills the service at once (SIGKILL: no drain, as a crash or an OOM kill would)
    /// and starts it again with the same config and working directory, so with the same
    /// job database and analysis log, on a new port.
    pub async fn crash_and_restart(&mut self) {
        self.process.kill();
        let (process, port) = launch(self.dir.path(), &self.client, &self.args, &self.env).await;
        self.process = process;
        self.port = port;
    }

    /// Stops the service (SIGKILL), replaces the body of its `rsyncserver:` section (as
    /// [`Service::start_raw`] takes it) and starts it again in the same working directory,
    /// so with the same job database, on a new port.
    pub async fn restart_raw(&mut self, rsyncserver_yaml: &str) {
        self.process.kill();
        let logfile = self.logfile();
        let text = format!(
            "rsyncserver:\n  logfile: {}\n{rsyncserver_yaml}",
            logfile.display()
        );
        std::fs::write(self.dir.path().join("config.yaml"), text).expect("rewrite config");
        let (process, port) = launch(self.dir.path(), &self.client, &self.args, &self.env).await;
        self.process = process;
        self.port = port;
    }

    /// Rewrites the config file in place (as an operator edits it), the body of its
    /// `rsyncserver:` section as [`Service::start_raw`] takes it; the running service
    /// reads it on [`Service::hangup`].
    pub fn rewrite_raw(&self, rsyncserver_yaml: &str) {
        let text = format!(
            "rsyncserver:\n  logfile: {}\n{rsyncserver_yaml}",
            self.logfile().display()
        );
        std::fs::write(self.dir.path().join("config.yaml"), text).expect("rewrite config");
    }

    /// Sends SIGHUP, as `systemctl reload` does: "re-read the config".
    pub fn hangup(&self) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill -HUP: {}", std::io::Error::last_os_error());
    }

    /// Waits until stdout holds `count` lines containing `needle` (the event, not a
    /// sleep); returns the last such line. Panics after `limit` with the output, or at
    /// once if the process exited.
    pub async fn wait_stdout(&mut self, needle: &str, count: usize, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.stdout();
            let lines: Vec<&str> = out.lines().filter(|l| l.contains(needle)).collect();
            if lines.len() >= count {
                return lines[count - 1].to_owned();
            }
            if let Some(status) = self.process.exited() {
                panic!("service exited with {status} while waiting for {needle:?}:\n{out}");
            }
            assert!(
                Instant::now() < deadline,
                "no {count} lines with {needle:?} on stdout after {limit:?}:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the service again after it exited on its own (a graceful stop), with the
    /// same config and working directory, on a new port.
    pub async fn start_again(&mut self) {
        let status = self.process.exited();
        assert!(
            status.is_some(),
            "start_again: the service is still running"
        );
        let (process, port) = launch(self.dir.path(), &self.client, &self.args, &self.env).await;
        self.process = process;
        self.port = port;
    }

    /// The job database (the config's default, `data/jobs.sqlite3` in the working
    /// directory).
    pub fn job_database(&self) -> PathBuf {
        self.dir.path().join("data/jobs.sqlite3")
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// An HTTP client with a generous timeout.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Process id of the service.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The status `GET /check` answers within 5 s (an error if it does not answer).
    pub async fn health(&self) -> Result<StatusCode, reqwest::Error> {
        let resp = self
            .client
            .get(self.url("/check"))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        Ok(resp.status())
    }

    /// Kills the service at once (SIGKILL, `kill -9`: no drain) and reaps it; start it
    /// again with [`Service::start_again`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends SIGTERM, as systemd or a container runtime does to stop the service.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill -TERM {}: {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_timeout(timeout)
    }

    /// The analysis log file named in the config (under `logs/`, created by the service).
    pub fn logfile(&self) -> PathBuf {
        self.dir.path().join("logs").join("rsync_analysis.log")
    }

    /// The analysis log, one parsed JSON value per line; empty if the file is absent.
    pub fn logfile_entries(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.logfile()).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("logfile line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Raw text of the analysis log ("" if absent).
    pub fn logfile_text(&self) -> String {
        std::fs::read_to_string(self.logfile()).unwrap_or_default()
    }

    /// Everything the service printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Everything the service printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// POSTs `{"rsync_config":{"source","target"}}` to `/v1/image/rsync` as `admin`
    /// and returns the status and the JSON answer. The exchange is printed (the test
    /// harness shows it when the test fails, or with `--nocapture`).
    pub async fn sync(&self, source: &str, target: &str) -> (StatusCode, Value) {
        let body = json!({"rsync_config": {"source": source, "target": target}});
        let (status, answer) = self.post_json(Some(&admin()), &body).await;
        let pretty = serde_json::to_string_pretty(&answer).unwrap_or_default();
        eprintln!("sync {source} -> {target}: HTTP {status}\n{pretty}");
        (status, answer)
    }

    /// Sends `method path` (no body) with Basic `creds` and parses the JSON answer.
    pub async fn call_json(
        &self,
        method: reqwest::Method,
        path: &str,
        creds: &Creds,
    ) -> (StatusCode, Value) {
        let resp = self
            .client
            .request(method.clone(), self.url(path))
            .basic_auth(&creds.user, Some(&creds.pass))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        json_of(resp).await
    }

    /// POSTs a JSON body (`application/json`) to `/v1/image/rsync` and parses the answer.
    pub async fn post_json(&self, creds: Option<&Creds>, body: &Value) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let resp = self
            .post_raw("/v1/image/rsync", creds, Some("application/json"), bytes)
            .await;
        json_of(resp).await
    }

    /// POSTs raw bytes to `path` with Basic auth and a content type when given.
    /// `curl -u U:P -d BODY` sends [`CURL_CONTENT_TYPE`].
    pub async fn post_raw(
        &self,
        path: &str,
        creds: Option<&Creds>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Response {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(c) = creds {
            req = req.basic_auth(&c.user, Some(&c.pass));
        }
        req.send().await.expect("POST to the service")
    }
}

/// The content type `curl -d` sends; CI pipelines post JSON with it (design §1).
pub const CURL_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// Status and JSON body of a response; panics with the body text if it is not JSON.
pub async fn json_of(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("response body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {status}: body is not JSON ({e}): {text}"));
    (status, value)
}

/// Starts the binary with `dir/config.yaml` in `dir` on a free port (trying other ports
/// if one is taken meanwhile); returns once `GET /check` is 200.
async fn launch(
    dir: &Path,
    client: &Client,
    args: &[String],
    env: &[(String, String)],
) -> (Owned, u16) {
    let mut failures = String::new();
    for _ in 0..5 {
        match launch_on(dir, client, args, env, free_port()).await {
            Ok(started) => return started,
            Err(e) => failures.push_str(&e),
        }
    }
    panic!("imagersync_service_bin did not start:\n{failures}");
}

/// One attempt of [`launch`] on `port`.
async fn launch_on(
    dir: &Path,
    client: &Client,
    args: &[String],
    env: &[(String, String)],
    port: u16,
) -> Result<(Owned, u16), String> {
    let config_path = dir.join("config.yaml");
    let mut cmd = Command::new(BIN);
    cmd.arg("--address")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--configFile")
        .arg(&config_path)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let (out, err) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let mut process = Owned::spawn(&format!("imagersync :{port}"), cmd, &out, &err);
    match wait_ready(client, &mut process, port).await {
        Ok(()) => Ok((process, port)),
        Err(e) => Err(format!("{e}\n{}", process.log_tail(20))),
    }
}

/// Waits until `GET /check` on `port` answers 200 (within 20 s); an error if `process`
/// exits first or the time runs out.
pub async fn wait_ready(client: &Client, process: &mut Owned, port: u16) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/check");
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = process.exited() {
            return Err(format!(
                "imagersync_service_bin on port {port} exited with {status}"
            ));
        }
        if let Ok(resp) = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            if resp.status() == StatusCode::OK {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!(
        "imagersync_service_bin on port {port}: GET /check not 200 after {START_TIMEOUT:?}"
    ))
}

/// Output of a start-up that was expected to fail.
#[derive(Debug)]
pub struct Exit {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

/// Runs the binary with `--configFile config_path` on a free port and waits for it to
/// exit; panics if it is still running after 10 s (it must refuse to start).
pub fn run_expecting_exit(config_path: &Path) -> Exit {
    run_expecting_exit_on(config_path, &format!("127.0.0.1:{}", free_port()))
}

/// [`run_expecting_exit`] with `--address address`.
pub fn run_expecting_exit_on(config_path: &Path, address: &str) -> Exit {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(BIN);
    cmd.arg("--address")
        .arg(address)
        .arg("--configFile")
        .arg(config_path)
        .current_dir(dir.path());
    let (out, err) = (dir.path().join("stdout.log"), dir.path().join("stderr.log"));
    let mut process = Owned::spawn("imagersync (expected to exit)", cmd, &out, &err);
    let status = process.wait_timeout(Duration::from_secs(60));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let exit = Exit {
        code: status.and_then(|s| s.code()),
        stdout: read(&out),
        stderr: read(&err),
    };
    assert!(
        status.is_some(),
        "service kept running with config {}: {exit:?}",
        config_path.display()
    );
    exit
}
