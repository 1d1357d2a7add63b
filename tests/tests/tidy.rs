//! Checks on the source tree itself, not on running code: the layering of the engine's and the
//! node's modules, and ARCHITECTURE.md's code map against the files that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lies in the workspace").to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of `text` without its comments (line comments, doc comments included), so a
/// module named in prose does not count as a dependency.
fn code_only(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The top-level modules of the crate whose sources are in `src` (files and directories right
/// under it, the crate root excluded), each with the names of the other top-level modules its
/// code refers to through `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let top = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs").to_string();
        (first != "main" && first != "lib").then_some(first)
    };
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for file in &files {
        let Some(from) = top(file) else { continue };
        let code = code_only(&std::fs::read_to_string(file).expect("a readable source file"));
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            // `crate::name` or `crate::{a, b::c}`.
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name != from && modules.contains(&name) {
                    graph.get_mut(&from).expect("every module has an entry").insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in &graph[node] {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let mut acyclic = graph.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn engine_and_node_modules_depend_on_each_other_in_one_direction_only() {
    for krate in ["engine", "node"] {
        let graph = module_graph(&workspace().join(krate).join("src"));
        assert!(graph.len() > 3, "{krate}: too few modules found ({graph:?}): is the tree where this test looks?");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: the modules {} depend on each other in a cycle", cycle.join(" → "));
        }
    }
}

/// The code map's entry for `krate`: its bullet in ARCHITECTURE.md's "Code map" section,
/// which begins with the crate's directory in bold (`- **`engine/`**`).
fn code_map_entry<'a>(map: &'a str, krate: &str) -> &'a str {
    let section = map.split("\n## Code map").nth(1).expect("ARCHITECTURE.md has a Code map section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split("\n- **`")
        .find(|bullet| bullet.starts_with(&format!("{krate}/`**")))
        .unwrap_or_else(|| panic!("the code map has no entry for {krate}/"))
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let root = workspace();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut missing = Vec::new();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("the workspace's Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .expect("a one-line members list in the workspace's Cargo.toml");
    let crates: Vec<&str> = members.trim_end_matches(']').split(',').map(|m| m.trim().trim_matches('"')).collect();
    assert!(crates.len() >= 8, "too few workspace members read from Cargo.toml: {crates:?}");
    for krate in crates {
        let entry = code_map_entry(&map, krate);
        let src = root.join(krate).join("src");
        for file in rust_files(&src) {
            let rel = file.strip_prefix(&src).expect("under src").to_string_lossy().into_owned();
            if !entry.contains(&format!("`{rel}`")) {
                missing.push(format!("{krate}/src/{rel}"));
            }
        }
    }
    assert!(missing.is_empty(), "ARCHITECTURE.md's code map does not name: {}", missing.join(", "));
}
