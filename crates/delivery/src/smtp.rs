//! The SMTP and LMTP client for relay routes: one transaction to a fixed next hop, with an
//! outcome for every recipient. LMTP (RFC 2033) differs in two places: LHLO instead of EHLO,
//! and one reply per accepted recipient after the data instead of one for all.
//!
//! Blocking I/O (the delivery pass runs on the blocking pool). STARTTLS is used whenever the
//! server offers it; like Postfix's `may` level the certificate is not verified (an
//! unauthenticated encrypted channel is still better than plain text), but the handshake
//! signatures are. Bytes a server sends behind its `220` to STARTTLS are refused
//! (CVE-2011-0411, client side). The message is sent dot-stuffed; stored messages never hold a
//! bare CR or LF (the session refuses them), so none is ever sent.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use backstop_types::{
    Address, Attempt, AttemptOutcome, BodyType, EnhancedStatus, Envelope, RemoteReply,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// Where and how to relay.
#[derive(Debug, Clone)]
pub struct Relay {
    pub address: SocketAddr,
    /// Used as the TLS server name and in `remote_host`.
    pub host: String,
    /// Our name in EHLO.
    pub helo: String,
    pub timeout: Duration,
    /// Speak LMTP (to a mailbox server such as Dovecot) instead of SMTP.
    pub lmtp: bool,
}

/// Delivers `body` for `recipients` (index in the envelope, address) in one transaction and
/// returns an outcome for each.
pub fn deliver(
    relay: &Relay,
    envelope: &Envelope,
    recipients: &[(usize, Address)],
    body: &[u8],
) -> Vec<(usize, AttemptOutcome)> {
    let remote = format!("{}[{}]", relay.host, relay.address);
    let mut outcomes: Vec<(usize, Option<AttemptOutcome>)> =
        recipients.iter().map(|(i, _)| (*i, None)).collect();
    let result = transaction(relay, &remote, envelope, recipients, body, &mut outcomes);
    let fallback = match result {
        Ok(()) => None,
        Err(Failure::Reply(reply)) => Some(outcome(&remote, reply)),
        Err(Failure::Io(e)) => Some(AttemptOutcome::Transient(attempt(
            &remote,
            RemoteReply {
                code: 451,
                status: Some(EnhancedStatus(4, 4, 1)),
                text: format!("connection to {remote} failed: {e}"),
            },
        ))),
        Err(Failure::Local(reply)) => Some(outcome(&remote, reply)),
    };
    outcomes
        .into_iter()
        .map(|(i, o)| {
            let o = o.or_else(|| fallback.clone()).unwrap_or_else(|| {
                AttemptOutcome::Transient(attempt(
                    &remote,
                    RemoteReply {
                        code: 451,
                        status: Some(EnhancedStatus(4, 4, 2)),
                        text: "the transaction ended without a reply for this recipient".into(),
                    },
                ))
            });
            (i, o)
        })
        .collect()
}

