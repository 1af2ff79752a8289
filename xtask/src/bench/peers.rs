//! The servers a benchmark run starts, each stopped when dropped: backstop's release build,
//! a throw-away Postfix instance, `smtp-sink` and Knot DNS.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The loopback address the delivery runs' smtp-sink and MX host are on: not 127.0.0.1, which
/// Postfix counts as itself (mail to an MX that is itself "loops back to myself").
pub const SINK_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The loopback address Knot serves on as root: port 53, since the C library's resolver
/// (Postfix's) asks nameservers on no other port.
const DNS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 153);

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A port free on `ip` just now.
pub fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    Ok(TcpListener::bind((ip, 0))
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

/// A command for `program`, run under `prlimit` with `files` open files when given.
fn with_files(program: &std::ffi::OsStr, files: Option<u64>) -> Command {
    match files {
        Some(n) => {
            let mut command = Command::new("prlimit");
            command
                .arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

pub fn sh(program: &str, args: &[&str]) -> Result<(), String> {
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

/// Raises the open-file limit of `pid` to `limit`, as far as its hard limit allows.
pub fn raise_open_files(pid: u32, limit: u64) {
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .stderr(Stdio::null())
        .status();
}

pub struct Backstop {
    child: Child,
    pub address: SocketAddr,
    binary: PathBuf,
    config: PathBuf,
}

impl Backstop {
    /// Runs `binary` with its data in `dir`, an MX listener on a free port and `settings`
    /// (TOML tables) for the rest.
    pub fn start(binary: &Path, dir: &Path, settings: &str) -> Result<Backstop, String> {
        Backstop::start_with_files(binary, dir, settings, None)
    }

    /// [`Backstop::start`], with room for `files` open files from the first moment (for
    /// thousands of connections).
    pub fn start_with_files(
        binary: &Path,
        dir: &Path,
        settings: &str,
        files: Option<u64>,
    ) -> Result<Backstop, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let port = free_port(Ipv4Addr::LOCALHOST)?;
        let config = format!(
            "hostname = \"bench.backstop.test\"\ndata_dir = \"{data}\"\n\n{settings}\n\
             [[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:{port}\"\nkind = \"mx\"\n",
            data = dir.join("var").display()
        );
        let file = dir.join("backstop.toml");
        std::fs::write(&file, config).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .map_err(|e| e.to_string())?;
        let mut command = with_files(binary.as_os_str(), files);
        let child = command
            .args(["serve", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One value of its metrics (`smtp_messages_accepted_total`, `queue_messages`).
    pub fn metric(&self, name: &str) -> Result<usize, String> {
        let out = Command::new(&self.binary)
            .args(["metrics", "--config"])
            .arg(&self.config)
            .output()
            .map_err(|e| e.to_string())?;
        let prefix = format!("{name} ");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| {
                format!(
                    "no {name} in backstop's metrics: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// A line of /proc/PID/status, e.g. `VmHWM:`, its number (KiB).
    pub fn status(&self, key: &str) -> Result<String, String> {
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

/// A Postfix instance of its own on loopback. Its smtpd puts every message on hold (cleanup
/// writes and fsyncs the queue file); [`Postfix::release`] lets the held mail be delivered.
pub struct Postfix {
    conf: PathBuf,
    dir: PathBuf,
    pub address: SocketAddr,
}

impl Postfix {
    /// Whether an instance can run here: Postfix installed, and root (its master drops
    /// privileges); if not, why.
    pub fn available() -> Result<(), String> {
        if !Path::new("/usr/sbin/postfix").exists() {
            return Err("Postfix is not installed".into());
        }
        if !is_root() {
            return Err("a Postfix instance needs root".into());
        }
        Ok(())
    }

    /// `transport` is its transport map (texthash: "domain transport:nexthop" lines). With
    /// `dns`, it runs in a mount namespace of its own whose /etc/resolv.conf names that server
    /// only.
    pub fn start(dir: &Path, transport: &str, dns: Option<&Knot>) -> Result<Postfix, String> {
        Postfix::available()?;
        let conf = dir.join("etc");
        for d in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        sh(
            "chown",
            &["postfix", &dir.join("data").display().to_string()],
        )?;
        let port = free_port(Ipv4Addr::LOCALHOST)?;
        std::fs::write(conf.join("transport"), transport).map_err(|e| e.to_string())?;
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
                 maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\nmyhostname = postfix.bench.test\nmydestination = bench.test\n\
                 inet_interfaces = loopback-only\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\nlocal_recipient_maps =\n\
                 alias_maps =\nalias_database =\nsmtpd_tls_security_level = none\n\
                 smtpd_recipient_limit = 1000\n\
                 smtpd_client_restrictions = check_client_access static:HOLD\n\
                 transport_maps = texthash:{d}/etc/transport\n",
                d = dir.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            conf.join("master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd\n\
                 cleanup   unix n - n - 0 cleanup\n\
                 pickup    unix n - n 60 1 pickup\n\
                 qmgr      unix n - n 300 1 qmgr\n\
                 rewrite   unix - - n - - trivial-rewrite\n\
                 bounce    unix - - n - 0 bounce\n\
                 defer     unix - - n - 0 bounce\n\
                 trace     unix - - n - 0 bounce\n\
                 flush     unix n - n 1000? 0 flush\n\
                 showq     unix n - n - - showq\n\
                 smtp      unix - - n - - smtp\n\
                 error     unix - - n - - error\n\
                 retry     unix - - n - - error\n\
                 scache    unix - - n - 1 scache\n\
                 proxymap  unix - - n - - proxymap\n\
                 anvil     unix - - n - 1 anvil\n\
                 postlog   unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let conf_arg = conf.display().to_string();
        match dns {
            None => sh("postfix", &["-c", &conf_arg, "start"])?,
            Some(knot) => {
                let resolv = dir.join("resolv.conf");
                std::fs::write(&resolv, format!("nameserver {}\n", knot.address.ip()))
                    .map_err(|e| e.to_string())?;
                let script = format!(
                    "mount --bind '{}' /etc/resolv.conf && exec postfix -c '{conf_arg}' start",
                    resolv.display()
                );
                sh(
                    "unshare",
                    &["--mount", "--propagation", "private", "sh", "-c", &script],
                )?
            }
        }
        let postfix = Postfix {
            conf,
            dir: dir.to_owned(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        wait_for(postfix.address, "postfix")?;
        Ok(postfix)
    }

    /// Messages in its queue directories `names` (a file each, in hashed subdirectories or
    /// not).
    pub fn queued(&self, names: &[&str]) -> usize {
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
        names
            .iter()
            .map(|name| count(&self.dir.join("spool").join(name)))
            .sum()
    }

    /// Messages on hold.
    pub fn held(&self) -> usize {
        self.queued(&["hold"])
    }

    /// Messages anywhere in its queue.
    pub fn in_queue(&self) -> usize {
        self.queued(&["maildrop", "incoming", "active", "deferred", "hold"])
    }

    /// Lets every held message go, and asks for delivery now (postsuper -H, postqueue -f).
    pub fn release(&self) -> Result<(), String> {
        let conf = self.conf.display().to_string();
        sh("postsuper", &["-c", &conf, "-H", "ALL"])?;
        sh("postqueue", &["-c", &conf, "-f"])
    }

    /// Recipients its log says were delivered (`status=sent`).
    pub fn sent(&self) -> usize {
        std::fs::read_to_string(self.dir.join("maillog"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" status=sent "))
            .count()
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

/// smtp-sink: the protocol, nothing stored. With a count wanted, it reports each message it
/// takes (`-c`) and the time the count is reached is kept.
pub struct Sink {
    child: Child,
    pub address: SocketAddr,
    reached: Option<mpsc::Receiver<Instant>>,
    /// Messages taken so far, when counting.
    taken: Arc<AtomicUsize>,
}

impl Sink {
    pub fn start(ip: Ipv4Addr, count_to: Option<usize>) -> Result<Sink, String> {
        Sink::start_with(ip, count_to, &[], None)
    }

    /// [`Sink::start`] with more of smtp-sink's options (`-w 30`: wait before the reply to
    /// DATA), and room for `files` open files.
    pub fn start_with(
        ip: Ipv4Addr,
        count_to: Option<usize>,
        options: &[&str],
        files: Option<u64>,
    ) -> Result<Sink, String> {
        let address = SocketAddr::from((ip, free_port(ip)?));
        let mut command = with_files(std::ffi::OsStr::new("smtp-sink"), files);
        if is_root() {
            command.args(["-u", "nobody"]);
        }
        if count_to.is_some() {
            command.arg("-c");
        }
        let backlog = files.map_or("1024".to_owned(), |n| n.to_string());
        let mut child = command
            .args(options)
            .arg(address.to_string())
            .arg(backlog)
            .stdout(if count_to.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("smtp-sink: {e}"))?;
        let taken = Arc::new(AtomicUsize::new(0));
        let reached = match (count_to, child.stdout.take()) {
            (Some(target), Some(out)) => {
                let (tx, rx) = mpsc::channel();
                let taken = Arc::clone(&taken);
                // "sess=N quit=N mesg=N\r" after each event.
                std::thread::spawn(move || {
                    for line in BufReader::new(out).split(b'\r') {
                        let Ok(line) = line else { return };
                        let messages = String::from_utf8_lossy(&line)
                            .split_whitespace()
                            .find_map(|f| f.strip_prefix("mesg=")?.parse::<usize>().ok());
                        if let Some(n) = messages {
                            taken.store(n, Ordering::Relaxed);
                            if n == target {
                                let _ = tx.send(Instant::now());
                            }
                        }
                    }
                });
                Some(rx)
            }
            _ => None,
        };
        let sink = Sink {
            child,
            address,
            reached,
            taken,
        };
        wait_for(address, "smtp-sink")?;
        Ok(sink)
    }

    /// Messages taken so far (when counting).
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    /// When the count given at the start was reached; an error after `limit`.
    pub fn reached(&self, limit: Duration) -> Result<Instant, String> {
        self.reached
            .as_ref()
            .ok_or("smtp-sink does not count")?
            .recv_timeout(limit)
            .map_err(|_| {
                format!(
                    "smtp-sink took {} messages in {limit:?}, not all",
                    self.taken()
                )
            })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Knot DNS serving zones from `dir`. As root on 127.0.0.153 port 53, where the C library's
/// resolver can ask it; otherwise on a free port of 127.0.0.1 (for backstop alone).
pub struct Knot {
    child: Child,
    pub address: SocketAddr,
}

impl Knot {
    pub fn start(dir: &Path, zones: &[(&str, String)]) -> Result<Knot, String> {
        let address = if is_root() {
            SocketAddr::from((DNS_IP, 53))
        } else {
            SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?))
        };
        for d in ["zones", "db", "run"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        let mut conf = format!(
            "server:\n    rundir: \"{run}\"\n    listen: {ip}@{port}\n\
             database:\n    storage: \"{db}\"\n\
             log:\n  - target: stderr\n    any: info\n\
             template:\n  - id: default\n    storage: \"{zones}\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\n\
             zone:\n",
            run = dir.join("run").display(),
            ip = address.ip(),
            port = address.port(),
            db = dir.join("db").display(),
            zones = dir.join("zones").display(),
        );
        for (origin, text) in zones {
            std::fs::write(dir.join("zones").join(format!("{origin}.zone")), text)
                .map_err(|e| e.to_string())?;
            conf.push_str(&format!("  - domain: {origin}\n"));
        }
        let conf_file = dir.join("knot.conf");
        std::fs::write(&conf_file, conf).map_err(|e| e.to_string())?;
        let log_file = dir.join("knotd.log");
        let log = std::fs::File::create(&log_file).map_err(|e| e.to_string())?;
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("knotd: {e}"))?;
        let knot = Knot { child, address };
        // Zones are loaded after the sockets open: wait until the log says each one is.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (origin, _) in zones {
            loop {
                let log = std::fs::read_to_string(&log_file).unwrap_or_default();
                if log
                    .lines()
                    .any(|l| l.contains(&format!("[{origin}.]")) && l.contains("loaded"))
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("knotd did not load {origin}:\n{log}"));
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
