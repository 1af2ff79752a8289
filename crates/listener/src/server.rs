//! Accept loops and the per-connection driver.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backstop_session::{
    AuthOutcome, ContentVerdict, Output, Peer, RecipientVerdict, SenderVerdict, ServerSession,
    SessionConfig,
};
use backstop_types::text::Escaped;
use backstop_types::{Clock, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::auth_limits::AuthLimits;
use crate::limits::{unmapped, ConnectionLimits, IpNetwork, Refusal};
use crate::spool::SpoolFile;
use crate::users::UserStore;
use crate::{tls, MessageSink, Policy};

/// How a listener starts its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Plain text first; STARTTLS when the session config offers it (ports 25 and 587).
    Plain,
    /// TLS from the first byte (port 465, RFC 8314).
    ImplicitTls,
}

/// One bound socket; the rules for its sessions are in the [`Context`] under its name.
pub struct Listener {
    pub name: String,
    pub socket: TcpListener,
    pub mode: ListenerMode,
}

/// The local submission socket (`backstop sendmail`): each session on it is logged in as the
/// Unix user the kernel names as its peer, before the greeting, and counts as from
/// 127.0.0.1. Its rules are [`Context::local`].
pub struct LocalListener {
    pub name: String,
    pub socket: UnixListener,
}

/// Which envelope senders (and From: addresses) a local user of the sendmail socket may use:
/// any, for a trusted user or when senders are not restricted (`[auth] restrict_sender =
/// false`); else the user's own name in each of `domains` (the host name, the mail name, the
/// local domains), as a logged-in user is held to the addresses that are theirs.
#[derive(Debug, Clone, Default)]
pub struct LocalSenders {
    pub restrict: bool,
    pub trusted_users: Vec<String>,
    pub domains: Vec<backstop_types::Domain>,
}

impl LocalSenders {
    pub fn rights(&self, user: &str) -> backstop_session::SenderRights {
        use backstop_session::SenderRights;
        if !self.restrict || self.trusted_users.iter().any(|t| t == user) {
            return SenderRights::Any;
        }
        SenderRights::Only {
            addresses: self
                .domains
                .iter()
                .filter_map(|d| backstop_types::Address::new(user, d.clone()).ok())
                .collect(),
            domains: Vec::new(),
        }
    }
}

/// The rules for one listener's sessions.
pub struct ListenerSettings {
    pub session: Arc<SessionConfig>,
    /// Wait this long before the greeting; a client that talks first is refused.
    pub greeting_delay: Duration,
    /// On shutdown, how long a session in a transaction may take to finish it.
    pub shutdown_grace: Duration,
    /// The command timeout while the server is near its connection limit.
    pub stress_timeout: Duration,
}

/// What all listeners share.
pub struct Context<S, P> {
    pub sink: S,
    pub policy: P,
    /// `None` when no listener uses TLS.
    pub tls: Option<TlsAcceptor>,
    pub users: Arc<UserStore>,
    pub limits: ConnectionLimits,
    /// Failed logins across connections, and the bound on password checks at once.
    pub auth_limits: Arc<AuthLimits>,
    /// Clients in these networks are local submitters: they may relay without AUTH, and their
    /// mail is trusted for DSNs.
    pub local_networks: Vec<IpNetwork>,
    /// Sessions, messages, refusals by stage and reason, and check latency.
    pub metrics: Arc<crate::metrics::SmtpMetrics>,
    /// Each listener's rules, by its name.
    pub listeners: std::collections::HashMap<String, ListenerSettings>,
    /// The local submission socket's rules, when there is one.
    pub local: Option<ListenerSettings>,
    /// Which senders a local user may use there.
    pub local_senders: LocalSenders,
    /// The time, for the sessions.
    pub clock: Arc<dyn Clock>,
}

