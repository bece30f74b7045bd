//! The workspace's intended dependency edges, checked over `cargo metadata`
//! (docs/architecture.md): the protocol crate stays deterministic and free
//! of I/O stacks, the two daemons never depend on each other (not even for
//! tests), the member daemon does not use burn directly (its models sit
//! behind `tessera_learn::LocalModel`), secure aggregation and privacy never
//! reach the transport, the binaries' shared `tessera-cli` reaches no other
//! Tessera crate, and the core never reaches burn. An edge that breaks one of these fails here.
//! The daemons' test-only features are turned on only by this test crate, as
//! dev-dependencies, so no release build carries them.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// The resolved graph: package name to the names it depends on, split into
/// what it links (normal and build dependencies) and its dev-dependencies.
struct Graph {
    links: BTreeMap<String, BTreeSet<String>>,
    dev: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        // The graph as built on this host: other platforms' packages are
        // neither downloaded nor relevant to what links here.
        let version = Command::new(&cargo).arg("-vV").output().expect("run cargo -vV");
        let version = String::from_utf8_lossy(&version.stdout);
        let host = version.lines().find_map(|l| l.strip_prefix("host: ")).expect("cargo -vV names the host");
        let out = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", host])
            .args(["--manifest-path", root])
            .output()
            .expect("run cargo metadata");
        assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
        let names: BTreeMap<&str, &str> = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let mut links = BTreeMap::<String, BTreeSet<String>>::new();
        let mut dev = BTreeMap::<String, BTreeSet<String>>::new();
        for node in meta["resolve"]["nodes"].as_array().unwrap() {
            let from = names[node["id"].as_str().unwrap()].to_string();
            for dep in node["deps"].as_array().unwrap() {
                let to = names[dep["pkg"].as_str().unwrap()].to_string();
                for kind in dep["dep_kinds"].as_array().unwrap() {
                    let target = if kind["kind"].as_str() == Some("dev") { &mut dev } else { &mut links };
                    target.entry(from.clone()).or_default().insert(to.clone());
                }
            }
        }
        Graph { links, dev }
    }

    /// Every package `from` links, directly or through others.
    fn reaches(&self, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(p) = todo.pop() {
            for d in self.links.get(&p).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    }

    /// The forbidden packages among those `from` reaches, each with the path that reaches it.
    fn forbidden(&self, from: &str, banned: &[&str]) -> Vec<String> {
        let reached = self.reaches(from);
        banned.iter().filter(|b| reached.contains(**b)).map(|b| format!("{from} -> ... -> {b}")).collect()
    }
}

#[test]
fn the_workspace_keeps_its_intended_dependency_edges() {
    let g = Graph::load();
    assert!(g.links.contains_key("tessera-protocol"), "the protocol crate is in the workspace");
    let mut broken = Vec::new();
    // Deterministic, no I/O: no async runtime, no training, no database, no HTTP.
    broken
        .extend(g.forbidden("tessera-protocol", &["tokio", "burn", "rusqlite", "hyper", "quinn", "tessera-transport"]));
    // Secure aggregation and privacy never reach the network.
    for c in ["tessera-secagg", "tessera-privacy"] {
        broken.extend(g.forbidden(c, &["tessera-transport", "quinn", "tokio"]));
    }
    // The binaries' shared conventions (logging, error reports) sit below
    // every crate that may use them: no Tessera crate, no runtime.
    let reached = g.reaches("tessera-cli");
    broken.extend(
        reached.iter().filter(|d| d.starts_with("tessera-") || *d == "tokio").map(|d| format!("tessera-cli -> {d}")),
    );
    // The core stays at the bottom.
    broken.extend(g.forbidden("tessera-core", &["burn", "tokio", "tessera-secagg", "tessera-privacy"]));
    // The member daemon reaches models only through tessera-learn's contract.
    if g.links.get("tessera-client").is_some_and(|d| d.contains("burn")) {
        broken.push("tessera-client -> burn (directly)".into());
    }
    // The two daemons never depend on each other, not even for tests.
    for (a, b) in [("tessera-client", "tessera-aggregator"), ("tessera-aggregator", "tessera-client")] {
        if g.reaches(a).contains(b) || g.dev.get(a).is_some_and(|d| d.contains(b)) {
            broken.push(format!("{a} -> {b}"));
        }
    }
    assert!(broken.is_empty(), "forbidden dependency edges:\n{}", broken.join("\n"));
}

/// Test-only features of the daemons, each a switch that must never reach a
/// release build: the aggregator's fault injection and the member's seeded
/// randomness (every key derived from the member's name).
const TEST_ONLY_FEATURES: [(&str, &str); 2] =
    [("tessera-aggregator", "fault-injection"), ("tessera-client", "test-seeded-randomness")];

/// A release build of either daemon refuses its test-only switches because
/// only this test crate turns those features on, and only as a
/// dev-dependency: no normal dependency, no default feature and no feature of
/// another package enables them. With an edge that broke this, `cargo build
/// --release` would ship a daemon that accepts `[testing] seeded_randomness`.
#[test]
fn test_only_features_are_enabled_only_by_the_tests_crate_as_dev_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--no-deps"])
        .args(["--manifest-path", root])
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut broken = Vec::new();
    let mut dev_edges = 0;
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let features: Vec<&str> = dep["features"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            for (crate_name, feature) in TEST_ONLY_FEATURES {
                if dep_name != crate_name || !features.contains(&feature) {
                    continue;
                }
                if name == "tessera-e2e" && dep["kind"].as_str() == Some("dev") {
                    dev_edges += 1;
                } else {
                    let kind = dep["kind"].as_str().unwrap_or("normal");
                    broken.push(format!("{name} enables {crate_name}/{feature} as a {kind} dependency"));
                }
            }
        }
        // A feature table entry that forwards to one (`x = ["tessera-client/…"]`),
        // or a crate's own default that includes it.
        for (feature_name, enables) in package["features"].as_object().unwrap() {
            for e in enables.as_array().unwrap().iter().filter_map(Value::as_str) {
                for (crate_name, feature) in TEST_ONLY_FEATURES {
                    let forwards =
                        e.strip_prefix(crate_name).and_then(|r| r.strip_prefix('/').or(r.strip_prefix("?/")));
                    if forwards == Some(feature) || (name == crate_name && feature_name == "default" && e == feature) {
                        broken.push(format!("{name}'s feature `{feature_name}` enables {crate_name}/{feature}"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "test-only features reachable outside the test crate:\n{}", broken.join("\n"));
    assert_eq!(dev_edges, TEST_ONLY_FEATURES.len(), "tessera-e2e turns on each test-only feature as a dev-dependency");
}
