//! The certificate files of one registry (from its `auth` entry and `certs_d`) and the
//! rustls client configuration built from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::trust::AnchorVerifier;
use crate::config::{read_cert_dir, ClientPair, RegistryCredential};

/// Certificate files for one registry: extra trust anchors and a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM files of trust anchors: CAs, or the registry's own certificate.
    pub anchors: Vec<PathBuf>,
    /// The client certificate sent to registries that ask for one.
    pub client: Option<ClientPair>,
}

impl TlsFiles {
    /// The files for `registry` (`host[:port]`): the entry's `ca_file`, its `cert_dir`,
    /// and `certs_d/<registry>/`. Anchors add up; of client pairs the entry's own
    /// `client_cert_file` wins, then `cert_dir`'s, then `certs_d`'s (first by file name).
    pub fn gather(
        entry: Option<&RegistryCredential>,
        certs_d: Option<&Path>,
        registry: &str,
    ) -> Result<Self, String> {
        let mut files = TlsFiles::default();
        let mut pairs = Vec::new();
        if let Some(entry) = entry {
            files.anchors.extend(entry.ca_file.clone());
            pairs.extend(entry.client_pair());
            if let Some(dir) = &entry.cert_dir {
                let found = read_cert_dir(dir).map_err(|e| format!("cert_dir {e}"))?;
                files.anchors.extend(found.anchors);
                pairs.extend(found.clients);
            }
        }
        if let Some(dir) = certs_d.map(|d| d.join(registry)).filter(|d| d.is_dir()) {
            let found = read_cert_dir(&dir).map_err(|e| format!("certs_d {e}"))?;
            files.anchors.extend(found.anchors);
            pairs.extend(found.clients);
        }
        files.client = pairs.into_iter().next();
        Ok(files)
    }

    /// Whether there is anything to add to a default TLS set-up.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty() && self.client.is_none()
    }
}

/// A verifying rustls configuration: the platform's roots plus `files.anchors` (each
/// also accepted as the server's own certificate, see `trust.rs`), and the client pair.
/// Same crypto provider and protocol versions as reqwest's own; HTTP/1.1 only, as the
/// reqwest build has no HTTP/2.
pub(crate) fn verified_config(files: &TlsFiles) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let mut anchors = Vec::new();
    for path in &files.anchors {
        anchors.extend(read_certs(path, "trust anchor file")?);
    }
    let inner = if anchors.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(anchors.clone(), provider.clone())
    }
    .map_err(|e| format!("cannot set up certificate verification: {e}"))?;
    let verifier = AnchorVerifier::new(Arc::new(inner), anchors);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match &files.client {
        Some(pair) => {
            let (chain, key) = read_pair(pair)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "client certificate {} and key {} do not make a usable pair: {e}",
                    pair.cert.display(),
                    pair.key.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client pair as reqwest's identity, for the transports that skip verification.
pub(crate) fn identity(pair: &ClientPair) -> Result<reqwest::Identity, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut pem = read(&pair.cert)?;
    pem.push(b'\n');
    pem.extend(read(&pair.key)?);
    reqwest::Identity::from_pem(&pem).map_err(|e| {
        format!(
            "client certificate {} and key {} do not make a usable pair: {e}",
            pair.cert.display(),
            pair.key.display()
        )
    })
}

/// The crypto provider reqwest picks: the process default, else aws-lc-rs.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Every certificate of a PEM file; none is an error naming the file.
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{what} {}: cannot read PEM certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_pair(
    pair: &ClientPair,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = read_certs(&pair.cert, "client certificate")?;
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| {
        format!(
            "client key {}: cannot read a PEM private key: {e}",
            pair.key.display()
        )
    })?;
    Ok((chain, key))
}
