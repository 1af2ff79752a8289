//! `cargo xtask fuzz [TARGET] [--time S | --runs N] [-- LIBFUZZER-ARGS]`: the fuzz targets in
//! `fuzz/` (cargo-fuzz, a workspace of its own), one after another, each in one process with
//! one job; and the short run of every target that `cargo xtask test` ends with (the same as
//! `cargo xtask fuzz --time 10`).
//!
//! Stable Rust: `--sanitizer none` (the default, AddressSanitizer, needs nightly), built once
//! with `-O` (release, with the debug assertions and overflow checks `fuzz/Cargo.toml` turns
//! on). cargo-fuzz is installed with `cargo install cargo-fuzz --locked` when missing.
//!
//! Where things go:
//! - the build: `$CARGO_TARGET_DIR/fuzz` when `CARGO_TARGET_DIR` is set (outside the clone, so
//!   CI's fresh clones reuse it, and apart from the root workspace's build), else
//!   `fuzz/target`;
//! - what the fuzzer finds on its way (its working corpus): `corpus/TARGET` under that build
//!   directory; the committed seeds in `fuzz/corpus/TARGET` are only read;
//! - a crash: `fuzz/artifacts/TARGET/` (git-ignored); the built target replays it when run
//!   with the file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// How long each target runs in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 10;

/// How long each target runs by default.
const DEFAULT_SECONDS: u64 = 60;

/// `cargo xtask fuzz ARGS`: one process at a time, with libFuzzer's single job (no `-jobs`),
/// so fuzzing takes one core.
pub fn fuzz(root: &Path, args: &[String]) -> Result<(), String> {
    let (options, extra) = match args.iter().position(|a| a == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[][..]),
    };
    let mut target = None;
    let mut limit = Limit::Seconds(DEFAULT_SECONDS);
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let mut number = |what: &str| -> Result<u64, String> {
            options
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{what} needs a whole number"))
        };
        match option.as_str() {
            "--time" => limit = Limit::Seconds(number("--time")?),
            "--runs" => limit = Limit::Runs(number("--runs")?),
            name if !name.starts_with('-') && target.is_none() => target = Some(name.to_owned()),
            other => return Err(format!("fuzz: unexpected {other:?}\n{USAGE}")),
        }
    }
    let fuzz = Fuzz::new(root, Profile::Release)?;
    let targets = match target {
        Some(name) if fuzz.targets.contains(&name) => vec![name],
        Some(name) => {
            return Err(format!(
                "no fuzz target {name:?}; there are: {}",
                fuzz.targets.join(", ")
            ))
        }
        None => fuzz.targets.clone(),
    };
    fuzz.build()?;
    for target in &targets {
        fuzz.run(target, limit, extra)?;
    }
    Ok(())
}

pub const USAGE: &str =
    "usage: cargo xtask fuzz [TARGET] [--time SECONDS | --runs N] [-- LIBFUZZER-ARGS]";

