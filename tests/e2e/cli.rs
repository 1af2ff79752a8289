//! The command line: check-config and version.

use std::path::Path;
use std::process::Command;

use crate::harness::BIN;

/// Runs `backstop check-config` on `file`.
fn check_config(file: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .output()
        .expect("running backstop check-config")
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[smtp]\nmax_recipients = 100\nmax_message_size = \"ten\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n",
    )
    .unwrap();
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:3: smtp.max_message_size: \"ten\" is not a size like 1048576, \"512k\", \"10M\" or \"1G\"",
            file.display()
        )
    );
    // Files serve reads at start are read too: a certificate that is not there.
    let missing = dir.path().join("missing-cert.pem");
    std::fs::write(
        &file,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n",
            missing.display(),
            missing.display()
        ),
    )
    .unwrap();
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:2: tls.cert: ", file.display()))
            && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    // Every problem in one run, the text's and the files', one per line, in the file's order.
    std::fs::write(
        &file,
        format!(
            "hostname = \"vm\"\n[smtp]\nmax_recipients = \"many\"\nmax_errors = 0\n\n[recipients]\ntable = \"{}\"\n\n[log]\nlevel = \"verbose\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"pop3\"\n",
            dir.path().join("missing-table").display()
        ),
    )
    .unwrap();
    let out = check_config(&file);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let at = |line: usize, key: &str| format!("{}:{line}: {key}: ", file.display());
    assert_eq!(lines.len(), 5, "{stderr}");
    assert!(
        lines[0].starts_with(&at(3, "smtp.max_recipients")),
        "{stderr}"
    );
    assert!(lines[1].starts_with(&at(4, "smtp.max_errors")), "{stderr}");
    assert!(lines[2].starts_with(&at(7, "recipients.table")), "{stderr}");
    assert!(lines[3].starts_with(&at(10, "log.level")), "{stderr}");
    assert!(lines[4].starts_with(&at(15, "listener.kind")), "{stderr}");
}

