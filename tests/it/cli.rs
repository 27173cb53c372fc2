//! The command line without the server: one sync, and image-syncer's own files.

use std::process::Command;

use crate::common::{skopeo, Format, Image, Registry};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imagersync_service_bin"))
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_image_syncer_files_and_reports_failures_in_the_exit_code() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_htpasswd("pusher", "batch-Pw-1").await;
    let one = src
        .push_image("team/one", "v1", &Image::random(Format::Oci, &[8 * 1024]))
        .await;
    let two = src
        .push_image(
            "team/two",
            "v2",
            &Image::random(Format::Docker, &[8 * 1024]),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.yaml");
    std::fs::write(
        &auth,
        format!(
            "{s}:\n  insecure: true\n{d}:\n  username: pusher\n  password: batch-Pw-1\n  insecure: true\n",
            s = src.host(),
            d = dst.host()
        ),
    )
    .unwrap();
    let images = dir.path().join("images.yaml");
    std::fs::write(
        &images,
        format!(
            "{s}/team/one:v1: {d}/mirror/one\n{s}/team/two:v2:\n  - {d}/mirror/two\n  - {d}/mirror/two-copy:latest\n",
            s = src.host(),
            d = dst.host()
        ),
    )
    .unwrap();
    let run = |images: &std::path::Path| {
        bin()
            .args(["sync", "--configFile"])
            .arg(dir.path().join("no-such-config.yaml"))
            .arg("--images")
            .arg(images)
            .arg("--auth")
            .arg(&auth)
            .output()
            .unwrap()
    };

    let out = run(&images);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("Finished, 0 sync tasks failed").count(),
        2,
        "{stdout}"
    );
    assert!(!stdout.contains("batch-Pw-1"));
    skopeo::assert_landed(&dst, "mirror/one:v1", &one).await;
    skopeo::assert_landed(&dst, "mirror/two:v2", &two).await;
    skopeo::assert_landed(&dst, "mirror/two-copy:latest", &two).await;

    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        format!(
            "{s}/team/missing:v1: {d}/mirror/missing\n{s}/team/one:v1: {d}/mirror/again\n",
            s = src.host(),
            d = dst.host()
        ),
    )
    .unwrap();
    let out = run(&broken);
    assert_eq!(out.status.code(), Some(1), "a failed entry fails the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("team/missing") && stderr.contains("1 entries failed"),
        "{stderr}"
    );
    skopeo::assert_landed(&dst, "mirror/again:v1", &one).await;
}

#[test]
fn batch_and_single_forms_do_not_mix() {
    let out = bin()
        .args(["sync", "--images", "x.yaml", "--source", "a/b:c"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["sync"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "source/target or --images is required"
    );
}
