//! SIGKILL under load: 20 concurrent clients keep sending while the server is killed at random
//! moments and restarted. Every message that got a 250 must be in the queue afterwards, and no
//! queue id may be handed out twice.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop_types::QueueId;

use crate::harness::{config, queued, Server};

const CLIENTS: usize = 20;
const ROUNDS: usize = 4;
/// More than a client can send before the kill: every round is cut off mid-load.
const MESSAGES_PER_CLIENT_AND_ROUND: usize = 100_000;

/// One client: sends messages one after the other until done or the server goes away, adding
/// the queue id of each 250 reply to `accepted` as it comes.
pub fn client(addr: SocketAddr, messages: usize, tag: usize, accepted: &Mutex<Vec<QueueId>>) {
    let _ = (|| -> std::io::Result<()> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut reply = || -> std::io::Result<String> {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                all.push_str(&line);
                if line.as_bytes().get(3) == Some(&b' ') {
                    return Ok(all);
                }
            }
        };
        reply()?;
        stream.write_all(b"EHLO load.example\r\n")?;
        reply()?;
        for n in 0..messages {
            let body = "MAIL FROM:<load@example.org>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n"
                .to_string();
            stream.write_all(body.as_bytes())?;
            for _ in 0..3 {
                reply()?;
            }
            let data = format!(
                "Subject: load {tag}-{n}\r\n\r\n{}\r\n.\r\n",
                "x".repeat(2000)
            );
            stream.write_all(data.as_bytes())?;
            let end = reply()?;
            if let Some(at) = end.find("queued as ") {
                if let Ok(id) = end[at + 10..at + 26].parse() {
                    accepted.lock().unwrap().push(id);
                }
            }
        }
        Ok(())
    })();
}

/// A pseudo-random number in 0..n from the clock: the kill moments need not be reproducible,
/// only unplanned.
fn random_below(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos.wrapping_mul(2_654_435_761)) % n
}

#[test]
fn nothing_that_got_250_is_lost_to_sigkill_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut server = Server::start(d, &config(d, ""));
    let accepted: Arc<Mutex<Vec<QueueId>>> = Arc::default();
    for round in 0..ROUNDS {
        let mut threads = Vec::new();
        for c in 0..CLIENTS {
            let (addr, accepted) = (server.mx, Arc::clone(&accepted));
            threads.push(std::thread::spawn(move || {
                client(
                    addr,
                    MESSAGES_PER_CLIENT_AND_ROUND,
                    round * CLIENTS + c,
                    &accepted,
                );
            }));
        }
        // Kill at a random moment while the clients are busy: once this round has some
        // messages in (however slow the machine is today), a little later.
        let before = accepted.lock().unwrap().len();
        let started = std::time::Instant::now();
        while accepted.lock().unwrap().len() < before + 30
            && started.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(random_below(300)));
        server.kill9();
        for t in threads {
            t.join().unwrap();
        }
        let in_round = accepted.lock().unwrap().len() - before;
        assert!(
            in_round < CLIENTS * MESSAGES_PER_CLIENT_AND_ROUND,
            "round {round}: the clients finished before the kill"
        );
        server = Server::restart(d);
    }
    let ids: Vec<QueueId> = queued(d).into_iter().map(|(id, _, _)| id).collect();
    server.stop();

    let accepted = accepted.lock().unwrap().clone();
    let unique: HashSet<QueueId> = accepted.iter().copied().collect();
    assert_eq!(
        unique.len(),
        accepted.len(),
        "a queue id was handed out twice"
    );
    assert!(
        accepted.len() >= 100,
        "only {} messages got a 250: not enough load to mean anything",
        accepted.len()
    );
    let stored: HashSet<QueueId> = ids.iter().copied().collect();
    assert_eq!(
        stored.len(),
        ids.len(),
        "a queue id appears twice in the queue"
    );
    let lost: Vec<&QueueId> = accepted.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} message(s) got a 250 and were lost: {lost:?}",
        lost.len()
    );
    eprintln!(
        "crash test: {} accepted over {ROUNDS} kills, {} in the queue",
        accepted.len(),
        ids.len()
    );
}
