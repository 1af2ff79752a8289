//! The driver against scripted peers on loopback: what a good peer never does (silence, a
//! refused connection, a connection closed in the middle) and a STARTTLS handshake. The
//! end-to-end tests cover real peers (Postfix, Dovecot).

use std::time::Duration;

use backstop_types::{Address, AttemptOutcome, BodyType, Notify, Recipient, ReversePath};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::*;

fn settings(timeout: Duration) -> Settings {
    Settings {
        helo: "mx.test".into(),
        lmtp: false,
        tls: TlsPolicy::Off,
        connect_timeout: timeout,
        timeouts: crate::Timeouts {
            command: timeout,
            data_start: timeout,
            data_block: timeout,
            data_end: timeout,
        },
        auth: None,
    }
}

/// A peer that answers each line with what `answer` says (None: keeps silent), and returns
/// everything it was sent once the client has gone.
async fn peer(
    answer: fn(&str) -> Option<&'static str>,
) -> (NextHop, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop = NextHop {
        endpoint: Endpoint::from(listener.local_addr().unwrap()),
        host: "peer.test".into(),
    };
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut seen = String::new();
        if let Some(greeting) = answer("<connect>") {
            let _ = write.write_all(greeting.as_bytes()).await;
        }
        loop {
            let mut line = String::new();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                return seen;
            }
            seen.push_str(&line);
            if let Some(reply) = answer(line.trim_end()) {
                // An empty answer hangs up.
                if reply.is_empty() || write.write_all(reply.as_bytes()).await.is_err() {
                    return seen;
                }
            }
        }
    });
    (hop, task)
}

fn sender() -> ReversePath {
    ReversePath::Address(Address::parse("a@example.test").unwrap())
}

fn recipients() -> Vec<Recipient> {
    vec![Recipient {
        address: Address::parse("b@example.net").unwrap(),
        notify: Notify::Default,
        orcpt: None,
    }]
}

fn transaction<'a>(sender: &'a ReversePath, to: &'a [Recipient], size: u64) -> Transaction<'a> {
    Transaction {
        sender,
        recipients: to.iter().enumerate().collect(),
        ret: None,
        envid: None,
        body_type: BodyType::SevenBit,
        smtputf8: false,
        size,
    }
}