/// Why a transaction stopped before every recipient had its outcome.
enum Failure {
    /// The server refused something that applies to all remaining recipients.
    Reply(RemoteReply),
    /// We cannot send this message there (e.g. SMTPUTF8 not offered).
    Local(RemoteReply),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

fn transaction(
    relay: &Relay,
    remote: &str,
    envelope: &Envelope,
    recipients: &[(usize, Address)],
    body: &[u8],
    outcomes: &mut [(usize, Option<AttemptOutcome>)],
) -> Result<(), Failure> {
    let tcp = TcpStream::connect_timeout(&relay.address, relay.timeout)?;
    tcp.set_read_timeout(Some(relay.timeout))?;
    tcp.set_write_timeout(Some(relay.timeout))?;
    let mut conn = Connection::Plain(BufReader::new(tcp));
    expect(conn.reply()?, 2)?;
    let mut caps = ehlo(&mut conn, &relay.helo, relay.lmtp)?;
    if caps.starttls {
        conn.command("STARTTLS")?;
        expect(conn.reply()?, 2)?;
        conn = conn.start_tls(&relay.host)?;
        caps = ehlo(&mut conn, &relay.helo, relay.lmtp)?;
    }
    let needs_utf8 = envelope.smtputf8;
    if needs_utf8 && !caps.smtputf8 {
        return Err(Failure::Local(RemoteReply {
            code: 550,
            status: Some(EnhancedStatus(5, 6, 7)),
            text: format!("{remote} does not support SMTPUTF8, which this message needs"),
        }));
    }
    if let Some(limit) = caps.size {
        if body.len() as u64 > limit {
            return Err(Failure::Local(RemoteReply {
                code: 552,
                status: Some(EnhancedStatus(5, 3, 4)),
                text: format!(
                    "message size {} exceeds {remote}'s limit of {limit}",
                    body.len()
                ),
            }));
        }
    }
    let mut mail = format!("MAIL FROM:{}", envelope.sender);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", body.len()));
    }
    if caps.eightbitmime && envelope.body_type == BodyType::EightBitMime {
        mail.push_str(" BODY=8BITMIME");
    }
    if needs_utf8 {
        mail.push_str(" SMTPUTF8");
    }
    conn.command(&mail)?;
    expect(conn.reply()?, 2)?;
    let mut accepted = Vec::new();
    for (n, (_, address)) in recipients.iter().enumerate() {
        conn.command(&format!("RCPT TO:<{address}>"))?;
        let reply = conn.reply()?;
        if reply.code / 100 == 2 {
            accepted.push(n);
        } else {
            outcomes[n].1 = Some(outcome(remote, reply));
        }
    }
    if accepted.is_empty() {
        let _ = conn.command("QUIT");
        return Ok(());
    }
    conn.command("DATA")?;
    expect(conn.reply()?, 3)?;
    conn.write_all(&dot_stuff(body))?;
    if relay.lmtp {
        // One reply per accepted recipient, in RCPT order (RFC 2033 4.2).
        for n in accepted {
            outcomes[n].1 = Some(outcome(remote, conn.reply()?));
        }
    } else {
        let reply = conn.reply()?;
        for n in accepted {
            outcomes[n].1 = Some(outcome(remote, reply.clone()));
        }
    }
    let _ = conn.command("QUIT");
    Ok(())
}

/// What EHLO told us the server can do.
#[derive(Debug, Default)]
struct Capabilities {
    starttls: bool,
    size: Option<u64>,
    eightbitmime: bool,
    smtputf8: bool,
}

fn ehlo(conn: &mut Connection, name: &str, lmtp: bool) -> Result<Capabilities, Failure> {
    let verb = if lmtp { "LHLO" } else { "EHLO" };
    conn.command(&format!("{verb} {name}"))?;
    let reply = conn.reply()?;
    if lmtp {
        expect(reply.clone(), 2)?;
    }
    if reply.code / 100 != 2 {
        // An old server: plain HELO, no extensions.
        conn.command(&format!("HELO {name}"))?;
        expect(conn.reply()?, 2)?;
        return Ok(Capabilities::default());
    }
    let mut caps = Capabilities::default();
    for line in reply.text.lines().skip(1) {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("STARTTLS") => caps.starttls = true,
            Some("SIZE") => {
                caps.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0)
            }
            Some("8BITMIME") => caps.eightbitmime = true,
            Some("SMTPUTF8") => caps.smtputf8 = true,
            _ => {}
        }
    }
    Ok(caps)
}

fn expect(reply: RemoteReply, class: u16) -> Result<(), Failure> {
    if reply.code / 100 == class {
        Ok(())
    } else {
        Err(Failure::Reply(reply))
    }
}

fn outcome(remote: &str, reply: RemoteReply) -> AttemptOutcome {
    let a = attempt(remote, reply);
    match a.reply.code / 100 {
        2 => AttemptOutcome::Delivered(a),
        5 => AttemptOutcome::Permanent(a),
        _ => AttemptOutcome::Transient(a),
    }
}

