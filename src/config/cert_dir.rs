//! Docker's per-registry certificate folders (`/etc/docker/certs.d/<host:port>/`, skopeo's
//! `--cert-dir`): `*.crt` files are trust anchors, and a `*.cert` file with the `*.key` of
//! the same name is a client certificate. Read at start-up to refuse a half pair, and
//! again when a registry's client is built.

use std::path::{Path, PathBuf};

/// A client certificate (PEM chain) and its private key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPair {
    /// The certificate, then any intermediates, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What one certificate folder holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertDir {
    /// `*.crt` files, by name.
    pub anchors: Vec<PathBuf>,
    /// `*.cert` + `*.key` pairs, by name; a TLS client sends one, the first.
    pub clients: Vec<ClientPair>,
}

/// Reads `dir` as Docker does; a `*.cert` without its `*.key` (or the reverse) is an error
/// naming the missing file, as Docker refuses it too.
pub fn read_cert_dir(dir: &Path) -> Result<CertDir, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the folder {}: {e}", dir.display()))?;
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read the folder {}: {e}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut found = CertDir::default();
    for name in &names {
        if name.ends_with(".crt") {
            found.anchors.push(dir.join(name));
        } else if let Some(base) = name.strip_suffix(".cert") {
            let key = format!("{base}.key");
            if !names.contains(&key) {
                return Err(format!(
                    "{}: client certificate {name} has no key {key} beside it (CA certificates must end in .crt)",
                    dir.display()
                ));
            }
            found.clients.push(ClientPair {
                cert: dir.join(name),
                key: dir.join(key),
            });
        } else if let Some(base) = name.strip_suffix(".key") {
            let cert = format!("{base}.cert");
            if !names.contains(&cert) {
                return Err(format!(
                    "{}: key {name} has no client certificate {cert} beside it",
                    dir.display()
                ));
            }
        }
    }
    Ok(found)
}

/// Every `<host[:port]>` folder of a `certs.d` folder, read with [`read_cert_dir`].
pub fn check_certs_d(certs_d: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(certs_d)
        .map_err(|e| format!("cannot read the folder {}: {e}", certs_d.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read the folder {}: {e}", certs_d.display()))?
            .path();
        if path.is_dir() {
            read_cert_dir(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_anchors_and_pairs_and_refuses_half_pairs() {
        // Files in the folder, then (anchors, client pairs) or a part of the error.
        type Case<'a> = (&'a [&'a str], Result<(usize, usize), &'a str>);
        let cases: &[Case] = &[
            (
                &["ca.crt", "b.crt", "client.cert", "client.key"],
                Ok((2, 1)),
            ),
            (&["ca.crt", "README"], Ok((1, 0))),
            (&["client.cert"], Err("has no key client.key")),
            (
                &["client.key"],
                Err("has no client certificate client.cert"),
            ),
            (&["ca.pem", "x.cert", "y.key"], Err("has no key x.key")),
        ];
        for (files, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            for f in *files {
                std::fs::write(dir.path().join(f), "x").unwrap();
            }
            let got = read_cert_dir(dir.path()).map(|d| (d.anchors.len(), d.clients.len()));
            match (got, expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{files:?}"),
                (Err(e), Err(want)) => assert!(e.contains(want), "{files:?}: {e}"),
                (got, want) => panic!("{files:?}: got {got:?}, expected {want:?}"),
            }
        }
    }
}