#[tokio::test]
async fn a_message_goes_out_dot_stuffed_in_one_pipelined_batch() {
    let (hop, seen) = peer(|line| match line {
        "<connect>" => Some("220 peer.test\r\n"),
        l if l.starts_with("EHLO") => Some("250-peer.test\r\n250 PIPELINING\r\n"),
        "DATA" => Some("250 ok\r\n250 ok\r\n354 go\r\n"),
        l if l.starts_with("MAIL") || l.starts_with("RCPT") => None,
        "." => Some("250 2.0.0 queued\r\n"),
        "QUIT" => Some("221 bye\r\n"),
        _ => None,
    })
    .await;
    let mut c = Connection::open(&hop, &settings(Duration::from_secs(5)))
        .await
        .unwrap();
    let (from, to) = (sender(), recipients());
    let body: [&[u8]; 2] = [b"X-Sig: 1\r\n", b"Subject: x\r\n\r\n.hidden\r\nend"];
    let size = body.iter().map(|p| p.len() as u64).sum();
    let result = c
        .deliver(&transaction(&from, &to, size), Outgoing::memory(&body))
        .await;
    assert!(
        matches!(&result.outcomes[0].1, AttemptOutcome::Delivered(a) if a.reply.text == "queued"),
        "{result:?}"
    );
    assert!(c.is_ready());
    c.quit().await;
    let seen = seen.await.unwrap();
    assert!(
        seen.ends_with("DATA\r\nX-Sig: 1\r\nSubject: x\r\n\r\n..hidden\r\nend\r\n.\r\nQUIT\r\n"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_silent_peer_times_out_and_a_refused_connection_is_a_network_error() {
    let (hop, _seen) = peer(|_| None).await;
    let started = std::time::Instant::now();
    let Err(e) = Connection::open(&hop, &settings(Duration::from_millis(300))).await else {
        panic!("opened a connection to a silent peer");
    };
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        (e.stage, e.source, e.reply.code),
        (Stage::Greeting, crate::Source::Network, 451)
    );
    assert!(e.is_connection_level() && e.try_next_host());

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop = NextHop {
        endpoint: Endpoint::from(closed.local_addr().unwrap()),
        host: "gone.test".into(),
    };
    drop(closed);
    let Err(e) = Connection::open(&hop, &settings(Duration::from_secs(1))).await else {
        panic!("connected to a closed port");
    };
    assert_eq!((e.stage, e.reply.code), (Stage::Connect, 451));
    assert!(e.reply.text.contains("gone.test"), "{}", e.reply.text);
}

#[tokio::test]
async fn a_peer_that_hangs_up_after_the_data_leaves_the_recipients_transient() {
    let (hop, _seen) = peer(|line| match line {
        "<connect>" => Some("220 peer.test\r\n"),
        l if l.starts_with("EHLO") => Some("250 peer.test\r\n"),
        l if l.starts_with("MAIL") || l.starts_with("RCPT") => Some("250 ok\r\n"),
        "DATA" => Some("354 go\r\n"),
        // Hangs up instead of answering the end of the message.
        "." => Some(""),
        _ => None,
    })
    .await;
    let mut c = Connection::open(&hop, &settings(Duration::from_millis(500)))
        .await
        .unwrap();
    let (from, to) = (sender(), recipients());
    let result = c
        .deliver(&transaction(&from, &to, 5), Outgoing::memory(&[b"x\r\n"]))
        .await;
    assert!(
        matches!(&result.outcomes[0].1, AttemptOutcome::Transient(a) if a.reply.code == 451),
        "{result:?}"
    );
    assert!(!c.is_ready());
}

#[tokio::test]
async fn starttls_then_ehlo_again_under_tls() {
    use std::sync::Arc;
    let cert = rcgen::generate_simple_self_signed(vec!["peer.test".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop = NextHop {
        endpoint: Endpoint::from(listener.local_addr().unwrap()),
        host: "peer.test".into(),
    };
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"220 peer.test\r\n").await.unwrap();
        let mut lines = BufReader::new(stream);
        let mut line = String::new();
        lines.read_line(&mut line).await.unwrap();
        lines
            .get_mut()
            .write_all(b"250-peer.test\r\n250 STARTTLS\r\n")
            .await
            .unwrap();
        line.clear();
        lines.read_line(&mut line).await.unwrap();
        assert_eq!(line, "STARTTLS\r\n");
        lines.get_mut().write_all(b"220 go\r\n").await.unwrap();
        let tls = acceptor.accept(lines.into_inner()).await.unwrap();
        let mut lines = BufReader::new(tls);
        line.clear();
        lines.read_line(&mut line).await.unwrap();
        assert_eq!(line, "EHLO mx.test\r\n");
        lines
            .get_mut()
            .write_all(b"250 peer.test\r\n")
            .await
            .unwrap();
        line.clear();
        lines.read_line(&mut line).await.unwrap();
        line
    });
    let mut s = settings(Duration::from_secs(5));
    s.tls = TlsPolicy::Opportunistic;
    let c = Connection::open(&hop, &s).await.unwrap();
    assert!(c.session().tls_active());
    c.quit().await;
    assert_eq!(server.await.unwrap(), "QUIT\r\n");
}

fn spool_file(name: &str, content: &[u8]) -> backstop_types::Spooled {
    let dir = std::env::temp_dir().join(format!("backstop-driver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    backstop_types::Spooled {
        path,
        len: content.len() as u64,
    }
}

/// A spooled rest is read from its file as it goes out, dot-stuffed across the read pieces
/// (a dot at the start of a line that starts a piece), after the pieces in memory.
#[tokio::test]
async fn a_spooled_message_is_sent_from_its_file() {
    let (hop, seen) = peer(|line| match line {
        "<connect>" => Some("220 peer.test\r\n"),
        l if l.starts_with("EHLO") => Some("250-peer.test\r\n250 PIPELINING\r\n"),
        "DATA" => Some("250 ok\r\n250 ok\r\n354 go\r\n"),
        l if l.starts_with("MAIL") || l.starts_with("RCPT") => None,
        "." => Some("250 2.0.0 queued\r\n"),
        "QUIT" => Some("221 bye\r\n"),
        _ => None,
    })
    .await;
    let mut c = Connection::open(&hop, &settings(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut rest = Vec::new();
    for n in 0..20_000 {
        rest.extend_from_slice(format!(".{n:06} of the spooled part\r\n").as_bytes());
    }
    let tail = spool_file("sent", &rest);
    let (from, to) = (sender(), recipients());
    let head: [&[u8]; 1] = [b"Subject: big\r\n\r\n"];
    let body = Outgoing {
        pieces: &head,
        tail: Some(&tail),
    };
    let result = c.deliver(&transaction(&from, &to, body.len()), body).await;
    assert!(
        matches!(&result.outcomes[0].1, AttemptOutcome::Delivered(_)),
        "{result:?}"
    );
    c.quit().await;
    let seen = seen.await.unwrap();
    let data = &seen[seen.find("DATA\r\n").unwrap() + 6..seen.find("\r\n.\r\nQUIT").unwrap() + 2];
    let mut expected = b"Subject: big\r\n\r\n".to_vec();
    for line in rest.split_inclusive(|&b| b == b'\n') {
        expected.push(b'.');
        expected.extend_from_slice(line);
    }
    assert_eq!(data.len(), expected.len());
    assert!(data.as_bytes() == expected, "the stuffed message differs");
    std::fs::remove_file(&tail.path).unwrap();
}

/// A spool file shorter than its record (a truncated disk file) never ends the data: the
/// connection is dropped before the final dot, and the recipient is tried again later.
#[tokio::test]
async fn a_short_spool_file_never_sends_the_end_of_data() {
    let (hop, seen) = peer(|line| match line {
        "<connect>" => Some("220 peer.test\r\n"),
        l if l.starts_with("EHLO") => Some("250-peer.test\r\n250 PIPELINING\r\n"),
        "DATA" => Some("250 ok\r\n250 ok\r\n354 go\r\n"),
        l if l.starts_with("MAIL") || l.starts_with("RCPT") => None,
        "." => Some("250 2.0.0 queued\r\n"),
        _ => None,
    })
    .await;
    let mut c = Connection::open(&hop, &settings(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut tail = spool_file("short", b"only this\r\n");
    tail.len = 1000;
    let (from, to) = (sender(), recipients());
    let head: [&[u8]; 1] = [b"Subject: cut\r\n\r\n"];
    let body = Outgoing {
        pieces: &head,
        tail: Some(&tail),
    };
    let result = c.deliver(&transaction(&from, &to, body.len()), body).await;
    match &result.outcomes[0].1 {
        AttemptOutcome::Transient(a) => {
            assert!(a.reply.text.contains("reading the message"), "{a:?}")
        }
        other => panic!("{other:?}"),
    }
    drop(c);
    let seen = seen.await.unwrap();
    assert!(seen.ends_with("only this\r\n"), "{seen:?}");
    std::fs::remove_file(&tail.path).unwrap();
}
