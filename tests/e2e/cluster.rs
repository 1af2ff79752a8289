//! A site of two nodes on one Redis (`[state] redis`): two backstop processes on different
//! loopback addresses share greylisting and rate limits, and when Redis stops, greylisting
//! answers 451 (nothing accepted unchecked) until Redis is back, without a restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{config, free_port, have, RawClient, Server};

/// A redis-server of the test's own on 127.0.0.1, stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => panic!("redis-server on port {port} did not start"),
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Node `n` (listening on 127.0.0.`n`) of a site whose state is in the Redis at `port`.
fn node(dir: &std::path::Path, n: u8, port: u16, extra: &str) -> Server {
    let text = config(dir, "").replace("127.0.0.1:0", &format!("127.0.0.{n}:0"))
        + &format!("\n[state]\nredis = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"1s\"\n")
        + extra;
    Server::start(dir, &text)
}

/// MAIL and RCPT from a client that is neither local nor authenticated; the RCPT reply.
fn rcpt(server: &Server, address: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO mta.example");
    let mail = c.command("MAIL FROM:<news@example.org>");
    if !mail.starts_with("250") {
        return mail;
    }
    let reply = c.command(&format!("RCPT TO:<{address}>"));
    c.command("QUIT");
    reply
}

#[test]
fn two_nodes_share_greylisting_and_survive_redis_going_away() {
    if !have(
        "redis-server",
        "two_nodes_share_greylisting_and_survive_redis_going_away",
    ) {
        return;
    }
    let port = free_port();
    let redis = Redis::start(port);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let grey =
        "\n[greylist]\nenabled = true\ndelay = \"2s\"\nretry_window = \"1h\"\nauto_pass = \"1d\"\n";
    let a = node(a_dir.path(), 1, port, grey);
    let b = node(b_dir.path(), 2, port, grey);
    assert_ne!(a.mx.ip(), b.mx.ip());

    // The first attempt at A is greylisted; the retry after the delay goes to B, the other
    // MX, and passes: B knows what A saw.
    let first = rcpt(&a, "user@example.test");
    assert!(first.starts_with("451 4.7.1 Greylisted"), "{first}");
    let early = rcpt(&b, "user@example.test");
    assert!(early.starts_with("451 4.7.1 Greylisted"), "{early}");
    std::thread::sleep(Duration::from_millis(2100));
    let retry = rcpt(&b, "user@example.test");
    assert!(retry.starts_with("250 2.1.5"), "{retry}");
    // The network passed at B: a new triplet passes at A too.
    let other = rcpt(&a, "other@example.test");
    assert!(other.starts_with("250 2.1.5"), "{other}");

    // Redis stops: a new triplet cannot be checked, so it is 451 at both nodes, never 250.
    let redis_port = redis.port;
    drop(redis);
    for server in [&a, &b] {
        let reply = rcpt(server, "new@example.test");
        assert!(reply.starts_with("451 4.4.3"), "{reply}");
    }
    // Redis is back (empty: it kept nothing): both nodes use it again without a restart.
    let _redis = Redis::start(redis_port);
    let mut reply = String::new();
    for _ in 0..50 {
        reply = rcpt(&a, "again@example.test");
        if !reply.starts_with("451 4.4.3") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reply.starts_with("451 4.7.1 Greylisted"), "{reply}");
    let reply = rcpt(&b, "again@example.test");
    assert!(reply.starts_with("451 4.7.1 Greylisted"), "{reply}");
    assert!(a.log().contains("greylisting state unavailable"));
    a.stop();
    b.stop();
}

#[test]
fn a_rate_limit_is_the_sites_not_each_nodes() {
    if !have("redis-server", "a_rate_limit_is_the_sites_not_each_nodes") {
        return;
    }
    let port = free_port();
    let _redis = Redis::start(port);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A 30-day window: the count must not start over in the middle of the test.
    let limit = "\n[rate_limits]\nclient_messages = \"3/30d\"\n";
    let a = node(a_dir.path(), 1, port, limit);
    let b = node(b_dir.path(), 2, port, limit);
    let mail = |server: &Server| {
        let mut c = RawClient::connect(server.mx);
        c.reply();
        c.command("EHLO mta.example");
        c.command("MAIL FROM:<news@example.org>")
    };
    // Three messages for the site: two at A, one at B; the fourth is over at either node.
    for server in [&a, &a, &b] {
        let reply = mail(server);
        assert!(reply.starts_with("250"), "{reply}");
    }
    for server in [&b, &a] {
        let reply = mail(server);
        assert!(
            reply.starts_with("451 4.7.1 Rate limit exceeded"),
            "{reply}"
        );
    }
    a.stop();
    b.stop();
}
