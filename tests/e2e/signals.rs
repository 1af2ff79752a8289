//! SIGHUP and SIGTERM while clients keep sending: a reload changes the rules for new sessions
//! without dropping one (a broken config changes nothing), and a stop loses no message that
//! got a 250.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop_types::QueueId;

use crate::harness::{config, queue_id_in, queued, RawClient, Server};

/// One message in a session of its own; the queue id, or what went wrong.
fn one_session(addr: SocketAddr, n: usize) -> Result<QueueId, String> {
    let mut c = RawClient::connect(addr);
    let greeting = c.reply();
    if !greeting.starts_with("220") {
        return Err(greeting);
    }
    for (command, expect) in [
        ("EHLO load.example", "250"),
        ("MAIL FROM:<load@example.org>", "250"),
        ("RCPT TO:<user@example.test>", "250"),
        ("DATA", "354"),
    ] {
        let reply = c.command(command);
        if !reply.starts_with(expect) {
            return Err(format!("{command}: {reply}"));
        }
    }
    c.send(format!("Subject: load {n}\r\n\r\n{}\r\n.\r\n", "x".repeat(3000)).as_bytes());
    let reply = c.reply();
    c.command("QUIT");
    match reply.starts_with("250 2.0.0 Ok: queued as") {
        true => Ok(queue_id_in(&reply)),
        false => Err(reply),
    }
}

fn hangup(server: &Server) {
    let pid = server.pid().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
}

/// The SIZE a new session's EHLO announces.
fn size(server: &Server) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    let ehlo = c.command("EHLO client.example");
    c.command("QUIT");
    ehlo.lines()
        .find_map(|l| {
            l.strip_prefix("250-SIZE ")
                .or_else(|| l.strip_prefix("250 SIZE "))
        })
        .unwrap_or_else(|| panic!("no SIZE in {ehlo}"))
        .trim()
        .to_owned()
}

#[test]
fn a_reload_under_load_loses_no_session_and_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let with_size = |size: &str| config(d, &format!("max_message_size = \"{size}\""));
    let server = Server::start(d, &with_size("1M"));
    assert_eq!(size(&server), "1048576");
    let file = d.join("backstop.toml");

    let accepted: Arc<Mutex<Vec<QueueId>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..8 {
        let (addr, accepted, failures, done) = (
            server.mx,
            Arc::clone(&accepted),
            Arc::clone(&failures),
            Arc::clone(&done),
        );
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match one_session(addr, t * 100_000 + n) {
                    Ok(id) => accepted.lock().unwrap().push(id),
                    Err(e) => failures.lock().unwrap().push(e),
                }
                n += 1;
            }
        }));
    }
    // Reload ten times under load, one of them with a broken config. Each reload is waited
    // for (signals that arrive together count once, and the file must be read as written).
    let reloads =
        |log: &str| log.matches("config reloaded").count() + log.matches("reload refused").count();
    for round in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        let text = match round {
            5 => "this is = not [ toml".to_owned(),
            _ => with_size(if round % 2 == 0 { "2M" } else { "1M" }),
        };
        let before = reloads(&server.log());
        std::fs::write(&file, text).unwrap();
        hangup(&server);
        let deadline = Instant::now() + Duration::from_secs(20);
        while reloads(&server.log()) == before {
            assert!(Instant::now() < deadline, "no reload:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::fs::write(&file, with_size("3M")).unwrap();
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    while size(&server) != "3145728" {
        assert!(
            Instant::now() < deadline,
            "the reload did not take:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let log = server.log();
    let ids: HashSet<QueueId> = queued(d).into_iter().map(|(id, _, _)| id).collect();
    server.stop();

    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "sessions failed: {failures:?}");
    let accepted = accepted.lock().unwrap();
    assert!(
        accepted.len() >= 50,
        "only {} messages: too little load",
        accepted.len()
    );
    assert!(accepted.iter().all(|id| ids.contains(id)));
    assert_eq!(ids.len(), accepted.len());
    assert!(
        log.contains("reload refused: the config has errors"),
        "{log}"
    );
    assert!(log.matches("config reloaded").count() >= 10, "{log}");
}

#[test]
fn a_reload_that_needs_a_restart_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, ""));
    let file = d.join("backstop.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen("name = \"mx\"", "name = \"inbound\"", 1),
    )
    .unwrap();
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server
        .log()
        .contains("reload refused: this change needs a restart")
    {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still serving, as before.
    assert_eq!(size(&server), "52428800");
    // [quarantine] is set up at start too.
    let refused = server.log().matches("reload refused").count();
    std::fs::write(&file, text.clone() + "\n[quarantine]\ndigest = \"1h\"\n").unwrap();
    hangup(&server);
    while server.log().matches("reload refused").count() == refused {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.log().contains("[quarantine] changed"),
        "{}",
        server.log()
    );
    server.stop();
}

