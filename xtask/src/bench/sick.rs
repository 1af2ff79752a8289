//! Delivery with a sick destination among healthy ones, and many connections at once.
//!
//! - slow receiver: HEALTHY messages to a healthy smtp-sink and SICK (3%) to one that answers
//!   DATA only after SLOW seconds (`smtp-sink -w`); the time from letting go until the healthy
//!   sink has all of its messages, with the slow receiver there and without it, for backstop
//!   and Postfix in the same run.
//! - blackhole: the same with SICK messages for a destination whose connections never
//!   complete (a loopback socket whose accept queue is full: SYNs are dropped).
//! - outbound connections: CONNECTIONS messages to one destination that holds every
//!   connection open (`smtp-sink -w 3600`), all at once: backstop's RSS per connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::peers::{free_port, Backstop, Postfix, Sink, SINK_IP};
use super::{message_text, Client};

/// Messages for the healthy destination.
const HEALTHY: usize = 10_000;
/// Messages for the sick one: 3% of the healthy count.
const SICK: usize = 300;
/// How long the slow receiver waits before its reply to DATA, in seconds.
const SLOW: u64 = 30;
/// Connections held at once in the last run.
const CONNECTIONS: usize = 10_000;
/// Longest a run may take.
const LIMIT: Duration = Duration::from_secs(300);

/// What a run's sick destination is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sickness {
    None,
    Slow,
    Blackhole,
}

pub fn run(binary: &Path, dir: &Path) -> Result<(), String> {
    let with_postfix = Postfix::available();
    println!(
        "\ndelivery of {HEALTHY} messages to a healthy destination beside {SICK} to a sick one: \
         seconds from letting go until the healthy one has them all"
    );
    println!(
        "{:>22} | {:>9} {:>9} | {:>14}",
        "sick destination", "backstop", "postfix", "b/b-without"
    );
    let mut without = None;
    for (n, sickness) in [Sickness::None, Sickness::Slow, Sickness::Blackhole]
        .into_iter()
        .enumerate()
    {
        let run_dir = dir.join(format!("sick-{n}"));
        let ours = backstop(binary, &run_dir.join("backstop"), sickness)?;
        let theirs = match with_postfix {
            Ok(()) => Some(postfix(&run_dir.join("postfix"), sickness)?),
            Err(_) => None,
        };
        if sickness == Sickness::None {
            without = Some(ours);
        }
        println!(
            "{:>22} | {:>9.2} {:>9} | {:>14}",
            match sickness {
                Sickness::None => "none".to_owned(),
                Sickness::Slow => format!("DATA reply after {SLOW}s"),
                Sickness::Blackhole => "blackhole (no SYN-ACK)".to_owned(),
            },
            ours.as_secs_f64(),
            theirs.map_or("-".to_owned(), |t| format!("{:.2}", t.as_secs_f64())),
            without.map_or("-".to_owned(), |w| format!(
                "{:.2}",
                ours.as_secs_f64() / w.as_secs_f64()
            )),
        );
    }
    if let Err(why) = with_postfix {
        println!("(no Postfix column: {why})");
    }
    println!("(checked: the healthy sink took each healthy message once)");
    let per_connection = connections(binary, &dir.join("connections"))?;
    println!(
        "backstop RSS per outbound connection ({CONNECTIONS} held open at once): {per_connection:.1} KiB"
    );
    Ok(())
}

/// The recipients, healthy and sick, the sick ones spread evenly.
fn recipients(sickness: Sickness) -> Vec<String> {
    let sick = if sickness == Sickness::None { 0 } else { SICK };
    let mut all = Vec::with_capacity(HEALTHY + sick);
    let every = HEALTHY / SICK;
    let mut s = 0;
    for n in 0..HEALTHY {
        if sick > 0 && n % every == 0 && s < sick {
            all.push(format!("user{s}@sick.test"));
            s += 1;
        }
        all.push(format!("user{n}@healthy.test"));
    }
    all
}

