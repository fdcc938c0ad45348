//! The k6 scripts against `sagashop dev` on the real broker: the smoke test's checks and
//! thresholds pass, and a short bounded load run reports accepted/s and completed/s. Their
//! summaries are kept in `target/k6/` (scripts/test prints them).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Dev;
use sagashop_testkit::{TestKafka, tool, unique_name};

fn k6(script: &str, base: &str, env: &[(&str, &str)]) -> (bool, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(tool("k6"))
        .args(["run", "--quiet", "--no-color", "--no-usage-report"])
        .arg(root.join("k6").join(script))
        .env("BASE_URL", base)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = common::output_text(&output);
    let dir = root.join("target/k6");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(script.replace(".js", ".txt")), &text).unwrap();
    (output.status.success(), text)
}

/// The number after `label` in a summary line.
fn figure(summary: &str, label: &str) -> f64 {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{summary}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in `{line}`"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_test_passes_and_a_short_load_run_reports_its_rates() {
    let kafka = TestKafka::connect().await;
    let dev = Dev::start(&kafka, &format!("{}.", unique_name("k6")), &[]).await;

    let (ok, smoke) = k6("smoke.js", &dev.base, &[("SMOKE_ORDERS", "4")]);
    assert!(ok, "k6 smoke failed:\n{smoke}\n{}", dev.logs());
    assert!(smoke.contains("thresholds          all passed"), "{smoke}");
    assert_eq!(figure(&smoke, "accepted (202)"), 5.0, "{smoke}");
    assert_eq!(figure(&smoke, "finished sagas"), 5.0, "{smoke}");

    // Loose latency thresholds: this checks the script and the system, not the machine.
    let (ok, load) = k6(
        "load.js",
        &dev.base,
        &[
            ("RATE", "20"),
            ("DURATION", "5s"),
            ("DRAIN", "30"),
            ("P95_MS", "2000"),
            ("P99_MS", "5000"),
        ],
    );
    assert!(ok, "k6 load failed:\n{load}\n{}", dev.logs());
    let accepted = figure(&load, "accepted (202)");
    assert!(accepted >= 90.0, "{load}");
    // Every accepted order's saga finished during the drain.
    assert_eq!(figure(&load, "finished sagas"), accepted, "{load}");
    dev.terminate();
}