/// Every target for [`SMOKE_SECONDS`], as `cargo xtask test` ends.
pub fn smoke(root: &Path) -> Result<(), String> {
    let started = Instant::now();
    // Unoptimised: built from nothing in under 3 minutes on 2 cores where the optimised build
    // takes 5, and a 10 s run is about finding a crash on the way, not about speed.
    let fuzz = Fuzz::new(root, Profile::Dev)?;
    fuzz.build()?;
    for target in &fuzz.targets {
        fuzz.run(target, Limit::Seconds(SMOKE_SECONDS), &[])?;
    }
    println!(
        "xtask: {} fuzz targets ran {SMOKE_SECONDS} s each without a crash ({} s with the build)",
        fuzz.targets.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// How the targets are built: optimised for the long runs, unoptimised (quick to build) for
/// the smoke. Both keep overflow checks; the long runs keep debug assertions too (but
/// mail-parser's, see `fuzz/Cargo.toml`), the smoke has none (see `cargo_fuzz`). They live
/// side by side in the build directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    Release,
    Dev,
}

#[derive(Clone, Copy)]
enum Limit {
    Seconds(u64),
    Runs(u64),
}

struct Fuzz {
    /// `fuzz/`, cargo-fuzz's project.
    dir: PathBuf,
    /// The fuzz workspace's build directory.
    target_dir: PathBuf,
    targets: Vec<String>,
    profile: Profile,
}

impl Fuzz {
    fn new(root: &Path, profile: Profile) -> Result<Fuzz, String> {
        ensure_cargo_fuzz()?;
        let dir = root.join("fuzz");
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(shared) => PathBuf::from(shared).join("fuzz"),
            None => dir.join("target"),
        };
        let list = cargo()
            .args(["fuzz", "list"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("cargo fuzz list: {e}"))?;
        if !list.status.success() {
            return Err(format!(
                "cargo fuzz list failed: {}",
                String::from_utf8_lossy(&list.stderr)
            ));
        }
        let targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if targets.is_empty() {
            return Err("cargo fuzz list names no target".into());
        }
        Ok(Fuzz {
            dir,
            target_dir,
            targets,
            profile,
        })
    }

    /// Every target, in one cargo build.
    fn build(&self) -> Result<(), String> {
        let started = Instant::now();
        let mut build = self.cargo_fuzz("build");
        run(&mut build)?;
        println!(
            "xtask: fuzz targets built in {} s ({})",
            started.elapsed().as_secs(),
            self.target_dir.display()
        );
        Ok(())
    }

    fn run(&self, target: &str, limit: Limit, extra: &[String]) -> Result<(), String> {
        let work = self.target_dir.join("corpus").join(target);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let seeds = self.dir.join("corpus").join(target);
        let limit = match limit {
            Limit::Seconds(s) => format!("-max_total_time={s}"),
            Limit::Runs(n) => format!("-runs={n}"),
        };
        let mut command = self.cargo_fuzz("run");
        command
            .arg(target)
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(&limit)
            // An input that takes this long is a hang, and a bug.
            .arg("-timeout=30")
            .args(extra);
        println!("xtask: fuzzing {target} ({limit})");
        run(&mut command).map_err(|e| {
            format!(
                "{e}\nthe input is in {}; replay it with `{} FILE`",
                self.dir.join("artifacts").join(target).display(),
                self.binary(target).display()
            )
        })
    }

    /// The built target: cargo-fuzz builds for an explicit target triple (the host's).
    fn binary(&self, target: &str) -> PathBuf {
        let profile = match self.profile {
            Profile::Release => "release",
            Profile::Dev => "debug",
        };
        std::fs::read_dir(&self.target_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|triple| triple.path().join(profile).join(target))
            .find(|binary| binary.is_file())
            .unwrap_or_else(|| self.target_dir.join("TRIPLE").join(profile).join(target))
    }

    /// `cargo fuzz VERB --sanitizer none -O --target-dir ...` in `fuzz/` (`--dev` for the
    /// smoke).
    fn cargo_fuzz(&self, verb: &str) -> Command {
        let profile = match self.profile {
            Profile::Release => "-O",
            Profile::Dev => "--dev",
        };
        let mut command = cargo();
        command
            .args(["fuzz", verb, "--sanitizer", "none", profile, "--target-dir"])
            .arg(&self.target_dir)
            .current_dir(&self.dir);
        if self.profile == Profile::Dev {
            // cargo-fuzz adds `-Cdebug-assertions` to RUSTFLAGS for every crate of an
            // unoptimised build, over `fuzz/Cargo.toml`'s exception for mail-parser, whose
            // `debug_assert!(false, "Invalid part ID ...")` fires on damaged MIME that release
            // builds recover from (`seed-nested-empty-rfc822.eml`). cargo-fuzz puts the
            // caller's RUSTFLAGS last, so these win: the smoke builds without debug
            // assertions anywhere (as backstop ships), with overflow checks kept.
            let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
            flags.push_str(" -Cdebug-assertions=off -Coverflow-checks=on");
            command.env("RUSTFLAGS", flags.trim_start());
        }
        command
    }
}

/// cargo-fuzz, installed when missing: CI must fuzz, never skip it.
fn ensure_cargo_fuzz() -> Result<(), String> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!(
        "xtask: cargo-fuzz is missing; installing it with `cargo install cargo-fuzz --locked`"
    );
    run(cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// The cargo that runs xtask.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("{command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}
