//! Real syncs through the service between two real registries, each result checked by
//! skopeo: formats, indexes, digests, incremental runs, shared layers, failures and
//! secrets. Each test has its own registries and service.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::fault_proxy::{FaultProxy, Rule};

use crate::common::contract::{
    assert_finished, assert_logrus, assert_no_secrets, assert_sync_shape, count, error_of,
    image_of, info_of, status_of,
};
use crate::common::fixture::{random_password, Pair, SourceAuth};
use crate::common::image::sha256_digest;
use crate::common::service::{admin, jenkins};
use crate::common::{
    skopeo, Creds, Format, Image, Index, Layer, Platform, Pushed, Registry, Service, ServiceConfig,
};

const KIB: usize = 1024;

/// Asserts a sync answered 200 `successfully` with one `synced` image of `pushed`,
/// and returns that image's result.
fn assert_synced<'a>(status: StatusCode, body: &'a Value, pushed: &Pushed) -> &'a Value {
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_sync_shape(body);
    assert_eq!(status_of(body), "successfully", "{body}");
    assert_eq!(body["rsync_data"]["rsync_error"], Value::Null, "{body}");
    let image = image_of(body, 0);
    assert_eq!(image["status"], json!("synced"), "{body}");
    assert_eq!(image["digest"], json!(pushed.digest), "{body}");
    assert_eq!(image["error"], Value::Null, "{body}");
    image
}

