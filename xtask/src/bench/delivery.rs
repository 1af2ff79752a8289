//! Delivery throughput: MESSAGES messages are put in the queue first and held there, then let
//! go; the time from letting go until `smtp-sink` has taken the last of them. Twice: to one
//! destination (a fixed next hop, like a relayhost), and to DOMAINS domains by MX through Knot
//! on loopback. backstop holds mail with `delivery.paused` and lets go by starting again
//! without it; Postfix holds mail on its hold queue and lets go with `postsuper -H ALL` and
//! `postqueue -f`. Both start from Postfix's defaults: 100 connections at most, 20 to one
//! destination.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use super::peers::{Backstop, Knot, Postfix, Sink, SINK_IP};
use super::{message_text, Client};

/// Messages per run, of 5 KB each, one recipient each.
const MESSAGES: usize = 20_000;
/// Domains of the many-destination run.
const DOMAINS: usize = 100;
/// Parallel sessions filling a queue.
const PRELOAD_SESSIONS: usize = 10;
/// Longest a run may take.
const LIMIT: Duration = Duration::from_secs(300);

/// Where the recipients of a run are.
#[derive(Clone, Copy)]
enum Destinations {
    /// relay.test, routed to the sink as a fixed next hop.
    Relay,
    /// d0.dest.test ... d99.dest.test (DOMAINS of them), each with an MX record naming the
    /// sink's address.
    Mx,
}

impl Destinations {
    fn recipient(self, n: usize) -> String {
        match self {
            Destinations::Relay => format!("user{n}@relay.test"),
            Destinations::Mx => format!("user{n}@d{}.dest.test", n % DOMAINS),
        }
    }

    fn describe(self) -> String {
        match self {
            Destinations::Relay => "1 (relay)".into(),
            Destinations::Mx => format!("{DOMAINS} (MX)"),
        }
    }
}

pub fn run(binary: &Path, dir: &Path) -> Result<(), String> {
    let knot = Knot::start(&dir.join("knot"), &[("dest.test", zone())])?;
    println!(
        "\ndelivery of {MESSAGES} queued messages (5 KB, 1 recipient) to smtp-sink, \
         from letting go to the last one taken"
    );
    println!(
        "{:>12} | {:>10} {:>10} | {:>9}",
        "destinations", "backstop", "postfix", "b/postfix"
    );
    let with_postfix = Postfix::available();
    for (n, destinations) in [Destinations::Relay, Destinations::Mx]
        .into_iter()
        .enumerate()
    {
        let run_dir = dir.join(format!("delivery-{n}"));
        let ours = backstop(binary, &run_dir.join("backstop"), &knot, destinations)?;
        let theirs = match with_postfix {
            Ok(()) => Some(postfix(&run_dir.join("postfix"), &knot, destinations)?),
            Err(_) => None,
        };
        println!(
            "{:>12} | {:>10.0} {:>10} | {:>9}",
            destinations.describe(),
            ours,
            theirs.map_or("-".to_owned(), |t| format!("{t:.0}")),
            theirs.map_or("-".to_owned(), |t| format!("{:.2}", ours / t)),
        );
    }
    if let Err(why) = with_postfix {
        println!("(no Postfix column: {why})");
    }
    println!("(messages per second; checked: each server's queue is empty and every message was delivered once)");
    Ok(())
}

/// backstop's delivery rate to `destinations`.
fn backstop(
    binary: &Path,
    dir: &Path,
    knot: &Knot,
    destinations: Destinations,
) -> Result<f64, String> {
    let sink = Sink::start(SINK_IP, Some(MESSAGES))?;
    let settings = |paused: bool| {
        format!(
            "[smtp]\nlocal_domains = [\"bench.test\"]\nlocal_networks = [\"127.0.0.0/8\"]\n\n\
             [delivery]\npaused = {paused}\nmx_port = {port}\n\n\
             [dns]\nnameservers = [\"{dns}\"]\n\n\
             [sender_checks]\nenabled = false\n\n[log]\nlevel = \"warn\"\n\n\
             [[route]]\ndomains = [\"relay.test\"]\nrelay = \"{sink}\"\ntls = \"none\"\n\n\
             [[route]]\ndomains = [\"*\"]\nmx = true\ntls = \"none\"\n",
            port = sink.address.port(),
            dns = knot.address,
            sink = sink.address,
        )
    };
    let held = Backstop::start(binary, dir, &settings(true))?;
    preload(held.address, destinations)?;
    let accepted = held.metric("smtp_messages_accepted_total")?;
    if accepted != MESSAGES {
        return Err(format!(
            "backstop accepted {accepted} of {MESSAGES} messages"
        ));
    }
    drop(held);
    let started = Instant::now();
    let running = Backstop::start(binary, dir, &settings(false))?;
    let done = sink.reached(LIMIT)?;
    settle(
        || Ok(running.metric("queue_messages")? == 0),
        || "backstop's queue is not empty after every message was delivered".into(),
    )?;
    let delivered = running.metric("delivery_recipients_total{outcome=\"delivered\"}")?;
    if delivered != MESSAGES {
        return Err(format!(
            "backstop counts {delivered} deliveries of {MESSAGES} messages"
        ));
    }
    once(&sink)?;
    Ok(MESSAGES as f64 / (done - started).as_secs_f64())
}

