//! The crate's layering rule holds: `src/lib.rs` declares the layers, top first, and every
//! path into the crate (`crate::…`, `super::…`, `self::…`, in `use` items, code, macros and
//! attributes alike) must go down them. Inside a folder, the modules never use each other in
//! a circle. The checker reads the source as tokens (proc-macro2), so comments and strings do
//! not count; it runs here on the agent's `src/` and, to show it can fail, on small made-up
//! trees.
//!
//! Items under `#[cfg(test)]` do not count: the rule is about the product's structure, and a
//! module's unit tests may borrow a sibling's fixtures (`telemetry::model::tests`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

/// A module by its path below the crate root: `["datapath", "install"]`; the root is `[]`.
type Module = Vec<String>;

/// One path into the crate, from the module of the file that names it.
#[derive(Clone, Debug)]
struct Import {
    /// The file's module (inline modules such as `mod tests` belong to their file).
    from: Module,
    /// The module the path leads to: the longest prefix of the path that is a module.
    to: Module,
    file: PathBuf,
    line: usize,
    /// The path as written, for the message.
    written: String,
}

/// What breaks the rule.
#[derive(Debug, PartialEq, Eq)]
enum Violation {
    /// `from` uses `to`, which is in its own layer or one above it.
    Upward {
        from: String,
        to: String,
        at: String,
    },
    /// The modules of one folder (or the crate's) use each other in a circle.
    Cycle {
        modules: Vec<String>,
        at: Vec<String>,
    },
    /// A top-level module no layer of the table names.
    Unplaced { module: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Upward { from, to, at } => write!(
                f,
                "{at}: `{from}` uses `{to}`, which is not in a layer below it (src/lib.rs)"
            ),
            Violation::Cycle { modules, at } => write!(
                f,
                "{} use each other in a circle: {}",
                modules.join(", "),
                at.join("; ")
            ),
            Violation::Unplaced { module } => write!(
                f,
                "module `{module}` is in no layer of the table in src/lib.rs"
            ),
        }
    }
}

/// The layers of the table in `lib.rs`'s first ```text block, top first: each line starts with
/// the comma-separated names of one layer's modules (a trailing `/` marks a folder), then two
/// spaces and what they are. A line that starts with a space continues the one above.
fn layers(lib_rs: &str) -> Vec<Vec<String>> {
    let block = lib_rs
        .lines()
        .map(|line| line.strip_prefix("//!").unwrap_or(line))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .skip_while(|line| !line.starts_with("```text"))
        .skip(1)
        .take_while(|line| !line.starts_with("```"));
    block
        .filter(|line| !line.is_empty() && !line.starts_with(' '))
        .map(|line| {
            let names = line.split("  ").next().unwrap_or(line);
            names
                .split(',')
                .map(|name| name.trim().trim_end_matches('/').to_owned())
                .collect()
        })
        .collect()
}

/// Every module of the crate whose source is at `src` (`lib.rs` and the files below it; not
/// `main.rs`, the binary, another crate), by its file.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, prefix: &Module, out: &mut BTreeMap<Module, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut module = prefix.clone();
                module.push(name);
                walk(&path, &module, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                if prefix.is_empty() && name == "main" {
                    continue;
                }
                let mut module = prefix.clone();
                if name != "mod" && !(prefix.is_empty() && name == "lib") {
                    module.push(name);
                }
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &Vec::new(), &mut out);
    out
}

/// The paths into the crate that `source`, the file of module `module`, names.
fn imports(
    source: &str,
    module: &Module,
    file: &Path,
    modules: &BTreeMap<Module, PathBuf>,
) -> Vec<Import> {
    let tokens = TokenStream::from_str(source)
        .unwrap_or_else(|err| panic!("{} does not lex: {err}", file.display()));
    let mut paths = Vec::new();
    scan(tokens, module, &mut paths);
    paths
        .into_iter()
        .filter_map(|(path, line)| {
            let to = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|prefix| modules.contains_key(prefix))?;
            Some(Import {
                from: module.clone(),
                to,
                file: file.to_owned(),
                line,
                written: path.join("::"),
            })
        })
        .collect()
}

