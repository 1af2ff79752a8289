//! Inputs shared by the benchmarks in `benches/`: a session config and SMTP transcripts.
//!
//! Run them with `cargo bench -p backstop-benches`. The comparison against Postfix on the same
//! machine is a separate harness (issue 9); these measure single hot paths in isolation.

use std::sync::Arc;
use std::time::Duration;

use backstop_session::{AuthPolicy, SessionConfig};
use backstop_types::{
    Address, BodyType, ClientInfo, Domain, DsnParams, Envelope, Notify, Recipient, ReversePath,
    TrustClass, UnixTime,
};

pub fn session_config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.bench.test".into(),
        listener: "mx".into(),
        max_line_length: 2048,
        max_recipients: 100,
        max_message_size: 50 << 20,
        max_errors: 20,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
        min_data_rate: 500,
        max_hops: 50,
        maildir_domains: vec![Domain::parse("bench.test").unwrap()],
        starttls: false,
        auth: AuthPolicy::Disabled,
        require_auth: false,
        local_domains: vec![Domain::parse("bench.test").unwrap()],
        relay_domains: Vec::new(),
        checks: backstop_session::Checks::default(),
        memory: backstop_session::budget::MemoryBudget::new(1 << 30),
        spool: None,
    })
}

/// A message body of about `size` octets in 76-character lines, dot-stuffed where needed,
/// followed by the end-of-data line.
pub fn data(size: usize) -> Vec<u8> {
    let mut out = b"From: a@example.org\r\nTo: b@bench.test\r\nSubject: bench\r\n\r\n".to_vec();
    let line = b".abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklm\r\n";
    while out.len() < size {
        // Every line starts with a dot, which the client stuffs: the worst case for unstuffing.
        out.push(b'.');
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// An envelope as the mx listener records it: one recipient, no DSN parameters.
pub fn envelope() -> Envelope {
    Envelope {
        sender: ReversePath::Address(Address::parse("sender@example.org").unwrap()),
        recipients: vec![Recipient {
            address: Address::parse("user@bench.test").unwrap(),
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
        arrival: UnixTime(1_800_000_000),
        trust: TrustClass::Unverified,
    }
}
