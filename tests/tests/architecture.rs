//! Architecture invariants that the compiler cannot keep by itself, checked
//! on the sources and the lock file (docs/ARCHITECTURE.md names each one):
//!
//! - The storage engine (`postbox-engine`) has no network crate anywhere in
//!   its dependency tree: no tonic, prost, `postbox-proto`, hyper, h2 or tower.
//! - The gRPC edge (`broker/src/server`) knows the log only through the
//!   broker's `Backend` trait: it never names `postbox_engine`.
//! - No two modules of a library crate import each other (a module and its
//!   own parent or child aside: a parent declares and re-exports its
//!   children).
//! - The engine's `storage` never depends on `meta`, `dedup`, `topic` or
//!   `engine`, which are built on top of it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Crates that put a network protocol in a crate's tree.
const NETWORK_CRATES: &[&str] = &["tonic", "prost", "postbox-proto", "hyper", "h2", "tower"];

/// The library crates whose modules are checked, by source directory.
const LIBRARY_SOURCES: &[&str] = &[
    "broker/engine/src",
    "broker/src",
    "client/src",
    "outbox-relay/src",
    "tests/src",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Each package of Cargo.lock with its dependencies' names.
fn lock_file_packages() -> BTreeMap<String, Vec<String>> {
    let lock = fs::read_to_string(workspace().join("Cargo.lock")).expect("reading Cargo.lock");
    let mut packages = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|n| n.strip_suffix('"'))
            .expect("a package has a name")
            .to_string();
        let mut deps = Vec::new();
        if let Some(start) = block.find("dependencies = [") {
            let list = &block[start..];
            let list = &list[..list.find(']').expect("a closed dependency list")];
            for entry in list.split('"').skip(1).step_by(2) {
                // "name" or "name version" when several versions are locked.
                deps.push(entry.split(' ').next().unwrap_or(entry).to_string());
            }
        }
        packages.insert(name, deps);
    }
    packages
}

#[test]
fn the_engine_has_no_network_crate_in_its_tree() {
    let packages = lock_file_packages();
    assert!(
        packages.contains_key("postbox-engine"),
        "postbox-engine is in Cargo.lock"
    );
    let mut seen = BTreeSet::new();
    let mut todo = vec![(
        "postbox-engine".to_string(),
        vec!["postbox-engine".to_string()],
    )];
    while let Some((name, path)) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        assert!(
            !NETWORK_CRATES.contains(&name.as_str()),
            "postbox-engine depends on {name}: {}",
            path.join(" -> ")
        );
        for dep in packages.get(&name).into_iter().flatten() {
            let mut next = path.clone();
            next.push(dep.clone());
            todo.push((dep.clone(), next));
        }
    }
    // The walk saw the engine's real dependencies, so it could have failed.
    assert!(
        seen.contains("sled") && seen.contains("crc32fast"),
        "{seen:?}"
    );
}

#[test]
fn the_grpc_edge_knows_the_log_only_through_the_backend_trait() {
    let server = workspace().join("broker/src/server");
    let mut files = Vec::new();
    rust_files(&server, &mut files);
    assert!(
        files.len() >= 5,
        "the server's modules are found: {files:?}"
    );
    for file in files {
        let text = code_of(&file);
        assert!(
            !text.contains("postbox_engine"),
            "{} names postbox_engine; go through crate::backend",
            file.display()
        );
    }
}

#[test]
fn no_two_modules_import_each_other() {
    let mut checked = 0;
    let mut circles = Vec::new();
    for source in LIBRARY_SOURCES {
        let graph = import_graph(&workspace().join(source));
        checked += graph.len();
        for (from, targets) in &graph {
            for to in targets {
                let back = graph.get(to).is_some_and(|t| t.contains(from));
                if back && from < to {
                    circles.push(format!("{source}: `{from}` <-> `{to}`"));
                }
            }
        }
    }
    assert!(checked > 40, "modules were found ({checked})");
    assert!(
        circles.is_empty(),
        "modules that import each other:\n{}",
        circles.join("\n")
    );
}

