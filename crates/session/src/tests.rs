//! Transcript tests: client input in, everything the session says and does out.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use backstop_types::{Domain, QueueId, TlsInfo, UnixTime};
use expect_test::{expect, Expect};

use crate::{
    AuthOutcome, AuthPolicy, ContentVerdict, Output, Peer, RecipientVerdict, SenderRights,
    SenderVerdict, ServerSession, SessionConfig,
};

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        listener: "mx".into(),
        max_line_length: 512,
        max_recipients: 3,
        max_message_size: 1000,
        max_errors: 5,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
        starttls: true,
        auth: AuthPolicy::Disabled,
        require_auth: false,
        local_domains: vec![Domain::parse("local.test").unwrap()],
        relay_domains: vec![Domain::parse("internal.test").unwrap()],
        check_recipients: false,
        check_senders: false,
        check_messages: false,
    }
}

fn submission() -> SessionConfig {
    SessionConfig {
        listener: "submission".into(),
        auth: AuthPolicy::RequireTls,
        require_auth: true,
        ..config()
    }
}

/// Drives a session the way the listener does and records what happens. The queue answers with
/// ids 1, 2, ...; the password of every user is `secret`.
struct Harness {
    session: ServerSession,
    log: String,
    queued: u64,
}

impl Harness {
    fn new(config: SessionConfig) -> Harness {
        let peer = Peer {
            ip: "192.0.2.1".parse().unwrap(),
            local_submitter: false,
            tls: None,
            id: 1,
        };
        let mut h = Harness {
            session: ServerSession::new(Arc::new(config), peer, UnixTime(1_795_367_999)),
            log: String::new(),
            queued: 0,
        };
        h.session.greet();
        h.drain();
        h
    }

    fn send(&mut self, input: &[u8]) -> &mut Harness {
        let shown = String::from_utf8_lossy(input)
            .replace('\r', "\\r")
            .replace('\n', "\\n\nC: ");
        let shown = shown.strip_suffix("\nC: ").unwrap_or(&shown);
        writeln!(self.log, "C: {shown}").unwrap();
        self.session.handle_bytes(input, UnixTime(1_795_367_999));
        self.drain();
        self
    }

    fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Reply(reply) => {
                    for line in reply.to_string().lines() {
                        writeln!(self.log, "S: {line}").unwrap();
                    }
                }
                Output::StartTls => {
                    writeln!(self.log, "[starttls]").unwrap();
                    self.session.tls_established(TlsInfo {
                        version: "TLSv1.3".into(),
                        cipher: "TLS13_AES_128_GCM_SHA256".into(),
                    });
                }
                Output::Authenticate(credentials) => {
                    writeln!(self.log, "[authenticate {credentials:?}]").unwrap();
                    let outcome = if credentials.password == "secret" {
                        AuthOutcome::Success(SenderRights::Only {
                            addresses: vec![
                                backstop_types::Address::parse("alice@local.test").unwrap()
                            ],
                            domains: vec![Domain::parse("alice.test").unwrap()],
                        })
                    } else {
                        AuthOutcome::Failure
                    };
                    self.session.handle_auth(credentials, outcome);
                }
                Output::Enqueue(message) => {
                    let e = &message.envelope;
                    let rcpts: Vec<String> =
                        e.recipients.iter().map(|r| r.address.to_string()).collect();
                    writeln!(
                        self.log,
                        "[enqueue from={} to={} trust={:?}]\n{}[end]",
                        e.sender,
                        rcpts.join(","),
                        e.trust,
                        String::from_utf8_lossy(&message.body).replace('\r', "\\r")
                    )
                    .unwrap();
                    self.queued += 1;
                    self.session.handle_enqueued(Ok(QueueId(self.queued)));
                }
                Output::CheckMessage(message) => {
                    let body = String::from_utf8_lossy(&message.body).into_owned();
                    writeln!(self.log, "[check message]").unwrap();
                    let verdict = if body.contains("Subject: spam") {
                        ContentVerdict::Refuse(backstop_types::Reply::content_refused("spam"))
                    } else if body.contains("Subject: odd") {
                        ContentVerdict::Quarantine("odd".into())
                    } else {
                        ContentVerdict::Accept
                    };
                    self.session.handle_message(message, verdict);
                }
                Output::Quarantine { message, reason } => {
                    writeln!(
                        self.log,
                        "[quarantine from={} reason={reason}]",
                        message.envelope.sender
                    )
                    .unwrap();
                    self.queued += 1;
                    self.session.handle_enqueued(Ok(QueueId(self.queued)));
                }
                Output::CheckSender(query) => {
                    writeln!(
                        self.log,
                        "[check sender {} user={:?}]",
                        query.sender, query.user
                    )
                    .unwrap();
                    let verdict = match query.sender.to_string().as_str() {
                        "<busy@example.org>" => SenderVerdict::RateLimited,
                        "<broken@example.org>" => SenderVerdict::Unavailable,
                        _ => SenderVerdict::Accept,
                    };
                    self.session.handle_sender(verdict);
                }
                Output::CheckRecipient(query) => {
                    let address = query.recipient;
                    writeln!(
                        self.log,
                        "[check {address} from {} local={} trusted={}]",
                        query.sender, query.local, query.trusted
                    )
                    .unwrap();
                    let a = |s: &str| backstop_types::Address::parse(s).unwrap();
                    let verdict = match address.to_string().as_str() {
                        "bob@local.test" => RecipientVerdict::Accept(vec![a("bob@local.test")]),
                        "sales@local.test" => RecipientVerdict::Accept(vec![
                            a("alice@local.test"),
                            a("bob@local.test"),
                        ]),
                        "down@local.test" => RecipientVerdict::Unavailable,
                        "grey@local.test" => RecipientVerdict::Defer { retry_after: 300 },
                        _ => RecipientVerdict::Unknown,
                    };
                    self.session.handle_recipient(verdict);
                }
                Output::Close => writeln!(self.log, "[close]").unwrap(),
            }
        }
    }

    fn check(&self, expect: Expect) {
        expect.assert_eq(&self.log);
    }
}

