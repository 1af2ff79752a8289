//! `cargo xtask bench`: the receive path of backstop beside Postfix and `smtp-sink` on this
//! machine, driven in turn by Postfix's `smtp-source` with the same parameters; the latency
//! from the end of DATA to the 250 at 50 sessions; and backstop's memory: peak RSS, and RSS
//! per idle connection with 2,000 and 10,000 held at once.
//!
//! backstop runs its release build on a fresh data directory (250 only after fsync, delivery
//! paused). Postfix is a throw-away instance on loopback whose smtpd puts every message on
//! hold (cleanup writes and fsyncs the queue file, nothing is delivered): its receive path
//! only. `smtp-sink` answers the protocol and stores nothing: the ceiling. Postfix needs root
//! (its master drops privileges); without it, or without Postfix, its column says why.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

pub fn bench(root: &Path) -> Result<(), String> {
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
    let result = run(&binary, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(binary: &Path, dir: &Path) -> Result<(), String> {
    let backstop = Backstop::start(binary, &dir.join("backstop"))?;
    let postfix = match Postfix::start(&dir.join("postfix")) {
        Ok(postfix) => Some(postfix),
        Err(why) => {
            println!("xtask bench: no Postfix column: {why}");
            None
        }
    };
    let sink = Sink::start()?;
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
    let stored = backstop.accepted()?;
    if stored != sent {
        return Err(format!(
            "backstop accepted {stored} of the {sent} messages sent"
        ));
    }
    if let Some(postfix) = &postfix {
        let held = postfix.held()?;
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
    raise_open_files(std::process::id());
    for idle in IDLE {
        let per_connection = idle_cost(&backstop, idle)?;
        println!("backstop RSS per idle connection ({idle} open at once): {per_connection:.1} KiB");
    }
    Ok(())
}

/// Raises the open-file limit of `pid` to NOFILE, as far as its hard limit allows.
fn raise_open_files(pid: u32) {
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={NOFILE}:{NOFILE}"),
        ])
        .stderr(Stdio::null())
        .status();
}

/// LATENCY_SESSIONS clients each send LATENCY_MESSAGES 5 KB messages over one connection
/// (pipelining MAIL, RCPT and DATA); the time from the end of the data to the 250, all
/// sessions together: (p50, p99).
fn latency(address: SocketAddr) -> Result<(Duration, Duration), String> {
    // About 5 KB: 66 lines of 76 characters.
    let text = vec!["x".repeat(76); 66].join("\r\n");
    let body = format!("From: load@source.test\r\nSubject: latency\r\n\r\n{text}\r\n.\r\n");
    let threads: Vec<_> = (0..LATENCY_SESSIONS)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut c = Client::connect(address)?;
                c.reply()?;
                c.send(b"EHLO latency.test\r\n")?;
                c.reply()?;
                let mut samples = Vec::with_capacity(LATENCY_MESSAGES);
                for _ in 0..LATENCY_MESSAGES {
                    c.send(
                        b"MAIL FROM:<load@source.test>\r\nRCPT TO:<user@bench.test>\r\nDATA\r\n",
                    )?;
                    for expect in ["250", "250", "354"] {
                        let reply = c.reply()?;
                        if !reply.starts_with(expect) {
                            return Err(format!("latency client: {reply}"));
                        }
                    }
                    c.send(body.as_bytes())?;
                    let sent = Instant::now();
                    let reply = c.reply()?;
                    samples.push(sent.elapsed());
                    if !reply.starts_with("250") {
                        return Err(format!("latency client: {reply}"));
                    }
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

fn free_port() -> Result<u16, String> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port())
}

fn wait_for(address: SocketAddr, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not start on {address}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

struct Backstop {
    child: Child,
    address: SocketAddr,
    binary: PathBuf,
    config: PathBuf,
}

impl Backstop {
    fn start(binary: &Path, dir: &Path) -> Result<Backstop, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let port = free_port()?;
        let config = format!(
            "hostname = \"bench.backstop.test\"\ndata_dir = \"{data}\"\n\n\
             [smtp]\nlocal_domains = [\"bench.test\"]\nmax_connections = 20000\n\
             max_connections_per_ip = 20000\nmax_recipients = 1000\n\n\
             [delivery]\npaused = true\n\n[sender_checks]\nenabled = false\n\n\
             [log]\nlevel = \"warn\"\n\n\
             [[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:{port}\"\nkind = \"mx\"\n",
            data = dir.join("var").display()
        );
        let file = dir.join("backstop.toml");
        std::fs::write(&file, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        // Room for the idle connections, as far as this machine allows.
        raise_open_files(child.id());
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let backstop = Backstop {
            child,
            address,
            binary: binary.to_owned(),
            config: file,
        };
        wait_for(address, "backstop")?;
        Ok(backstop)
    }

    /// Messages accepted so far, from its metrics.
    fn accepted(&self) -> Result<usize, String> {
        let out = Command::new(&self.binary)
            .args(["metrics", "--config"])
            .arg(&self.config)
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("smtp_messages_accepted_total "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| {
                format!(
                    "no count in backstop's metrics: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// A line of /proc/PID/status, e.g. `VmHWM:`, its number (KiB).
    fn status(&self, key: &str) -> Result<String, String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| e.to_string())?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_end_matches(" kB").to_owned())
            .ok_or_else(|| format!("no {key} in /proc status"))
    }
}

impl Drop for Backstop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A Postfix instance of its own that holds what it receives.
struct Postfix {
    conf: PathBuf,
    dir: PathBuf,
    address: SocketAddr,
}

impl Postfix {
    fn start(dir: &Path) -> Result<Postfix, String> {
        if !Path::new("/usr/sbin/postfix").exists() {
            return Err("Postfix is not installed".into());
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            return Err("a Postfix instance needs root".into());
        }
        let conf = dir.join("etc");
        for d in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        sh(
            "chown",
            &["postfix", &dir.join("data").display().to_string()],
        )?;
        let port = free_port()?;
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
                 maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\nmyhostname = postfix.bench.test\nmydestination = bench.test\n\
                 inet_interfaces = loopback-only\nmynetworks = 127.0.0.0/8\nlocal_recipient_maps =\n\
                 alias_maps =\nalias_database =\nsmtpd_tls_security_level = none\n\
                 smtpd_recipient_limit = 1000\n\
                 smtpd_client_restrictions = check_client_access static:HOLD\n",
                d = dir.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            conf.join("master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd\n\
                 cleanup   unix n - n - 0 cleanup\n\
                 qmgr      unix n - n 300 1 qmgr\n\
                 rewrite   unix - - n - - trivial-rewrite\n\
                 bounce    unix - - n - 0 bounce\n\
                 defer     unix - - n - 0 bounce\n\
                 trace     unix - - n - 0 bounce\n\
                 proxymap  unix - - n - - proxymap\n\
                 anvil     unix - - n - 1 anvil\n\
                 postlog   unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let conf_arg = conf.display().to_string();
        sh("postfix", &["-c", &conf_arg, "start"])?;
        let postfix = Postfix {
            conf,
            dir: dir.to_owned(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        wait_for(postfix.address, "postfix")?;
        Ok(postfix)
    }
}

impl Postfix {
    /// Messages in its hold queue (a file each, in hashed subdirectories or not).
    fn held(&self) -> Result<usize, String> {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => count(&e.path()),
                        Ok(_) => 1,
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        Ok(count(&self.dir.join("spool/hold")))
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .args(["-c", &self.conf.display().to_string(), "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// smtp-sink: the protocol, nothing stored.
struct Sink {
    child: Child,
    address: SocketAddr,
}

impl Sink {
    fn start() -> Result<Sink, String> {
        let port = free_port()?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new("smtp-sink");
        if Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .arg(address.to_string())
            .arg("1024")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("smtp-sink: {e}"))?;
        let sink = Sink { child, address };
        wait_for(address, "smtp-sink")?;
        Ok(sink)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
