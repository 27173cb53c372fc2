//! The YAML config file (seed layout): what it holds, how it is loaded and checked.
//!
//! Loading fails with one [`ConfigError`] that names the file and the key, so start-up
//! can stop with a single readable line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::Secret;

pub mod cert_dir;
pub mod checks;
pub mod diff;
pub mod mirrors;
pub mod names;

pub use cert_dir::{read_cert_dir, CertDir, ClientPair};
pub use diff::ConfigChanges;
pub use mirrors::{MirrorConfig, OneOrMany, Schedule, TagFilters};

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Site settings shown on `GET /`.
    #[serde(default)]
    pub config: SiteConfig,
    /// The service itself: users, log file, registry credentials, task settings.
    pub rsyncserver: ServerConfig,
}

/// Settings shown on the home page.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Named links (name → URL) listed on `GET /`.
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
}

/// The `rsyncserver` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Analysis log: one JSON line per sync is appended here.
    #[serde(default = "default_logfile")]
    pub logfile: PathBuf,
    /// Service users for HTTP Basic auth: user name → password, in plain text or as a
    /// bcrypt hash (`$2a$`, `$2b$`, `$2y$`, as `htpasswd -nbB` writes).
    pub auth: BTreeMap<String, Secret>,
    /// Per-user limits on what a user may sync from and to; users without an entry are
    /// unrestricted.
    #[serde(default)]
    pub scopes: BTreeMap<String, UserScopeConfig>,
    /// Syncs running at once across the service; a request beyond that gets 503.
    #[serde(default = "default_max_concurrent_syncs")]
    pub max_concurrent_syncs: usize,
    /// Answering 429 to a client address after repeated failed logins.
    #[serde(default)]
    pub login_damping: LoginDampingConfig,
    /// Registry credentials and task settings for the sync engine.
    #[serde(default)]
    pub rsyncconfig: RsyncConfig,
    /// Where jobs are kept and how many may wait.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Users who see and cancel every user's jobs (others see only their own), and
    /// see and start mirrors.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Repositories kept in step with another, on a schedule, by hand and on pushes.
    #[serde(default)]
    pub mirrors: Vec<MirrorConfig>,
    /// Who may post push events (`POST /v1/events/...`) and how pushes are grouped.
    #[serde(default)]
    pub events: EventsConfig,
    /// Serve HTTPS instead of plain HTTP; absent means plain HTTP (behind a proxy).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// The `rsyncserver.tls` section: PEM files for HTTPS on the listener.
///
/// The files are read at start-up, again when they change (polled) and on SIGHUP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// The private key of the leaf certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates, PEM: when set, clients must present a certificate they issued.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// The `rsyncserver.events` section: the push-event endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Service users (of `rsyncserver.auth`) a registry may post events as; any other
    /// user gets 403. Empty: nobody may.
    #[serde(default)]
    pub users: Vec<String>,
    /// How long a push job waits for more pushes of the same tag before it starts
    /// (`2s`): a burst of pushes becomes one copy.
    #[serde(default = "default_events_settle")]
    pub settle: String,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            settle: default_events_settle(),
        }
    }
}

impl EventsConfig {
    /// The parsed `settle`; config loading checked it, so a bad value means a
    /// hand-built config and falls back to the default.
    pub fn settle_duration(&self) -> std::time::Duration {
        humantime::parse_duration(self.settle.trim()).unwrap_or(std::time::Duration::from_secs(2))
    }
}

fn default_events_settle() -> String {
    "2s".into()
}

