//! skopeo as the independent oracle: what really landed in a registry.
//!
//! References here are `REPO:TAG` or `REPO@DIGEST` inside the given registry; the
//! registry's own credentials are used, whatever the service was configured with.

use std::path::Path;

use tokio::process::Command;

use super::image::sha256_digest;
use super::push::Pushed;
use super::registry::Registry;
use super::tools::SKOPEO;

/// `skopeo inspect --raw`: the exact manifest bytes stored under `reference`.
pub async fn inspect_raw(registry: &Registry, reference: &str) -> Result<Vec<u8>, String> {
    let mut cmd = skopeo();
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(dir) = registry.oracle_cert_dir() {
        cmd.arg("--cert-dir").arg(dir);
    }
    match registry.creds() {
        Some(c) => cmd.arg("--creds").arg(c.joined()),
        None => cmd.arg("--no-creds"),
    };
    cmd.arg(format!("docker://{}/{reference}", registry.host()));
    run(cmd).await
}

/// Asserts the manifest under `reference` is byte for byte the one with `digest`.
pub async fn assert_digest(registry: &Registry, reference: &str, digest: &str) {
    if let Err(e) = check_digest(registry, reference, digest).await {
        panic!("{e}");
    }
}

/// Like [`assert_digest`], as a result.
pub async fn check_digest(
    registry: &Registry,
    reference: &str,
    digest: &str,
) -> Result<(), String> {
    let raw = inspect_raw(registry, reference).await?;
    let got = sha256_digest(&raw);
    if got != digest {
        return Err(format!(
            "{}/{reference}: manifest digest {got}, expected {digest}",
            registry.host()
        ));
    }
    Ok(())
}

/// Asserts `reference` holds the whole of `expected`: `skopeo copy --all
/// --preserve-digests` to a `dir:` folder (which verifies every blob's digest and
/// converts nothing) must succeed, and the folder must hold the top manifest with the
/// expected digest, every child manifest, and every config and layer blob.
pub async fn assert_landed(registry: &Registry, reference: &str, expected: &Pushed) {
    if let Err(e) = check_landed(registry, reference, expected).await {
        panic!("{e}");
    }
}

/// Like [`assert_landed`], as a result.
pub async fn check_landed(
    registry: &Registry,
    reference: &str,
    expected: &Pushed,
) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("imagersync-oracle-")
        .tempdir()
        .expect("tempdir");
    let copy = dir.path().join("copy");
    let mut cmd = skopeo();
    cmd.args([
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--quiet",
    ]);
    if let Some(dir) = registry.oracle_cert_dir() {
        cmd.arg("--src-cert-dir").arg(dir);
    }
    match registry.creds() {
        Some(c) => cmd.arg("--src-creds").arg(c.joined()),
        None => cmd.arg("--src-no-creds"),
    };
    cmd.arg(format!("docker://{}/{reference}", registry.host()));
    cmd.arg(format!("dir:{}", copy.display()));
    run(cmd).await?;
    let place = format!("{}/{reference}", registry.host());
    let top = file_digest(&copy.join("manifest.json"));
    if top.as_deref() != Some(expected.digest.as_str()) {
        return Err(format!(
            "{place}: manifest digest {top:?}, expected {}",
            expected.digest
        ));
    }
    let mut missing = Vec::new();
    for child in &expected.children {
        let file = copy.join(format!("{}.manifest.json", hex_of(child)));
        if file_digest(&file).as_deref() != Some(child.as_str()) {
            missing.push(format!("child manifest {child}"));
        }
    }
    for blob in &expected.blobs {
        let size = std::fs::metadata(copy.join(hex_of(&blob.digest)))
            .map(|m| m.len())
            .ok();
        if size != Some(blob.size) {
            missing.push(format!(
                "blob {} ({} bytes, found {size:?})",
                blob.digest, blob.size
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{place}: missing or wrong after skopeo copy: {}",
            missing.join(", ")
        ))
    }
}

/// Asserts nothing is stored under `reference` (skopeo says manifest or name unknown;
/// any other failure, like a refused connection, is not accepted as "absent").
pub async fn assert_absent(registry: &Registry, reference: &str) {
    match inspect_raw(registry, reference).await {
        Ok(raw) => panic!(
            "{}/{reference} exists (digest {}), expected it absent",
            registry.host(),
            sha256_digest(&raw)
        ),
        Err(e) => {
            let lower = e.to_lowercase();
            assert!(
                lower.contains("manifest unknown") || lower.contains("name unknown"),
                "{}/{reference}: expected 'manifest unknown', skopeo said: {e}",
                registry.host()
            );
        }
    }
}

/// The hex part of `sha256:<hex>`.
fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// `sha256:<hex>` of a file's bytes, `None` if it cannot be read.
fn file_digest(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha256_digest(&b))
}

fn skopeo() -> Command {
    let mut cmd = Command::new(SKOPEO.path());
    cmd.arg("--insecure-policy");
    cmd.kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run skopeo: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `skopeo copy --preserve-digests` of `from_ref` in `from` to `to_ref` in `to`: a push
/// by a real client (its own `User-Agent`), e.g. to make a registry announce it.
/// Anonymous registries only.
pub async fn copy(from: &Registry, from_ref: &str, to: &Registry, to_ref: &str) {
    let mut cmd = skopeo();
    cmd.args([
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-no-creds",
        "--dest-no-creds",
    ]);
    cmd.arg(format!("docker://{}/{from_ref}", from.host()));
    cmd.arg(format!("docker://{}/{to_ref}", to.host()));
    if let Err(e) = run(cmd).await {
        panic!("skopeo copy {from_ref} -> {to_ref}: {e}");
    }
}
