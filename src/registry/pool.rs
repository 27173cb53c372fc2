//! One client per registry and credential, shared by every sync, so connections and
//! tokens are reused across requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::auth::Credentials;
use super::client::{Endpoint, RegistryClient, Timeouts, Transport};
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

/// The client chosen for a repository, and which config entry chose it.
pub struct Resolved {
    /// Client to use for this repository.
    pub client: Arc<RegistryClient>,
    /// Config key of the credential entry that matched, `None` for anonymous access.
    pub entry: Option<String>,
}

/// A registry and the name of the credential entry used with it.
type ClientKey = (String, Option<String>);

/// Registry clients by (registry, credential entry).
pub struct ClientPool {
    entries: Vec<Entry>,
    timeouts: Timeouts,
    /// Docker `certs.d` folder: `<host[:port]>/` folders of certificates.
    certs_d: Option<std::path::PathBuf>,
    clients: Mutex<HashMap<ClientKey, Arc<RegistryClient>>>,
    /// One 429 pause per registry host, whatever the credential.
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
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
            timeouts,
            certs_d: None,
            clients: Mutex::new(HashMap::new()),
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// Looks for each registry's certificates in `certs_d/<host[:port]>/` as well.
    pub fn with_certs_d(mut self, certs_d: Option<std::path::PathBuf>) -> Self {
        self.certs_d = certs_d;
        self
    }

    /// The client for `repository` at `registry`: the entry with the longest matching
    /// `registry[/namespace]` prefix wins; none means anonymous HTTPS.
    pub fn resolve(&self, registry: &str, repository: &str) -> Result<Resolved, RegistryError> {
        let full = format!("{registry}/{repository}");
        let entry = self
            .entries
            .iter()
            .filter(|e| full.starts_with(&format!("{}/", e.prefix)))
            .max_by_key(|e| e.prefix.len());
        let key = (registry.to_owned(), entry.map(|e| e.name.clone()));
        let mut clients = self.clients.lock().expect("client pool lock");
        if let Some(client) = clients.get(&key) {
            return Ok(Resolved {
                client: client.clone(),
                entry: key.1,
            });
        }
        let endpoint = Endpoint {
            registry: registry.to_owned(),
            credentials: entry.and_then(|e| {
                let c = &e.credential;
                Some(Credentials {
                    username: c.username.clone()?,
                    password: c.password.clone()?,
                })
            }),
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
        };
        let limiter = self
            .limiters
            .lock()
            .expect("limiter map lock")
            .entry(registry.to_owned())
            .or_default()
            .clone();
        let client = Arc::new(RegistryClient::new(endpoint, limiter)?);
        clients.insert(key.clone(), client.clone());
        Ok(Resolved {
            client,
            entry: key.1,
        })
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
        let user = |reg: &str, repo: &str| {
            let r = pool.resolve(reg, repo).unwrap();
            (r.entry, r.client.username().map(str::to_owned))
        };
        assert_eq!(
            user("reg.example.com:5000", "team/app"),
            (Some("team".into()), Some("t".into()))
        );
        assert_eq!(
            user("reg.example.com:5000", "teams/app"),
            (Some("host".into()), Some("h".into()))
        );
        assert_eq!(
            user("reg.example.com:5000", "other"),
            (Some("host".into()), Some("h".into()))
        );
        assert_eq!(
            user("docker.io", "library/busybox"),
            (Some("hub".into()), None)
        );
        assert_eq!(user("other.io", "team/app"), (None, None));
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
}
