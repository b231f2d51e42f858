//! The documentation against the code: every environment variable the programs read is in
//! docs/configuration.md. The variables are found in the production crates' sources, so a
//! variable added to the code without its line in the docs fails here, naming it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use dashlight_core::jobs::PeriodicTask;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code without its unit tests (`#[cfg(test)] mod tests { ... }` at the end, as every
/// module here keeps them), whose variables are the tests' own.
fn production_code(path: &Path) -> String {
    let source = std::fs::read_to_string(path).unwrap();
    match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => source[..at].to_owned(),
        None => source,
    }
}

/// Each string literal `"NAME"` (an environment variable's shape) that directly follows one of
/// `openers` (e.g. `var(`), optional whitespace between.
fn names_after(code: &str, opener_ok: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(at) = code[i..].find("(\"") {
        let open = i + at;
        let start = open + 2;
        let end = start + code[start..].find('"').unwrap_or(0);
        let name = &code[start..end];
        // The identifier before the parenthesis.
        let mut j = open;
        while j > 0 && (bytes[j - 1].is_ascii_alphanumeric() || bytes[j - 1] == b'_' || bytes[j - 1] == b':') {
            j -= 1;
        }
        let ident = &code[j..open];
        let shaped = !name.is_empty()
            && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if shaped && opener_ok(ident) {
            out.push(name.to_owned());
        }
        i = end.max(start);
    }
    out
}

/// Every environment variable the production crates read.
fn variables_read() -> BTreeSet<String> {
    let mut files = Vec::new();
    for krate in ["core", "worker", "scheduler", "admin-api", "cli"] {
        rust_files(&root().join(krate).join("src"), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in &files {
        let code = production_code(file);
        // `std::env::var("X")`, `env::var_os("X")`, the config module's own `var("X")`.
        let reads = |ident: &str| {
            let last = ident.rsplit("::").next().unwrap_or(ident);
            last == "var" || last == "var_os"
        };
        names.extend(names_after(&code, reads));
        // The config module (core/src/config/) reads through small helpers (`duration("X", ...)`,
        // `boolean("X", ...)`, `ConfigError::new("X", ...)`): there any call's first argument of
        // that shape counts.
        if file.starts_with(root().join("core/src/config")) {
            names.extend(names_after(&code, |ident| {
                ident
                    .rsplit("::")
                    .next()
                    .is_some_and(|f| f.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !f.is_empty())
            }));
        }
        // clap's `#[arg(env = "X")]`.
        for part in code.split("env = \"").skip(1) {
            if let Some(name) = part.split('"').next() {
                names.insert(name.to_owned());
            }
        }
    }
    // Each periodic task's schedule override.
    for task in PeriodicTask::ALL {
        names.insert(dashlight_scheduler::schedule_var(task));
    }
    // Read on our behalf by tracing-subscriber's `EnvFilter::try_from_default_env`.
    names.insert("RUST_LOG".to_owned());
    names
}

#[test]
fn every_configuration_variable_the_code_reads_is_documented() {
    let docs = std::fs::read_to_string(root().join("docs/configuration.md")).expect("docs/configuration.md");
    let names = variables_read();
    // The scan itself must work: these are read today.
    for known in [
        "DATABASE_URL",
        "SMTP_URL",
        "RETRY_BASE_DELAY",
        "PUSH_ALLOW_PRIVATE_ENDPOINTS",
        "LOG_FORMAT",
        "SCHEDULE_INVOICES",
    ] {
        assert!(names.contains(known), "the scan missed {known}: {names:?}");
    }
    let missing: Vec<&String> = names.iter().filter(|n| !docs.contains(&format!("`{n}`"))).collect();
    assert!(
        missing.is_empty(),
        "read by the code but not in docs/configuration.md (as `NAME`): {missing:?}"
    );
}
