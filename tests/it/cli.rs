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

/// Runs `sync` with `args` under `config`; returns (exit code, stdout, stderr).
fn run_sync(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bin()
        .args(["sync", "--configFile"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn single_sync_by_flags_answers_json_and_the_documented_exit_status() {
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_htpasswd("pusher", "single-Pw-1").await;
    let pushed = src
        .push_image("team/app", "v1", &Image::random(Format::Oci, &[8 * 1024]))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let yaml = crate::common::ServiceConfig::new()
        .registry("src", &src)
        .registry("dst", &dst)
        .to_yaml(&dir.path().join("rsync.log"));
    std::fs::write(&config, yaml).unwrap();
    let source = format!("{}/team/app:v1", src.host());

    // 0, and with --json the API's answer on stdout.
    let target = format!("{}/mirror/app:v1", dst.host());
    let (code, stdout, stderr) = run_sync(
        &config,
        &["--source", &source, "--target", &target, "--json"],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let answer: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout not JSON ({e}): {stdout}"));
    assert_eq!(
        answer["rsync_data"]["rsync_status"], "successfully",
        "{answer}"
    );
    assert_eq!(
        answer["rsync_data"]["images"][0]["digest"],
        pushed.digest.as_str()
    );
    assert_eq!(answer["rsync_config"]["source"], source.as_str());
    assert!(!stdout.contains("single-Pw-1"));
    skopeo::assert_landed(&dst, "mirror/app:v1", &pushed).await;

    // 0 without --json: the sync log on stdout, two targets at once.
    let (a, b) = (
        format!("{}/mirror/a:v1", dst.host()),
        format!("{}/mirror/b:v1", dst.host()),
    );
    let (code, stdout, stderr) = run_sync(
        &config,
        &["--source", &source, "--target", &a, "--target", &b],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Finished, 0 sync tasks failed"), "{stdout}");
    skopeo::assert_landed(&dst, "mirror/a:v1", &pushed).await;
    skopeo::assert_landed(&dst, "mirror/b:v1", &pushed).await;

    // 1: the source tag does not exist.
    let missing = format!("{}/team/app:nope", src.host());
    let (code, stdout, stderr) = run_sync(&config, &["--source", &missing, "--target", &target]);
    assert_eq!(code, Some(1), "a failed sync exits 1: {stdout}\n{stderr}");
    assert!(stderr.contains("team/app"), "{stderr}");

    // 2: a reference that cannot be parsed; nothing reaches the target.
    let bad = format!("{}/Team/App:v1", src.host());
    let (code, stdout, stderr) = run_sync(&config, &["--source", &bad, "--target", &target]);
    assert_eq!(code, Some(2), "a bad reference exits 2: {stdout}\n{stderr}");
    assert!(stderr.contains("Team/App"), "{stderr}");

    // 2: a config that cannot be used, named on stderr.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "rsyncserver: [\n").unwrap();
    let (code, stdout, stderr) = run_sync(&broken, &["--source", &source, "--target", &target]);
    assert_eq!(code, Some(2), "a bad config exits 2: {stdout}\n{stderr}");
    assert!(stderr.contains(&broken.display().to_string()), "{stderr}");
}

/// `sync`'s progress (issue 14 point 7). Under a pseudo-terminal (`script -qec`, TERM set)
/// indicatif bars are drawn on stderr: the image's prefix, `#` bar characters, a byte
/// count, `blobs N/N`, ANSI cursor control, and colour unless `NO_COLOR` is set.
/// Without a terminal stderr gets plain lines (no escape codes) naming the image, its
/// blobs and its end; with `--quiet` stderr stays empty (and no bar on a terminal). The
/// source layer trickles through a fault proxy over the registry, so bytes move while
/// the bar is drawn.
#[tokio::test(flavor = "multi_thread")]
async fn sync_shows_bars_on_a_terminal_plain_lines_elsewhere_and_nothing_when_quiet() {
    use crate::common::fault_proxy::{FaultProxy, Rule};
    let script = crate::common::tools::SCRIPT.path();
    let src = Registry::start_anonymous().await;
    let dst = Registry::start_htpasswd("pusher", "progress-Pw-1").await;
    let image = Image::random(Format::Oci, &[256 * 1024]);
    let pushed = src.push_image("team/app", "v1", &image).await;
    let proxy = FaultProxy::start(&src.host()).await;
    proxy.add(
        Rule::on("GET", &format!("/blobs/{}$", image.layers[0].digest))
            .every()
            .trickle(std::time::Duration::from_millis(100), 32 * 1024),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let yaml = crate::common::ServiceConfig::new()
        .entry("src", &proxy.host(), None)
        .registry("dst", &dst)
        .to_yaml(&dir.path().join("rsync.log"));
    std::fs::write(&config, yaml).unwrap();
    let source = format!("{}/team/app:v1", proxy.host());
    let args = |tag: &str, quiet: bool| {
        let mut a = vec![
            "sync".to_owned(),
            "--configFile".to_owned(),
            config.display().to_string(),
            "--source".to_owned(),
            source.clone(),
            "--target".to_owned(),
            format!("{}/mirror/app:{tag}", dst.host()),
        ];
        if quiet {
            a.push("--quiet".to_owned());
        }
        a
    };
    // Under a pty: stdout and stderr both reach the terminal, which `script` copies to
    // its own stdout.
    let on_terminal = |args: Vec<String>, no_color: bool| {
        let line = std::iter::once(env!("CARGO_BIN_EXE_imagersync_service_bin").to_owned())
            .chain(args)
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new(&script);
        cmd.args(["-qec", &line, "/dev/null"])
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let drawn = |out: &str| {
        assert!(out.contains("\x1b["), "no ANSI control: {out:?}");
        assert!(out.contains("[1/1] "), "no image prefix: {out:?}");
        assert!(out.contains("#####"), "no bar: {out:?}");
        assert!(out.contains("KiB"), "no byte count: {out:?}");
        assert!(out.contains("blobs 2/2"), "blobs never done: {out:?}");
    };

    let (code, out) = on_terminal(args("tty", false), false);
    assert_eq!(code, Some(0), "{out}");
    drawn(&out);
    assert!(out.contains("\x1b[36m"), "no colour on a terminal: {out:?}");
    skopeo::assert_landed(&dst, "mirror/app:tty", &pushed).await;

    let (code, out) = on_terminal(args("nocolor", false), true);
    assert_eq!(code, Some(0), "{out}");
    drawn(&out);
    for sgr in ["\x1b[36m", "\x1b[34m", "\x1b[1m"] {
        assert!(!out.contains(sgr), "{sgr:?} with NO_COLOR: {out:?}");
    }

    let (code, out) = on_terminal(args("quiet-tty", true), false);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        !out.contains("blobs") && !out.contains("#####") && !out.contains("\x1b[1A"),
        "a bar with --quiet: {out:?}"
    );
    assert!(out.contains("Finished, 0 sync tasks failed"), "{out}");

    let target = format!("{}/mirror/app:lines", dst.host());
    let (code, stdout, stderr) = run_sync(&config, &["--source", &source, "--target", &target]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes without a terminal: {stderr:?}"
    );
    let name = format!("[1/1] {source} -> {target}");
    for line in [
        "imagersync: 1 image(s) to sync".to_owned(),
        format!("imagersync: {name}: 2 blobs"),
        format!("imagersync: {name}: blob 2/2"),
        format!("imagersync: {name}: synced"),
    ] {
        assert!(stderr.contains(&line), "{line:?} missing from:\n{stderr}");
    }
    assert!(
        !stdout.contains("imagersync: "),
        "progress on stdout: {stdout}"
    );

    let (code, stdout, stderr) = run_sync(
        &config,
        &[
            "--source",
            &source,
            "--target",
            &format!("{}/mirror/app:quiet", dst.host()),
            "--quiet",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(stderr, "", "--quiet printed on stderr");
    assert!(stdout.contains("Finished, 0 sync tasks failed"), "{stdout}");
}
