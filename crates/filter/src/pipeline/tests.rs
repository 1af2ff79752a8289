use super::*;
use crate::rules::{Action, Matcher, Rule};
use backstop_types::{BodyType, ClientInfo, DsnParams, TrustClass, UnixTime};

fn draft(message: &str) -> Draft {
    let address = |a: &str| Address::parse(a).unwrap();
    Draft::new(
        Envelope {
            sender: ReversePath::Address(address("a@example.org")),
            recipients: vec![Recipient {
                address: address("b@example.test"),
                notify: Notify::Default,
                orcpt: None,
            }],
            dsn: DsnParams {
                ret: None,
                envid: None,
            },
            body_type: BodyType::SevenBit,
            smtputf8: false,
            client: ClientInfo {
                ip: "192.0.2.1".parse().unwrap(),
                helo: "client.example.org".into(),
                ptr: None,
                tls: None,
                auth: None,
                listener: "mx".into(),
            },
            arrival: UnixTime(1_795_367_999),
            trust: TrustClass::Unverified,
        },
        message.replace('\n', "\r\n").into_bytes(),
    )
}

const MESSAGE: &str = "Received: from x\n\tby y; Sun, 22 Nov 2026 17:00:00 +0000\n\
    From: a@example.org\nSubject: hello\nX-Tag: one\nX-Tag: two\n\nbody\n";

fn text(draft: &Draft) -> String {
    String::from_utf8(draft.message.clone())
        .unwrap()
        .replace("\r\n", "\n")
}

#[test]
fn header_changes_land_where_a_milter_means_them() {
    let mut d = draft(MESSAGE);
    assert_eq!(
        d.headers()[0].1,
        "from x\r\n\tby y; Sun, 22 Nov 2026 17:00:00 +0000"
    );
    d.apply(Change::InsertHeader {
        index: 0,
        name: "X-First".into(),
        value: "1".into(),
    });
    d.apply(Change::AddHeader {
        name: "X-Last".into(),
        value: "folded\n\tvalue".into(),
    });
    d.apply(Change::ChangeHeader {
        name: "x-tag".into(),
        occurrence: 2,
        value: "TWO".into(),
    });
    d.apply(Change::ChangeHeader {
        name: "Subject".into(),
        occurrence: 1,
        value: String::new(),
    });
    assert!(d.changed);
    assert_eq!(
        text(&d),
        "X-First: 1\nReceived: from x\n\tby y; Sun, 22 Nov 2026 17:00:00 +0000\n\
         From: a@example.org\nX-Tag: one\nX-Tag: TWO\nX-Last: folded\n\tvalue\n\nbody\n"
    );
    d.apply(Change::RemoveHeader {
        name: "X-TAG".into(),
    });
    d.apply(Change::ReplaceBody(b"new\nbody\n".to_vec()));
    assert_eq!(
        text(&d),
        "X-First: 1\nReceived: from x\n\tby y; Sun, 22 Nov 2026 17:00:00 +0000\n\
         From: a@example.org\nX-Last: folded\n\tvalue\n\nnew\nbody\n"
    );
}

/// Found by the milter and rspamd fuzz targets: a field name with a space or a non-ASCII
/// octet (`"X-Extra header"`, a milter's `\xff-Milter`), or a value with an empty line in it,
/// ended the header where a next hop reads it, so every field after it became body.
#[test]
fn changes_that_would_break_the_message_are_refused_whole() {
    let add = |name: &str, value: &str| Change::AddHeader {
        name: name.into(),
        value: value.into(),
    };
    for bad in [
        add("Xwrite subjec-Extra", "2"),
        add("\u{fffd}-Milter", "checked"),
        add("X-Colon:", "1"),
        add("", "1"),
        add("X-Two", "one\n\nBcc: everyone@example.test"),
        add("X-Two", "one\r\nBcc: everyone@example.test"),
        add("X-Cr", "one\rtwo"),
        add("X-Nul", "one\0two"),
        Change::InsertHeader {
            index: 0,
            name: "X First".into(),
            value: "1".into(),
        },
        Change::ChangeHeader {
            name: "Subject".into(),
            occurrence: 1,
            value: "*** SPAM ***\n\nhi".into(),
        },
        Change::ReplaceBody(b"one\rtwo\r\n".to_vec()),
        Change::ReplaceBody(b"one\0two\r\n".to_vec()),
    ] {
        let mut d = draft(MESSAGE);
        let result = d.apply_all(vec![add("X-Good", "1"), bad.clone()]);
        assert!(result.is_err(), "{bad:?}");
        assert_eq!(text(&d), MESSAGE, "nothing applied for {bad:?}");
    }
    // Folds (LF or CRLF, then a space or tab), bare LFs in a body and empty values are fine.
    let mut d = draft(MESSAGE);
    d.apply_all(vec![
        add("X-Folded", "one\n\ttwo\r\n three\n"),
        Change::ChangeHeader {
            name: "X Not A Field".into(),
            occurrence: 1,
            value: String::new(),
        },
        Change::ReplaceBody(b"new\nbody\n".to_vec()),
    ])
    .unwrap();
    assert!(text(&d).contains("X-Folded: one\n\ttwo\n three\n\nnew\nbody\n"));
}

