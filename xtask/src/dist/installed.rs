//! The package installed on this machine with the real dpkg, checked, and removed: the last
//! step of `cargo xtask test` when `CI=true` or `BACKSTOP_TEST_INSTALL=1` (it changes the
//! system: a user, /etc, /usr, /var/lib), and `cargo xtask test-dist` alone.
//!
//! 1. The package of the debug build the tests ran (`--profile dev`, stripped, fast
//!    compression): the release build takes RocksDB's 10 minutes, and `cargo xtask dist`
//!    makes the release package the same way.
//! 2. `dpkg -i`: the files with their owners and modes, the user, the BATV key and the
//!    certificate the postinst made, the conffile, the sendmail alternative (beside a Postfix
//!    that has /usr/sbin/sendmail, left as it was), the man pages, the unit
//!    (`systemd-analyze verify`).
//! 3. `backstop check-config` as the service user, on the config as installed.
//! 4. The server started as the unit starts it but without systemd (this host may run none):
//!    as `backstop` with only CAP_NET_BIND_SERVICE, `$NOTIFY_SOCKET` set, in a network
//!    namespace of its own, where port 25 on loopback is free whatever this host runs. It says
//!    `READY=1`; it answers on 127.0.0.1:25 and [::1]:25 with STARTTLS on the generated
//!    certificate; a message to root@localhost lands in its Maildir; `backstop queue list`
//!    finds the installed config and the admin socket; SIGTERM stops it (`STOPPING=1`).
//! 5. `dpkg -r` removes the program and keeps the config, the keys and the data; `dpkg -P`
//!    removes those too, keeps the Maildir that holds mail, and keeps the user (as Debian
//!    keeps system users).
//!
//! The machine is left as it was found, also when a check fails: a guard stops the server,
//! deletes the namespace, purges the package and what it kept, and the user and group if this
//! test made them. It refuses to start where backstop is installed or has left files.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{compression, package, Profile};

/// The link that enables the unit.
const WANTED: &str = "/etc/systemd/system/multi-user.target.wants/backstop.service";

/// Says why the test is not run, loudly; in CI that is a failure.
fn skip(why: &str) -> Result<(), String> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        return Err(format!("the package test cannot run in CI: {why}"));
    }
    println!("\n*** SKIPPED the package test (dpkg -i, start, dpkg -r, dpkg -P): {why} ***\n");
    Ok(())
}

/// Runs the test when asked to (`CI=true` or `BACKSTOP_TEST_INSTALL=1`); says loudly why not
/// otherwise. `binary`: the build to package, built when `None`.
pub fn test_installed(root: &Path, binary: Option<PathBuf>) -> Result<(), String> {
    let asked = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("BACKSTOP_TEST_INSTALL").is_ok_and(|v| v == "1");
    if !asked {
        return skip(
            "it installs backstop system-wide as root; set BACKSTOP_TEST_INSTALL=1 (CI=true runs it)",
        );
    }
    if !crate::setup::is_root() {
        return skip("it needs root (dpkg -i)");
    }
    crate::setup::ensure(crate::setup::DIST)?;
    crate::setup::ensure(crate::setup::INSTALL_TEST)?;
    crate::setup::ensure(crate::setup::SWAKS)?;
    if let Some(status) = package_status()? {
        return Err(format!(
            "backstop is already on this machine ({status}): the test would remove it"
        ));
    }
    for left in ["/etc/backstop", "/var/lib/backstop", "/usr/lib/backstop"] {
        if Path::new(left).exists() {
            return Err(format!(
                "{left} exists: the test would delete it; move it away first"
            ));
        }
    }
    let binary = match binary {
        Some(binary) => binary,
        None => super::build(root, Profile::Dev)?,
    };
    let work = Work::new()?;
    let started = Instant::now();
    let deb = package(
        root,
        &binary,
        &work.0.join("out"),
        compression(Profile::Dev),
    )?;
    println!(
        "xtask: package test: {} built in {:.0?}",
        deb.display(),
        started.elapsed()
    );
    let mut machine = Machine::as_found()?;
    check_package(&deb, &mut machine, &work.0)?;
    println!(
        "xtask: package test passed in {:.0?}: installed, served, removed, purged",
        started.elapsed()
    );
    Ok(())
}