/// Runs the accept loops until `shutdown` turns true, then tells open sessions (421) and waits
/// for them to end. Sessions in the middle of storing a message finish that first. Each new
/// session takes the context `contexts` holds at that moment (a reload sends a new one);
/// sessions already open keep the one they started with.
pub async fn serve<S: MessageSink, P: Policy>(
    listeners: Vec<Listener>,
    local: Option<LocalListener>,
    contexts: watch::Receiver<Arc<Context<S, P>>>,
    shutdown: watch::Receiver<bool>,
) {
    // The ids start now, at the start of the run (not at its first connection).
    std::sync::LazyLock::force(&SESSION_IDS);
    let mut loops = JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, contexts.clone(), shutdown.clone()));
    }
    if let Some(local) = local {
        loops.spawn(local_accept_loop(local, contexts.clone(), shutdown.clone()));
    }
    while loops.join_next().await.is_some() {}
}

/// Session ids: they start at the process's start time in milliseconds, times 1,000, so that
/// the ids of one run never repeat those of an earlier one (that would take more than a
/// million sessions a second, kept up for the whole run) and log lines from different runs
/// are not confused.
static SESSION_IDS: std::sync::LazyLock<AtomicU64> = std::sync::LazyLock::new(|| {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 1000)
        });
    AtomicU64::new(millis.saturating_mul(1000).saturating_add(1))
});

async fn accept_loop<S: MessageSink, P: Policy>(
    listener: Listener,
    contexts: watch::Receiver<Arc<Context<S, P>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.socket.accept() => accepted,
            _ = shutdown.changed() => break,
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            // An IPv4 client on a dual-stack socket is known by its IPv4 address everywhere.
            Ok((tcp, peer)) => (tcp, SocketAddr::new(unmapped(peer.ip()), peer.port())),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("session", id, peer = %peer, listener = %listener.name);
        let context = Arc::clone(&contexts.borrow());
        let Some(settings) = context.listeners.get(&listener.name) else {
            // A context always covers the listeners it is served with.
            warn!(listener = %listener.name, "no settings for this listener");
            continue;
        };
        let settings = Setup::new(settings, listener.mode, id);
        connections
            .spawn(connection(tcp, peer, settings, context, shutdown.clone()).instrument(span));
    }
    while connections.join_next().await.is_some() {}
}

async fn local_accept_loop<S: MessageSink, P: Policy>(
    listener: LocalListener,
    contexts: watch::Receiver<Arc<Context<S, P>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.socket.accept() => accepted,
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
        // The kernel's word for who connected; a peer it cannot name is not served.
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                warn!(error = %e, "local submission: the peer's user is unknown; closed");
                continue;
            }
        };
        let user = crate::local_user::name(uid);
        let span =
            info_span!("session", id, uid, user = %Escaped(&user), listener = %listener.name);
        let context = Arc::clone(&contexts.borrow());
        let Some(settings) = &context.local else {
            warn!(listener = %listener.name, "no settings for the local socket");
            continue;
        };
        let setup = Setup::new(settings, ListenerMode::Plain, id);
        connections.spawn(
            local_connection(stream, uid, user, setup, context, shutdown.clone()).instrument(span),
        );
    }
    while connections.join_next().await.is_some() {}
}

/// A session on the local submission socket: no TLS, no AUTH, no greeting delay; within the
/// total connection limit, and the per-client one counted for its user alone (not with
/// 127.0.0.1's TCP clients); never refused by a connection rate meant for the network.
async fn local_connection<S: MessageSink, P: Policy>(
    mut stream: UnixStream,
    uid: u32,
    user: String,
    listener: Setup,
    context: Arc<Context<S, P>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let _slot = match context.limits.admit_local_user(uid) {
        Ok(slot) => slot,
        Err(refusal) => return refuse_over_limit(&mut stream, refusal, &context.metrics).await,
    };
    let _open = context.metrics.session();
    debug!("connected");
    let mut checks = context.policy.open_session();
    let peer = Peer {
        ip,
        local_submitter: true,
        tls: None,
        id: listener.id,
    };
    let mut session = ServerSession::new(Arc::clone(&listener.session), peer, context.clock.now());
    let rights = context.local_senders.rights(&user);
    session.log_in_locally(user, rights);
    session.greet();
    let result = drive(
        &mut stream,
        &mut session,
        &context,
        &mut checks,
        &mut shutdown,
        &listener,
    )
    .await;
    drop(checks);
    match result {
        Ok(_) => debug!("disconnected"),
        Err(e) => debug!(error = %e, "connection ended with an error"),
    }
}

