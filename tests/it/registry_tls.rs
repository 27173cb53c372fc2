//! TLS to registries whose certificates are made the way Docker's documentation makes
//! them (`openssl req -x509 -newkey rsa:4096 -nodes -sha256 ... -addext subjectAltName=`):
//! trusted through `ca_file`, `cert_dir` and `certs_d`; refused, in words, without them,
//! for the wrong name and when expired; and a registry that requires client certificates
//! (`http.tls.clientcas`). The engine runs as a library against real docker-registry
//! processes; skopeo checks what landed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::engine::assert_success;
use crate::common::push::Pushed;
use crate::common::tools::OPENSSL;
use crate::common::{skopeo, Format, Image, Registry};
use imagersync::config::{RegistryCredential, RsyncConfig};
use imagersync::engine::Engine;
use imagersync::engine::{SyncReport, SyncStatus};

const KIB: usize = 1024;

/// Runs openssl in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(OPENSSL.path())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Docker's recipe ("Use self-signed certificates", distribution's deploying guide):
/// `domain.key` and a self-signed `domain.crt` for `san` (e.g. `IP:127.0.0.1`), in `dir`.
fn docker_self_signed(dir: &Path, san: &str) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:4096",
            "-nodes",
            "-sha256",
            "-keyout",
            "domain.key",
            "-addext",
            &format!("subjectAltName = {san}"),
            "-x509",
            "-days",
            "365",
            "-out",
            "domain.crt",
            "-subj",
            "/CN=imagersync test registry",
        ],
    );
    (dir.join("domain.crt"), dir.join("domain.key"))
}

/// The same recipe, but valid only in January 2020: `openssl req -x509` of OpenSSL 3.0
/// cannot set past dates, so the request is self-signed with `openssl ca -selfsign`.
fn expired_self_signed(dir: &Path, san: &str) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = expired\n[expired]\ndatabase = index.txt\nnew_certs_dir = .\n\
         serial = serial\ndefault_md = sha256\npolicy = any\ncopy_extensions = copy\n\
         unique_subject = no\n[any]\ncommonName = supplied\n",
    )
    .unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "01\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:4096",
            "-nodes",
            "-sha256",
            "-keyout",
            "domain.key",
            "-addext",
            &format!("subjectAltName = {san}"),
            "-out",
            "domain.csr",
            "-subj",
            "/CN=imagersync expired registry",
        ],
    );
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "domain.key",
            "-in",
            "domain.csr",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-out",
            "domain.crt",
        ],
    );
    (dir.join("domain.crt"), dir.join("domain.key"))
}

/// A docker-registry serving HTTPS with `cert` and `key`, plus `extra` config.
async fn https_registry(cert: &Path, key: &Path, extra: &str) -> Registry {
    let yaml = format!(
        "http:\n  tls:\n    certificate: {}\n    key: {}\n{extra}",
        cert.display(),
        key.display()
    );
    Registry::start_configured(None, &yaml).await
}

/// A plain-HTTP source holding one small image.
async fn source() -> (Registry, Pushed) {
    let src = Registry::start_anonymous().await;
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    (src, pushed)
}

/// Syncs `pushed` to `target/team/app:tag` with `entry` for the target (none: no entry)
/// and `certs_d`.
async fn sync(
    src: &Registry,
    pushed: &Pushed,
    target: &Registry,
    entry: Option<RegistryCredential>,
    certs_d: Option<PathBuf>,
    tag: &str,
) -> SyncReport {
    let mut auth = BTreeMap::new();
    auth.insert(
        "src".to_owned(),
        RegistryCredential {
            registry: src.host(),
            plain_http: true,
            ..RegistryCredential::default()
        },
    );
    if let Some(entry) = entry {
        auth.insert("tls".to_owned(), entry);
    }
    let engine = Engine::new(&RsyncConfig {
        auth,
        certs_d,
        // A registry reached through certs_d alone has no auth entry to allow it.
        allowed_registries: vec![target.host()],
        ..RsyncConfig::default()
    });
    engine
        .sync(
            &pushed.reference(),
            &format!("{}/team/app:{tag}", target.host()),
        )
        .await
}

/// An `auth` entry for `target` changed by `f`.
fn entry(target: &Registry, f: impl FnOnce(&mut RegistryCredential)) -> RegistryCredential {
    let mut c = RegistryCredential {
        registry: target.host(),
        ..RegistryCredential::default()
    };
    f(&mut c);
    c
}

