//! The soak script works end to end: `cmd/soak.sh --quick` (200 mixed requests: copies,
//! no-ops, failures, asynchronous jobs, cancels) against the binary of this test build,
//! with real registries. It checks that every answer was the right one, that the figures
//! are printed every window and that the verdict line is there; not the figures
//! themselves, which are noisy on a shared machine (the full run's are in `doc/perf.md`).

use std::path::Path;
use std::process::Command;

#[test]
fn quick_soak_answers_every_request_right_and_prints_the_figures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("cmd/soak.sh"))
        .arg("--quick")
        .current_dir(root)
        .env(
            "IMAGERSYNC_BIN",
            env!("CARGO_BIN_EXE_imagersync_service_bin"),
        )
        .env_remove("SYNCS")
        .env_remove("EVERY")
        .output()
        .expect("bash runs cmd/soak.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "cmd/soak.sh --quick failed ({}):\n{all}",
        out.status
    );
    let header = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("requests"))
        .unwrap_or_else(|| panic!("no column header:\n{all}"));
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            "requests",
            "rss_mib",
            "fds",
            "sqlite_kib",
            "wal_kib",
            "p50_ms",
            "p99_ms",
            "wrong"
        ],
        "{all}"
    );
    // One row per 50 requests, every value a number, no wrong answer.
    let rows: Vec<Vec<f64>> = stdout
        .lines()
        .filter(|l| l.split_whitespace().count() == columns.len())
        .filter_map(|l| l.split_whitespace().map(|v| v.parse().ok()).collect())
        .collect();
    let requests: Vec<f64> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(requests, [50.0, 100.0, 150.0, 200.0], "{all}");
    for row in &rows {
        assert!(
            row[1] > 0.0 && row[2] > 0.0,
            "RSS and fds measured: {row:?}"
        );
        assert_eq!(row[7], 0.0, "wrong answers: {row:?}\n{all}");
    }
    let mix = stdout
        .lines()
        .find(|l| l.starts_with("mix: "))
        .unwrap_or_else(|| panic!("no mix line:\n{all}"));
    for kind in [
        "copy 60",
        "noop 40",
        "missing 20",
        "bad 20",
        "async 20",
        "cancel 20",
        "tag 20",
    ] {
        assert!(mix.contains(kind), "{kind} missing from {mix}");
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("verdict: ")),
        "no verdict:\n{all}"
    );
    assert!(stdout.contains("service still healthy"), "{all}");
}
