//! `cargo xtask bench large [--baseline BINARY] [--queue N] [--rate-only]`: memory with large
//! messages, in one run.
//!
//! 1. 200 sessions each send a 20 MiB message at the same time: backstop's RSS when idle, the
//!    highest sampled (every 20 ms) while the transfers and their ends are under way, and
//!    after; every message must be accepted.
//! 2. A queue of N (1,000 by default) 10 MB messages delivered to smtp-sink: the highest RSS
//!    during the delivery, and how long it took.
//! 3. The receive rate of 5 KB messages at 50 sessions, and of 100 KB and 9.5 MB at 10
//!    (smtp-source), this build beside `--baseline` (an earlier build, when given), each twice
//!    in turn, and Postfix.
//!    `--rate-only` runs only this part.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::peers::{Backstop, Postfix, Sink, SINK_IP};
use super::{source, Client, Load};

const SESSIONS: usize = 200;
const TRANSFER_MIB: usize = 20;
const QUEUED_MB: usize = 10;
const PRELOAD_SESSIONS: usize = 8;

pub fn run(binary: &Path, dir: &Path, args: &[String]) -> Result<(), String> {
    let mut baseline = None;
    let mut queue = 1000;
    let mut rate_only = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--baseline" => baseline = args.next().map(PathBuf::from),
            "--queue" => {
                queue = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--queue takes a number")?
            }
            "--rate-only" => rate_only = true,
            other => {
                return Err(format!(
                    "cargo xtask bench large: unknown argument {other:?}"
                ))
            }
        }
    }
    if !rate_only {
        transfers(binary, &dir.join("transfers"))?;
        delivery(binary, &dir.join("delivery"), queue)?;
    }
    receive_rate(binary, baseline.as_deref(), dir)
}

/// The settings of a receiving backstop: delivery paused, room for every session.
const RECEIVE: &str = "[smtp]\nlocal_domains = [\"bench.test\"]\nmax_connections = 2000\n\
                       max_connections_per_ip = 2000\n\n[delivery]\npaused = true\n\n\
                       [sender_checks]\nenabled = false\n\n[log]\nlevel = \"warn\"\n";

/// RSS samples of a process while something runs: the highest seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut highest = 0;
            while !done.load(Ordering::Relaxed) {
                highest = highest.max(rss(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            highest
        });
        Sampler { stop, thread }
    }

    fn highest(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// VmRSS of `pid` in KiB.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
}

