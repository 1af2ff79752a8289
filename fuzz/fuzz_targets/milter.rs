//! The milter client (`crates/filter/src/milter.rs`) talking to a milter that says whatever
//! the input says: negotiation, the answers to each step, and the modifications at
//! end-of-message, through the real conversation ([`Milter::check_on`]) over an in-memory
//! connection that hands its bytes over in pieces.
//!
//! Input: octet 0 chooses the message's envelope (TLS, AUTH, a null sender), octets 1-2 seed
//! the read sizes, the rest is the milter's byte stream.
//!
//! Checked, besides "no panic":
//! - what we send is well-framed packets, and no value in them holds a CR or LF where a
//!   line is meant, or a NUL inside a string;
//! - a refusal is a 4xx or 5xx reply with clean lines;
//! - the changes a milter asks for, when the pipeline makes them (`Draft::apply_all`), leave
//!   a message a next hop reads as we do: CRLF line ends only, no NUL, a header of fields
//!   ended by an empty line.

#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use backstop_filter::milter::Milter;
use backstop_filter::net::Endpoint;
use backstop_filter::pipeline::{Draft, Step};
use backstop_fuzz::{
    assert_message_well_formed, assert_reply, sample_envelope, Rng, SAMPLE_MESSAGE,
};
use backstop_types::{AuthInfo, ReversePath, TlsInfo, TrustClass};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fuzz_target!(|data: &[u8]| {
    let [flags, s0, s1, answers @ ..] = data else {
        return;
    };
    let mut envelope = sample_envelope();
    if flags & 1 != 0 {
        envelope.client.tls = Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        });
    }
    if flags & 2 != 0 {
        envelope.client.auth = Some(AuthInfo {
            user: "alice".into(),
            mechanism: "PLAIN".into(),
        });
        envelope.trust = TrustClass::Authenticated {
            user: "alice".into(),
        };
    }
    if flags & 4 != 0 {
        envelope.sender = ReversePath::Null;
    }
    let mut draft = Draft::new(envelope, SAMPLE_MESSAGE.to_vec());
    let milter = Milter {
        endpoint: Endpoint::Tcp("127.0.0.1:8891".into()),
        hostname: "mx.test".into(),
    };
    let written = Arc::new(Mutex::new(Vec::new()));
    let peer = MemoryMilter {
        input: answers.to_vec(),
        at: 0,
        rng: Rng::new(u64::from(u16::from_le_bytes([*s0, *s1]))),
        written: written.clone(),
    };
    let result = {
        let conversation = pin!(milter.check_on(Box::new(peer), &draft));
        // The connection is in memory: the conversation never waits.
        match conversation.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("the conversation waited on an in-memory connection"),
        }
    };
    check_sent(&written.lock().expect("not poisoned"));
    match result {
        Ok(Step::Continue(changes)) => {
            // Changes that would break the message are refused whole (the check fails).
            if draft.apply_all(changes).is_err() {
                return;
            }
            assert_message_well_formed("the message after the milter's changes", &draft.message);
        }
        Ok(Step::Refuse(reply)) => {
            assert_reply(&reply);
            assert!(matches!(reply.code() / 100, 4 | 5), "{reply:?}");
        }
        Ok(Step::Quarantine(_) | Step::Discard(_)) | Err(_) => {}
    }
});

/// A milter in memory: answers from the input, in reads of a size the input chooses; what it
/// is sent is kept.
struct MemoryMilter {
    input: Vec<u8>,
    at: usize,
    rng: Rng,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for MemoryMilter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.input.len() - self.at;
        let n = left
            .min(buf.remaining())
            .min(1 + self.rng.below(64) as usize);
        let at = self.at;
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemoryMilter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written
            .lock()
            .expect("not poisoned")
            .extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What we sent: whole packets (length, command, data), the steps' NUL-terminated values
/// without line breaks, and a goodbye at the end.
fn check_sent(mut sent: &[u8]) {
    let mut last = None;
    while !sent.is_empty() {
        assert!(sent.len() >= 5, "a packet cut short");
        let len = u32::from_be_bytes(sent[..4].try_into().expect("a length")) as usize;
        assert!(len >= 1 && sent.len() >= 4 + len, "a packet cut short");
        let command = sent[4];
        let data = &sent[5..4 + len];
        match command {
            b'O' => assert_eq!(data.len(), 12),
            // Connect, HELO, MAIL, RCPT and the macros: one-line values, each ended by NUL.
            b'C' | b'H' | b'M' | b'R' | b'D' => {
                let strings = if command == b'D' { &data[1..] } else { data };
                let strings = if command == b'C' {
                    // The client's name, then the family, the port and the address.
                    let name_end = strings.iter().position(|&b| b == 0).expect("a name") + 1;
                    assert!(!strings[..name_end].contains(&b'\n'));
                    &strings[name_end + 3..]
                } else {
                    strings
                };
                assert!(strings.is_empty() || strings.ends_with(&[0]));
                assert!(!strings.iter().any(|&b| b == b'\r' || b == b'\n'));
            }
            // A header field: name and value, each ended by NUL.
            b'L' => assert_eq!(data.iter().filter(|&&b| b == 0).count(), 2),
            b'B' => assert!(data.len() <= 65535),
            b'T' | b'N' | b'E' | b'Q' => assert!(data.is_empty()),
            other => panic!("sent an unknown command {:?}", char::from(other)),
        }
        last = Some(command);
        sent = &sent[4 + len..];
    }
    assert_eq!(last, Some(b'Q'), "no goodbye");
}
