//! Proves the test rig itself, without the service: real registries start and stop,
//! images built in-process push correctly, and the skopeo oracle both accepts what
//! is there and notices what is not.

use crate::common::image::sha256_digest;
use crate::common::{skopeo, tools, Format, Image, Index, Platform, Registry};

const KIB: usize = 1024;

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_registry_takes_an_oci_image() {
    let registry = Registry::start_anonymous().await;
    let image = Image::random(Format::Oci, &[300 * KIB, 40 * KIB]);
    let pushed = registry.push_image("team/app", "v1", &image).await;

    assert_eq!(
        pushed.reference(),
        format!("{}/team/app:v1", registry.host())
    );
    assert_eq!(pushed.blobs.len(), 3, "config + 2 layers");
    let raw = skopeo::inspect_raw(&registry, "team/app:v1").await.unwrap();
    assert_eq!(raw, image.manifest.to_vec(), "stored byte for byte");
    skopeo::assert_landed(&registry, "team/app:v1", &pushed).await;
    skopeo::assert_landed(&registry, &format!("team/app@{}", pushed.digest), &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_takes_a_docker_image_and_refuses_strangers() {
    let registry = Registry::start_htpasswd("pusher", "s3cret-Pw").await;
    let status = reqwest::get(format!("{}/v2/", registry.url()))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "anonymous /v2/ must be refused");

    let image = Image::random(Format::Docker, &[200 * KIB]);
    let pushed = registry.push_image("ci/tool", "1.0", &image).await;
    assert_eq!(
        pushed.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    skopeo::assert_landed(&registry, "ci/tool:1.0", &pushed).await;

    // skopeo without credentials is refused by this registry: the oracle's own view
    // depends on the creds it is given, not only on what the rig checks with reqwest.
    let anonymous = tokio::process::Command::new(crate::common::tools::SKOPEO.path())
        .args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
        ])
        .arg("--no-creds")
        .arg(format!("docker://{}/ci/tool:1.0", registry.host()))
        .output()
        .await
        .expect("run skopeo");
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        !anonymous.status.success(),
        "anonymous skopeo read the image"
    );
    assert!(
        stderr.contains("401") || stderr.to_lowercase().contains("unauthorized"),
        "{stderr}"
    );

    let stranger = Registry::start_anonymous().await; // anonymous registry: same oracle, no creds
    let err = skopeo::inspect_raw(&stranger, "ci/tool:1.0")
        .await
        .unwrap_err();
    assert!(
        err.contains("manifest unknown") || err.contains("name unknown"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_index_with_a_shared_base_layer() {
    let registry = Registry::start_anonymous().await;
    let platforms = [Platform::AMD64, Platform::ARM64, Platform::ARMV7];
    let index = Index::random(Format::Oci, &platforms, 256 * KIB, 64 * KIB);
    let pushed = registry.push_index("multi/app", "v2", &index).await;

    assert_eq!(pushed.children.len(), 3);
    assert_eq!(
        pushed.blobs.len(),
        1 + 3 + 3,
        "shared base, own layers, configs"
    );
    let base = &index.images[0].layers[0].digest;
    assert!(index.images.iter().all(|i| &i.layers[0].digest == base));
    skopeo::assert_landed(&registry, "multi/app:v2", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_manifest_list_on_an_auth_registry() {
    let registry = Registry::start_htpasswd("u", "p4ss").await;
    let index = Index::random(
        Format::Docker,
        &[Platform::AMD64, Platform::S390X],
        100 * KIB,
        30 * KIB,
    );
    let pushed = registry.push_index("multi/list", "latest", &index).await;
    assert_eq!(
        pushed.media_type,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    skopeo::assert_landed(&registry, "multi/list:latest", &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oracle_notices_wrong_digest_missing_tag_and_missing_blob() {
    let registry = Registry::start_anonymous().await;
    let image = Image::random(Format::Oci, &[50 * KIB, 20 * KIB]);
    let pushed = registry.push_image("team/app", "v1", &image).await;

    let wrong = sha256_digest(b"something else");
    assert!(skopeo::check_digest(&registry, "team/app:v1", &wrong)
        .await
        .is_err());
    skopeo::assert_absent(&registry, "team/app:v2").await;
    skopeo::assert_absent(&registry, "nobody/here:v1").await;

    registry
        .delete_blob("team/app", &image.layers[1].digest)
        .await;
    let err = skopeo::check_landed(&registry, "team/app:v1", &pushed)
        .await
        .unwrap_err();
    assert!(
        err.contains("skopeo failed") || err.contains(&image.layers[1].digest),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registries_get_their_own_ports_and_die_with_their_handle() {
    let a = Registry::start_anonymous().await;
    let b = Registry::start_htpasswd("x", "y").await;
    assert_ne!(a.host(), b.host());
    let pid = a.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        a.log().contains("listening on"),
        "log captured: {}",
        a.log()
    );
    drop(a);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry process {pid} still exists after drop"
    );
}

#[test]
fn missing_tools_say_how_to_install_them() {
    assert_eq!(
        tools::DOCKER_REGISTRY.missing_message(),
        "docker-registry not found: install it with `apt-get install docker-registry` (or run cmd/test.sh)"
    );
    assert!(tools::HTPASSWD
        .missing_message()
        .contains("apt-get install apache2-utils"));
    assert!(tools::find_in(std::ffi::OsStr::new("/nonexistent"), "skopeo").is_none());
    for tool in [tools::DOCKER_REGISTRY, tools::SKOPEO, tools::HTPASSWD] {
        assert!(tool.path().exists());
    }
}
