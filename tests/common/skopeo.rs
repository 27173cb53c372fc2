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

/// Asserts `reference` holds the whole of `expected`: the top manifest digest, every
/// child manifest by digest, and (through `skopeo copy --all` to an `oci:` folder,
/// which verifies each blob's digest) every config and layer blob.
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
    check_digest(registry, reference, &expected.digest).await?;
    let repo = repository_of(reference);
    for child in &expected.children {
        check_digest(registry, &format!("{repo}@{child}"), child).await?;
    }
    let dir = tempfile::Builder::new()
        .prefix("imagersync-oracle-")
        .tempdir()
        .expect("tempdir");
    let layout = dir.path().join("layout");
    let mut cmd = skopeo();
    cmd.args([
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--quiet",
    ]);
    match registry.creds() {
        Some(c) => cmd.arg("--src-creds").arg(c.joined()),
        None => cmd.arg("--src-no-creds"),
    };
    cmd.arg(format!("docker://{}/{reference}", registry.host()));
    cmd.arg(format!("oci:{}:copy", layout.display()));
    run(cmd).await?;
    let missing: Vec<String> = expected
        .blobs
        .iter()
        .filter(|b| blob_size(&layout, &b.digest) != Some(b.size))
        .map(|b| format!("{} ({} bytes)", b.digest, b.size))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{}/{reference}: blobs missing or of the wrong size after skopeo copy: {}",
            registry.host(),
            missing.join(", ")
        ));
    }
    Ok(())
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

/// `team/app` of `team/app:v1` or `team/app@sha256:...`.
pub fn repository_of(reference: &str) -> &str {
    if let Some((repo, _)) = reference.split_once('@') {
        return repo;
    }
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => reference,
    }
}

fn blob_size(layout: &Path, digest: &str) -> Option<u64> {
    let hex = digest.strip_prefix("sha256:")?;
    std::fs::metadata(layout.join("blobs/sha256").join(hex))
        .ok()
        .map(|m| m.len())
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