#[test]
fn storage_depends_on_nothing_built_on_top_of_it() {
    let graph = import_graph(&workspace().join("broker/engine/src"));
    let above = ["meta", "dedup", "topic", "engine", "testing"];
    let storage: Vec<_> = graph.keys().filter(|m| m.starts_with("storage")).collect();
    assert!(
        storage.len() >= 6,
        "the storage modules are found: {storage:?}"
    );
    for module in storage {
        for target in &graph[module] {
            let top = target.split("::").next().unwrap_or(target);
            assert!(
                !above.contains(&top),
                "`{module}` imports `{target}`, which is built on storage"
            );
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file without its comments and without a trailing inline test
/// module (whose `super` is the file's own module).
fn code_of(file: &Path) -> String {
    let text = fs::read_to_string(file).expect("reading a source file");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path of a file under `src` (`a/mod.rs` and `a.rs` are `a`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    if relative.starts_with("bin") {
        return None;
    }
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// Module -> the modules it names through `crate::` or `super::` paths,
/// leaving out its ancestors and descendants.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter_map(|f| Some((module_of(src, f)?, f.clone())))
        .collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let mut targets = BTreeSet::new();
        for path in referenced_paths(&code_of(file), module) {
            let Some(target) = longest_module(&modules, &path) else {
                continue;
            };
            let related = target.is_empty()
                || *module == target
                || module.starts_with(&format!("{target}::"))
                || target.starts_with(&format!("{module}::"));
            if !related {
                targets.insert(target);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The longest prefix of `path` that is a module.
fn longest_module(modules: &BTreeMap<String, PathBuf>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

/// Every absolute path (as segments from the crate root) the code names
/// with `crate::` or `super::`, braces expanded.
fn referenced_paths(code: &str, module: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let starts_path = at == 0 || !is_ident(bytes[at - 1]);
        if starts_path && (rest.starts_with("crate::") || rest.starts_with("super::")) {
            let (base, consumed) = base_of(rest, module);
            at += consumed;
            expand(code, &mut at, base, &mut out);
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The segments `crate::` or a run of `super::` stands for, and the bytes
/// they take.
fn base_of(rest: &str, module: &str) -> (Vec<String>, usize) {
    if rest.starts_with("crate::") {
        return (Vec::new(), "crate::".len());
    }
    let mut base: Vec<String> = module
        .split("::")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut consumed = 0;
    while rest[consumed..].starts_with("super::") {
        base.pop();
        consumed += "super::".len();
    }
    (base, consumed)
}

/// Reads `a::b::{c, d::e}` at `at`, appending each full path to `out`.
fn expand(code: &str, at: &mut usize, mut base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let bytes = code.as_bytes();
    loop {
        while *at < code.len() && bytes[*at].is_ascii_whitespace() {
            *at += 1;
        }
        if *at < code.len() && bytes[*at] == b'{' {
            *at += 1;
            loop {
                expand(code, at, base.clone(), out);
                while *at < code.len() && bytes[*at].is_ascii_whitespace() {
                    *at += 1;
                }
                match bytes.get(*at) {
                    Some(b',') => *at += 1,
                    Some(b'}') => {
                        *at += 1;
                        return;
                    }
                    _ => return,
                }
                while *at < code.len() && bytes[*at].is_ascii_whitespace() {
                    *at += 1;
                }
                if bytes.get(*at) == Some(&b'}') {
                    *at += 1;
                    return;
                }
            }
        }
        let start = *at;
        while *at < code.len() && is_ident(bytes[*at]) {
            *at += 1;
        }
        if *at == start {
            if !base.is_empty() {
                out.push(base);
            }
            return;
        }
        base.push(code[start..*at].to_string());
        if code[*at..].starts_with("::") {
            *at += 2;
        } else {
            out.push(base);
            return;
        }
    }
}
