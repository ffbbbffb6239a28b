//! The workspace's architecture rules, checked from `cargo metadata` and the sources:
//!
//! - `flotilla-core` depends on no tokio, rocksdb, tonic or prost, directly or transitively
//!   (normal and build dependencies, as resolved): it does no I/O, and domain types do not
//!   derive prost (they convert at the edge, in `flotilla-proto`);
//! - only `flotilla-store` depends on `rocksdb` directly, and no other workspace crate
//!   reaches it except through `flotilla-store`;
//! - only the programs that start clusters (`flotilla-cli` for `flotilla bench` and its black-box
//!   tests, `flotilla-jepsen`) depend on the dev-only `flotilla-testkit`;
//! - the modules of `flotilla-server` form no cycle (edges: `crate::NAME` references).
//!
//! Here rather than in a crate of its own because `flotilla-core` builds in seconds: the
//! rules are checked by the cheapest test command, without building RocksDB.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Crates `flotilla-core` must not reach.
const FORBIDDEN_IN_CORE: &[&str] = &[
    "tokio",
    "rocksdb",
    "librocksdb-sys",
    "tonic",
    "prost",
    "prost-derive",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The dependency graph as cargo resolved it.
struct Graph {
    /// Package id -> name.
    names: BTreeMap<String, String>,
    /// Package id -> (dependency id, whether the edge is a normal or build dependency).
    deps: BTreeMap<String, Vec<(String, bool)>>,
    /// Ids of the workspace members.
    members: Vec<String>,
}

impl Graph {
    fn load() -> Graph {
        // Resolved for the host platform: offline, cargo has only the host's packages.
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--offline"])
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .args(["--filter-platform", &host_triple()])
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
        let names = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (str_of(&p["id"]), str_of(&p["name"])))
            .collect();
        let members = meta["workspace_members"]
            .as_array()
            .unwrap()
            .iter()
            .map(str_of)
            .collect();
        let deps = meta["resolve"]["nodes"]
            .as_array()
            .expect("metadata has a resolve graph")
            .iter()
            .map(|n| {
                let edges = n["deps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| {
                        // A dependency kind is null (normal), "build" or "dev".
                        let linked = d["dep_kinds"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|k| k["kind"].as_str() != Some("dev"));
                        (str_of(&d["pkg"]), linked)
                    })
                    .collect();
                (str_of(&n["id"]), edges)
            })
            .collect();
        Graph {
            names,
            deps,
            members,
        }
    }

    fn id(&self, name: &str) -> String {
        let ids: Vec<_> = self
            .members
            .iter()
            .filter(|id| self.names[*id] == name)
            .collect();
        assert_eq!(ids.len(), 1, "workspace member {name}");
        ids[0].clone()
    }

    fn name(&self, id: &str) -> &str {
        &self.names[id]
    }

    /// Every package `from` reaches through normal and build dependencies, not passing
    /// through a package named in `through_not`, with the path that reaches it.
    fn reachable(&self, from: &str, through_not: &[&str]) -> BTreeMap<String, Vec<String>> {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut work = vec![(from.to_string(), vec![self.name(from).to_string()])];
        while let Some((id, path)) = work.pop() {
            for (dep, linked) in self.deps.get(&id).into_iter().flatten() {
                if !linked || seen.contains_key(dep) {
                    continue;
                }
                let mut p = path.clone();
                p.push(self.name(dep).to_string());
                seen.insert(dep.clone(), p.clone());
                if !through_not.contains(&self.name(dep)) {
                    work.push((dep.clone(), p));
                }
            }
        }
        seen
    }

    /// Direct dependencies of `id` of any kind (dev included).
    fn direct(&self, id: &str) -> impl Iterator<Item = &str> + '_ {
        self.deps
            .get(id)
            .into_iter()
            .flatten()
            .map(|(d, _)| self.name(d))
    }
}

