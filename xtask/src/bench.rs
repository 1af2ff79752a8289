//! `cargo xtask bench [receive|delivery]`: backstop beside Postfix and `smtp-sink` on this
//! machine, both parts unless one is named.
//!
//! - receive: the receive path, each server driven in turn by Postfix's `smtp-source` with
//!   the same parameters; the latency from the end of DATA to the 250 at 50 sessions; and
//!   backstop's memory: peak RSS, and RSS per idle connection with 2,000 and 10,000 held at
//!   once.
//!   Then the receive rate at 50 sessions with greylisting and rate limits off, on with the
//!   state on the node, and on with the state in Redis (`bench/state.rs`; `cargo xtask bench
//!   state` runs only that).
//! - delivery: how fast queued mail is delivered to `smtp-sink` (see `bench/delivery.rs`),
//!   then the same with a sick destination (a slow receiver, a blackhole) among healthy ones,
//!   and backstop's memory per outbound connection with 10,000 open at once
//!   (`bench/sick.rs`). `cargo xtask bench sick` runs only that last part.
//! - large (only when named): memory with large messages, 200 concurrent 20 MiB transfers and
//!   a queue of 10 MB messages delivered, and the 5 KB receive rate beside an earlier build
//!   (`--baseline BINARY`) and Postfix (`bench/large.rs`).
//! - quarantine (only when named): the console's first page and `quarantine list` with
//!   100,000 messages held, beside Postfix's `postqueue -p` over as many on hold
//!   (`bench/quarantine.rs`).
//!
//! backstop runs its release build on a fresh data directory (250 only after fsync). Postfix
//! is a throw-away instance on loopback whose smtpd puts every message on hold (cleanup writes
//! and fsyncs the queue file, nothing is delivered until released). `smtp-sink` answers the
//! protocol and stores nothing: the ceiling. Postfix needs root (its master drops privileges);
//! without it, or without Postfix, its column says why.

mod delivery;
mod large;
mod peers;
mod quarantine;
mod sick;
mod state;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use peers::{Backstop, Postfix, Sink};

/// One load: how many parallel sessions, message size, recipients per message, messages.
struct Load {
    sessions: usize,
    kib: usize,
    recipients: usize,
    messages: usize,
}

const LOADS: [Load; 5] = [
    Load {
        sessions: 1,
        kib: 5,
        recipients: 1,
        messages: 1000,
    },
    Load {
        sessions: 10,
        kib: 5,
        recipients: 1,
        messages: 4000,
    },
    Load {
        sessions: 50,
        kib: 5,
        recipients: 1,
        messages: 6000,
    },
    Load {
        sessions: 10,
        kib: 100,
        recipients: 1,
        messages: 1000,
    },
    Load {
        sessions: 10,
        kib: 5,
        recipients: 10,
        messages: 3000,
    },
];

/// Idle connections opened to measure what one costs, and how many must be held at once.
const IDLE: [usize; 2] = [2000, 10_000];

/// Open files wanted by backstop and by this process (the idle connections).
const NOFILE: u64 = 20_000;

/// Latency samples: sessions, and messages each sends over its own connection.
const LATENCY_SESSIONS: usize = 50;
const LATENCY_MESSAGES: usize = 100;

pub fn bench(root: &Path, args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) == Some("state") {
        let (binary, dir) = prepare(root)?;
        return finish(state::run(&binary, &dir), &dir);
    }
    if args.first().map(String::as_str) == Some("large") {
        let (binary, dir) = prepare(root)?;
        return finish(large::run(&binary, &dir, &args[1..]), &dir);
    }
    if args.first().map(String::as_str) == Some("quarantine") {
        let (binary, dir) = prepare(root)?;
        return finish(quarantine::run(&binary, &dir, &args[1..]), &dir);
    }
    let (with_receive, with_delivery, with_sick) = match args.first().map(String::as_str) {
        None => (true, true, true),
        Some("receive") => (true, false, false),
        Some("delivery") => (false, true, true),
        Some("sick") => (false, false, true),
        Some(other) => {
            return Err(format!(
                "cargo xtask bench: no part {other:?} (receive, delivery, sick, state, large, quarantine)"
            ))
        }
    };
    let (binary, dir) = prepare(root)?;
    let mut result = Ok(());
    if with_receive {
        result = receive(&binary, &dir);
    }
    if with_delivery && result.is_ok() {
        result = delivery::run(&binary, &dir);
    }
    if with_sick && result.is_ok() {
        result = sick::run(&binary, &dir);
    }
    finish(result, &dir)
}

