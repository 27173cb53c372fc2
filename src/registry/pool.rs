//! One client per registry and credential, shared by every sync, so connections and
//! tokens are reused across requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use super::client::{Endpoint, RegistryClient, Timeouts, Transport};
use super::credentials::{helper_server, CredentialProvider, Login, Source, WatchedAuthFile};
use super::error::RegistryError;
use super::limiter::RateLimiter;
use super::tls::TlsFiles;
use crate::config::RegistryCredential;

/// A configured credential entry, normalised for matching.
#[derive(Debug, Clone)]
struct Entry {
    /// Key of the entry in the config (for logs).
    name: String,
    /// `host[:port]` or `host[:port]/namespace`, lower-case host.
    prefix: String,
    credential: RegistryCredential,
}

/// The client chosen for a repository, and where its login comes from.
pub struct Resolved {
    /// Client to use for this repository.
    pub client: Arc<RegistryClient>,
    /// Which source applies (entry, helper, file), never the secret; `None` when nothing
    /// matched and access is anonymous.
    pub source: Option<String>,
}

/// A registry, where its login comes from (entry name, auth-file key), and the version
/// of the auth file it was read from (0 when not from the auth file): a rotated file
/// gives new clients, while syncs still running keep theirs.
type ClientKey = (String, String, u64);

/// Registry clients by (registry, credential entry).
pub struct ClientPool {
    entries: Vec<Entry>,
    /// `rsyncserver.rsyncconfig.auth_file`, read again when it changes.
    auth_file: Option<WatchedAuthFile>,
    helper_timeout: Duration,
    pull_floor: u64,
    timeouts: Timeouts,
    /// Docker `certs.d` folder: `<host[:port]>/` folders of certificates.
    certs_d: Option<std::path::PathBuf>,
    clients: Mutex<HashMap<ClientKey, Arc<RegistryClient>>>,
    /// One 429 pause per registry host, whatever the credential; shared with the pool
    /// a reload replaces this one with, so a pause outlives the reload.
    limiters: Arc<Limiters>,
}

/// The rate limiters of a pool and its reloads.
#[derive(Default)]
struct Limiters {
    by_host: Mutex<HashMap<String, Arc<RateLimiter>>>,
    /// Pauses shared with other replicas, set once at start-up.
    shared: std::sync::OnceLock<Arc<dyn super::SharedPauses>>,
}