/// A message of about `mib` MiB, dot-stuffed, with the end of data.
fn large_data(subject: &str, bytes: usize) -> Vec<u8> {
    let mut m = format!("From: load@source.test\r\nSubject: {subject}\r\n\r\n").into_bytes();
    let line = format!("{}\r\n", "z".repeat(76));
    while m.len() < bytes {
        m.extend_from_slice(line.as_bytes());
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// Sends one message by DATA: the queue id's reply, or why not.
fn send(address: SocketAddr, to: &str, data: &[u8], start: Option<&Barrier>) -> Result<(), String> {
    let mut c = Client::connect(address)?;
    c.expect("220")?;
    c.send(b"EHLO source.test\r\n")?;
    c.expect("250")?;
    c.send(format!("MAIL FROM:<load@source.test>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes())?;
    c.expect("250")?;
    c.expect("250")?;
    c.expect("354")?;
    if let Some(start) = start {
        start.wait();
    }
    for piece in data.chunks(64 * 1024) {
        c.send(piece)?;
    }
    c.expect("250")?;
    c.send(b"QUIT\r\n")
}

fn transfers(binary: &Path, dir: &Path) -> Result<(), String> {
    let backstop = Backstop::start(binary, dir, RECEIVE)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss(backstop.pid()).ok_or("no RSS")?;
    let data = Arc::new(large_data("large", TRANSFER_MIB << 20));
    let start = Arc::new(Barrier::new(SESSIONS + 1));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let (data, start, address) = (Arc::clone(&data), Arc::clone(&start), backstop.address);
            std::thread::spawn(move || send(address, "user@bench.test", &data, Some(&start)))
        })
        .collect();
    let sampler = Sampler::start(backstop.pid());
    start.wait();
    let began = Instant::now();
    let mut failed = Vec::new();
    for t in threads {
        if let Err(e) = t.join().map_err(|_| "a sender panicked".to_owned())? {
            failed.push(e);
        }
    }
    let took = began.elapsed();
    let highest = sampler.highest();
    std::thread::sleep(Duration::from_secs(1));
    let after = rss(backstop.pid()).ok_or("no RSS")?;
    if !failed.is_empty() {
        return Err(format!(
            "{} of {SESSIONS} transfers failed: {}",
            failed.len(),
            failed[0]
        ));
    }
    let accepted = backstop.metric("smtp_messages_accepted_total")?;
    if accepted != SESSIONS {
        return Err(format!("backstop accepted {accepted} of {SESSIONS}"));
    }
    println!(
        "\n{SESSIONS} concurrent {TRANSFER_MIB} MiB DATA transfers ({:.1} s, all accepted): backstop RSS idle {} MiB, \
         highest during {} MiB (+{} MiB), after {} MiB",
        took.as_secs_f64(),
        idle / 1024,
        highest / 1024,
        highest.saturating_sub(idle) / 1024,
        after / 1024
    );
    drop(backstop);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn delivery(binary: &Path, dir: &Path, count: usize) -> Result<(), String> {
    let sink = Sink::start(SINK_IP, Some(count))?;
    let settings = |paused: bool| {
        format!(
            "[smtp]\nlocal_domains = [\"bench.test\"]\nlocal_networks = [\"127.0.0.0/8\"]\n\n\
             [delivery]\npaused = {paused}\n\n[sender_checks]\nenabled = false\n\n\
             [log]\nlevel = \"warn\"\n\n\
             [[route]]\ndomains = [\"relay.test\"]\nrelay = \"{sink}\"\ntls = \"none\"\n",
            sink = sink.address,
        )
    };
    let held = Backstop::start(binary, dir, &settings(true))?;
    let data = Arc::new(large_data("queued", QUEUED_MB * 1_000_000));
    let threads: Vec<_> = (0..PRELOAD_SESSIONS)
        .map(|session| {
            let (data, address) = (Arc::clone(&data), held.address);
            std::thread::spawn(move || {
                for _ in (session..count).step_by(PRELOAD_SESSIONS) {
                    send(address, "user@relay.test", &data, None)?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a sender panicked".to_owned())??;
    }
    drop(held);
    let began = Instant::now();
    let running = Backstop::start(binary, dir, &settings(false))?;
    std::thread::sleep(Duration::from_millis(200));
    let sampler = Sampler::start(running.pid());
    let idle = rss(running.pid()).unwrap_or(0);
    sink.reached(Duration::from_secs(1800))?;
    let highest = sampler.highest();
    println!(
        "delivery of {count} queued {QUEUED_MB} MB messages to smtp-sink: {:.1} s, backstop RSS at start {} MiB, highest {} MiB",
        began.elapsed().as_secs_f64(),
        idle / 1024,
        highest / 1024
    );
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The receive loads compared: 5 KB at 50 sessions, 100 KB and 9.5 MB at 10.
const RATE_LOADS: [Load; 3] = [
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
        // Below Postfix's default message_size_limit (10,240,000 octets).
        kib: 9500,
        recipients: 1,
        messages: 100,
    },
];

fn receive_rate(binary: &Path, baseline: Option<&Path>, dir: &Path) -> Result<(), String> {
    for (n, load) in RATE_LOADS.iter().enumerate() {
        rate(binary, baseline, &dir.join(format!("load-{n}")), load)?;
    }
    Ok(())
}

fn rate(binary: &Path, baseline: Option<&Path>, dir: &Path, load: &Load) -> Result<(), String> {
    let settings = RECEIVE;
    // Each build twice, taking turns, so that what the disk was doing before (the write-back of
    // the runs above) does not fall on one of them alone.
    let mut rows = vec![("this build", binary.to_owned())];
    if let Some(b) = baseline {
        rows.push(("baseline", b.to_owned()));
    }
    let rows = [rows.clone(), rows].concat();
    println!(
        "{} KiB messages at {} sessions (smtp-source, {} messages), messages per second:",
        load.kib, load.sessions, load.messages
    );
    for (n, (name, binary)) in rows.iter().enumerate() {
        let backstop = Backstop::start(binary, &dir.join(format!("rate-{n}")), settings)?;
        let rate = source(backstop.address, load)?;
        println!("  backstop, {name} ({}): {rate:.0}", binary.display());
    }
    match Postfix::available() {
        Ok(()) => {
            let postfix = Postfix::start(&dir.join("postfix-rate"), "", None)?;
            let rate = source(postfix.address, load)?;
            println!("  postfix: {rate:.0}");
        }
        Err(why) => println!("  (no Postfix: {why})"),
    }
    Ok(())
}