/// The packages, the release build, and a fresh directory for the servers' files.
fn prepare(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    crate::setup::ensure(crate::setup::BUILD)?;
    crate::setup::ensure(crate::setup::BENCH)?;
    crate::cargo(root, &["build", "--release", "-p", "backstop"])?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("release/backstop");
    let dir = std::env::temp_dir().join(format!("backstop-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok((binary, dir))
}

/// Removes the servers' files after a run that went through; keeps them after a failure.
fn finish(result: Result<(), String>, dir: &Path) -> Result<(), String> {
    match result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(dir);
            Ok(())
        }
        // The servers' logs and configs stay for a look.
        Err(e) => Err(format!(
            "{e}\n(the servers' files are in {})",
            dir.display()
        )),
    }
}

/// The receive path: backstop with delivery paused, and Postfix holding every message.
fn receive(binary: &Path, dir: &Path) -> Result<(), String> {
    let settings = "[smtp]\nlocal_domains = [\"bench.test\"]\nmax_connections = 20000\n\
                    max_connections_per_ip = 20000\nmax_recipients = 1000\n\n\
                    [delivery]\npaused = true\n\n[sender_checks]\nenabled = false\n\n\
                    [log]\nlevel = \"warn\"\n";
    let backstop = Backstop::start(binary, &dir.join("backstop"), settings)?;
    // Room for the idle connections, as far as this machine allows.
    peers::raise_open_files(backstop.pid(), NOFILE);
    let sink = Sink::start(Ipv4Addr::LOCALHOST, None)?;
    // Where Postfix can run, it must: a failed start is an error, not a missing column.
    let postfix = match Postfix::available() {
        Ok(()) => Some(Postfix::start(&dir.join("postfix"), "", None)?),
        Err(why) => {
            println!("xtask bench: no Postfix column: {why}");
            None
        }
    };
    println!(
        "{:>8} {:>6} {:>5} {:>8} | {:>10} {:>10} {:>10} | {:>9} {:>9}",
        "sessions",
        "size",
        "rcpts",
        "messages",
        "backstop",
        "postfix",
        "smtp-sink",
        "b/postfix",
        "b/sink"
    );
    let mut sent = 0;
    for load in &LOADS {
        let ours = source(backstop.address, load)?;
        sent += load.messages;
        let theirs = match &postfix {
            Some(p) => Some(source(p.address, load)?),
            None => None,
        };
        let ceiling = source(sink.address, load)?;
        let ratio =
            |other: Option<f64>| other.map_or("-".to_owned(), |o| format!("{:.2}", ours / o));
        println!(
            "{:>8} {:>5}K {:>5} {:>8} | {:>10.0} {:>10} {:>10.0} | {:>9} {:>9}",
            load.sessions,
            load.kib,
            load.recipients,
            load.messages,
            ours,
            theirs.map_or("-".to_owned(), |t| format!("{t:.0}")),
            ceiling,
            ratio(theirs),
            ratio(Some(ceiling)),
        );
    }
    println!("(messages per second; each server driven by smtp-source with the same parameters)");
    // Every message must really have been taken, not refused quickly.
    let stored = backstop.metric("smtp_messages_accepted_total")?;
    if stored != sent {
        return Err(format!(
            "backstop accepted {stored} of the {sent} messages sent"
        ));
    }
    if let Some(postfix) = &postfix {
        let held = postfix.held();
        if held != sent {
            return Err(format!("Postfix holds {held} of the {sent} messages sent"));
        }
    }
    println!("(checked: backstop accepted, and Postfix holds, all {sent} messages)");
    let (p50, p99) = latency(backstop.address)?;
    println!(
        "end of DATA to 250 at {LATENCY_SESSIONS} sessions ({} messages): p50 {:.2} ms, p99 {:.2} ms",
        LATENCY_SESSIONS * LATENCY_MESSAGES,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let peak = backstop.status("VmHWM:")?;
    println!("backstop peak RSS after the loads: {} KiB", peak);
    peers::raise_open_files(std::process::id(), NOFILE);
    for idle in IDLE {
        let per_connection = idle_cost(&backstop, idle)?;
        println!("backstop RSS per idle connection ({idle} open at once): {per_connection:.1} KiB");
    }
    drop(backstop);
    state::run(binary, dir)
}

/// LATENCY_SESSIONS clients each send LATENCY_MESSAGES 5 KB messages over one connection
/// (pipelining MAIL, RCPT and DATA); the time from the end of the data to the 250, all
/// sessions together: (p50, p99).
fn latency(address: SocketAddr) -> Result<(Duration, Duration), String> {
    let body = message_text("latency");
    let threads: Vec<_> = (0..LATENCY_SESSIONS)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut c = Client::connect(address)?;
                c.expect("220")?;
                c.send(b"EHLO latency.test\r\n")?;
                c.expect("250")?;
                let mut samples = Vec::with_capacity(LATENCY_MESSAGES);
                for _ in 0..LATENCY_MESSAGES {
                    c.send(
                        b"MAIL FROM:<load@source.test>\r\nRCPT TO:<user@bench.test>\r\nDATA\r\n",
                    )?;
                    for code in ["250", "250", "354"] {
                        c.expect(code)?;
                    }
                    c.send(body.as_bytes())?;
                    let sent = Instant::now();
                    c.expect("250")?;
                    samples.push(sent.elapsed());
                }
                Ok(samples)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| "latency client panicked")??);
    }
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