fn check(config: SessionConfig, inputs: &[&[u8]], expect: Expect) {
    let mut h = Harness::new(config);
    for input in inputs {
        h.send(input);
    }
    h.check(expect);
}

#[test]
fn a_plain_transaction() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<alice@example.org>\r\n",
            b"RCPT TO:<bob@local.test>\r\n",
            b"DATA\r\n",
            b"Subject: hi\r\n\r\nHello\r\n..dot\r\n.\r\n",
            b"QUIT\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<alice@example.org>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<bob@local.test>\r\n
            S: 250 2.1.5 Recipient ok
            C: DATA\r\n
            S: 354 2.0.0 End data with <CR><LF>.<CR><LF>
            C: Subject: hi\r\n
            C: \r\n
            C: Hello\r\n
            C: ..dot\r\n
            C: .\r\n
            [enqueue from=<alice@example.org> to=bob@local.test trust=Unverified]
            Received: from client.test (unknown [192.0.2.1])\r
            	by mx.test (backstop) with ESMTP\r
            	for <bob@local.test>; Sun, 22 Nov 2026 17:19:59 +0000\r
            Subject: hi\r
            \r
            Hello\r
            .dot\r
            [end]
            S: 250 2.0.0 Ok: queued as 0000000000000001
            C: QUIT\r\n
            S: 221 2.0.0 Bye
            [close]
        "#]],
    );
}

#[test]
fn pipelined_transaction_and_chunking() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<> BODY=8BITMIME RET=HDRS ENVID=abc\r\nRCPT TO:<bob@local.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@local.test\r\nBDAT 10\r\nSubject: xBDAT 4 LAST\r\n\r\n\r\nQUIT\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<> BODY=8BITMIME RET=HDRS ENVID=abc\r\n
            C: RCPT TO:<bob@local.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@local.test\r\n
            C: BDAT 10\r\n
            C: Subject: xBDAT 4 LAST\r\n
            C: \r\n
            C: \r\n
            C: QUIT\r\n
            S: 250 2.1.0 Sender ok
            S: 250 2.1.5 Recipient ok
            S: 250 2.0.0 10 octets received
            [enqueue from=<> to=bob@local.test trust=Unverified]
            Received: from client.test (unknown [192.0.2.1])\r
            	by mx.test (backstop) with ESMTP\r
            	for <bob@local.test>; Sun, 22 Nov 2026 17:19:59 +0000\r
            Subject: x\r
            \r
            [end]
            S: 250 2.0.0 Ok: queued as 0000000000000001
            S: 221 2.0.0 Bye
            [close]
        "#]],
    );
}

