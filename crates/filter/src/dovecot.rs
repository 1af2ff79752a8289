//! SMTP AUTH against a site's Dovecot, through its authentication protocol (the client side of
//! Dovecot's auth-client socket, protocol version 1.2): the passwords stay in Dovecot's
//! passdb, as Postfix's `smtpd_sasl_type = dovecot` does it.
//!
//! One connection per login: the handshake (`VERSION`, `CPID`; Dovecot answers with its
//! mechanisms, `SPID`, `CUID`, `COOKIE` and `DONE`), then `AUTH` with PLAIN and the
//! credentials, and Dovecot's `OK` or `FAIL` (`temp` in a `FAIL` means it could not decide).
//! Every line is read within the timeout and at most [`MAX_LINE`] long.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::error::LookupError;
use crate::net::Endpoint;

/// Where Dovecot's auth-client socket is, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DovecotAuth {
    pub endpoint: Endpoint,
    pub timeout: Duration,
}

/// What Dovecot decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The password is right (for the user name Dovecot gives back).
    Valid { user: String },
    /// No such user, or the wrong password.
    Invalid,
}

/// The longest line read from Dovecot (its replies are short).
const MAX_LINE: usize = 16 * 1024;

impl DovecotAuth {
    /// Checks `password` for `user`, logging in from `client` (`secured`: under TLS). `Err`
    /// when Dovecot cannot answer (down, too slow, a temporary failure it reports, or
    /// something that is not its protocol).
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
        secured: bool,
    ) -> Result<Login, LookupError> {
        // An empty password, or a name with a control character, is no login anywhere.
        if user.is_empty()
            || password.is_empty()
            || backstop_types::text::has_control(user)
            || password.contains('\0')
        {
            return Ok(Login::Invalid);
        }
        let asked = self.ask(user, password, client, secured);
        tokio::time::timeout(self.timeout, asked)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Dovecot at {} did not answer within {}s",
                    self.endpoint,
                    self.timeout.as_secs()
                ))
            })
            .map_err(LookupError)
    }

    async fn ask(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
        secured: bool,
    ) -> Result<Login, String> {
        let failed = |e: std::io::Error| format!("Dovecot at {}: {e}", self.endpoint);
        let stream = crate::net::connect(&self.endpoint).await.map_err(failed)?;
        let mut stream = BufReader::new(stream);
        let hello = format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id());
        stream
            .get_mut()
            .write_all(hello.as_bytes())
            .await
            .map_err(failed)?;
        // Its handshake: VERSION, MECH lines, SPID, CUID, COOKIE, then DONE.
        let mut plain = false;
        let mut version_ok = false;
        loop {
            let line = read_line(&mut stream).await.map_err(failed)?;
            let mut fields = line.split('\t');
            match fields.next() {
                Some("VERSION") => {
                    version_ok = fields.next() == Some("1");
                }
                Some("MECH") => plain |= fields.next() == Some("PLAIN"),
                Some("DONE") => break,
                Some("SPID" | "CUID" | "COOKIE") => {}
                _ => {
                    return Err(format!(
                        "Dovecot at {} said something that is not its auth protocol",
                        self.endpoint
                    ))
                }
            }
        }
        if !version_ok {
            return Err(format!(
                "Dovecot at {} speaks another version of its auth protocol",
                self.endpoint
            ));
        }
        if !plain {
            return Err(format!(
                "Dovecot at {} does not offer the PLAIN mechanism",
                self.endpoint
            ));
        }
        let response =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let mut request = format!("AUTH\t1\tPLAIN\tservice=smtp\tnologin\trip={client}");
        if secured {
            request.push_str("\tsecured");
        }
        request.push_str(&format!("\tresp={response}\n"));
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(failed)?;
        let line = read_line(&mut stream).await.map_err(failed)?;
        let mut fields = line.split('\t');
        let verdict = fields.next();
        if fields.next() != Some("1") {
            return Err(format!(
                "Dovecot at {} answered another request",
                self.endpoint
            ));
        }
        let params: Vec<&str> = fields.collect();
        match verdict {
            Some("OK") => {
                let user = params
                    .iter()
                    .find_map(|p| p.strip_prefix("user="))
                    .map(unescape)
                    .unwrap_or_else(|| user.to_owned());
                Ok(Login::Valid { user })
            }
            Some("FAIL") if params.contains(&"temp") => Err(format!(
                "Dovecot at {} could not decide for now",
                self.endpoint
            )),
            Some("FAIL") => Ok(Login::Invalid),
            // PLAIN is one step: a challenge is not how it goes.
            _ => Err(format!(
                "Dovecot at {} did not answer OK or FAIL",
                self.endpoint
            )),
        }
    }
}

