//! The cost of the shared state on the receive path: 50 sessions of 5 KB messages (smtp-source)
//! to backstop with greylisting and rate limits off, then on with the state on the node (the
//! queue's RocksDB, counters in memory), then on with the state in Redis on loopback; the
//! rates, and each as a ratio to the run without them, in one run. Greylisting is passed once
//! before the load (the client's network then passes at once), so every RCPT still reads the
//! greylisting state and every MAIL and RCPT adds to a counter, but nothing is deferred; the
//! limits are set far above the load.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::peers::{free_port, Backstop};
use super::{source, Client, Load};

const LOAD: Load = Load {
    sessions: 50,
    kib: 5,
    recipients: 1,
    messages: 6000,
};

/// A redis-server on 127.0.0.1, stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Result<Redis, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let port = free_port(Ipv4Addr::LOCALHOST)?;
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let stdout = child.stdout.take().ok_or("redis-server: no output")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => return Err(format!("redis-server did not start on port {port}")),
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Redis { child, port })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(binary: &Path, dir: &Path) -> Result<(), String> {
    let redis = Redis::start(&dir.join("redis"))?;
    let base = "[smtp]\nlocal_domains = [\"bench.test\"]\nmax_connections = 20000\n\
                max_connections_per_ip = 20000\n\n[delivery]\npaused = true\n\n\
                [sender_checks]\nenabled = false\n\n[log]\nlevel = \"warn\"\n";
    let checks = "\n[greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"1h\"\n\
                  auto_pass = \"1d\"\n\n[rate_limits]\nclient_messages = \"100000000/1h\"\n\
                  client_recipients = \"100000000/1h\"\n";
    let in_redis = format!(
        "\n[state]\nredis = \"redis://127.0.0.1:{}/0\"\n",
        redis.port
    );
    let runs = [
        ("off", base.to_owned()),
        ("on, state on the node", format!("{base}{checks}")),
        ("on, state in Redis", format!("{base}{checks}{in_redis}")),
    ];
    println!(
        "\nreceive at {} sessions, {} KB messages, {} messages: greylisting and rate limits",
        LOAD.sessions, LOAD.kib, LOAD.messages
    );
    println!("{:>24} | {:>10} | {:>8}", "", "backstop", "b/off");
    let mut off = None;
    for (n, (name, settings)) in runs.iter().enumerate() {
        let server = Backstop::start(binary, &dir.join(format!("state-{n}")), settings)?;
        if n > 0 {
            pass_greylisting(server.address)?;
        }
        let rate = source(server.address, &LOAD)?;
        let accepted = server.metric("smtp_messages_accepted_total")?;
        if accepted != LOAD.messages {
            return Err(format!(
                "{name}: backstop accepted {accepted} of the {} messages sent",
                LOAD.messages
            ));
        }
        let base_rate = *off.get_or_insert(rate);
        println!("{name:>24} | {rate:>10.0} | {:>8.2}", rate / base_rate);
    }
    println!("(messages per second; checked: every message accepted in each run)");
    Ok(())
}

/// Greylisted once, then retried after the delay: the client's network passes from then on.
fn pass_greylisting(address: SocketAddr) -> Result<(), String> {
    let attempt = || -> Result<String, String> {
        let mut c = Client::connect(address)?;
        c.expect("220")?;
        c.send(b"EHLO source.test\r\n")?;
        c.expect("250")?;
        c.send(b"MAIL FROM:<load@source.test>\r\n")?;
        c.expect("250")?;
        c.send(b"RCPT TO:<user@bench.test>\r\n")?;
        let reply = c.reply()?;
        c.send(b"QUIT\r\n")?;
        Ok(reply)
    };
    let first = attempt()?;
    if !first.starts_with("451") {
        return Err(format!(
            "greylisting did not defer the first attempt: {first}"
        ));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let retry = attempt()?;
    if !retry.starts_with("250") {
        return Err(format!("the retry after the delay did not pass: {retry}"));
    }
    Ok(())
}