/// A destination that never completes a connection: a socket listening with a backlog of
/// nothing, its one place taken. Connections to it wait until they time out.
struct Blackhole {
    _listener: OwnedFd,
    _filler: std::net::TcpStream,
    address: SocketAddr,
}

impl Blackhole {
    fn start() -> Result<Blackhole, String> {
        let ip = Ipv4Addr::new(127, 0, 0, 4);
        let port = free_port(ip)?;
        // SAFETY: plain socket calls on a descriptor owned right away; the address is a
        // sockaddr_in filled in full.
        let listener = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return Err("socket failed".into());
            }
            let owned = OwnedFd::from_raw_fd(fd);
            let address = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                sin_zero: [0; 8],
            };
            if libc::bind(
                fd,
                &address as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0
                || libc::listen(fd, 0) != 0
            {
                return Err("bind or listen failed".into());
            }
            owned
        };
        let address = SocketAddr::from((ip, port));
        let filler = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
        Ok(Blackhole {
            _listener: listener,
            _filler: filler,
            address,
        })
    }
}

/// The time backstop needs for the healthy messages beside `sickness`.
fn backstop(binary: &Path, dir: &Path, sickness: Sickness) -> Result<Duration, String> {
    let healthy = Sink::start(SINK_IP, Some(HEALTHY))?;
    let slow = Sink::start_with(SINK_IP, None, &["-w", &SLOW.to_string()], None)?;
    let blackhole = Blackhole::start()?;
    let sick = match sickness {
        Sickness::Blackhole => blackhole.address,
        _ => slow.address,
    };
    let settings = |paused: bool| {
        format!(
            "[smtp]\nlocal_domains = [\"bench.test\"]\nlocal_networks = [\"127.0.0.0/8\"]\n\
             shutdown_grace = \"1s\"\n\n\
             [delivery]\npaused = {paused}\n\n\
             [sender_checks]\nenabled = false\n\n[log]\nlevel = \"warn\"\n\n\
             [[route]]\ndomains = [\"healthy.test\"]\nrelay = \"{}\"\ntls = \"none\"\n\n\
             [[route]]\ndomains = [\"sick.test\"]\nrelay = \"{sick}\"\ntls = \"none\"\n",
            healthy.address,
        )
    };
    let all = recipients(sickness);
    let held = Backstop::start(binary, dir, &settings(true))?;
    preload(held.address, &all)?;
    drop(held);
    let started = Instant::now();
    let running = Backstop::start(binary, dir, &settings(false))?;
    let done = healthy.reached(LIMIT)?;
    let took = done - started;
    std::thread::sleep(Duration::from_millis(500));
    if healthy.taken() != HEALTHY {
        return Err(format!(
            "the healthy sink took {} messages, {HEALTHY} were sent",
            healthy.taken()
        ));
    }
    drop(running);
    Ok(took)
}

/// The time Postfix needs for the healthy messages beside `sickness`.
fn postfix(dir: &Path, sickness: Sickness) -> Result<Duration, String> {
    let healthy = Sink::start(SINK_IP, Some(HEALTHY))?;
    let slow = Sink::start_with(SINK_IP, None, &["-w", &SLOW.to_string()], None)?;
    let blackhole = Blackhole::start()?;
    let sick = match sickness {
        Sickness::Blackhole => blackhole.address,
        _ => slow.address,
    };
    let transport = format!(
        "healthy.test smtp:[{}]:{}\nsick.test smtp:[{}]:{}\n",
        healthy.address.ip(),
        healthy.address.port(),
        sick.ip(),
        sick.port()
    );
    let postfix = Postfix::start(dir, &transport, None)?;
    let all = recipients(sickness);
    preload(postfix.address, &all)?;
    let held = postfix.held();
    if held != all.len() {
        return Err(format!("Postfix holds {held} of {} messages", all.len()));
    }
    let started = Instant::now();
    postfix.release()?;
    let done = healthy.reached(LIMIT)?;
    let took = done - started;
    std::thread::sleep(Duration::from_millis(500));
    if healthy.taken() != HEALTHY {
        return Err(format!(
            "the healthy sink took {} messages from Postfix, {HEALTHY} were sent",
            healthy.taken()
        ));
    }
    Ok(took)
}