/// A config that works but names an unqualified host is accepted with a warning.
#[test]
fn check_config_warns_about_an_unqualified_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.toml");
    std::fs::write(
        &file,
        "hostname = \"vm\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n",
    )
    .unwrap();
    let out = check_config(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "warning: {}:1: hostname: the host name \"vm\" is not fully qualified",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_the_shipped_default() {
    let etc = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../etc/backstop.toml");
    let out = check_config(&etc);
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
    // Both problems, each on its line.
    assert!(
        stderr.contains("bad.toml:2: bogus: unknown key or section bogus; the known ones are")
            && stderr.contains("bad.toml: listener: at least one [[listener]] is needed"),
        "{stderr}"
    );
}

/// A daemon must not die because nobody reads its standard output any more.
#[test]
fn serve_survives_a_closed_stdout() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The address is announced on stdout, which is closed here: pick a free port up front.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = crate::harness::config(d, "").replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(d.join("backstop.toml"), config).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(d.join("backstop.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut greeting = String::new();
    for _ in 0..100 {
        if let Ok(stream) = std::net::TcpStream::connect(addr) {
            let mut c = crate::harness::RawClient::from_stream(stream);
            greeting = c.reply();
            c.command("QUIT");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(greeting.starts_with("220 "), "{greeting:?}");
    assert!(alive, "backstop died after its stdout was closed");
}

/// The systemd unit in etc/ passes `systemd-analyze verify`, pointed at the built binary.
#[test]
fn the_systemd_unit_verifies() {
    if !crate::harness::have("systemd-analyze", "the_systemd_unit_verifies") {
        return;
    }
    let etc = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../etc/backstop.service");
    let unit = std::fs::read_to_string(etc).unwrap();
    assert!(unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backstop.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/backstop", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// Every config in etc/ passes `backstop check-config`, with /etc/backstop laid out as an
/// administrator would (see `roles::lay_out_etc`).
#[test]
fn every_config_in_etc_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let (_, configs) = crate::roles::lay_out_etc(dir.path());
    let mut checked = Vec::new();
    for (name, text) in configs {
        let copy = dir.path().join(&name);
        std::fs::write(&copy, text).unwrap();
        let out = check_config(&copy);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(name);
    }
    assert_eq!(
        checked,
        [
            "backstop.toml",
            "edge-relay.toml",
            "mx-and-submission.toml",
            "mx.toml",
            "submission.toml"
        ]
    );
}

/// `backstop report` sums up a real log, as pflogsumm does Postfix's: from a file, and from
/// standard input as `journalctl ... | backstop report` gives it.
#[test]
fn report_sums_up_the_log() {
    use crate::harness::{config, RawClient, Server};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Delivery on: the local recipient's message goes into its Maildir.
    let server = Server::start(d, &config(d, "").replace("paused = true", "paused = false"));
    let mut c = server.ready_for_rcpt();
    assert!(c
        .command("RCPT TO:<someone@elsewhere.example>")
        .starts_with("554"));
    assert!(c.command("RCPT TO:<user@example.test>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"Subject: counted\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.command("QUIT");
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("QUIT");
    // Wait for the delivery line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !server.log().contains("status=sent") {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server.stop();
    let log = d.join("server.log");
    let out = Command::new(BIN).arg("report").arg(&log).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shown}");
    for line in [
        "         1  accepted\n",
        "         1  delivered (per recipient)\n",
        "         1  refused in session (4xx and 5xx replies)\n",
        "Refusals by the check that decided\n         1  relay\n",
        "Sender domains, by messages accepted\n         1  example.org\n",
        "Recipient domains, by deliveries\n         1  example.test\n",
    ] {
        assert!(shown.contains(line), "{line:?} in:\n{shown}");
    }
    // From standard input, only the last day: the same.
    let out = Command::new(BIN)
        .args(["report", "--since", "1d"])
        .stdin(std::fs::File::open(&log).unwrap())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("         1  accepted\n"));
    let out = Command::new(BIN)
        .args(["report", "--since", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
}

#[test]
fn config_show_prints_values_and_defaults_that_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for name in [
        "mx.toml",
        "submission.toml",
        "edge-relay.toml",
        "mx-and-submission.toml",
    ] {
        let file = root.join("etc").join(name);
        let out = Command::new(BIN)
            .args(["config", "show", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let shown = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            shown.contains("\n[smtp]\n") && shown.contains("max_recipients = "),
            "{shown}"
        );
        // What it prints is a config check-config takes (its files aside: same directory).
        let copy = dir.path().join(name);
        std::fs::write(&copy, &shown).unwrap();
        let reparsed = Command::new(BIN)
            .args(["config", "show", "--config"])
            .arg(&copy)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(reparsed.stdout).unwrap(), shown, "{name}");
    }
    let out = Command::new(BIN)
        .args(["config", "show", "--defaults"])
        .output()
        .unwrap();
    let defaults = String::from_utf8(out.stdout).unwrap();
    assert!(
        defaults.lines().any(|l| l == "max_message_size = \"50M\""),
        "{defaults}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[smtp]\nmax_recipients = \"many\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "show", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("bad.toml:2: smtp.max_recipients"), "{said}");
}

/// `backstop man DIR` writes section-8 pages for the command and every subcommand, generated
/// from the command line (so its options are the binary's), and stays out of the help.
#[test]
fn man_writes_a_page_per_subcommand_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "backstop.8",
        "backstop-serve.8",
        "backstop-check-config.8",
        "backstop-queue.8",
        "backstop-queue-flush.8",
        "backstop-quarantine-release.8",
        "backstop-batv-new-key.8",
        "backstop-report.8",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    assert!(
        pages
            .iter()
            .all(|p| !p.starts_with("backstop-man") && !p.starts_with("backstop-help")),
        "{pages:?}"
    );
    let top = std::fs::read_to_string(dir.path().join("backstop.8")).unwrap();
    assert!(top.contains(".TH backstop 8"), "{top}");
    assert!(top.contains(".SH FILES") && top.contains("/etc/backstop/backstop.toml"));
    let flush = std::fs::read_to_string(dir.path().join("backstop-queue-flush.8")).unwrap();
    assert!(flush.contains("older\\-than"), "{flush}");
    // groff reads every page without a warning.
    if crate::harness::have(
        "groff",
        "man_writes_a_page_per_subcommand_from_the_command_line",
    ) {
        for page in &pages {
            let out = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(dir.path().join(page))
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && said.is_empty(), "{page}: {said}");
        }
    }
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(" man "));
}