/// The error of a failed sync, asserting it failed, names the registry and never sends
/// the user to `insecure`.
fn refusal(report: &SyncReport, target: &Registry) -> String {
    assert_eq!(report.status, SyncStatus::Failed, "log:\n{}", report.log);
    let error = report.error.clone().expect("a failed sync has an error");
    assert!(error.contains(&target.host()), "{error}");
    assert!(
        !error.contains("insecure"),
        "must not point at insecure: {error}"
    );
    println!("refused as expected: {error}");
    error
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_self_signed_certificate_is_trusted_through_ca_file_cert_dir_and_certs_d() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = docker_self_signed(dir.path(), "IP:127.0.0.1");
    let text = String::from_utf8(
        Command::new(OPENSSL.path())
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("CA:TRUE"),
        "the recipe makes a CA certificate (what webpki refuses as end entity):\n{text}"
    );
    let target = https_registry(&cert, &key, "").await;
    let (src, pushed) = source().await;

    // Not trusted: refused, saying it is self-signed and which option trusts it.
    let refused = sync(&src, &pushed, &target, None, None, "none").await;
    let error = refusal(&refused, &target);
    for words in ["self-signed", "not trusted", "ca_file", "cert_dir"] {
        assert!(error.contains(words), "{words:?} missing: {error}");
    }
    skopeo::assert_absent(&target, "team/app:none").await;

    // The certificate itself as ca_file.
    let with_ca = entry(&target, |c| c.ca_file = Some(cert.clone()));
    assert_success(&sync(&src, &pushed, &target, Some(with_ca), None, "ca").await);
    skopeo::assert_landed(&target, "team/app:ca", &pushed).await;

    // A cert_dir holding it as `*.crt`, as skopeo's --cert-dir reads it.
    let cert_dir = dir.path().join("cert-dir");
    std::fs::create_dir(&cert_dir).unwrap();
    std::fs::copy(&cert, cert_dir.join("domain.crt")).unwrap();
    let with_dir = entry(&target, |c| c.cert_dir = Some(cert_dir.clone()));
    assert_success(&sync(&src, &pushed, &target, Some(with_dir), None, "dir").await);
    skopeo::assert_landed(&target, "team/app:dir", &pushed).await;

    // certs_d/<host:port>/ca.crt, for a registry without any auth entry.
    let certs_d = dir.path().join("certs.d");
    std::fs::create_dir_all(certs_d.join(target.host())).unwrap();
    std::fs::copy(&cert, certs_d.join(target.host()).join("ca.crt")).unwrap();
    assert_success(
        &sync(
            &src,
            &pushed,
            &target,
            None,
            Some(certs_d.clone()),
            "certs-d",
        )
        .await,
    );
    skopeo::assert_landed(&target, "team/app:certs-d", &pushed).await;

    // A certs.d folder for another registry trusts nothing here.
    let elsewhere = dir.path().join("other.d");
    std::fs::create_dir_all(elsewhere.join("127.0.0.1:1")).unwrap();
    std::fs::copy(&cert, elsewhere.join("127.0.0.1:1").join("ca.crt")).unwrap();
    let refused = sync(&src, &pushed, &target, None, Some(elsewhere), "other").await;
    assert!(refusal(&refused, &target).contains("self-signed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_certificate_for_another_name_is_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    // Docker's example name; the registry is reached as 127.0.0.1.
    let (cert, key) = docker_self_signed(dir.path(), "DNS:myregistry.domain.com");
    let target = https_registry(&cert, &key, "").await;
    let (src, pushed) = source().await;
    let with_ca = entry(&target, |c| c.ca_file = Some(cert.clone()));
    let refused = sync(&src, &pushed, &target, Some(with_ca), None, "v1").await;
    let error = refusal(&refused, &target);
    for words in [
        "not valid for the name",
        "127.0.0.1",
        "myregistry.domain.com",
    ] {
        assert!(error.contains(words), "{words:?} missing: {error}");
    }
    skopeo::assert_absent(&target, "team/app:v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_but_expired_certificate_is_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = expired_self_signed(dir.path(), "IP:127.0.0.1");
    let target = https_registry(&cert, &key, "").await;
    let (src, pushed) = source().await;
    let with_ca = entry(&target, |c| c.ca_file = Some(cert.clone()));
    let refused = sync(&src, &pushed, &target, Some(with_ca), None, "v1").await;
    let error = refusal(&refused, &target);
    for words in ["expired", "2020-02-01"] {
        assert!(error.contains(words), "{words:?} missing: {error}");
    }
    skopeo::assert_absent(&target, "team/app:v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_requires_client_certificates_gets_the_configured_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = docker_self_signed(dir.path(), "IP:127.0.0.1");
    // The client's own self-signed certificate is the registry's only client CA.
    let client = dir.path().join("client");
    std::fs::create_dir(&client).unwrap();
    openssl(
        &client,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-keyout",
            "client.key",
            "-x509",
            "-days",
            "1",
            "-out",
            "client.cert",
            "-subj",
            "/CN=imagersync",
        ],
    );
    std::fs::copy(&cert, client.join("domain.crt")).unwrap();
    let extra = format!(
        "    clientcas:\n      - {}\n",
        client.join("client.cert").display()
    );
    let mut target = https_registry(&cert, &key, &extra).await;
    target.set_oracle_cert_dir(client.clone());
    let (src, pushed) = source().await;

    // Without a client certificate: refused, saying which keys give one.
    let without = entry(&target, |c| c.ca_file = Some(cert.clone()));
    let refused = sync(&src, &pushed, &target, Some(without), None, "none").await;
    let error = refusal(&refused, &target);
    for words in ["client certificate", "client_cert_file", "client_key_file"] {
        assert!(error.contains(words), "{words:?} missing: {error}");
    }
    skopeo::assert_absent(&target, "team/app:none").await;

    // client_cert_file / client_key_file in the auth entry.
    let with_pair = entry(&target, |c| {
        c.ca_file = Some(cert.clone());
        c.client_cert_file = Some(client.join("client.cert"));
        c.client_key_file = Some(client.join("client.key"));
    });
    assert_success(&sync(&src, &pushed, &target, Some(with_pair), None, "pair").await);
    skopeo::assert_landed(&target, "team/app:pair", &pushed).await;

    // The same folder as certs_d/<host:port>/ (domain.crt, client.cert, client.key).
    let certs_d = dir.path().join("certs.d");
    std::fs::create_dir(&certs_d).unwrap();
    std::os::unix::fs::symlink(&client, certs_d.join(target.host())).unwrap();
    assert_success(&sync(&src, &pushed, &target, None, Some(certs_d), "certs-d").await);
    skopeo::assert_landed(&target, "team/app:certs-d", &pushed).await;
}