/// What one connection's session is set up with.
struct Setup {
    session: Arc<SessionConfig>,
    greeting_delay: Duration,
    shutdown_grace: Duration,
    stress_timeout: Duration,
    mode: ListenerMode,
    /// The session's number, as in its span.
    id: u64,
}

impl Setup {
    fn new(settings: &ListenerSettings, mode: ListenerMode, id: u64) -> Setup {
        Setup {
            session: Arc::clone(&settings.session),
            greeting_delay: settings.greeting_delay,
            shutdown_grace: settings.shutdown_grace,
            stress_timeout: settings.stress_timeout,
            mode,
            id,
        }
    }
}

async fn connection<S: MessageSink, P: Policy>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    listener: Setup,
    context: Arc<Context<S, P>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ip = peer.ip();
    let _slot = match context.limits.admit(ip) {
        Ok(slot) => slot,
        Err(refusal) => return refuse_over_limit(&mut tcp, refusal, &context.metrics).await,
    };
    let _ = tcp.set_nodelay(true);
    let local_submitter = context.local_networks.iter().any(|n| n.contains(ip));
    if !context.policy.allow_connection(ip, local_submitter).await {
        let reply = Reply::connection_rate_limited();
        info!(check = reply.check(), %reply, "connection refused: rate limit");
        count_refusal(&context.metrics, &reply);
        refuse(&mut tcp, &reply).await;
        return;
    }
    let _open = context.metrics.session();
    debug!(local_submitter, "connected");
    // What the policy keeps for this session; dropped (its open work ended) with it.
    let mut checks = context.policy.open_session();
    let result = match listener.mode {
        ListenerMode::ImplicitTls => {
            implicit_tls(
                tcp,
                ip,
                local_submitter,
                &listener,
                &context,
                &mut checks,
                &mut shutdown,
            )
            .await
        }
        ListenerMode::Plain => {
            plain(
                tcp,
                ip,
                local_submitter,
                &listener,
                &context,
                &mut checks,
                &mut shutdown,
            )
            .await
        }
    };
    drop(checks);
    match result {
        Ok(()) => debug!("disconnected"),
        Err(e) => debug!(error = %e, "connection ended with an error"),
    }
}

/// Sends a refusal before the greeting; the caller then drops the connection. A client that
/// is already gone needs no reply.
async fn refuse<T: AsyncWrite + Unpin>(stream: &mut T, reply: &Reply) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = stream.write_all(&out).await;
}

/// A connection past the connection limits: logged, counted, and told `421` before the
/// greeting.
async fn refuse_over_limit<T: AsyncWrite + Unpin>(
    stream: &mut T,
    refusal: Refusal,
    metrics: &crate::metrics::SmtpMetrics,
) {
    let reply = match refusal {
        Refusal::Total => Reply::too_many_connections(),
        Refusal::PerIp => Reply::too_many_connections_from_ip(),
    };
    info!(check = reply.check(), %reply, "connection refused");
    count_refusal(metrics, &reply);
    refuse(stream, &reply).await;
}

async fn plain<S: MessageSink, P: Policy>(
    mut tcp: TcpStream,
    ip: std::net::IpAddr,
    local_submitter: bool,
    listener: &Setup,
    context: &Context<S, P>,
    checks: &mut P::Session,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let peer = Peer {
        ip,
        local_submitter,
        tls: None,
        id: listener.id,
    };
    let mut session = ServerSession::new(Arc::clone(&listener.session), peer, context.clock.now());
    greet(
        &mut tcp,
        &mut session,
        listener.greeting_delay,
        &*context.clock,
    )
    .await?;
    match drive(&mut tcp, &mut session, context, checks, shutdown, listener).await? {
        Next::Closed => Ok(()),
        Next::StartTls => {
            let Some(mut stream) = handshake(tcp, listener, context).await? else {
                return Ok(());
            };
            let info = tls::session_info(stream.get_ref().1);
            debug!(version = %info.version, cipher = %info.cipher, "TLS established");
            session.tls_established(info);
            drive(
                &mut stream,
                &mut session,
                context,
                checks,
                shutdown,
                listener,
            )
            .await?;
            Ok(())
        }
    }
}

