//! Developer commands, for what cargo alone cannot do:
//!
//! - `cargo xtask run [ARGS]`: install the build's system packages when missing, build
//!   release, and run `backstop serve` (on the embedded default config unless ARGS say
//!   otherwise, e.g. `-- --config etc/backstop.toml`).
//! - `cargo xtask test`: install the build's system packages and the test peers (Postfix,
//!   swaks, Python) when missing, then run every test of the workspace, then the package test
//!   (below), then every fuzz target for a few seconds (`fuzz.rs`).
//! - `cargo xtask tidy`: the repository's own rules (also run as a test).
//! - `cargo xtask fuzz [TARGET] [--time S | --runs N]`: the fuzz targets in `fuzz/`, on stable
//!   Rust, one after another (see `fuzz.rs`).
//! - `cargo xtask bench [receive|delivery|sick]`: the receive path and memory per idle connection,
//!   then delivery throughput, each beside Postfix and smtp-sink (see `bench.rs`).
//! - `cargo xtask dist [--profile release|dev] [--out DIR]`: the Debian package (see `dist.rs`).
//! - `cargo xtask test-dist`: the package of the debug build installed on this machine with
//!   dpkg, its server started and answering, then removed and purged (see `dist/installed.rs`);
//!   `cargo xtask test` ends with it where `CI=true` or `BACKSTOP_TEST_INSTALL=1`, and says
//!   loudly that it skipped it elsewhere.
//!
//! Set-up uses apt-get when running as root; otherwise it prints the exact command to run.

mod bench;
mod dist;
mod fuzz;
mod setup;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("tidy") => tidy::check(&root()).map_err(|problems| problems.join("\n")),
        Some("bench") => bench::bench(&root(), &args[1..]),
        Some("fuzz") => fuzz::fuzz(&root(), &args[1..]),
        Some("dist") => dist::dist(&root(), &args[1..]),
        Some("test-dist") if args.len() == 1 => dist::test_installed(&root(), None),
        _ => Err(format!(
            "usage: cargo xtask run [-- SERVE-ARGS] | test [-- CARGO-TEST-ARGS] | test-dist | tidy | bench [receive|delivery|sick]\n{}\n{}",
            fuzz::USAGE,
            dist::USAGE
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
/// The workspace: `cargo run` says where xtask's manifest is now. The path compiled in is
/// only a fallback, since a target directory shared between checkouts (as CI's may be) can
/// hold an xtask built in another one.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Where cargo builds: `$CARGO_TARGET_DIR`, else the workspace's `target`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn run(args: &[String]) -> Result<(), String> {
    setup::ensure(setup::BUILD)?;
    let root = root();
    cargo(&root, &["build", "--release", "--package", "backstop"])?;
    let binary = target_dir(&root).join("release/backstop");
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    let mut serve = Command::new(&binary);
    serve.arg("serve").args(&args).current_dir(&root);
    println!(
        "xtask: running {} serve {} in {}",
        binary.display(),
        args.join(" "),
        root.display()
    );
    println!("xtask: try `swaks --server 127.0.0.1:2525 --to user@example.test`; stop with Ctrl-C");
    let status = serve
        .status()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("backstop exited with {status}"))
    }
}

fn test(args: &[String]) -> Result<(), String> {
    setup::ensure(setup::BUILD)?;
    setup::ensure(setup::TEST_PEERS)?;
    setup::ensure(setup::SWAKS)?;
    setup::ensure_npm(setup::TEST_NPM)?;
    let root = root();
    let mut cargo_args = vec!["test", "--workspace"];
    let selected: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    cargo_args.extend(&selected);
    cargo(&root, &cargo_args)?;
    if selected.is_empty() {
        // The binary the end-to-end tests ran, packaged.
        dist::test_installed(&root, Some(target_dir(&root).join("debug/backstop")))?;
        fuzz::smoke(&root)
    } else {
        println!("xtask: a selection of tests was run, so the package test and the fuzz targets were not; `cargo xtask test` alone runs them");
        Ok(())
    }
}

fn cargo(root: &Path, args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .map_err(|e| format!("{cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}