#[test]
fn envelope_changes() {
    let mut d = draft(MESSAGE);
    let c = Address::parse("c@example.test").unwrap();
    d.apply(Change::AddRecipient(c.clone()));
    d.apply(Change::AddRecipient(c.clone()));
    d.apply(Change::DeleteRecipient(
        Address::parse("b@example.test").unwrap(),
    ));
    d.apply(Change::ChangeSender(ReversePath::Null));
    let recipients: Vec<_> = d.envelope.recipients.iter().map(|r| &r.address).collect();
    assert_eq!(recipients, vec![&c]);
    assert_eq!(d.envelope.sender, ReversePath::Null);
}

fn rule(pattern: &str, action: Action) -> Check {
    Check {
        name: format!("rule {pattern}"),
        scanner: Scanner::Rule(Rule {
            matcher: Matcher::Body {
                pattern: regex::Regex::new(pattern).unwrap(),
            },
            action,
        }),
        on_error: OnError::Tempfail,
    }
}

/// A scanner that takes the connection and never answers.
fn silent(on_error: OnError) -> (Check, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let check = Check {
        name: "clamd silent".into(),
        scanner: Scanner::Clamd(crate::clamd::Clamd {
            endpoint: crate::net::Endpoint::from(listener.local_addr().unwrap()),
        }),
        on_error,
    };
    (check, listener)
}

fn run(pipeline: &Pipeline, d: &mut Draft) -> Outcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pipeline.run(d))
}

#[test]
fn the_first_check_that_does_not_continue_decides() {
    let pipeline = Pipeline {
        checks: vec![
            rule("nothing like this", Action::Reject("no".into())),
            rule("body", Action::Quarantine),
            rule("body", Action::Reject("never reached".into())),
        ],
        deadline: Duration::from_secs(60),
    };
    assert_eq!(
        run(&pipeline, &mut draft(MESSAGE)),
        Outcome::Quarantine(backstop_types::quarantine::Reason::content(
            "rule",
            "rule body",
            "body matches body"
        ))
    );
    let discard = Pipeline {
        checks: vec![rule("body", Action::Discard)],
        deadline: Duration::from_secs(60),
    };
    assert_eq!(
        run(&discard, &mut draft(MESSAGE)),
        Outcome::Discard("rule body: body matches body".into())
    );
}

#[test]
fn a_scanner_past_the_deadline_is_a_451_unless_told_to_accept() {
    let (stalled, _listener) = silent(OnError::Tempfail);
    let pipeline = Pipeline {
        checks: vec![stalled],
        deadline: Duration::from_secs(1),
    };
    assert_eq!(
        run(&pipeline, &mut draft(MESSAGE)),
        Outcome::Refuse(Reply::content_check_unavailable().decided_by("clamd"))
    );
    // on_error = accept: the next check still runs.
    let lenient = Check {
        name: "clamd gone".into(),
        scanner: Scanner::Clamd(crate::clamd::Clamd {
            endpoint: crate::net::Endpoint::Unix("/nonexistent/clamd.ctl".into()),
        }),
        on_error: OnError::Accept,
    };
    let pipeline = Pipeline {
        checks: vec![lenient, rule("body", Action::Reject("after".into()))],
        deadline: Duration::from_secs(1),
    };
    assert_eq!(
        run(&pipeline, &mut draft(MESSAGE)),
        Outcome::Refuse(Reply::content_rejected("after").decided_by("rule"))
    );
    // A scanner nobody listens for.
    let gone = Check {
        name: "clamd gone".into(),
        scanner: Scanner::Clamd(crate::clamd::Clamd {
            endpoint: crate::net::Endpoint::Unix("/nonexistent/clamd.ctl".into()),
        }),
        on_error: OnError::Tempfail,
    };
    let pipeline = Pipeline {
        checks: vec![gone],
        deadline: Duration::from_secs(60),
    };
    assert_eq!(
        run(&pipeline, &mut draft(MESSAGE)),
        Outcome::Refuse(Reply::content_check_unavailable().decided_by("clamd"))
    );
}

#[tokio::test]
async fn a_line_break_never_reaches_rspamd() {
    // The socket does not exist: the request is refused before any connection is tried.
    let rspamd = crate::rspamd::Rspamd {
        endpoint: crate::net::Endpoint::Unix("/nonexistent/rspamd.sock".into()),
    };
    let mut bad = draft("Subject: x\n\nx\n");
    bad.envelope.client.helo = "client.example.org\r\nX-Spam-Flag: NO".into();
    let err = rspamd.check(&bad).await.unwrap_err();
    // Refused as a request the protocol cannot carry, not as a failed connection.
    assert!(
        matches!(&err, crate::error::ScanError::Protocol { reason, .. } if reason.contains("contains CR")),
        "{err}"
    );
}

