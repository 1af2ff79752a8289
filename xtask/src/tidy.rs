//! The repository's own rules, checked by `cargo xtask tidy` and by `cargo test`:
//! every Rust file opens with a `//!` doc saying what it is for, and no test is skipped
//! with `#[ignore]` or passes by panicking with `#[should_panic]`; and the invariants of
//! docs/ARCHITECTURE.md that code can break without a test noticing:
//! - RocksDB only in `crates/queue` (in a manifest or in code);
//! - no `impl Policy` in the binary (`crates/backstop`): the checks and their order live in
//!   `crates/policy` and `crates/filter`;
//! - SMTP reply texts only in `crates/types/src/reply.rs` (no `Reply::new` elsewhere, tests
//!   aside);
//! - a crate depends only on the crates listed before it in ARCHITECTURE.md's codemap.

use std::path::{Path, PathBuf};

pub fn check(root: &Path) -> Result<(), Vec<String>> {
    let mut problems = files(root);
    problems.extend(architecture(root));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The rules every Rust file follows.
fn files(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests", "benches", "fuzz"] {
        collect(&root.join(dir), &mut files);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let shown = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        // Child test modules (`mod tests;` → tests.rs) belong to their parent's doc.
        let is_test_module = file.file_name().is_some_and(|n| n == "tests.rs");
        if !is_test_module && !text.trim_start().starts_with("//!") {
            problems.push(format!("{shown}: does not start with a //! doc comment"));
        }
        for banned in ["#[ignore", "#[should_panic"] {
            if text.contains(banned) && !shown.ends_with("xtask/src/tidy.rs") {
                problems.push(format!("{shown}: uses {banned}]"));
            }
        }
    }
    problems
}

/// The architecture's invariants (the module's list).
fn architecture(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let order = crate_order(root);
    if order.is_empty() {
        problems.push("docs/ARCHITECTURE.md: no codemap of crates (### `crates/NAME`)".into());
    }
    let Ok(entries) = std::fs::read_dir(root.join("crates")) else {
        return problems;
    };
    let mut crates: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    crates.sort();
    for name in &crates {
        let dir = root.join("crates").join(name);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
        let dependencies = dependencies(&manifest);
        if name != "queue" && dependencies.iter().any(|d| d == "rocksdb") {
            problems.push(format!(
                "crates/{name}/Cargo.toml: depends on rocksdb, which only crates/queue may"
            ));
        }
        let Some(position) = order.iter().position(|c| c == name) else {
            problems.push(format!(
                "crates/{name}: not in docs/ARCHITECTURE.md's codemap"
            ));
            continue;
        };
        for dependency in &dependencies {
            let Some(inner) = dependency.strip_prefix("backstop-") else {
                continue;
            };
            match order.iter().position(|c| c == inner) {
                Some(p) if p < position => {}
                _ => problems.push(format!(
                    "crates/{name}/Cargo.toml: depends on crates/{inner}, which \
                     docs/ARCHITECTURE.md lists after it (a crate uses only those before it)"
                )),
            }
        }
        let mut files = Vec::new();
        collect(&dir.join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let shown = file
                .strip_prefix(root)
                .unwrap_or(&file)
                .display()
                .to_string();
            let code = without_tests(&text);
            if name != "queue" && code.contains("rocksdb::") {
                problems.push(format!(
                    "{shown}: uses rocksdb, which only crates/queue may"
                ));
            }
            if name == "backstop" && implements_policy(code) {
                problems.push(format!(
                    "{shown}: implements Policy; checks and their order belong in crates/policy"
                ));
            }
            if !shown.ends_with("crates/types/src/reply.rs") && code.contains("Reply::new(") {
                problems.push(format!(
                    "{shown}: builds a reply with Reply::new; reply texts live in \
                     crates/types/src/reply.rs"
                ));
            }
        }
    }
    problems
}

/// The crates in the order docs/ARCHITECTURE.md's codemap lists them.
fn crate_order(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("### `crates/")?.strip_suffix('`'))
        .map(str::to_owned)
        .collect()
}

/// The names in a manifest's `[dependencies]` (not dev- or build-dependencies).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut inside = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if !inside || line.starts_with('#') {
            continue;
        }
        if let Some((name, _)) = line.split_once(['=', '.']) {
            names.push(name.trim().to_owned());
        }
    }
    names
}

