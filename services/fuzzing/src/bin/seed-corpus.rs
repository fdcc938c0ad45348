//! Writes the seed corpora to `fuzz/corpus/<target>/seed-<name>` (or under the directory given),
//! keeping whatever the fuzzers found there.

#![allow(
    clippy::print_stdout,
    reason = "a command-line tool says what it wrote"
)]

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("fuzz/corpus"), PathBuf::from);
    let seeds = sagashop_fuzzing::seeds::seeds();
    for (target, name, bytes) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    println!("{} seeds written under {}", seeds.len(), root.display());
    Ok(())
}
