//! The reference configs as a site would run them, and what made a real Postfix + Dovecot site
//! stop short of switching: every `etc/*.toml` starts as shipped (in a network namespace of
//! its own, where 0.0.0.0 and [::] are loopback alone), an IPv4 client on an IPv6 socket is
//! known by its IPv4 address (DNSBL), bounces of mail sent through the submission config are
//! taken by the MX config, and ordinary inbound mail counts no backscatter.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{config, have, is_root, RawClient, Server, BIN};

/// /etc/backstop laid out as an administrator would (a certificate, a users file, a recipient
/// table, an LDAP password, a DKIM key, the shared BATV secret, the internal server's CA), and
/// each `etc/*.toml` rewritten to use it and a data directory of its own: (file name, text).
pub fn lay_out_etc(dir: &Path) -> (PathBuf, Vec<(String, String)>) {
    let etc =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../etc");
    let conf = dir.join("etc-backstop");
    for sub in ["tls", "dkim"] {
        std::fs::create_dir_all(conf.join(sub)).unwrap();
    }
    let (ca, cert, key) =
        crate::postfix::test_certificate(&conf.join("tls"), "DNS:mx1.example.com");
    std::fs::rename(&cert, conf.join("tls/fullchain.pem")).unwrap();
    std::fs::rename(&key, conf.join("tls/privkey.pem")).unwrap();
    std::fs::rename(&ca, conf.join("internal-ca.pem")).unwrap();
    let hash = crate::harness::hash_password("secret");
    std::fs::write(conf.join("users"), format!("alice:{hash}\n")).unwrap();
    std::fs::write(
        conf.join("recipients"),
        "postmaster@example.com alice@example.com\nalice@example.com\n",
    )
    .unwrap();
    std::fs::write(conf.join("ldap.password"), "secret\n").unwrap();
    // The secret both roles share, made the way the guide says.
    let out = Command::new(BIN)
        .args(["batv", "new-key"])
        .arg(conf.join("batv-1.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::mx::dkim_key(&conf.join("dkim"), "example.com", "rsa");
    let mut configs = Vec::new();
    for entry in std::fs::read_dir(&etc).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = dir.join(format!("data-{name}"));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/etc/backstop", &conf.display().to_string())
            .replace("/var/lib/backstop", &data.display().to_string());
        configs.push((name, text));
    }
    configs.sort();
    (conf, configs)
}

/// A network namespace of a test's own, with its loopback up; deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let name = format!("bs-{name}-{}", std::process::id());
        // A namespace left over by a killed run of the same process id.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    /// `program` with `args`, run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0, program]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every config in etc/ starts as shipped: its listeners bound (0.0.0.0 and [::] on the same
/// port side by side), answering EHLO over IPv4 and IPv6, and it stops on SIGTERM.
#[test]
fn every_config_in_etc_starts_as_shipped() {
    let test = "every_config_in_etc_starts_as_shipped";
    if !is_root(test) || !have("swaks", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, configs) = lay_out_etc(dir.path());
    let mut started = Vec::new();
    for (name, text) in configs {
        let netns = Netns::new(&name.replace(".toml", ""));
        let file = dir.path().join(&name);
        std::fs::write(&file, &text).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let mut child = netns
            .command(BIN)
            .args(["serve", "--config"])
            .arg(&file)
            // backstop.toml's data_dir is relative: "var" under the test's directory.
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let listeners = text.matches("[[listener]]").count();
        let announced = announced(
            &mut child,
            listeners,
            &dir.path().join(format!("{name}.log")),
        );
        for address in &announced {
            let out = netns
                .command("swaks")
                .args([
                    "--server",
                    address,
                    "--quit-after",
                    "EHLO",
                    "--timeout",
                    "20",
                ])
                .args(if address.ends_with(":465") {
                    &["--tlsc"][..]
                } else {
                    &[][..]
                })
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            // "<~" is what swaks shows for a reply under TLS (port 465).
            assert!(
                said.contains("<-  250") || said.contains("<~  250"),
                "{name} on {address}:\n{said}"
            );
        }
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{name} exited with {status}");
        started.push(name);
    }
    assert_eq!(
        started,
        [
            "backstop.toml",
            "edge-relay.toml",
            "mx-and-submission.toml",
            "mx.toml",
            "submission.toml"
        ]
    );
}

/// Reads `child`'s standard output until `count` listeners are announced; their addresses,
/// in a form swaks takes (IPv6 in brackets, wildcards as loopback).
fn announced(child: &mut Child, count: usize, log: &Path) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addresses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while addresses.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!(
                "did not start; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        // "backstop: listener mx6 (mx) on [::]:25"
        if let Some(rest) = line.strip_prefix("backstop: listener ") {
            let address = rest.rsplit(' ').next().unwrap();
            addresses.push(
                address
                    .replace("0.0.0.0:", "127.0.0.1:")
                    .replace("[::]:", "[::1]:"),
            );
        }
    }
    addresses
}

