//! Large messages on disk, not in memory: a message past `spool_threshold` is written to a
//! spool file as it arrives, accepted by moving that file into the queue, delivered from it,
//! and removed with the message. A SIGKILL during a spooled transfer or a spooled delivery
//! loses nothing that got a 250 and leaves nothing behind after the restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{config, queue_id_in, queued, RawClient, Server};

/// A message of about `lines` × 80 octets, with lines starting with a dot to be stuffed.
fn large_message(subject: &str, lines: usize) -> Vec<u8> {
    let mut m = format!(
        "From: a@example.org\r\nTo: user@example.test\r\nSubject: {subject}\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@example.org>\r\n\r\n"
    )
    .into_bytes();
    for n in 0..lines {
        if n % 7 == 0 {
            m.extend_from_slice(b".");
        }
        m.extend_from_slice(format!("{n:08} {}\r\n", "y".repeat(68)).as_bytes());
    }
    m
}

/// `message` dot-stuffed, with the end of data.
fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 5);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The files under the queue's spool directory (`incoming/` included).
fn spool_files(dir: &Path) -> Vec<String> {
    let spool = dir.join("var/queue/spool");
    let mut out = Vec::new();
    for sub in [spool.clone(), spool.join("incoming")] {
        for entry in std::fs::read_dir(&sub).into_iter().flatten().flatten() {
            if entry.path().is_file() {
                out.push(
                    entry
                        .path()
                        .strip_prefix(&spool)
                        .unwrap()
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    out
}

/// A session past its greeting and EHLO.
fn greeted(addr: SocketAddr) -> RawClient {
    let mut c = RawClient::connect(addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.command("EHLO client.example").starts_with("250"));
    c
}

/// Sends `message` by DATA on a fresh session; returns the reply to its end.
fn send_data(addr: SocketAddr, message: &[u8]) -> String {
    let mut c = greeted(addr);
    c.command("MAIL FROM:<a@example.org>");
    c.command("RCPT TO:<user@example.test>");
    assert!(c.command("DATA").starts_with("354"));
    c.send(&stuffed(message));
    c.reply()
}

/// Sends `message` in BDAT chunks of `chunk` octets; returns the reply to the last.
fn send_bdat(addr: SocketAddr, message: &[u8], chunk: usize) -> String {
    let mut c = greeted(addr);
    c.command("MAIL FROM:<a@example.org>");
    c.command("RCPT TO:<user@example.test>");
    let pieces: Vec<&[u8]> = message.chunks(chunk).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = if i + 1 == pieces.len() { " LAST" } else { "" };
        c.send(format!("BDAT {}{last}\r\n", piece.len()).as_bytes());
        c.send(piece);
        let reply = c.reply();
        if !last.is_empty() {
            return reply;
        }
        assert!(reply.starts_with("250"), "{reply}");
    }
    unreachable!("the last chunk returns")
}

/// The message as queued: our `Received:` on top of what was sent.
fn without_received(stored: &[u8]) -> &[u8] {
    let at = stored
        .windows(6)
        .position(|w| w == b"From: ")
        .expect("the message's own header");
    &stored[at..]
}

/// DATA and BDAT messages past the threshold are spooled: queued with their file, delivered
/// into a Maildir byte for byte, and the file goes once they are delivered.
#[test]
fn large_messages_are_spooled_queued_and_delivered_intact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(d, "spool_threshold = \"64K\"");
    let server = Server::start(d, &cfg);
    let by_data = large_message("by-data", 40_000);
    let by_bdat = large_message("by-bdat", 30_000);
    let small = large_message("small", 10);
    let reply = send_data(server.mx, &by_data);
    assert!(reply.starts_with("250 "), "{reply}\n{}", server.log());
    let data_id = queue_id_in(&reply);
    let reply = send_bdat(server.mx, &by_bdat, 100_000);
    assert!(reply.starts_with("250 "), "{reply}\n{}", server.log());
    let bdat_id = queue_id_in(&reply);
    let reply = send_data(server.mx, &small);
    let small_id = queue_id_in(&reply);
    // Two files under their queue ids, nothing left in incoming/; the small one in RocksDB.
    assert_eq!(
        spool_files(d),
        vec![data_id.to_string(), bdat_id.to_string()],
        "{}",
        server.log()
    );
    let stored = queued(d);
    let body = |id| {
        stored
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, _, b)| b.clone())
            .unwrap()
    };
    assert_eq!(without_received(&body(data_id)), &by_data[..]);
    assert_eq!(without_received(&body(bdat_id)), &by_bdat[..]);
    assert_eq!(without_received(&body(small_id)), &small[..]);
    // `queue show --body` reads the start of a spooled message.
    let (ok, shown) = server.cli(&["queue", "show", &data_id.to_string(), "--body"]);
    assert!(ok && shown.contains("Subject: by-data"), "{shown}");
    server.stop();

    // Delivery reads the file as it goes.
    let server = Server::start(
        d,
        &cfg.replace("[delivery]\npaused = true", "[delivery]\npaused = false"),
    );
    let delivered = server.local_mailbox("example.test/user", 3);
    for sent in [&by_data, &by_bdat, &small] {
        let subject = String::from_utf8_lossy(&sent[..120]).into_owned();
        let subject = subject
            .lines()
            .find(|l| l.starts_with("Subject:"))
            .unwrap()
            .to_owned();
        let got = delivered
            .iter()
            .find(|m| m.contains(&format!("{subject}\r\n")))
            .unwrap_or_else(|| panic!("{subject} not delivered"));
        assert!(
            got.as_bytes().ends_with(sent),
            "{subject}: delivered {} octets, sent {}",
            got.len(),
            sent.len()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spool_files(d).is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", spool_files(d));
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}

/// A header section that does not end within the threshold is refused (as Exim's
/// `header_maxsize`), and nothing of it stays on disk.
#[test]
fn a_header_section_past_the_threshold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, "spool_threshold = \"64K\""));
    let mut message = Vec::new();
    for n in 0..2000 {
        message.extend_from_slice(format!("X-Filler-{n}: {}\r\n", "z".repeat(40)).as_bytes());
    }
    message.extend_from_slice(b"\r\nbody\r\n");
    let reply = send_data(server.mx, &message);
    assert!(
        reply.starts_with("552 5.3.4 Message header section exceeds 65536 octets"),
        "{reply}"
    );
    assert!(spool_files(d).is_empty(), "{:?}", spool_files(d));
    assert!(queued(d).is_empty());
    server.stop();
}