impl ClientPool {
    /// A pool over the credential entries of the config (`rsyncserver.rsyncconfig.auth`).
    pub fn new<'a>(
        credentials: impl IntoIterator<Item = (&'a String, &'a RegistryCredential)>,
        timeouts: Timeouts,
    ) -> Self {
        let entries = credentials
            .into_iter()
            .map(|(name, credential)| Entry {
                name: name.clone(),
                prefix: normalise_prefix(&credential.registry),
                credential: credential.clone(),
            })
            .collect();
        Self {
            entries,
            auth_file: None,
            helper_timeout: super::credentials::HELPER_TIMEOUT,
            pull_floor: 0,
            timeouts,
            certs_d: None,
            clients: Mutex::new(HashMap::new()),
            limiters: Arc::default(),
        }
    }

    /// Shares `other`'s rate-limit pauses (a 429's `Retry-After`, Docker Hub's pull
    /// floor): a pool built on reload must not forget that a registry asked to wait.
    pub fn with_limiters_of(mut self, other: &ClientPool) -> Self {
        self.limiters = other.limiters.clone();
        self
    }

    /// Shares 429 pauses with the other replicas of the service through `shared`: a pause
    /// one of them learnt holds here, and the other way round. Set once, at start-up,
    /// before any registry is asked (a later call changes nothing).
    pub fn share_pauses(&self, shared: Arc<dyn super::SharedPauses>) {
        let _ = self.limiters.shared.set(shared);
    }

    /// Uses `file` for registries no entry gives a login for.
    pub fn with_auth_file(mut self, file: Option<WatchedAuthFile>) -> Self {
        self.auth_file = file;
        self
    }

    /// Stops a credential helper that has not answered after `timeout`.
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// Pulls wait while a registry announces fewer remaining pulls than `floor`.
    pub fn with_pull_floor(mut self, floor: u64) -> Self {
        self.pull_floor = floor;
        self
    }

    /// One line per configured login source, for the start-up log (no secret).
    pub fn describe_sources(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.credential.has_credentials())
            .map(|e| {
                let provider = CredentialProvider::new(
                    entry_source(&e.prefix, &e.credential),
                    format!("entry {}", e.name),
                );
                format!("{}: {}", e.prefix, provider.describe())
            })
            .collect();
        if let Some(file) = &self.auth_file {
            lines.push(file.summary());
        }
        lines
    }

    /// Looks for each registry's certificates in `certs_d/<host[:port]>/` as well.
    pub fn with_certs_d(mut self, certs_d: Option<std::path::PathBuf>) -> Self {
        self.certs_d = certs_d;
        self
    }

    /// The client for `repository` at `registry`. The entry with the longest matching
    /// `registry[/namespace]` prefix gives the transport and, if it has one, the login;
    /// else the auth file's answer applies; else access is anonymous.
    pub fn resolve(&self, registry: &str, repository: &str) -> Result<Resolved, RegistryError> {
        let full = format!("{registry}/{repository}");
        let entry = self
            .entries
            .iter()
            .filter(|e| full.starts_with(&format!("{}/", e.prefix)))
            .max_by_key(|e| e.prefix.len());
        // Version 0: not from the auth file.
        let mut generation = 0;
        let (source, origin) = match entry {
            Some(e) if e.credential.has_credentials() => (
                entry_source(registry, &e.credential),
                format!("entry {}", e.name),
            ),
            _ => {
                // One stat per lookup; read again only when the file changed.
                let version = self.auth_file.as_ref().map(WatchedAuthFile::current);
                let found = match version.as_ref().map(|v| (v.generation, v.file.as_ref())) {
                    Some((g, Ok(file))) => file.lookup(registry, repository).map(|(s, how)| {
                        generation = g;
                        (s, format!("auth file {} {how}", file.path().display()))
                    }),
                    Some((_, Err(e))) => {
                        return Err(RegistryError::Auth {
                            registry: registry.to_owned(),
                            step: format!("finding the login for {repository}"),
                            cause: e.clone(),
                        })
                    }
                    None => None,
                };
                match (found, entry) {
                    (Some((s, how)), Some(e)) => (s, format!("{how} (entry {})", e.name)),
                    (Some(found), None) => found,
                    (None, Some(e)) => {
                        (Source::Fixed(Login::Anonymous), format!("entry {}", e.name))
                    }
                    (None, None) => (Source::Fixed(Login::Anonymous), String::new()),
                }
            }
        };
        let key = (registry.to_owned(), origin.clone(), generation);
        let mut clients = self.clients.lock().expect("client pool lock");
        let described =
            |client: &RegistryClient| (!origin.is_empty()).then(|| client.credentials().describe());
        if let Some(client) = clients.get(&key) {
            return Ok(Resolved {
                source: described(client),
                client: client.clone(),
            });
        }
        let endpoint = Endpoint {
            registry: registry.to_owned(),
            credentials: Arc::new(
                CredentialProvider::new(source, origin.clone())
                    .with_helper_timeout(self.helper_timeout),
            ),
            transport: entry.map_or(Transport::Verified, |e| transport_of(&e.credential)),
            tls: TlsFiles::gather(
                entry.map(|e| &e.credential),
                self.certs_d.as_deref(),
                registry,
            )
            .map_err(|cause| RegistryError::Protocol {
                registry: registry.to_owned(),
                step: "reading its certificates".into(),
                cause,
            })?,
            timeouts: self.timeouts,
            pull_floor: self.pull_floor,
        };
        let limiter = self
            .limiters
            .by_host
            .lock()
            .expect("limiter map lock")
            .entry(registry.to_owned())
            .or_insert_with(|| {
                let shared = self.limiters.shared.get().cloned();
                Arc::new(RateLimiter::new(registry, shared))
            })
            .clone();
        let client = Arc::new(RegistryClient::new(endpoint, limiter)?);
        if generation > 0 {
            // Logins of an older version of the auth file are not handed out again.
            clients.retain(|(_, _, g), _| *g == 0 || *g >= generation);
        }
        clients.insert(key, client.clone());
        Ok(Resolved {
            source: described(&client),
            client,
        })
    }
}

/// Where an entry with credentials of its own gets its login (config checks allow one).
fn entry_source(registry: &str, c: &RegistryCredential) -> Source {
    if let Some(name) = &c.credential_helper {
        return Source::Helper {
            name: name.clone(),
            server: helper_server(registry.split('/').next().unwrap_or(registry)),
        };
    }
    if let Some(t) = &c.registry_token {
        return Source::Fixed(Login::RegistryToken(t.clone()));
    }
    if let Some(t) = &c.identity_token {
        return Source::Fixed(Login::IdentityToken(t.clone()));
    }
    match (&c.username, &c.password, &c.password_file) {
        (Some(u), Some(p), _) => Source::Fixed(Login::Basic {
            username: u.clone(),
            password: p.clone(),
        }),
        (Some(u), None, Some(path)) => Source::PasswordFile {
            username: u.clone(),
            path: path.clone(),
        },
        _ => Source::Fixed(Login::Anonymous),
    }
}

