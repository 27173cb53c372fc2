//! The cluster demo works end to end: `cmd/demo-cluster.sh` with the binary of this test
//! build starts its own PostgreSQL 15, registries and two replicas, spreads jobs over
//! both, kills one mid-transfer and shows the other taking its job over. The script
//! checks the copy with skopeo itself; this test reads what it printed.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_cluster_spreads_jobs_and_shows_a_takeover() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("cmd/demo-cluster.sh"))
        .current_dir(root)
        .env(
            "IMAGERSYNC_BIN",
            env!("CARGO_BIN_EXE_imagersync_service_bin"),
        )
        .output()
        .expect("bash runs cmd/demo-cluster.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "cmd/demo-cluster.sh failed ({}):\n{all}",
        out.status
    );

    // Both replicas ran some of the six small jobs.
    let spread = stdout
        .lines()
        .find(|l| l.starts_with("spread: "))
        .unwrap_or_else(|| panic!("no spread line:\n{all}"));
    let counts: Vec<u32> = spread
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{spread}");
    assert!(counts.iter().all(|&n| n > 0), "{spread}");
    assert_eq!(counts.iter().sum::<u32>(), 6, "{spread}");

    // The killed replica's job was finished by the other, and its log says so.
    let takeover = stdout
        .lines()
        .find(|l| l.starts_with("takeover: "))
        .unwrap_or_else(|| panic!("no takeover line:\n{all}"));
    assert!(
        takeover.contains("Resumed after a service restart: taken over from replica")
            && takeover.contains("whose lease lapsed (attempt 2)"),
        "{takeover}"
    );
    assert!(
        stdout.contains("slow job: target digest equals the source's"),
        "{all}"
    );
    assert!(stdout.contains("demo-cluster: OK"), "{all}");
    eprintln!("{stdout}");
}
