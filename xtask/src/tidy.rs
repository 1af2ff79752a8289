//! The repository's own rules, checked by `cargo xtask tidy` and by `cargo test`:
//! every Rust file opens with a `//!` doc saying what it is for, and no test is skipped
//! with `#[ignore]` or passes by panicking with `#[should_panic]`.

use std::path::{Path, PathBuf};

pub fn check(root: &Path) -> Result<(), Vec<String>> {
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
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
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
    #[test]
    fn the_repository_is_tidy() {
        if let Err(problems) = super::check(&crate::root()) {
            panic!("tidy:\n{}", problems.join("\n"));
        }
    }
}
