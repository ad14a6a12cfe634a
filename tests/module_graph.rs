//! The daemon's modules form layers with no import cycles: primitives (clock, event, tls, ...)
//! → the stages, each owning its configuration (`source` → `device` → `outbox` → `deliver`) →
//! configuration loading (`config`, which aggregates the stages' sections) → wiring, health and
//! metrics (the crate root, `telemetry`, `demo`) → `cli`.
//!
//! Built from the `crate::` paths in the code of `src/` (comments, strings and `#[cfg(test)]`
//! modules left out), between top-level modules; `super::` stays inside one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first; a module may use its own layer's and lower ones.
const LAYERS: &[&[&str]] = &[
    &[
        "address",
        "atomic_file",
        "c_math",
        "clock",
        "event",
        "fault_log",
        "heap_budget",
        "jq",
        "memory",
        "metrics",
        "schema",
        "secret",
        "sign",
        "size",
        "tls",
    ],
    &["source"],
    &["device"],
    &["upstream"],
    &["outbox"],
    &["deliver"],
    &["config"],
    &["crate", "daemon", "telemetry", "control", "demo"],
    &["cli"],
];

/// `text` without comments, string and char literals (their contents blanked).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push_str("\"\"");
                i += 1;
            }
            b'\'' => {
                // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| i + 2 + p)
                } else if b.get(i + 2) == Some(&b'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match end {
                    Some(e) => {
                        out.push_str("' '");
                        i = e + 1;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// `code` without its `#[cfg(test)]` items (a test module may use anything).
fn without_tests(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let Some(open) = item.find(['{', ';']) else {
            rest = "";
            break;
        };
        if item.as_bytes()[open] == b';' {
            rest = &item[open + 1..];
            continue;
        }
        let mut depth = 0;
        let mut end = item.len();
        for (k, c) in item[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The first segment of every `crate::` path in `code`, groups (`crate::{a::b, c}`) included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        if at > 0 {
            let before = code.as_bytes()[at - 1];
            if before.is_ascii_alphanumeric() || before == b'_' || before == b'$' {
                continue;
            }
        }
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..k].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..k].trim()));
                        start = k + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

/// The files of modules declared `#[cfg(test)] mod name;` (a test module may use anything).
fn test_only_files(files: &[std::path::PathBuf]) -> BTreeSet<std::path::PathBuf> {
    let mut test_only = BTreeSet::new();
    for file in files {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        let mut rest = code.as_str();
        while let Some(at) = rest.find("#[cfg(test)]") {
            rest = rest[at + "#[cfg(test)]".len()..].trim_start();
            let Some(decl) = rest.strip_prefix("mod ") else {
                continue;
            };
            let name: String = decl
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if decl[name.len()..].trim_start().starts_with(';') {
                test_only.insert(dir.join(format!("{name}.rs")));
                test_only.insert(dir.join(&name).join("mod.rs"));
            }
        }
    }
    test_only
}

/// Top-level module → the top-level modules its code uses (`crate` for the root's items).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let top_level: BTreeSet<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(src).unwrap();
            let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
            Some(first.trim_end_matches(".rs").to_owned())
        })
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let test_only = test_only_files(&files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files.iter().filter(|f| !test_only.contains(*f)) {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = match first.trim_end_matches(".rs") {
            "lib" => "crate".to_owned(),
            "main" => continue,
            m => m.to_owned(),
        };
        let code = without_tests(&code_only(&std::fs::read_to_string(file).unwrap()));
        let used = edges.entry(module.clone()).or_default();
        for first in crate_paths(&code) {
            let target = if top_level.contains(&first) {
                first
            } else {
                "crate".to_owned()
            };
            if target != module {
                used.insert(target);
            }
        }
    }
    edges
}

/// A cycle in `edges`, if there is one, as the modules along it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = path.iter().position(|n| n == next).unwrap();
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, edges, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn the_modules_form_layers_without_import_cycles() {
    let edges = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let shown: Vec<String> = edges
        .iter()
        .map(|(m, used)| format!("{m} -> {used:?}"))
        .collect();
    let shown = shown.join("\n");
    if let Some(cycle) = find_cycle(&edges) {
        panic!("an import cycle: {}\n{shown}", cycle.join(" -> "));
    }
    for (module, used) in &edges {
        let Some(layer) = layer_of(module) else {
            panic!("module `{module}` is in no layer (tests/module_graph.rs LAYERS)\n{shown}");
        };
        for target in used {
            let target_layer = layer_of(target).unwrap_or(usize::MAX);
            assert!(
                target_layer <= layer,
                "`{module}` uses `{target}`, a higher layer\n{shown}"
            );
        }
    }
}

/// The parser itself, on what it must see and what it must not.
#[test]
fn paths_in_comments_strings_and_tests_are_not_imports() {
    let code = r##"
use crate::{a::{b, c}, d::e};
// use crate::commented;
/// crate::doc
let s = "crate::string"; let r = r#"crate::raw"#; let c = '"'; let l: &'static str = "";
fn f() { crate::f::g(); }
#[cfg(test)]
mod tests { use crate::in_tests; }
"##;
    let found = crate_paths(&without_tests(&code_only(code)));
    let want: BTreeSet<String> = ["a", "d", "f"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, want);
    let mut cyclic = BTreeMap::new();
    cyclic.insert("x".to_string(), BTreeSet::from(["y".to_string()]));
    cyclic.insert("y".to_string(), BTreeSet::from(["x".to_string()]));
    assert_eq!(
        find_cycle(&cyclic),
        Some(vec!["x".into(), "y".into(), "x".into()])
    );
}