/// An IPv4 client reaching an IPv6 socket arrives as ::ffff:a.b.c.d; it is known by its IPv4
/// address everywhere: the blocklist is asked about 127.0.0.1 (1.0.0.127.bl.test), and the
/// refusal names [127.0.0.1].
#[test]
fn an_ipv4_client_on_an_ipv6_listener_is_looked_up_by_its_ipv4_address() {
    let test = "an_ipv4_client_on_an_ipv6_listener_is_looked_up_by_its_ipv4_address";
    if !have("knotd", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let knot = crate::dns::Knot::start(
        &d.join("knot"),
        &[(
            "bl.test",
            &crate::dns::zone("bl.test", "1.0.0.127 IN A 127.0.0.2"),
        )],
    );
    // The mx listener on an IPv6 socket bound to the IPv4-mapped loopback address: IPv4
    // clients of 127.0.0.1 reach it as ::ffff:127.0.0.1.
    let text = config(d, "").replace(
        "name = \"mx\"\naddress = \"127.0.0.1:0\"",
        "name = \"mx\"\naddress = \"[::ffff:127.0.0.1]:0\"",
    ) + &format!(
        "\n[dns]\nnameservers = [\"{}\"]\n\n[[dnsbl]]\nzone = \"bl.test\"\n",
        knot.address
    );
    let server = Server::start(d, &text);
    assert!(server.mx.is_ipv6(), "{}", server.mx);
    let mut c = RawClient::connect(format!("127.0.0.1:{}", server.mx.port()).parse().unwrap());
    assert!(c.reply().starts_with("220"));
    c.command("EHLO client.example.org");
    let reply = c.command("MAIL FROM:<someone@example.org>");
    assert!(
        reply.starts_with("554 5.7.1") && reply.contains("[127.0.0.1] blocked using bl.test"),
        "{reply}"
    );
    c.command("QUIT");
    server.stop();
    // Only the listening socket's own address is mapped; no client is.
    let log = std::fs::read_to_string(d.join("server.log")).unwrap();
    let mapped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("::ffff:") && !l.contains("backstop: listener mx (mx) on"))
        .collect();
    assert!(mapped.is_empty(), "{mapped:#?}");
}

/// A bounce of mail sent through the submission config, to the tagged return path, is taken
/// by the MX config (they share the BATV key file); an untagged one is refused.
#[test]
fn the_mx_takes_bounces_of_mail_sent_through_submission() {
    let test = "the_mx_takes_bounces_of_mail_sent_through_submission";
    if !have("swaks", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, configs) = lay_out_etc(d);
    let loopback = |text: &str| {
        text.replace("0.0.0.0:25\"", "127.0.0.1:0\"")
            .replace("[::]:25\"", "[::1]:0\"")
            .replace("0.0.0.0:587\"", "127.0.0.1:0\"")
            .replace("0.0.0.0:465\"", "127.0.0.1:0\"")
            .replace("address = \"127.0.0.1:9025\"", "address = \"127.0.0.1:0\"")
            .replace("greeting_delay = \"2s\"", "greeting_delay = \"0s\"")
    };
    let text = |name: &str| {
        loopback(
            &configs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .unwrap(),
        )
    };
    // The submission server holds what alice sends, so its return path can be read.
    let sub_dir = d.join("submission");
    std::fs::create_dir_all(&sub_dir).unwrap();
    let submission = Server::start_named(
        &sub_dir,
        &text("submission.toml").replace("[batv]", "[delivery]\npaused = true\n\n[batv]"),
        &["submission", "submissions"],
    );
    let out = Command::new("swaks")
        .args([
            "--server",
            &submission.addresses["submission"].to_string(),
            "--tls",
        ])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
        ])
        .args(["--from", "alice@example.com", "--to", "someone@example.org"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("<~  250 2.0.0 Ok: queued"), "{said}");
    let (ok, shown) = submission.cli(&["queue", "list", "--json"]);
    assert!(ok, "{shown}");
    submission.stop();
    // Sent from the queue with its BATV-tagged return path: tag it as delivery would.
    let out = Command::new(BIN)
        .args(["batv", "sign", "alice@example.com", "--config"])
        .arg(sub_dir.join("backstop.toml"))
        .output()
        .unwrap();
    let tagged = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(tagged.starts_with("prvs=1"), "{tagged}");

    let mx_dir = d.join("mx");
    std::fs::create_dir_all(&mx_dir).unwrap();
    let mx = Server::start_named(&mx_dir, &text("mx.toml"), &["mx", "mx6"]);
    let mut c = RawClient::connect(mx.addresses["mx"]);
    assert!(c.reply().starts_with("220"));
    c.command("EHLO remote.example.org");
    assert!(c.command("MAIL FROM:<>").starts_with("250"));
    // Taken past BATV (greylisting, which comes next, may ask the sender to come back).
    let reply = c.command(&format!("RCPT TO:<{tagged}>"));
    assert!(
        reply.starts_with("250") || reply.starts_with("451 4.7.1 Greylisted"),
        "{reply}"
    );
    let reply = c.command("RCPT TO:<alice@example.com>");
    assert!(reply.starts_with("550 5.7.1 Bounce refused"), "{reply}");
    c.command("QUIT");
    mx.stop();
}

/// A day of ordinary inbound mail, from senders nobody can verify and without NOTIFY,
/// prevents no backscatter (there was none to prevent) and warns about nothing.
#[test]
fn ordinary_inbound_mail_counts_no_backscatter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(
        d,
        &config(d, "").replace("[delivery]\npaused = true", "[delivery]\npaused = false"),
    );
    for n in 0..30 {
        let mut c = server.ready_for_rcpt();
        assert!(c.command("RCPT TO:<bob@example.test>").starts_with("250"));
        assert!(c.command("DATA").starts_with("354"));
        c.send(format!("Subject: day {n}\r\n\r\nhello\r\n.\r\n").as_bytes());
        assert!(c.reply().starts_with("250"));
        c.command("QUIT");
    }
    server.local_mailbox("example.test/bob", 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (ok, metrics) = server.cli(&["metrics"]);
        assert!(ok, "{metrics}");
        if metrics.contains("dsn_not_requested_total{reason=\"not_requested\"} 30") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metrics.contains("dsn_suppressed_total{reason=\"unverified\"} 0"),
        "{metrics}"
    );
    server.stop();
    let log = std::fs::read_to_string(d.join("server.log")).unwrap();
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("notification")),
        "{log}"
    );
}