async fn implicit_tls<S: MessageSink, P: Policy>(
    tcp: TcpStream,
    ip: std::net::IpAddr,
    local_submitter: bool,
    listener: &Setup,
    context: &Context<S, P>,
    checks: &mut P::Session,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let Some(mut stream) = handshake(tcp, listener, context).await? else {
        return Ok(());
    };
    let info = tls::session_info(stream.get_ref().1);
    let peer = Peer {
        ip,
        local_submitter,
        tls: Some(info),
        id: listener.id,
    };
    let mut session = ServerSession::new(Arc::clone(&listener.session), peer, context.clock.now());
    greet(
        &mut stream,
        &mut session,
        listener.greeting_delay,
        &*context.clock,
    )
    .await?;
    drive(
        &mut stream,
        &mut session,
        context,
        checks,
        shutdown,
        listener,
    )
    .await?;
    Ok(())
}

/// The server side of a TLS handshake, bounded by the command timeout. `None` when the client
/// failed it or took too long (logged; the connection is then simply closed).
async fn handshake<S: MessageSink, P: Policy>(
    tcp: TcpStream,
    listener: &Setup,
    context: &Context<S, P>,
) -> io::Result<Option<tokio_rustls::server::TlsStream<TcpStream>>> {
    let Some(acceptor) = &context.tls else {
        return Err(io::Error::other(
            "a TLS listener or STARTTLS without a TLS config",
        ));
    };
    match tokio::time::timeout(listener.session.command_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(Some(stream)),
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake failed");
            Ok(None)
        }
        Err(_) => {
            info!("TLS handshake timed out");
            Ok(None)
        }
    }
}

/// Waits out the greeting delay; input arriving before it ends makes an early talker.
async fn greet<T: AsyncRead + Unpin>(
    stream: &mut T,
    session: &mut ServerSession,
    delay: Duration,
    clock: &dyn Clock,
) -> io::Result<()> {
    if !delay.is_zero() {
        let mut buf = [0u8; 512];
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            read = stream.read(&mut buf) => {
                let n = read?;
                if n > 0 {
                    session.handle_bytes(&buf[..n], clock.now());
                }
            }
        }
    }
    session.greet();
    Ok(())
}

enum Next {
    Closed,
    StartTls,
}

