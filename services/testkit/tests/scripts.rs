//! `scripts/kafka up` and `scripts/kube up` are idempotent: run again while the infrastructure
//! runs, they reuse it and print the same address as their last line, which callers `export`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::path::PathBuf;
use std::process::Command;

use sagashop_testkit::{TestKafka, TestKube};

/// Runs `scripts/<name> up` and returns (last stdout line, stderr).
fn up(name: &str) -> (String, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name);
    let output = Command::new(&script).arg("up").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{} up failed:\n{stderr}",
        script.display()
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    (stdout.lines().last().unwrap_or_default().to_owned(), stderr)
}

#[tokio::test]
async fn kafka_up_again_reuses_the_running_broker() {
    let kafka = TestKafka::connect().await;
    let (last, stderr) = up("kafka");
    assert_eq!(
        last,
        format!("KAFKA_BOOTSTRAP_SERVERS={}", kafka.config.bootstrap_servers)
    );
    assert!(
        stderr.contains("reusing the broker already running"),
        "{stderr}"
    );
}

#[tokio::test]
async fn kube_up_again_reuses_the_running_cluster() {
    let kube = TestKube::connect().await;
    let (last, stderr) = up("kube");
    assert_eq!(last, format!("KUBECONFIG={}", kube.kubeconfig.display()));
    assert!(
        stderr.contains("reusing the cluster already running"),
        "{stderr}"
    );
}
