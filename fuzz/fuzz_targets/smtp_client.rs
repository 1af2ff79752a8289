//! The SMTP/LMTP client session (`crates/smtp-client`, sans-IO) fed what a next hop might
//! say, in pieces cut where the input says: its reply reader and EHLO parsing, STARTTLS and
//! AUTH as the TLS policy says, transactions with and without PIPELINING and CHUNKING, and
//! the single commands of callahead and proxy mode.
//!
//! Input: octet 0 chooses SMTP or LMTP, the TLS policy, AUTH, the message's needs and
//! whether the caller runs transactions or single commands; octets 1-2 seed the chunking; the
//! rest is the next hop's byte stream. The seeds in `corpus/smtp_client/` are the transcript
//! tests' server sides in this form.
//!
//! Checked, besides "no panic" and "no endless loop":
//! - every command written is CRLF-terminated lines without a CR, LF or NUL inside;
//! - no credentials without TLS, and with TLS required no envelope before TLS;
//! - STARTTLS is started only when nothing came behind its 220 (CVE-2011-0411);
//! - a transaction's result has one outcome for each of its recipients;
//! - no reply text, the next hop's or a made-up one, holds a control character but `\n`.

#![no_main]

use backstop_fuzz::{assert_crlf_lines, chunks, Rng};
use backstop_smtp_client::session::TlsMode;
use backstop_smtp_client::{Action, ClientError, ClientSession, Transaction};
use backstop_types::{
    Address, AttemptOutcome, BodyType, Notify, Orcpt, Recipient, RemoteReply, Ret, ReversePath,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, s0, s1, stream @ ..] = data else {
        return;
    };
    let mut rng = Rng::new(u64::from(u16::from_le_bytes([*s0, *s1])));
    let lmtp = flags & 1 != 0;
    let tls = match (flags >> 1) & 3 {
        0 => TlsMode::Off,
        1 => TlsMode::Opportunistic,
        _ => TlsMode::Require,
    };
    let auth = (flags & 8 != 0).then(|| backstop_smtp_client::Credentials {
        user: "relay".into(),
        password: "secret".into(),
    });
    let single_commands = flags & 16 != 0;
    let body_type = match (flags >> 5) & 3 {
        0 => BodyType::SevenBit,
        1 => BodyType::EightBitMime,
        2 => BodyType::BinaryMime,
        _ => BodyType::SevenBit,
    };
    let smtputf8 = flags >> 5 == 3;

    let sender = ReversePath::Address(address("alice@example.org"));
    let recipients = [
        Recipient {
            address: address("bob@local.test"),
            notify: Notify::On {
                success: true,
                failure: true,
                delay: false,
            },
            orcpt: Some(Orcpt::parse_param("rfc822;bob+2Bold@local.test").expect("an ORCPT")),
        },
        Recipient {
            address: address("\"carol smith\"@local.test"),
            notify: Notify::Never,
            orcpt: None,
        },
        Recipient {
            address: address("jörg@bücher.test"),
            notify: Notify::Default,
            orcpt: Some(Orcpt::rfc822(&address("jörg@bücher.test"))),
        },
    ];
    let txn = Transaction {
        sender: &sender,
        recipients: recipients.iter().enumerate().collect(),
        ret: Some(Ret::Headers),
        envid: Some("env+1 x=y"),
        body_type,
        smtputf8,
        size: 1000,
    };

    let mut session = ClientSession::new("mx.test", lmtp, tls, auth, "peer.test[192.0.2.9:25]");
    let mut input = chunks(stream, &mut rng, 64).into_iter();
    let mut last_fed: &[u8] = b"";
    let mut transactions = 0;
    // The single commands, in the order callahead and proxy mode send them.
    let mut commands = vec![
        "MAIL FROM:<alice@example.org> SIZE=1000".to_owned(),
        session.rcpt_command(&recipients[0]),
        "DATA".to_owned(),
        "RSET".to_owned(),
    ]
    .into_iter();
    let mut sent_data = false;
    for _ in 0..100_000 {
        match session.poll() {
            Action::Send(bytes) => {
                assert_crlf_lines("a command", &bytes);
                let envelope = [b"MAIL".as_slice(), b"RCPT", b"DATA", b"BDAT"]
                    .iter()
                    .any(|verb| bytes.starts_with(verb));
                if bytes.starts_with(b"AUTH") || (envelope && tls == TlsMode::Require) {
                    assert!(
                        session.tls_active(),
                        "{:?} without TLS",
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
            Action::SendBody { .. } => {}
            Action::Read(_) => match input.next() {
                Some(chunk) => {
                    last_fed = chunk;
                    session.handle_input(chunk);
                }
                None => session.fail(ClientError::network(
                    session.stage(),
                    "peer.test[192.0.2.9:25]",
                    "the connection closed",
                )),
            },
            Action::StartTls => {
                assert!(
                    last_fed.ends_with(b"\n"),
                    "STARTTLS with bytes behind its 220"
                );
                assert!(tls != TlsMode::Off);
                if rng.one_in(8) {
                    session.fail(ClientError::tls_failed(
                        "peer.test[192.0.2.9:25]",
                        "the handshake failed",
                    ));
                } else {
                    session.tls_established();
                }
            }
            Action::Ready if single_commands => match commands.next() {
                Some(line) => {
                    sent_data = line == "DATA";
                    session.command(&line).expect("a clean command line");
                }
                None => session.quit(),
            },
            Action::Ready => {
                if transactions < 2 && session.is_ready() {
                    transactions += 1;
                    session.begin(&txn);
                } else {
                    session.quit();
                }
            }
            Action::Replied(reply) => {
                check_reply(&reply);
                if std::mem::take(&mut sent_data) && reply.code == 354 {
                    session.body();
                }
            }
            Action::Finished(result) => {
                let mut indexes: Vec<usize> = result.outcomes.iter().map(|(i, _)| *i).collect();
                indexes.sort_unstable();
                assert_eq!(indexes, [0, 1, 2], "one outcome per recipient");
                for (_, outcome) in &result.outcomes {
                    let (AttemptOutcome::Delivered(a)
                    | AttemptOutcome::Transient(a)
                    | AttemptOutcome::Permanent(a)) = outcome;
                    check_reply(&a.reply);
                }
                if let Some(error) = &result.error {
                    check_reply(&error.reply);
                }
            }
            Action::Failed(error) => {
                check_reply(&error.reply);
                return;
            }
            Action::Closed => return,
        }
    }
    panic!("the client session did not end");
});

fn address(text: &str) -> Address {
    Address::parse(text).expect("a sample address")
}

fn check_reply(reply: &RemoteReply) {
    assert!(
        !reply.text.chars().any(|c| c.is_control() && c != '\n'),
        "{reply:?}"
    );
    if let Some(status) = reply.status {
        assert_eq!(u16::from(status.0), reply.code / 100, "{reply:?}");
    }
}