/// The `rsyncserver.jobs` section: the job store and queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Where jobs are kept: a file path selects the embedded SQLite store (relative to the
    /// working directory, its folder created if missing); a `postgres://` URL selects a
    /// shared PostgreSQL database, which several replicas can use at once. History and
    /// queued jobs survive restarts through it.
    #[serde(default = "default_jobs_database")]
    pub database: JobDatabase,
    /// Seconds a running job's lease in a shared (PostgreSQL) store lasts without a
    /// heartbeat; another replica takes the job over once it lapses. Renewed every third.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// Jobs (synchronous or asynchronous) allowed to wait for a sync slot; one more gets 503.
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
    /// Finished jobs older than this many days are deleted at start-up and daily.
    #[serde(default = "default_history_days")]
    pub history_days: u32,
    /// Internal webhook receivers allowed as `callback_url`: host names, `host:port`, or
    /// CIDR ranges. A callback whose host resolves to a loopback, link-local or private
    /// address is refused unless listed here.
    #[serde(default)]
    pub callback_allowed_hosts: Vec<String>,
    /// The longest a synchronous request waits for a registry's rate limit (Docker Hub's
    /// pull quota under `task.dockerhub_min_remaining`, a 429's `Retry-After`); a longer
    /// wait answers 429 `rate_limited` at once. A caller may send `Prefer: wait=N`
    /// instead. Asynchronous jobs wait as long as the quota asks.
    #[serde(default = "default_sync_wait")]
    pub sync_wait_seconds: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            database: default_jobs_database(),
            lease_seconds: default_lease_seconds(),
            max_queued: default_max_queued(),
            history_days: default_history_days(),
            callback_allowed_hosts: Vec::new(),
            sync_wait_seconds: default_sync_wait(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            logfile: default_logfile(),
            auth: BTreeMap::new(),
            scopes: BTreeMap::new(),
            max_concurrent_syncs: default_max_concurrent_syncs(),
            login_damping: LoginDampingConfig::default(),
            rsyncconfig: RsyncConfig::default(),
            jobs: JobsConfig::default(),
            admins: Vec::new(),
            tls: None,
            mirrors: Vec::new(),
            events: EventsConfig::default(),
        }
    }
}

/// One user's entry in `rsyncserver.scopes`: `registry[/repository path]` prefixes,
/// matched on whole path components. A side that is left out is not restricted.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserScopeConfig {
    /// Prefixes the user may sync from; absent: any source.
    #[serde(default)]
    pub source: Option<Vec<String>>,
    /// Prefixes the user may sync to; absent: any target.
    #[serde(default)]
    pub target: Option<Vec<String>>,
}

/// The `rsyncserver.login_damping` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginDampingConfig {
    /// Failed logins from one client address within the window after which that address
    /// gets 429 until the window has passed; 0 turns damping off.
    #[serde(default = "default_max_failed_logins")]
    pub max_failures: usize,
    /// Length of the sliding window, in seconds.
    #[serde(default = "default_login_window")]
    pub window_seconds: u64,
}

impl Default for LoginDampingConfig {
    fn default() -> Self {
        Self {
            max_failures: default_max_failed_logins(),
            window_seconds: default_login_window(),
        }
    }
}

/// The `rsyncserver.rsyncconfig` section: what the engine needs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RsyncConfig {
    /// Registry credentials; the key names are free, only their values matter.
    #[serde(default)]
    pub auth: BTreeMap<String, RegistryCredential>,
    /// Concurrency and retry settings.
    #[serde(default)]
    pub task: TaskConfig,
    /// Registries (`host[:port]`) the service may contact besides those in `auth`. Empty:
    /// any public host. Not empty: only these and those in `auth`. Internal addresses
    /// (loopback, private, link-local, `localhost`) must always be listed here or in `auth`.
    #[serde(default)]
    pub allowed_registries: Vec<String>,
    /// A Docker `config.json` or containers `auth.json` (`auths`, `credHelpers`,
    /// `credsStore`), used for registries no `auth` entry matches and for entries that give
    /// no credentials of their own. Absent: the service reads none (the CLI `sync` looks
    /// where skopeo and docker look).
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// A Docker `certs.d` folder (`/etc/docker/certs.d`, `/etc/containers/certs.d`): its
    /// `<host[:port]>/` folders hold `*.crt` trust anchors and `*.cert` + `*.key` client
    /// pairs for that registry, with or without an `auth` entry. Default: none.
    #[serde(default)]
    pub certs_d: Option<PathBuf>,
}

/// One registry credential, matched by the longest `registry` or `registry/namespace` prefix.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredential {
    /// `host[:port]` or `host[:port]/namespace` this entry applies to.
    pub registry: String,
    /// User name; absent means anonymous access.
    #[serde(default)]
    pub username: Option<String>,
    /// Password or token for `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The seed's `insecure: true`: try HTTPS without certificate checks, then plain HTTP.
    #[serde(default)]
    pub insecure: bool,
    /// Talk plain HTTP only (credentials then cross the network in clear).
    #[serde(default)]
    pub plain_http: bool,
    /// HTTPS without verifying the certificate (anyone on the path can read and alter).
    #[serde(default)]
    pub tls_skip_verify: bool,
    /// PEM file with extra trust anchors for this registry: CA certificates, or the
    /// registry's own (self-signed) certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Suffix of a Docker credential helper: `docker-credential-NAME get` is asked for
    /// this registry's login (ecr-login, gcr, acr-env, ...).
    #[serde(default)]
    pub credential_helper: Option<String>,
    /// File holding the password (or token) for `username`, re-read when it changes.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An OAuth2 refresh token (Docker's `identitytoken`), exchanged at the token realm.
    #[serde(default)]
    pub identity_token: Option<Secret>,
    /// A bearer token sent as it is (Docker's `registrytoken`).
    #[serde(default)]
    pub registry_token: Option<Secret>,
    /// A folder as skopeo's `--cert-dir` reads it: `*.crt` trust anchors, `*.cert` +
    /// `*.key` client certificate pairs.
    #[serde(default)]
    pub cert_dir: Option<PathBuf>,
    /// Client certificate (PEM, then any intermediates) for registries that require one.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

