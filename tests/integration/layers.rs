//! The layering of `src/`, read from the code: which module names which. Fails on an import that
//! runs up a layer, on an import between two layers of the same rank, and on any import cycle
//! between modules. `cargo test --release --test integration layers -- --nocapture` prints the
//! graph of the layers.
//!
//! A reference is any `crate::a::b` path (`$crate::` in macros too, nested braces in imports),
//! `super::`/`self::` path or path through a child module the file declares, in code or in doc
//! links; a name `lib.rs` re-exports (`crate::Error`) counts as the module it comes from. A
//! `#[cfg(test)] mod tests` block that ends its file is left out (a unit test may reach its
//! parent's privates); one placed elsewhere counts.
//!
//! What it cannot see: a method called on a value whose type comes from elsewhere names no path,
//! so an `impl` block split over several files (as `engine/import/` does) shows only through
//! the imports of its files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may name modules of lower ranks only.
const LAYERS: &[(&str, usize)] = &[
    ("error", 0),
    ("telemetry", 0),
    ("kernels", 1),
    ("pipeline", 2),
    ("engine", 3),
    ("serving", 4),
    ("oip", 5),
    ("api", 6),
    ("commands", 7),
    ("fuzzing", 7),
];

/// A module (`serving::router`), its file, and the source that counts.
struct Module {
    path: Vec<String>,
    children: BTreeSet<String>,
    code: String,
}

fn rank(top: &str) -> Option<usize> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, r)| *r)
}

fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every module of the library (`main.rs` is the binary, a crate of its own).
fn modules() -> Vec<Module> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "main.rs"))
        .map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let code = without_trailing_tests(&text).to_string();
            let children = code
                .lines()
                .filter_map(|l| {
                    let l = l.trim_start();
                    let l = l
                        .strip_prefix("pub(crate) ")
                        .or(l.strip_prefix("pub "))
                        .unwrap_or(l);
                    l.strip_prefix("mod ")?
                        .strip_suffix(';')
                        .map(str::to_string)
                })
                .collect();
            Module {
                path: module_path(&src, file),
                children,
                code,
            }
        })
        .collect()
}

/// `text` without its unit tests, when they are the file's last item.
fn without_trailing_tests(text: &str) -> &str {
    let Some(at) = text.find("#[cfg(test)]\nmod tests {") else {
        return text;
    };
    let mut depth = 0usize;
    for (i, c) in text[at..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    let after = &text[at + i + 1..];
                    return if after.trim().is_empty() {
                        &text[..at]
                    } else {
                        text
                    };
                }
            }
            _ => {}
        }
    }
    text
}

/// The names `lib.rs` re-exports (`pub use error::{Error, Result};`), each with the module it
/// comes from.
fn root_reexports(lib: &Module, known: &BTreeSet<Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut aliases = BTreeMap::new();
    for line in lib.code.lines() {
        let Some(import) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        for path in import_paths(import, 0, Vec::new()).0 {
            let Some((last, from)) = path.split_last() else {
                continue;
            };
            if let Some(len) = (1..=from.len()).rev().find(|&n| known.contains(&from[..n])) {
                aliases.insert(last.clone(), from[..len].to_vec());
            }
        }
    }
    aliases
}

/// The paths of the import that starts at `at` in `code` under `base`: one path, or one per
/// item of a braced group (`a::{b, c::{d, e}}`), nested to any depth; and where it ends.
fn import_paths(code: &str, at: usize, base: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let (tail, end) = path_at(code, at);
    let mut path = base;
    path.extend(tail.into_iter().filter(|s| s != "self"));
    if !code[end..].starts_with('{') {
        return (vec![path], end);
    }
    let mut found = Vec::new();
    let mut at = end + 1;
    loop {
        at += code[at..].len() - code[at..].trim_start().len();
        match code[at..].chars().next() {
            None => return (found, at),
            Some('}') => return (found, at + 1),
            Some(',') => at += 1,
            Some(_) => {
                let (paths, end) = import_paths(code, at, path.clone());
                found.extend(paths);
                // Skip what no path reads (`as x`, `*`), up to the next item or the close.
                let skip = code[end..].find([',', '}']).unwrap_or(code.len() - end);
                at = end + skip.max(usize::from(end == at));
            }
        }
    }
}

/// The path starting at `at` in `code`: the identifiers joined by `::`, and where it ends (at a
/// `{` when it ends in `::{`).
fn path_at(code: &str, at: usize) -> (Vec<String>, usize) {
    let mut parts = Vec::new();
    let mut end = at;
    loop {
        let rest = &code[end..];
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        parts.push(rest[..len].to_string());
        end += len;
        if !code[end..].starts_with("::") {
            break;
        }
        end += 2;
    }
    (parts, end)
}