fn attempt(remote: &str, reply: RemoteReply) -> Attempt {
    Attempt {
        remote_host: Some(remote.to_owned()),
        reply,
    }
}

/// The message as DATA sends it: a dot doubled at the start of every line, a final CRLF if
/// missing, and the end-of-data line.
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A connection, plain or under TLS.
enum Connection {
    Plain(BufReader<TcpStream>),
    Tls(Box<BufReader<StreamOwned<ClientConnection, TcpStream>>>),
}

impl Connection {
    fn command(&mut self, line: &str) -> io::Result<()> {
        self.write_all(format!("{line}\r\n").as_bytes())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Connection::Plain(r) => {
                r.get_mut().write_all(bytes)?;
                r.get_mut().flush()
            }
            Connection::Tls(r) => {
                r.get_mut().write_all(bytes)?;
                r.get_mut().flush()
            }
        }
    }

    /// Reads a complete (possibly multi-line) reply.
    fn reply(&mut self) -> io::Result<RemoteReply> {
        let reader: &mut dyn BufRead = match self {
            Connection::Plain(r) => r,
            Connection::Tls(r) => r.as_mut(),
        };
        read_reply(reader)
    }

    /// Upgrades to TLS after the server's 220 to STARTTLS.
    fn start_tls(self, host: &str) -> Result<Connection, Failure> {
        let Connection::Plain(reader) = self else {
            return Err(Failure::Io(io::Error::other("TLS already active")));
        };
        if !reader.buffer().is_empty() {
            // CVE-2011-0411: nothing may come before the handshake.
            return Err(Failure::Reply(RemoteReply {
                code: 451,
                status: Some(EnhancedStatus(4, 7, 0)),
                text: "the server sent data behind its STARTTLS reply".into(),
            }));
        }
        let tcp = reader.into_inner();
        let name = ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::try_from("localhost").expect("a valid name"));
        let tls = ClientConnection::new(opportunistic_config(), name)
            .map_err(|e| Failure::Io(io::Error::other(e)))?;
        let mut stream = StreamOwned::new(tls, tcp);
        // Drive the handshake now, so that a failure is reported as such.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| Failure::Io(io::Error::other(format!("TLS handshake: {e}"))))?;
        }
        Ok(Connection::Tls(Box::new(BufReader::new(stream))))
    }
}

fn read_reply(reader: &mut dyn BufRead) -> io::Result<RemoteReply> {
    let mut lines = Vec::new();
    let code: u16 = loop {
        let mut line = String::new();
        let mut limited = (&mut *reader).take(4096);
        if limited.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || io::Error::other(format!("bad reply line {line:?}"));
        let code = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        lines.push(line.get(4..).unwrap_or("").to_owned());
        if line.as_bytes().get(3) != Some(&b'-') {
            break code;
        }
        if lines.len() > 100 {
            return Err(io::Error::other("reply too long"));
        }
    };
    // The enhanced status code, when the first line carries one.
    let (status, first) = match lines[0].split_once(' ') {
        Some((s, text)) => match parse_status(s) {
            Some(status) => (Some(status), text.to_owned()),
            None => (None, lines[0].clone()),
        },
        None => (parse_status(&lines[0]), lines[0].clone()),
    };
    lines[0] = first;
    Ok(RemoteReply {
        code,
        status,
        text: lines.join("\n"),
    })
}

fn parse_status(s: &str) -> Option<EnhancedStatus> {
    let mut parts = s.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5))
        .then_some(EnhancedStatus(class, subject, detail))
}

/// Opportunistic TLS: encrypt, but accept any certificate (Postfix's `may`).
fn opportunistic_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(Arc::clone(&provider)));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    // The ring provider supports the default versions; a failure here is a build problem.
    Arc::new(config.unwrap_or_else(|e| panic!("TLS client configuration: {e}")))
}

/// Accepts any certificate chain, but still checks the handshake signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n..\r\n"), b"..a\r\nb\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b"no final newline"), b"no final newline\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
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
}
