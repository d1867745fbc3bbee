//! The agent's source stays in pieces a person can read whole (issue 24): no function in
//! `src/telemetry/` over [`MAX_FUNCTION_LINES`] lines, no file of `src/` over
//! [`MAX_FILE_LINES`] lines.
//!
//! Functions are found in the source's tokens (proc-macro2): `fn`, its name, and its body,
//! the first brace group after them; a function counts from its `fn` to its closing brace,
//! its documentation and attributes left out.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
};

use proc_macro2::{Delimiter, TokenStream, TokenTree};

const MAX_FUNCTION_LINES: usize = 80;
const MAX_FILE_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("reading a source folder") {
        let path = entry.expect("a source folder's entry").path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// (name, first line, lines) of every function in `tokens`, nested ones included.
fn functions(tokens: TokenStream, found: &mut Vec<(String, usize, usize)>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for (index, token) in tokens.iter().enumerate() {
        if let TokenTree::Group(group) = token {
            functions(group.stream(), found);
        }
        let TokenTree::Ident(keyword) = token else {
            continue;
        };
        let Some(TokenTree::Ident(name)) = tokens.get(index + 1) else {
            continue;
        };
        if keyword != "fn" {
            continue;
        }
        // The body: the first brace group before a `;` (a declaration without one).
        let body = tokens[index + 2..]
            .iter()
            .take_while(|token| !matches!(token, TokenTree::Punct(p) if p.as_char() == ';'))
            .find_map(|token| match token {
                TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => Some(group),
                _ => None,
            });
        if let Some(body) = body {
            let first = keyword.span().start().line;
            let lines = body.span().end().line - first + 1;
            found.push((name.to_string(), first, lines));
        }
    }
}

fn functions_of(source: &str) -> Vec<(String, usize, usize)> {
    let tokens = TokenStream::from_str(source).expect("the source parses as tokens");
    let mut found = Vec::new();
    functions(tokens, &mut found);
    found
}

#[test]
fn no_function_in_telemetry_is_over_the_limit() {
    let mut long = Vec::new();
    let mut count = 0;
    for file in files(&src().join("telemetry")) {
        let source = std::fs::read_to_string(&file).expect("reading a source file");
        for (name, first, lines) in functions_of(&source) {
            count += 1;
            if lines > MAX_FUNCTION_LINES {
                let file = file.strip_prefix(src()).unwrap_or(&file).display();
                long.push(format!("{file}:{first} {name}: {lines} lines"));
            }
        }
    }
    assert!(count > 200, "too few functions found: {count}");
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines: {long:#?}"
    );
}

#[test]
fn no_file_is_over_the_limit() {
    let mut over = Vec::new();
    for file in files(&src()) {
        let lines = std::fs::read_to_string(&file)
            .expect("reading a source file")
            .lines()
            .count();
        if lines > MAX_FILE_LINES {
            let name = file
                .strip_prefix(src())
                .unwrap_or(&file)
                .display()
                .to_string();
            over.push(format!("{name} ({lines} lines)"));
        }
    }
    assert!(
        over.is_empty(),
        "files over {MAX_FILE_LINES} lines (split them): {over:?}"
    );
}

#[test]
fn a_long_function_is_measured() {
    let body = "    let x = 1;\n".repeat(90);
    let source = format!(
        "/// Doc.\nfn short() {{}}\nimpl A {{\n    fn long(&self) -> u8 {{\n{body}    }}\n}}\ntrait T {{ fn declared(&self); }}\n"
    );
    let found = functions_of(&source);
    assert_eq!(
        found,
        [("short".to_owned(), 2, 1), ("long".to_owned(), 4, 92),]
    );
}
