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
    /// Serves `zones` (origin, zone file text) from `dir` on 127.0.0.1 at a free port.
    pub fn start(dir: &Path, zones: &[(&str, &str)]) -> Knot {
        let zone_dir = dir.join("zones");
        std::fs::create_dir_all(&zone_dir).unwrap();
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        // A port free for UDP; TCP on the same number is free in practice on loopback.
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
        let log = std::fs::File::create(dir.join("knotd.log")).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting knotd");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let knot = Knot { child, address };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(address).is_err() {
            assert!(
                Instant::now() < deadline,
                "knotd did not start:\n{}",
                std::fs::read_to_string(dir.join("knotd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Zones are loaded after the sockets open: wait until the log says each one is.
        for (origin, _) in zones {
            while !std::fs::read_to_string(dir.join("knotd.log"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&format!("[{origin}.]")) && l.contains("loaded"))
            {
                assert!(
                    Instant::now() < deadline,
                    "knotd did not load {origin}:\n{}",
                    std::fs::read_to_string(dir.join("knotd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        knot
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