/// Collects the crate paths in `tokens`, resolved from the (possibly inline) module `here`,
/// with their line.
fn scan(tokens: TokenStream, here: &Module, out: &mut Vec<(Vec<String>, usize)>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            // `mod name { … }`: an inline module; its `super` is `here`.
            TokenTree::Ident(ident) if ident == "mod" => {
                if let (Some(TokenTree::Ident(name)), Some(TokenTree::Group(body))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    if body.delimiter() == Delimiter::Brace {
                        let mut inner = here.clone();
                        inner.push(name.to_string());
                        scan(body.stream(), &inner, out);
                        i += 3;
                        continue;
                    }
                }
                i += 1;
            }
            // `crate::`, `super::`, `self::`, unless part of a longer path (`x::self::…`).
            TokenTree::Ident(ident)
                if ["crate", "super", "self"].contains(&ident.to_string().as_str())
                    && is_path_sep(&tokens, i + 1)
                    && !(i >= 2 && is_path_sep(&tokens, i - 2)) =>
            {
                let line = ident.span().start().line;
                let (ends, next) = path_tree(&tokens, i);
                for segments in ends {
                    if let Some(path) = resolve(here, &segments) {
                        out.push((path, line));
                    }
                }
                i = next;
            }
            // `#[cfg(test)]`: the item it gates (up to its body or `;`) is skipped.
            TokenTree::Punct(p) if p.as_char() == '#' && is_cfg_test(tokens.get(i + 1)) => {
                i += 2;
                while let Some(token) = tokens.get(i) {
                    i += 1;
                    match token {
                        TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => break,
                        TokenTree::Punct(p) if p.as_char() == ';' => break,
                        _ => {}
                    }
                }
            }
            TokenTree::Group(group) => {
                scan(group.stream(), here, out);
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// Whether `token` is the `[cfg(test)]` of an attribute.
fn is_cfg_test(token: Option<&TokenTree>) -> bool {
    match token {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Bracket => {
            g.stream().to_string().replace(' ', "") == "cfg(test)"
        }
        _ => false,
    }
}

/// Whether `tokens[i..]` starts with `::`.
fn is_path_sep(tokens: &[TokenTree], i: usize) -> bool {
    matches!(
        (tokens.get(i), tokens.get(i + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
    )
}

/// The path starting at `tokens[start]`, as the segment lists it ends in (a `use` tree's
/// braces give several), and the index after it.
fn path_tree(tokens: &[TokenTree], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut segments = Vec::new();
    let mut i = start;
    loop {
        match tokens.get(i) {
            Some(TokenTree::Ident(ident)) => segments.push(ident.to_string()),
            Some(TokenTree::Punct(p)) if p.as_char() == '*' => {
                return (vec![segments], i + 1);
            }
            Some(TokenTree::Group(group)) if group.delimiter() == Delimiter::Brace => {
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                let mut ends = Vec::new();
                for branch in
                    inner.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
                {
                    if branch.is_empty() {
                        continue;
                    }
                    for end in path_tree(branch, 0).0 {
                        let mut full = segments.clone();
                        // `{self, …}` names the prefix itself.
                        full.extend(end.into_iter().skip_while(|s| s == "self"));
                        ends.push(full);
                    }
                }
                return (ends, i + 1);
            }
            _ => return (vec![segments], i),
        }
        if !is_path_sep(tokens, i + 1) {
            return (vec![segments], i + 1);
        }
        i += 3;
    }
}

/// `segments` (starting with `crate`, `super` or `self`) from module `here`, from the root.
fn resolve(here: &Module, segments: &[String]) -> Option<Vec<String>> {
    let mut rest = segments;
    let mut base = match rest.first()?.as_str() {
        "crate" => {
            rest = &rest[1..];
            Vec::new()
        }
        _ => here.clone(),
    };
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Checks the crate at `src` against the layers its `lib.rs` declares.
fn check(src: &Path) -> Vec<Violation> {
    let lib_rs = std::fs::read_to_string(src.join("lib.rs")).expect("reading lib.rs");
    let layers = layers(&lib_rs);
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(rank, names)| names.iter().map(move |name| (name.as_str(), rank)))
        .collect();
    let modules = modules(src);
    let mut violations = Vec::new();
    let top: BTreeSet<&String> = modules.keys().filter_map(|m| m.first()).collect();
    for module in top {
        if !rank.contains_key(module.as_str()) {
            violations.push(Violation::Unplaced {
                module: module.clone(),
            });
        }
    }
    // Per folder (the crate root included), which of its modules uses which, and where.
    let mut uses: BTreeMap<Module, BTreeMap<(String, String), Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let source = std::fs::read_to_string(file).expect("reading a module");
        for import in imports(&source, module, file, &modules) {
            let common = import
                .from
                .iter()
                .zip(&import.to)
                .take_while(|(a, b)| a == b)
                .count();
            // A module's own items and children, or its folder's `mod.rs` (the folder's face,
            // which its files may use): not a use of a sibling.
            if common == import.from.len() || common == import.to.len() {
                continue;
            }
            let (a, b) = (&import.from[common], &import.to[common]);
            let at = format!(
                "{}:{} ({})",
                import
                    .file
                    .strip_prefix(src)
                    .unwrap_or(&import.file)
                    .display(),
                import.line,
                import.written
            );
            if common == 0 {
                if let (Some(ra), Some(rb)) = (rank.get(a.as_str()), rank.get(b.as_str())) {
                    if rb <= ra {
                        violations.push(Violation::Upward {
                            from: import.from.join("::"),
                            to: import.to.join("::"),
                            at: at.clone(),
                        });
                    }
                }
            }
            uses.entry(import.from[..common].to_vec())
                .or_default()
                .entry((a.clone(), b.clone()))
                .or_default()
                .push(at);
        }
    }
    for (folder, edges) in &uses {
        let name = |m: &str| {
            let mut path = folder.clone();
            path.push(m.to_owned());
            path.join("::")
        };
        for circle in circles(edges.keys()) {
            let at = edges
                .iter()
                .filter(|((a, b), _)| circle.contains(a) && circle.contains(b))
                .map(|(_, places)| places[0].clone())
                .collect();
            violations.push(Violation::Cycle {
                modules: circle.iter().map(|m| name(m)).collect(),
                at,
            });
        }
    }
    violations
}

/// The groups of nodes that reach each other (the strongly connected components of more than
/// one node) of a directed graph.
fn circles<'a>(edges: impl Iterator<Item = &'a (String, String)>) -> Vec<BTreeSet<String>> {
    let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().insert(b);
    }
    let reach = |from: &str| -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(node) = stack.pop() {
            for &n in next.get(node).into_iter().flatten() {
                if seen.insert(n) {
                    stack.push(n);
                }
            }
        }
        seen
    };
    // A few dozen modules at most: the plain way (a node is with every node it reaches that
    // reaches it back) instead of Tarjan's.
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for &node in next.keys() {
        if found.iter().any(|circle| circle.contains(node)) {
            continue;
        }
        let circle: BTreeSet<String> = reach(node)
            .into_iter()
            .filter(|&n| reach(n).contains(node))
            .map(str::to_owned)
            .collect();
        if circle.len() > 1 {
            found.push(circle);
        }
    }
    found
}