/// Postfix's delivery rate to `destinations`.
fn postfix(dir: &Path, knot: &Knot, destinations: Destinations) -> Result<f64, String> {
    let sink = Sink::start(SINK_IP, Some(MESSAGES))?;
    // Postfix reaches MX hosts on port 25 unless a transport map says "domain:port".
    let mut transport = format!(
        "relay.test smtp:[{}]:{}\n",
        sink.address.ip(),
        sink.address.port()
    );
    for d in 0..DOMAINS {
        transport.push_str(&format!(
            "d{d}.dest.test smtp:d{d}.dest.test:{}\n",
            sink.address.port()
        ));
    }
    let postfix = Postfix::start(dir, &transport, Some(knot))?;
    preload(postfix.address, destinations)?;
    let held = postfix.held();
    if held != MESSAGES {
        return Err(format!("Postfix holds {held} of {MESSAGES} messages"));
    }
    let started = Instant::now();
    postfix.release()?;
    let done = sink.reached(LIMIT)?;
    settle(
        || Ok(postfix.in_queue() == 0 && postfix.sent() == MESSAGES),
        || {
            format!(
                "Postfix: {} messages still queued, {} of {MESSAGES} logged as sent",
                postfix.in_queue(),
                postfix.sent()
            )
        },
    )?;
    once(&sink)?;
    Ok(MESSAGES as f64 / (done - started).as_secs_f64())
}

/// Waits until `done` says so: a server records a delivery after the sink has counted it. An
/// error (`failure`) after 30 seconds.
fn settle(
    mut done: impl FnMut() -> Result<bool, String>,
    failure: impl FnOnce() -> String,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done()? {
        if Instant::now() > deadline {
            return Err(failure());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Checks that the sink took every message once, no more, now that the queue is empty.
fn once(sink: &Sink) -> Result<(), String> {
    match sink.taken() {
        MESSAGES => Ok(()),
        n => Err(format!("smtp-sink took {n} messages, {MESSAGES} were sent")),
    }
}

/// Sends MESSAGES messages to `address` over PRELOAD_SESSIONS sessions, the n-th to
/// `destinations.recipient(n)`.
fn preload(address: SocketAddr, destinations: Destinations) -> Result<(), String> {
    let body = message_text("preload");
    let threads: Vec<_> = (0..PRELOAD_SESSIONS)
        .map(|session| {
            let body = body.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = Client::connect(address)?;
                c.expect("220")?;
                c.send(b"EHLO preload.test\r\n")?;
                c.expect("250")?;
                for n in (session..MESSAGES).step_by(PRELOAD_SESSIONS) {
                    c.send(
                        format!(
                            "MAIL FROM:<load@source.test>\r\nRCPT TO:<{}>\r\nDATA\r\n",
                            destinations.recipient(n)
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

/// The dest.test zone: DOMAINS domains whose MX host is the sink's address.
fn zone() -> String {
    let mut zone = format!(
        "$ORIGIN dest.test.\n$TTL 3600\n\
         @ IN SOA ns.dest.test. hostmaster.dest.test. 1 3600 600 86400 60\n\
         @ IN NS ns.dest.test.\nns IN A {ns}\nmx IN A {SINK_IP}\n",
        ns = Ipv4Addr::LOCALHOST
    );
    for d in 0..DOMAINS {
        zone.push_str(&format!("d{d} IN MX 10 mx.dest.test.\n"));
    }
    zone
}