/// Runs a session over a stream until it closes or asks for TLS.
/// Runs the session over `stream`. On shutdown an idle session is told 421 at once; one in a
/// transaction may finish it within `grace`, and is told 421 then.
async fn drive<T, S, P>(
    stream: &mut T,
    session: &mut ServerSession,
    context: &Context<S, P>,
    checks: &mut P::Session,
    shutdown: &mut watch::Receiver<bool>,
    listener: &Setup,
) -> io::Result<Next>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: MessageSink,
    P: Policy,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(1024);
    // After a shutdown, when the transaction under way must be over.
    let mut draining: Option<tokio::time::Instant> = None;
    // The span of the transaction under way, by its number.
    let mut transaction: Option<(u64, tracing::Span)> = None;
    let mut stress = context.limits.stress_changes();
    // The spool file of the message under way, when it is large (removed on drop).
    let mut spool: Option<SpoolFile> = None;
    loop {
        while let Some(output) = session.poll_output() {
            let span = transaction_span(&mut transaction, session);
            let next = async {
                match output {
                    Output::Reply(reply) => {
                        if reply == Reply::shutting_down() {
                            // Our own doing, not the client's: no refusal.
                            info!("closed: shutting down");
                        } else if reply.code() >= 400 {
                            // One line per refusal, with what the client asked for: the
                            // session's span names the session and its peer.
                            let stage = session.stage();
                            let helo = session.helo_name().map(|h| Escaped(h).to_string());
                            let from = session.asked_from().map(|f| Escaped(&f.to_string()).to_string());
                            // At RCPT the recipient asked for; at the end of a message its
                            // first recipient and how many it has (as Postfix names one).
                            let (to, recipients) = match stage {
                                "rcpt" => (session.asked_to().map(|t| Escaped(&t.to_string()).to_string()), None),
                                "data" => match session.data_recipients() {
                                    Some((first, n)) => (Some(Escaped(&first.to_string()).to_string()), Some(n)),
                                    None => (None, None),
                                },
                                _ => (None, None),
                            };
                            info!(
                                stage,
                                check = reply.check(),
                                helo = helo.as_deref().map(tracing::field::display),
                                from = from.as_deref().map(tracing::field::display),
                                to = to.as_deref().map(tracing::field::display),
                                recipients,
                                %reply,
                                "refused"
                            );
                            context.metrics.rejected(stage, reply.check(), code_of(&reply));
                        } else {
                            debug!(%reply, "reply");
                        }
                        reply.write_to(&mut out);
                    }
                    Output::StartTls => {
                        flush(stream, &mut out).await?;
                        return Ok(Some(Next::StartTls));
                    }
                    Output::Authenticate(credentials) => {
                        flush(stream, &mut out).await?;
                        let outcome = authenticate(
                            context,
                            session.client_ip(),
                            session.tls_active(),
                            &credentials,
                        )
                        .await;
                        let outcome_name = match &outcome {
                            AuthOutcome::Success(_) => "success",
                            AuthOutcome::Failure => "failure",
                            AuthOutcome::TemporaryFailure => "temporary failure",
                            AuthOutcome::Throttled => "refused: too many failures",
                        };
                        info!(
                            user = %Escaped(&credentials.username),
                            mechanism = credentials.mechanism.name(),
                            outcome = outcome_name,
                            "authentication"
                        );
                        session.handle_auth(credentials, outcome);
                    }
                    Output::Spool {
                        path,
                        bytes,
                        create,
                    } => {
                        let max = listener.session.max_message_size;
                        SpoolFile::write(&mut spool, path, &bytes, create, max).await
                    }
                    Output::CheckMessage(message)
                    | Output::Enqueue(message)
                    | Output::Quarantine { message, .. }
                        if SpoolFile::broken(&spool, &message.body) =>
                    {
                        warn!(from = %Escaped(&message.envelope.sender.to_string()), "not accepted: the message could not be spooled");
                        session.handle_enqueued(Err(backstop_session::EnqueueFailure::StorageFull));
                    }
                    Output::CheckMessage(message) => {
                        let started = std::time::Instant::now();
                        let verdict = context.policy.check_message(checks, &message).await;
                        context.metrics.checked(started.elapsed());
                        match &verdict {
                            ContentVerdict::Accept | ContentVerdict::AcceptChanged(_) => {}
                            ContentVerdict::Discard(reason) => {
                                context.metrics.discarded();
                                warn!(from = %Escaped(&message.envelope.sender.to_string()), reason, "message discarded")
                            }
                            ContentVerdict::Refuse(reply) => info!(%reply, "message refused"),
                            ContentVerdict::Relayed(reply) => {
                                info!(%reply, "proxied: the next hop's reply to the message")
                            }
                            ContentVerdict::Quarantine(reason) => {
                                info!(kind = %reason.kind, reason = %Escaped(&reason.to_string()), "message goes to quarantine")
                            }
                        }
                        session.handle_message(message, verdict);
                    }
                    Output::Quarantine { message, reason } => {
                        let sender = message.envelope.sender.to_string();
                        let result = context.sink.quarantine(*message, reason).await;
                        match result {
                            Ok(id) => {
                                context.metrics.quarantined();
                                tracing::Span::current()
                                    .record("queue_id", tracing::field::display(id));
                                info!(queue_id = %id, from = %Escaped(&sender.to_string()), "accepted into quarantine")
                            }
                            Err(failure) => {
                                warn!(from = %Escaped(&sender.to_string()), failure = failure.label(), "quarantine write failed")
                            }
                        }
                        session.handle_enqueued(result);
                    }
                    Output::CheckSender(query) => {
                        let sender = query.sender.clone();
                        let verdict = context.policy.check_sender(checks, query).await;
                        match &verdict {
                            SenderVerdict::Accept => {}
                            SenderVerdict::RateLimited => info!(%sender, "message rate limit: 451"),
                            SenderVerdict::Unavailable => {
                                warn!(%sender, "sender check failed: 451")
                            }
                            SenderVerdict::Blocklisted { zone } => {
                                info!(%sender, zone, "client on a blocklist: 554")
                            }
                            SenderVerdict::Refused(reply) => {
                                info!(%sender, %reply, "sender refused")
                            }
                        }
                        session.handle_sender(verdict);
                    }
                    Output::CheckRecipient(query) => {
                        let address = query.recipient.clone();
                        let verdict = context.policy.check_recipient(checks, query).await;
                        match &verdict {
                            RecipientVerdict::Accept(_) => debug!(%address, "recipient known"),
                            RecipientVerdict::Unknown => info!(%address, "recipient unknown: 550"),
                            RecipientVerdict::Unavailable => {
                                warn!(%address, "recipient lookup failed: 451")
                            }
                            RecipientVerdict::Defer { retry_after } => {
                                info!(%address, retry_after, "greylisted: 451")
                            }
                            RecipientVerdict::RateLimited => {
                                info!(%address, "recipient rate limit: 451")
                            }
                            RecipientVerdict::NotOurBounce(problem) => {
                                info!(address = %Escaped(&address.to_string()), problem = problem.label(), "bounce without a valid BATV tag: 550")
                            }
                            RecipientVerdict::Proxied(reply) => {
                                info!(%address, %reply, "proxied: the next hop's reply")
                            }
                            RecipientVerdict::SeparateTransaction => {
                                info!(%address, "proxied and queued recipients do not mix: 451")
                            }
                            RecipientVerdict::NextHopRefused(reply) => {
                                info!(%address, %reply, "the mailbox server refused the recipient")
                            }
                        }
                        session.handle_recipient(verdict);
                    }
                    Output::Enqueue(message) => {
                        let sender = message.envelope.sender.to_string();
                        let recipients = message.envelope.recipients.len();
                        let size = message.body.len();
                        let message_id = backstop_session::headers::message_id(
                            backstop_session::headers::section(message.body.head()),
                        );
                        let result = context.sink.enqueue(*message).await;
                        match result {
                            Ok(id) => {
                                context.metrics.accepted();
                                tracing::Span::current()
                                    .record("queue_id", tracing::field::display(id));
                                let message_id = message_id.as_deref().map(Escaped);
                                info!(queue_id = %id, from = %Escaped(&sender.to_string()), recipients, size, message_id = message_id.map(tracing::field::display), "accepted")
                            }
                            Err(failure) => {
                                warn!(from = %Escaped(&sender.to_string()), failure = failure.label(), "not accepted: queue write failed")
                            }
                        }
                        session.handle_enqueued(result);
                    }
                    Output::Close => {
                        flush(stream, &mut out).await?;
                        let _ = stream.shutdown().await;
                        return Ok(Some(Next::Closed));
                    }
                }
                Ok::<_, io::Error>(None)
            }
            .instrument(span)
            .await?;
            if let Some(next) = next {
                return Ok(next);
            }
        }
        if !session.in_transaction() {
            spool = None;
        }
        flush(stream, &mut out).await?;
        if draining.is_some() && !session.in_transaction() && !session.is_closed() {
            session.shutdown();
            continue;
        }
        let mut read_timeout = session.read_timeout();
        let idle = !session.in_transaction();
        // Near the connection limit, a session between transactions gets a short wait.
        if idle && context.limits.under_stress() {
            read_timeout = read_timeout.min(listener.stress_timeout);
        }
        let mut wait_until = tokio::time::Instant::now() + read_timeout;
        let grace = listener.shutdown_grace;
        let read = loop {
            tokio::select! {
                read = stream.read(&mut buf) => break Some(read),
                _ = tokio::time::sleep_until(wait_until) => break None,
                // Stress began: a session already waiting gets the short wait too. When it
                // ends, waits already shortened stay so: the next one is long again.
                Ok(()) = stress.changed(), if idle => {
                    if *stress.borrow_and_update() {
                        wait_until = wait_until
                            .min(tokio::time::Instant::now() + listener.stress_timeout);
                    }
                }
                _ = shutdown.changed(), if draining.is_none() => {
                    if session.in_transaction() {
                        info!("shutting down: the transaction under way may finish first");
                        draining = Some(tokio::time::Instant::now() + grace);
                    } else {
                        session.shutdown();
                        break None;
                    }
                }
                _ = tokio::time::sleep_until(draining.unwrap_or(wait_until)), if draining.is_some() => {
                    session.shutdown();
                    break None;
                }
            }
        };
        let read = match read {
            Some(read) => Ok(read),
            None if session.is_closed() => continue,
            None => Err(()),
        };
        match read {
            Err(_elapsed) => {
                info!("timeout");
                session.handle_timeout();
            }
            Ok(Ok(0)) => return Ok(Next::Closed),
            Ok(Ok(n)) => session.handle_bytes(&buf[..n], context.clock.now()),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Counts a refusal before the session began (stage `connect`).
fn count_refusal(metrics: &crate::metrics::SmtpMetrics, reply: &Reply) {
    metrics.rejected("connect", reply.check(), code_of(reply));
}

/// A refusal's code for the metrics: its enhanced status, or the reply code when it has none.
fn code_of(reply: &Reply) -> String {
    reply
        .status()
        .map_or_else(|| reply.code().to_string(), |s| s.to_string())
}

/// Checks a login: refused unchecked while the client or the name has too many failures;
/// otherwise the users file first, and a name it does not know, the policy's source (a
/// directory). Each failure is answered after a delay that grows with the count. Password
/// checks hold a permit, so a burst of logins waits instead of using memory without bound.
async fn authenticate<S: MessageSink, P: Policy>(
    context: &Context<S, P>,
    client: std::net::IpAddr,
    secured: bool,
    credentials: &backstop_session::Credentials,
) -> AuthOutcome {
    let limits = &context.auth_limits;
    let user = credentials.username.clone();
    if !limits.allowed(client, &user, context.clock.now()).await {
        context.metrics.auth_throttled();
        return AuthOutcome::Throttled;
    }
    let Ok(permit) = limits.checks().acquire_owned().await else {
        return AuthOutcome::TemporaryFailure;
    };
    // Asked again with the permit: logins that waited for it in parallel see the failures of
    // those checked before them, so a burst of connections gets no more guesses than one.
    if !limits.allowed(client, &user, context.clock.now()).await {
        context.metrics.auth_throttled();
        return AuthOutcome::Throttled;
    }
    let password = credentials.password.clone();
    let users = Arc::clone(&context.users);
    let other = match users.knows(&user) {
        true => None,
        false => {
            context
                .policy
                .authenticate(&user, &password, client, secured)
                .await
        }
    };
    let outcome = match other {
        Some(outcome) => outcome,
        None => {
            let name = user.clone();
            tokio::task::spawn_blocking(move || users.verify(&name, &password))
                .await
                .unwrap_or(AuthOutcome::TemporaryFailure)
        }
    };
    drop(permit);
    if outcome == AuthOutcome::Failure {
        context.metrics.auth_failed();
        let delay = limits.failed(client, &user, context.clock.now()).await;
        tokio::time::sleep(delay).await;
    }
    outcome
}

/// The span of the session's transaction under way (a new one when a new transaction began,
/// with the queue id recorded once the message is stored), or the session's own between
/// transactions.
fn transaction_span(
    current: &mut Option<(u64, tracing::Span)>,
    session: &ServerSession,
) -> tracing::Span {
    let Some(number) = session.transaction_number() else {
        return tracing::Span::current();
    };
    match current {
        Some((n, span)) if *n == number => span.clone(),
        _ => {
            let span = info_span!("txn", n = number, queue_id = tracing::field::Empty);
            *current = Some((number, span.clone()));
            span
        }
    }
}

async fn flush<T: AsyncWrite + Unpin>(stream: &mut T, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        stream.flush().await?;
        out.clear();
    }
    Ok(())
}