impl RegistryCredential {
    /// Whether the entry names credentials of its own; one that does not (only TLS or
    /// `insecure` options) takes its login from `auth_file`.
    pub fn has_credentials(&self) -> bool {
        self.username.is_some()
            || self.credential_helper.is_some()
            || self.identity_token.is_some()
            || self.registry_token.is_some()
    }

    /// The client certificate pair of `client_cert_file` / `client_key_file`, if given.
    pub fn client_pair(&self) -> Option<ClientPair> {
        Some(ClientPair {
            cert: self.client_cert_file.clone()?,
            key: self.client_key_file.clone()?,
        })
    }
}

/// The `task` settings of the engine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Blob transfers run at once within one sync; blobs up to 1 MiB go up to four
    /// times as many, never more than `max_transfers`.
    #[serde(default = "default_proc_num")]
    pub proc_num: usize,
    /// How many times a failed blob or manifest transfer is tried again.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Longest wait for a connection to a registry, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Longest a registry may stay silent mid-answer, in seconds; there is no limit on
    /// the total time of a transfer.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Blob transfers at once across all syncs of the service.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: usize,
    /// Copy only index entries of these operating systems (empty: all). Changes the
    /// index digest, since the index is rewritten.
    #[serde(default)]
    pub os: Vec<String>,
    /// Copy only index entries of these architectures, `arch` or `arch/variant` (empty: all).
    #[serde(default)]
    pub arch: Vec<String>,
    /// When Docker Hub says fewer pulls than this remain (`ratelimit-remaining`), new
    /// pulls from it wait instead of running into its 429.
    #[serde(default = "default_dockerhub_min_remaining")]
    pub dockerhub_min_remaining: u64,
    /// Longest a credential helper may take to answer, in seconds; then it is stopped.
    #[serde(default = "default_helper_timeout")]
    pub credential_helper_timeout_seconds: u64,
    /// Copy each image's referrers (signatures, attestations, SBOMs: OCI 1.1 referrers,
    /// the referrers tag schema and cosign's tags) with it; a request may override it.
    #[serde(default = "default_referrers")]
    pub referrers: bool,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            proc_num: default_proc_num(),
            retries: default_retries(),
            max_transfers: default_max_transfers(),
            connect_timeout_seconds: default_connect_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            os: Vec::new(),
            arch: Vec::new(),
            dockerhub_min_remaining: default_dockerhub_min_remaining(),
            credential_helper_timeout_seconds: default_helper_timeout(),
            referrers: default_referrers(),
        }
    }
}

fn default_logfile() -> PathBuf {
    PathBuf::from("logs/rsync_analysis.log")
}
fn default_jobs_database() -> JobDatabase {
    JobDatabase::Sqlite(PathBuf::from("data/jobs.sqlite3"))
}
fn default_lease_seconds() -> u64 {
    30
}

/// `rsyncserver.jobs.database`: which job store, chosen by the value's form.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum JobDatabase {
    /// A file path: the embedded SQLite store.
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL (checked at load): a shared PostgreSQL store.
    Postgres(String),
}

impl From<String> for JobDatabase {
    fn from(value: String) -> Self {
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            JobDatabase::Postgres(value)
        } else {
            JobDatabase::Sqlite(PathBuf::from(value))
        }
    }
}

impl JobDatabase {
    /// What to show in logs: the path, or the URL without its password.
    pub fn redacted(&self) -> String {
        match self {
            JobDatabase::Sqlite(path) => path.display().to_string(),
            JobDatabase::Postgres(url) => match reqwest::Url::parse(url) {
                Ok(mut parsed) => {
                    if parsed.password().is_some() {
                        let _ = parsed.set_password(Some("***"));
                    }
                    parsed.to_string()
                }
                Err(_) => "postgres://(unparsable URL)".into(),
            },
        }
    }