/// The transport a credential entry asks for; the most explicit option wins.
pub fn transport_of(c: &RegistryCredential) -> Transport {
    if c.plain_http {
        Transport::PlainHttp
    } else if c.insecure {
        Transport::Insecure
    } else if c.tls_skip_verify {
        Transport::SkipVerify
    } else {
        Transport::Verified
    }
}

/// Lower-cases the host part and maps Docker Hub's aliases to `docker.io`.
pub(crate) fn normalise_prefix(prefix: &str) -> String {
    let prefix = prefix.trim().trim_end_matches('/');
    let (host, rest) = prefix.split_once('/').unwrap_or((prefix, ""));
    let host = crate::config::names::normalise_host(host);
    if rest.is_empty() {
        host
    } else {
        format!("{host}/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn cred(registry: &str, user: Option<&str>) -> RegistryCredential {
        RegistryCredential {
            registry: registry.into(),
            username: user.map(Into::into),
            password: user.map(|_| Secret::new("pw")),
            insecure: true,
            ..RegistryCredential::default()
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let mut creds = std::collections::BTreeMap::new();
        creds.insert("host".to_owned(), cred("Reg.Example.com:5000", Some("h")));
        creds.insert(
            "team".to_owned(),
            cred("reg.example.com:5000/team", Some("t")),
        );
        creds.insert("hub".to_owned(), cred("index.docker.io/library", None));
        let pool = ClientPool::new(&creds, Timeouts::default());
        let user = |reg: &str, repo: &str| pool.resolve(reg, repo).unwrap().source;
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            user("reg.example.com:5000", "team/app"),
            some("entry team, username: t")
        );
        assert_eq!(
            user("reg.example.com:5000", "teams/app"),
            some("entry host, username: h")
        );
        assert_eq!(
            user("reg.example.com:5000", "other"),
            some("entry host, username: h")
        );
        assert_eq!(
            user("docker.io", "library/busybox"),
            some("entry hub, anonymous")
        );
        assert_eq!(user("other.io", "team/app"), None);
        let a = pool
            .resolve("reg.example.com:5000", "team/a")
            .unwrap()
            .client;
        let b = pool
            .resolve("reg.example.com:5000", "team/b")
            .unwrap()
            .client;
        assert!(
            Arc::ptr_eq(&a, &b),
            "one client per registry and credential"
        );
    }

    #[test]
    fn entries_without_a_login_take_it_from_the_auth_file() {
        let mut creds = std::collections::BTreeMap::new();
        creds.insert("tls-only".to_owned(), cred("reg.example.com", None));
        creds.insert(
            "helper".to_owned(),
            RegistryCredential {
                registry: "ecr.example.com".into(),
                credential_helper: Some("ecr-login".into()),
                ..RegistryCredential::default()
            },
        );
        let file = crate::registry::credentials::AuthFile::parse(
            br#"{"auths": {"reg.example.com": {"username": "f", "password": "fp"}},
                 "credHelpers": {"gcr.io": "gcr"}}"#,
            std::path::Path::new("/etc/auth.json"),
        )
        .unwrap();
        let pool = ClientPool::new(&creds, Timeouts::default()).with_auth_file(Some(
            WatchedAuthFile::from_loaded(std::path::Path::new("/etc/auth.json"), Ok(file)),
        ));
        let source = |reg: &str| pool.resolve(reg, "a/b").unwrap().source.unwrap_or_default();
        assert_eq!(
            source("reg.example.com"),
            "auth file /etc/auth.json auths[reg.example.com] (entry tls-only), username: f"
        );
        assert_eq!(
            source("gcr.io"),
            "auth file /etc/auth.json credHelpers[gcr.io], credential helper docker-credential-gcr"
        );
        assert_eq!(
            source("ecr.example.com"),
            "entry helper, credential helper docker-credential-ecr-login"
        );
        assert_eq!(source("other.example.com"), "");
        let broken = ClientPool::new(&creds, Timeouts::default()).with_auth_file(Some(
            WatchedAuthFile::from_loaded(
                std::path::Path::new("/x"),
                Err("auth file /x: bad".into()),
            ),
        ));
        assert!(broken.resolve("other.example.com", "a").is_err());
        assert!(broken.resolve("ecr.example.com", "a").is_ok());
    }
}
