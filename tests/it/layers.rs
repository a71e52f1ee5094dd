//! The layers of `src/` look down only: each file names (through `crate::`, `super::`,
//! `self::` or `peerstash::`) only modules of its own layer or below, and no circle of names
//! joins two modules or two files. `LAYERS` is the drawing; `scripts/deps.py` prints the whole
//! graph. A file naming the module that contains it (a part using its facade's types) is not an
//! arrow: the facade is the part's own home.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// From the bottom up. A module may name modules of its own layer or of a lower one.
const LAYERS: &[&[&str]] = &[
    // Pure: the wire protocol, opening files without following links, stopping tasks, the
    // wall clock, the history rule.
    &["protocol", "fsx", "shutdown", "clock", "history"],
    // The language of the control socket, the config, the sans-IO engine, the sockets, and
    // what each worker is doing.
    &["control", "config", "engine", "net", "workers"],
    // The catalog and the chunk files.
    &["store"],
    // The running peer: driver, disk, writer, receive loops.
    &["daemon"],
    // Use cases shared by requests and workers.
    &["ops"],
    // The control socket and one file per request.
    &["server"],
    // Wiring, workers, watched folders, metrics, systemd.
    &["service"],
    // The command line, local clusters for the demo and the tests.
    &["cli", "cluster"],
    &["demo"],
    &["bin"],
];

type Module = Vec<String>;

/// The code of a file without comments, string and char literals, and without its unit tests.
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let word_before = |i: usize| i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
    while i < b.len() {
        if text[i..].starts_with("//") {
            i = text[i..].find('\n').map_or(b.len(), |j| i + j);
        } else if text[i..].starts_with("/*") {
            i = text[i + 2..].find("*/").map_or(b.len(), |j| i + 2 + j + 2);
        } else if b[i] == b'r' && !word_before(i) && raw_start(&text[i..]).is_some() {
            let hashes = raw_start(&text[i..]).unwrap();
            let end = format!("\"{}", "#".repeat(hashes));
            let from = i + 2 + hashes;
            i = text[from..]
                .find(&end)
                .map_or(b.len(), |j| from + j + end.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && char_literal(&text[i..]).is_some() {
            i += char_literal(&text[i..]).unwrap();
            out.push_str("' '");
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    match out.find("#[cfg(test)]\nmod tests {") {
        Some(at) => out[..at].to_string(),
        None => out,
    }
}

/// `r"`, `r#"`...: the number of hashes.
fn raw_start(s: &str) -> Option<usize> {
    let rest = s.strip_prefix('r')?;
    let hashes = rest.bytes().take_while(|&c| c == b'#').count();
    (rest.as_bytes().get(hashes) == Some(&b'"')).then_some(hashes)
}

/// A char literal's length (`'a'`, `'\n'`, `'\u{1F}'`), not a lifetime.
fn char_literal(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.get(1) == Some(&b'\\') {
        let close = s[2..].find('\'')?;
        return Some(2 + close + 1);
    }
    let c = s[1..].chars().next()?;
    (s[1 + c.len_utf8()..].starts_with('\'')).then(|| 2 + c.len_utf8())
}

/// `src/a/b.rs` -> a::b; `src/a/mod.rs` -> a; `src/bin/x.rs` -> bin::x.
fn module_of(rel: &Path) -> Module {
    let mut parts: Module = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().map(String::as_str) != Some("bin")
        && matches!(parts.last().map(String::as_str), Some("mod" | "lib"))
    {
        parts.pop();
    }
    parts
}

/// The paths a file names: `use` trees expanded, and paths in the code.
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let tail = &rest[at + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        if before_ok {
            expand(&mut Vec::new(), tail[..end].trim(), &mut paths);
        }
        rest = &tail[end.min(tail.len())..];
    }
    for (i, _) in code.match_indices("::") {
        // The whole path around each `::`: walk back to its start.
        let start = code[..i]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |s| s + 1);
        let end = code[i..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |e| i + e);
        paths.push(code[start..end].split("::").map(str::to_string).collect());
    }
    paths
}

/// `a::{b, c::{d}}` -> a::b, a::c::d.
fn expand(prefix: &mut Vec<String>, tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut from) = (0, 0);
        let mut items = Vec::new();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&body[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        items.push(&body[from..]);
        let n = prefix.len();
        prefix.extend(head);
        for item in items {
            expand(prefix, item, out);
        }
        prefix.truncate(n);
    } else if !tree.is_empty() {
        let name = tree.split(" as ").next().unwrap_or(tree);
        let mut p = prefix.clone();
        p.extend(name.split("::").map(|s| s.trim().to_string()));
        out.push(p);
    }
}

/// The module a path names, if it is one of ours: the longest known prefix.
fn resolve(me: &Module, path: &[String], known: &BTreeSet<Module>) -> Option<Module> {
    let mut full: Module = match path.first()?.as_str() {
        "crate" | "peerstash" => Vec::new(),
        "super" => {
            let mut base = me.clone();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            return longest(&base, known);
        }
        "self" => me.clone(),
        _ => return None,
    };
    full.extend(path[1..].iter().cloned());
    longest(&full, known)
}