/// The checks, in order; the guard in `machine` undoes whatever was done when one fails.
fn check_package(deb: &Path, machine: &mut Machine, work: &Path) -> Result<(), String> {
    let depends = output("dpkg-deb", &["--field", &path(deb), "Depends"])?;
    for needed in ["libc6 (>=", "libgcc-s1", "libstdc++6", "adduser", "openssl"] {
        check(depends.contains(needed), format!("Depends: {depends}"))?;
    }

    machine.installed = true;
    dpkg(&["--install", &path(deb)])?;
    check(
        package_status()?.as_deref() == Some("install ok installed"),
        "not installed",
    )?;
    check_files()?;
    // Enabled, as Debian's services are (deb-systemd-helper, with or without systemd).
    check(exists(WANTED), format!("{WANTED} is missing: not enabled"))?;
    check_user()?;
    check_secrets()?;
    check_alternative(&machine.sendmail)?;

    // The unit's ExecStartPre, as the unit's user.
    let said = output(
        "runuser",
        &[
            "-u",
            "backstop",
            "--",
            "/usr/sbin/backstop",
            "check-config",
            "/etc/backstop/backstop.toml",
        ],
    )?;
    check(
        said.contains("/etc/backstop/backstop.toml: ok"),
        format!("check-config: {said}"),
    )?;

    serve(machine, work)?;

    dpkg(&["--remove", "backstop"])?;
    check(
        package_status()?.as_deref() == Some("deinstall ok config-files"),
        "not removed",
    )?;
    for gone in [
        "/usr/sbin/backstop",
        "/usr/lib/backstop",
        "/lib/systemd/system/backstop.service",
        "/usr/share/man/man8/backstop.8.gz",
        "/usr/share/doc/backstop",
    ] {
        check(
            !exists(gone),
            format!("{gone} is still there after dpkg -r"),
        )?;
    }
    for kept in [
        "/etc/backstop/backstop.toml",
        "/etc/backstop/batv-1.key",
        "/etc/backstop/tls/privkey.pem",
        "/var/lib/backstop/queue",
    ] {
        check(exists(kept), format!("dpkg -r removed {kept}"))?;
    }
    check(
        !output("update-alternatives", &["--list", "sendmail"])
            .unwrap_or_default()
            .contains("/usr/lib/backstop/sendmail"),
        "the sendmail alternative outlived dpkg -r",
    )?;
    check(
        machine.sendmail == Sendmail::now(),
        "/usr/sbin/sendmail changed",
    )?;

    dpkg(&["--purge", "backstop"])?;
    machine.installed = false;
    check(package_status()?.is_none(), "not purged")?;
    for gone in ["/etc/backstop", WANTED] {
        check(
            !exists(gone),
            format!("{gone} is still there after dpkg -P"),
        )?;
    }
    check(
        Command::new("dpkg-statoverride")
            .args(["--list", "/etc/backstop"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| !s.success()),
        "the stat override of /etc/backstop outlived dpkg -P",
    )?;
    // The mail delivered stays, and only that.
    let left: Vec<String> = std::fs::read_dir("/var/lib/backstop")
        .map_err(|e| format!("/var/lib/backstop after dpkg -P: {e}"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    check(
        left == ["maildir"],
        format!("/var/lib/backstop after dpkg -P: {left:?}"),
    )?;
    check(
        user("backstop").is_some(),
        "the system user was deleted (Debian keeps them)",
    )?;
    Ok(())
}

/// The files the package installs, with their owners and modes.
fn check_files() -> Result<(), String> {
    check_owner("/usr/sbin/backstop", "root", "root", 0o755)?;
    let sections = output(
        "readelf",
        &["--section-headers", "--wide", "/usr/sbin/backstop"],
    )?;
    // (.debug_gdb_scripts stays: it is loaded, a pointer to Rust's pretty printers.)
    check(
        [".symtab", ".debug_info", ".debug_line"]
            .iter()
            .all(|s| !sections.contains(s)),
        "/usr/sbin/backstop is not stripped",
    )?;
    check_owner("/usr/lib/backstop/sendmail", "root", "root", 0o755)?;
    check_owner("/etc/backstop", "root", "backstop", 0o750)?;
    check_owner("/etc/backstop/backstop.toml", "root", "root", 0o644)?;
    check_owner("/var/lib/backstop", "backstop", "backstop", 0o750)?;
    let conffiles = output(
        "dpkg-query",
        &["--show", "--showformat=${Conffiles}", "backstop"],
    )?;
    check(
        conffiles.contains("/etc/backstop/backstop.toml"),
        format!("conffiles: {conffiles}"),
    )?;
    let unit = read("/lib/systemd/system/backstop.service")?;
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/sbin/backstop check-config /etc/backstop/backstop.toml",
        "ExecStart=/usr/sbin/backstop serve --config /etc/backstop/backstop.toml",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        check(
            unit.lines().any(|l| l == line),
            format!("the unit has no {line}"),
        )?;
    }
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let said = output_and_errors(
            "systemd-analyze",
            &["verify", "--man=no", "/lib/systemd/system/backstop.service"],
        )?;
        check(
            said.trim().is_empty(),
            format!("systemd-analyze verify: {said}"),
        )?;
    }
    for page in [
        "backstop.8.gz",
        "backstop-serve.8.gz",
        "backstop-queue-flush.8.gz",
    ] {
        let file = format!("/usr/share/man/man8/{page}");
        let bytes = std::fs::read(&file).map_err(|e| format!("{file}: {e}"))?;
        // gzip -n: no name, no time (bytes 4 to 7 are the time).
        check(
            bytes.starts_with(&[0x1f, 0x8b]) && bytes[4..8] == [0, 0, 0, 0],
            format!("{file} is not gzip -9n"),
        )?;
        let text = output("zcat", &[&file])?;
        check(
            text.contains(".TH backstop"),
            format!("{file}: no man page"),
        )?;
    }
    for doc in ["copyright", "examples/mx.toml", "examples/backstop.toml"] {
        let file = format!("/usr/share/doc/backstop/{doc}");
        check(exists(&file), format!("{file} is missing"))?;
    }
    Ok(())
}

/// The service user: a system account that cannot log in, at home in the data directory.
fn check_user() -> Result<(), String> {
    let entry = user("backstop").ok_or("no user backstop")?;
    let fields: Vec<&str> = entry.split(':').collect();
    let uid: u32 = fields[2].parse().map_err(|_| entry.clone())?;
    check(uid < 1000, format!("backstop is no system user: {entry}"))?;
    check(fields[5] == "/var/lib/backstop", format!("home: {entry}"))?;
    check(fields[6] == "/usr/sbin/nologin", format!("shell: {entry}"))
}

/// The BATV key and the certificate the postinst made: the group may read them, others not.
fn check_secrets() -> Result<(), String> {
    check_owner("/etc/backstop/batv-1.key", "root", "backstop", 0o640)?;
    let key = read("/etc/backstop/batv-1.key")?;
    check(
        key.trim().len() == 64 && key.trim().chars().all(|c| c.is_ascii_hexdigit()),
        "the BATV key is not 32 random bytes in hex",
    )?;
    check_owner("/etc/backstop/tls", "root", "backstop", 0o750)?;
    check_owner("/etc/backstop/tls/privkey.pem", "root", "backstop", 0o640)?;
    check_owner("/etc/backstop/tls/fullchain.pem", "root", "backstop", 0o644)?;
    let cert = output(
        "openssl",
        &[
            "x509",
            "-noout",
            "-subject",
            "-issuer",
            "-ext",
            "subjectAltName",
            "-in",
            "/etc/backstop/tls/fullchain.pem",
        ],
    )?;
    let name = output("sh", &["-c", "hostname --fqdn 2>/dev/null || hostname"])?;
    check(
        cert.contains(&format!("subject=CN = {name}"))
            && cert.contains(&format!("issuer=CN = {name}"))
            && cert.contains(&format!("DNS:{name}")),
        format!("the certificate is not a self-signed one for {name}: {cert}"),
    )
}

/// The sendmail alternative is registered; /usr/sbin/sendmail is ours when there was none,
/// and left alone when another MTA's file was there.
fn check_alternative(before: &Sendmail) -> Result<(), String> {
    let list = output("update-alternatives", &["--list", "sendmail"])?;
    check(
        list.lines().any(|l| l == "/usr/lib/backstop/sendmail"),
        format!("sendmail alternatives: {list}"),
    )?;
    match before {
        Sendmail::Absent => check(
            std::fs::canonicalize("/usr/sbin/sendmail").ok()
                == Some(PathBuf::from("/usr/lib/backstop/sendmail")),
            "/usr/sbin/sendmail does not lead to backstop's",
        ),
        other => check(*other == Sendmail::now(), "/usr/sbin/sendmail was replaced"),
    }
}

/// The installed server, started as its unit would start it, but by this test: see the
/// module's doc.
fn serve(machine: &mut Machine, work: &Path) -> Result<(), String> {
    let netns = format!("bs-package-{}", std::process::id());
    let _ = Command::new("ip")
        .args(["netns", "del", &netns])
        .stderr(Stdio::null())
        .status();
    run("ip", &["netns", "add", &netns])?;
    machine.netns = Some(netns.clone());
    run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;

    // The service user must reach the socket: a directory it may pass, a socket it owns.
    let dir = work.join("notify");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    set_mode(&dir, 0o711)?;
    set_mode(work, 0o711)?;
    let socket_path = dir.join("socket");
    let socket = UnixDatagram::bind(&socket_path).map_err(|e| e.to_string())?;
    let uid: u32 = output("id", &["-u", "backstop"])?
        .parse()
        .map_err(|e| format!("{e}"))?;
    std::os::unix::fs::chown(&socket_path, Some(uid), None).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    // What the unit's RuntimeDirectory=backstop makes for it: /run/backstop, the service
    // user's, open to all (the sendmail socket is there).
    let run_dir = Path::new("/run/backstop");
    if !run_dir.exists() {
        std::fs::create_dir(run_dir).map_err(|e| e.to_string())?;
        machine.run_dir = true;
    }
    std::os::unix::fs::chown(run_dir, Some(uid), None).map_err(|e| e.to_string())?;
    set_mode(run_dir, 0o755)?;
    let log_path = work.join("server.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    // What the unit gives it: its user and group, CAP_NET_BIND_SERVICE alone, no new
    // privileges, a clean environment.
    let child = Command::new("ip")
        .args(["netns", "exec", &netns])
        .args([
            "setpriv",
            "--reuid=backstop",
            "--regid=backstop",
            "--init-groups",
            "--inh-caps=-all,+net_bind_service",
            "--ambient-caps=-all,+net_bind_service",
            "--bounding-set=-all,+net_bind_service",
            "--no-new-privs",
            "--",
            "/usr/sbin/backstop",
            "serve",
            "--config",
            "/etc/backstop/backstop.toml",
        ])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NOTIFY_SOCKET", &socket_path)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting backstop: {e}"))?;
    machine.server = Some(child);
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let heard = || -> Result<String, String> {
        let mut buf = [0u8; 512];
        match socket.recv(&mut buf) {
            Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => Err(format!(
                "nothing on NOTIFY_SOCKET ({e}); the server's log:\n{}",
                server_log()
            )),
        }
    };
    let ready = heard()?;
    check(ready.starts_with("READY=1"), format!("not ready: {ready}"))?;
    println!("xtask: package test: the server said READY=1");

    let in_netns = |program: &str, args: &[&str]| -> Result<String, String> {
        let mut all = vec!["netns", "exec", &netns, program];
        all.extend(args);
        output("ip", &all)
    };
    let said = in_netns(
        "swaks",
        &[
            "--server",
            "127.0.0.1:25",
            "--tls",
            "--from",
            "root@localhost",
            "--to",
            "root@localhost",
            "--header",
            "Subject: the package test",
            "--timeout",
            "20",
        ],
    )?;
    check(
        said.contains("<~  250 2.0.0 Ok: queued as"),
        format!("not taken over STARTTLS:\n{said}\n{}", server_log()),
    )?;
    let said = in_netns(
        "swaks",
        &[
            "--server",
            "[::1]:25",
            "--quit-after",
            "EHLO",
            "--timeout",
            "20",
        ],
    )?;
    check(said.contains("<-  250"), format!("[::1]:25:\n{said}"))?;
    let new = Path::new("/var/lib/backstop/maildir/localhost/root/new");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = std::fs::read_dir(new).map(|d| d.count()).unwrap_or(0);
        if delivered == 1 {
            break;
        }
        check(
            Instant::now() < deadline,
            format!("not delivered into {}:\n{}", new.display(), server_log()),
        )?;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "xtask: package test: 250 over STARTTLS on 127.0.0.1:25, EHLO on [::1]:25, delivered into {}",
        new.display()
    );
    // Any local user sends mail with the sendmail alternative: nobody, who cannot read the
    // config, reaches the server through the socket in /run/backstop, logged in as nobody.
    let mut sendmail = Command::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            "/usr/lib/backstop/sendmail",
            "root@localhost",
        ])
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("runuser: {e}"))?;
    if let Some(mut stdin) = sendmail.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(b"Subject: from cron\n\nsent by /usr/lib/backstop/sendmail\n")
            .map_err(|e| e.to_string())?;
    }
    let sent = sendmail.wait_with_output().map_err(|e| e.to_string())?;
    check(
        sent.status.success(),
        format!(
            "sendmail as nobody: {}\n{}",
            String::from_utf8_lossy(&sent.stderr),
            server_log()
        ),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let from_cron = loop {
        let found = std::fs::read_dir(new)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find(|m| m.contains("Subject: from cron"));
        if let Some(message) = found {
            break message;
        }
        check(
            Instant::now() < deadline,
            format!("sendmail's message not delivered:\n{}", server_log()),
        )?;
        std::thread::sleep(Duration::from_millis(200));
    };
    check(
        from_cron.contains("(Authenticated sender: nobody)"),
        format!("not nobody's:\n{from_cron}"),
    )?;
    println!("xtask: package test: nobody's mail by /usr/lib/backstop/sendmail delivered");
    // The CLI finds the installed config, and the server through its admin socket.
    output("/usr/sbin/backstop", &["queue", "list"])?;

    let mut child = machine.server.take().ok_or("no server")?;
    run("kill", &["-TERM", &child.id().to_string()])?;
    let stopping = heard()?;
    check(
        stopping.starts_with("STOPPING=1"),
        format!("not stopping: {stopping}"),
    )?;
    let status = wait(&mut child, Duration::from_secs(30))?;
    check(
        status.success(),
        format!("backstop exited with {status}:\n{}", server_log()),
    )?;
    check(
        !server_log().contains("ERROR"),
        format!("errors in the log:\n{}", server_log()),
    )?;
    Ok(())
}

