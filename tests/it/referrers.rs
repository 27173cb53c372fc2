//! What travels with an image (issue 11): cosign signatures (`sha256-<hex>.sig`), in-toto
//! attestations and SBOMs with a `subject`, listed in the source's `sha256-<hex>`
//! fallback index, referrers of referrers, and each platform's own signature. Everything
//! is copied by the engine between real docker-registry 2.8 instances and checked with
//! skopeo; the referrers API, which no packaged registry serves, comes from the fault
//! proxy in front of a real registry (`Rule::referrers_api`, `Rule::oci_subject`).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::engine::assert_success;
use crate::common::fault_proxy::{FaultProxy, Rule};
use crate::common::image::{Artifact, Subject, IN_TOTO_TYPE, SPDX_TYPE};
use crate::common::{skopeo, Format, Image, Index, Platform, Pushed, Registry};
use imagersync::config::TaskConfig;
use imagersync::engine::{Engine, ImageStatus, SyncRequest, SyncStatus};

const KIB: usize = 1024;
const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// An engine whose config knows every `(host, registry)` (plain HTTP, their credentials).
fn engine(entries: &[(String, &Registry)]) -> Engine {
    let task = TaskConfig {
        proc_num: 4,
        retries: 1,
        ..TaskConfig::default()
    };
    crate::common::engine::engine_for(entries.iter().map(|(h, r)| (h.clone(), *r)), task)
}

fn direct(registries: &[&Registry]) -> Engine {
    let entries: Vec<_> = registries.iter().map(|r| (r.host(), *r)).collect();
    engine(&entries)
}

/// An image signed and described as a release pipeline leaves it: a cosign signature at
/// `.sig`, an attestation and an SBOM (both with `subject`) in the fallback index, and
/// a sigstore bundle signing the SBOM (a referrer of a referrer) in the SBOM's index.
struct Signed {
    image: Image,
    pushed: Pushed,
    subject: Subject,
    sig: Artifact,
    att: Artifact,
    sbom: Artifact,
    sbom_bundle: Artifact,
    /// Digest of the source's `sha256-<image hex>` index.
    index_digest: String,
    /// Digest of the source's `sha256-<sbom hex>` index.
    sbom_index_digest: String,
}

async fn push_signed(src: &Registry, repo: &str, tag: &str) -> Signed {
    let image = Image::random(Format::Oci, &[96 * KIB, 8 * KIB]);
    let pushed = src.push_image(repo, tag, &image).await;
    let subject = Subject::of_image(&image);
    let sig = Artifact::cosign_signature(&subject, &pushed.reference());
    src.push_artifact(repo, &subject.cosign_tag("sig"), &sig)
        .await;
    let att = Artifact::attestation(&subject);
    let sbom = Artifact::with_subject(&subject, SPDX_TYPE);
    for a in [&att, &sbom] {
        src.push_artifact(repo, &a.digest, a).await;
    }
    let index_digest = src
        .push_referrers_index(repo, &subject, &[&att, &sbom])
        .await;
    let sbom_subject = Subject::of_artifact(&sbom);
    let sbom_bundle = Artifact::with_subject(&sbom_subject, BUNDLE_TYPE);
    src.push_artifact(repo, &sbom_bundle.digest, &sbom_bundle)
        .await;
    let sbom_index_digest = src
        .push_referrers_index(repo, &sbom_subject, &[&sbom_bundle])
        .await;
    Signed {
        image,
        pushed,
        subject,
        sig,
        att,
        sbom,
        sbom_bundle,
        index_digest,
        sbom_index_digest,
    }
}

/// The log lines that mention referrers, for assertions and for the reader.
fn referrer_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("referrer") || l.contains("Referrers"))
        .collect()
}

