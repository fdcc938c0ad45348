//! What the xtask tests share.

#![allow(
    clippy::unwrap_used,
    unreachable_pub,
    reason = "test code: a panic is the failure report; a helper module of each test crate"
)]

use std::path::PathBuf;

/// The debug `sagashop` binary the test command builds: this test's executable lives in
/// `target/debug/deps/`, the binary in `target/debug/`.
pub fn debug_sagashop() -> PathBuf {
    let debug = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let sagashop = debug.join("sagashop");
    assert!(
        sagashop.exists(),
        "{} is missing: run `cargo build -p sagashop`",
        sagashop.display()
    );
    sagashop
}