/// The policy-rc.d the test puts in place, recognised by its text.
const POLICY: &str = "#!/bin/sh\n# backstop's package test\nexit 101\n";

/// What the test found and what it changed, undone when it ends, however it ends.
struct Machine {
    /// /usr/sbin/sendmail before the test.
    sendmail: Sendmail,
    user_existed: bool,
    group_existed: bool,
    /// The policy-rc.d this test put in place (none was there), which keeps the postinst from
    /// starting the service where systemd runs: this test starts it itself.
    policy: bool,
    /// The package may be on the machine.
    installed: bool,
    netns: Option<String>,
    server: Option<Child>,
    /// /run/backstop was made by the test (as the unit's RuntimeDirectory would be).
    run_dir: bool,
}

impl Machine {
    fn as_found() -> Result<Machine, String> {
        let policy = Path::new("/usr/sbin/policy-rc.d");
        // One this test left when it was killed (no clean-up ran) is its own, and goes too.
        let left_by_us = std::fs::read_to_string(policy).is_ok_and(|t| t == POLICY);
        let own_policy = left_by_us || !policy.exists();
        if own_policy {
            std::fs::write(policy, POLICY).map_err(|e| e.to_string())?;
            set_mode(policy, 0o755)?;
        }
        Ok(Machine {
            sendmail: Sendmail::now(),
            user_existed: user("backstop").is_some(),
            group_existed: group("backstop"),
            policy: own_policy,
            installed: false,
            netns: None,
            server: None,
            run_dir: false,
        })
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(netns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &netns]).status();
        }
        if self.installed || package_status().is_ok_and(|s| s.is_some()) {
            let _ = dpkg(&["--purge", "backstop"]);
        }
        // Left by a failed removal, or kept by the purge (the Maildir); the test refused to
        // start where any was there.
        let _ = Command::new("deb-systemd-helper")
            .args(["purge", "backstop.service"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("update-alternatives")
            .args(["--remove", "sendmail", "/usr/lib/backstop/sendmail"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for dir in ["/var/lib/backstop", "/etc/backstop", "/usr/lib/backstop"] {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.run_dir {
            let _ = std::fs::remove_dir_all("/run/backstop");
        }
        if !self.user_existed && user("backstop").is_some() {
            let _ = Command::new("userdel").arg("backstop").status();
        }
        if !self.group_existed && group("backstop") {
            let _ = Command::new("groupdel").arg("backstop").status();
        }
        if self.policy {
            let _ = std::fs::remove_file("/usr/sbin/policy-rc.d");
        }
    }
}

/// /usr/sbin/sendmail: absent, or a file of that inode, size and time (another MTA's), or a
/// link to where it leads.
#[derive(PartialEq, Debug)]
enum Sendmail {
    Absent,
    File { inode: u64, size: u64, mtime: i64 },
    Link(PathBuf),
}

impl Sendmail {
    fn now() -> Sendmail {
        let path = Path::new("/usr/sbin/sendmail");
        match std::fs::symlink_metadata(path) {
            Err(_) => Sendmail::Absent,
            Ok(meta) if meta.file_type().is_symlink() => {
                Sendmail::Link(std::fs::read_link(path).unwrap_or_default())
            }
            Ok(meta) => Sendmail::File {
                inode: meta.ino(),
                size: meta.size(),
                mtime: meta.mtime(),
            },
        }
    }
}

/// A directory of the test's own under /tmp, deleted at the end.
struct Work(PathBuf);

impl Work {
    fn new() -> Result<Work, String> {
        let dir =
            std::env::temp_dir().join(format!("backstop-package-test-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(Work(dir))
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `dpkg-query`'s status of backstop ("install ok installed", "deinstall ok config-files"),
/// `None` when dpkg knows nothing of it (or only that it was purged).
fn package_status() -> Result<Option<String>, String> {
    let out = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Status}", "backstop"])
        .output()
        .map_err(|e| format!("dpkg-query: {e}"))?;
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(
        (out.status.success() && !status.is_empty() && !status.ends_with("not-installed"))
            .then_some(status),
    )
}

fn dpkg(args: &[&str]) -> Result<(), String> {
    let out = Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("dpkg: {e}"))?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("xtask: dpkg {}\n{}", args.join(" "), said.trim_end());
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("dpkg {} failed ({})", args.join(" "), out.status)),
    }
}

/// `/etc/passwd`'s line for `name`.
fn user(name: &str) -> Option<String> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn group(name: &str) -> bool {
    Command::new("getent")
        .args(["group", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn check_owner(file: &str, owner: &str, group: &str, mode: u32) -> Result<(), String> {
    let said = output("stat", &["--format=%U %G %a", file])?;
    let expected = format!("{owner} {group} {mode:o}");
    check(said == expected, format!("{file}: {said}, not {expected}"))
}

fn check(ok: bool, why: impl Into<String>) -> Result<(), String> {
    match ok {
        true => Ok(()),
        false => Err(format!("package test: {}", why.into())),
    }
}

fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

fn read(file: &str) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    output(program, args).map(|_| ())
}

/// What `program` prints on standard output, trimmed; it must succeed.
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        false => Err(format!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Standard output and error together; the program must succeed.
fn output_and_errors(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.success() {
        true => Ok(said),
        false => Err(format!("{program} {} failed: {said}", args.join(" "))),
    }
}

/// Waits for `child` to exit, at most `limit`.
fn wait(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("backstop did not stop within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
