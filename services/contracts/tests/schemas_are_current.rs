//! The committed JSON Schemas under `schemas/` are exactly what the Rust types generate.
//!
//! A published schema version is a promise to every consumer still reading old messages, so a
//! change to a payload type must show up here as a diff someone reviews and commits.

use std::collections::BTreeSet;
use std::path::PathBuf;

const REGENERATE: &str = "cargo run -p sagashop -- schemas --out services/contracts/schemas";

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

#[test]
fn committed_schemas_match_the_rust_types() {
    let mut stale = Vec::new();
    for entry in sagashop_contracts::catalogue() {
        let path = schema_dir().join(entry.file_name());
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != entry.render() {
            stale.push(entry.file_name());
        }
    }
    assert!(
        stale.is_empty(),
        "these JSON Schemas are missing or stale: {stale:?}\nrun `{REGENERATE}` and commit the result \
         (a breaking change to a published version needs a new schema version instead)"
    );
}

#[test]
fn no_committed_schema_lacks_a_rust_type() {
    let known: BTreeSet<_> = sagashop_contracts::catalogue()
        .iter()
        .map(|e| e.file_name())
        .collect();
    let committed: BTreeSet<_> = std::fs::read_dir(schema_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let orphans: Vec<_> = committed.difference(&known).collect();
    assert!(
        orphans.is_empty(),
        "schemas/ holds {orphans:?} but no Rust type produces it: old messages of that version may \
         still sit in Kafka, so keep the type (and its decoder) or delete the file on purpose"
    );
}
