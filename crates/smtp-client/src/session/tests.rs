//! Transcripts of the client session: what the next hop says in, everything the session
//! sends and decides out.

use std::fmt::Write;

use backstop_types::{Address, AttemptOutcome, BodyType, Notify, Orcpt, Recipient, ReversePath};
use expect_test::{expect, Expect};

use super::*;

struct Harness {
    session: ClientSession,
    log: String,
}

impl Harness {
    fn new(lmtp: bool, tls: TlsMode, auth: Option<Credentials>) -> Harness {
        let mut h = Harness {
            session: ClientSession::new("mx.test", lmtp, tls, auth, "peer.test[192.0.2.9:25]"),
            log: String::new(),
        };
        h.drain();
        h
    }

    fn smtp() -> Harness {
        Harness::new(false, TlsMode::Off, None)
    }

    /// The next hop says `text` (lines end in `\n`, sent as CRLF).
    fn server(&mut self, text: &str) -> &mut Harness {
        for line in text.lines() {
            writeln!(self.log, "S: {line}").unwrap();
        }
        self.session
            .handle_input(text.replace('\n', "\r\n").as_bytes());
        self.drain();
        self
    }

    /// Raw bytes from the next hop.
    fn raw(&mut self, bytes: &[u8]) -> &mut Harness {
        writeln!(self.log, "S: {:?}", String::from_utf8_lossy(bytes)).unwrap();
        self.session.handle_input(bytes);
        self.drain();
        self
    }

    fn fail(&mut self, error: ClientError) -> &mut Harness {
        writeln!(self.log, "[connection fails: {error}]").unwrap();
        self.session.fail(error);
        self.drain();
        self
    }

    fn begin(&mut self, txn: &Transaction<'_>) -> &mut Harness {
        writeln!(self.log, "[begin]").unwrap();
        self.session.begin(txn);
        self.drain();
        self
    }

    fn drain(&mut self) {
        loop {
            match self.session.poll() {
                Action::Send(bytes) => {
                    for line in String::from_utf8_lossy(&bytes).lines() {
                        writeln!(self.log, "C: {line}").unwrap();
                    }
                }
                Action::SendBody { stuffed } => {
                    writeln!(self.log, "[body, stuffed={stuffed}]").unwrap()
                }
                Action::Read(_) => return,
                Action::StartTls => {
                    writeln!(self.log, "[tls handshake]").unwrap();
                    self.session.tls_established();
                }
                Action::Ready => {
                    writeln!(self.log, "[ready]").unwrap();
                    return;
                }
                Action::Replied(reply) => {
                    writeln!(self.log, "[replied {} {}]", reply.code, reply.text).unwrap();
                    return;
                }
                Action::Finished(result) => {
                    for (i, outcome) in &result.outcomes {
                        let (kind, a) = match outcome {
                            AttemptOutcome::Delivered(a) => ("delivered", a),
                            AttemptOutcome::Transient(a) => ("transient", a),
                            AttemptOutcome::Permanent(a) => ("permanent", a),
                        };
                        let status = a.reply.status.map(|s| s.to_string()).unwrap_or_default();
                        writeln!(
                            self.log,
                            "[#{i} {kind}: {} {status} {}]",
                            a.reply.code, a.reply.text
                        )
                        .unwrap();
                    }
                    writeln!(
                        self.log,
                        "[finished passed_on={} error={}]",
                        result.passed_on,
                        result.error.map(|e| e.to_string()).unwrap_or_default()
                    )
                    .unwrap();
                }
                Action::Failed(error) => {
                    writeln!(
                        self.log,
                        "[failed {:?} {:?}: {error}]",
                        error.stage, error.source
                    )
                    .unwrap();
                    return;
                }
                Action::Closed => {
                    writeln!(self.log, "[closed]").unwrap();
                    return;
                }
            }
        }
    }

    fn check(&self, expect: Expect) {
        expect.assert_eq(&self.log);
    }
}

