//! kit's modules import one way: each names the module that defines what it uses (never the
//! crate root's re-exports), and no module depends, directly or through others, on itself.
//! A newcomer can then read kit bottom up: `error`, `record`, `kafka`, ... up to `processor`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `crate::…` path in `source`'s code (not its comments, not its unit tests).
fn crate_paths(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut paths = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '{' || c == ','))
                .unwrap_or(after.len());
            let head = &after[..end];
            let head = if head.starts_with('{') {
                // `crate::{A, B}` on one line: each name is a root item.
                let close = after.find('}').unwrap_or(after.len());
                after[1..close].to_owned()
            } else {
                head.to_owned()
            };
            paths.push(head);
            rest = &after[end..];
        }
    }
    paths
}

struct Layering {
    /// module → the modules it uses.
    uses: BTreeMap<String, BTreeSet<String>>,
    /// `module: Item` for every item taken from the crate root.
    from_root: Vec<String>,
}

fn layering(src: &Path) -> Layering {
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            sources.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut from_root = Vec::new();
    for (module, source) in &sources {
        let entry = uses.entry(module.clone()).or_default();
        for path in crate_paths(source) {
            for name in path.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let first = name.split("::").next().unwrap_or(name);
                if sources.contains_key(first) {
                    if first != module {
                        entry.insert(first.to_owned());
                    }
                } else {
                    from_root.push(format!("{module}: crate::{name}"));
                }
            }
        }
    }
    Layering { uses, from_root }
}

/// Every module that can reach itself, with one way it does.
fn cycles(uses: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for start in uses.keys() {
        let mut stack = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().unwrap();
            for next in &uses[last] {
                if next == start {
                    found.push(format!("{} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
    found
}

#[test]
fn every_module_imports_downwards_and_none_reaches_itself() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layering = layering(&src);
    assert!(
        layering.uses.len() > 20,
        "kit's modules were not found in {}",
        src.display()
    );
    assert!(
        layering.from_root.is_empty(),
        "import these from the module that defines them, not the crate root:\n{}",
        layering.from_root.join("\n")
    );
    let cycles = cycles(&layering.uses);
    assert!(
        cycles.is_empty(),
        "kit's modules depend on themselves (move what both sides share into a module below \
         them):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_check_sees_a_cycle_and_an_import_from_the_root() {
    let dir = std::env::temp_dir().join(sagashop_testkit::unique_name("layering"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.rs"),
        "use crate::b::B;\n/// crate::c in a comment\n",
    )
    .unwrap();
    std::fs::write(dir.join("b.rs"), "fn f() -> crate::a::A { todo!() }\n").unwrap();
    std::fs::write(dir.join("c.rs"), "use crate::{Error, Task};\n").unwrap();
    let layering = layering(&dir);
    assert_eq!(
        layering.from_root,
        ["c: crate::Error", "c: crate::Task"],
        "{:?}",
        layering.uses
    );
    assert_eq!(cycles(&layering.uses), ["a -> b -> a", "b -> a -> b"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
