//! The SMTP server session (`crates/session`) fed what a client might send, in pieces cut
//! where the input says, with a driver whose answers (policy verdicts, AUTH outcomes, the
//! queue's) the input also chooses. Covers commands, pipelining, DATA, BDAT, AUTH PLAIN and
//! LOGIN, STARTTLS and the limits.
//!
//! Input: octet 0 chooses the listener's settings, octets 1-2 seed the chunking and the
//! driver's answers, the rest is the client's byte stream. The seeds in
//! `corpus/session/` are the transcript tests' inputs in this form.
//!
//! Checked, besides "no panic":
//! - every reply is CRLF-terminated lines of one code without a control character;
//! - nothing is said after the session closed;
//! - a message handed on has CRLF line ends only and no NUL, a HELO name and AUTH user
//!   without control characters, an ENVID of printable ASCII, ORCPTs that encode again to
//!   printable ASCII without spaces and read back the same, and addresses that print and
//!   parse to themselves;
//! - its envelope survives the queue's record format: encoded and decoded, it is the same.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use backstop_fuzz::{
    assert_line_ends, assert_reply, check_address, check_orcpt, check_path, chunks, Rng,
};
use backstop_queue::record::{decode_entry, encode_entry};
use backstop_queue::Entry;
use backstop_session::{
    AuthOutcome, AuthPolicy, BounceProblem, ContentVerdict, EnqueueFailure, Message, Output, Peer,
    RecipientVerdict, SenderRights, SenderVerdict, ServerSession, SessionConfig,
};
use backstop_types::text::has_control;
use backstop_types::{Address, Domain, QueueId, Reply, TlsInfo, TrustClass, UnixTime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, s0, s1, stream @ ..] = data else {
        return;
    };
    let mut rng = Rng::new(u64::from(u16::from_le_bytes([*s0, *s1])));
    let mut driver = Driver::new(*flags, &mut rng);
    for chunk in chunks(stream, &mut rng, 64) {
        driver.now = UnixTime(driver.now.0 + rng.below(3));
        driver.session.handle_bytes(chunk, driver.now);
        driver.drain(&mut rng);
        // The deadline arithmetic must hold whatever the phase.
        let timeout = driver.session.read_timeout();
        assert!(timeout <= Duration::from_secs(600), "{timeout:?}");
        if driver.closed {
            return;
        }
    }
    match rng.below(3) {
        0 => driver.session.handle_timeout(),
        1 => driver.session.shutdown(),
        _ => {}
    }
    driver.drain(&mut rng);
});

struct Driver {
    session: ServerSession,
    config: Arc<SessionConfig>,
    now: UnixTime,
    closed: bool,
    queued: u64,
    /// What the session spooled, by file.
    spooled: std::collections::HashMap<std::path::PathBuf, Vec<u8>>,
}

