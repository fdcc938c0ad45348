//! Every kept corpus file of every fuzz target (`fuzz/corpus/<target>/`: the seeds and what
//! `scripts/fuzz` found and kept, minimised) goes through the target's property on stable Rust,
//! and so do the seeds as built now: a regression of any finding fails here, in the test command.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_kept_input_of_every_target_holds_its_property() {
    for (target, check) in sagashop_fuzzing::TARGETS {
        let files = corpus(target);
        assert!(
            files.len() >= 3,
            "{target}: only {} corpus files; `scripts/fuzz` keeps its corpus in fuzz/corpus/{target}",
            files.len()
        );
        for (path, bytes) in &files {
            let held = std::panic::catch_unwind(|| check(bytes));
            assert!(held.is_ok(), "{target}: {path} breaks its property");
        }
        eprintln!("{target}: {} kept inputs hold", files.len());
    }
}

#[test]
fn the_seeds_as_built_now_hold_their_properties() {
    let seeds = sagashop_fuzzing::seeds::seeds();
    for (target, check) in sagashop_fuzzing::TARGETS {
        let mine: Vec<_> = seeds.iter().filter(|(t, _, _)| *t == target).collect();
        assert!(!mine.is_empty(), "{target} has no seeds");
        for (_, name, bytes) in mine {
            let held = std::panic::catch_unwind(|| check(bytes));
            assert!(held.is_ok(), "{target}: seed {name} breaks its property");
        }
    }
}
