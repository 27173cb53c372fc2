//! Where a registry login comes from: a fixed entry, a password file, a Docker credential
//! helper or a Docker / containers auth file; and the cache that shares a helper's answer
//! between every sync until it is refused or grows old.

mod authfile;
mod helper;
mod watched;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex;

pub use authfile::{discover_auth_file, AuthFile};
pub use watched::{AuthFileVersion, WatchedAuthFile};

use crate::secret::Secret;

/// How long a helper's answer is reused before the helper is asked again. GCR access
/// tokens live an hour and helpers may hand them out part-used, so well under that.
pub const HELPER_CACHE: Duration = Duration::from_secs(600);
/// Longest a credential helper may run.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(20);

/// A login as the registry protocol uses it.
#[derive(Clone, PartialEq, Eq)]
pub enum Login {
    /// No credentials.
    Anonymous,
    /// User name and password (or an access token used as one).
    Basic {
        /// User name, shown in logs.
        username: String,
        /// Password or token, never shown.
        password: Secret,
    },
    /// An OAuth2 refresh token (Docker's `identitytoken`), exchanged at the token realm.
    IdentityToken(Secret),
    /// A bearer token sent as it is (Docker's `registrytoken`).
    RegistryToken(Secret),
}

impl Login {
    /// The user name, if the login has one (for logs).
    pub fn username(&self) -> Option<&str> {
        match self {
            Login::Basic { username, .. } => Some(username),
            _ => None,
        }
    }

    /// What kind of login this is, without the secret.
    pub fn kind(&self) -> String {
        match self {
            Login::Anonymous => "anonymous".into(),
            Login::Basic { username, .. } => format!("username: {username}"),
            Login::IdentityToken(_) => "identity token".into(),
            Login::RegistryToken(_) => "registry token".into(),
        }
    }
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Login({})", self.kind())
    }
}

/// Where a login comes from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A login given in full (config entry or auth file `auths`).
    Fixed(Login),
    /// `username` with the password read from `path`, re-read when the file changes.
    PasswordFile {
        /// User name.
        username: String,
        /// File holding the password or token.
        path: PathBuf,
    },
    /// `docker-credential-NAME get`, asked for `server`.
    Helper {
        /// Helper suffix.
        name: String,
        /// What the helper is asked for (`https://index.docker.io/v1/` for Docker Hub).
        server: String,
    },
}

/// A cached login and what it was read from.
struct Cached {
    login: Login,
    /// Until when it is used without asking again.
    until: Instant,
    /// Modification time and length of a password file when it was read.
    stamp: Option<(SystemTime, u64)>,
}

/// The login of one registry client: asks its source when needed, caches the answer
/// (one helper run at a time: concurrent syncs wait for the same answer), and forgets
/// it when the registry refuses it.
pub struct CredentialProvider {
    source: Source,
    /// Where the login comes from, for logs: "entry lab", "auth file /x (credHelpers)".
    origin: String,
    helper_timeout: Duration,
    cache: Mutex<Option<Cached>>,
}

impl fmt::Debug for CredentialProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialProvider({})", self.describe())
    }
}

impl CredentialProvider {
    /// A provider for `source`, described in logs as `origin`.
    pub fn new(source: Source, origin: impl Into<String>) -> Self {
        Self {
            source,
            origin: origin.into(),
            helper_timeout: HELPER_TIMEOUT,
            cache: Mutex::new(None),
        }
    }

    /// No credentials at all.
    pub fn anonymous() -> Self {
        Self::new(Source::Fixed(Login::Anonymous), "no credentials")
    }

    /// A fixed login.
    pub fn fixed(login: Login, origin: impl Into<String>) -> Self {
        Self::new(Source::Fixed(login), origin)
    }

    /// The same with another helper time limit (tests, and operators through the config).
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// Whether no credentials can ever come from here.
    pub fn is_anonymous(&self) -> bool {
        self.source == Source::Fixed(Login::Anonymous)
    }

    /// Whether asking again may give another login (a helper or a password file).
    pub fn refreshable(&self) -> bool {
        !matches!(self.source, Source::Fixed(_))
    }

    /// Which source applies, without the secret: for the start-up and sync log lines.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Fixed(login) => format!("{}, {}", self.origin, login.kind()),
            Source::PasswordFile { username, path } => format!(
                "{}, username: {username}, password from {}",
                self.origin,
                path.display()
            ),
            Source::Helper { name, .. } => {
                format!(
                    "{}, credential helper docker-credential-{name}",
                    self.origin
                )
            }
        }
    }

    /// The login to use now; runs the helper or reads the file when the cache is empty,
    /// old, or (for a password file) the file changed.
    pub async fn login(&self) -> Result<Login, String> {
        match &self.source {
            Source::Fixed(login) => Ok(login.clone()),
            Source::PasswordFile { username, path } => {
                let stamp = file_stamp(path);
                let mut cache = self.cache.lock().await;
                if let Some(c) = cache.as_ref().filter(|c| c.stamp == stamp) {
                    return Ok(c.login.clone());
                }
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
                let login = Login::Basic {
                    username: username.clone(),
                    password: Secret::new(text.trim_end_matches(['\r', '\n'])),
                };
                *cache = Some(Cached {
                    login: login.clone(),
                    until: Instant::now(),
                    stamp,
                });
                Ok(login)
            }
            Source::Helper { name, server } => {
                let mut cache = self.cache.lock().await;
                if let Some(c) = cache.as_ref().filter(|c| c.until > Instant::now()) {
                    return Ok(c.login.clone());
                }
                let login = helper::get(name, server, self.helper_timeout)
                    .await?
                    .unwrap_or(Login::Anonymous);
                *cache = Some(Cached {
                    login: login.clone(),
                    until: Instant::now() + HELPER_CACHE,
                    stamp: None,
                });
                Ok(login)
            }
        }
    }

    /// Forgets the cached login after the registry refused it; the next [`Self::login`]
    /// asks the source again.
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }
}

/// Modification time and length of `path`, to notice a rewritten file.
fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// What a helper is asked for: Docker Hub under its historical key, others by host.
pub fn helper_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".into()
    } else {
        registry.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "first\n").unwrap();
        let p = CredentialProvider::new(
            Source::PasswordFile {
                username: "u".into(),
                path: path.clone(),
            },
            "entry x",
        );
        let pw = |l: Login| match l {
            Login::Basic { password, .. } => password.expose().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(pw(p.login().await.unwrap()), "first");
        std::fs::write(&path, "second-longer").unwrap();
        assert_eq!(pw(p.login().await.unwrap()), "second-longer");
        assert!(!p.describe().contains("second"));
    }
}
