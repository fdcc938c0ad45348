//! The image the local node runs (`scripts/image`, assembled here without Docker) against the
//! `Dockerfile`, the recipe for real registries: the same binaries at the same paths, the same
//! entrypoint, command, user, environment, ports and labels, the shipped saga, every library the
//! binaries link, and no shell — so the published image is not a different thing from the
//! tested one. Reads `target/image/*.tar` (`scripts/test` builds them before the tests).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Dockerfile's last stage as (instruction, rest of the line), continuation lines joined and
/// comments dropped.
fn runtime_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut stage = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        if word == "FROM" {
            stage.clear();
        }
        stage.push((word.to_owned(), rest.trim().to_owned()));
    }
    stage
}

/// An image archive unpacked: its config and its one layer's files.
struct Image {
    config: Value,
    layer: PathBuf,
    /// Every path in the layer with its mode and owner, as tar lists them.
    entries: BTreeMap<String, (String, String)>,
}

fn unpack(archive: &str) -> Image {
    let tar = root().join("target/image").join(archive);
    assert!(
        tar.exists(),
        "{} is missing: run scripts/image (and scripts/image k6); scripts/test does",
        tar.display()
    );
    let dir = std::env::temp_dir().join(format!("image-test-{archive}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("layer")).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&dir));
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json = |path: PathBuf| -> Value {
        serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let index = json(dir.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer expected");
    let layer_tar = blob(layers[0]["digest"].as_str().unwrap());
    let listing = run(Command::new("tar")
        .args(["--numeric-owner", "-tzvf"])
        .arg(&layer_tar));
    let entries = listing
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let path = format!("/{}", words.get(5)?.trim_end_matches('/'));
            Some((path, (words[0].to_owned(), words[1].to_owned())))
        })
        .collect();
    let layer = dir.join("layer");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&layer_tar)
        .arg("-C")
        .arg(&layer));
    Image {
        config,
        layer,
        entries,
    }
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The libraries (and the loader) a binary of this machine needs at run time.
fn needed(binary: &Path) -> BTreeSet<String> {
    run(Command::new("ldd").arg(binary))
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            match l.split_once(" => ") {
                Some((_, path)) => path.split_whitespace().next().map(str::to_owned),
                None => l
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/'))
                    .map(str::to_owned),
            }
        })
        .collect()
}

fn assert_no_shell(image: &Image) {
    let shells: Vec<&String> = image
        .entries
        .keys()
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or("");
            matches!(
                name,
                "sh" | "bash" | "dash" | "ash" | "busybox" | "apt" | "dpkg"
            )
        })
        .collect();
    assert!(
        shells.is_empty(),
        "the image has a shell or package manager: {shells:?}"
    );
}

#[test]
fn the_local_image_is_the_dockerfiles_runtime_stage_with_the_release_binaries_and_no_shell() {
    let image = unpack("sagashop.tar");
    let config = &image.config["config"];
    let stage = runtime_stage();
    assert!(
        stage[0].1.contains("distroless/cc-debian12:nonroot"),
        "the runtime stage's base changed: {:?}; scripts/image emulates distroless/cc",
        stage[0]
    );
    let mut binaries = Vec::new();
    for (word, rest) in &stage {
        match word.as_str() {
            "USER" => assert_eq!(config["User"], *rest, "USER"),
            "ENTRYPOINT" => assert_eq!(
                config["Entrypoint"],
                serde_json::from_str::<Value>(rest).unwrap(),
                "ENTRYPOINT"
            ),
            "CMD" => assert_eq!(
                config["Cmd"],
                serde_json::from_str::<Value>(rest).unwrap(),
                "CMD"
            ),
            "ENV" => {
                let env: BTreeSet<&str> = config["Env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                for pair in rest.split_whitespace() {
                    assert!(
                        env.contains(pair),
                        "ENV {pair} is not in the image: {env:?}"
                    );
                }
            }
            "EXPOSE" => {
                for port in rest.split_whitespace() {
                    assert!(
                        config["ExposedPorts"].get(format!("{port}/tcp")).is_some(),
                        "EXPOSE {port}"
                    );
                }
            }
            "LABEL" => {
                for key in [
                    "org.opencontainers.image.title",
                    "org.opencontainers.image.source",
                ] {
                    assert!(rest.contains(key), "the Dockerfile lost the label {key}");
                    let value = rest
                        .split(&format!("{key}=\""))
                        .nth(1)
                        .and_then(|v| v.split('"').next())
                        .unwrap();
                    assert_eq!(config["Labels"][key], value, "LABEL {key}");
                }
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let (dest, sources) = words.split_last().unwrap();
                if sources[0] == "--from=builder" {
                    for source in &sources[1..] {
                        let name = source.trim_start_matches("/out/");
                        binaries.push((format!("{}/{name}", dest.trim_end_matches('/')), name));
                    }
                } else {
                    let inside = std::fs::read(image.layer.join(dest.trim_start_matches('/')))
                        .unwrap_or_else(|e| panic!("COPY {rest}: {dest} is not in the image: {e}"));
                    assert_eq!(
                        inside,
                        std::fs::read(root().join(sources[0])).unwrap(),
                        "COPY {rest}"
                    );
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        binaries.len(),
        2,
        "the Dockerfile ships sagashop and sagashop-operator"
    );
    let release = root().join("target/release");
    for (path, name) in &binaries {
        let (mode, _) = &image.entries[path];
        assert!(
            mode.ends_with("xr-x"),
            "{path} is not executable by everyone: {mode}"
        );
        assert_eq!(
            std::fs::read(image.layer.join(path.trim_start_matches('/'))).unwrap(),
            std::fs::read(release.join(name)).unwrap(),
            "{path} is not the release build of {name}"
        );
        for library in needed(&release.join(name)) {
            assert!(
                image.entries.contains_key(&library),
                "{name} needs {library}, which the image lacks"
            );
        }
    }
    // What distroless/cc:nonroot brings: the user, CA certificates, a writable /tmp.
    let passwd = std::fs::read_to_string(image.layer.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    assert!(
        image
            .entries
            .contains_key("/etc/ssl/certs/ca-certificates.crt")
    );
    assert_eq!(image.entries["/tmp"].0, "drwxrwxrwt");
    // Nothing else is owned by the runtime user: the root filesystem can be mounted read-only.
    let owned: Vec<_> = image
        .entries
        .iter()
        .filter(|(p, (_, owner))| owner.starts_with("65532") && *p != "/home/nonroot")
        .collect();
    assert!(owned.is_empty(), "{owned:?}");
    assert_no_shell(&image);
}

#[test]
fn the_local_k6_image_runs_k6_as_the_user_the_chart_expects() {
    let image = unpack("k6.tar");
    let config = &image.config["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["k6"]));
    // charts/sagashop/templates/loadtest.yaml runs the CronJob's pod as 12345, as grafana/k6 does.
    let chart =
        std::fs::read_to_string(root().join("charts/sagashop/templates/loadtest.yaml")).unwrap();
    assert!(chart.contains("runAsUser: 12345"));
    assert_eq!(config["User"], "12345:12345");
    let (mode, _) = &image.entries["/usr/bin/k6"];
    assert!(mode.ends_with("xr-x"), "{mode}");
    let ldd = Command::new("ldd")
        .arg(image.layer.join("usr/bin/k6"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ldd.stderr).contains("not a dynamic executable")
            || String::from_utf8_lossy(&ldd.stdout).contains("statically linked"),
        "k6 must be static: the image has no libraries"
    );
    assert_no_shell(&image);
}
