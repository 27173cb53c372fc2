//! The benchmark script works end to end: `cmd/bench.sh --quick` (one run, tiny images)
//! against the binary of this test build, with real registries and skopeo. It checks that
//! the script runs and reports every scenario, not how fast anything is.

use std::path::Path;
use std::process::Command;

const SCENARIOS: [&str; 10] = [
    "big",
    "many",
    "multi",
    "noop",
    "fanin",
    "huge",
    "mirror",
    "mirror-noop",
    // wan in quick mode: the tiny many and multi through proxies holding each request 20 ms.
    "wan20-many",
    "wan20-multi",
];

#[test]
fn quick_bench_reports_every_scenario_for_both_tools() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("cmd/bench.sh"))
        .arg("--quick")
        .current_dir(root)
        .env(
            "IMAGERSYNC_BIN",
            env!("CARGO_BIN_EXE_imagersync_service_bin"),
        )
        .env_remove("RUNS")
        .env_remove("PROC_NUM")
        .output()
        .expect("bash runs cmd/bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cmd/bench.sh --quick failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );

    // Table rows: | scenario | tool | runs | wall s (median) | ...
    let row = |scenario: &str, tool: &str| -> Option<Vec<String>> {
        stdout.lines().find_map(|line| {
            let cells: Vec<String> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            (cells.len() >= 4 && cells[0] == scenario && cells[1] == tool).then_some(cells)
        })
    };
    let mut expected: Vec<(&str, &str)> = Vec::new();
    for scenario in SCENARIOS {
        expected.push((scenario, "imagersync"));
        expected.push((scenario, "skopeo"));
    }
    for scenario in ["big", "many", "multi"] {
        expected.push((scenario, "floor-seq"));
        expected.push((scenario, "floor-par"));
    }
    expected.push(("noop", "skopeo-inspect"));
    expected.push(("mirror-noop", "floor-par"));
    for (scenario, tool) in expected {
        let cells = row(scenario, tool).unwrap_or_else(|| {
            panic!("no table row for {scenario} / {tool} in the output:\n{stdout}")
        });
        assert_eq!(
            cells[2], "1",
            "{scenario} / {tool}: quick mode makes one run"
        );
        let wall: f64 = cells[3]
            .parse()
            .unwrap_or_else(|_| panic!("{scenario} / {tool}: wall {:?} is not a number", cells[3]));
        assert!(
            wall > 0.0,
            "{scenario} / {tool}: a wall time of {wall} s is not a measurement"
        );
    }
    assert!(
        stdout.contains("Targets of the issue"),
        "the targets section is missing:\n{stdout}"
    );
}
