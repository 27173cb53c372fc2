//! The load script works end to end: `cmd/load.sh --quick` (a few small images, a few
//! seconds of wrk on `/check`) against the binary of this test build, with real
//! registries, wrk and skopeo. It checks that every sync landed correctly and that no
//! health check failed under load, not how fast anything was (figures: `doc/perf.md`).

use std::path::Path;
use std::process::Command;

#[test]
fn quick_load_syncs_every_image_correctly_and_no_check_fails() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("cmd/load.sh"))
        .arg("--quick")
        .current_dir(root)
        .env(
            "IMAGERSYNC_BIN",
            env!("CARGO_BIN_EXE_imagersync_service_bin"),
        )
        .env("SYNCS", "5")
        .env_remove("LAYER_SIZE")
        .output()
        .expect("bash runs cmd/load.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "cmd/load.sh --quick failed ({}):\n{all}",
        out.status
    );

    let synced: Vec<&str> = stdout.lines().filter(|l| l.starts_with("sync ")).collect();
    assert_eq!(synced.len(), 5, "one line per sync:\n{all}");
    for line in &synced {
        assert!(
            line.contains("HTTP 200 successfully") && line.ends_with(": ok"),
            "{line}\n{all}"
        );
    }
    assert!(stdout.contains("syncs: 5 of 5 correct"), "{all}");

    let check = stdout
        .lines()
        .find(|l| l.starts_with("/check under load:"))
        .unwrap_or_else(|| panic!("no /check line:\n{all}"));
    assert!(check.ends_with("failed requests: 0"), "{check}");
    let requests: u64 = check
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in {check:?}"));
    assert!(requests > 0, "wrk sent no request: {check}");
    assert!(
        stdout.contains("service peak RSS (VmHWM):"),
        "peak RSS missing:\n{all}"
    );
}
