//! Starting and stopping the server, and small SMTP helpers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backstop_queue::Queue;
use backstop_types::{Envelope, QueueId};

pub const BIN: &str = env!("CARGO_BIN_EXE_backstop");

/// Whether `tool` is on PATH (or, given as an absolute path, exists: a library's directory).
/// Missing in CI is a failure; elsewhere the test is skipped, loudly.
pub fn have(tool: &str, test: &str) -> bool {
    let found = match tool.starts_with('/') {
        true => Path::new(tool).exists(),
        false => Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    };
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {tool} is not installed, and CI must run every test (cargo xtask test installs it)");
        }
        eprintln!(
            "\n*** SKIPPED {test}: {tool} is not installed (cargo xtask test installs it) ***\n"
        );
    }
    found
}

/// Whether we are root. Tests that start Postfix need it, as its master drops privileges.
pub fn is_root(test: &str) -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    let root = String::from_utf8_lossy(&out.stdout).trim() == "0";
    if !root {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: needs root in CI");
        }
        eprintln!("\n*** SKIPPED {test}: needs root (it starts Postfix) ***\n");
    }
    root
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a peer to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a Python script with Debian's interpreter (where python3-dkim and friends load) and
/// returns its standard output, trimmed; the script must succeed.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .args(args)
        .output()
        .expect("running /usr/bin/python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A running `backstop serve`. Killed when dropped.
pub struct Server {
    child: Child,
    pub mx: SocketAddr,
    pub submission: SocketAddr,
    pub submissions: SocketAddr,
    /// Every listener's address, by its name.
    pub addresses: std::collections::HashMap<String, SocketAddr>,
    pub dir: PathBuf,
}

/// A config with mx, submission and submissions listeners on loopback port 0, plus
/// `smtp_extra` lines for `[smtp]`. Delivery is paused, so that what is received stays in the
/// queue to be looked at: these tests are about the receive path (`delivery.rs` delivers).
pub fn config(dir: &Path, smtp_extra: &str) -> String {
    // Password "secret", argon2id.
    let hash = hash_password("secret");
    format!(
        r#"hostname = "mx.backstop.test"
data_dir = "{data}"

[smtp]
local_domains = ["example.test"]
{smtp_extra}

[delivery]
paused = true

# Off here: the tests that need DNS bring their own server (sender_auth.rs turns this on).
[sender_checks]
enabled = false

[[auth.user]]
name = "alice"
password_hash = "{hash}"

[[listener]]
name = "mx"
address = "127.0.0.1:0"
kind = "mx"

[[listener]]
name = "submission"
address = "127.0.0.1:0"
kind = "submission"

[[listener]]
name = "submissions"
address = "127.0.0.1:0"
kind = "submissions"
"#,
        data = dir.join("var").display()
    )
}

pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("backstop hash-password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Server {
    /// Writes `config` to `dir/backstop.toml` and starts the server on it.
    pub fn start(dir: &Path, config: &str) -> Server {
        let path = dir.join("backstop.toml");
        std::fs::write(&path, config).unwrap();
        Server::start_with(dir, &path)
    }

    /// Starts the server on the config file already in `dir`.
    pub fn restart(dir: &Path) -> Server {
        Server::start_with(dir, &dir.join("backstop.toml"))
    }

    /// Writes `config` to `dir/backstop.toml` and starts the server on it, waiting for the
    /// listeners `names` (a config of its own, such as the reference configs').
    pub fn start_named(dir: &Path, config: &str, names: &[&str]) -> Server {
        let path = dir.join("backstop.toml");
        std::fs::write(&path, config).unwrap();
        Server::start_listening(dir, &path, names)
    }

    fn start_with(dir: &Path, config: &Path) -> Server {
        Server::start_listening(dir, config, &["mx", "submission", "submissions"])
    }

    fn start_listening(dir: &Path, config: &Path, names: &[&str]) -> Server {
        // What an earlier run of this directory logged is not this run's.
        let logged_before = std::fs::metadata(dir.join("server.log")).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(dir);
        // Debug logs for the tests to read, unless the config has a [log] of its own.
        let text = std::fs::read_to_string(config).unwrap_or_default();
        match text.lines().any(|l| l.trim() == "[log]") {
            true => command.env_remove("RUST_LOG"),
            false => command.env("RUST_LOG", "debug"),
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting backstop");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end, also after the test has what it needs, so that the
            // server never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addresses = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // With JSON logs standard output stays empty: the announcements are log events.
        let json = text.contains("format = \"json\"");
        // "backstop: listener mx (mx) on 127.0.0.1:40123"
        let take = |addresses: &mut std::collections::HashMap<String, SocketAddr>, line: &str| {
            if let Some(rest) = line.strip_prefix("backstop: listener ") {
                let addr: SocketAddr = rest.rsplit(' ').next().unwrap().parse().unwrap();
                let name = rest.split(' ').next().unwrap_or_default();
                addresses.insert(name.to_owned(), addr);
            }
        };
        while names.iter().any(|n| !addresses.contains_key(*n)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("backstop did not start; its log:\n{log}");
            }
            if json {
                let log = std::fs::read(dir.join("server.log")).unwrap_or_default();
                let start = usize::try_from(logged_before).unwrap_or(0).min(log.len());
                for line in String::from_utf8_lossy(&log[start..]).lines() {
                    if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
                        if let Some(message) = event["fields"]["message"].as_str() {
                            take(&mut addresses, message);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                take(&mut addresses, &line);
            }
        }
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let named = |n: &str| addresses.get(n).copied().unwrap_or(unspecified);
        Server {
            child,
            mx: named("mx"),
            submission: named("submission"),
            submissions: named("submissions"),
            addresses,
            dir: dir.to_owned(),
        }
    }

    /// SIGKILL: no chance to flush or clean up, as in a crash or power loss of the process.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "backstop exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backstop did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a message with swaks as alice (password "secret") over the submission port,
    /// STARTTLS and AUTH PLAIN; `extra` are more swaks arguments. Returns the transcript.
    pub fn submit_as_alice(&self, from: &str, to: &str, extra: &[&str]) -> String {
        let out = Command::new("swaks")
            .args(["--server", &self.submission.to_string(), "--tls"])
            .args([
                "--auth",
                "PLAIN",
                "--auth-user",
                "alice",
                "--auth-password",
                "secret",
            ])
            .args(["--from", from, "--to", to])
            .args(extra)
            .output()
            .expect("running swaks");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `backstop` with `args` and this server's config; standard output and error.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.dir.join("backstop.toml"))
            .output()
            .expect("running backstop");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// `backstop queue show ID` once the message has had its first delivery attempt.
    pub fn after_first_attempt(&self, id: QueueId) -> String {
        let id = id.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, shown) = self.cli(&["queue", "show", &id]);
            if shown.contains("1 attempt(s)") {
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "never attempted:\n{shown}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until backstop's own Maildir `mailbox` (e.g. `example.test/alice`) holds `count`
    /// messages, and returns them: where reports to a local user such as alice land.
    pub fn local_mailbox(&self, mailbox: &str, count: usize) -> Vec<String> {
        let new = self.dir.join("var/maildir").join(mailbox).join("new");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut messages: Vec<String> = std::fs::read_dir(&new)
                .map(|r| {
                    r.filter_map(Result::ok)
                        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                        .collect()
                })
                .unwrap_or_default();
            if messages.len() >= count {
                messages.sort();
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{mailbox} has {} of {count} messages:\n{}",
                messages.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until message `id` is in quarantine, and returns the reason.
    pub fn quarantined(&self, id: QueueId) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let queue = Queue::open_read_only(&self.dir.join("var/queue")).unwrap();
            if let Some((record, _)) = queue.quarantine_show(id).unwrap() {
                return record.reason.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "not quarantined:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A client on the mx listener, after EHLO and an accepted MAIL FROM:<someone@example.org>,
    /// ready for RCPT.
    pub fn ready_for_rcpt(&self) -> RawClient {
        let mut c = RawClient::connect(self.mx);
        c.reply();
        c.command("EHLO client.example.org");
        let reply = c.command("MAIL FROM:<someone@example.org>");
        assert!(reply.starts_with("250"), "{reply}");
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages in the queue under `dir`, read without disturbing a running server.
pub fn queued(dir: &Path) -> Vec<(QueueId, Envelope, Vec<u8>)> {
    let queue = Queue::open_read_only(&dir.join("var/queue")).expect("opening the queue");
    queue
        .list()
        .unwrap()
        .into_iter()
        .map(|(id, entry)| {
            // A spooled body read back whole: what the server would send.
            let body = queue.message(id).unwrap().unwrap().body.read_all().unwrap();
            (id, entry.envelope, body)
        })
        .collect()
}

/// The queue id in a `250 2.0.0 Ok: queued as ID` reply somewhere in `text`.
pub fn queue_id_in(text: &str) -> QueueId {
    let at = text
        .find("queued as ")
        .unwrap_or_else(|| panic!("no queue id in:\n{text}"));
    text[at + 10..at + 26].parse().unwrap()
}

/// A raw SMTP client for sending exactly the bytes a test wants.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        RawClient::from_stream(TcpStream::connect(addr).unwrap())
    }

    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The connection, e.g. to write from another thread while this one reads.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads one complete reply (all its lines); "" when the server closed the connection.
    pub fn reply(&mut self) -> String {
        loop {
            if let Some(end) = complete_reply(&self.buf) {
                let reply: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8_lossy(&reply).into_owned();
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    return String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a command line and returns the reply.
    pub fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

/// The length of the first complete reply in `buf`: lines up to one with a space after the code.
fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(lf) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + lf + 1];
        start += lf + 1;
        if line.len() >= 4 && line[3] == b' ' || line.len() < 4 {
            return Some(start);
        }
    }
    None
}