fn longest(full: &[String], known: &BTreeSet<Module>) -> Option<Module> {
    (1..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|m| known.contains(m))
}

/// Every file of src/ with the modules it names (tests left out).
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
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
    let modules: Vec<(Module, String)> = files
        .iter()
        .filter(|f| !f.to_string_lossy().ends_with("tests.rs"))
        .map(|f| {
            let m = module_of(f.strip_prefix(&src).unwrap());
            (m, code(&std::fs::read_to_string(f).unwrap()))
        })
        .filter(|(m, _)| !m.is_empty())
        .collect();
    let known: BTreeSet<Module> = modules.iter().map(|(m, _)| m.clone()).collect();
    let mut g = BTreeMap::new();
    for (me, code) in &modules {
        let names: BTreeSet<Module> = named_paths(code)
            .iter()
            .filter_map(|p| resolve(me, p, &known))
            // A part naming its own facade (a module that contains it) is no arrow.
            .filter(|t| t != me && !me.starts_with(t))
            .collect();
        g.insert(me.clone(), names);
    }
    g
}

fn layer(m: &Module) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&m[0].as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{}: add its top module to LAYERS in tests/layers.rs",
                m.join("::")
            )
        })
}

/// The circles of a graph (strongly connected components of more than one node).
fn circles(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit(
        v: &Module,
        g: &BTreeMap<Module, BTreeSet<Module>>,
        seen: &mut BTreeSet<Module>,
        out: &mut Vec<Module>,
    ) {
        let mut stack = vec![(v.clone(), false)];
        while let Some((v, done)) = stack.pop() {
            if done {
                out.push(v);
                continue;
            }
            if !seen.insert(v.clone()) {
                continue;
            }
            stack.push((v.clone(), true));
            for w in g.get(&v).into_iter().flatten() {
                if !seen.contains(w) {
                    stack.push((w.clone(), false));
                }
            }
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for v in g.keys() {
        visit(v, g, &mut seen, &mut order);
    }
    let mut back: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (a, ts) in g {
        for b in ts {
            back.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for v in order.iter().rev() {
        let mut comp = Vec::new();
        visit(v, &back, &mut seen, &mut comp);
        if comp.len() > 1 {
            found.push(comp);
        }
    }
    found
}

fn shown(m: &Module) -> String {
    m.join("::")
}

#[test]
fn every_arrow_looks_down() {
    let g = graph();
    let mut up = Vec::new();
    for (a, ts) in &g {
        for b in ts {
            if layer(b) > layer(a) {
                up.push(format!("{} -> {}", shown(a), shown(b)));
            }
        }
    }
    assert!(up.is_empty(), "arrows back up:\n{}", up.join("\n"));
}

#[test]
fn no_circle_of_files_or_of_modules() {
    let files = graph();
    // The same drawing by top module (daemon, ops, ...) and by folder (daemon, store::catalog).
    let by = |depth: usize| {
        let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (a, ts) in &files {
            let a2: Module = a.iter().take(depth).cloned().collect();
            let entry = g.entry(a2.clone()).or_default();
            for b in ts {
                let b2: Module = b.iter().take(depth).cloned().collect();
                if b2 != a2 && !a2.starts_with(&b2) {
                    entry.insert(b2);
                }
            }
        }
        g
    };
    let mut found = Vec::new();
    for g in [by(1), by(2), files] {
        for c in circles(&g) {
            let set: BTreeSet<_> = c.iter().cloned().collect();
            let arrows: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    g[a].iter()
                        .filter(|b| set.contains(*b))
                        .map(move |b| format!("  {} -> {}", shown(a), shown(b)))
                })
                .collect();
            found.push(arrows.join("\n"));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n\n"));
}

#[test]
fn the_drawing_sees_known_arrows() {
    // The reader finds what it must: `use` trees, `super::`, paths in code.
    let g = graph();
    let daemon = vec!["daemon".to_string()];
    let driver = vec!["daemon".to_string(), "driver".to_string()];
    assert!(g[&driver].contains(&vec!["engine".to_string(), "peer".to_string()]));
    assert!(
        g[&daemon].contains(&vec!["store".to_string()])
            || g[&daemon].iter().any(|m| m[0] == "store")
    );
    let mut probe = Vec::new();
    expand(&mut Vec::new(), "crate::a::{b, c::{d, e as f}}", &mut probe);
    assert_eq!(
        probe,
        vec![
            vec!["crate", "a", "b"],
            vec!["crate", "a", "c", "d"],
            vec!["crate", "a", "c", "e"]
        ]
    );
    assert_eq!(
        code("let s = \"crate::x\"; // crate::y\nr#\"a\"b\"#; 'x'"),
        "let s = \"\"; \n\"\"; ' '"
    );
}
