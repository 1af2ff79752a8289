//! The tokio driver of a [`ClientSession`]: a TCP or Unix socket, rustls after STARTTLS, and
//! RFC 5321's timeouts as `tokio::time` timeouts. A [`Connection`] is opened once (greeting,
//! EHLO, STARTTLS, AUTH) and then carries any number of transactions, probes or pass-through
//! commands, one at a time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use backstop_types::RemoteReply;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{timeout, Instant};

use crate::dot::DotStuffer;
use crate::error::{ClientError, Stage};
use crate::session::{Action, ClientSession, TlsMode, Transaction, TxnResult, Wait};
use crate::{Endpoint, NextHop, Settings, TlsPolicy};

/// The most a body is written in one piece (a smaller piece after dot-stuffing).
const CHUNK: usize = 64 * 1024;

/// A message as it is sent: pieces in memory (header fields put on top, the stored head), then
/// the spooled rest, read from its file as it goes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outgoing<'a> {
    pub pieces: &'a [&'a [u8]],
    pub tail: Option<&'a backstop_types::Spooled>,
}

impl<'a> Outgoing<'a> {
    /// A message all in memory.
    pub fn memory(pieces: &'a [&'a [u8]]) -> Outgoing<'a> {
        Outgoing { pieces, tail: None }
    }

    /// Its length in octets.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|p| p.len() as u64).sum::<u64>() + self.tail.map_or(0, |t| t.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open connection to a next hop, ready for a transaction.
pub struct Connection {
    stream: Stream,
    session: ClientSession,
    settings: Settings,
    hop: NextHop,
    remote: String,
    opened: Instant,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects to `hop` and says EHLO (or LHLO), STARTTLS and AUTH as `settings` say.
    pub async fn open(hop: &NextHop, settings: &Settings) -> Result<Connection, ClientError> {
        let remote = hop.remote();
        let connect = async {
            match &hop.endpoint {
                Endpoint::Tcp(address) => TcpStream::connect(address.as_str()).await.map(|s| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
                Endpoint::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
            }
        };
        let stream = match timeout(settings.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(ClientError::network(Stage::Connect, &remote, e)),
            Err(_) => {
                return Err(ClientError::timeout(
                    Stage::Connect,
                    &remote,
                    settings.connect_timeout,
                ))
            }
        };
        let mode = match settings.tls {
            TlsPolicy::Off => TlsMode::Off,
            TlsPolicy::Opportunistic => TlsMode::Opportunistic,
            TlsPolicy::Require(_) => TlsMode::Require,
        };
        let session = ClientSession::new(
            &settings.helo,
            settings.lmtp,
            mode,
            settings.auth.clone(),
            &remote,
        );
        let mut connection = Connection {
            stream,
            session,
            settings: settings.clone(),
            hop: hop.clone(),
            remote,
            opened: Instant::now(),
            buf: vec![0; 4096],
        };
        match connection.run(Outgoing::default()).await {
            Action::Ready => Ok(connection),
            Action::Failed(e) => Err(e),
            other => Err(ClientError::garbage(
                Stage::Ehlo,
                &connection.remote,
                &format!("the session stopped at {other:?}"),
            )),
        }
    }

    /// `host[endpoint]` of the next hop.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    pub fn hop(&self) -> &NextHop {
        &self.hop
    }

    /// How long ago the connection was opened.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    /// Whether it can take another transaction.
    pub fn is_ready(&self) -> bool {
        self.session.is_ready()
    }

    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// Sends one message: `body` is the message as it is sent, whose length is `txn.size`.
    pub async fn deliver(&mut self, txn: &Transaction<'_>, body: Outgoing<'_>) -> TxnResult {
        self.session.begin(txn);
        match self.run(body).await {
            Action::Finished(result) => result,
            other => TxnResult {
                outcomes: txn
                    .recipients
                    .iter()
                    .map(|(i, _)| {
                        let e = match &other {
                            Action::Failed(e) => e.clone(),
                            _ => ClientError::no_reply_for_recipient(),
                        };
                        (*i, e.outcome(Some(&self.remote)))
                    })
                    .collect(),
                error: match other {
                    Action::Failed(e) => Some(e),
                    _ => Some(ClientError::no_reply_for_recipient()),
                },
                passed_on: false,
            },
        }
    }