/// SIGKILL while a large message is arriving: the half-written spool file is gone after the
/// restart, the message was never accepted, and one that got its 250 before is intact.
#[test]
fn sigkill_during_a_spooled_transfer_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, "spool_threshold = \"64K\""));
    let accepted = large_message("accepted", 20_000);
    let id = queue_id_in(&send_data(server.mx, &accepted));
    let mut c = greeted(server.mx);
    c.command("MAIL FROM:<a@example.org>");
    c.command("RCPT TO:<user@example.test>");
    assert!(c.command("DATA").starts_with("354"));
    let half = stuffed(&large_message("cut-off", 40_000));
    c.send(&half[..half.len() / 2]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spool_files(d).iter().any(|f| f.starts_with("incoming/")) {
        assert!(
            Instant::now() < deadline,
            "never spooled:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    let server = Server::restart(d);
    assert_eq!(spool_files(d), vec![id.to_string()]);
    let stored = queued(d);
    assert_eq!(stored.len(), 1);
    assert_eq!(without_received(&stored[0].2), &accepted[..]);
    server.stop();
}

/// A next hop that takes part of the message data (and says so in `stalled`) and then waits
/// until `release` is set; afterwards it takes messages whole, writing each it accepted into
/// `received`.
fn stalling_hop(
    release: Arc<Mutex<bool>>,
    stalled: Arc<Mutex<bool>>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
) -> SocketAddr {
    let hop = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = hop.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in hop.incoming() {
            let Ok(stream) = stream else { return };
            let (release, received) = (Arc::clone(&release), Arc::clone(&received));
            let stalled = Arc::clone(&stalled);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                let _ = out.write_all(b"220 hop.test\r\n");
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let reply: &[u8] = match line.get(..4) {
                        Some("EHLO") => b"250-hop.test\r\n250 8BITMIME\r\n",
                        Some("QUIT") => b"221 bye\r\n",
                        Some("DATA") => {
                            let _ = out.write_all(b"354 go\r\n");
                            if !*release.lock().unwrap() {
                                // Take a little, then stall with the rest unread.
                                let mut some = vec![0; 256 * 1024];
                                let _ = reader.read_exact(&mut some);
                                *stalled.lock().unwrap() = true;
                                while !*release.lock().unwrap() {
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                                return;
                            }
                            let mut message = Vec::new();
                            loop {
                                let mut l = Vec::new();
                                if reader.read_until(b'\n', &mut l).unwrap_or(0) == 0 {
                                    return;
                                }
                                if l == b".\r\n" {
                                    break;
                                }
                                let l = l.strip_prefix(b".").unwrap_or(&l);
                                message.extend_from_slice(l);
                            }
                            received.lock().unwrap().push(message);
                            b"250 taken\r\n"
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = out.write_all(reply);
                }
            });
        }
    });
    address
}

