//! A real authoritative DNS server on loopback: Knot DNS, serving the zones a test gives it.
//! Stopped when dropped.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Knot {
    child: Child,
    pub address: SocketAddr,
}

impl Knot {
    /// Serves `zones` (origin, zone file text) from `dir` on 127.0.0.1 at a free port. A port
    /// another test took between the check and knotd's bind is tried again with a new one.
    pub fn start(dir: &Path, zones: &[(&str, &str)]) -> Knot {
        let mut last = String::new();
        for _ in 0..3 {
            match Knot::try_start(dir, zones) {
                Ok(knot) => return knot,
                Err(log) => last = log,
            }
        }
        panic!("knotd did not start:\n{last}");
    }

    fn try_start(dir: &Path, zones: &[(&str, &str)]) -> Result<Knot, String> {
        let zone_dir = dir.join("zones");
        std::fs::create_dir_all(&zone_dir).unwrap();
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        // A port free for UDP; TCP on the same number is usually free too (else: try again).
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = format!(
            "server:\n    rundir: \"{run}\"\n    listen: 127.0.0.1@{port}\n\
             database:\n    storage: \"{db}\"\n\
             log:\n  - target: stderr\n    any: info\n\
             template:\n  - id: default\n    storage: \"{zones}\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\n\
             zone:\n",
            run = dir.join("run").display(),
            db = dir.join("db").display(),
            zones = zone_dir.display(),
        );
        for (origin, text) in zones {
            std::fs::write(zone_dir.join(format!("{origin}.zone")), text).unwrap();
            conf.push_str(&format!("  - domain: {origin}\n"));
        }
        let conf_file = dir.join("knot.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let log_file = dir.join("knotd.log");
        let log = std::fs::File::create(&log_file).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting knotd");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        // Dropped (knotd stopped) on every early return.
        let knot = Knot { child, address };
        let read_log = || std::fs::read_to_string(&log_file).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(address).is_err() {
            if Instant::now() >= deadline {
                return Err(read_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Zones are loaded after the sockets open: wait until the log says each one is.
        for (origin, _) in zones {
            while !read_log()
                .lines()
                .any(|l| l.contains(&format!("[{origin}.]")) && l.contains("loaded"))
            {
                if Instant::now() >= deadline + Duration::from_secs(10) {
                    return Err(read_log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(knot)
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A zone file: SOA and NS, then `records` (relative names, one per line).
pub fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n\
         @ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n\
         @ IN NS ns.{origin}.\n\
         ns IN A 127.0.0.1\n\
         {records}\n"
    )
}

/// What [`Faulty`] does to a query for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers SERVFAIL, as a broken authoritative server or a failing recursor does.
    ServFail,
    /// Never answers: the client times out.
    Silence,
}

/// A DNS front on 127.0.0.1 that passes queries over UDP to a real server (Knot) except for
/// the names it is told to fail: the temporary-error paths Knot itself never takes for a zone
/// it serves. Stopped when dropped.
pub struct Faulty {
    pub address: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Faulty {
    /// Fronts `upstream`; `faults` are (query name without the final dot, query type number
    /// or 0 for any type, fault).
    pub fn start(upstream: SocketAddr, faults: &[(&str, u16, Fault)]) -> Faulty {
        use std::sync::atomic::{AtomicBool, Ordering};
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let faults: Vec<(String, u16, Fault)> = faults
            .iter()
            .map(|(name, qtype, fault)| (name.to_ascii_lowercase(), *qtype, *fault))
            .collect();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut packet = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, client)) = socket.recv_from(&mut packet) else {
                    continue;
                };
                let query = &packet[..n];
                let fault = question(query).and_then(|(name, qtype, _)| {
                    faults
                        .iter()
                        .find(|(n, t, _)| *n == name && (*t == 0 || *t == qtype))
                        .map(|(_, _, f)| *f)
                });
                let answer = match fault {
                    Some(Fault::Silence) => None,
                    Some(Fault::ServFail) => servfail(query),
                    None => forward(upstream, query),
                };
                if let Some(answer) = answer {
                    let _ = socket.send_to(&answer, client);
                }
            }
        });
        Faulty {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The question of a query: its name (lower case, no final dot), type, and the offset just
/// past the question section.
fn question(query: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// A SERVFAIL reply to `query`: its id and question, no records.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let (_, _, end) = question(query)?;
    let mut reply = query.get(..end)?.to_vec();
    reply[2] = 0x80 | (query[2] & 0x79); // QR, the opcode and RD of the query
    reply[3] = 0x80 | 2; // RA, RCODE 2
    reply[6..12].fill(0); // no answer, authority or additional records
    Some(reply)
}

/// Asks `upstream` and gives back its answer.
fn forward(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    socket.send_to(query, upstream).ok()?;
    let mut answer = vec![0u8; 4096];
    let n = socket.recv(&mut answer).ok()?;
    answer.truncate(n);
    Some(answer)
}