/// backstop's RSS per connection with CONNECTIONS held open at once to a sink that waits an
/// hour before its reply to DATA.
fn connections(binary: &Path, dir: &Path) -> Result<f64, String> {
    // Each process holds one end of every connection, plus its own files (RocksDB's, the
    // listeners): 2,000 more is plenty, and stays under a container's hard limit (20,000 here,
    // which root cannot raise without CAP_SYS_RESOURCE).
    let files = (CONNECTIONS + 2000) as u64;
    let sink = Sink::start_with(
        SINK_IP,
        None,
        &["-w", "3600", "-m", &(CONNECTIONS + 100).to_string()],
        Some(files),
    )?;
    let settings = |paused: bool| {
        format!(
            "[smtp]\nlocal_domains = [\"bench.test\"]\nlocal_networks = [\"127.0.0.0/8\"]\n\
             shutdown_grace = \"1s\"\n\n\
             [delivery]\npaused = {paused}\nmax_connections = {CONNECTIONS}\n\
             max_connections_per_destination = {CONNECTIONS}\ninitial_concurrency = {CONNECTIONS}\n\
             max_in_flight = {CONNECTIONS}\n\n\
             [sender_checks]\nenabled = false\n\n[log]\nlevel = \"warn\"\n\n\
             [[route]]\ndomains = [\"held.test\"]\nrelay = \"{}\"\ntls = \"none\"\n",
            sink.address
        )
    };
    let all: Vec<String> = (0..CONNECTIONS)
        .map(|n| format!("user{n}@held.test"))
        .collect();
    let held = Backstop::start(binary, dir, &settings(true))?;
    preload(held.address, &all)?;
    std::thread::sleep(Duration::from_millis(500));
    let before: f64 = held.status("VmRSS:")?.parse().map_err(|_| "VmRSS")?;
    drop(held);
    let running = Backstop::start_with_files(binary, dir, &settings(false), Some(files))?;
    let deadline = Instant::now() + LIMIT;
    loop {
        let open = established(sink.address)?;
        if open >= CONNECTIONS {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {open} of {CONNECTIONS} connections were open after {LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let after: f64 = running.status("VmRSS:")?.parse().map_err(|_| "VmRSS")?;
    Ok((after - before).max(0.0) / CONNECTIONS as f64)
}

/// Established TCP connections to `address` (ss from iproute2).
fn established(address: SocketAddr) -> Result<usize, String> {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established", "dst", &address.to_string()])
        .output()
        .map_err(|e| format!("ss: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Sends one message to each of `recipients` at `address`, over ten sessions.
fn preload(address: SocketAddr, recipients: &[String]) -> Result<(), String> {
    const SESSIONS: usize = 10;
    let body = message_text("preload");
    let threads: Vec<_> = (0..SESSIONS)
        .map(|session| {
            let body = body.clone();
            let mine: Vec<String> = recipients
                .iter()
                .skip(session)
                .step_by(SESSIONS)
                .cloned()
                .collect();
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = Client::connect(address)?;
                c.expect("220")?;
                c.send(b"EHLO preload.test\r\n")?;
                c.expect("250")?;
                for recipient in mine {
                    c.send(
                        format!(
                            "MAIL FROM:<load@source.test>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
                        )
                        .as_bytes(),
                    )?;
                    c.expect("250")?;
                    c.expect("250")?;
                    c.expect("354")?;
                    c.send(body.as_bytes())?;
                    c.expect("250")?;
                }
                c.send(b"QUIT\r\n")
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "preload client panicked")??;
    }
    Ok(())
}