#[test]
fn wrong_order_gets_503() {
    check(
        SessionConfig {
            max_errors: 10,
            ..config()
        },
        &[
            b"MAIL FROM:<a@example.org>\r\n",
            b"HELO client.test\r\n",
            b"RCPT TO:<bob@local.test>\r\n",
            b"DATA\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"DATA\r\n",
            b"RSET\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: MAIL FROM:<a@example.org>\r\n
            S: 503 5.5.1 Send HELO or EHLO first
            C: HELO client.test\r\n
            S: 250 2.0.0 mx.test Hello client.test
            C: RCPT TO:<bob@local.test>\r\n
            S: 503 5.5.1 Need MAIL before RCPT
            C: DATA\r\n
            S: 503 5.5.1 Need MAIL command
            C: MAIL FROM:<a@example.org>\r\n
            S: 250 2.1.0 Sender ok
            C: MAIL FROM:<a@example.org>\r\n
            S: 503 5.5.1 Nested MAIL command
            C: DATA\r\n
            S: 503 5.5.1 Need RCPT command (no valid recipients)
            C: RSET\r\n
            S: 250 2.0.0 Ok
        "#]],
    );
}

#[test]
fn small_commands() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"NOOP\r\n",
            b"VRFY root\r\n",
            b"EXPN staff\r\n",
            b"HELP\r\n",
            b"FOO bar\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: NOOP\r\n
            S: 250 2.0.0 Ok
            C: VRFY root\r\n
            S: 252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery
            C: EXPN staff\r\n
            S: 502 5.5.1 EXPN not implemented
            C: HELP\r\n
            S: 214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH; see RFC 5321
            C: FOO bar\r\n
            S: 500 5.5.2 Command unrecognized
        "#]],
    );
}

#[test]
fn relaying_is_refused_without_auth_but_postmaster_is_accepted() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<victim@elsewhere.example>\r\n",
            b"RCPT TO:<Postmaster>\r\n",
            b"RCPT TO:<>\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<a@example.org>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<victim@elsewhere.example>\r\n
            S: 554 5.7.1 Relay access denied
            C: RCPT TO:<Postmaster>\r\n
            S: 250 2.1.5 Recipient ok
            C: RCPT TO:<>\r\n
            S: 501 5.1.3 Bad recipient address syntax
        "#]],
    );
}

#[test]
fn address_tricks_do_not_relay() {
    check(
        SessionConfig {
            max_errors: 20,
            ..config()
        },
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<victim%elsewhere.example@local.test>\r\n",
            b"RCPT TO:<elsewhere.example!victim@local.test>\r\n",
            b"RCPT TO:<\"victim@elsewhere.example\"@local.test>\r\n",
            b"RCPT TO:<@local.test:victim@elsewhere.example>\r\n",
            b"RCPT TO:<victim@elsewhere.example@local.test>\r\n",
            b"RCPT TO:<bob@local.test>\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<a@example.org>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<victim%elsewhere.example@local.test>\r\n
            S: 554 5.7.1 Relay access denied
            C: RCPT TO:<elsewhere.example!victim@local.test>\r\n
            S: 554 5.7.1 Relay access denied
            C: RCPT TO:<"victim@elsewhere.example"@local.test>\r\n
            S: 554 5.7.1 Relay access denied
            C: RCPT TO:<@local.test:victim@elsewhere.example>\r\n
            S: 554 5.7.1 Relay access denied
            C: RCPT TO:<victim@elsewhere.example@local.test>\r\n
            S: 501 5.1.3 Bad recipient address syntax
            C: RCPT TO:<bob@local.test>\r\n
            S: 250 2.1.5 Recipient ok
        "#]],
    );
}

#[test]
fn size_limits_at_mail_and_after_data() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@example.org> SIZE=1001\r\n",
            b"MAIL FROM:<a@example.org> SIZE=999\r\n",
            b"RCPT TO:<bob@local.test>\r\n",
            b"DATA\r\n",
            &[b'x'; 1200],
            b"\r\n.\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<a@example.org> SIZE=1001\r\n
            S: 552 5.3.4 Message size exceeds the fixed maximum of 1000 octets
            C: MAIL FROM:<a@example.org> SIZE=999\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<bob@local.test>\r\n
            S: 250 2.1.5 Recipient ok
            C: DATA\r\n
            S: 354 2.0.0 End data with <CR><LF>.<CR><LF>
            C: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
            C: \r\n
            C: .\r\n
            S: 552 5.3.4 Message size exceeds the fixed maximum of 1000 octets
            C: MAIL FROM:<a@example.org>\r\n
            S: 250 2.1.0 Sender ok
        "#]],
    );
}

#[test]
fn recipient_limit() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<a@local.test>\r\n",
            b"RCPT TO:<b@local.test>\r\n",
            b"RCPT TO:<c@local.test>\r\n",
            b"RCPT TO:<d@local.test>\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<a@example.org>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<a@local.test>\r\n
            S: 250 2.1.5 Recipient ok
            C: RCPT TO:<b@local.test>\r\n
            S: 250 2.1.5 Recipient ok
            C: RCPT TO:<c@local.test>\r\n
            S: 250 2.1.5 Recipient ok
            C: RCPT TO:<d@local.test>\r\n
            S: 452 4.5.3 Too many recipients (at most 3 per message)
        "#]],
    );
}