fn recipient(address: &str) -> Recipient {
    Recipient {
        address: Address::parse(address).unwrap(),
        notify: Notify::Default,
        orcpt: None,
    }
}

fn sender() -> ReversePath {
    ReversePath::Address(Address::parse("alice@example.test").unwrap())
}

fn txn<'a>(sender: &'a ReversePath, recipients: &'a [Recipient]) -> Transaction<'a> {
    Transaction {
        sender,
        recipients: recipients.iter().enumerate().collect(),
        ret: None,
        envid: None,
        body_type: BodyType::SevenBit,
        smtputf8: false,
        size: 100,
    }
}

const EHLO_ALL: &str =
    "250-peer.test\n250-PIPELINING\n250-SIZE 1000\n250-8BITMIME\n250-DSN\n250 SMTPUTF8\n";

#[test]
fn a_pipelined_transaction_with_dsn_parameters() {
    let from = sender();
    let mut to = vec![
        recipient("bob@example.net"),
        recipient("nobody@example.net"),
    ];
    to[0].notify = Notify::On {
        success: true,
        failure: true,
        delay: false,
    };
    to[0].orcpt = Some(Orcpt::new("rfc822", "Bob+old@example.net").unwrap());
    let mut t = txn(&from, &to);
    t.ret = Some(Ret::Headers);
    t.envid = Some("QQ+1");
    let mut h = Harness::smtp();
    h.server("220 peer.test ESMTP\n").server(EHLO_ALL);
    h.begin(&t)
        .server("250 2.1.0 ok\n250 2.1.5 ok\n550 5.1.1 no such user\n354 go\n")
        .server("250 2.0.0 queued as X\n");
    h.check(expect![[r#"
        S: 220 peer.test ESMTP
        C: EHLO mx.test
        S: 250-peer.test
        S: 250-PIPELINING
        S: 250-SIZE 1000
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        [ready]
        [begin]
        C: MAIL FROM:<alice@example.test> SIZE=100 RET=HDRS ENVID=QQ+2B1
        C: RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bold@example.net
        C: RCPT TO:<nobody@example.net>
        C: DATA
        S: 250 2.1.0 ok
        S: 250 2.1.5 ok
        S: 550 5.1.1 no such user
        S: 354 go
        [body, stuffed=true]
        S: 250 2.0.0 queued as X
        [#0 delivered: 250 2.0.0 queued as X]
        [#1 permanent: 550 5.1.1 no such user]
        [finished passed_on=true error=]
        [ready]
    "#]]);
}

#[test]
fn step_by_step_without_pipelining() {
    let from = sender();
    let to = [recipient("a@example.net"), recipient("b@example.net")];
    let mut h = Harness::smtp();
    h.server("220 peer.test\n").server("250 peer.test\n");
    h.begin(&txn(&from, &to))
        .server("250 ok\n")
        .server("451 4.2.1 try later\n")
        .server("250 ok\n")
        .server("354 go\n")
        .server("250 done\n");
    h.check(expect![[r#"
        S: 220 peer.test
        C: EHLO mx.test
        S: 250 peer.test
        [ready]
        [begin]
        C: MAIL FROM:<alice@example.test>
        S: 250 ok
        C: RCPT TO:<a@example.net>
        S: 451 4.2.1 try later
        C: RCPT TO:<b@example.net>
        S: 250 ok
        C: DATA
        S: 354 go
        [body, stuffed=true]
        S: 250 done
        [#0 transient: 451 4.2.1 try later]
        [#1 delivered: 250  done]
        [finished passed_on=false error=]
        [ready]
    "#]]);
}

#[test]
fn an_old_server_gets_helo_and_no_8bit_message() {
    let from = sender();
    let to = [recipient("a@example.net")];
    let mut t = txn(&from, &to);
    t.body_type = BodyType::EightBitMime;
    let mut h = Harness::smtp();
    h.server("220 old.test\n")
        .server("500 what?\n")
        .server("250 old.test\n");
    h.begin(&t);
    h.check(expect![[r#"
        S: 220 old.test
        C: EHLO mx.test
        S: 500 what?
        C: HELO mx.test
        S: 250 old.test
        [ready]
        [begin]
        [#0 permanent: 554 5.6.3 peer.test[192.0.2.9:25] does not support 8BITMIME, which this message needs]
        [finished passed_on=false error=554 peer.test[192.0.2.9:25] does not support 8BITMIME, which this message needs]
        [ready]
    "#]]);
}

#[test]
fn tls_required_but_not_offered_and_bytes_behind_the_220() {
    let mut h = Harness::new(false, TlsMode::Require, None);
    h.server("220 peer.test\n").server("250 peer.test\n");
    h.check(expect![[r#"
        S: 220 peer.test
        C: EHLO mx.test
        S: 250 peer.test
        [failed Tls Network: 451 TLS is required, but peer.test[192.0.2.9:25] does not offer STARTTLS]
    "#]]);
    // CVE-2011-0411 on the client side: nothing may come behind the 220 to STARTTLS.
    let mut h = Harness::new(false, TlsMode::Opportunistic, None);
    h.server("220 peer.test\n")
        .server("250-peer.test\n250 STARTTLS\n")
        .raw(b"220 go ahead\r\n250 injected\r\n");
    h.check(expect![[r#"
        S: 220 peer.test
        C: EHLO mx.test
        S: 250-peer.test
        S: 250 STARTTLS
        C: STARTTLS
        S: "220 go ahead\r\n250 injected\r\n"
        [failed Tls Network: 451 TLS with peer.test[192.0.2.9:25] failed: it sent data behind its STARTTLS reply]
    "#]]);
}

#[test]
fn opportunistic_tls_falls_back_when_starttls_is_refused_and_says_ehlo_again_after_it() {
    let mut h = Harness::new(false, TlsMode::Opportunistic, None);
    h.server("220 peer.test\n")
        .server("250-peer.test\n250 STARTTLS\n")
        .server("454 4.7.0 not now\n");
    let mut tls = Harness::new(false, TlsMode::Opportunistic, None);
    tls.server("220 peer.test\n")
        .server("250-peer.test\n250 STARTTLS\n")
        .server("220 go\n")
        .server("250-peer.test\n250 PIPELINING\n");
    assert!(tls.session.tls_active());
    h.log.push_str("----\n");
    h.log.push_str(&tls.log);
    h.check(expect![[r#"
        S: 220 peer.test
        C: EHLO mx.test
        S: 250-peer.test
        S: 250 STARTTLS
        C: STARTTLS
        S: 454 4.7.0 not now
        [ready]
        ----
        S: 220 peer.test
        C: EHLO mx.test
        S: 250-peer.test
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go
        [tls handshake]
        C: EHLO mx.test
        S: 250-peer.test
        S: 250 PIPELINING
        [ready]
    "#]]);
}

#[test]
fn auth_only_under_tls() {
    let credentials = Credentials {
        user: "relay".into(),
        password: "secret".into(),
    };
    let mut plain = Harness::new(false, TlsMode::Off, Some(credentials.clone()));
    plain
        .server("220 peer.test\n")
        .server("250-peer.test\n250 AUTH PLAIN\n");
    let mut tls = Harness::new(false, TlsMode::Require, Some(credentials));
    tls.server("220 peer.test\n")
        .server("250-peer.test\n250 STARTTLS\n")
        .server("220 go\n")
        .server("250-peer.test\n250 AUTH LOGIN PLAIN\n")
        .server("535 5.7.8 bad\n");
    plain.log.push_str("----\n");
    plain.log.push_str(&tls.log);
    plain.check(expect![[r#"
        S: 220 peer.test
        C: EHLO mx.test
        S: 250-peer.test
        S: 250 AUTH PLAIN
        [failed Auth Local: 451 login at peer.test[192.0.2.9:25]: not sending credentials without TLS]
        ----
        S: 220 peer.test
        C: EHLO mx.test
        S: 250-peer.test
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go
        [tls handshake]
        C: EHLO mx.test
        S: 250-peer.test
        S: 250 AUTH LOGIN PLAIN
        C: AUTH PLAIN AHJlbGF5AHNlY3JldA==
        S: 535 5.7.8 bad
        [failed Auth Local: 451 login at peer.test[192.0.2.9:25]: refused our login as relay: 535 bad]
    "#]]);
}

#[test]
fn lmtp_answers_per_recipient_after_the_data() {
    let from = sender();
    let to = [
        recipient("a@example.test"),
        recipient("gone@example.test"),
        recipient("full@example.test"),
    ];
    let mut h = Harness::new(true, TlsMode::Off, None);
    h.server("220 dovecot ready\n")
        .server("250-dovecot\n250 8BITMIME\n")
        .begin(&txn(&from, &to))
        .server("250 ok\n250 ok\n550 5.1.1 unknown\n250 ok\n354 go\n")
        .server("250 2.0.0 saved\n")
        .server("552 5.2.2 quota\n");
    h.check(expect![[r#"
        S: 220 dovecot ready
        C: LHLO mx.test
        S: 250-dovecot
        S: 250 8BITMIME
        [ready]
        [begin]
        C: MAIL FROM:<alice@example.test>
        C: RCPT TO:<a@example.test>
        C: RCPT TO:<gone@example.test>
        C: RCPT TO:<full@example.test>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 550 5.1.1 unknown
        S: 250 ok
        S: 354 go
        [body, stuffed=true]
        S: 250 2.0.0 saved
        S: 552 5.2.2 quota
        [#0 delivered: 250 2.0.0 saved]
        [#1 permanent: 550 5.1.1 unknown]
        [#2 permanent: 552 5.2.2 quota]
        [finished passed_on=false error=]
        [ready]
    "#]]);
}

#[test]
fn chunking_sends_bdat_and_size_is_checked_first() {
    let from = sender();
    let to = [recipient("a@example.net")];
    let mut h = Harness::smtp();
    h.server("220 peer.test\n")
        .server("250-peer.test\n250-PIPELINING\n250-CHUNKING\n250 SIZE 50\n");
    h.begin(&txn(&from, &to));
    let mut small = txn(&from, &to);
    small.size = 40;
    h.begin(&small)
        .server("250 ok\n250 ok\n")
        .server("250 2.0.0 taken\n");
    h.check(expect![[r#"
        S: 220 peer.test
        C: EHLO mx.test
        S: 250-peer.test
        S: 250-PIPELINING
        S: 250-CHUNKING
        S: 250 SIZE 50
        [ready]
        [begin]
        [#0 permanent: 552 5.3.4 message size 100 exceeds peer.test[192.0.2.9:25]'s limit of 50]
        [finished passed_on=false error=552 message size 100 exceeds peer.test[192.0.2.9:25]'s limit of 50]
        [ready]
        [begin]
        C: MAIL FROM:<alice@example.test> SIZE=40
        C: RCPT TO:<a@example.net>
        S: 250 ok
        S: 250 ok
        C: BDAT 40 LAST
        [body, stuffed=false]
        S: 250 2.0.0 taken
        [#0 delivered: 250 2.0.0 taken]
        [finished passed_on=false error=]
        [ready]
    "#]]);
}

#[test]
fn refusals_end_the_transaction_cleanly() {
    let from = sender();
    let to = [recipient("a@example.net")];
    let mut h = Harness::smtp();
    h.server("220 peer.test\n").server(EHLO_ALL);
    // MAIL refused, DATA answered 354 all the same: an empty message ends it.
    h.begin(&txn(&from, &to))
        .server("451 4.3.0 busy\n503 5.5.1 no mail\n354 go\n")
        .server("554 5.5.1 no valid recipients\n");
    // Every recipient refused with DATA 554: RSET, then ready.
    h.begin(&txn(&from, &to))
        .server("250 ok\n550 5.1.1 no\n554 5.5.1 no valid recipients\n")
        .server("250 reset\n");
    h.check(expect![[r#"
        S: 220 peer.test
        C: EHLO mx.test
        S: 250-peer.test
        S: 250-PIPELINING
        S: 250-SIZE 1000
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        [ready]
        [begin]
        C: MAIL FROM:<alice@example.test> SIZE=100
        C: RCPT TO:<a@example.net>
        C: DATA
        S: 451 4.3.0 busy
        S: 503 5.5.1 no mail
        S: 354 go
        C: .
        S: 554 5.5.1 no valid recipients
        [#0 transient: 451 4.3.0 busy]
        [finished passed_on=false error=451 busy]
        [ready]
        [begin]
        C: MAIL FROM:<alice@example.test> SIZE=100
        C: RCPT TO:<a@example.net>
        C: DATA
        S: 250 ok
        S: 550 5.1.1 no
        S: 554 5.5.1 no valid recipients
        [#0 permanent: 550 5.1.1 no]
        [finished passed_on=true error=]
        C: RSET
        S: 250 reset
        [ready]
    "#]]);
}

#[test]
fn garbage_silence_and_a_broken_connection() {
    let from = sender();
    let to = [recipient("a@example.net"), recipient("b@example.net")];
    let mut h = Harness::smtp();
    h.raw(b"HTTP/1.1 400 Bad Request\r\n");
    let mut mid = Harness::smtp();
    mid.server("220 peer.test\n")
        .server(EHLO_ALL)
        .begin(&txn(&from, &to))
        .server("250 ok\n250 ok\n550 no\n354 go\n")
        .fail(ClientError::timeout(
            Stage::End,
            "peer.test[192.0.2.9:25]",
            std::time::Duration::from_secs(600),
        ));
    h.log.push_str("----\n");
    h.log.push_str(&mid.log);
    h.check(expect![[r#"
        S: "HTTP/1.1 400 Bad Request\r\n"
        [failed Greeting Network: 451 peer.test[192.0.2.9:25] sent no valid reply (a reply line that does not start with a code)]
        ----
        S: 220 peer.test
        C: EHLO mx.test
        S: 250-peer.test
        S: 250-PIPELINING
        S: 250-SIZE 1000
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        [ready]
        [begin]
        C: MAIL FROM:<alice@example.test> SIZE=100
        C: RCPT TO:<a@example.net>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 550 no
        S: 354 go
        [body, stuffed=true]
        [connection fails: 451 peer.test[192.0.2.9:25] did not answer within 600s (after the end of the message)]
        [#0 transient: 451 4.4.2 peer.test[192.0.2.9:25] did not answer within 600s (after the end of the message)]
        [#1 permanent: 550  no]
        [finished passed_on=false error=451 peer.test[192.0.2.9:25] did not answer within 600s (after the end of the message)]
        [closed]
    "#]]);
    assert!(!mid.session.is_ready());
}

#[test]
fn commands_for_callahead_and_proxy() {
    let mut h = Harness::smtp();
    h.server("220 peer.test\n").server("250 peer.test\n");
    h.session.command("MAIL FROM:<probe@mx.test>").unwrap();
    h.drain();
    h.server("250 ok\n");
    // A line break is refused, never sent.
    let refused = h.session.command("RCPT TO:<a@b>\r\nRSET").unwrap_err();
    assert_eq!(refused.reply.code, 554);
    h.session.command("DATA").unwrap();
    h.drain();
    h.server("354 go\n");
    h.session.body();
    h.drain();
    h.server("250 2.0.0 ok\n");
    h.session.quit();
    h.drain();
    h.server("221 bye\n");
    h.check(expect![[r#"
        S: 220 peer.test
        C: EHLO mx.test
        S: 250 peer.test
        [ready]
        C: MAIL FROM:<probe@mx.test>
        S: 250 ok
        [replied 250 ok]
        C: DATA
        S: 354 go
        [replied 354 go]
        [body, stuffed=true]
        S: 250 2.0.0 ok
        [replied 250 ok]
        C: QUIT
        S: 221 bye
        [closed]
    "#]]);
}