    /// Checks the value; the message says what is wrong and what to write instead.
    fn check(&self) -> Result<(), String> {
        match self {
            JobDatabase::Sqlite(path) => {
                let text = path.to_string_lossy();
                if text.is_empty() {
                    return Err("empty path: name the job database file".into());
                }
                if text.contains("://") {
                    return Err(format!(
                        "{text:?} is neither a file path nor a postgres:// URL (the only database URL accepted)"
                    ));
                }
                Ok(())
            }
            JobDatabase::Postgres(url) => checks::check_postgres_url(url),
        }
    }
}

/// The password never reaches a log through `{:?}`.
impl std::fmt::Debug for JobDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobDatabase::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            JobDatabase::Postgres(_) => f.debug_tuple("Postgres").field(&self.redacted()).finish(),
        }
    }
}
fn default_max_queued() -> usize {
    1000
}
fn default_history_days() -> u32 {
    30
}
fn default_max_concurrent_syncs() -> usize {
    32
}
fn default_max_failed_logins() -> usize {
    10
}
fn default_login_window() -> u64 {
    60
}
fn default_proc_num() -> usize {
    5
}
fn default_retries() -> u32 {
    2
}
fn default_connect_timeout() -> u64 {
    30
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_referrers() -> bool {
    true
}
fn default_max_transfers() -> usize {
    16
}
fn default_dockerhub_min_remaining() -> u64 {
    5
}
fn default_sync_wait() -> u64 {
    60
}

fn default_helper_timeout() -> u64 {
    20
}

/// A config that cannot be used; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("config file {path}: cannot read it: {source} (pass --configFile with a readable YAML file)")]
    Read {
        /// The file that was tried.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The YAML does not parse or does not have the expected shape.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// serde's message, which names the key and line.
        message: String,
    },
    /// A value is present but cannot be used.
    #[error("config file {path}: key {key}: {message}")]
    Invalid {
        /// The file that was read.
        path: PathBuf,
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong with it and what to do.
        message: String,
    },
}

