//! The command line: check-config and version.

use std::process::Command;

use crate::harness::BIN;

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[smtp]\nmax_recipients = 100\nmax_message_size = \"ten\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:3: smtp.max_message_size: \"ten\" is not a size like 1048576, \"512k\", \"10M\" or \"1G\"",
            file.display()
        )
    );
}

#[test]
fn check_config_accepts_the_shipped_default() {
    let etc = concat!(env!("CARGO_MANIFEST_DIR"), "/../../etc/backstop.toml");
    let out = Command::new(BIN)
        .args(["check-config", etc])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_prints_the_version() {
    let out = Command::new(BIN).arg("version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("backstop {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_config_stops_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "hostname = \"mx\"\nbogus = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:2: bogus: unknown field `bogus`"),
        "{stderr}"
    );
}