#[test]
fn smtputf8_addresses_need_the_parameter() {
    check(
        config(),
        &[
            "EHLO client.test\r\n".as_bytes(),
            "MAIL FROM:<jörg@example.org>\r\n".as_bytes(),
            "MAIL FROM:<jörg@example.org> SMTPUTF8\r\n".as_bytes(),
            "RCPT TO:<bjørn@local.test>\r\n".as_bytes(),
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<jörg@example.org>\r\n
            S: 553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter
            C: MAIL FROM:<jörg@example.org> SMTPUTF8\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<bjørn@local.test>\r\n
            S: 250 2.1.5 Recipient ok
        "#]],
    );
}

#[test]
fn unadvertised_parameters_are_refused() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n",
            b"MAIL FROM:<a@example.org> REQUIRETLS\r\n",
            b"MAIL FROM:<a@example.org> FOO=BAR\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n
            S: 555 5.5.4 Unsupported parameter BODY=BINARYMIME
            C: MAIL FROM:<a@example.org> REQUIRETLS\r\n
            S: 555 5.5.4 Unsupported parameter REQUIRETLS
            C: MAIL FROM:<a@example.org> FOO=BAR\r\n
            S: 555 5.5.4 Unsupported parameter FOO=BAR
        "#]],
    );
}

#[test]
fn smuggling_in_data_is_refused_and_nothing_is_queued() {
    for smuggle in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r.\r",
        b"\r.\n",
        b"\n.\r",
        b"\r\n\x00.\r\n",
    ] {
        let mut h = Harness::new(config());
        h.send(b"EHLO client.test\r\n");
        h.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n");
        let mut data = b"Subject: one\r\n\r\nfirst".to_vec();
        data.extend_from_slice(smuggle);
        data.extend_from_slice(
            b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n",
        );
        h.send(&data);
        assert_eq!(h.queued, 0, "{smuggle:?}");
        assert!(
            h.log
                .contains("S: 554 5.6.0 Message refused: bare CR, bare LF or NUL"),
            "{smuggle:?}: {}",
            h.log
        );
    }
}

#[test]
fn smuggling_in_bdat_is_refused() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@local.test>\r\nBDAT 7\r\nab\n.\ncdBDAT 4 LAST\r\nxyz\nRSET\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<a@example.org>\r\n
            C: RCPT TO:<bob@local.test>\r\n
            C: BDAT 7\r\n
            C: ab\n
            C: .\n
            C: cdBDAT 4 LAST\r\n
            C: xyz\n
            C: RSET\r\n
            S: 250 2.1.0 Sender ok
            S: 250 2.1.5 Recipient ok
            S: 554 5.6.0 Message refused: bare CR, bare LF or NUL in the message data
            S: 503 5.5.1 Need MAIL command
            S: 250 2.0.0 Ok
        "#]],
    );
}