/// `[log] level` is applied on SIGHUP; `[log] format` needs a restart, and says so.
#[test]
fn a_reload_changes_the_log_level_and_refuses_a_new_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = config(d, "") + "\n[log]\nlevel = \"info\"\n";
    let server = Server::start(d, &text);
    let session = || {
        let mut c = RawClient::connect(server.mx);
        c.reply();
        c.command("QUIT");
    };
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    session();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!server.log().contains("DEBUG"), "{}", server.log());
    let file = d.join("backstop.toml");
    std::fs::write(&file, text.replace("level = \"info\"", "level = \"debug\"")).unwrap();
    hangup(&server);
    wait_for("log level changed");
    session();
    wait_for("DEBUG");
    std::fs::write(
        &file,
        text.replace("level = \"info\"", "level = \"debug\"\nformat = \"json\""),
    )
    .unwrap();
    hangup(&server);
    wait_for("reload refused: this change needs a restart");
    assert!(
        server.log().contains("log.format changed"),
        "{}",
        server.log()
    );
    server.stop();
}

#[test]
fn sigterm_under_load_loses_no_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, ""));
    let accepted: Arc<Mutex<Vec<QueueId>>> = Arc::default();
    let mut threads = Vec::new();
    for c in 0..10 {
        let (addr, accepted) = (server.mx, Arc::clone(&accepted));
        threads.push(std::thread::spawn(move || {
            crate::crash::client(addr, 100_000, c, &accepted);
        }));
    }
    let started = Instant::now();
    while accepted.lock().unwrap().len() < 30 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Once messages are flowing, a clean stop: the sessions are told 421, the messages being stored are finished.
    server.stop();
    for t in threads {
        t.join().unwrap();
    }
    let accepted = accepted.lock().unwrap();
    assert!(
        accepted.len() >= 20,
        "only {} messages: too little load",
        accepted.len()
    );
    let ids: HashSet<QueueId> = queued(d).into_iter().map(|(id, _, _)| id).collect();
    let lost: Vec<&QueueId> = accepted.iter().filter(|id| !ids.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} accepted message(s) lost: {lost:?}",
        lost.len()
    );
    assert_eq!(ids.len(), accepted.len());
}