/// A file's text before its `#[cfg(test)]` module, if it has one at the end (tests may do
/// what code may not).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i])
}

fn implements_policy(code: &str) -> bool {
    code.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("impl") && (l.contains(" Policy for ") || l.contains("::Policy for "))
    })
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    #[test]
    fn the_repository_is_tidy() {
        if let Err(problems) = super::check(&crate::root()) {
            panic!("tidy:\n{}", problems.join("\n"));
        }
    }

    /// A small repository that keeps every rule: a codemap of `types`, `queue` and `app`,
    /// `queue` on RocksDB, `app` on both.
    fn repository(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("tidy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |path: &str, text: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "docs/ARCHITECTURE.md",
            "# A\n### `crates/types`\n### `crates/queue`\n### `crates/app`\n",
        );
        write(
            "crates/types/Cargo.toml",
            "[package]\nname = \"backstop-types\"\n",
        );
        write(
            "crates/types/src/reply.rs",
            "//! Replies.\nfn ok() -> Reply { Reply::new(250, \"Ok\") }\n",
        );
        write(
            "crates/queue/Cargo.toml",
            "[dependencies]\nbackstop-types.workspace = true\nrocksdb.workspace = true\n",
        );
        write(
            "crates/queue/src/lib.rs",
            "//! The queue.\nuse rocksdb::DB;\n",
        );
        write(
            "crates/app/Cargo.toml",
            "[dependencies]\nbackstop-types.workspace = true\nbackstop-queue = { path = \"../queue\" }\n\n[dev-dependencies]\nrocksdb = \"1\"\n",
        );
        write(
            "crates/app/src/main.rs",
            "//! The app.\nfn main() {}\n#[cfg(test)]\nmod tests {\n    impl Policy for Fake {}\n    fn r() { Reply::new(550, \"no\"); }\n}\n",
        );
        root
    }

    fn problems(root: &Path) -> Vec<String> {
        let found = super::architecture(root);
        std::fs::remove_dir_all(root).unwrap();
        found
    }

    #[test]
    fn a_repository_that_keeps_the_invariants_passes() {
        assert_eq!(problems(&repository("clean")), Vec::<String>::new());
    }

    #[test]
    fn each_invariant_fails_on_a_violation() {
        let cases: [(&str, &str, &str, &str); 6] = [
            (
                "rocksdb-manifest",
                "crates/types/Cargo.toml",
                "[dependencies]\nrocksdb = \"0.25\"\n",
                "crates/types/Cargo.toml: depends on rocksdb",
            ),
            (
                "rocksdb-code",
                "crates/app/src/store.rs",
                "//! A store.\nfn open() { rocksdb::DB::open_default(\"x\"); }\n",
                "crates/app/src/store.rs: uses rocksdb",
            ),
            (
                "policy",
                "crates/backstop/src/serve.rs",
                "//! Wiring.\nimpl backstop_session::Policy for Filter {}\n",
                "crates/backstop/src/serve.rs: implements Policy",
            ),
            (
                "reply",
                "crates/app/src/reply.rs",
                "//! Replies.\nfn no() { Reply::new(550, \"5.1.1 no\"); }\n",
                "crates/app/src/reply.rs: builds a reply with Reply::new",
            ),
            (
                "direction",
                "crates/queue/Cargo.toml",
                "[dependencies]\nbackstop-app.workspace = true\nrocksdb = \"0.25\"\n",
                "crates/queue/Cargo.toml: depends on crates/app, which docs/ARCHITECTURE.md lists after it",
            ),
            (
                "unlisted",
                "crates/extra/Cargo.toml",
                "[package]\nname = \"backstop-extra\"\n",
                "crates/extra: not in docs/ARCHITECTURE.md's codemap",
            ),
        ];
        for (name, path, text, expected) in cases {
            let root = repository(name);
            if path.starts_with("crates/backstop/") {
                // The binary's crate, listed last.
                let map = root.join("docs/ARCHITECTURE.md");
                let listed = std::fs::read_to_string(&map).unwrap() + "### `crates/backstop`\n";
                std::fs::write(&map, listed).unwrap();
                std::fs::create_dir_all(root.join("crates/backstop/src")).unwrap();
                std::fs::write(root.join("crates/backstop/Cargo.toml"), "[package]\n").unwrap();
            }
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, text).unwrap();
            let found = problems(&root);
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{name}: expected {expected:?} in {found:?}"
            );
        }
    }
}