/// One line from Dovecot, without its LF; an error past [`MAX_LINE`] or at the end.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(&mut *reader, MAX_LINE as u64);
    limited.read_until(b'\n', &mut line).await?;
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::other(if line.len() >= MAX_LINE {
            "a line too long"
        } else {
            "the connection was closed"
        }));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| std::io::Error::other("a line that is not UTF-8"))
}

/// A value in Dovecot's tab-escaping: `\x01` followed by `1`, `t`, `r`, `n` or `0`.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A fake auth server on a Unix socket that answers the AUTH with `answer` (or with
    /// `handshake` first); returns the socket's endpoint and what the client sent.
    async fn server(
        handshake: &'static str,
        answer: &'static str,
    ) -> (
        DovecotAuth,
        tempfile::TempDir,
        tokio::task::JoinHandle<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth-client");
        let listener = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(handshake.as_bytes()).await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&seen).contains("AUTH") || !seen.ends_with(b"\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let _ = stream.write_all(answer.as_bytes()).await;
            String::from_utf8_lossy(&seen).into_owned()
        });
        let auth = DovecotAuth {
            endpoint: Endpoint::Unix(path),
            timeout: Duration::from_secs(2),
        };
        (auth, dir, task)
    }

    const HANDSHAKE: &str = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t42\nCUID\t7\nCOOKIE\t0123\nDONE\n";

    #[tokio::test]
    async fn ok_fail_and_temporary_failure() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let (auth, _dir, seen) = server(HANDSHAKE, "OK\t1\tuser=alice@example.com\n").await;
        assert_eq!(
            auth.authenticate("Alice@example.com", "pw", ip, true).await,
            Ok(Login::Valid {
                user: "alice@example.com".into()
            })
        );
        let seen = seen.await.unwrap();
        assert!(seen.starts_with("VERSION\t1\t2\nCPID\t"), "{seen}");
        assert!(
            seen.contains("AUTH\t1\tPLAIN\tservice=smtp\tnologin\trip=192.0.2.7\tsecured\tresp=AEFsaWNlQGV4YW1wbGUuY29tAHB3\n"),
            "{seen}"
        );
        let (auth, _dir, _) = server(HANDSHAKE, "FAIL\t1\tuser=bob\n").await;
        assert_eq!(
            auth.authenticate("bob", "x", ip, true).await,
            Ok(Login::Invalid)
        );
        let (auth, _dir, _) = server(HANDSHAKE, "FAIL\t1\ttemp\treason=db down\n").await;
        assert!(auth.authenticate("bob", "x", ip, true).await.is_err());
    }

    #[tokio::test]
    async fn garbage_silence_and_no_plain_are_failures_to_answer() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let (auth, _dir, _) = server("HTTP/1.1 200 OK\r\n\r\n", "").await;
        assert!(auth.authenticate("bob", "x", ip, false).await.is_err());
        let (auth, _dir, _) = server("VERSION\t1\t2\nMECH\tCRAM-MD5\nDONE\n", "OK\t1\n").await;
        let err = auth.authenticate("bob", "x", ip, false).await.unwrap_err();
        assert!(err.0.contains("PLAIN"), "{err}");
        // A handshake that never ends: the timeout answers.
        let (mut auth, _dir, _) = server("VERSION\t1\t2\n", "").await;
        auth.timeout = Duration::from_millis(300);
        let err = auth.authenticate("bob", "x", ip, false).await.unwrap_err();
        assert!(err.0.contains("did not answer"), "{err}");
        // Nobody listens.
        let gone = DovecotAuth {
            endpoint: Endpoint::Unix("/nonexistent/auth-client".into()),
            timeout: Duration::from_secs(1),
        };
        assert!(gone.authenticate("bob", "x", ip, false).await.is_err());
        // A name with a line break never reaches Dovecot.
        assert_eq!(
            gone.authenticate("bob\nAUTH", "x", ip, false).await,
            Ok(Login::Invalid)
        );
    }

    #[test]
    fn tab_escaping() {
        assert_eq!(unescape("a\x01tb\x011c"), "a\tb\x01c");
    }
}