impl Config {
    /// Reads, parses, expands `${VAR}` and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and checks config text; `path` is only used in error messages.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let mut value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        expand_env(&mut value, "").map_err(|(key, var)| {
            invalid(
                key,
                format!("environment variable {var} is not set (export it or write the value)"),
            )
        })?;
        // serde_path_to_error names the key of a wrongly typed value ("…task.proc_num: …").
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            if key == "." {
                ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                }
            } else {
                invalid(key, message)
            }
        })?;
        config
            .check()
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(config)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let server = &self.rsyncserver;
        if server.auth.is_empty() {
            return Err((
                "rsyncserver.auth".into(),
                "no service users: add at least one `user: password` entry".into(),
            ));
        }
        for (user, password) in &server.auth {
            if user.is_empty() || user.contains(':') {
                return Err((
                    format!("rsyncserver.auth.{user}"),
                    "a user name must be non-empty and hold no ':'".into(),
                ));
            }
            if password.expose().is_empty() {
                return Err((
                    format!("rsyncserver.auth.{user}"),
                    "empty password: give this user a password".into(),
                ));
            }
            if let Err(e) = checks::check_password_entry(password.expose()) {
                return Err((format!("rsyncserver.auth.{user}"), e));
            }
        }
        for (user, scope) in &server.scopes {
            let key = format!("rsyncserver.scopes.{user}");
            if !server.auth.contains_key(user) {
                return Err((
                    key,
                    "no such user in rsyncserver.auth: scopes apply to service users".into(),
                ));
            }
            if scope.source.is_none() && scope.target.is_none() {
                return Err((
                    key,
                    "restricts nothing: give `source`, `target` or both (a list of registry[/path] prefixes), or remove the entry".into(),
                ));
            }
            for (side, prefixes) in [("source", &scope.source), ("target", &scope.target)] {
                let Some(prefixes) = prefixes else { continue };
                if prefixes.is_empty() {
                    return Err((
                        format!("{key}.{side}"),
                        "an empty list would allow nothing: list registry[/path] prefixes, or leave the key out to allow any".into(),
                    ));
                }
                for (i, prefix) in prefixes.iter().enumerate() {
                    if let Err(e) = checks::normalise_prefix(prefix) {
                        return Err((format!("{key}.{side}[{i}]"), e));
                    }
                }
            }
        }
        if server.max_concurrent_syncs == 0 || server.max_concurrent_syncs > 4096 {
            return Err((
                "rsyncserver.max_concurrent_syncs".into(),
                "must be between 1 and 4096".into(),
            ));
        }
        let damping = &server.login_damping;
        if damping.max_failures > 1000 {
            return Err((
                "rsyncserver.login_damping.max_failures".into(),
                "must be between 0 (off) and 1000".into(),
            ));
        }
        if damping.window_seconds == 0 || damping.window_seconds > 86_400 {
            return Err((
                "rsyncserver.login_damping.window_seconds".into(),
                "must be between 1 and 86400 seconds".into(),
            ));
        }
        if let Err(e) = server.jobs.database.check() {
            return Err(("rsyncserver.jobs.database".into(), e));
        }
        if !(3..=3600).contains(&server.jobs.lease_seconds) {
            return Err((
                "rsyncserver.jobs.lease_seconds".into(),
                "must be between 3 and 3600 seconds".into(),
            ));
        }
        if server.jobs.max_queued > 1_000_000 {
            return Err((
                "rsyncserver.jobs.max_queued".into(),
                "must be between 0 and 1000000".into(),
            ));
        }
        if server.jobs.history_days == 0 {
            return Err((
                "rsyncserver.jobs.history_days".into(),
                "must be at least 1 day".into(),
            ));
        }
        for (i, entry) in server.jobs.callback_allowed_hosts.iter().enumerate() {
            if let Err(e) = checks::parse_allowed_host(entry) {
                return Err((format!("rsyncserver.jobs.callback_allowed_hosts[{i}]"), e));
            }
        }
        if let Some(unknown) = server.admins.iter().find(|a| !server.auth.contains_key(*a)) {
            return Err((
                "rsyncserver.admins".into(),
                format!("{unknown:?} is not a user of rsyncserver.auth"),
            ));
        }
        mirrors::check_mirrors(&server.mirrors)?;
        for (i, user) in server.events.users.iter().enumerate() {
            if !server.auth.contains_key(user) {
                return Err((
                    format!("rsyncserver.events.users[{i}]"),
                    format!("{user:?} is not a user of rsyncserver.auth"),
                ));
            }
        }
        match humantime::parse_duration(server.events.settle.trim()) {
            Ok(d) if d <= std::time::Duration::from_secs(600) => {}
            Ok(_) => {
                return Err((
                    "rsyncserver.events.settle".into(),
                    "longer than 10m: pushes would wait too long".into(),
                ))
            }
            Err(e) => {
                return Err((
                    "rsyncserver.events.settle".into(),
                    format!(
                        "{:?} is not a duration ({e}); write e.g. 2s",
                        server.events.settle
                    ),
                ))
            }
        }
        if server.logfile.as_os_str().is_empty() {
            return Err((
                "rsyncserver.logfile".into(),
                "empty path: name the analysis log file".into(),
            ));
        }
        for (name, cred) in &server.rsyncconfig.auth {
            let key = format!("rsyncserver.rsyncconfig.auth.{name}");
            let registry = cred.registry.trim();
            if registry.is_empty()
                || registry.contains("://")
                || registry.contains(char::is_whitespace)
            {
                return Err((
                    format!("{key}.registry"),
                    "must be host[:port] or host[:port]/namespace, without a scheme".into(),
                ));
            }
            if let Some(ca) = &cred.ca_file {
                if let Err(e) = std::fs::metadata(ca) {
                    return Err((
                        format!("{key}.ca_file"),
                        format!("cannot read {}: {e}", ca.display()),
                    ));
                }
            }
            if let Some(dir) = &cred.cert_dir {
                if let Err(e) = read_cert_dir(dir) {
                    return Err((format!("{key}.cert_dir"), e));
                }
            }
            match (&cred.client_cert_file, &cred.client_key_file) {
                (Some(_), None) => {
                    return Err((
                        format!("{key}.client_key_file"),
                        "missing: client_cert_file is given without its key; give both or neither".into(),
                    ))
                }
                (None, Some(_)) => {
                    return Err((
                        format!("{key}.client_cert_file"),
                        "missing: client_key_file is given without its certificate; give both or neither".into(),
                    ))
                }
                _ => {}
            }
            for (field, file) in [
                ("client_cert_file", &cred.client_cert_file),
                ("client_key_file", &cred.client_key_file),
            ] {
                if let Some(file) = file {
                    if let Err(e) = std::fs::metadata(file) {
                        return Err((
                            format!("{key}.{field}"),
                            format!("cannot read {}: {e}", file.display()),
                        ));
                    }
                }
            }
            let tls_keys = [
                ("ca_file", cred.ca_file.is_some()),
                ("cert_dir", cred.cert_dir.is_some()),
                ("client_cert_file", cred.client_cert_file.is_some()),
            ];
            if let Some((field, _)) = tls_keys.iter().find(|(_, set)| *set && cred.plain_http) {
                return Err((
                    key,
                    format!("plain_http and {field} contradict each other: choose one"),
                ));
            }
            if cred.password.is_some() && cred.password_file.is_some() {
                return Err((
                    key,
                    "password and password_file contradict each other: choose one".into(),
                ));
            }
            let has_password = cred.password.is_some() || cred.password_file.is_some();
            if cred.username.is_some() != has_password {
                return Err((
                    key,
                    "username and password (or password_file) go together: give both or neither"
                        .into(),
                ));
            }
            let sources = [
                cred.username.is_some(),
                cred.credential_helper.is_some(),
                cred.identity_token.is_some(),
                cred.registry_token.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                return Err((
                    key,
                    "give one of username/password, credential_helper, identity_token or registry_token".into(),
                ));
            }
            if let Some(helper) = &cred.credential_helper {
                if let Err(e) = checks::check_helper_name(helper) {
                    return Err((format!("{key}.credential_helper"), e));
                }
            }
            if let Some(file) = &cred.password_file {
                if let Err(e) = std::fs::metadata(file) {
                    return Err((
                        format!("{key}.password_file"),
                        format!("cannot read {}: {e}", file.display()),
                    ));
                }
            }
        }
        if let Some(file) = &server.rsyncconfig.auth_file {
            let key = "rsyncserver.rsyncconfig.auth_file".to_owned();
            let text = std::fs::read(file)
                .map_err(|e| (key.clone(), format!("cannot read {}: {e}", file.display())))?;
            // The registry layer reads the keys; here only "is it a JSON object at all".
            if !serde_json::from_slice::<serde_json::Value>(&text).is_ok_and(|v| v.is_object()) {
                return Err((
                    key,
                    format!(
                        "{} is not a JSON object (a Docker config.json or containers auth.json)",
                        file.display()
                    ),
                ));
            }
        }
        if let Some(certs_d) = &server.rsyncconfig.certs_d {
            if let Err(e) = cert_dir::check_certs_d(certs_d) {
                return Err(("rsyncserver.rsyncconfig.certs_d".into(), e));
            }
        }
        let task = &server.rsyncconfig.task;
        if task.proc_num == 0 || task.proc_num > 64 {
            return Err((
                "rsyncserver.rsyncconfig.task.proc_num".into(),
                "must be between 1 and 64".into(),
            ));
        }
        for (key, value) in [
            ("connect_timeout_seconds", task.connect_timeout_seconds),
            ("idle_timeout_seconds", task.idle_timeout_seconds),
            (
                "credential_helper_timeout_seconds",
                task.credential_helper_timeout_seconds,
            ),
        ] {
            if value == 0 || value > 3600 {
                return Err((
                    format!("rsyncserver.rsyncconfig.task.{key}"),
                    "must be between 1 and 3600 seconds".into(),
                ));
            }
        }
        if task.max_transfers == 0 || task.max_transfers > 1024 {
            return Err((
                "rsyncserver.rsyncconfig.task.max_transfers".into(),
                "must be between 1 and 1024".into(),
            ));
        }
        if let Err(e) =
            checks::parse_platform_patterns(&checks::task_platform_patterns(&task.os, &task.arch))
        {
            return Err(("rsyncserver.rsyncconfig.task.arch".into(), e));
        }
        if task.retries > 10 {
            return Err((
                "rsyncserver.rsyncconfig.task.retries".into(),
                "must be between 0 and 10".into(),
            ));
        }
        Ok(())
    }
}