/// A message of about 5 KB (66 lines of 76 characters) with its ending dot line.
fn message_text(subject: &str) -> String {
    let text = vec!["x".repeat(76); 66].join("\r\n");
    format!("From: load@source.test\r\nSubject: {subject}\r\n\r\n{text}\r\n.\r\n")
}

/// A plain SMTP client: replies read whole (multi-line ones too).
struct Client {
    stream: std::io::BufReader<TcpStream>,
}

impl Client {
    fn connect(address: SocketAddr) -> Result<Client, String> {
        let stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        Ok(Client {
            stream: std::io::BufReader::new(stream),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .get_mut()
            .write_all(bytes)
            .map_err(|e| e.to_string())
    }

    fn reply(&mut self) -> Result<String, String> {
        use std::io::BufRead;
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self
                .stream
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed".into());
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(all);
            }
        }
    }

    /// Reads a reply, an error unless it has `code`.
    fn expect(&mut self, code: &str) -> Result<(), String> {
        let reply = self.reply()?;
        if reply.starts_with(code) {
            Ok(())
        } else {
            Err(format!("expected {code}, got: {}", reply.trim_end()))
        }
    }
}

/// Drives `address` with smtp-source under `load`: messages per second.
fn source(address: SocketAddr, load: &Load) -> Result<f64, String> {
    let started = Instant::now();
    let out = Command::new("smtp-source")
        .args(["-s", &load.sessions.to_string()])
        .args(["-m", &load.messages.to_string()])
        .args(["-l", &(load.kib * 1024).to_string()])
        .args(["-r", &load.recipients.to_string()])
        .args([
            "-f",
            "load@source.test",
            "-t",
            "user@bench.test",
            "-M",
            "source.test",
        ])
        .arg(address.to_string())
        .output()
        .map_err(|e| format!("smtp-source: {e}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "smtp-source against {address}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(load.messages as f64 / took.as_secs_f64())
}

/// Opens `count` connections that read the greeting and wait, all at once: backstop's RSS
/// growth per one. Every one must get its greeting.
fn idle_cost(backstop: &Backstop, count: usize) -> Result<f64, String> {
    std::thread::sleep(Duration::from_millis(500));
    let before: f64 = backstop.status("VmRSS:")?.parse().map_err(|_| "VmRSS")?;
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let mut c =
            TcpStream::connect(backstop.address).map_err(|e| format!("idle connection: {e}"))?;
        let mut greeting = [0u8; 128];
        let n = c
            .read(&mut greeting)
            .map_err(|e| format!("idle connection: {e}"))?;
        if !greeting[..n].starts_with(b"220") {
            return Err(format!(
                "idle connection {}: {}",
                open.len() + 1,
                String::from_utf8_lossy(&greeting[..n])
            ));
        }
        open.push(c);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after: f64 = backstop.status("VmRSS:")?.parse().map_err(|_| "VmRSS")?;
    for mut c in open {
        let _ = c.write_all(b"QUIT\r\n");
    }
    // Let them go before the next round.
    std::thread::sleep(Duration::from_secs(1));
    Ok((after - before).max(0.0) / count as f64)
}