/// Whether `at` continues an identifier or a path rather than starting one.
fn inside_path(code: &str, at: usize) -> bool {
    let before = &code[..at];
    before.ends_with("::")
        || before
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// The modules `module` names, as absolute paths (cut to the deepest known module); `aliases`
/// are the crate root's re-exports.
fn references(
    module: &Module,
    known: &BTreeSet<Vec<String>>,
    aliases: &BTreeMap<String, Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let code = &module.code;
    let mut found = BTreeSet::new();
    let mut resolve = |absolute: &[String]| {
        let first = absolute.first();
        if let Some(from) = first.filter(|f| !known.contains(&vec![f.to_string()])) {
            if let Some(from) = aliases.get(from) {
                found.insert(from.clone());
                return;
            }
        }
        for len in (1..=absolute.len()).rev() {
            if known.contains(&absolute[..len]) {
                found.insert(absolute[..len].to_vec());
                return;
            }
        }
    };
    let mut starts: Vec<(usize, String)> = Vec::new();
    for key in ["crate::", "super::", "self::"] {
        starts.extend(code.match_indices(key).map(|(at, k)| (at, k.to_string())));
    }
    for child in &module.children {
        let key = format!("{child}::");
        starts.extend(
            code.match_indices(&key)
                .map(|(at, _)| (at, "child".to_string())),
        );
    }
    for (at, key) in starts {
        if inside_path(code, at) {
            continue;
        }
        let (base, rest_at) = match key.as_str() {
            "crate::" => (Vec::new(), at + key.len()),
            "self::" => (module.path.clone(), at + key.len()),
            "child" => (module.path.clone(), at),
            _ => {
                // `super::super::x`: one level up per `super`.
                let mut base = module.path.clone();
                let mut rest_at = at;
                while code[rest_at..].starts_with("super::") {
                    base.pop();
                    rest_at += "super::".len();
                }
                (base, rest_at)
            }
        };
        for path in import_paths(code, rest_at, base).0 {
            resolve(&path);
        }
    }
    found.remove(&module.path);
    found
}

/// The module graph: each module's references to other modules (neither itself nor an
/// ancestor's declaration of it).
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let lib = modules.iter().find(|m| m.path.is_empty()).unwrap();
    let aliases = root_reexports(lib, &known);
    modules
        .iter()
        .map(|m| (m.path.clone(), references(m, &known, &aliases)))
        .collect()
}

fn name(path: &[String]) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

/// Strongly connected components of more than one module (Tarjan's algorithm, iterative
/// enough for a few hundred modules).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let Some((w, _)) = graph.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(name(w));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn every_import_runs_down_the_layers() {
    let graph = graph();
    let mut wrong = Vec::new();
    let mut layer_edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (from, targets) in &graph {
        let Some(top) = from.first() else {
            continue; // lib.rs lists the layers
        };
        let from_rank = rank(top).unwrap_or_else(|| panic!("module `{top}` is in no layer"));
        for to in targets {
            let Some(to_top) = to.first() else { continue };
            if to_top == top {
                continue;
            }
            *layer_edges
                .entry((top.clone(), to_top.clone()))
                .or_default() += 1;
            let to_rank = rank(to_top).unwrap_or_else(|| panic!("`{to_top}` is in no layer"));
            if to_rank >= from_rank {
                wrong.push(format!("{} -> {}", name(from), name(to)));
            }
        }
    }
    println!("layers (lowest first) and the modules that name a lower layer:");
    for (layer, r) in LAYERS.iter().rev() {
        let uses: Vec<String> = layer_edges
            .iter()
            .filter(|((from, _), _)| from == layer)
            .map(|((_, to), n)| format!("{to} ({n})"))
            .collect();
        println!("  {r} {layer:<10} -> {}", uses.join(", "));
    }
    assert!(
        wrong.is_empty(),
        "imports up or across layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = graph();
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles (each line one set of modules that reach each other):\n{}",
        found
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_sees_paths_of_every_form() {
    let known: BTreeSet<Vec<String>> = [
        vec!["serving".to_string()],
        vec!["serving".into(), "router".into()],
        vec!["serving".into(), "batcher".into()],
        vec!["engine".into()],
        vec!["engine".into(), "pool".into()],
        vec!["error".into()],
        vec!["api".into()],
        vec!["api".into(), "http".into()],
        vec!["api".into(), "http".into(), "body".into()],
    ]
    .into_iter()
    .collect();
    let module = Module {
        path: vec!["serving".into(), "router".into()],
        children: BTreeSet::new(),
        code: "use crate::engine::pool::{Variant, Unavailable};\n\
               use super::batcher::Batch;\n\
               fn f() -> crate::error::Result<()> { Ok(()) }\n"
            .into(),
    };
    let aliases = BTreeMap::from([("Error".to_string(), vec!["error".to_string()])]);
    let found: Vec<String> = references(&module, &known, &aliases)
        .iter()
        .map(|p| name(p))
        .collect();
    assert_eq!(found, ["engine::pool", "error", "serving::batcher"]);
    let module = Module {
        path: vec!["api".into(), "http".into()],
        children: ["body".to_string()].into_iter().collect(),
        code: "use self::body::read;\nuse crate::{engine::pool::Variant, serving};\n\
               /// [`crate::api`]\nfn g() { body::x(); nobody::y(); }\n"
            .into(),
    };
    let found: Vec<String> = references(&module, &known, &aliases)
        .iter()
        .map(|p| name(p))
        .collect();
    assert_eq!(found, ["api", "api::http::body", "engine::pool", "serving"]);
    // Nested groups, renames and globs, and a root re-export.
    let module = Module {
        path: vec!["api".into()],
        children: BTreeSet::new(),
        code: "use crate::{engine::{pool::{self, Variant as V}, *}, serving::{router::*}};
               fn h() -> Result<(), crate::Error> { Ok(()) }
"
        .into(),
    };
    let found: Vec<String> = references(&module, &known, &aliases)
        .iter()
        .map(|p| name(p))
        .collect();
    assert_eq!(
        found,
        ["engine", "engine::pool", "error", "serving::router"]
    );
    let text = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn b() { if x { y() } }\n}\n";
    assert_eq!(without_trailing_tests(text), "fn a() {}\n");
    let text = "#[cfg(test)]\nmod tests {\n}\nfn c() { crate::serving::x() }\n";
    assert_eq!(without_trailing_tests(text), text);
    let mut graph = BTreeMap::new();
    graph.insert(known.iter().next().unwrap().clone(), BTreeSet::new());
    let a = vec!["a".to_string()];
    let b = vec!["b".to_string()];
    graph.insert(a.clone(), [b.clone()].into_iter().collect());
    graph.insert(b, [a].into_iter().collect());
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".to_string()]]);
}