/// An rspamd that asks for a header field that would break the message: the check fails
/// (451), and nothing it asked for is made.
#[test]
fn a_scanner_asking_for_a_broken_field_fails_its_check() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let rspamd = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0; 4096];
        // The request's header and the whole message, which ends with "body\r\n".
        while !request.ends_with(b"body\r\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        let json = br#"{"action":"add header","milter":{"add_headers":{"X-Bcc header":"x"}}}"#;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            json.len()
        )
        .unwrap();
        stream.write_all(json).unwrap();
    });
    let pipeline = Pipeline {
        checks: vec![Check {
            name: "rspamd".into(),
            scanner: Scanner::Rspamd(crate::rspamd::Rspamd {
                endpoint: crate::net::Endpoint::Tcp(address),
            }),
            on_error: OnError::Tempfail,
        }],
        deadline: Duration::from_secs(60),
    };
    let mut d = draft(MESSAGE);
    assert_eq!(
        run(&pipeline, &mut d),
        Outcome::Refuse(Reply::content_check_unavailable().decided_by("rspamd"))
    );
    assert_eq!(text(&d), MESSAGE);
    rspamd.join().unwrap();
}

/// A clamd on loopback that reads one INSTREAM and answers FOUND when the stream holds
/// `VIRUS-MARK`; the stream it got comes back through the handle.
fn scripted_clamd() -> (Check, std::thread::JoinHandle<Vec<u8>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let check = Check {
        name: "clamd scripted".into(),
        scanner: Scanner::Clamd(crate::clamd::Clamd {
            endpoint: crate::net::Endpoint::from(listener.local_addr().unwrap()),
        }),
        on_error: OnError::Tempfail,
    };
    let got = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut command = [0u8; 10];
        s.read_exact(&mut command).unwrap();
        assert_eq!(&command, b"zINSTREAM\0");
        let mut stream = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                return stream;
            }
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                break;
            }
            let mut chunk = vec![0; len];
            s.read_exact(&mut chunk).unwrap();
            stream.extend_from_slice(&chunk);
        }
        let found = stream.windows(10).any(|w| w == b"VIRUS-MARK");
        let answer: &[u8] = if found {
            b"stream: Mark FOUND\0"
        } else {
            b"stream: OK\0"
        };
        s.write_all(answer).unwrap();
        stream
    });
    (check, got)
}

fn spooled_draft(name: &str, rest: &[u8], len: u64) -> Draft {
    let dir = std::env::temp_dir().join(format!("backstop-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, rest).unwrap();
    let head = draft(MESSAGE);
    let at = head.body_offset();
    Draft::spooled(
        head.envelope,
        head.message[..at].to_vec(),
        backstop_types::Spooled { path, len },
    )
}

/// A message too large for memory: the checks that need it whole are skipped, clamd reads it
/// from its file (all of it: what is past the head is scanned), and a file cut short is a
/// failed check, never a clean one.
#[test]
fn a_spooled_draft_is_streamed_to_clamd_and_skipped_by_rules() {
    let mut rest = b"line\r\n".repeat(50_000);
    rest.extend_from_slice(b"VIRUS-MARK\r\n");
    let (clamd, got) = scripted_clamd();
    let pipeline = Pipeline {
        checks: vec![rule("line", Action::Reject("a rule saw it".into())), clamd],
        deadline: Duration::from_secs(60),
    };
    let mut d = spooled_draft("virus", &rest, rest.len() as u64);
    assert!(matches!(run(&pipeline, &mut d), Outcome::Refuse(r) if r.code() == 554));
    let stream = got.join().unwrap();
    assert!(stream.ends_with(&rest), "the head, then the whole file");
    assert!(stream.starts_with(&d.message));

    let (clamd, _got) = scripted_clamd();
    let pipeline = Pipeline {
        checks: vec![clamd],
        deadline: Duration::from_secs(60),
    };
    let mut short = spooled_draft("short", b"line\r\n", 1000);
    assert!(
        matches!(run(&pipeline, &mut short), Outcome::Refuse(r) if r.code() == 451),
        "a short file fails the check"
    );
}

/// Header changes on a spooled draft touch its head only; a new body replaces the file.
#[test]
fn changes_to_a_spooled_draft() {
    let mut d = spooled_draft("changed", b"old body\r\n", 10);
    d.apply(Change::AddHeader {
        name: "X-Scanned".into(),
        value: "yes".into(),
    });
    assert!(d.tail.is_some());
    assert!(text(&d).ends_with("X-Scanned: yes\n\n"), "{}", text(&d));
    d.apply(Change::ReplaceBody(b"new body\r\n".to_vec()));
    assert!(d.tail.is_none());
    assert!(
        text(&d).ends_with("X-Scanned: yes\n\nnew body\n"),
        "{}",
        text(&d)
    );
}
