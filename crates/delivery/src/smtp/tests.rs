use super::*;

#[test]
fn dot_stuffing() {
    let stuffed = dot_stuff(b".a\r\nb\r\n..\r\n", true);
    assert_eq!(stuffed, b"..a\r\nb\r\n...\r\n.\r\n");
    assert_eq!(
        dot_stuff(b"no final newline", true),
        b"no final newline\r\n.\r\n"
    );
    assert_eq!(dot_stuff(b"", true), b".\r\n");
    // A header block put on top: stuffed, and not ended.
    assert_eq!(
        dot_stuff(b"X: 1\r\n.X: 2\r\n", false),
        b"X: 1\r\n..X: 2\r\n"
    );
}

#[test]
fn xtext_encodes_what_it_must() {
    assert_eq!(xtext("a+b=c d@e"), "a+2Bb+3Dc+20d@e");
    assert_eq!(xtext("ü"), "+C3+BC");
}

#[test]
fn rcpt_carries_dsn_parameters_only_when_offered() {
    let recipient = Recipient {
        address: backstop_types::Address::parse("bob@example.net").unwrap(),
        notify: Notify::On {
            success: true,
            failure: true,
            delay: false,
        },
        orcpt: Some(backstop_types::Orcpt::new("rfc822", "Bob+x@example.net").unwrap()),
    };
    assert_eq!(
        rcpt_command(&recipient, true),
        "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx@example.net"
    );
    assert_eq!(rcpt_command(&recipient, false), "RCPT TO:<bob@example.net>");
}

#[test]
fn replies() {
    let mut input: &[u8] = b"250-mx.example Hello\r\n250-SIZE 1000\r\n250 STARTTLS\r\n";
    let r = read_reply(&mut input).unwrap();
    assert_eq!((r.code, r.status), (250, None));
    assert_eq!(r.text, "mx.example Hello\nSIZE 1000\nSTARTTLS");
    let mut input: &[u8] = b"550 5.1.1 <x@y>: Recipient address rejected\r\n";
    let r = read_reply(&mut input).unwrap();
    assert_eq!((r.code, r.status), (550, Some(EnhancedStatus(5, 1, 1))));
    assert_eq!(r.text, "<x@y>: Recipient address rejected");
    let mut input: &[u8] = b"oops\r\n";
    assert!(read_reply(&mut input).is_err());
}

// --- Against a scripted peer ---------------------------------------------------------------
// A server on loopback that answers from a script, for what a well-behaved test peer such as
// Postfix will not do: refuse EHLO, announce a tiny SIZE, lie behind STARTTLS, or never
// answer. The end-to-end tests cover real peers.

use std::net::TcpListener;

use backstop_types::UnixTime;

/// Starts a peer that offers `caps` after EHLO; `special` may answer a command instead (and
/// return raw bytes, CRLFs included). Returns its address and, when the client has gone,
/// everything the client sent.
fn peer(
    caps: &'static [&'static str],
    special: fn(&str) -> Option<&'static str>,
) -> (SocketAddr, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        let mut seen = String::new();
        let _ = out.write_all(b"220 peer.test ESMTP\r\n");
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return seen;
            }
            seen.push_str(&line);
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    let _ = out.write_all(b"250 2.0.0 queued\r\n");
                }
                continue;
            }
            let command = line.trim_end().to_owned();
            if let Some(reply) = special(&command) {
                let _ = out.write_all(reply.as_bytes());
                continue;
            }
            let verb = command
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" => {
                    let mut r = String::from("250-peer.test\r\n");
                    for cap in caps {
                        r.push_str(&format!("250-{cap}\r\n"));
                    }
                    r + "250 HELP\r\n"
                }
                "DATA" => {
                    in_data = true;
                    "354 go on\r\n".into()
                }
                "QUIT" => {
                    let _ = out.write_all(b"221 bye\r\n");
                    return seen;
                }
                _ => "250 2.0.0 ok\r\n".into(),
            };
            let _ = out.write_all(reply.as_bytes());
        }
    });
    (address, handle)
}

