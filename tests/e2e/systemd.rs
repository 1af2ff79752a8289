//! What systemd sees of a service: `Type=notify` readiness (`READY=1` on `$NOTIFY_SOCKET`
//! once the listeners answer, `RELOADING=1` and `READY=1` around SIGHUP, `STOPPING=1` on
//! SIGTERM), and log lines that carry their syslog priority when standard error is the
//! journal's stream (`$JOURNAL_STREAM`), as systemd starts a service.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::harness::{config, RawClient, BIN};

/// A server started by the test; killed if the test ends before it stopped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Started {
    fn signal(&self, name: &str) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) {
        self.signal("-TERM");
        let status = self.0.wait().unwrap();
        assert!(status.success(), "backstop exited with {status}");
    }
}

/// `backstop serve` on `dir/backstop.toml` with the environment `env` and standard error into
/// `dir/server.log`.
fn serve(dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> (Started, BufReader<ChildStdout>) {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(dir.join("backstop.toml"))
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("starting backstop");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (Started(child), stdout)
}

/// The mx listener's address, from the announcements on standard output.
fn mx_listener(stdout: &mut BufReader<ChildStdout>, dir: &Path) -> SocketAddr {
    let mut line = String::new();
    loop {
        line.clear();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(
            read > 0,
            "no mx listener announced; the log:\n{}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        // "backstop: listener mx (mx) on 127.0.0.1:40123"
        if let Some(rest) = line
            .trim_end()
            .strip_prefix("backstop: listener mx (mx) on ")
        {
            return rest.parse().unwrap();
        }
    }
}

#[test]
fn systemd_hears_ready_when_the_listeners_answer_then_reloads_and_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("backstop.toml"), config(d, "")).unwrap();
    let path = d.join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let heard = || {
        let mut buf = [0u8; 512];
        match socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!(
                "nothing on NOTIFY_SOCKET ({e}); the log:\n{}",
                std::fs::read_to_string(d.join("server.log")).unwrap_or_default()
            ),
        }
    };
    let (server, mut stdout) = serve(d, &[("NOTIFY_SOCKET", path.as_os_str())]);
    assert_eq!(heard(), "READY=1\nSTATUS=serving");
    // Ready means serving: the listener answers at once.
    let mut client = RawClient::connect(mx_listener(&mut stdout, d));
    assert!(client.reply().starts_with("220 "));
    client.command("QUIT");
    // A reload is announced, and its end, even when the config was refused.
    for broken in [false, true] {
        if broken {
            std::fs::write(d.join("backstop.toml"), "bogus = 1\n").unwrap();
        }
        server.signal("-HUP");
        let reloading = heard();
        assert!(
            reloading.starts_with("RELOADING=1\nSTATUS=reloading the config\nMONOTONIC_USEC="),
            "{reloading}"
        );
        assert_eq!(heard(), "READY=1\nSTATUS=serving");
    }
    let stopping = std::thread::scope(|s| {
        let heard = s.spawn(heard);
        server.stop();
        heard.join().unwrap()
    });
    assert_eq!(stopping, "STOPPING=1\nSTATUS=stopping");
}

#[test]
fn under_the_journal_each_log_line_starts_with_its_syslog_priority() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("backstop.toml"), config(d, "")).unwrap();
    // Standard error is the journal's stream when JOURNAL_STREAM names its device and inode;
    // a file stands in for journald's socket.
    let log = d.join("server.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    // serve() creates server.log anew: the same inode, truncated.
    let (server, mut stdout) = serve(
        d,
        &[
            ("JOURNAL_STREAM", stream.as_ref()),
            ("RUST_LOG", "debug".as_ref()),
        ],
    );
    // A session, for debug lines.
    let mut client = RawClient::connect(mx_listener(&mut stdout, d));
    assert!(client.reply().starts_with("220 "));
    client.command("QUIT");
    // An error: a reload refused.
    std::fs::write(d.join("backstop.toml"), "bogus = 1\n").unwrap();
    server.signal("-HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("reload refused")
    {
        assert!(std::time::Instant::now() < deadline, "no reload refused");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        std::fs::metadata(&log).unwrap().ino(),
        meta.ino(),
        "the log is still the file JOURNAL_STREAM names"
    );
    let line = |priority: &str, words: &str| {
        text.lines()
            .any(|l| l.starts_with(priority) && l.contains(words))
    };
    assert!(line("<3>", "reload refused"), "{text}");
    assert!(line("<4>", "generated a self-signed certificate"), "{text}");
    assert!(line("<6>", "queue in"), "{text}");
    assert!(line("<7>", "DEBUG"), "{text}");
    let unmarked: Vec<&str> = text
        .lines()
        .filter(|l| {
            !["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(unmarked.is_empty(), "{unmarked:#?}");
}