/// SIGKILL while a spooled message is being delivered: after the restart it is still queued
/// with its file, is delivered whole, and its file goes then.
#[test]
fn sigkill_during_a_spooled_delivery_loses_nothing() {
    let release = Arc::new(Mutex::new(false));
    let received = Arc::new(Mutex::new(Vec::new()));
    let stalled = Arc::new(Mutex::new(false));
    let hop = stalling_hop(
        Arc::clone(&release),
        Arc::clone(&stalled),
        Arc::clone(&received),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(
        d,
        "spool_threshold = \"64K\"\nlocal_networks = [\"127.0.0.0/8\"]",
    )
    .replace("[delivery]\npaused = true", "[delivery]\npaused = false")
        + &format!(
            "\n[[route]]\ndomains = [\"elsewhere.example\"]\nrelay = \"{hop}\"\nhost = \"hop.test\"\ntls = \"none\"\n"
        );
    let server = Server::start(d, &cfg);
    let message = large_message("kept", 40_000);
    let mut c = greeted(server.mx);
    // Relayed for a local-network client (loopback), as an edge relay does.
    c.command("MAIL FROM:<a@example.org>");
    let rcpt = c.command("RCPT TO:<someone@elsewhere.example>");
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(c.command("DATA").starts_with("354"));
    c.send(&stuffed(&message));
    let reply = c.reply();
    assert!(reply.starts_with("250 "), "{reply}\n{}", server.log());
    let id = queue_id_in(&reply);
    // The delivery is under way (the hop has part of it): kill the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !*stalled.lock().unwrap() {
        assert!(Instant::now() < deadline, "never sent:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill9();
    assert_eq!(spool_files(d), vec![id.to_string()]);
    *release.lock().unwrap() = true;
    let server = Server::restart(d);
    // The killed delivery's lease holds it for ten minutes: flush it, as an operator would.
    let (ok, flushed) = server.cli(&["queue", "flush", &id.to_string()]);
    assert!(ok, "{flushed}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "never delivered:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = received.lock().unwrap()[0].clone();
    assert_eq!(without_received(&got), &message[..]);
    while !spool_files(d).is_empty() || !queued(d).is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", spool_files(d));
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}

/// A stream that never reads: a client that stopped mid-transfer keeps nothing on disk once
/// its session ends.
#[test]
fn an_abandoned_transfer_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, "spool_threshold = \"64K\""));
    let mut c = greeted(server.mx);
    c.command("MAIL FROM:<a@example.org>");
    c.command("RCPT TO:<user@example.test>");
    assert!(c.command("DATA").starts_with("354"));
    let half = stuffed(&large_message("abandoned", 20_000));
    c.send(&half[..half.len() / 2]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while spool_files(d).is_empty() {
        assert!(
            Instant::now() < deadline,
            "never spooled:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    while !spool_files(d).is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", spool_files(d));
        std::thread::sleep(Duration::from_millis(50));
    }
    // RSET mid-way through BDAT chunks too.
    let mut c = greeted(server.mx);
    c.command("MAIL FROM:<a@example.org>");
    c.command("RCPT TO:<user@example.test>");
    let part = large_message("reset", 2_000);
    c.send(format!("BDAT {}\r\n", part.len()).as_bytes());
    c.send(&part);
    assert!(c.reply().starts_with("250"));
    assert!(c.command("RSET").starts_with("250"));
    assert!(spool_files(d).is_empty(), "{:?}", spool_files(d));
    server.stop();
}

/// The checks that need a spooled message whole read all of it (within `max_scan_size`,
/// unset here): a body rule matching text far past the threshold refuses it, and the file
/// goes with the refused message.
#[test]
fn a_spooled_message_gets_the_whole_message_checks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(
        d,
        &(config(d, "spool_threshold = \"64K\"")
            + "\n[[filter]]\ntype = \"body\"\npattern = \"wire the money\"\naction = \"reject\"\n"),
    );
    let mut message = large_message("scam", 20_000);
    message.extend_from_slice(b"and now wire the money\r\n");
    let reply = send_data(server.mx, &message);
    assert!(reply.starts_with("550"), "{reply}");
    let reply = send_data(server.mx, &large_message("fine", 20_000));
    assert!(reply.starts_with("250"), "{reply}");
    let id = queue_id_in(&reply);
    assert_eq!(spool_files(d), vec![id.to_string()]);
    server.stop();
}

/// A large message is spooled only while the disk has room for a message of the largest size
/// and half again (Postfix's rule): below that it is refused for now, and nothing is written.
/// Here the largest size is beyond any disk, so every message past the threshold finds too
/// little room; a small one is still taken.
#[test]
fn a_disk_without_room_refuses_large_messages_for_now() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(
        d,
        &config(
            d,
            "spool_threshold = \"64K\"\nmax_message_size = \"100000G\"\nmax_message_memory = \"100001G\"",
        ),
    );
    let reply = send_data(server.mx, &large_message("no-room", 20_000));
    assert!(
        reply.starts_with("452 4.3.1 Insufficient system storage"),
        "{reply}"
    );
    assert!(spool_files(d).is_empty(), "{:?}", spool_files(d));
    assert!(server.log().contains("cannot create the spool file"));
    let reply = send_data(server.mx, &large_message("small", 10));
    assert!(reply.starts_with("250"), "{reply}");
    server.stop();
}