/// Asserts a sync answered 502 `failed` with a readable error and a failed image.
fn assert_failed(status: StatusCode, body: &Value) -> String {
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_sync_shape(body);
    assert_eq!(status_of(body), "failed", "{body}");
    let error = error_of(body).unwrap_or_else(|| panic!("rsync_error missing: {body}"));
    if let Some(image) = body["rsync_data"]["images"].get(0) {
        assert_eq!(image["status"], json!("failed"), "{body}");
        assert!(image["error"].is_string(), "{body}");
    }
    let (failed, _) = assert_finished(info_of(body));
    assert!(
        failed >= 1,
        "Finished line must count the failed task: {}",
        info_of(body)
    );
    error.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_image_lands_with_the_same_digest_and_every_blob() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let image = Image::random(Format::Oci, &[512 * KIB, 64 * KIB]);
    let pushed = pair.src.push_image("team/app", "v1", &image).await;

    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1"))
        .await;
    let result = assert_synced(status, &body, &pushed);
    assert_eq!(
        count(result, "blobs_copied"),
        3,
        "config + 2 layers: {body}"
    );
    assert_eq!(count(result, "bytes_copied"), pushed.blob_bytes(), "{body}");
    assert_eq!(
        count(result, "blobs_skipped") + count(result, "blobs_mounted"),
        0,
        "{body}"
    );
    assert_eq!(count(result, "manifests_pushed"), 1, "{body}");
    assert_eq!(
        body["rsync_config"]["source"],
        json!(pair.src_ref("team/app:v1"))
    );
    assert_eq!(body["username"], json!("admin"));
    skopeo::assert_landed(&pair.dst, "team/app:v1", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_schema2_image_lands_under_a_new_name() {
    let pair = Pair::start(SourceAuth::Htpasswd).await;
    let image = Image::random(Format::Docker, &[300 * KIB, 10 * KIB, 100 * KIB]);
    let pushed = pair.src.push_image("ci/tool", "1.0", &image).await;

    let (status, body) = pair
        .service
        .sync(
            &pair.src_ref("ci/tool:1.0"),
            &pair.dst_ref("mirror/tool:stable"),
        )
        .await;
    let result = assert_synced(status, &body, &pushed);
    assert_eq!(count(result, "blobs_copied"), 4, "{body}");
    skopeo::assert_landed(&pair.dst, "mirror/tool:stable", &pushed).await;
    skopeo::assert_absent(&pair.dst, "mirror/tool:1.0").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn target_without_a_tag_keeps_the_source_tag() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let pushed = pair
        .src
        .push_image("team/app", "v7", &Image::random(Format::Oci, &[50 * KIB]))
        .await;
    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/app:v7"), &pair.dst_ref("other/app"))
        .await;
    assert_synced(status, &body, &pushed);
    skopeo::assert_landed(&pair.dst, "other/app:v7", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_index_of_three_platforms_is_copied_whole() {
    let pair = Pair::start(SourceAuth::Htpasswd).await;
    let platforms = [Platform::AMD64, Platform::ARM64, Platform::ARMV7];
    let index = Index::random(Format::Oci, &platforms, 400 * KIB, 50 * KIB);
    let pushed = pair.src.push_index("multi/app", "v2", &index).await;
    assert_eq!(pushed.blobs.len(), 7);

    let (status, body) = pair
        .service
        .sync(&pair.src_ref("multi/app:v2"), &pair.dst_ref("multi/app:v2"))
        .await;
    let result = assert_synced(status, &body, &pushed);
    assert_eq!(
        count(result, "blobs_copied"),
        7,
        "the shared base layer is sent once: {body}"
    );
    assert_eq!(count(result, "bytes_copied"), pushed.blob_bytes(), "{body}");
    assert_eq!(
        count(result, "manifests_pushed"),
        4,
        "3 platforms + index: {body}"
    );
    skopeo::assert_landed(&pair.dst, "multi/app:v2", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_manifest_list_keeps_its_digest() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let index = Index::random(
        Format::Docker,
        &[Platform::AMD64, Platform::S390X],
        200 * KIB,
        20 * KIB,
    );
    let pushed = pair.src.push_index("multi/list", "latest", &index).await;

    let (status, body) = pair
        .service
        .sync(
            &pair.src_ref("multi/list:latest"),
            &pair.dst_ref("multi/list:latest"),
        )
        .await;
    let result = assert_synced(status, &body, &pushed);
    assert_eq!(count(result, "manifests_pushed"), 3, "{body}");
    skopeo::assert_landed(&pair.dst, "multi/list:latest", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn by_digest_to_a_bare_repository_or_the_same_digest() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let pushed = pair
        .src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[80 * KIB]))
        .await;
    let source = pair.src_ref(&format!("team/app@{}", pushed.digest));

    for target in [
        "pinned/app".to_string(),
        format!("same/app@{}", pushed.digest),
    ] {
        let (status, body) = pair.service.sync(&source, &pair.dst_ref(&target)).await;
        assert_synced(status, &body, &pushed);
        let repo = target.split('@').next().unwrap();
        skopeo::assert_landed(&pair.dst, &format!("{repo}@{}", pushed.digest), &pushed).await;
    }

    let other = sha256_digest(b"another manifest");
    let (status, body) = pair
        .service
        .sync(&source, &pair.dst_ref(&format!("wrong/app@{other}")))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a target digest must equal the source's: {body}"
    );
    assert_eq!(status_of(&body), "unusual", "{body}");
    skopeo::assert_absent(&pair.dst, &format!("wrong/app@{}", pushed.digest)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn second_run_is_already_synced_and_sends_nothing() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let index = Index::random(
        Format::Oci,
        &[Platform::AMD64, Platform::ARM64],
        100 * KIB,
        10 * KIB,
    );
    let pushed = pair.src.push_index("team/app", "v1", &index).await;
    let (source, target) = (pair.src_ref("team/app:v1"), pair.dst_ref("team/app:v1"));

    let (status, body) = pair.service.sync(&source, &target).await;
    assert_synced(status, &body, &pushed);
    let (status, body) = pair.service.sync(&source, &target).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_of(&body), "successfully", "{body}");
    let result = image_of(&body, 0);
    assert_eq!(result["status"], json!("already_synced"), "{body}");
    assert_eq!(count(result, "blobs_copied"), 0, "{body}");
    assert_eq!(count(result, "bytes_copied"), 0, "{body}");
    assert_eq!(count(result, "manifests_pushed"), 0, "{body}");
    assert_eq!(assert_finished(info_of(&body)), (0, 0));
    skopeo::assert_landed(&pair.dst, "team/app:v1", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_the_target_has_are_skipped_or_mounted() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let base = Layer::random(300 * KIB);
    let first = Image::new(
        Format::Oci,
        Platform::AMD64,
        vec![base.clone(), Layer::random(20 * KIB)],
    );
    let second = Image::new(
        Format::Oci,
        Platform::AMD64,
        vec![base, Layer::random(30 * KIB)],
    );
    let pushed_first = pair.src.push_image("team/a", "v1", &first).await;
    let pushed_second = pair.src.push_image("team/b", "v1", &second).await;

    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/a:v1"), &pair.dst_ref("team/a:v1"))
        .await;
    assert_synced(status, &body, &pushed_first);

    // Same target repository: the base layer is there already.
    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/b:v1"), &pair.dst_ref("team/a:v2"))
        .await;
    let result = assert_synced(status, &body, &pushed_second);
    assert!(
        count(result, "blobs_skipped") >= 1,
        "base layer must be skipped: {body}"
    );
    assert_eq!(
        count(result, "blobs_copied"),
        2,
        "config + own layer only: {body}"
    );
    skopeo::assert_landed(&pair.dst, "team/a:v2", &pushed_second).await;

    // Another repository of the same registry, which now holds all three blobs in
    // team/a: every one is mounted (or found), none is sent again.
    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/b:v1"), &pair.dst_ref("team/b:v1"))
        .await;
    let result = assert_synced(status, &body, &pushed_second);
    let reused = count(result, "blobs_mounted") + count(result, "blobs_skipped");
    assert_eq!(reused, 3, "blobs in team/a must be mounted: {body}");
    assert!(count(result, "blobs_mounted") >= 1, "{body}");
    assert_eq!(count(result, "bytes_copied"), 0, "{body}");
    skopeo::assert_landed(&pair.dst, "team/b:v1", &pushed_second).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_source_tag_fails_and_names_the_registry() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    pair.src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[10 * KIB]))
        .await;

    let (status, body) = pair
        .service
        .sync(
            &pair.src_ref("team/app:nope"),
            &pair.dst_ref("team/app:nope"),
        )
        .await;
    let error = assert_failed(status, &body);
    assert!(
        error.contains(&pair.src.host()),
        "error must name the source registry: {error}"
    );
    skopeo::assert_absent(&pair.dst, "team/app:nope").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_target_credentials_fail_without_leaking_any_password() {
    let wrong = random_password("wrong");
    let wrong_for_config = wrong.clone();
    let pair = Pair::start_with(SourceAuth::Htpasswd, move |config, _, dst| {
        config.entry(
            "dst",
            &dst.host(),
            Some(Creds::new("pusher", &wrong_for_config)),
        )
    })
    .await;
    let image = Image::random(Format::Oci, &[40 * KIB]);
    pair.src.push_image("team/app", "v1", &image).await;

    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1"))
        .await;
    let error = assert_failed(status, &body);
    assert!(
        error.contains(&pair.dst.host()),
        "error must name the target registry: {error}"
    );
    skopeo::assert_absent(&pair.dst, "team/app:v1").await;

    let src_pass = pair.src.creds().unwrap().pass.clone();
    let (admin, jenkins) = (admin(), jenkins());
    let secrets = [
        wrong.as_str(),
        &format!("pusher:{wrong}"),
        &src_pass,
        &format!("puller:{src_pass}"),
        &admin.pass,
        &admin.joined(),
        &jenkins.joined(),
    ];
    assert_no_secrets("response", &body.to_string(), &secrets);
    assert_no_secrets("analysis log", &pair.service.logfile_text(), &secrets);
    assert_no_secrets("service stdout", &pair.service.stdout(), &secrets);
    assert_no_secrets("service stderr", &pair.service.stderr(), &secrets);
}

#[tokio::test(flavor = "multi_thread")]
async fn rsync_info_is_logrus_lines_ending_with_finished() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let image = Image::random(Format::Oci, &[30 * KIB, 5 * KIB]);
    let pushed = pair.src.push_image("team/app", "v1", &image).await;

    let (status, body) = pair
        .service
        .sync(&pair.src_ref("team/app:v1"), &pair.dst_ref("team/app:v1"))
        .await;
    assert_synced(status, &body, &pushed);
    let info = info_of(&body);
    let lines = assert_logrus(info);
    assert!(
        lines.len() >= 3,
        "credentials, blobs, manifests and Finished: {info}"
    );
    assert_eq!(assert_finished(info), (0, 0));
    assert!(
        info.contains("pusher"),
        "the target user name is logged: {info}"
    );
    assert!(
        info.contains(&pushed.digest),
        "the manifest digest is logged: {info}"
    );
    let dst_pass = pair.dst_creds().pass;
    assert_no_secrets("rsync_info", info, &[&dst_pass]);

    let entries = pair.service.logfile_entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        entries[0]["rsync_data"]["rsync_status"],
        json!("successfully"),
        "{}",
        entries[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_syntax_tag_lists_regexes_and_several_targets() {
    let pair = Pair::start(SourceAuth::Anonymous).await;
    let mut pushed = std::collections::BTreeMap::new();
    for tag in ["v1", "v2", "dev"] {
        let image = Image::random(Format::Oci, &[20 * KIB]);
        pushed.insert(tag, pair.src.push_image("team/app", tag, &image).await);
    }

    // Two tags to two targets: four copies.
    let targets = [pair.dst_ref("one/app"), pair.dst_ref("two/app")];
    let body =
        json!({"rsync_config": {"source": pair.src_ref("team/app:v1,v2"), "target": targets}});
    let (status, answer) = pair.service.post_json(Some(&admin()), &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_sync_shape(&answer);
    assert_eq!(
        answer["rsync_data"]["images"].as_array().map(Vec::len),
        Some(4),
        "{answer}"
    );
    for repo in ["one/app", "two/app"] {
        for tag in ["v1", "v2"] {
            skopeo::assert_landed(&pair.dst, &format!("{repo}:{tag}"), &pushed[tag]).await;
        }
        skopeo::assert_absent(&pair.dst, &format!("{repo}:dev")).await;
    }

    // A regex picks v1 and v2, not dev.
    let (status, answer) = pair
        .service
        .sync(
            &pair.src_ref("team/app:/^v[0-9]+$/"),
            &pair.dst_ref("re/app"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    for tag in ["v1", "v2"] {
        skopeo::assert_landed(&pair.dst, &format!("re/app:{tag}"), &pushed[tag]).await;
    }
    skopeo::assert_absent(&pair.dst, "re/app:dev").await;

    // No tag: every tag of the repository.
    let (status, answer) = pair
        .service
        .sync(&pair.src_ref("team/app"), &pair.dst_ref("all/app"))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(assert_finished(info_of(&answer)), (0, 0));
    for (tag, image) in &pushed {
        skopeo::assert_landed(&pair.dst, &format!("all/app:{tag}"), image).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_hanging_up_does_not_stop_the_sync() {
    // The source sits behind a fault proxy that trickles the big layer (~4 s), so the
    // caller hangs up at a known point: after the service has started that blob's GET.
    let dst_pass = random_password("dst");
    let (src, dst) = tokio::join!(
        Registry::start_anonymous(),
        Registry::start_htpasswd("pusher", &dst_pass),
    );
    let proxy = FaultProxy::start(&src.host()).await;
    let service = Service::start(
        &ServiceConfig::new()
            .entry("src-proxy", &proxy.host(), None)
            .registry("dst", &dst),
    )
    .await;
    let image = Image::random(Format::Oci, &[256 * KIB, 16 * KIB]);
    let pushed = src.push_image("big/app", "v1", &image).await;
    let big = pushed.blobs.iter().max_by_key(|b| b.size).unwrap();
    let big_get = format!("^/v2/big/app/blobs/{}$", big.digest);
    proxy.add(
        Rule::on("GET", &big_get)
            .every()
            .trickle(Duration::from_millis(100), 8 * KIB),
    );

    let body = json!({"rsync_config": {
        "source": format!("{}/big/app:v1", proxy.host()),
        "target": format!("{}/big/app:v1", dst.host())}});
    let request = reqwest::Client::new()
        .post(service.url("/v1/image/rsync"))
        .basic_auth("admin", Some("adminpw"))
        .json(&body)
        .send();
    let caller = tokio::spawn(request);
    wait_until("the service starts the big layer's GET", || {
        !proxy.requests_to("GET", &big_get).is_empty()
    })
    .await;
    assert!(
        !caller.is_finished(),
        "the sync answered before the hang-up"
    );
    caller.abort(); // drops the connection mid-request

    wait_until("the sync is logged", || {
        !service.logfile_entries().is_empty()
    })
    .await;
    let entry = service.logfile_entries().remove(0);
    assert_eq!(
        entry["rsync_data"]["rsync_status"],
        json!("successfully"),
        "{entry}"
    );
    skopeo::assert_landed(&dst, "big/app:v1", &pushed).await;
}

/// Polls `done` every 50 ms; fails naming `what` after a minute (a deadline for a hung
/// test, not a speed limit).
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