/// Digests listed by the index stored under `reference`.
async fn listed(registry: &Registry, reference: &str) -> Vec<String> {
    let raw = skopeo::inspect_raw(registry, reference)
        .await
        .unwrap_or_else(|e| panic!("{reference}: {e}"));
    let index: Value = serde_json::from_slice(&raw).unwrap();
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("{reference} is not an index: {index}"))
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// The tag list of `repo` as the registry answers it.
async fn tags(registry: &Registry, repo: &str) -> BTreeSet<String> {
    let url = format!("{}/v2/{repo}/tags/list", registry.url());
    let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    body["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_attestation_sbom_and_their_referrers_travel_digest_for_digest() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let s = push_signed(&src, "team/app", "v1").await;
    let engine = direct(&[&src, &dst]);
    let target = format!("{}/prod/app:v1", dst.host());

    let report = engine.sync(&s.pushed.reference(), &target).await;
    assert_success(&report);
    let image = &report.images[0];
    assert_eq!(image.status, ImageStatus::Synced);
    assert_eq!(
        image.referrers_copied, 4,
        "sig, att, sbom, sbom's bundle: {}",
        report.log
    );
    for line in referrer_lines(&report.log) {
        eprintln!("{line}");
    }
    // One line per referrer, naming its kind and subject, in the logrus format.
    let dst_name = format!("{}/prod/app", dst.host());
    for (artifact, kind, subject) in [
        (&s.att, IN_TOTO_TYPE, &s.image.digest),
        (&s.sbom, SPDX_TYPE, &s.image.digest),
        (&s.sbom_bundle, BUNDLE_TYPE, &s.sbom.digest),
    ] {
        let line = format!(
            "msg=\"Put referrer {} ({kind}) of {subject} to {dst_name}\"",
            artifact.digest
        );
        assert!(
            report.log.contains(&line),
            "{line} missing:\n{}",
            report.log
        );
    }
    let sig_line = format!(
        "msg=\"Put referrer {} (application/vnd.dev.cosign.simplesigning.v1+json) of {} to {dst_name}:{}\"",
        s.sig.digest,
        s.image.digest,
        s.subject.cosign_tag("sig")
    );
    assert!(
        report.log.contains(&sig_line),
        "{sig_line} missing:\n{}",
        report.log
    );
    // The tag is the last write: every referrer and index line comes before it.
    let tag_at = report
        .log
        .find(&format!("Put manifest to {dst_name}:v1 ("))
        .expect("tag line");
    for marker in ["Put referrer", "Put referrers index"] {
        let last = report.log.rfind(marker).expect(marker);
        assert!(last < tag_at, "{marker} after the tag:\n{}", report.log);
    }

    // skopeo: every digest at the target equals the source's.
    skopeo::assert_landed(&dst, "prod/app:v1", &s.pushed).await;
    for a in [&s.att, &s.sbom, &s.sbom_bundle] {
        skopeo::assert_digest(&dst, &format!("prod/app@{}", a.digest), &a.digest).await;
    }
    skopeo::assert_digest(
        &dst,
        &format!("prod/app:{}", s.subject.cosign_tag("sig")),
        &s.sig.digest,
    )
    .await;
    // The target had no fallback index, so the source's was pushed as it was.
    let tag = s.subject.fallback_tag();
    skopeo::assert_digest(&dst, &format!("prod/app:{tag}"), &s.index_digest).await;
    let sbom_tag = Subject::of_artifact(&s.sbom).fallback_tag();
    skopeo::assert_digest(&dst, &format!("prod/app:{sbom_tag}"), &s.sbom_index_digest).await;
    let raw = skopeo::inspect_raw(&dst, &format!("prod/app:{tag}"))
        .await
        .unwrap();
    eprintln!(
        "skopeo inspect --raw docker://{}/prod/app:{tag}\n{}",
        dst.host(),
        String::from_utf8_lossy(&raw)
    );
    let raw = skopeo::inspect_raw(&dst, &format!("prod/app:{}", s.subject.cosign_tag("sig")))
        .await
        .unwrap();
    eprintln!(
        "skopeo inspect --raw docker://{}/prod/app:{}\n{}",
        dst.host(),
        s.subject.cosign_tag("sig"),
        String::from_utf8_lossy(&raw)
    );

    // Again: in sync, every referrer found at the target, nothing written.
    let again = engine.sync(&s.pushed.reference(), &target).await;
    assert_success(&again);
    assert_eq!(again.images[0].status, ImageStatus::AlreadySynced);
    assert_eq!(again.images[0].referrers_copied, 0, "{}", again.log);
    assert_eq!(
        again.log.matches("Skip referrer").count(),
        4,
        "{}",
        again.log
    );
    assert!(
        again.log.contains("already lists every referrer copied"),
        "{}",
        again.log
    );

    // A signature added after the image was copied follows on the next sync.
    let late = Artifact::with_subject(&s.subject, BUNDLE_TYPE);
    src.push_artifact("team/app", &late.digest, &late).await;
    src.push_referrers_index("team/app", &s.subject, &[&s.att, &s.sbom, &late])
        .await;
    let third = engine.sync(&s.pushed.reference(), &target).await;
    assert_success(&third);
    assert_eq!(third.images[0].status, ImageStatus::AlreadySynced);
    assert_eq!(third.images[0].referrers_copied, 1, "{}", third.log);
    assert_eq!(
        listed(&dst, &format!("prod/app:{tag}")).await,
        [
            s.att.digest.clone(),
            s.sbom.digest.clone(),
            late.digest.clone()
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_platform_of_an_index_brings_its_own_signature() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let index = Index::random(
        Format::Oci,
        &[Platform::AMD64, Platform::ARM64],
        64 * KIB,
        16 * KIB,
    );
    let pushed = src.push_index("multi/app", "v1", &index).await;
    let mut sigs = Vec::new();
    let subjects = std::iter::once(Subject::of_index(&index))
        .chain(index.images.iter().map(Subject::of_image));
    for subject in subjects {
        let sig = Artifact::cosign_signature(&subject, &pushed.reference());
        src.push_artifact("multi/app", &subject.cosign_tag("sig"), &sig)
            .await;
        sigs.push((subject, sig));
    }
    let engine = direct(&[&src, &dst]);

    let report = engine
        .sync(&pushed.reference(), &format!("{}/multi/app:v1", dst.host()))
        .await;
    assert_success(&report);
    assert_eq!(report.images[0].referrers_copied, 3, "{}", report.log);
    skopeo::assert_landed(&dst, "multi/app:v1", &pushed).await;
    for (subject, sig) in &sigs {
        skopeo::assert_digest(
            &dst,
            &format!("multi/app:{}", subject.cosign_tag("sig")),
            &sig.digest,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_target_index_keeps_what_it_listed_and_concurrent_syncs_both_land() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let image = Image::random(Format::Oci, &[32 * KIB]);
    let subject = Subject::of_image(&image);
    let engine = direct(&[&src, &dst]);

    // The target already lists a scan report the source does not have.
    let scan = Artifact::with_subject(&subject, "application/vnd.example.scan+json");
    dst.push_image("prod/app", "v0", &image).await;
    dst.push_artifact("prod/app", &scan.digest, &scan).await;
    dst.push_referrers_index("prod/app", &subject, &[&scan])
        .await;
    // Two sources hold the same image with a different SBOM each.
    let mut sboms = Vec::new();
    for repo in ["a/app", "b/app"] {
        src.push_image(repo, "v1", &image).await;
        let sbom = Artifact::with_subject(&subject, SPDX_TYPE);
        src.push_artifact(repo, &sbom.digest, &sbom).await;
        src.push_referrers_index(repo, &subject, &[&sbom]).await;
        sboms.push(sbom);
    }
    let target = format!("{}/prod/app:v1", dst.host());
    let (from_a, from_b) = (
        format!("{}/a/app:v1", src.host()),
        format!("{}/b/app:v1", src.host()),
    );
    let (a, b) = tokio::join!(engine.sync(&from_a, &target), engine.sync(&from_b, &target));
    assert_success(&a);
    assert_success(&b);
    let tag = subject.fallback_tag();
    let got: BTreeSet<String> = listed(&dst, &format!("prod/app:{tag}"))
        .await
        .into_iter()
        .collect();
    let want: BTreeSet<String> = [&scan, &sboms[0], &sboms[1]]
        .iter()
        .map(|a| a.digest.clone())
        .collect();
    assert_eq!(got, want, "a:\n{}\nb:\n{}", a.log, b.log);
    assert_eq!(
        listed(&dst, &format!("prod/app:{tag}")).await[0],
        scan.digest,
        "kept first"
    );
    for sbom in &sboms {
        skopeo::assert_digest(&dst, &format!("prod/app@{}", sbom.digest), &sbom.digest).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_referrers_api_is_used_at_the_source_and_oci_subject_spares_the_target_index() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    // docker-registry 2.8 has no referrers API: the proxy serves it from what the
    // registry holds, and answers manifest PUTs with OCI-Subject as such a registry does.
    let src_front = FaultProxy::start(&src.host()).await;
    src_front.add(Rule::on("GET", r"^/v2/.+/referrers/").referrers_api());
    let dst_front = FaultProxy::start(&dst.host()).await;
    dst_front.add(Rule::on("PUT", r"^/v2/.+/manifests/").oci_subject());
    let image = Image::random(Format::Oci, &[32 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let subject = Subject::of_image(&image);
    let att = Artifact::attestation(&subject);
    let sbom = Artifact::with_subject(&subject, SPDX_TYPE);
    for a in [&att, &sbom] {
        src.push_artifact("team/app", &a.digest, a).await;
    }
    src.push_referrers_index("team/app", &subject, &[&att, &sbom])
        .await;
    let engine = engine(&[(src_front.host(), &src), (dst_front.host(), &dst)]);

    let report = engine
        .sync(
            &format!("{}/team/app:v1", src_front.host()),
            &format!("{}/prod/app:v1", dst_front.host()),
        )
        .await;
    assert_success(&report);
    assert_eq!(report.images[0].referrers_copied, 2, "{}", report.log);
    assert!(
        report.log.contains("serves the OCI referrers API"),
        "{}",
        report.log
    );
    let api = src_front.requests_to("GET", &format!("/referrers/{}$", subject.digest));
    assert_eq!(api.len(), 1, "{}", src_front.summary());
    assert_eq!(api[0].status, Some(200));
    let tag_path = format!("/manifests/{}$", subject.fallback_tag());
    assert!(
        src_front.requests_to("GET", &tag_path).is_empty(),
        "the fallback tag was read although the API answered:\n{}",
        src_front.summary()
    );
    // The target answered OCI-Subject: it keeps the list, so no fallback index is written.
    assert!(
        dst_front.requests_to("PUT", &tag_path).is_empty(),
        "{}",
        dst_front.summary()
    );
    assert!(
        dst_front.requests_to("GET", &tag_path).is_empty(),
        "{}",
        dst_front.summary()
    );
    skopeo::assert_absent(&dst, &format!("prod/app:{}", subject.fallback_tag())).await;
    skopeo::assert_landed(&dst, "prod/app:v1", &pushed).await;
    for a in [&att, &sbom] {
        skopeo::assert_digest(&dst, &format!("prod/app@{}", a.digest), &a.digest).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_all_tags_rule_copies_each_signature_once_and_referrers_false_copies_none() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let (one, two) = (
        Image::random(Format::Oci, &[16 * KIB]),
        Image::random(Format::Docker, &[16 * KIB]),
    );
    let mut sigs = Vec::new();
    for (tag, image) in [("v1", &one), ("v2", &two), ("latest", &one)] {
        let pushed = src.push_image("team/app", tag, image).await;
        if tag != "latest" {
            let subject = Subject::of_image(image);
            let sig = Artifact::cosign_signature(&subject, &pushed.reference());
            src.push_artifact("team/app", &subject.cosign_tag("sig"), &sig)
                .await;
            sigs.push((subject, sig));
        }
    }
    let engine = direct(&[&src, &dst]);
    let source = format!("{}/team/app", src.host());

    let report = engine
        .sync(&source, &format!("{}/team/app", dst.host()))
        .await;
    assert_success(&report);
    let planned: BTreeSet<_> = report
        .images
        .iter()
        .map(|i| i.target.rsplit(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        planned,
        ["latest", "v1", "v2"].map(String::from).into(),
        "{}",
        report.log
    );
    assert!(
        report.log.contains("Leave out 2 referrer tags"),
        "{}",
        report.log
    );
    for (subject, sig) in &sigs {
        assert_eq!(
            report
                .log
                .matches(&format!("Put referrer {}", sig.digest))
                .count(),
            1,
            "{}",
            report.log
        );
        skopeo::assert_digest(
            &dst,
            &format!("team/app:{}", subject.cosign_tag("sig")),
            &sig.digest,
        )
        .await;
    }
    let copied: u64 = report.images.iter().map(|i| i.referrers_copied).sum();
    assert_eq!(copied, 2, "{}", report.log);

    let off = engine
        .run_request(&SyncRequest {
            source,
            targets: vec![format!("{}/other/app", dst.host())],
            referrers: Some(false),
            ..SyncRequest::default()
        })
        .await;
    assert_success(&off);
    assert!(!off.log.contains("Put referrer"), "{}", off.log);
    assert!(off.images.iter().all(|i| i.referrers_copied == 0));
    assert_eq!(
        tags(&dst, "other/app").await,
        ["latest", "v1", "v2"].map(String::from).into()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_referrer_that_fails_fails_the_image_and_leaves_the_tag_unwritten() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let image = Image::random(Format::Oci, &[16 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let subject = Subject::of_image(&image);
    let sbom = Artifact::with_subject(&subject, SPDX_TYPE);
    src.push_artifact("team/app", &sbom.digest, &sbom).await;
    src.push_referrers_index("team/app", &subject, &[&sbom])
        .await;
    // The SBOM's content is gone at the source.
    let content = crate::common::image::sha256_digest(&sbom.blobs[1]);
    src.delete_blob("team/app", &content).await;
    let engine = direct(&[&src, &dst]);

    let report = engine
        .sync(&pushed.reference(), &format!("{}/prod/app:v1", dst.host()))
        .await;
    assert_eq!(report.status, SyncStatus::Failed, "{}", report.log);
    let error = report.images[0].error.clone().unwrap();
    assert!(
        error.contains(&format!(
            "referrer {} ({SPDX_TYPE}) of {}",
            sbom.digest, subject.digest
        )),
        "{error}"
    );
    assert!(
        error.contains(&content),
        "the cause names the missing blob: {error}"
    );
    skopeo::assert_absent(&dst, "prod/app:v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_are_followed_four_levels_deep() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let image = Image::random(Format::Oci, &[8 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let mut subject = Subject::of_image(&image);
    let mut chain = Vec::new();
    for _ in 0..5 {
        let next = Artifact::with_subject(&subject, BUNDLE_TYPE);
        src.push_artifact("team/app", &next.digest, &next).await;
        src.push_referrers_index("team/app", &subject, &[&next])
            .await;
        subject = Subject::of_artifact(&next);
        chain.push(next);
    }
    let engine = direct(&[&src, &dst]);
    let report = engine
        .sync(&pushed.reference(), &format!("{}/prod/app:v1", dst.host()))
        .await;
    assert_success(&report);
    assert_eq!(report.images[0].referrers_copied, 4, "{}", report.log);
    let cut = format!(
        "Referrers of {} not copied: referrers are followed 4 levels deep",
        chain[3].digest
    );
    assert!(report.log.contains(&cut), "{}", report.log);
    for a in &chain[..4] {
        skopeo::assert_digest(&dst, &format!("prod/app@{}", a.digest), &a.digest).await;
    }
    skopeo::assert_absent(&dst, &format!("prod/app@{}", chain[4].digest)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_reports_referrers_in_the_answer_the_job_and_the_metrics() {
    use crate::common::fixture::{Pair, SourceAuth};
    use crate::common::service::admin;
    use serde_json::json;

    let pair = Pair::start(SourceAuth::Anonymous).await;
    let s = push_signed(&pair.src, "team/app", "v1").await;
    let body = json!({"rsync_config": {
        "source": s.pushed.reference(),
        "target": pair.dst_ref("prod/app:v1"),
        "referrers": true,
    }});
    let (status, answer) = pair.service.post_json(Some(&admin()), &body).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert_eq!(
        answer["rsync_config"]["referrers"],
        json!(true),
        "echoed: {answer}"
    );
    let image = &answer["rsync_data"]["images"][0];
    assert_eq!(image["referrers_copied"], json!(4), "{answer}");

    let (_, page) = pair
        .service
        .call_json(reqwest::Method::GET, "/v1/image/rsync/jobs", &admin())
        .await;
    let job = &page["jobs"][0];
    assert_eq!(job["request"]["referrers"], json!(true), "{page}");
    assert_eq!(job["progress"]["referrers_copied"], json!(4), "{page}");
    assert_eq!(
        job["progress"]["images"][0]["referrers_copied"],
        json!(4),
        "{page}"
    );

    let metrics = pair
        .service
        .client()
        .get(pair.service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(
        "imagersync_referrers_total{{registry=\"{}\"}} 4",
        pair.dst.host()
    );
    assert!(
        metrics.lines().any(|l| l == series),
        "{series} missing:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_files_follow_the_config_and_no_referrers_leaves_them_behind() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_anonymous().await;
    let image = Image::random(Format::Oci, &[8 * KIB]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let subject = Subject::of_image(&image);
    let sig = Artifact::cosign_signature(&subject, &pushed.reference());
    src.push_artifact("team/app", &subject.cosign_tag("sig"), &sig)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.yaml");
    std::fs::write(
        &auth,
        format!(
            "{}:\n  insecure: true\n{}:\n  insecure: true\n",
            src.host(),
            dst.host()
        ),
    )
    .unwrap();
    let run = |repo: &str, extra: &[&str]| {
        let images = dir.path().join(format!("{}.yaml", repo.replace('/', "-")));
        std::fs::write(
            &images,
            format!("{}: {}/{repo}\n", pushed.reference(), dst.host()),
        )
        .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_imagersync_service_bin"))
            .args(["sync", "--configFile"])
            .arg(dir.path().join("no-such-config.yaml"))
            .arg("--images")
            .arg(&images)
            .arg("--auth")
            .arg(&auth)
            .args(extra)
            .output()
            .unwrap()
    };
    let sig_tag = subject.cosign_tag("sig");

    // No config: task.referrers defaults to true.
    let out = run("batch/app", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("Put referrer {}", sig.digest)),
        "{stdout}"
    );
    skopeo::assert_digest(&dst, &format!("batch/app:{sig_tag}"), &sig.digest).await;

    let out = run("off/app", &["--no-referrers"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("Put referrer"), "{stdout}");
    skopeo::assert_digest(&dst, "off/app:v1", &pushed.digest).await;
    skopeo::assert_absent(&dst, &format!("off/app:{sig_tag}")).await;
}
