//! Not end to end: keeps the layout of `src/` honest (CONTRIBUTING.md, "Layout"). Reads the
//! sources and checks that `config` imports nothing of the crate, that the import graph of the
//! top-level modules has no cycle, and that every import points down [`LAYERS`]. Cheap and
//! textual: every `crate::<module>` path outside comments and `#[cfg(test)]` items counts as an
//! import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules in the order CONTRIBUTING.md draws them: each may import only modules
/// listed before it. A new module, or a new import that points the other way, means changing
/// this list and CONTRIBUTING.md together, on purpose.
const LAYERS: &[&str] = &[
    "config",
    "clock",
    "metrics",
    "acs",
    "credentials",
    "sticky",
    "attribution",
    "snapshot",
    "source",
    "das",
    "direct",
    "discovery",
    "fleet",
    "store",
    "exposition",
    "scheduler",
    "server",
    "daemon",
    "telemetry",
    "simulator",
    "demo",
];

/// The top-level modules and the files of each (a module's folder holds all of its files).
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a UTF-8 file name")
            .to_owned();
        if path.is_dir() {
            let mut files = Vec::new();
            collect_rs(&path, &mut files);
            out.insert(name, files);
        } else if path.extension().is_some_and(|e| e == "rs")
            && !matches!(name.as_str(), "lib" | "main")
        {
            out.insert(name, vec![path]);
        }
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without `#[cfg(test)]` items (rustfmt's layout: an
/// item that opens a block ends at the first line that closes it at the same indentation).
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed == "#[cfg(test)]" {
            let indent = line.len() - trimmed.len();
            let Some(item) = lines.next() else { break };
            if item.trim_end().ends_with('{') {
                let close = format!("{}}}", " ".repeat(indent));
                for l in lines.by_ref() {
                    if l.trim_end() == close {
                        break;
                    }
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules a piece of code names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        // `crate::` inside a longer identifier (`my_crate::`) is not ours.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first segment of each top-level entry.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_alphanumeric() || c == '_') => {
                        found.insert(identifier(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = identifier(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn identifier(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The files of the modules a file declares as `#[cfg(test)] mod x;` (`x.rs` or `x/mod.rs`
/// beside a `mod.rs`, under `foo/` for a `foo.rs`).
fn test_module_files(file: &Path, text: &str) -> Vec<PathBuf> {
    let dir = match file.file_stem().and_then(|s| s.to_str()) {
        Some("mod") => file.parent().map(Path::to_path_buf),
        Some(stem) => file.parent().map(|p| p.join(stem)),
        None => None,
    };
    let Some(dir) = dir else { return Vec::new() };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| {
            let decl = w[1]
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            decl.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_owned)
        })
        .flat_map(|m| [dir.join(format!("{m}.rs")), dir.join(&m).join("mod.rs")])
        .collect()
}

fn graph(src: &Path) -> Graph {
    let modules = modules(src);
    let mut g = Graph::new();
    for (name, files) in &modules {
        let texts: Vec<(&PathBuf, String)> = files
            .iter()
            .map(|f| {
                (
                    f,
                    std::fs::read_to_string(f).expect("a readable source file"),
                )
            })
            .collect();
        let test_files: BTreeSet<PathBuf> = texts
            .iter()
            .flat_map(|(f, t)| test_module_files(f, t))
            .collect();
        let mut deps = BTreeSet::new();
        for (f, text) in &texts {
            if !test_files.contains(*f) {
                deps.extend(imports(&non_test_code(text)));
            }
        }
        deps.retain(|d| d != name && modules.contains_key(d));
        g.insert(name.clone(), deps);
    }
    g
}

/// A cycle of the graph, if it has one, as the modules along it.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(n).copied().unwrap_or(Mark::New) {
            Mark::Done => return None,
            Mark::Open => {
                let at = path.iter().position(|p| p == n).unwrap_or(0);
                let mut c = path[at..].to_vec();
                c.push(n.to_owned());
                return Some(c);
            }
            Mark::New => {}
        }
        marks.insert(n.to_owned(), Mark::Open);
        path.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut marks, &mut Vec::new()))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn config_imports_nothing_of_the_crate() {
    let g = graph(&src());
    assert!(g.contains_key("config"), "no config module in {g:?}");
    assert_eq!(g["config"], BTreeSet::new(), "config must stay a leaf");
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph(&src());
    if let Some(c) = cycle(&g) {
        panic!("import cycle: {}\ngraph: {g:#?}", c.join(" -> "));
    }
}

#[test]
fn imports_point_down_the_layers() {
    let g = graph(&src());
    let found: Vec<&str> = g.keys().map(String::as_str).collect();
    let mut listed = LAYERS.to_vec();
    listed.sort_unstable();
    assert_eq!(
        found, listed,
        "LAYERS must list every top-level module of src/"
    );
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m).unwrap_or(usize::MAX);
    let upward: Vec<String> = g
        .iter()
        .flat_map(|(m, deps)| {
            deps.iter()
                .filter(|d| rank(d) > rank(m))
                .map(move |d| format!("{m} imports {d}"))
        })
        .collect();
    assert!(
        upward.is_empty(),
        "imports that point up the layers: {upward:?}"
    );
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    let code = non_test_code(
        "use crate::a::X;\n// crate::commented\nuse crate::{b, c::{D, E}, d};\nfn f() { crate::e::g(); my_crate::h(); }\n\
         #[cfg(test)]\nmod tests {\n    use crate::tested;\n}\n#[cfg(test)]\nuse crate::only_in_tests;\n",
    );
    let want: BTreeSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    assert_eq!(imports(&code), want);
    let files = test_module_files(
        Path::new("src/das/scan/mod.rs"),
        "#[cfg(test)]\nmod tests;\n",
    );
    assert!(
        files.contains(&PathBuf::from("src/das/scan/tests.rs")),
        "{files:?}"
    );
    let files = test_module_files(Path::new("src/store.rs"), "mod helpers;\n");
    assert!(files.is_empty(), "{files:?}");
    let mut g = Graph::new();
    g.insert("a".into(), ["b".to_owned()].into());
    g.insert("b".into(), ["c".to_owned()].into());
    g.insert("c".into(), BTreeSet::new());
    assert_eq!(cycle(&g), None);
    g.insert("c".into(), ["a".to_owned()].into());
    assert_eq!(
        cycle(&g),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