    /// Sends one command line and returns its reply (callahead, proxy mode).
    pub async fn command(&mut self, line: &str) -> Result<RemoteReply, ClientError> {
        self.session.command(line)?;
        self.replied(Outgoing::default()).await
    }

    /// After a 354: sends the message dot-stuffed and returns the final reply (proxy mode).
    pub async fn data(&mut self, body: Outgoing<'_>) -> Result<RemoteReply, ClientError> {
        self.session.body();
        self.replied(body).await
    }

    /// QUIT, waiting for the reply at most the command timeout, then closes.
    pub async fn quit(mut self) {
        self.session.quit();
        let _ = self.run(Outgoing::default()).await;
        let _ = self.stream.shutdown().await;
    }

    async fn replied(&mut self, body: Outgoing<'_>) -> Result<RemoteReply, ClientError> {
        match self.run(body).await {
            Action::Replied(reply) => Ok(reply),
            Action::Failed(e) => Err(e),
            other => Err(ClientError::garbage(
                self.session.stage(),
                &self.remote,
                &format!("the session stopped at {other:?}"),
            )),
        }
    }

    /// Does what the session asks until it has something for the caller.
    async fn run(&mut self, body: Outgoing<'_>) -> Action {
        let t = self.settings.timeouts;
        loop {
            match self.session.poll() {
                Action::Send(bytes) => {
                    if let Err(e) = self.write(&bytes, t.command).await {
                        self.session.fail(e);
                    }
                }
                Action::SendBody { stuffed } => {
                    if let Err(e) = self.write_body(body, stuffed).await {
                        self.session.fail(e);
                    }
                }
                Action::Read(wait) => {
                    let waited = match wait {
                        Wait::Command => t.command,
                        Wait::DataStart => t.data_start,
                        Wait::DataEnd => t.data_end,
                    };
                    let stage = self.session.stage();
                    match timeout(waited, self.stream.read(&mut self.buf)).await {
                        Ok(Ok(0)) => self.session.fail(ClientError::closed(stage, &self.remote)),
                        Ok(Ok(n)) => {
                            let (session, buf) = (&mut self.session, &self.buf);
                            session.handle_input(&buf[..n]);
                        }
                        Ok(Err(e)) => {
                            self.session
                                .fail(ClientError::network(stage, &self.remote, e))
                        }
                        Err(_) => {
                            self.session
                                .fail(ClientError::timeout(stage, &self.remote, waited))
                        }
                    }
                }
                Action::StartTls => {
                    if let Err(e) = self.start_tls().await {
                        self.session.fail(e);
                    } else {
                        self.session.tls_established();
                    }
                }
                Action::Closed => {
                    let _ = self.stream.shutdown().await;
                    return Action::Closed;
                }
                Action::Failed(e) => {
                    let _ = self.stream.shutdown().await;
                    return Action::Failed(e);
                }
                done @ (Action::Ready | Action::Replied(_) | Action::Finished(_)) => return done,
            }
        }
    }