#[test]
fn a_reload_reaches_the_delivery_agent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // example.net is first only relayed, with no route: its mail waits in the queue.
    let relayed = config(d, "relay_domains = [\"example.net\"]")
        .replace("[delivery]\npaused = true", "[delivery]\npaused = false");
    let server = Server::start(d, &relayed);
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    c.command("MAIL FROM:<sender@example.org>");
    assert!(c.command("RCPT TO:<bob@example.net>").starts_with("250"));
    c.command("DATA");
    c.send(b"Subject: waiting\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.command("QUIT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("no route") {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Now example.net is a local domain: after the reload the agent delivers it here.
    let local = relayed
        .replace("relay_domains = [\"example.net\"]", "")
        .replace(
            "local_domains = [\"example.test\"]",
            "local_domains = [\"example.test\", \"example.net\"]",
        );
    std::fs::write(d.join("backstop.toml"), local).unwrap();
    hangup(&server);
    while !server.log().contains("config reloaded") {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, said) = server.cli(&["queue", "flush"]);
    assert!(ok, "{said}");
    let delivered = server.local_mailbox("example.net/bob", 1);
    assert!(
        delivered[0].contains("Subject: waiting"),
        "{}",
        delivered[0]
    );
    server.stop();
}

#[test]
fn sigterm_lets_a_transaction_under_way_finish() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, ""));
    let mut idle = RawClient::connect(server.mx);
    idle.reply();
    idle.command("EHLO idle.example");
    let mut busy = RawClient::connect(server.mx);
    busy.reply();
    busy.command("EHLO busy.example");
    busy.command("MAIL FROM:<sender@example.org>");
    busy.command("RCPT TO:<user@example.test>");
    assert!(busy.command("DATA").starts_with("354"));
    busy.send(b"Subject: under way\r\n\r\nfirst half\r\n");
    let pid = server.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The idle session is told at once.
    assert!(idle.reply().starts_with("421 4.3.2"), "{}", server.log());
    // The one under way finishes its message, and then hears 421 too.
    std::thread::sleep(Duration::from_millis(300));
    busy.send(b"second half\r\n.\r\n");
    let done = busy.reply();
    assert!(
        done.starts_with("250 2.0.0 Ok: queued as"),
        "{done}\n{}",
        server.log()
    );
    assert!(busy.reply().starts_with("421 4.3.2"));
    let id = queue_id_in(&done);
    server.stop();
    assert!(queued(d).iter().any(|(i, _, _)| *i == id));
    // Our own 421s are not refusals of the clients.
    let log = std::fs::read_to_string(d.join("server.log")).unwrap();
    assert_eq!(log.matches("closed: shutting down").count(), 2, "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("refused") && l.contains("4.3.2")),
        "{log}"
    );
}

#[test]
fn sigterm_does_not_wait_for_a_silent_receiver() {
    use std::io::{BufRead, BufReader, Write};
    // A next hop that takes the message and never answers its end: a transaction stuck for
    // RFC 5321's ten minutes.
    let hop = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = hop.local_addr().unwrap();
    let got_data = Arc::new(Mutex::new(false));
    let seen = Arc::clone(&got_data);
    std::thread::spawn(move || {
        for stream in hop.incoming() {
            let Ok(stream) = stream else { return };
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                let _ = out.write_all(b"220 silent.test\r\n");
                let mut data = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if data {
                        if line == ".\r\n" {
                            *seen.lock().unwrap() = true;
                        }
                        continue;
                    }
                    let reply: &[u8] = match line.get(..4) {
                        Some("EHLO") => b"250 silent.test\r\n",
                        Some("DATA") => {
                            data = true;
                            b"354 go\r\n"
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = out.write_all(reply);
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let grace = 2;
    let cfg = config(d, &format!("shutdown_grace = \"{grace}s\""))
        .replace("[delivery]\npaused = true", "[delivery]\npaused = false")
        + &format!(
            "\n[[route]]\ndomains = [\"silent.example\"]\nrelay = \"{address}\"\nhost = \"silent.test\"\ntls = \"none\"\n"
        );
    let server = Server::start(d, &cfg);
    let transcript = server.submit_as_alice("alice@example.test", "someone@silent.example", &[]);
    let id = queue_id_in(&transcript);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !*got_data.lock().unwrap() {
        assert!(Instant::now() < deadline, "never sent:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = Instant::now();
    server.stop();
    // Within the grace (and a margin for the process to end), not RFC 5321's ten minutes.
    assert!(
        stopped.elapsed() < Duration::from_secs(grace + 5),
        "{:?}",
        stopped.elapsed()
    );
    // Nothing lost: still queued, and due again at once.
    let left = queued(d);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, id);
}

/// The memory budget is the server's across reloads: SIGHUP changes its limit, and the metric
/// follows (a new budget per reload would let old and new sessions hold twice the limit, and
/// leave the metric on the first one).
#[test]
fn a_reload_changes_the_memory_limit_of_the_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = config(d, "max_message_size = \"1M\"\nmax_message_memory = \"3M\"");
    let server = Server::start(d, &text);
    let limit = |server: &Server| {
        let (ok, metrics) = server.cli(&["metrics"]);
        assert!(ok, "{metrics}");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("smtp_message_memory_limit_bytes "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert_eq!(limit(&server), "3145728");
    std::fs::write(
        d.join("backstop.toml"),
        text.replace("max_message_memory = \"3M\"", "max_message_memory = \"5M\""),
    )
    .unwrap();
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    while limit(&server) != "5242880" {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}
