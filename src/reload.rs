//! Reload on SIGHUP: re-reads the config file, checks it as start-up would, and puts in
//! force the service users, scopes, admins, registry logins (entries, `auth_file`,
//! `certs_d`) and allowed registries. A file that does not load is refused with the
//! reason and the running config stays. Syncs already running keep what they started
//! with (they hold a snapshot). The one SIGHUP handler of the service lives here; it also
//! asks the HTTPS listener to re-read its certificate files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::access::default_passwords::{is_loopback, DefaultPasswords};
use crate::config::{Config, ConfigChanges, ConfigError};
use crate::http::AppState;
use crate::listener_tls::TlsReload;
use crate::registry::credentials::AuthFile;

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not read, parse or pass the checks (names file and key).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A service user's password is guessable and the service listens beyond loopback.
    #[error("config key rsyncserver.auth: {0}")]
    DefaultPassword(String),
    /// `rsyncserver.rsyncconfig.auth_file` is set but does not read or parse.
    #[error("config key rsyncserver.rsyncconfig.auth_file: {0}")]
    AuthFile(String),
    /// The loading task panicked or was cancelled.
    #[error("reading the config failed: {0}")]
    Task(String),
}

/// The running config and the means to replace it.
pub struct Reloader {
    path: PathBuf,
    address: SocketAddr,
    state: AppState,
    current: tokio::sync::Mutex<Running>,
}

/// What the last accepted config was, to tell what a new one changes.
struct Running {
    config: Config,
    /// SHA-256 of the auth file's bytes as last read (`None`: no file, or unreadable).
    auth_file: Option<[u8; 32]>,
}

/// A config that loaded and passed every check, with its auth file read.
struct Loaded {
    config: Config,
    auth_file: Option<(AuthFile, [u8; 32])>,
}

impl Reloader {
    /// The reloader of a service started with `config` (read from `path`) on `address`,
    /// serving `state`.
    pub fn new(path: &Path, address: SocketAddr, state: AppState, config: Config) -> Self {
        let auth_file = config
            .rsyncserver
            .rsyncconfig
            .auth_file
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|bytes| digest(&bytes));
        Self {
            path: path.to_owned(),
            address,
            state,
            current: tokio::sync::Mutex::new(Running { config, auth_file }),
        }
    }

    /// Reads and checks the file, then swaps in what changed; returns the changes. On an
    /// error nothing is swapped.
    pub async fn reload(&self) -> Result<ConfigChanges, ReloadError> {
        // One reload at a time: two quick SIGHUPs must not interleave their swaps.
        let mut current = self.current.lock().await;
        let (path, address) = (self.path.clone(), self.address);
        let loaded = tokio::task::spawn_blocking(move || load(&path, address))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))??;
        let mut changes = ConfigChanges::between(&current.config, &loaded.config);
        let new_digest = loaded.auth_file.as_ref().map(|(_, d)| *d);
        let auth_file_content_changed = new_digest != current.auth_file;
        if changes.access_changed() {
            self.state.reload_access(&loaded.config);
        }
        if changes.registries_changed() || auth_file_content_changed {
            let rsync = &loaded.config.rsyncserver.rsyncconfig;
            self.state
                .engine()
                .reload_registries(rsync, loaded.auth_file.map(|(file, _)| file));
        }
        if auth_file_content_changed && !changes.auth_file_path_changed {
            // Same path, other bytes: named like the config's own changes.
            changes
                .registries_changed
                .push("(auth_file content)".into());
        }
        *current = Running {
            config: loaded.config,
            auth_file: new_digest,
        };
        Ok(changes)
    }
}

/// Loads the file at `path` and checks it as start-up does; reads its auth file.
fn load(path: &Path, address: SocketAddr) -> Result<Loaded, ReloadError> {
    let config = Config::load(path)?;
    if let Some(found) = DefaultPasswords::find(&config.rsyncserver.auth) {
        if !is_loopback(address) {
            return Err(ReloadError::DefaultPassword(found.message(address)));
        }
    }
    let auth_file = match &config.rsyncserver.rsyncconfig.auth_file {
        None => None,
        Some(file) => {
            let bytes = std::fs::read(file).map_err(|e| {
                ReloadError::AuthFile(format!("cannot read {}: {e}", file.display()))
            })?;
            let parsed = AuthFile::parse(&bytes, file).map_err(ReloadError::AuthFile)?;
            Some((parsed, digest(&bytes)))
        }
    };
    Ok(Loaded { config, auth_file })
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Installs the service's SIGHUP handler: each SIGHUP asks the HTTPS listener (when
/// there is one) to re-read its files, and reloads the config. Installed before the
/// listener opens, so a SIGHUP never ends the process (its default action).
pub fn on_hangup(reloader: Reloader, tls: Option<TlsReload>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: the config is not reloaded; restart to apply changes");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some(tls) = &tls {
                tls.reload_now();
            }
            let file = reloader.path.display().to_string();
            match reloader.reload().await {
                Ok(changes) => {
                    tracing::info!(file, "config reloaded on SIGHUP: {changes}");
                    if !changes.needs_restart.is_empty() {
                        tracing::warn!(
                            file,
                            keys = %changes.needs_restart.join(", "),
                            "changed keys that only a restart applies: {}",
                            changes.needs_restart.join(", ")
                        );
                    }
                }
                Err(e) => tracing::error!(
                    file,
                    "config not reloaded on SIGHUP, still running with the previous one: {e}"
                ),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guessable password is refused on reload exactly as at start-up: beyond
    /// loopback only.
    #[test]
    fn a_default_password_is_refused_beyond_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "rsyncserver: {auth: {admin: admin}}\n").unwrap();
        let open: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let err = load(&path, open).err().expect("refused on 0.0.0.0");
        assert!(matches!(err, ReloadError::DefaultPassword(_)), "{err}");
        assert!(err.to_string().contains("rsyncserver.auth"), "{err}");
        assert!(load(&path, "127.0.0.1:8080".parse().unwrap()).is_ok());
    }
}
