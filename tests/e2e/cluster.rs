//! A site of two nodes on one Redis or on a 3-master Redis Cluster (`[state]`): two backstop
//! processes on different loopback addresses share greylisting, rate limits, callahead answers
//! and the sent Message-IDs of bounce provenance, and when Redis stops, greylisting answers 451
//! (nothing accepted unchecked) until Redis is back, without a restart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bounces::bounce_returning;
use crate::harness::{config, free_port, have, RawClient, Server};

/// A redis-server of the test's own on 127.0.0.1, killed when dropped (its directory, where a
/// cluster node keeps its nodes.conf, is the site's).
struct Redis {
    child: Child,
}

impl Redis {
    fn start(port: u16, dir: &Path, cluster: bool) -> Redis {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        let mut child = command.spawn().expect("redis-server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => panic!("redis-server on port {port} did not start"),
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Redis { child }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The site's Redis: one server, or a cluster of three masters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    One,
    Cluster,
}

struct Site {
    kind: Kind,
    ports: Vec<u16>,
    dirs: Vec<tempfile::TempDir>,
    running: Vec<Redis>,
}

impl Site {
    /// Starts the site's Redis; `None` (skipped, loudly) when Redis is not installed.
    fn start(kind: Kind, test: &str) -> Option<Site> {
        if !have("redis-server", test) {
            return None;
        }
        let count = if kind == Kind::Cluster { 3 } else { 1 };
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let dirs = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut site = Site {
            kind,
            ports,
            dirs,
            running: Vec::new(),
        };
        site.up();
        if kind == Kind::Cluster {
            let nodes: Vec<String> = site
                .ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            let out = Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&nodes)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .expect("redis-cli");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            site.wait_until_ok();
        }
        Some(site)
    }

    fn up(&mut self) {
        let cluster = self.kind == Kind::Cluster;
        self.running = (self.ports.iter().zip(&self.dirs))
            .map(|(port, dir)| Redis::start(*port, dir.path(), cluster))
            .collect();
    }

    /// Stops every server (a cluster keeps its nodes.conf for [`Site::back`]).
    fn down(&mut self) {
        self.running.clear();
    }

    /// Starts them again, empty; a cluster comes back with its slots.
    fn back(&mut self) {
        self.up();
        if self.kind == Kind::Cluster {
            self.wait_until_ok();
        }
    }

    fn wait_until_ok(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let all_ok = self.ports.iter().all(|p| {
                let out = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
            });
            if all_ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster never came up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `[state]` section that names this Redis.
    fn state(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        match self.kind {
            Kind::One => format!("\n[state]\nredis = \"{}/0\"\ntimeout = \"1s\"\n", urls[0]),
            Kind::Cluster => format!(
                "\n[state]\nredis_cluster = [{}]\ntimeout = \"1s\"\n",
                urls.iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Whether any Message-ID was recorded as sent (`backstop:sent-any`).
    fn anything_sent(&self) -> bool {
        let mut command = Command::new("redis-cli");
        if self.kind == Kind::Cluster {
            command.arg("-c");
        }
        let out = command
            .args([
                "-p",
                &self.ports[0].to_string(),
                "EXISTS",
                "backstop:sent-any",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }
}

/// Node `n` (listening on 127.0.0.`n`) of `site`.
fn node(dir: &Path, n: u8, site: &Site, extra: &str) -> Server {
    let text =
        config(dir, "").replace("127.0.0.1:0", &format!("127.0.0.{n}:0")) + &site.state() + extra;
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

fn greylisting_is_the_sites_and_survives_redis_going_away(kind: Kind, test: &str) {
    let Some(mut site) = Site::start(kind, test) else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Greylisting counts whole seconds: a delay of 3 s lets a retry pass 2 to 3 s after the
    // first attempt, depending on where in its second the first attempt fell.
    let grey =
        "\n[greylist]\nenabled = true\ndelay = \"3s\"\nretry_window = \"1h\"\nauto_pass = \"1d\"\n";
    let a = node(a_dir.path(), 1, &site, grey);
    let b = node(b_dir.path(), 2, &site, grey);
    assert_ne!(a.mx.ip(), b.mx.ip());

    // The first attempt at A is greylisted; the retry after the delay goes to B, the other
    // MX, and passes: B knows what A saw.
    let asked = std::time::Instant::now();
    let first = rcpt(&a, "user@example.test");
    assert!(first.starts_with("451 4.7.1 Greylisted"), "{first}");
    // The first attempt was recorded between `asked` and now.
    let answered = std::time::Instant::now();
    let early = rcpt(&b, "user@example.test");
    // (On a loaded machine 2 s may be over by then: the retry is not early.)
    if asked.elapsed() < Duration::from_millis(1900) {
        assert!(early.starts_with("451 4.7.1 Greylisted"), "{early}");
    }
    std::thread::sleep(Duration::from_millis(3100).saturating_sub(answered.elapsed()));
    let retry = rcpt(&b, "user@example.test");
    assert!(retry.starts_with("250 2.1.5"), "{retry}");
    // The network passed at B: a new triplet passes at A too.
    let other = rcpt(&a, "other@example.test");
    assert!(other.starts_with("250 2.1.5"), "{other}");

    // Redis stops: a new triplet cannot be checked, so it is 451 at both nodes, never 250.
    site.down();
    for server in [&a, &b] {
        let reply = rcpt(server, "new@example.test");
        assert!(reply.starts_with("451 4.4.3"), "{reply}");
    }
    // Redis is back (empty: it kept nothing): both nodes use it again without a restart.
    site.back();
    let mut reply = String::new();
    for _ in 0..100 {
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
fn two_nodes_share_greylisting_and_survive_redis_going_away() {
    let test = "two_nodes_share_greylisting_and_survive_redis_going_away";
    greylisting_is_the_sites_and_survives_redis_going_away(Kind::One, test);
}

#[test]
fn two_nodes_share_greylisting_on_a_redis_cluster_and_survive_it_going_away() {
    let test = "two_nodes_share_greylisting_on_a_redis_cluster_and_survive_it_going_away";
    greylisting_is_the_sites_and_survives_redis_going_away(Kind::Cluster, test);
}

fn a_rate_limit_is_the_sites(kind: Kind, test: &str) {
    let Some(site) = Site::start(kind, test) else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A 30-day window: the count must not start over in the middle of the test.
    let limit = "\n[rate_limits]\nclient_messages = \"3/30d\"\n";
    let a = node(a_dir.path(), 1, &site, limit);
    let b = node(b_dir.path(), 2, &site, limit);
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

#[test]
fn a_rate_limit_is_the_sites_not_each_nodes() {
    a_rate_limit_is_the_sites(Kind::One, "a_rate_limit_is_the_sites_not_each_nodes");
}

#[test]
fn a_rate_limit_is_the_sites_on_a_redis_cluster() {
    a_rate_limit_is_the_sites(
        Kind::Cluster,
        "a_rate_limit_is_the_sites_on_a_redis_cluster",
    );
}

/// AUTH PLAIN as alice with `password` at `server`'s submission port: the reply.
fn login(server: &Server, password: &str) -> String {
    use base64::Engine;
    let mut c = RawClient::connect(server.submission);
    c.reply();
    c.command("EHLO client.example.org");
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0{password}"));
    let reply = c.command(&format!("AUTH PLAIN {token}"));
    c.command("QUIT");
    reply
}

fn failed_logins_are_the_sites(kind: Kind, test: &str) {
    let Some(mut site) = Site::start(kind, test) else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A 30-day window: the count must not start over in the middle of the test.
    let auth = "\n[auth]\nallow_plaintext = true\nmax_failures = 3\nmax_failure_delay = \"1s\"\nfailure_window = \"30d\"\n";
    let a = node(a_dir.path(), 1, &site, auth);
    let b = node(b_dir.path(), 2, &site, auth);
    // Three wrong passwords for the site: two at A, one at B...
    for server in [&a, &b, &a] {
        let reply = login(server, "wrong");
        assert!(reply.starts_with("535"), "{reply}");
    }
    // ...and the right one is no longer checked at either node.
    for server in [&b, &a] {
        let reply = login(server, "secret");
        assert!(reply.starts_with("454 4.7.0"), "{reply}");
    }
    // Redis stops: each node counts on its own, so a login is checked again (never refused
    // for the store's sake), and its guessers are still held back per node.
    site.down();
    let reply = login(&b, "secret");
    assert!(reply.starts_with("235"), "{reply}");
    assert!(b
        .log()
        .contains("failed-login counter of the site unavailable"));
    a.stop();
    b.stop();
}

#[test]
fn failed_logins_are_counted_for_the_site() {
    failed_logins_are_the_sites(Kind::One, "failed_logins_are_counted_for_the_site");
}

#[test]
fn failed_logins_are_counted_for_the_site_on_a_redis_cluster() {
    failed_logins_are_the_sites(
        Kind::Cluster,
        "failed_logins_are_counted_for_the_site_on_a_redis_cluster",
    );
}

/// A next hop that takes every message.
fn accepting_hop() -> std::net::SocketAddr {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                let _ = out.write_all(b"220 hop.test ESMTP\r\n");
                let mut in_data = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let reply: &[u8] = match (in_data, line.get(..4).map(str::to_ascii_uppercase)) {
                        (true, _) if line == ".\r\n" => {
                            in_data = false;
                            b"250 2.0.0 taken\r\n"
                        }
                        (true, _) => continue,
                        (false, Some(v)) if v == "EHLO" => b"250-hop.test\r\n250 8BITMIME\r\n",
                        (false, Some(v)) if v == "DATA" => {
                            in_data = true;
                            b"354 go on\r\n"
                        }
                        (false, Some(v)) if v == "QUIT" => {
                            let _ = out.write_all(b"221 bye\r\n");
                            return;
                        }
                        _ => b"250 2.0.0 ok\r\n",
                    };
                    let _ = out.write_all(reply);
                }
            });
        }
    });
    address
}

/// Mail sent through node A; its bounce comes to node B, which recognises it by the
/// Message-ID A recorded in the site's Redis, and refuses a bounce for mail never sent.
fn a_bounce_is_recognised_at_the_other_node(kind: Kind, test: &str) {
    if !have("swaks", test) {
        return;
    }
    let Some(mut site) = Site::start(kind, test) else {
        return;
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hop = accepting_hop();
    let provenance =
        "\n[batv]\ncheck_bounces = false\n\n[bounce_provenance]\ndomains = [\"example.test\"]\n";
    let route = format!(
        "\n[[route]]\ndomains = [\"elsewhere.example\"]\nrelay = \"{hop}\"\nhost = \"hop.test\"\ntls = \"none\"\n"
    );
    // Both deliver (the template pauses delivery): A to the next hop, B into its Maildirs.
    let delivering = |dir: &Path, n: u8, extra: &str| {
        let text = config(dir, "")
            .replace("127.0.0.1:0", &format!("127.0.0.{n}:0"))
            .replace("[delivery]\npaused = true", "[delivery]\npaused = false")
            + &site.state()
            + extra;
        Server::start(dir, &text)
    };
    let a = delivering(a_dir.path(), 1, &(provenance.to_owned() + &route));
    let b = delivering(b_dir.path(), 2, provenance);
    let sent = a.submit_as_alice(
        "alice@example.test",
        "bob@elsewhere.example",
        &["--header", "Message-ID: <sent-by-a@example.test>"],
    );
    assert!(sent.contains("250 2.0.0"), "{sent}");
    // Until A has delivered it and told the site.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !site.anything_sent() {
        assert!(
            std::time::Instant::now() < deadline,
            "never sent:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ours = bounce_returning(&b, "sent-by-a@example.test");
    assert!(ours.starts_with("250"), "{ours}");
    // B delivers it to the user the bounce is for.
    let delivered = &b.local_mailbox("example.test/user", 1)[0];
    assert!(
        delivered.contains("Message-ID: <sent-by-a@example.test>"),
        "{delivered}"
    );
    let forged = bounce_returning(&b, "never@example.test");
    assert_eq!(
        forged.trim_end(),
        "550 5.7.1 Bounce refused: it returns a message we never sent"
    );
    // Redis stopped: a bounce cannot be checked, so it is not taken (451), ours neither.
    site.down();
    let unchecked = bounce_returning(&b, "sent-by-a@example.test");
    assert!(unchecked.starts_with("451 4.3.0"), "{unchecked}");
    assert_eq!(b.local_mailbox("example.test/user", 1).len(), 1);
    a.stop();
    b.stop();
}

#[test]
fn a_bounce_for_mail_sent_by_one_node_is_recognised_at_the_other() {
    let test = "a_bounce_for_mail_sent_by_one_node_is_recognised_at_the_other";
    a_bounce_is_recognised_at_the_other_node(Kind::One, test);
}

#[test]
fn a_bounce_is_recognised_at_the_other_node_on_a_redis_cluster() {
    let test = "a_bounce_is_recognised_at_the_other_node_on_a_redis_cluster";
    a_bounce_is_recognised_at_the_other_node(Kind::Cluster, test);
}

/// A next hop that knows only bob@example.net, counting the RCPTs it is asked.
fn counting_hop() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let counter = std::sync::Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                let _ = out.write_all(b"220 hop.test ESMTP\r\n");
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-hop.test\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("RCPT") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        if upper.contains("<BOB@EXAMPLE.NET>") {
                            b"250 2.1.5 ok\r\n"
                        } else {
                            b"550 5.1.1 no such user\r\n"
                        }
                    } else if upper.starts_with("QUIT") {
                        let _ = out.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    let _ = out.write_all(reply);
                }
            });
        }
    });
    (address, asked)
}