    async fn write(&mut self, bytes: &[u8], within: Duration) -> Result<(), ClientError> {
        let stage = self.session.stage();
        let written = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match timeout(within, written).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::network(stage, &self.remote, e)),
            Err(_) => Err(ClientError::timeout(stage, &self.remote, within)),
        }
    }

    /// Writes the message in chunks, each within the data-block timeout: dot-stuffed and with
    /// the end-of-data line, or as it is (BDAT). A spooled rest is read a chunk at a time; if
    /// it cannot be read whole, the end of the data is never sent.
    async fn write_body(&mut self, body: Outgoing<'_>, stuffed: bool) -> Result<(), ClientError> {
        let block = self.settings.timeouts.data_block;
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::with_capacity(if stuffed { CHUNK + CHUNK / 32 } else { 0 });
        let mut send = async |this: &mut Connection, chunk: &[u8]| {
            if stuffed {
                out.clear();
                stuffer.push(chunk, &mut out);
                this.write(&out, block).await
            } else {
                this.write(chunk, block).await
            }
        };
        for part in body.pieces {
            for chunk in part.chunks(CHUNK) {
                send(self, chunk).await?;
            }
        }
        if let Some(tail) = body.tail {
            use tokio::io::AsyncReadExt;
            let mut file = tokio::fs::File::open(&tail.path)
                .await
                .map_err(ClientError::unreadable)?;
            let mut chunk = vec![0; CHUNK];
            let mut left = tail.len;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let n = file
                    .read(&mut chunk[..want])
                    .await
                    .map_err(ClientError::unreadable)?;
                if n == 0 {
                    return Err(ClientError::unreadable(backstop_types::body::short(
                        &tail.path,
                        tail.len - left,
                        tail.len,
                    )));
                }
                send(self, &chunk[..n]).await?;
                left -= n as u64;
            }
        }
        if stuffed {
            out.clear();
            stuffer.finish(&mut out);
            self.write(&out, block).await?;
        }
        Ok(())
    }

    async fn start_tls(&mut self) -> Result<(), ClientError> {
        let config = match &self.settings.tls {
            TlsPolicy::Require(config) => std::sync::Arc::clone(config),
            _ => crate::tls::opportunistic_config(),
        };
        let name = match rustls::pki_types::ServerName::try_from(self.hop.host.clone()) {
            Ok(name) => name,
            Err(_) if !matches!(self.settings.tls, TlsPolicy::Require(_)) => {
                // Opportunistic: any name will do for encryption without verification.
                rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(|e| ClientError::tls_failed(&self.remote, e))?
            }
            Err(_) => {
                return Err(ClientError::tls_failed(
                    &self.remote,
                    format!("{:?} is not a name TLS can verify", self.hop.host),
                ))
            }
        };
        let plain = match std::mem::replace(&mut self.stream, Stream::Gone) {
            Stream::Tcp(s) => Plain::Tcp(s),
            Stream::Unix(s) => Plain::Unix(s),
            other => {
                self.stream = other;
                return Err(ClientError::tls_failed(
                    &self.remote,
                    "TLS is already active",
                ));
            }
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let within = self.settings.timeouts.command;
        match timeout(within, connector.connect(name, plain)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                Ok(())
            }
            Ok(Err(e)) => Err(ClientError::tls_failed(
                &self.remote,
                format!("handshake failed: {e}"),
            )),
            Err(_) => Err(ClientError::tls_failed(
                &self.remote,
                format!("no handshake within {}s", within.as_secs()),
            )),
        }
    }
}

/// Asks `hop` whether it takes mail for `recipient` (callahead): MAIL FROM `sender` (never
/// `<>`: a null sender is what backscatter looks like), with `SIZE=size` when given and
/// offered (so a mailbox server can answer for a full mailbox), then RCPT, RSET and QUIT.
/// Nothing is sent. The reply to RCPT, or why there is none to rely on.
pub async fn probe(
    hop: &NextHop,
    settings: &Settings,
    sender: &backstop_types::Address,
    recipient: &backstop_types::Address,
    size: Option<u64>,
) -> Result<RemoteReply, ClientError> {
    let mut connection = Connection::open(hop, settings).await?;
    let mut mail = format!("MAIL FROM:<{sender}>");
    if let (Some(size), true) = (size, connection.session.capabilities().size.is_some()) {
        mail.push_str(&format!(" SIZE={size}"));
    }
    let asked = async {
        let reply = connection.command(&mail).await?;
        if reply.code / 100 != 2 {
            return Err(ClientError::remote(Stage::Mail, reply));
        }
        connection.command(&format!("RCPT TO:<{recipient}>")).await
    }
    .await;
    if connection.is_ready() {
        let _ = connection.command("RSET").await;
    }
    if connection.is_ready() {
        connection.quit().await;
    }
    asked
}

/// A connection's socket, plain or under TLS.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<Plain>>),
    /// Only while the handshake takes the socket.
    Gone,
}

/// A socket before TLS.
enum Plain {
    Tcp(TcpStream),
    Unix(UnixStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr, $gone:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::Tls($s) => $e,
            Stream::Gone => $gone,
        }
    };
}

fn gone<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::NotConnected,
        "no connection",
    )))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf), gone())
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf), gone())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx), gone())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx), gone())
    }
}

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Plain::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Plain::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_flush(cx),
            Plain::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Plain::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