/// Replaces `${VAR}` in every string value; on a missing variable returns (key path, VAR).
pub(crate) fn expand_env(
    value: &mut serde_yaml_ng::Value,
    key: &str,
) -> Result<(), (String, String)> {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) if s.contains("${") => {
            *s = expand_str(s).map_err(|var| (key.to_owned(), var))?;
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let name = k.as_str().map(str::to_owned).unwrap_or_default();
                let child = if key.is_empty() {
                    name
                } else {
                    format!("{key}.{name}")
                };
                expand_env(v, &child)?;
            }
        }
        Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                expand_env(v, &format!("{key}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        let value = std::env::var(var).map_err(|_| var.to_owned())?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl fmt::Display for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.username {
            Some(user) => write!(f, "{} (user {user})", self.registry),
            None => write!(f, "{} (anonymous)", self.registry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
config:
  tools: {github: "https://example.com"}
rsyncserver:
  logfile: logs/a.log
  auth: {admin: admin}
  rsyncconfig:
    auth:
      lab: {registry: "127.0.0.1:5000/team", username: u, password: "${IMAGERSYNC_TEST_PW}", insecure: true}
    task: {proc_num: 3, retries: 1}
"#;

    #[test]
    fn loads_and_expands_environment() {
        std::env::set_var("IMAGERSYNC_TEST_PW", "s3cret");
        let c = Config::from_yaml(GOOD, Path::new("c.yaml")).unwrap();
        let lab = &c.rsyncserver.rsyncconfig.auth["lab"];
        assert_eq!(lab.password.as_ref().unwrap().expose(), "s3cret");
        assert!(lab.insecure);
        assert_eq!(c.rsyncserver.rsyncconfig.task.proc_num, 3);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug must redact secrets"
        );
    }

    #[test]
    fn security_keys_default_and_load() {
        let c = Config::from_yaml("rsyncserver: {auth: {a: b}}", Path::new("c.yaml")).unwrap();
        assert_eq!(c.rsyncserver.max_concurrent_syncs, 32);
        assert_eq!(c.rsyncserver.login_damping.max_failures, 10);
        assert_eq!(c.rsyncserver.login_damping.window_seconds, 60);
        assert!(c.rsyncserver.scopes.is_empty());
        assert_eq!(ServerConfig::default().max_concurrent_syncs, 32);
        let hash = "$2y$04$X3btQmFvcFKrKG59OVwWm.Nx05nZEsotO8W0mVGZ0RVL9PGH9kTvC";
        let yaml = format!(
            r#"
rsyncserver:
  auth: {{a: b, ci: '{hash}'}}
  max_concurrent_syncs: 4
  login_damping: {{max_failures: 0, window_seconds: 30}}
  scopes:
    ci: {{target: [REG.example.com/team/]}}
"#
        );
        let c = Config::from_yaml(&yaml, Path::new("c.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.rsyncserver.max_concurrent_syncs, 4);
        assert_eq!(c.rsyncserver.login_damping.max_failures, 0);
        assert_eq!(c.rsyncserver.auth["ci"].expose(), hash);
        let scope = &c.rsyncserver.scopes["ci"];
        assert!(scope.source.is_none());
        assert_eq!(
            scope.target.as_deref(),
            Some(&["REG.example.com/team/".to_owned()][..])
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases: &[(&str, &str)] = &[
            ("rsyncserver: {auth: {}}", "rsyncserver.auth"),
            ("rsyncserver: {auth: {a: b}, bogus: 1}", "bogus"),
            (
                "rsyncserver: {auth: {a: b}, rsyncconfig: {task: {proc_num: 0}}}",
                "task.proc_num",
            ),
            (
                "rsyncserver: {auth: {a: b}, rsyncconfig: {auth: {x: {registry: 'https://h'}}}}",
                "auth.x.registry",
            ),
            (
                "rsyncserver: {auth: {a: '${IMAGERSYNC_SURELY_UNSET}'}}",
                "IMAGERSYNC_SURELY_UNSET",
            ),
            (
                "rsyncserver: {auth: {a: b}, scopes: {ghost: {source: [reg.example.com]}}}",
                "rsyncserver.scopes.ghost",
            ),
            (
                "rsyncserver: {auth: {a: b}, scopes: {a: {}}}",
                "rsyncserver.scopes.a",
            ),
            (
                "rsyncserver: {auth: {a: b}, scopes: {a: {target: []}}}",
                "rsyncserver.scopes.a.target",
            ),
            (
                "rsyncserver: {auth: {a: b}, scopes: {a: {source: [reg.example.com, team/app]}}}",
                "rsyncserver.scopes.a.source[1]",
            ),
            (
                "rsyncserver: {auth: {a: b}, scopes: {a: {sources: [reg.example.com]}}}",
                "sources",
            ),
            (
                "rsyncserver: {auth: {a: '$2y$10$truncated'}}",
                "rsyncserver.auth.a",
            ),
            (
                "rsyncserver: {auth: {a: b}, max_concurrent_syncs: 0}",
                "rsyncserver.max_concurrent_syncs",
            ),
            (
                "rsyncserver: {auth: {a: b}, login_damping: {window_seconds: 0}}",
                "rsyncserver.login_damping.window_seconds",
            ),
            (
                "rsyncserver: {auth: {a: b}, admins: [root]}",
                "rsyncserver.admins",
            ),
            (
                "rsyncserver: {auth: {a: b}, events: {users: [a, registry]}}",
                "rsyncserver.events.users[1]",
            ),
            (
                "rsyncserver: {auth: {a: b}, events: {users: [a], settle: soon}}",
                "rsyncserver.events.settle",
            ),
            (
                "rsyncserver: {auth: {a: b}, events: {settle: 1h}}",
                "rsyncserver.events.settle",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {history_days: 0}}",
                "rsyncserver.jobs.history_days",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {database: ''}}",
                "rsyncserver.jobs.database",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {database: 'mysql://u:p@h/db'}}",
                "rsyncserver.jobs.database",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {database: 'postgres://u:p@/db'}}",
                "rsyncserver.jobs.database",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {database: 'postgres://u:p@h:notaport/db'}}",
                "rsyncserver.jobs.database",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {database: 'postgres://u:p@h:5432'}}",
                "rsyncserver.jobs.database",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {database: 'postgres://u:p@h:5432/db?sslmode=sometimes'}}",
                "rsyncserver.jobs.database",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {lease_seconds: 1}}",
                "rsyncserver.jobs.lease_seconds",
            ),
            (
                "rsyncserver: {auth: {a: b}, jobs: {max_queue: 5}}",
                "max_queue",
            ),
            ("rsyncserver: [", "c.yaml"),
            ("config: {}", "rsyncserver"),
            (
                "rsyncserver: {auth: {a: b}, rsyncconfig: {task: {proc_num: many}}}",
                "rsyncserver.rsyncconfig.task.proc_num",
            ),
        ];
        for (yaml, needle) in cases {
            let err = Config::from_yaml(yaml, Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("c.yaml"), "{yaml}: {err}");
            assert!(err.contains(needle), "{yaml}: expected {needle} in {err}");
        }
    }

    #[test]
    fn tls_files_are_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("c.pem"), "x").unwrap();
        let half = dir.path().join("half");
        std::fs::create_dir_all(half.join("reg:5000")).unwrap();
        std::fs::write(half.join("reg:5000/client.cert"), "x").unwrap();
        let entry = |keys: &str| {
            format!("rsyncserver: {{auth: {{a: b}}, rsyncconfig: {{auth: {{x: {{registry: reg, {keys}}}}}}}}}")
        };
        let cases = [
            (
                entry(&format!("client_cert_file: '{d}/c.pem'")),
                "auth.x.client_key_file",
            ),
            (
                entry(&format!("client_key_file: '{d}/c.pem'")),
                "auth.x.client_cert_file",
            ),
            (
                entry(&format!(
                    "client_cert_file: '{d}/c.pem', client_key_file: '{d}/gone.key'"
                )),
                "auth.x.client_key_file",
            ),
            (
                entry(&format!("cert_dir: '{d}/half/reg:5000'")),
                "has no key client.key",
            ),
            (
                entry(&format!("cert_dir: '{d}/nowhere'")),
                "auth.x.cert_dir",
            ),
            (
                entry(&format!("plain_http: true, cert_dir: '{d}'")),
                "plain_http and cert_dir",
            ),
            (
                format!("rsyncserver: {{auth: {{a: b}}, rsyncconfig: {{certs_d: '{d}/half'}}}}"),
                "key rsyncserver.rsyncconfig.certs_d",
            ),
        ];
        for (yaml, needle) in &cases {
            let err = Config::from_yaml(yaml, Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{yaml}: expected {needle} in {err}");
        }
        let good = entry(&format!(
            "ca_file: '{d}/c.pem', client_cert_file: '{d}/c.pem', client_key_file: '{d}/c.pem'"
        ));
        let c = Config::from_yaml(&good, Path::new("c.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let pair = c.rsyncserver.rsyncconfig.auth["x"].client_pair().unwrap();
        assert_eq!(pair.key, dir.path().join("c.pem"));
    }
}