fn client(timeout: Duration) -> Client {
    Client {
        helo: "client.test".into(),
        lmtp: false,
        tls: TlsPolicy::Opportunistic,
        connect_timeout: Duration::from_secs(5),
        timeouts: Timeouts {
            command: timeout,
            data_start: timeout,
            data_block: timeout,
            data_end: timeout,
        },
        auth: None,
    }
}

/// Sends `body` for bob@example.net to the peer at `address`; the outcome and the transcript.
fn send(
    address: SocketAddr,
    envelope: &Envelope,
    body: &[u8],
    timeout: Duration,
    handle: std::thread::JoinHandle<String>,
) -> (Delivery, String) {
    let hop = NextHop {
        endpoint: Endpoint::Tcp(address),
        host: "peer.test".into(),
    };
    let message = Message {
        sender: &envelope.sender,
        envelope,
        prefix: b"",
        body,
    };
    let recipients: Vec<(usize, &Recipient)> = envelope.recipients.iter().enumerate().collect();
    // No pool: every session ends with QUIT, so that the peer's transcript is complete.
    let pool = Pool::default();
    let delivery = deliver(&client(timeout), &hop, &message, &recipients, &pool);
    pool.expire(true);
    (delivery, handle.join().unwrap())
}

fn stranger(recipients: &[&str]) -> Envelope {
    crate::agent::tests::envelope(recipients, UnixTime(1_800_000_000))
}

fn reply_of(delivery: &Delivery) -> &RemoteReply {
    match &delivery.outcomes[0].1 {
        AttemptOutcome::Delivered(a)
        | AttemptOutcome::Transient(a)
        | AttemptOutcome::Permanent(a) => &a.reply,
    }
}