impl Driver {
    fn new(flags: u8, rng: &mut Rng) -> Driver {
        let local = Domain::parse("local.test").expect("a domain");
        let (auth, require_auth) = match flags & 3 {
            0 => (AuthPolicy::Disabled, false),
            1 => (AuthPolicy::RequireTls, true),
            2 => (AuthPolicy::AllowPlaintext, true),
            _ => (AuthPolicy::AllowPlaintext, false),
        };
        let config = Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            listener: "mx".into(),
            max_line_length: 512,
            max_recipients: 3,
            max_message_size: 1000,
            max_errors: 3 + rng.below(20) as u32,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            min_data_rate: 500,
            max_hops: 3,
            maildir_domains: vec![local.clone()],
            starttls: flags & 4 == 0,
            auth,
            require_auth,
            local_domains: vec![local],
            relay_domains: vec![Domain::parse("internal.test").expect("a domain")],
            checks: backstop_session::Checks {
                recipients: flags & 8 != 0,
                senders: flags & 16 != 0,
                messages: flags & 32 != 0,
            },
            // No memory for messages at all: every DATA and BDAT is deferred (452 4.3.1).
            memory: backstop_session::budget::MemoryBudget::new(match flags & 64 {
                0 => 1 << 30,
                _ => 0,
            }),
            // Half the runs spool past a small threshold (most messages here are small).
            spool: (rng.below(2) == 0).then(|| backstop_session::SpoolConfig {
                dir: "/incoming".into(),
                threshold: 64 + rng.below(200) as u64,
            }),
        });
        let peer = Peer {
            ip: "192.0.2.1".parse().expect("an IP address"),
            local_submitter: flags & 64 != 0,
            tls: (flags & 128 != 0).then(tls),
            id: 1,
        };
        let now = UnixTime(1_795_367_999);
        let mut session = ServerSession::new(config.clone(), peer, now);
        session.greet();
        let mut driver = Driver {
            session,
            config,
            now,
            closed: false,
            queued: 0,
            spooled: Default::default(),
        };
        driver.drain(rng);
        driver
    }

    fn drain(&mut self, rng: &mut Rng) {
        while let Some(output) = self.session.poll_output() {
            assert!(!self.closed, "output after Close: {output:?}");
            match output {
                Output::Reply(reply) => assert_reply(&reply),
                Output::Close => self.closed = true,
                Output::Spool {
                    path,
                    bytes,
                    create,
                } => {
                    assert!(path.starts_with("/incoming"), "{path:?}");
                    assert_eq!(create, !self.spooled.contains_key(&path), "{path:?}");
                    self.spooled
                        .entry(path)
                        .or_default()
                        .extend_from_slice(&bytes);
                }
                Output::StartTls => self.session.tls_established(tls()),
                Output::Authenticate(credentials) => {
                    assert!(
                        !credentials.username.is_empty() && !has_control(&credentials.username),
                        "{credentials:?}"
                    );
                    let outcome = match rng.below(5) {
                        0 => AuthOutcome::Success(SenderRights::Any),
                        1 => AuthOutcome::Success(SenderRights::Only {
                            addresses: vec![address("alice@local.test")],
                            domains: vec![Domain::parse("alice.test").expect("a domain")],
                        }),
                        2 => AuthOutcome::Failure,
                        3 => AuthOutcome::TemporaryFailure,
                        _ => AuthOutcome::Throttled,
                    };
                    self.session.handle_auth(credentials, outcome);
                }
                Output::CheckSender(query) => {
                    assert!(!has_control(&query.helo) && !query.helo.contains(' '));
                    check_path(&query.sender);
                    let verdict = match rng.below(8) {
                        0 => SenderVerdict::RateLimited,
                        1 => SenderVerdict::Unavailable,
                        2 => SenderVerdict::Blocklisted {
                            zone: "bl.test".into(),
                        },
                        3 => SenderVerdict::Refused(Reply::spf_failed("example.org")),
                        _ => SenderVerdict::Accept,
                    };
                    self.session.handle_sender(verdict);
                }
                Output::CheckRecipient(query) => {
                    check_address(&query.recipient);
                    let verdict = match rng.below(14) {
                        0 => RecipientVerdict::Unknown,
                        1 => RecipientVerdict::Proxied(Reply::recipient_ok()),
                        2 => RecipientVerdict::Proxied(Reply::unknown_recipient()),
                        3 => RecipientVerdict::Proxied(Reply::recipient_lookup_failed()),
                        4 => RecipientVerdict::SeparateTransaction,
                        5 => RecipientVerdict::NextHopRefused(Reply::unknown_recipient()),
                        6 => RecipientVerdict::Unavailable,
                        7 => RecipientVerdict::Defer { retry_after: 300 },
                        8 => RecipientVerdict::RateLimited,
                        9 => RecipientVerdict::NotOurBounce(BounceProblem::Invalid),
                        10 => RecipientVerdict::Accept(vec![
                            address("alice@local.test"),
                            query.recipient.clone(),
                        ]),
                        _ => RecipientVerdict::Accept(vec![query.recipient]),
                    };
                    self.session.handle_recipient(verdict);
                }
                Output::CheckMessage(message) => {
                    self.check_message(&message);
                    let verdict = match rng.below(8) {
                        0 => ContentVerdict::Refuse(Reply::content_refused("spam")),
                        1 => ContentVerdict::Refuse(Reply::content_check_unavailable()),
                        2 => ContentVerdict::Quarantine(
                            backstop_types::quarantine::Reason::content("rule", "rule odd", "odd"),
                        ),
                        3 => ContentVerdict::Discard("certain".into()),
                        4 => ContentVerdict::Relayed(Reply::ok()),
                        5 => ContentVerdict::AcceptChanged(message.clone()),
                        _ => ContentVerdict::Accept,
                    };
                    self.session.handle_message(message, verdict);
                }
                Output::Enqueue(message) | Output::Quarantine { message, .. } => {
                    self.check_message(&message);
                    self.queued += 1;
                    let result = match rng.below(6) {
                        0 => Err(EnqueueFailure::StorageFull),
                        1 => Err(EnqueueFailure::Unavailable),
                        _ => Ok(QueueId(self.queued)),
                    };
                    self.session.handle_enqueued(result);
                }
            }
        }
    }

    fn check_message(&self, message: &Message) {
        let envelope = &message.envelope;
        assert!(!envelope.recipients.is_empty());
        assert!(envelope.recipients.len() <= self.config.max_recipients * 2);
        let mut whole = message.body.head().to_vec();
        if let Some(tail) = message.body.tail() {
            let spooled = &self.spooled[&tail.path];
            assert_eq!(spooled.len() as u64, tail.len, "the length the body says");
            whole.extend_from_slice(spooled);
            // Spooled: the head is the header section, whole.
            assert!(message.body.head().ends_with(b"\r\n\r\n"));
        }
        assert_line_ends("a received message", &whole);
        assert!(whole.starts_with(b"Received: "));
        let helo = &envelope.client.helo;
        assert!(!helo.is_empty() && !has_control(helo) && !helo.contains(' '));
        check_path(&envelope.sender);
        for recipient in &envelope.recipients {
            check_address(&recipient.address);
            if let Some(orcpt) = &recipient.orcpt {
                check_orcpt(orcpt);
            }
        }
        if let Some(envid) = &envelope.dsn.envid {
            assert!(envid.len() <= 100 && envid.bytes().all(|b| (0x20..0x7f).contains(&b)));
        }
        if let TrustClass::Authenticated { user } = &envelope.trust {
            assert!(!has_control(user));
        }
        let entry = Entry::new(envelope.clone(), message.body.len() as u64);
        assert_eq!(decode_entry(&encode_entry(&entry)).as_ref(), Ok(&entry));
    }
}

fn tls() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

fn address(text: &str) -> Address {
    Address::parse(text).expect("a sample address")
}