#[test]
fn no_module_uses_one_above_it_and_no_folder_has_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let violations = check(&src);
    assert!(
        violations.is_empty(),
        "the layering rule of src/lib.rs is broken:\n{}",
        violations
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A made-up crate: `lib.rs` with `table` as its layer table, and `files` (path, source).
fn made_up(table: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lib = format!("//! Layers:\n//!\n//! ```text\n{table}//! ```\n");
    std::fs::write(dir.path().join("lib.rs"), lib).unwrap();
    for (path, source) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
    dir
}

const TWO_LAYERS: &str = "//! top      uses bottom\n//! bottom   uses nothing\n";

#[test]
fn an_upward_import_fails() {
    let dir = made_up(
        TWO_LAYERS,
        &[
            ("top.rs", "use crate::bottom::f;\npub fn g() { f() }\n"),
            ("bottom.rs", "pub fn f() {}\n\nuse crate::top::g;\n"),
        ],
    );
    assert_eq!(
        check(dir.path()),
        [
            Violation::Upward {
                from: "bottom".into(),
                to: "top".into(),
                at: "bottom.rs:3 (top::g)".into(),
            },
            Violation::Cycle {
                modules: vec!["bottom".into(), "top".into()],
                at: vec!["bottom.rs:3 (top::g)".into(), "top.rs:1 (bottom::f)".into()],
            },
        ]
    );
}

#[test]
fn a_layer_does_not_use_its_peers() {
    let dir = made_up(
        "//! a, b   peers\n",
        &[
            ("a.rs", "pub fn f() {}\n"),
            ("b.rs", "fn g() { crate::a::f() }\n"),
        ],
    );
    assert_eq!(
        check(dir.path()),
        [Violation::Upward {
            from: "b".into(),
            to: "a".into(),
            at: "b.rs:1 (a::f)".into(),
        }]
    );
}

#[test]
fn a_circle_inside_a_folder_fails() {
    let dir = made_up(
        "//! low/   one folder\n",
        &[
            ("low/mod.rs", "mod a;\nmod b;\n"),
            ("low/a.rs", "use super::b::x;\npub fn y() {}\n"),
            ("low/b.rs", "pub fn x() {}\nfn z() { crate::low::a::y() }\n"),
        ],
    );
    assert_eq!(
        check(dir.path()),
        [Violation::Cycle {
            modules: vec!["low::a".into(), "low::b".into()],
            at: vec![
                "low/a.rs:1 (low::b::x)".into(),
                "low/b.rs:2 (low::a::y)".into()
            ],
        }]
    );
}

#[test]
fn paths_count_in_use_trees_macros_and_attributes_not_in_comments_strings_or_tests() {
    let ignored = r#"
        // crate::top::f
        /// [`crate::top`]
        const S: &str = "crate::top::f";
        #[cfg(test)]
        mod tests {
            use crate::top::f;
        }
        // A module's own children and its folder's face are not uses of another module.
        use self::inner::h;
        mod inner { pub fn h() {} }
    "#;
    let dir = made_up(
        TWO_LAYERS,
        &[
            (
                "top.rs",
                "pub fn f() {}\npub const X: u8 = 1;\npub fn e() {}\n",
            ),
            ("bottom.rs", ignored),
        ],
    );
    assert_eq!(check(dir.path()), []);

    let counted = r#"use crate::{
    other,
    top::{self as t, f},
};
fn g() { println!("{}", crate::top::X) }
#[arg(default_value = super::top::e)]
struct A;
"#;
    let dir = made_up(
        TWO_LAYERS,
        &[
            (
                "top.rs",
                "pub fn f() {}\npub const X: u8 = 1;\npub fn e() {}\n",
            ),
            ("bottom.rs", counted),
        ],
    );
    let places: Vec<String> = check(dir.path())
        .into_iter()
        .filter_map(|violation| match violation {
            Violation::Upward { at, .. } => Some(at),
            _ => None,
        })
        .collect();
    assert_eq!(
        places,
        [
            "bottom.rs:1 (top)",
            "bottom.rs:1 (top::f)",
            "bottom.rs:5 (top::X)",
            "bottom.rs:6 (top::e)"
        ]
    );
}

#[test]
fn a_module_in_no_layer_fails() {
    let dir = made_up(
        TWO_LAYERS,
        &[("top.rs", ""), ("bottom.rs", ""), ("stray.rs", "")],
    );
    assert_eq!(
        check(dir.path()),
        [Violation::Unplaced {
            module: "stray".into()
        }]
    );
}
