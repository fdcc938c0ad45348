//! The fault suite in its short form (`scripts/chaos` runs it longer): a broker restart, the
//! broker away for 75 s, `kill -9` of the partition leader in a cluster of three brokers, `kill -9`
//! of every service in turn, duplicated commands, replies, requests and a replay, every
//! service scaled 1 → 3 → 2 → 1 replicas with kills, and the chart in pods on the local node
//! with a `kubectl delete pod` of every service and the participants scaled 1 → 3 → 1, each
//! under load on a broker of its own. `xtask chaos` fails when a promise breaks (an accepted order
//! lost, an order finished twice, a refused order written, books that do not add up, an edge
//! that does not recover), so this test is that verdict plus the report it writes.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use sagashop_testkit::unique_name;

#[test]
fn under_every_fault_no_order_is_lost_doubled_or_written_unannounced() {
    let sagashop = common::debug_sagashop();
    let out = std::env::temp_dir().join(unique_name("chaos"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(&root)
        .args([
            "chaos",
            "--duration",
            "20s",
            "--rate",
            "30",
            "--broker-down",
            "6s",
            "--long-down",
            "75s",
            "--failover",
            "leader",
            "--scenario",
            "broker-restart,long-outage,broker-failover,process-kills,duplicates,scale,pod-faults",
        ])
        .arg("--sagashop")
        .arg(&sagashop)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The table goes into the test log either way: it is the figure the suite produces.
    println!("{stdout}");
    assert!(
        output.status.success(),
        "xtask chaos failed:\n{stdout}\n{stderr}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for scenario in [
        "| broker-restart |",
        "| long-outage |",
        "| broker-failover |",
        "| process-kills |",
        "| duplicates |",
        "| scale |",
        "| pod-faults |",
    ] {
        let row = report
            .lines()
            .find(|l| l.starts_with(scenario))
            .unwrap_or_else(|| panic!("{scenario} missing from the report:\n{report}"));
        assert!(row.ends_with("| held |"), "{row}");
    }
    // The outage outlasted the edge's timeouts, so some orders were refused with 503 (and the
    // verdict says none of them was written).
    let restart = report
        .lines()
        .find(|l| l.starts_with("| broker-restart |"))
        .unwrap();
    let refused: usize = restart.split('|').nth(5).unwrap().trim().parse().unwrap();
    assert!(
        refused > 0,
        "no order was refused during the outage: {restart}"
    );
    // scripts/test prints it after the test run, next to the k6 summaries.
    let shown = root.join("target/chaos");
    std::fs::create_dir_all(&shown).unwrap();
    std::fs::write(shown.join("short.md"), &report).unwrap();
    let _ = std::fs::remove_dir_all(out);
}
