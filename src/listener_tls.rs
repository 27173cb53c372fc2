//! HTTPS on the service listener: loads `rsyncserver.tls` into a rustls config and
//! swaps in a new one when the files change or on SIGHUP (the signal itself is caught
//! in `reload.rs`, which asks through [`TlsReload`]).
//!
//! Connections keep the config they were accepted with; each new handshake uses the
//! latest one. The crypto provider is aws-lc-rs, the same as the registry client's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// How often the certificate files are checked for changes. Kubernetes replaces a
/// mounted secret by swapping a symlink, which file-watch APIs miss; a cheap `stat`
/// every few seconds does not.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

const CERT_KEY: &str = "rsyncserver.tls.cert_file";
const KEY_KEY: &str = "rsyncserver.tls.key_file";
const CA_KEY: &str = "rsyncserver.tls.client_ca_file";

/// A TLS file that cannot be used; the message names the config key and the path.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read or does not parse as PEM.
    #[error("config key {key}: cannot read {path}: {message} (point it at a readable PEM file)")]
    Read {
        /// Dotted config key.
        key: &'static str,
        /// The file from the config.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file parses but holds nothing of the expected kind.
    #[error("config key {key}: {path} holds no {what}")]
    Empty {
        /// Dotted config key.
        key: &'static str,
        /// The file from the config.
        path: PathBuf,
        /// What was looked for, e.g. "PEM certificate".
        what: &'static str,
    },
    /// rustls refused the certificates or key (e.g. key does not match the certificate).
    #[error("config key {key}: {message}")]
    Rejected {
        /// Dotted config key.
        key: &'static str,
        /// rustls' reason.
        message: String,
    },
}

/// Reads the files of `tls` and builds a rustls server config (ALPN h2 and http/1.1).
pub fn load(tls: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(CERT_KEY, &tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| TlsError::Read {
        key: KEY_KEY,
        path: tls.key_file.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let rejected = |key: &'static str| {
        move |e: rustls::Error| TlsError::Rejected {
            key,
            message: e.to_string(),
        }
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rejected(CERT_KEY))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(CA_KEY, path)? {
                roots.add(cert).map_err(rejected(CA_KEY))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rejected {
                    key: CA_KEY,
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(rejected(KEY_KEY))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e: rustls::pki_types::pem::Error| TlsError::Read {
        key,
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// What `stat` says about the files: a change of any of them means "reload".
/// `metadata` follows symlinks, so a swapped Kubernetes `..data` link shows up as a
/// new inode.
fn fingerprint(tls: &TlsConfig) -> Vec<Option<(u64, u64, u64, SystemTime)>> {
    use std::os::unix::fs::MetadataExt;
    let files = [
        Some(&tls.cert_file),
        Some(&tls.key_file),
        tls.client_ca_file.as_ref(),
    ];
    files
        .into_iter()
        .flatten()
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                )
            })
        })
        .collect()
}

/// Asks the TLS reload task to re-read the files now (the service's SIGHUP handler
/// calls it); cheap to clone.
#[derive(Clone)]
pub struct TlsReload(Arc<tokio::sync::Notify>);

impl TlsReload {
    /// Re-read the certificate files now, whether or not their `stat` changed.
    pub fn reload_now(&self) {
        self.0.notify_one();
    }
}

/// Loads `tls` for start-up: the config to serve with, and the handle that asks the
/// reload task (also started here, polling the files) to re-read them at once.
pub async fn start(tls: TlsConfig) -> Result<(RustlsConfig, TlsReload), TlsError> {
    let first = load(&tls)?;
    let live = RustlsConfig::from_config(Arc::new(first));
    let trigger = TlsReload(Arc::new(tokio::sync::Notify::new()));
    tokio::spawn(reload_loop(
        tls,
        live.clone(),
        trigger.clone(),
        POLL_INTERVAL,
    ));
    Ok((live, trigger))
}

/// Re-reads the files when their `stat` changes or when asked (SIGHUP). A pair that
/// does not load (e.g. the key renamed in before the certificate) is logged and the old
/// config kept: the next change tries again.
async fn reload_loop(tls: TlsConfig, live: RustlsConfig, asked: TlsReload, every: Duration) {
    let mut seen = fingerprint(&tls);
    let mut poll = tokio::time::interval(every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cause = tokio::select! {
            _ = poll.tick() => "files changed",
            () = asked.0.notified() => "SIGHUP",
        };
        let now = fingerprint(&tls);
        if cause != "SIGHUP" && now == seen {
            continue;
        }
        seen = now;
        let tls = tls.clone();
        match tokio::task::spawn_blocking(move || load(&tls)).await {
            Ok(Ok(config)) => {
                live.reload_from_config(Arc::new(config));
                tracing::info!(cause, "TLS certificate reloaded; new connections use it");
            }
            Ok(Err(e)) => {
                tracing::error!(cause, error = %e, "TLS certificate not reloaded; still serving the previous one");
            }
            Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
        }
    }
}
