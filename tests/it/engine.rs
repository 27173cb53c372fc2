//! The sync engine driven directly (no HTTP) against real registries, checked by skopeo:
//! every rule form, incremental copies, mounts, and what lands when a copy fails.

use std::collections::BTreeMap;

use crate::common::engine::assert_success;
use crate::common::fault_proxy::{FaultProxy, Reply, Rule};
use crate::common::{skopeo, Format, Image, Index, Platform, Registry, TokenIssuer};
use imagersync::config::{RegistryCredential, RsyncConfig, TaskConfig};
use imagersync::engine::{Engine, FailureKind, ImageStatus, SyncRequest, SyncStatus};
use imagersync::secret::Secret;

const KIB: usize = 1024;

/// An engine whose config knows every given registry (plain HTTP, their credentials).
fn engine_for(registries: &[&Registry]) -> Engine {
    let task = TaskConfig {
        proc_num: 4,
        retries: 1,
        ..TaskConfig::default()
    };
    crate::common::engine::engine_for(registries.iter().map(|r| (r.host(), *r)), task)
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_an_image_then_finds_it_in_sync() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_htpasswd("pusher", "dst-Secret-1").await;
    let image = Image::random(Format::Oci, &[300 * KIB, 0, 40 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let engine = engine_for(&[&src, &dst]);

    let target = format!("{}/prod/app:v1", dst.host());
    let report = engine.sync(&pushed.reference(), &target).await;
    assert_success(&report);
    let img = &report.images[0];
    assert_eq!(img.status, ImageStatus::Synced);
    assert_eq!(img.digest.as_deref(), Some(pushed.digest.as_str()));
    assert_eq!(img.blobs_copied, pushed.blobs.len() as u64);
    assert_eq!(img.bytes_copied, pushed.blob_bytes());
    assert!(report.log.contains("username: pusher"), "{}", report.log);
    assert!(!report.log.contains("dst-Secret-1"));
    skopeo::assert_landed(&dst, "prod/app:v1", &pushed).await;

    let again = engine.sync(&pushed.reference(), &target).await;
    assert_success(&again);
    assert_eq!(again.images[0].status, ImageStatus::AlreadySynced);
    assert_eq!(again.images[0].blobs_copied, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_whole_indexes_of_both_formats() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let engine = engine_for(&[&src, &dst]);
    let platforms = [Platform::AMD64, Platform::ARM64, Platform::ARMV7];
    for (format, repo) in [(Format::Oci, "multi/oci"), (Format::Docker, "multi/docker")] {
        let index = Index::random(format, &platforms, 128 * KIB, 32 * KIB);
        let pushed = src.push_index(repo, "v2", &index).await;
        let report = engine
            .sync(&pushed.reference(), &format!("{}/{repo}", dst.host()))
            .await;
        assert_success(&report);
        let img = &report.images[0];
        assert_eq!(img.digest.as_deref(), Some(index.digest.as_str()));
        assert_eq!(img.manifests_pushed, 1 + platforms.len() as u64);
        assert_eq!(
            img.blobs_copied,
            pushed.blobs.len() as u64,
            "the shared base layer is sent once"
        );
        skopeo::assert_landed(&dst, &format!("{repo}:v2"), &pushed).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_form_selects_the_right_tags() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let engine = engine_for(&[&src, &dst]);
    let image = Image::random(Format::Docker, &[16 * KIB]);
    let other = Image::random(Format::Oci, &[16 * KIB]);
    for tag in ["v1", "v2", "latest"] {
        src.push_image("rules/app", tag, &image).await;
    }
    let pushed_other = src.push_image("rules/app", "v10-rc", &other).await;
    let s = |rule: &str| format!("{}/rules/app{rule}", src.host());
    let d = |repo: &str| format!("{}/{repo}", dst.host());

    // Every tag.
    let report = engine.sync(&s(""), &d("all/app")).await;
    assert_success(&report);
    assert_eq!(report.images.len(), 4);
    for tag in ["v1", "v2", "latest"] {
        skopeo::assert_digest(&dst, &format!("all/app:{tag}"), &image.digest).await;
    }
    skopeo::assert_landed(&dst, "all/app:v10-rc", &pushed_other).await;

    // A list with renaming, and a target list.
    let report = engine
        .run_request(&SyncRequest {
            source: s(":v1,v2"),
            targets: vec![d("renamed/app:one,two"), d("copy/app")],
            ..SyncRequest::default()
        })
        .await;
    assert_success(&report);
    let landed: Vec<_> = report.images.iter().map(|i| i.target.clone()).collect();
    assert_eq!(
        landed,
        [
            d("renamed/app:one"),
            d("renamed/app:two"),
            d("copy/app:v1"),
            d("copy/app:v2")
        ]
    );
    skopeo::assert_digest(&dst, "renamed/app:two", &image.digest).await;

    // A regex.
    let report = engine.sync(&s(":/^v[0-9]+$/"), &d("regex/app")).await;
    assert_success(&report);
    let tags: Vec<_> = report.images.iter().map(|i| i.target.clone()).collect();
    assert_eq!(tags, [d("regex/app:v1"), d("regex/app:v2")]);
    skopeo::assert_absent(&dst, "regex/app:latest").await;

    // A digest, to a digest-only target.
    let by_digest = format!("{}/rules/app@{}", src.host(), pushed_other.digest);
    let report = engine.sync(&by_digest, &d("digest/app")).await;
    assert_success(&report);
    skopeo::assert_landed(
        &dst,
        &format!("digest/app@{}", pushed_other.digest),
        &pushed_other,
    )
    .await;

    // Nothing matches: a clear error, nothing contacted at the target (the target is
    // reached through a fault proxy here, which counts every request).
    let proxy = FaultProxy::start(&dst.host()).await;
    let engine = crate::common::engine::engine_for(
        [(src.host(), &src), (proxy.host(), &dst)],
        TaskConfig::default(),
    );
    let report = engine
        .sync(&s(":/^nope$/"), &format!("{}/none/app", proxy.host()))
        .await;
    assert_eq!(report.status, SyncStatus::Unusual);
    assert!(report.error.unwrap().contains("matches the source rule"));
    assert!(
        proxy.requests().is_empty(),
        "the target was contacted:\n{}",
        proxy.summary()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_and_skips_blobs_the_target_registry_already_has() {
    let reg = Registry::start_anonymous().await;
    let engine = engine_for(&[&reg]);
    let base = crate::common::Layer::random(200 * KIB);
    let first = Image::new(Format::Oci, Platform::AMD64, vec![base.clone()]);
    let second = Image::new(
        Format::Oci,
        Platform::AMD64,
        vec![base, crate::common::Layer::random(10 * KIB)],
    );
    let pushed = reg.push_image("src/app", "v1", &first).await;
    reg.push_image("src/app", "v2", &second).await;

    // Same registry, other repository: blobs are mounted, not streamed.
    let report = engine
        .sync(
            &pushed.reference(),
            &format!("{}/mirror/app:v1", reg.host()),
        )
        .await;
    assert_success(&report);
    assert_eq!(report.images[0].blobs_mounted, pushed.blobs.len() as u64);
    assert_eq!(report.images[0].bytes_copied, 0);
    skopeo::assert_landed(&reg, "mirror/app:v1", &pushed).await;

    // The second image shares the base layer already in mirror/app: that one is skipped.
    let report = engine
        .sync(
            &format!("{}/src/app:v2", reg.host()),
            &format!("{}/mirror/app:v2", reg.host()),
        )
        .await;
    assert_success(&report);
    assert_eq!(report.images[0].blobs_skipped, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_name_the_registry_and_leave_no_tag() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_htpasswd("pusher", "right-Pw-9").await;
    let image = Image::random(Format::Oci, &[8 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;

    // Missing source tag.
    let engine = engine_for(&[&src, &dst]);
    let report = engine
        .sync(
            &format!("{}/team/app:missing", src.host()),
            &format!("{}/team/app:v1", dst.host()),
        )
        .await;
    assert_eq!(report.status, SyncStatus::Failed);
    assert_eq!(report.failure, Some(FailureKind::Registry));
    let error = report.error.unwrap();
    assert!(
        error.contains(&src.host()) && error.contains("404"),
        "{error}"
    );
    assert!(report
        .log
        .contains("Finished, 1 sync tasks failed, 0 tasks generate failed"));

    // Wrong target password.
    let mut auth = BTreeMap::new();
    auth.insert(
        "src".to_owned(),
        RegistryCredential {
            registry: src.host(),
            insecure: true,
            ..RegistryCredential::default()
        },
    );
    auth.insert(
        "dst".to_owned(),
        RegistryCredential {
            registry: dst.host(),
            username: Some("pusher".into()),
            password: Some(Secret::new("wrong-Pw-7")),
            insecure: true,
            ..RegistryCredential::default()
        },
    );
    let engine = Engine::new(&RsyncConfig {
        auth,
        task: TaskConfig::default(),
        ..RsyncConfig::default()
    });
    let report = engine
        .sync(&pushed.reference(), &format!("{}/team/app:v1", dst.host()))
        .await;
    assert_eq!(report.status, SyncStatus::Failed);
    let error = report.error.unwrap();
    assert!(
        error.contains(&dst.host()) && error.contains("401"),
        "{error}"
    );
    assert!(!error.contains("wrong-Pw-7") && !report.log.contains("wrong-Pw-7"));
    skopeo::assert_absent(&dst, "team/app:v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_filter_and_force() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let engine = engine_for(&[&src, &dst]);
    let index = Index::random(
        Format::Oci,
        &[Platform::AMD64, Platform::ARM64, Platform::ARMV7],
        64 * KIB,
        16 * KIB,
    );
    let pushed = src.push_index("multi/app", "v1", &index).await;
    let request = |platforms: &[&str], force: bool| SyncRequest {
        source: pushed.reference(),
        targets: vec![format!("{}/arm/app:v1", dst.host())],
        force,
        platforms: platforms.iter().map(|p| p.to_string()).collect(),
        ..SyncRequest::default()
    };

    let report = engine.run_request(&request(&["linux/arm64"], false)).await;
    assert_success(&report);
    let img = &report.images[0];
    let digest = img.digest.clone().unwrap();
    assert_ne!(digest, index.digest, "a filtered index is a new index");
    assert_eq!(img.manifests_pushed, 2, "one child and the index");
    skopeo::assert_digest(&dst, "arm/app:v1", &digest).await;
    // The landed index, read back by skopeo: exactly the source's arm64 entry, byte-equal
    // (same JSON object), and no amd64 or arm/v7 entry.
    let landed: serde_json::Value =
        serde_json::from_slice(&skopeo::inspect_raw(&dst, "arm/app:v1").await.unwrap()).unwrap();
    let source: serde_json::Value = serde_json::from_slice(&index.manifest).unwrap();
    let source_entries = source["manifests"].as_array().unwrap();
    assert_eq!(source_entries.len(), 3);
    assert_eq!(
        landed["manifests"],
        serde_json::json!([source_entries[1].clone()]),
        "the filtered index keeps the arm64 descriptor as the source wrote it"
    );
    assert_eq!(landed["mediaType"], source["mediaType"]);
    for dropped in [&index.images[0].digest, &index.images[2].digest] {
        assert!(
            !landed.to_string().contains(dropped.as_str()),
            "dropped child {dropped} still listed: {landed}"
        );
    }
    let arm64 = &index.images[1].digest;
    skopeo::assert_digest(&dst, &format!("arm/app@{arm64}"), arm64).await;
    skopeo::assert_absent(&dst, &format!("arm/app@{}", index.images[0].digest)).await;

    // The same filter again is in sync; forced, it is pushed again.
    let again = engine.run_request(&request(&["linux/arm64"], false)).await;
    assert_eq!(again.images[0].status, ImageStatus::AlreadySynced);
    let forced = engine.run_request(&request(&["linux/arm64"], true)).await;
    assert_success(&forced);
    assert_eq!(forced.images[0].status, ImageStatus::Synced);
    assert_eq!(
        forced.images[0].blobs_skipped, 3,
        "blobs are still only checked"
    );

    let none = engine
        .run_request(&request(&["windows/amd64"], false))
        .await;
    assert_eq!(none.status, SyncStatus::Failed);
    assert!(none
        .error
        .unwrap()
        .contains("no entry of the index matches"));
    let bad = engine.run_request(&request(&["linux amd64"], false)).await;
    assert_eq!(bad.status, SyncStatus::Unusual);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_syncs_send_a_shared_blob_once() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let engine = std::sync::Arc::new(engine_for(&[&src, &dst]));
    let image = Image::random(Format::Oci, &[2 * 1024 * KIB, 1024 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let engine = engine.clone();
            let (source, target) = (pushed.reference(), format!("{}/copy{i}/app:v1", dst.host()));
            tokio::spawn(async move { engine.sync(&source, &target).await })
        })
        .collect();
    let mut copied = 0;
    for run in runs {
        let report = run.await.unwrap();
        assert_success(&report);
        let img = &report.images[0];
        assert_eq!(
            img.blobs_copied + img.blobs_mounted + img.blobs_skipped,
            pushed.blobs.len() as u64
        );
        copied += img.blobs_copied;
    }
    assert_eq!(
        copied,
        pushed.blobs.len() as u64,
        "each blob crosses once; the other syncs mount it"
    );
    for i in 0..4 {
        skopeo::assert_landed(&dst, &format!("copy{i}/app:v1"), &pushed).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_registries_as_target_and_source() {
    let issuer = TokenIssuer::start("robot", "token-Pw-3").await;
    let tokened = Registry::start_token("robot", "token-Pw-3", &issuer).await;
    let src = Registry::start_anonymous().await;
    let back = Registry::start_anonymous().await;
    let index = Index::random(
        Format::Oci,
        &[Platform::AMD64, Platform::ARM64],
        64 * KIB,
        8 * KIB,
    );
    let pushed = src.push_index("team/app", "v1", &index).await;
    let engine = engine_for(&[&src, &tokened, &back]);

    let into = engine
        .sync(
            &pushed.reference(),
            &format!("{}/team/app:v1", tokened.host()),
        )
        .await;
    assert_success(&into);
    skopeo::assert_landed(&tokened, "team/app:v1", &pushed).await;
    let out = engine
        .sync(
            &format!("{}/team/app:v1", tokened.host()),
            &format!("{}/team/app:v1", back.host()),
        )
        .await;
    assert_success(&out);
    skopeo::assert_landed(&back, "team/app:v1", &pushed).await;

    // Tokens are cached per scope and reused: far fewer token requests than registry calls.
    let asked = issuer.requests();
    assert!(asked <= 6, "{asked} token requests for two syncs");
    assert!(issuer
        .scopes()
        .iter()
        .any(|s| s == "repository:team/app:pull,push"));
    for token in issuer.issued() {
        assert!(!into.log.contains(&token) && !out.log.contains(&token));
    }
    assert!(!into.log.contains("token-Pw-3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_expires_mid_sync_is_renewed() {
    let issuer = TokenIssuer::start("robot", "token-Pw-4").await;
    let tokened = Registry::start_token("robot", "token-Pw-4", &issuer).await;
    let src = Registry::start_anonymous().await;
    let engine = engine_for(&[&src, &tokened]);
    let first = Image::random(Format::Oci, &[16 * KIB]);
    let pushed = src.push_image("team/app", "v1", &first).await;
    let target = format!("{}/team/app:v1", tokened.host());
    // Long enough for one sync on a loaded 2-core machine (a 2 s lifetime expired inside
    // the first sync's upload and its retry there), short enough to outlive below.
    issuer.expire_early(8);
    assert_success(&engine.sync(&pushed.reference(), &target).await);
    let before = issuer.requests();

    // The cached token still looks valid but the registry refuses it now: the 401 must
    // lead to one fresh token and success.
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    let second = Image::random(Format::Oci, &[16 * KIB]);
    let pushed = src.push_image("team/app", "v2", &second).await;
    let report = engine
        .sync(
            &pushed.reference(),
            &format!("{}/team/app:v2", tokened.host()),
        )
        .await;
    assert_success(&report);
    assert!(issuer.requests() > before, "a fresh token was fetched");
    // The oracle gets tokens of the usual lifetime (skopeo does not renew one that lapses).
    issuer.expire_normally();
    skopeo::assert_landed(&tokened, "team/app:v2", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_credentials_fail_clearly() {
    let issuer = TokenIssuer::start("robot", "right-Pw-5").await;
    let tokened = Registry::start_token("robot", "right-Pw-5", &issuer).await;
    let src = Registry::start_anonymous().await;
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let mut auth = BTreeMap::new();
    for (name, host, user, pass) in [
        ("src", src.host(), None, None),
        ("dst", tokened.host(), Some("robot"), Some("wrong-Pw-6")),
    ] {
        auth.insert(
            name.to_owned(),
            RegistryCredential {
                registry: host,
                username: user.map(Into::into),
                password: pass.map(Secret::new),
                plain_http: true,
                ..RegistryCredential::default()
            },
        );
    }
    let engine = Engine::new(&RsyncConfig {
        auth,
        task: TaskConfig::default(),
        ..RsyncConfig::default()
    });
    let report = engine
        .sync(
            &pushed.reference(),
            &format!("{}/team/app:v1", tokened.host()),
        )
        .await;
    assert_eq!(report.status, SyncStatus::Failed);
    let error = report.error.unwrap();
    assert!(
        error.contains("authentication failed") && error.contains(&tokened.host()),
        "{error}"
    );
    assert!(!error.contains("wrong-Pw-6"));
    skopeo::assert_absent(&tokened, "team/app:v1").await;
}

/// Pushes an OCI manifest given as JSON under its digest; returns (digest, length).
async fn push_manifest(
    registry: &Registry,
    repo: &str,
    manifest: serde_json::Value,
) -> (String, usize) {
    let bytes = bytes::Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let digest = crate::common::image::sha256_digest(&bytes);
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    registry
        .push_raw_manifest(repo, &digest, media_type, bytes.clone())
        .await;
    (digest, bytes.len())
}

/// A descriptor JSON for raw content.
fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_every_kind_of_content_verbatim() {
    use bytes::Bytes;
    use serde_json::json;
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let engine = engine_for(&[&src, &dst]);
    let repo = "kinds/app";
    let push_json = |v: serde_json::Value| Bytes::from(serde_json::to_vec(&v).unwrap());

    // An image whose layers are a zstd one and a truly empty (0-byte) one.
    let zstd = Bytes::from(vec![7u8; 3000]);
    let empty = Bytes::new();
    let config = push_json(
        json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}),
    );
    let (zstd_d, empty_d, config_d) = (
        src.push_blob(repo, zstd.clone()).await,
        src.push_blob(repo, empty.clone()).await,
        src.push_blob(repo, config.clone()).await,
    );
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let image = push_manifest(&src, repo, json!({
        "schemaVersion": 2, "mediaType": oci,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_d, config.len()),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+zstd", &zstd_d, zstd.len()),
                   descriptor("application/vnd.oci.image.layer.v1.tar", &empty_d, 0)],
    }))
    .await;
    // An attestation manifest, as buildx writes it, with an in-toto layer.
    let statement = push_json(json!({"_type": "https://in-toto.io/Statement/v0.1"}));
    let statement_d = src.push_blob(repo, statement.clone()).await;
    let attestation = push_manifest(&src, repo, json!({
        "schemaVersion": 2, "mediaType": oci,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_d, config.len()),
        "layers": [descriptor("application/vnd.in-toto+json", &statement_d, statement.len())],
    }))
    .await;
    // An artifact with a non-image config media type.
    let art_config = push_json(json!({"kind": "helm-chart"}));
    let art_config_d = src.push_blob(repo, art_config.clone()).await;
    let artifact = push_manifest(&src, repo, json!({
        "schemaVersion": 2, "mediaType": oci, "artifactType": "application/vnd.example.chart",
        "config": descriptor("application/vnd.example.config.v1+json", &art_config_d, art_config.len()),
        "layers": [descriptor("application/vnd.example.chart.layer.v1.tar", &zstd_d, zstd.len())],
    }))
    .await;
    let mut entries: Vec<_> = [&image, &attestation, &artifact]
        .iter()
        .map(|(digest, len)| descriptor(oci, digest, *len))
        .collect();
    let (image_d, attestation_d, artifact_d) = (&image.0, &attestation.0, &artifact.0);
    entries[0]["platform"] = json!({"os": "linux", "architecture": "amd64"});
    entries[1]["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    entries[1]["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest",
                                        "vnd.docker.reference.digest": image_d});
    let index = push_json(
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}),
    );
    let index_d = src
        .push_raw_manifest(repo, "v1", "application/vnd.oci.image.index.v1+json", index)
        .await;

    let report = engine
        .sync(
            &format!("{}/{repo}:v1", src.host()),
            &format!("{}/{repo}", dst.host()),
        )
        .await;
    assert_success(&report);
    let img = &report.images[0];
    assert_eq!(img.digest.as_deref(), Some(index_d.as_str()));
    assert_eq!(img.manifests_pushed, 4);
    assert_eq!(
        img.blobs_copied, 5,
        "zstd, empty, config, statement, artifact config"
    );
    skopeo::assert_digest(&dst, &format!("{repo}:v1"), &index_d).await;
    for (digest, size) in [
        (&zstd_d, 3000),
        (&empty_d, 0),
        (&statement_d, statement.len()),
        (&config_d, config.len()),
        (&art_config_d, art_config.len()),
    ] {
        let resp = reqwest::Client::new()
            .head(format!("{}/v2/{repo}/blobs/{digest}", dst.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{digest}");
        // reqwest's content_length() is the body's (empty for HEAD): read the header.
        let length = resp.headers()["content-length"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(length, size.to_string(), "{digest}");
    }
    for child in [image_d, attestation_d, artifact_d] {
        skopeo::assert_digest(&dst, &format!("{repo}@{child}"), child).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_verified_and_each_weaker_option_does_what_it_says() {
    let ca = crate::common::tls::TestCa::new();
    let secure = Registry::start_tls(&ca).await;
    let src = Registry::start_anonymous().await;
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let run = |target_credential: RegistryCredential, tag: &'static str| {
        let (src_host, target) = (src.host(), format!("{}/team/app:{tag}", secure.host()));
        let source = pushed.reference();
        async move {
            let mut auth = BTreeMap::new();
            let plain = RegistryCredential {
                registry: src_host,
                plain_http: true,
                ..RegistryCredential::default()
            };
            auth.insert("src".to_owned(), plain);
            auth.insert("tls".to_owned(), target_credential);
            let engine = Engine::new(&RsyncConfig {
                auth,
                ..RsyncConfig::default()
            });
            engine.sync(&source, &target).await
        }
    };
    let entry = |f: fn(&mut RegistryCredential)| {
        let mut c = RegistryCredential {
            registry: secure.host(),
            ..RegistryCredential::default()
        };
        f(&mut c);
        c
    };

    // Verified by default: an unknown CA is refused, clearly.
    let refused = run(entry(|_| {}), "default").await;
    assert_eq!(refused.status, SyncStatus::Failed);
    let error = refused.error.unwrap();
    assert!(
        error.contains(&secure.host()) && error.to_lowercase().contains("certificate"),
        "{error}"
    );
    skopeo::assert_absent(&secure, "team/app:default").await;

    // The CA in ca_file makes it verified and working.
    let mut with_ca = entry(|_| {});
    with_ca.ca_file = Some(ca_file.clone());
    assert_success(&run(with_ca, "ca").await);
    skopeo::assert_landed(&secure, "team/app:ca", &pushed).await;

    // tls_skip_verify and the seed's insecure both reach it without the CA.
    assert_success(&run(entry(|c| c.tls_skip_verify = true), "skip").await);
    assert_success(&run(entry(|c| c.insecure = true), "insecure").await);
    skopeo::assert_landed(&secure, "team/app:insecure", &pushed).await;

    // plain_http to an HTTPS registry fails rather than silently upgrading.
    let plain = run(entry(|c| c.plain_http = true), "plain").await;
    assert_eq!(plain.status, SyncStatus::Failed);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_failed_target_does_not_stop_the_others() {
    let src = Registry::start_anonymous().await;
    let good = Registry::start_anonymous().await;
    let locked = Registry::start_htpasswd("someone", "unknown-Pw-8").await;
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * KIB]))
        .await;
    // `locked` is known without its credentials: pushing there fails with 401.
    let engine = crate::common::engine::engine_for(
        [
            (src.host(), &src),
            (good.host(), &good),
            (locked.host(), &src),
        ],
        TaskConfig::default(),
    );
    let report = engine
        .run_request(&SyncRequest {
            source: pushed.reference(),
            targets: vec![
                format!("{}/team/app", locked.host()),
                format!("{}/team/app", good.host()),
            ],
            ..SyncRequest::default()
        })
        .await;
    assert_eq!(report.status, SyncStatus::Failed);
    let statuses: Vec<_> = report.images.iter().map(|i| i.status).collect();
    assert_eq!(statuses, [ImageStatus::Failed, ImageStatus::Synced]);
    assert!(report.images[0].error.as_ref().unwrap().contains("401"));
    assert!(report
        .log
        .contains("Finished, 1 sync tasks failed, 0 tasks generate failed"));
    skopeo::assert_landed(&good, "team/app:v1", &pushed).await;
}

/// The images of one request go `proc_num` at a time and the report keeps the plan's order.
/// A fault proxy (over a real registry: nothing here can make a registry slow) trickles the
/// source manifests, so an image's copy lasts long enough for the others to start, and the
/// first image's most, so that image finishes last.
#[tokio::test(flavor = "multi_thread")]
async fn many_images_go_proc_num_at_a_time_and_keep_the_plan_order() {
    use crate::common::fault_proxy::{FaultProxy, Rule, Seen};
    use std::time::Duration;
    let reg = Registry::start_anonymous().await;
    let proxy = FaultProxy::start(&reg.host()).await;
    let images: Vec<_> = (0..5)
        .map(|_| Image::random(Format::Oci, &[16 * KIB]))
        .collect();
    for (i, image) in images.iter().enumerate() {
        reg.push_image("many/app", &format!("t{i}"), image).await;
    }
    // Rules fire first-match: t0's manifest comes slowest, so that image finishes last.
    proxy
        .add(Rule::on("GET", "/v2/many/app/manifests/t0$").trickle(Duration::from_millis(300), 64));
    proxy.add(Rule::on("GET", "/v2/many/app/manifests/t").trickle(Duration::from_millis(50), 64));
    let task = TaskConfig {
        proc_num: 4,
        retries: 0,
        ..TaskConfig::default()
    };
    let engine = crate::common::engine::engine_for([(proxy.host(), &reg)], task);
    let report = engine
        .sync(
            &format!("{}/many/app:t0,t1,t2,t3,t4", proxy.host()),
            &format!("{}/copy/app", proxy.host()),
        )
        .await;
    assert_success(&report);

    let targets: Vec<_> = report.images.iter().map(|i| i.target.clone()).collect();
    let planned: Vec<_> = (0..5)
        .map(|i| format!("{}/copy/app:t{i}", proxy.host()))
        .collect();
    assert_eq!(targets, planned, "the report keeps the plan's order");
    for (i, image) in images.iter().enumerate() {
        skopeo::assert_digest(&reg, &format!("copy/app:t{i}"), &image.digest).await;
    }

    // Order of arrival at the proxy: the first four source manifests are asked for before
    // any image is tagged (they overlap); the fifth only once one of them is done.
    let seen = proxy.requests();
    let arrival = |pred: &dyn Fn(&Seen) -> bool| {
        seen.iter()
            .position(pred)
            .unwrap_or_else(|| panic!("request not seen:\n{}", proxy.summary()))
    };
    let first_tag = arrival(&|s| s.is("PUT", "^/v2/copy/app/manifests/t"));
    for i in 0..4 {
        let get = arrival(&|s| s.is("GET", &format!("^/v2/many/app/manifests/t{i}$")));
        assert!(
            get < first_tag,
            "image {i} started only after another was tagged: not concurrent\n{}",
            proxy.summary()
        );
    }
    let fifth = arrival(&|s| s.is("GET", "^/v2/many/app/manifests/t4$"));
    assert!(
        fifth > first_tag,
        "a fifth image started while four were running (proc_num 4)\n{}",
        proxy.summary()
    );
    let last_tag = seen
        .iter()
        .rposition(|s| s.is("PUT", "^/v2/copy/app/manifests/t"))
        .unwrap();
    assert!(
        seen[last_tag].path.ends_with("/t0"),
        "the slowed first image is tagged last\n{}",
        proxy.summary()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_lists_longer_than_one_page_are_followed_through_the_link_header() {
    // The client asks for pages of 1000 tags (`n=1000`) and follows `Link: <...>;
    // rel="next"`. Debian's distribution 2.8 does not page tag lists (it ignores `n` and
    // `last`: 1005 tags came back as one 8 KB page to `n=1000`), so a fault proxy in front
    // of the real registry answers the first page itself, 1000 tags and a `Link` to the
    // next, and passes the second request to the registry. The rule selects only tags
    // the second page holds: a client that stopped after one page finds nothing to copy.
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let proxy = FaultProxy::start(&src.host()).await;
    let image = Image::random(Format::Oci, &[KIB]);
    for i in 1000..1005 {
        src.push_image("many/app", &format!("t{i}"), &image).await;
    }
    let first_page: Vec<String> = (0..1000).map(|i| format!("t{i:04}")).collect();
    let page_one = proxy.add(
        Rule::on("GET", r"^/v2/many/app/tags/list\?n=1000$")
            .nth(1)
            .respond(
                Reply::status(200)
                    .header("content-type", "application/json")
                    .header(
                        "link",
                        r#"</v2/many/app/tags/list?n=1000&last=t0999>; rel="next""#,
                    )
                    .body(
                        serde_json::to_vec(
                            &serde_json::json!({"name": "many/app", "tags": first_page}),
                        )
                        .unwrap(),
                    ),
            ),
    );
    let engine = crate::common::engine::engine_for(
        [(proxy.host(), &src), (dst.host(), &dst)],
        TaskConfig::default(),
    );
    let report = engine
        .sync(
            &format!("{}/many/app:/^t100[0-4]$/", proxy.host()),
            &format!("{}/copy/app", dst.host()),
        )
        .await;
    assert_success(&report);
    assert_eq!(page_one.fired(), 1);
    // In the order the registry listed them (distribution does not sort its answer).
    let mut landed: Vec<_> = report.images.iter().map(|i| i.target.clone()).collect();
    landed.sort();
    let want: Vec<_> = (1000..1005)
        .map(|i| format!("{}/copy/app:t{i}", dst.host()))
        .collect();
    assert_eq!(landed, want);
    skopeo::assert_digest(&dst, "copy/app:t1004", &image.digest).await;

    let pages = proxy.requests_to("GET", "/tags/list");
    assert_eq!(pages.len(), 2, "{}", proxy.summary());
    assert!(pages[1].path.contains("last=t0999"), "{}", pages[1].path);
    assert!(
        pages[1].rule.is_none(),
        "the second page is the registry's own"
    );
}