#[test]
fn bare_newlines_in_commands_are_refused() {
    check(
        config(),
        &[
            b"EHLO client.test\n",
            b"EHLO client.test\r\r\n",
            b"NOOP\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\n
            S: 500 5.5.2 Command refused: lines must end with CRLF, not a bare CR or LF
            C: EHLO client.test\r\r\n
            S: 500 5.5.2 Command refused: lines must end with CRLF, not a bare CR or LF
            C: NOOP\r\n
            S: 250 2.0.0 Ok
        "#]],
    );
}

#[test]
fn overlong_lines_are_refused_and_skipped() {
    let mut long = b"NOOP ".to_vec();
    long.extend_from_slice(&[b'x'; 600]);
    check(
        config(),
        &[b"EHLO client.test\r\n", &long, b"yyy\r\nNOOP\r\n"],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: NOOP xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
            S: 500 5.5.2 Line too long (the limit is 512 octets)
            C: yyy\r\n
            C: NOOP\r\n
            S: 250 2.0.0 Ok
        "#]],
    );
}

#[test]
fn early_talkers_are_refused() {
    let peer = Peer {
        ip: "192.0.2.1".parse().unwrap(),
        local_submitter: false,
        tls: None,
        id: 1,
    };
    let mut session = ServerSession::new(Arc::new(config()), peer, UnixTime(0));
    session.handle_bytes(b"EHLO hasty.test\r\n", UnixTime(0));
    session.greet();
    let outputs: Vec<String> = std::iter::from_fn(|| session.poll_output())
        .map(|o| format!("{o:?}"))
        .collect();
    expect![[r#"
        [
            "Reply(Reply { code: 554, status: Some(EnhancedStatus(5, 5, 0)), lines: [\"Protocol synchronization error: input sent before the greeting\"] })",
            "Close",
        ]
    "#]].assert_debug_eq(&outputs);
}

#[test]
fn pipelining_without_ehlo_is_refused() {
    check(
        config(),
        &[
            b"HELO client.test\r\n",
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@local.test>\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: HELO client.test\r\n
            S: 250 2.0.0 mx.test Hello client.test
            C: MAIL FROM:<a@example.org>\r\n
            C: RCPT TO:<b@local.test>\r\n
            S: 250 2.1.0 Sender ok
            S: 554 5.5.0 Protocol synchronization error: input sent before our reply
            [close]
        "#]],
    );
}

#[test]
fn a_helo_client_that_quits_behind_the_data_still_gets_its_message_queued() {
    check(
        config(),
        &[
            b"HELO client.test\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b@local.test>\r\n",
            b"DATA\r\n",
            b"Subject: x\r\n\r\n.\r\nQUIT\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: HELO client.test\r\n
            S: 250 2.0.0 mx.test Hello client.test
            C: MAIL FROM:<a@example.org>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<b@local.test>\r\n
            S: 250 2.1.5 Recipient ok
            C: DATA\r\n
            S: 354 2.0.0 End data with <CR><LF>.<CR><LF>
            C: Subject: x\r\n
            C: \r\n
            C: .\r\n
            C: QUIT\r\n
            [enqueue from=<a@example.org> to=b@local.test trust=Unverified]
            Received: from client.test (unknown [192.0.2.1])\r
            	by mx.test (backstop) with SMTP\r
            	for <b@local.test>; Sun, 22 Nov 2026 17:19:59 +0000\r
            Subject: x\r
            \r
            [end]
            S: 250 2.0.0 Ok: queued as 0000000000000001
            S: 221 2.0.0 Bye
            [close]
        "#]],
    );
}

#[test]
fn data_must_end_a_pipelined_group() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nSubject: x\r\n\r\n.\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<a@example.org>\r\n
            C: RCPT TO:<b@local.test>\r\n
            C: DATA\r\n
            C: Subject: x\r\n
            C: \r\n
            C: .\r\n
            S: 250 2.1.0 Sender ok
            S: 250 2.1.5 Recipient ok
            S: 354 2.0.0 End data with <CR><LF>.<CR><LF>
            S: 554 5.5.0 Protocol synchronization error: input sent before our reply
            [close]
        "#]],
    );
}

#[test]
fn input_pipelined_after_starttls_is_refused() {
    check(
        submission(),
        &[
            b"EHLO client.test\r\n",
            b"STARTTLS\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: STARTTLS\r\n
            C: AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n
            S: 554 5.5.0 Protocol synchronization error: input sent after STARTTLS before the TLS handshake
            [close]
        "#]],
    );
}

#[test]
fn auth_is_offered_only_under_tls() {
    check(
        submission(),
        &[
            b"EHLO client.test\r\n",
            b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            b"MAIL FROM:<alice@local.test>\r\n",
            b"STARTTLS\r\n",
            b"EHLO client.test\r\n",
            b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n",
            b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            b"MAIL FROM:<alice@local.test>\r\n",
            b"RCPT TO:<friend@elsewhere.example>\r\n",
            b"DATA\r\n",
            b"Subject: out\r\n\r\nbye\r\n.\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n
            S: 538 5.7.11 Encryption required for requested authentication mechanism
            C: MAIL FROM:<alice@local.test>\r\n
            S: 530 5.7.0 Authentication required
            C: STARTTLS\r\n
            S: 220 2.0.0 Ready to start TLS
            [starttls]
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-AUTH PLAIN LOGIN
            S: 250 HELP
            C: AUTH PLAIN AGFsaWNlAHdyb25n\r\n
            [authenticate Credentials { mechanism: Plain, username: "alice", .. }]
            S: 535 5.7.8 Authentication credentials invalid
            C: AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n
            [authenticate Credentials { mechanism: Plain, username: "alice", .. }]
            S: 235 2.7.0 Authentication successful
            C: AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n
            S: 503 5.5.1 Already authenticated
            C: MAIL FROM:<alice@local.test>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<friend@elsewhere.example>\r\n
            S: 250 2.1.5 Recipient ok
            C: DATA\r\n
            S: 354 2.0.0 End data with <CR><LF>.<CR><LF>
            C: Subject: out\r\n
            C: \r\n
            C: bye\r\n
            C: .\r\n
            [enqueue from=<alice@local.test> to=friend@elsewhere.example trust=Authenticated { user: "alice" }]
            Received: from client.test (unknown [192.0.2.1])\r
            	(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r
            	(Authenticated sender: alice)\r
            	by mx.test (backstop) with ESMTPSA\r
            	for <friend@elsewhere.example>; Sun, 22 Nov 2026 17:19:59 +0000\r
            Subject: out\r
            \r
            bye\r
            [end]
            S: 250 2.0.0 Ok: queued as 0000000000000001
        "#]],
    );
}

#[test]
fn auth_login_and_cancel() {
    check(
        SessionConfig {
            auth: AuthPolicy::AllowPlaintext,
            ..submission()
        },
        &[
            b"EHLO client.test\r\n",
            b"AUTH LOGIN\r\n",
            b"*\r\n",
            b"AUTH PLAIN\r\n",
            b"not-base64!\r\n",
            b"AUTH CRAM-MD5\r\n",
            b"AUTH LOGIN\r\n",
            b"YWxpY2U=\r\n",
            b"c2VjcmV0\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250-AUTH PLAIN LOGIN
            S: 250 HELP
            C: AUTH LOGIN\r\n
            S: 334 VXNlcm5hbWU6
            C: *\r\n
            S: 501 5.0.0 Authentication cancelled
            C: AUTH PLAIN\r\n
            S: 334
            C: not-base64!\r\n
            S: 501 5.5.2 Invalid base64 data in authentication
            C: AUTH CRAM-MD5\r\n
            S: 504 5.5.4 Unrecognized authentication mechanism
            C: AUTH LOGIN\r\n
            S: 334 VXNlcm5hbWU6
            C: YWxpY2U=\r\n
            S: 334 UGFzc3dvcmQ6
            C: c2VjcmV0\r\n
            [authenticate Credentials { mechanism: Login, username: "alice", .. }]
            S: 235 2.7.0 Authentication successful
        "#]],
    );
}

#[test]
fn too_many_errors_close_the_session() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"FOO\r\n",
            b"FOO\r\n",
            b"FOO\r\n",
            b"FOO\r\n",
            b"FOO\r\n",
            b"NOOP\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: FOO\r\n
            S: 500 5.5.2 Command unrecognized
            C: FOO\r\n
            S: 500 5.5.2 Command unrecognized
            C: FOO\r\n
            S: 500 5.5.2 Command unrecognized
            C: FOO\r\n
            S: 500 5.5.2 Command unrecognized
            C: FOO\r\n
            S: 500 5.5.2 Command unrecognized
            S: 421 4.7.0 Too many errors, closing connection
            [close]
            C: NOOP\r\n
        "#]],
    );
}

#[test]
fn timeouts_depend_on_the_phase_and_close() {
    let mut h = Harness::new(config());
    assert_eq!(h.session.read_timeout(), Duration::from_secs(300));
    h.send(b"EHLO client.test\r\n");
    h.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n");
    assert_eq!(h.session.read_timeout(), Duration::from_secs(600));
    h.session.handle_timeout();
    h.drain();
    assert!(h.session.is_closed());
    assert!(h
        .log
        .ends_with("S: 421 4.4.2 Timeout exceeded, closing connection\n[close]\n"));
}

#[test]
fn a_full_disk_gets_452_and_the_session_goes_on() {
    let mut h = Harness::new(config());
    h.send(b"EHLO client.test\r\n");
    h.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n");
    h.session
        .handle_bytes(b"Subject: x\r\n\r\n.\r\n", UnixTime(0));
    let mut replies = Vec::new();
    while let Some(output) = h.session.poll_output() {
        match output {
            Output::Enqueue(_) => h
                .session
                .handle_enqueued(Err(crate::EnqueueFailure::StorageFull)),
            Output::Reply(reply) => replies.push(reply.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        replies,
        ["452 4.3.1 Insufficient system storage, try again later"]
    );
    h.log.clear();
    h.send(b"RSET\r\n");
    h.check(expect![[r#"
        C: RSET\r\n
        S: 250 2.0.0 Ok
    "#]]);
}

#[test]
fn local_recipients_are_verified_when_configured() {
    let mut h = Harness::new(SessionConfig {
        check_recipients: true,
        ..config()
    });
    h.send(b"EHLO client.test\r\n");
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    h.log.clear();
    h.send(b"RCPT TO:<nobody@local.test>\r\n");
    h.send(b"RCPT TO:<down@local.test>\r\n");
    h.send(b"RCPT TO:<grey@local.test>\r\n");
    h.send(b"RCPT TO:<someone@internal.test>\r\n");
    h.send(b"RCPT TO:<postmaster@local.test>\r\n");
    h.send(b"RCPT TO:<sales@local.test> NOTIFY=FAILURE\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n");
    h.send(b"Subject: x\r\n\r\n.\r\n");
    h.check(expect![[r#"
        C: RCPT TO:<nobody@local.test>\r\n
        [check nobody@local.test from <a@example.org> local=true trusted=false]
        S: 550 5.1.1 Recipient address rejected: user unknown
        C: RCPT TO:<down@local.test>\r\n
        [check down@local.test from <a@example.org> local=true trusted=false]
        S: 451 4.4.3 Recipient lookup failed, try again later
        C: RCPT TO:<grey@local.test>\r\n
        [check grey@local.test from <a@example.org> local=true trusted=false]
        S: 451 4.7.1 Greylisted, please try again in 300 seconds
        C: RCPT TO:<someone@internal.test>\r\n
        [check someone@internal.test from <a@example.org> local=false trusted=false]
        S: 550 5.1.1 Recipient address rejected: user unknown
        C: RCPT TO:<postmaster@local.test>\r\n
        S: 250 2.1.5 Recipient ok
        C: RCPT TO:<sales@local.test> NOTIFY=FAILURE\r\n
        C: RCPT TO:<bob@local.test>\r\n
        C: DATA\r\n
        [check sales@local.test from <a@example.org> local=true trusted=false]
        S: 250 2.1.5 Recipient ok
        [check bob@local.test from <a@example.org> local=true trusted=false]
        S: 250 2.1.5 Recipient ok
        S: 354 2.0.0 End data with <CR><LF>.<CR><LF>
        C: Subject: x\r\n
        C: \r\n
        C: .\r\n
        [enqueue from=<a@example.org> to=postmaster@local.test,alice@local.test,bob@local.test trust=Unverified]
        Received: from client.test (unknown [192.0.2.1])\r
        	by mx.test (backstop) with ESMTP; Sun, 22 Nov 2026 17:19:59 +0000\r
        Subject: x\r
        \r
        [end]
        S: 250 2.0.0 Ok: queued as 0000000000000001
    "#]]);
}

#[test]
fn authenticated_users_send_only_as_themselves() {
    check(
        SessionConfig {
            auth: AuthPolicy::AllowPlaintext,
            ..submission()
        },
        &[
            b"EHLO client.test\r\n",
            b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            b"MAIL FROM:<ceo@local.test>\r\n",
            b"MAIL FROM:<Alice@LOCAL.test>\r\n",
            b"RSET\r\n",
            b"MAIL FROM:<anyone@alice.test>\r\n",
            b"RSET\r\n",
            b"MAIL FROM:<>\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250-AUTH PLAIN LOGIN
            S: 250 HELP
            C: AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n
            [authenticate Credentials { mechanism: Plain, username: "alice", .. }]
            S: 235 2.7.0 Authentication successful
            C: MAIL FROM:<ceo@local.test>\r\n
            S: 553 5.7.1 Sender address rejected: not owned by user alice
            C: MAIL FROM:<Alice@LOCAL.test>\r\n
            S: 250 2.1.0 Sender ok
            C: RSET\r\n
            S: 250 2.0.0 Ok
            C: MAIL FROM:<anyone@alice.test>\r\n
            S: 250 2.1.0 Sender ok
            C: RSET\r\n
            S: 250 2.0.0 Ok
            C: MAIL FROM:<>\r\n
            S: 250 2.1.0 Sender ok
        "#]],
    );
}

#[test]
fn authenticated_users_write_only_as_themselves_in_from() {
    check(
        SessionConfig {
            auth: AuthPolicy::AllowPlaintext,
            ..submission()
        },
        &[
            b"EHLO client.test\r\n",
            b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            b"MAIL FROM:<alice@local.test>\r\n",
            b"RCPT TO:<bob@example.org>\r\n",
            b"DATA\r\n",
            b"From: \"Alice\" <alice@local.test>, \"The CEO\" <ceo@local.test>\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
            b"MAIL FROM:<alice@local.test>\r\n",
            b"RCPT TO:<bob@example.org>\r\n",
            b"DATA\r\n",
            b"From: Alice <ALICE@local.test>\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250-AUTH PLAIN LOGIN
            S: 250 HELP
            C: AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n
            [authenticate Credentials { mechanism: Plain, username: "alice", .. }]
            S: 235 2.7.0 Authentication successful
            C: MAIL FROM:<alice@local.test>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<bob@example.org>\r\n
            S: 250 2.1.5 Recipient ok
            C: DATA\r\n
            S: 354 2.0.0 End data with <CR><LF>.<CR><LF>
            C: From: "Alice" <alice@local.test>, "The CEO" <ceo@local.test>\r\n
            C: Subject: x\r\n
            C: \r\n
            C: hi\r\n
            C: .\r\n
            S: 550 5.7.1 From: address ceo@local.test rejected: not owned by user alice
            C: MAIL FROM:<alice@local.test>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<bob@example.org>\r\n
            S: 250 2.1.5 Recipient ok
            C: DATA\r\n
            S: 354 2.0.0 End data with <CR><LF>.<CR><LF>
            C: From: Alice <ALICE@local.test>\r\n
            C: Subject: x\r\n
            C: \r\n
            C: hi\r\n
            C: .\r\n
            [enqueue from=<alice@local.test> to=bob@example.org trust=Authenticated { user: "alice" }]
            Received: from client.test (unknown [192.0.2.1])\r
            	(Authenticated sender: alice)\r
            	by mx.test (backstop) with ESMTPA\r
            	for <bob@example.org>; Sun, 22 Nov 2026 17:19:59 +0000\r
            From: Alice <ALICE@local.test>\r
            Subject: x\r
            \r
            hi\r
            [end]
            S: 250 2.0.0 Ok: queued as 0000000000000001
        "#]],
    );
}

#[test]
fn relay_domains_are_accepted_from_anyone() {
    check(
        config(),
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<someone@internal.test>\r\n",
            b"RCPT TO:<someone@other.test>\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<a@example.org>\r\n
            S: 250 2.1.0 Sender ok
            C: RCPT TO:<someone@internal.test>\r\n
            S: 250 2.1.5 Recipient ok
            C: RCPT TO:<someone@other.test>\r\n
            S: 554 5.7.1 Relay access denied
        "#]],
    );
}

#[test]
fn senders_are_checked_when_configured() {
    check(
        SessionConfig {
            check_senders: true,
            ..config()
        },
        &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<busy@example.org>\r\n",
            b"MAIL FROM:<broken@example.org>\r\n",
            b"RCPT TO:<bob@local.test>\r\n",
            b"MAIL FROM:<calm@example.org>\r\nRCPT TO:<bob@local.test>\r\n",
        ],
        expect![[r#"
            S: 220 mx.test ESMTP backstop
            C: EHLO client.test\r\n
            S: 250-mx.test Hello client.test
            S: 250-PIPELINING
            S: 250-SIZE 1000
            S: 250-8BITMIME
            S: 250-SMTPUTF8
            S: 250-ENHANCEDSTATUSCODES
            S: 250-CHUNKING
            S: 250-DSN
            S: 250-STARTTLS
            S: 250 HELP
            C: MAIL FROM:<busy@example.org>\r\n
            [check sender <busy@example.org> user=None]
            S: 451 4.7.1 Rate limit exceeded, slow down and try again later
            C: MAIL FROM:<broken@example.org>\r\n
            [check sender <broken@example.org> user=None]
            S: 451 4.3.0 Temporary failure, try again later
            C: RCPT TO:<bob@local.test>\r\n
            S: 503 5.5.1 Need MAIL before RCPT
            C: MAIL FROM:<calm@example.org>\r\n
            C: RCPT TO:<bob@local.test>\r\n
            [check sender <calm@example.org> user=None]
            S: 250 2.1.0 Sender ok
            S: 250 2.1.5 Recipient ok
        "#]],
    );
}

#[test]
fn messages_are_checked_before_the_reply_to_data() {
    let mut h = Harness::new(SessionConfig {
        check_messages: true,
        ..config()
    });
    h.send(b"EHLO client.test\r\n");
    h.log.clear();
    for subject in ["spam", "odd", "fine"] {
        h.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n");
        h.send(format!("Subject: {subject}\r\n\r\n.\r\n").as_bytes());
    }
    let replies: Vec<&str> = h
        .log
        .lines()
        .filter(|l| l.starts_with("S: 5") || l.starts_with("S: 250 2.0.0") || l.starts_with('['))
        .collect();
    expect![[r#"
        [
            "[check message]",
            "S: 550 5.6.0 Message refused: spam",
            "[check message]",
            "[quarantine from=<a@example.org> reason=odd]",
            "S: 250 2.0.0 Ok: queued as 0000000000000001",
            "[check message]",
            "[enqueue from=<a@example.org> to=b@local.test trust=Unverified]",
            "[end]",
            "S: 250 2.0.0 Ok: queued as 0000000000000002",
        ]
    "#]]
    .assert_debug_eq(&replies);
}