/// A callahead answer one node got is the other's: B does not ask the next hop again.
fn callahead_answers_are_the_sites(kind: Kind, test: &str) {
    use std::sync::atomic::Ordering;
    let Some(site) = Site::start(kind, test) else {
        return;
    };
    let (hop, asked) = counting_hop();
    let route = format!(
        "\n[[route]]\ndomains = [\"example.net\"]\nrelay = \"{hop}\"\nhost = \"hop.test\"\ntls = \"none\"\ncallahead = true\n"
    );
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = |dir: &Path, n: u8| {
        let text = config(dir, "relay_domains = [\"example.net\"]")
            .replace("127.0.0.1:0", &format!("127.0.0.{n}:0"))
            + &site.state()
            + &route;
        Server::start(dir, &text)
    };
    let (a, b) = (relay(a_dir.path(), 1), relay(b_dir.path(), 2));
    for to in ["bob@example.net", "nobody@example.net"] {
        let reply = rcpt(&a, to);
        let expected = if to.starts_with("bob") {
            "250"
        } else {
            "550 5.1.1"
        };
        assert!(reply.starts_with(expected), "{reply}\n{}", a.log());
    }
    let probes = asked.load(Ordering::SeqCst);
    assert_eq!(probes, 2);
    // B answers both from the site's answers, without a probe of its own.
    assert!(rcpt(&b, "bob@example.net").starts_with("250"));
    assert!(rcpt(&b, "nobody@example.net").starts_with("550 5.1.1"));
    assert_eq!(asked.load(Ordering::SeqCst), probes);
    a.stop();
    b.stop();
}

#[test]
fn callahead_answers_are_shared_by_the_nodes() {
    callahead_answers_are_the_sites(Kind::One, "callahead_answers_are_shared_by_the_nodes");
}

#[test]
fn callahead_answers_are_shared_on_a_redis_cluster() {
    let test = "callahead_answers_are_shared_on_a_redis_cluster";
    callahead_answers_are_the_sites(Kind::Cluster, test);
}