#[test]
fn without_chunking_data_is_dot_stuffed_and_pipelined() {
    let (address, handle) = peer(&["PIPELINING", "8BITMIME"], |_| None);
    let envelope = stranger(&["bob@example.net"]);
    let (delivery, seen) = send(
        address,
        &envelope,
        b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nend",
        Duration::from_secs(5),
        handle,
    );
    assert!(
        matches!(delivery.outcomes[0].1, AttemptOutcome::Delivered(_)),
        "{delivery:?}"
    );
    assert!(
        seen.contains("MAIL FROM:<sender@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("\r\n\r\n..leading dot\r\n...two\r\nend\r\n.\r\nQUIT\r\n"),
        "{seen}"
    );
}

#[test]
fn an_old_server_gets_helo() {
    let (address, handle) = peer(&[], |c| {
        c.starts_with("EHLO").then_some("502 5.5.1 what?\r\n")
    });
    let envelope = stranger(&["bob@example.net"]);
    let (delivery, seen) = send(address, &envelope, b"x\r\n", Duration::from_secs(5), handle);
    assert!(
        matches!(delivery.outcomes[0].1, AttemptOutcome::Delivered(_)),
        "{delivery:?}"
    );
    assert!(
        seen.contains("EHLO client.test\r\nHELO client.test\r\nMAIL FROM:"),
        "{seen}"
    );
}

#[test]
fn what_the_peer_cannot_take_is_not_sent() {
    // Over its SIZE: failed at once, before MAIL.
    let (address, handle) = peer(&["SIZE 10"], |_| None);
    let envelope = stranger(&["bob@example.net"]);
    let (delivery, seen) = send(
        address,
        &envelope,
        b"far more than ten octets\r\n",
        Duration::from_secs(5),
        handle,
    );
    let reply = reply_of(&delivery);
    assert_eq!(
        (reply.code, reply.status),
        (552, Some(EnhancedStatus(5, 3, 4)))
    );
    assert!(!seen.contains("MAIL"), "{seen}");

    // SMTPUTF8 needed but not offered.
    let (address, handle) = peer(&["8BITMIME"], |_| None);
    let mut envelope = stranger(&["bob@example.net"]);
    envelope.smtputf8 = true;
    let (delivery, seen) = send(address, &envelope, b"x\r\n", Duration::from_secs(5), handle);
    let reply = reply_of(&delivery);
    assert_eq!(
        (reply.code, reply.status),
        (550, Some(EnhancedStatus(5, 6, 7)))
    );
    assert!(!seen.contains("MAIL"), "{seen}");

    // 8BITMIME needed but not offered.
    let (address, handle) = peer(&[], |_| None);
    let mut envelope = stranger(&["bob@example.net"]);
    envelope.body_type = BodyType::EightBitMime;
    let (delivery, _) = send(address, &envelope, b"x\r\n", Duration::from_secs(5), handle);
    assert_eq!(reply_of(&delivery).status, Some(EnhancedStatus(5, 6, 3)));
}

#[test]
fn dsn_parameters_go_to_a_peer_that_takes_them() {
    let (address, handle) = peer(&["DSN", "SIZE 1000"], |_| None);
    let mut envelope = stranger(&["bob@example.net"]);
    envelope.dsn.ret = Some(Ret::Headers);
    envelope.dsn.envid = Some("id 1".into());
    envelope.recipients[0].notify = Notify::Never;
    envelope.recipients[0].orcpt =
        Some(backstop_types::Orcpt::new("rfc822", "Bob@example.net").unwrap());
    let (delivery, seen) = send(address, &envelope, b"x\r\n", Duration::from_secs(5), handle);
    assert!(
        matches!(delivery.outcomes[0].1, AttemptOutcome::Delivered(_)),
        "{delivery:?}"
    );
    assert!(
        seen.contains("MAIL FROM:<sender@example.org> SIZE=3 RET=HDRS ENVID=id+201\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("RCPT TO:<bob@example.net> NOTIFY=NEVER ORCPT=rfc822;Bob@example.net\r\n"),
        "{seen}"
    );
}

#[test]
fn bytes_behind_the_starttls_reply_are_refused() {
    // CVE-2011-0411 from the server's side: a reply injected in the same packet as the 220.
    let (address, handle) = peer(&["STARTTLS"], |c| {
        (c == "STARTTLS").then_some("220 2.0.0 go ahead\r\n250 injected\r\n")
    });
    let envelope = stranger(&["bob@example.net"]);
    let (delivery, seen) = send(address, &envelope, b"x\r\n", Duration::from_secs(5), handle);
    let reply = reply_of(&delivery);
    assert_eq!(
        (reply.code, reply.status),
        (451, Some(EnhancedStatus(4, 7, 5)))
    );
    assert!(
        reply.text.contains("sent data behind its STARTTLS reply"),
        "{}",
        reply.text
    );
    assert!(delivery.try_next);
    assert!(!seen.contains("MAIL"), "{seen}");
}

#[test]
fn a_silent_peer_times_out_as_a_temporary_failure() {
    let (address, handle) = peer(&[], |c| c.starts_with("MAIL").then_some(""));
    let envelope = stranger(&["bob@example.net", "carol@example.net"]);
    let started = std::time::Instant::now();
    let (delivery, _) = send(
        address,
        &envelope,
        b"x\r\n",
        Duration::from_millis(300),
        handle,
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(delivery.outcomes.len(), 2);
    for (_, outcome) in &delivery.outcomes {
        let AttemptOutcome::Transient(a) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            a.reply.status,
            Some(EnhancedStatus(4, 4, 1)),
            "{}",
            a.reply.text
        );
    }
    // Nothing reached the peer's MAIL: another MX may be tried.
    assert!(delivery.try_next);
}

#[test]
fn the_command_writer_refuses_line_breaks() {
    let (address, seen) = peer(&[], |_| None);
    let stream = std::net::TcpStream::connect(address).unwrap();
    let mut conn = Connection::Plain(BufReader::new(Stream::Tcp(stream)));
    let err = conn.command("RCPT TO:<a@b.example>\r\nRSET").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    conn.command("QUIT").unwrap();
    let seen = seen.join().unwrap();
    assert_eq!(seen, "QUIT\r\n");
}
