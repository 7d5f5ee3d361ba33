//! The module graph runs one way. `src/lib.rs` declares the top-level modules in dependency
//! order, and each may use only modules declared above it; inside a module folder, the files
//! must not use each other in a circle either. A reader (and this test) finds the layers by
//! reading `src/lib.rs` from the top.
//!
//! Run alone with `cargo test --test layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The top-level modules in the order `src/lib.rs` declares them.
fn declared_modules() -> Vec<String> {
    let lib = read(&Path::new(SRC).join("lib.rs"));
    code_lines(&lib)
        .filter_map(|line| {
            let line = line.strip_prefix("pub ").unwrap_or(line);
            line.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_owned)
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines of code, trimmed, without comment lines (docs may name any module).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("//"))
}

/// Every `.rs` file of a top-level module: `src/<name>.rs` and everything in `src/<name>/`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = Path::new(SRC).join(format!("{module}.rs"));
    if single.exists() {
        files.push(single);
    }
    collect_rs(&Path::new(SRC).join(module), &mut files);
    files
}

fn collect_rs(folder: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The names that follow `prefix` in the code of `text`, including each first name of a
/// `prefix{a, b::c}` group (`crate::` gives the top-level modules used).
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let code: String = code_lines(text).collect::<Vec<_>>().join(" ");
    let mut names = BTreeSet::new();
    {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    let group = group.split('}').next().unwrap_or_default();
                    names.extend(group.split(',').map(first_name).filter(|n| !n.is_empty()));
                }
                None => {
                    let name = first_name(rest);
                    if !name.is_empty() {
                        names.insert(name);
                    }
                }
            }
        }
    }
    names
}

/// The identifier at the start of `path` (`a` of ` a::b`).
fn first_name(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn each_top_level_module_uses_only_modules_declared_above_it() {
    let order = declared_modules();
    assert!(order.len() > 10, "modules read from src/lib.rs: {order:?}");
    let mut wrong = Vec::new();
    for (position, module) in order.iter().enumerate() {
        for file in files_of(module) {
            for used in names_after(&read(&file), "crate::") {
                let Some(used_at) = order.iter().position(|m| *m == used) else {
                    continue; // an item of the crate root, not a module
                };
                if used_at > position {
                    wrong.push(format!(
                        "{} uses `{used}`, declared below `{module}`",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

/// Inside a module folder, which sibling file uses which (`super::x`, `crate::<module>::x`).
fn sibling_graph(module: &str) -> BTreeMap<String, BTreeSet<String>> {
    let folder = Path::new(SRC).join(module);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return BTreeMap::new();
    };
    let children: BTreeSet<String> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let stem = path.file_stem()?.to_str()?.to_owned();
            (path.extension().is_some_and(|x| x == "rs") && stem != "mod" && stem != "tests")
                .then_some(stem)
        })
        .collect();
    children
        .iter()
        .map(|child| {
            let text = read(&folder.join(format!("{child}.rs")));
            let mut used = names_after(&text, "super::");
            used.extend(names_after(&text, &format!("crate::{module}::")));
            used.retain(|u| u != child && children.contains(u));
            (child.clone(), used)
        })
        .collect()
}

/// A cycle in `graph`, if any (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn files_inside_a_module_do_not_use_each_other_in_a_circle() {
    let mut cycles = Vec::new();
    for module in declared_modules() {
        if let Some(cycle) = find_cycle(&sibling_graph(&module)) {
            cycles.push(format!("{module}: {}", cycle.join(" → ")));
        }
    }
    assert!(cycles.is_empty(), "cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("d".to_owned(), BTreeSet::new()),
    ]);
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let acyclic = BTreeMap::from([("a".to_owned(), BTreeSet::from(["b".to_owned()]))]);
    assert_eq!(find_cycle(&acyclic), None);
}