/// The host's target triple, from the rustc beside the cargo running the tests.
fn host_triple() -> String {
    let beside_cargo = Path::new(env!("CARGO")).with_file_name("rustc");
    let rustc = if beside_cargo.exists() {
        beside_cargo
    } else {
        PathBuf::from("rustc")
    };
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

fn str_of(v: &Value) -> String {
    v.as_str().expect("a string").to_string()
}

#[test]
fn core_depends_on_no_runtime_storage_or_rpc_crate() {
    let g = Graph::load();
    let core = g.id("flotilla-core");
    let reached = g.reachable(&core, &[]);
    let bad: Vec<String> = reached
        .iter()
        .filter(|(id, _)| FORBIDDEN_IN_CORE.contains(&g.name(id)))
        .map(|(_, path)| path.join(" -> "))
        .collect();
    eprintln!(
        "flotilla-core reaches {} packages: {:?}",
        reached.len(),
        reached.keys().map(|id| g.name(id)).collect::<BTreeSet<_>>()
    );
    assert!(
        bad.is_empty(),
        "flotilla-core must do no I/O and derive no prost, but reaches: {bad:#?}"
    );
}

#[test]
fn only_store_depends_on_rocksdb() {
    let g = Graph::load();
    for member in &g.members {
        let name = g.name(member);
        if name == "flotilla-store" {
            assert!(
                g.direct(member).any(|d| d == "rocksdb"),
                "flotilla-store is where rocksdb lives"
            );
            continue;
        }
        assert!(
            !g.direct(member)
                .any(|d| d == "rocksdb" || d == "librocksdb-sys"),
            "{name} depends on rocksdb directly; only flotilla-store may"
        );
        let around_store = g.reachable(member, &["flotilla-store"]);
        let bad: Vec<String> = around_store
            .iter()
            .filter(|(id, _)| matches!(g.name(id), "rocksdb" | "librocksdb-sys"))
            .map(|(_, path)| path.join(" -> "))
            .collect();
        assert!(
            bad.is_empty(),
            "{name} reaches rocksdb other than through flotilla-store: {bad:#?}"
        );
    }
}

/// Programs that start clusters of processes: the only crates that may use the test kit.
const KIT_USERS: &[&str] = &["flotilla-cli", "flotilla-jepsen"];

#[test]
fn only_the_programs_that_start_clusters_use_the_test_kit() {
    let g = Graph::load();
    let mut users = Vec::new();
    for member in &g.members {
        let name = g.name(member);
        let reached = g.reachable(member, &[]);
        if reached.keys().any(|id| g.name(id) == "flotilla-testkit") {
            users.push(name.to_string());
            assert!(
                KIT_USERS.contains(&name),
                "{name} depends on flotilla-testkit: {:?}; only {KIT_USERS:?} may",
                reached
                    .iter()
                    .find(|(id, _)| g.name(id) == "flotilla-testkit")
                    .map(|(_, path)| path.join(" -> "))
            );
        }
    }
    users.sort();
    assert_eq!(users, KIT_USERS, "the kit's users");
}

/// The modules of a crate's `src/` (a file `NAME.rs` or a directory `NAME/`; `lib.rs` and
/// `main.rs` are the root, not a module) and, for each, the modules it names as `crate::NAME`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap();
                let top = rel
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy();
                let module = top.trim_end_matches(".rs").to_string();
                if module != "lib" && module != "main" {
                    files.entry(module).or_default().push(path);
                }
            }
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(module, paths)| {
            let mut uses = BTreeSet::new();
            for path in paths {
                let text = std::fs::read_to_string(path).unwrap();
                for name in crate_references(&text) {
                    if modules.contains(&name) && &name != module {
                        uses.insert(name);
                    }
                }
            }
            (module.clone(), uses)
        })
        .collect()
}

/// The first path segment after every `crate::` outside comments, including each item of a
/// `crate::{a, b::c}` group.
fn crate_references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    out.push(ident(item.trim()));
                }
            } else {
                out.push(ident(rest));
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Depth-first search; a module met again while still on the stack closes a cycle.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn server_modules_form_no_cycle() {
    let graph = module_graph(&workspace_root().join("crates/flotilla-server/src"));
    for (m, uses) in &graph {
        eprintln!("{m} -> {uses:?}");
    }
    // The graph must be the real one, not an empty parse.
    assert!(
        graph.len() >= 10 && graph["api"].contains("proposer"),
        "{graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "flotilla-server's modules import each other in a cycle: {}; move what they share \
             into a module below both (as `leadership` holds the leader checks)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_references(
            "use crate::{api::Api, leadership};\nlet x = crate::dispatch::X; // crate::no"
        ),
        vec!["api", "leadership", "dispatch"]
    );
}
