//! The admin API: the running server answers on a Unix socket (mode 0600), one JSON request
//! line in, one JSON response line out; or, when configured, on loopback HTTP (`POST /v1`, the
//! same JSON as body, `Authorization: Bearer <token>`). `backstop queue ...` and
//! `backstop quarantine ...` are its clients, printing a table or, with `--json`, the data.
//!
//! The wire types here are the API's own; the queue's types never derive serde.

use backstop_types::Clock as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use backstop_queue::{Entry, QuarantineRecord, Queue};
use backstop_types::{Envelope, QueueId, RecipientState, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};

use crate::load::Admin as AdminEndpoint;
use tokio::sync::watch;
use tracing::{info, warn};

/// A request, as the CLI sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// A page of the queue, oldest first: up to `limit` (default 100) after `after`.
    QueueList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    QueueShow {
        id: String,
        /// Send the message too, up to this many octets (base64, in `message`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<u64>,
    },
    QueueFlush {
        id: Option<String>,
    },
    QueueHold {
        id: String,
    },
    QueueRelease {
        id: String,
    },
    QueueDelete {
        id: String,
    },
    /// A page of the quarantine, oldest first, as [`QuarantineFilter`] selects.
    QuarantineList(QuarantineFilter),
    QuarantineShow {
        id: String,
        /// As for `QueueShow`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<u64>,
    },
    /// Back into the queue for every recipient still held, or for `recipient` alone.
    QuarantineRelease {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recipient: Option<String>,
    },
    QuarantineDelete {
        id: String,
    },
    /// An administrator's hold: a queued message's pending recipients into quarantine.
    QuarantineHold {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Let `sender` (an address or `@domain`) through to `recipient` where a content check
    /// would hold its mail (never a virus, SPF, reverse-DNS or DMARC verdict).
    QuarantineAllow {
        recipient: String,
        sender: String,
    },
    QuarantineDisallow {
        recipient: String,
        sender: String,
    },
    QuarantineAllowList,
    /// Send the digests that are due now, whatever the schedule.
    QuarantineDigest,
    /// The counters, in Prometheus' text format.
    Metrics,
    /// How a recipient would be handled (`backstop address test`).
    AddressTest(crate::address_test::Question),
}

impl Request {
    /// The request as a log line shows it: the command and what it names, escaped.
    pub(crate) fn describe(&self) -> String {
        use backstop_types::text::Escaped;
        let (command, what) = match self {
            Request::QueueList { .. } => ("queue-list", None),
            Request::QueueShow { id, .. } => ("queue-show", Some(id.as_str())),
            Request::QueueFlush { id } => ("queue-flush", id.as_deref()),
            Request::QueueHold { id } => ("queue-hold", Some(id.as_str())),
            Request::QueueRelease { id } => ("queue-release", Some(id.as_str())),
            Request::QueueDelete { id } => ("queue-delete", Some(id.as_str())),
            Request::QuarantineList(_) => ("quarantine-list", None),
            Request::QuarantineShow { id, .. } => ("quarantine-show", Some(id.as_str())),
            Request::QuarantineRelease { id, .. } => ("quarantine-release", Some(id.as_str())),
            Request::QuarantineDelete { id } => ("quarantine-delete", Some(id.as_str())),
            Request::QuarantineHold { id, .. } => ("quarantine-hold", Some(id.as_str())),
            Request::QuarantineAllow { recipient, .. } => {
                ("quarantine-allow", Some(recipient.as_str()))
            }
            Request::QuarantineDisallow { recipient, .. } => {
                ("quarantine-disallow", Some(recipient.as_str()))
            }
            Request::QuarantineAllowList => ("quarantine-allow-list", None),
            Request::QuarantineDigest => ("quarantine-digest", None),
            Request::Metrics => ("metrics", None),
            Request::AddressTest(q) => ("address-test", Some(q.address.as_str())),
        };
        match what {
            Some(what) => format!("{command} {}", Escaped(what)),
            None => command.to_owned(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MessageSummary {
    pub id: String,
    pub arrival: u64,
    pub size: u64,
    pub sender: String,
    pub recipients: Vec<String>,
    pub held: bool,
    /// Recipients still pending.
    pub pending: usize,
    /// Why the message is still here: the last reply to a pending recipient (`host: reply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// The recipients still pending.
    #[serde(default)]
    pub pending_recipients: Vec<String>,
}

/// The version of `queue list --json`'s form; it changes only when a field changes meaning or
/// goes away.
const LIST_FORMAT: u32 = 1;

/// `queue list`'s answer: a page.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct QueueListing {
    pub format: u32,
    pub messages: Vec<MessageSummary>,
    /// The cursor of the next page (`after`); absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What a quarantine listing selects: text filters match anywhere in the sender or a held
/// recipient (any letter case); `since`/`until` are Unix times.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QuarantineFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// `content`, `dmarc`, `undeliverable` or `hold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// `quarantine list`'s answer: a page.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct QuarantinePage {
    pub format: u32,
    pub items: Vec<QuarantineSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The most a page holds.
const MAX_PAGE: usize = 1000;
/// A page's size when the request names none.
const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MessageDetail {
    #[serde(flatten)]
    pub summary: MessageSummary,
    pub client_ip: String,
    pub helo: String,
    pub listener: String,
    pub tls: Option<String>,
    pub authenticated: Option<String>,
    pub trust: String,
    pub recipient_states: Vec<RecipientDetail>,
    pub headers: String,
    /// The message's first octets as asked (`body`), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RecipientDetail {
    pub address: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt: Option<u64>,
    pub remote_host: Option<String>,
    pub last_reply: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct QuarantineSummary {
    pub id: String,
    pub quarantined: u64,
    /// `content`, `dmarc`, `undeliverable` or `hold`.
    pub kind: String,
    /// The reason as one line (`check: detail`).
    pub reason: String,
    /// What decided (`rule`, `clamd`, `dmarc`, `delivery`, `admin`, ...) and which check.
    pub scanner: String,
    pub check: String,
    pub detail: String,
    pub size: u64,
    pub sender: String,
    /// The recipients still held.
    pub recipients: Vec<String>,
    /// Every recipient with its owner and state.
    pub held: Vec<HeldDetail>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HeldDetail {
    pub address: String,
    /// `recipient` or `admin`.
    pub owner: String,
    /// `held`, `released` or `deleted`.
    pub state: String,
    /// When it was released or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    /// A digest has listed it to its owner.
    pub notified: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct QuarantineDetail {
    #[serde(flatten)]
    pub summary: QuarantineSummary,
    pub client_ip: String,
    pub helo: String,
    pub headers: String,
    /// As for `MessageDetail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Count {
    count: usize,
}

// --- Server -------------------------------------------------------------------------------

/// Serves the admin API until `shutdown` turns true.
/// The admin API's socket, bound: the server binds it before it announces its listeners, so
/// that the API is there as soon as the server says it is up.
pub struct Bound {
    unix: (UnixListener, PathBuf),
    /// The loopback HTTP listener and its token: the JSON API and the console.
    http: Option<(TcpListener, String)>,
}

/// Binds the admin endpoint (a stale Unix socket of a killed run is removed first).
pub async fn bind(endpoint: AdminEndpoint) -> anyhow::Result<Bound> {
    let (path, http) = match endpoint {
        AdminEndpoint::Unix(path) => (path, None),
        AdminEndpoint::Http {
            address,
            token,
            socket,
        } => (socket, Some((address, token))),
    };
    // A socket left by a previous run that was killed is stale: nobody listens on it.
    if path.exists() && UnixStream::connect(&path).await.is_err() {
        std::fs::remove_file(&path)
            .with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        bind_private(&path).with_context(|| format!("admin socket {}", path.display()))?;
    crate::serve::announce!("backstop: admin socket {}", path.display());
    let http = match http {
        None => None,
        Some((address, token)) => {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("admin API on {address}"))?;
            crate::serve::announce!("backstop: admin API on http://{}", listener.local_addr()?);
            Some((listener, token))
        }
    };
    Ok(Bound {
        unix: (listener, path),
        http,
    })
}

/// Binds a Unix socket that only its owner can ever connect to: it is made under a fresh
/// directory of mode 0700, given mode 0600 there, and only then renamed into place, so there
/// is no moment in which `path` exists with the umask's mode.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = path.parent().unwrap_or(Path::new("."));
    let staging = parent.join(format!(".admin-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let made = (|| {
        let temporary = staging.join("admin.sock");
        let listener = UnixListener::bind(&temporary)?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&temporary, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    made
}

/// What the admin API answers from: the queue, the metrics, and the current rules.
#[derive(Clone)]
pub struct Served {
    pub queue: Queue,
    /// The console's logged-in sessions.
    pub console: std::sync::Arc<crate::console::Sessions>,
    /// Release-link keys, digest settings and the quarantine's counters.
    pub quarantine: std::sync::Arc<crate::quarantine::Runtime>,
    pub metrics: std::sync::Arc<crate::metrics::Sources>,
    /// The sessions' rules and the delivery settings as they are now, for `address test`.
    pub(crate) smtp: watch::Receiver<crate::address_test::SmtpContext>,
    pub(crate) delivery: watch::Receiver<backstop_delivery::agent::Agent>,
}

/// Answers one request: `address test` on the runtime (it may ask LDAP and DNS), the queue's
/// requests off it (they block on RocksDB).
async fn dispatch(served: Served, request: Request) -> anyhow::Result<Response> {
    if let Request::AddressTest(question) = &request {
        let smtp = served.smtp.borrow().clone();
        let agent = served.delivery.borrow().clone();
        let answered = crate::address_test::answer(&smtp, &agent, question)
            .await
            .and_then(|a| Ok(serde_json::to_value(a)?));
        return Ok(respond(answered));
    }
    if let Request::QuarantineDigest = &request {
        let dkim = std::sync::Arc::clone(&served.delivery.borrow().signing.dkim);
        let now = backstop_types::SystemClock.now();
        let sent =
            crate::quarantine::digest::send_due(&served.queue, &served.quarantine, &dkim, now)
                .await
                .and_then(|count| Ok(serde_json::to_value(Count { count })?));
        return Ok(respond(sent));
    }
    Ok(tokio::task::spawn_blocking(move || handle(&served, request)).await?)
}

pub async fn serve(
    bound: Bound,
    queue: Served,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Bound {
        unix: (listener, path),
        http,
    } = bound;
    let unix = serve_unix(listener, path, queue.clone(), shutdown.clone());
    match http {
        None => unix.await,
        Some((listener, token)) => {
            let (a, b) = tokio::join!(unix, serve_http(listener, token, queue, shutdown));
            a.and(b)
        }
    }
}

async fn serve_http(
    listener: TcpListener,
    token: String,
    queue: Served,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let token = std::sync::Arc::new(token);
    let local = listener.local_addr()?;
    // At most this many clients at once; the rest wait in the listen queue.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return Ok(());
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: not a busy loop.
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let (queue, token) = (queue.clone(), std::sync::Arc::clone(&token));
        tokio::spawn(async move {
            let _slot = slot;
            let limits = backstop_web::http::Limits {
                max_body: MAX_BODY,
                ..Default::default()
            };
            let exchange = backstop_web::http::serve_one(
                stream,
                &limits,
                std::time::Duration::from_secs(30),
                |request| http_answer(request, token, queue, local),
            );
            if let Err(e) = exchange.await {
                warn!(error = %e, "admin HTTP request failed");
            }
        });
    }
}

/// The most a JSON request may carry.
const MAX_BODY: usize = 1 << 20;

/// One HTTP request: the JSON API at `POST /v1` (bearer token), the console elsewhere.
async fn http_answer(
    request: backstop_web::http::Request,
    token: std::sync::Arc<String>,
    queue: Served,
    local: std::net::SocketAddr,
) -> backstop_web::http::Response {
    use backstop_web::http::Method;
    if request.path != "/v1" {
        return crate::console::answer(request, queue, &token, local).await;
    }
    let authorized = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(given.trim(), &token));
    let (status, body) = if request.method != Method::Post {
        (404, error_json("use POST /v1"))
    } else if !authorized {
        warn!("admin HTTP request without the right token");
        (401, error_json("a valid bearer token is required"))
    } else {
        let response = match serde_json::from_slice::<Request>(&request.body) {
            Ok(request) => {
                info!(request = %request.describe(), "admin request");
                match dispatch(queue, request).await {
                    Ok(response) => response,
                    Err(e) => Response {
                        ok: false,
                        error: Some(format!("{e:#}")),
                        data: serde_json::Value::Null,
                    },
                }
            }
            Err(e) => Response {
                ok: false,
                error: Some(format!("bad request: {e}")),
                data: serde_json::Value::Null,
            },
        };
        (200, serde_json::to_vec(&response).unwrap_or_default())
    };
    backstop_web::http::Response::json(status, body)
}

fn error_json(message: &str) -> Vec<u8> {
    let response = Response {
        ok: false,
        error: Some(message.to_owned()),
        data: serde_json::Value::Null,
    };
    serde_json::to_vec(&response).unwrap_or_default()
}

fn same_secret(given: &str, token: &str) -> bool {
    backstop_types::secret::same_secret(given.as_bytes(), token.as_bytes())
}

async fn serve_unix(
    listener: UnixListener,
    path: PathBuf,
    queue: Served,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let queue = queue.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, queue).await {
                warn!(error = %e, "admin connection failed");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn connection(stream: UnixStream, queue: Served) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            info!(request = %request.describe(), "admin request");
            dispatch(queue, request).await?
        }
        Err(e) => Response {
            ok: false,
            error: Some(format!("bad request: {e}")),
            data: serde_json::Value::Null,
        },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

fn handle(served: &Served, request: Request) -> Response {
    let answered = match request {
        Request::Metrics => Ok(serde_json::Value::String(
            served.metrics.render(backstop_types::SystemClock.now()),
        )),
        request => answer(&served.queue, Some(&served.quarantine.counters), request),
    };
    respond(answered)
}

fn respond(answered: anyhow::Result<serde_json::Value>) -> Response {
    match answered {
        Ok(data) => Response {
            ok: true,
            error: None,
            data,
        },
        Err(e) => Response {
            ok: false,
            error: Some(format!("{e:#}")),
            data: serde_json::Value::Null,
        },
    }
}

/// The answer to a request the queue alone can answer; `counters` count releases and
/// deletions (`None` when the queue is read from disk by the CLI).
pub(crate) fn answer(
    queue: &Queue,
    counters: Option<&crate::quarantine::Counters>,
    request: Request,
) -> anyhow::Result<serde_json::Value> {
    let now = backstop_types::SystemClock.now();
    let value = match request {
        Request::QueueList { after, limit } => {
            serde_json::to_value(queue_page(queue, after.as_deref(), limit, |_| true)?)?
        }
        Request::QueueShow { id, body } => {
            let id = parse_id(&id)?;
            let Some(m) = queue.message(id)? else {
                bail!("{id}: not in the queue");
            };
            let mut detail = detail(id, &m.entry, &m.body);
            detail.message = body.map(|limit| first_octets(&m.body, limit)).transpose()?;
            serde_json::to_value(detail)?
        }
        Request::QueueFlush { id } => {
            let id = id.as_deref().map(parse_id).transpose()?;
            let count = queue.flush(id, now)?;
            if let (Some(id), 0) = (id, count) {
                bail!("{id}: not in the queue, or held");
            }
            serde_json::to_value(Count { count })?
        }
        Request::QueueHold { id } => done(queue.hold(parse_id(&id)?)?, &id, "in the queue")?,
        Request::QueueRelease { id } => {
            done(queue.release(parse_id(&id)?, now)?, &id, "in the queue")?
        }
        Request::QueueDelete { id } => done(queue.delete(parse_id(&id)?)?, &id, "in the queue")?,
        Request::QuarantineList(filter) => serde_json::to_value(quarantine_page(queue, &filter)?)?,
        Request::QuarantineShow { id, body: limit } => {
            let id = parse_id(&id)?;
            let Some((record, body)) = queue.quarantine_show(id)? else {
                bail!("{id}: not in quarantine");
            };
            serde_json::to_value(QuarantineDetail {
                summary: quarantine_summary(id, &record),
                client_ip: record.envelope.client.ip.to_string(),
                helo: record.envelope.client.helo.clone(),
                headers: headers(body.head()),
                message: limit.map(|limit| first_octets(&body, limit)).transpose()?,
            })?
        }
        Request::QuarantineRelease { id, recipient } => {
            let Some(released) =
                queue.quarantine_release(parse_id(&id)?, recipient.as_deref(), now)?
            else {
                bail!("{id}: not in quarantine");
            };
            if released.recipients.is_empty() {
                bail!(
                    "{id}: {} is not held",
                    recipient.as_deref().unwrap_or("no recipient")
                );
            }
            if let Some(c) = counters {
                c.released(released.recipients.len());
            }
            info!(queue_id = %id, released_as = %released.queue_id, recipients = %backstop_types::text::Escaped(&released.recipients.join(",")), "quarantine: released by the administrator");
            serde_json::json!({
                "count": released.recipients.len(),
                "queue_id": released.queue_id.to_string(),
                "recipients": released.recipients,
            })
        }
        Request::QuarantineDelete { id } => {
            let deleted = queue.quarantine_delete(parse_id(&id)?)?;
            if let (true, Some(c)) = (deleted, counters) {
                c.deleted(1);
            }
            done(deleted, &id, "in quarantine")?
        }
        Request::QuarantineHold { id, reason } => {
            let reason = backstop_types::quarantine::Reason::hold(
                reason.unwrap_or_else(|| "held by the administrator".to_owned()),
            );
            match queue.quarantine(parse_id(&id)?, &reason, now)? {
                backstop_queue::Hold::Held => serde_json::to_value(Count { count: 1 })?,
                backstop_queue::Hold::NotQueued => bail!("{id}: not in the queue"),
                backstop_queue::Hold::BeingDelivered => {
                    bail!("{id}: a delivery attempt has it now; try again when the attempt is over")
                }
            }
        }
        Request::QuarantineAllow { recipient, sender } => {
            let (recipient, sender) = allow_pair(&recipient, &sender)?;
            queue.allow_sender(&recipient, &sender)?;
            serde_json::to_value(Count { count: 1 })?
        }
        Request::QuarantineDisallow { recipient, sender } => {
            let (recipient, sender) = allow_pair(&recipient, &sender)?;
            let removed = queue.disallow_sender(&recipient, &sender)?;
            done(
                removed,
                &format!("{sender} for {recipient}"),
                "allow-listed",
            )?
        }
        Request::QuarantineAllowList => {
            let list: Vec<serde_json::Value> = queue
                .allow_list()?
                .into_iter()
                .map(|(recipient, sender)| serde_json::json!({"recipient": recipient, "sender": sender}))
                .collect();
            serde_json::Value::Array(list)
        }
        Request::Metrics => bail!("metrics are answered by handle"),
        Request::QuarantineDigest => bail!("digests are sent by the running server"),
        Request::AddressTest(_) => bail!("address tests are answered by the running server"),
    };
    Ok(value)
}

/// A recipient address and a sender (address or `@domain`), checked and lower-cased.
fn allow_pair(recipient: &str, sender: &str) -> anyhow::Result<(String, String)> {
    let recipient = backstop_types::Address::parse(recipient)
        .with_context(|| format!("recipient {recipient:?}"))?
        .to_string()
        .to_ascii_lowercase();
    let sender = match sender.strip_prefix('@') {
        Some(domain) => format!(
            "@{}",
            backstop_types::Domain::parse(domain).with_context(|| format!("sender {sender:?}"))?
        ),
        None => backstop_types::Address::parse(sender)
            .with_context(|| format!("sender {sender:?}"))?
            .to_string(),
    };
    Ok((recipient, sender.to_ascii_lowercase()))
}

/// A page of the queue: records only, never a body.
pub(crate) fn queue_page(
    queue: &Queue,
    after: Option<&str>,
    limit: Option<usize>,
    admits: impl Fn(&Entry) -> bool,
) -> anyhow::Result<QueueListing> {
    let after = after.map(parse_id).transpose()?;
    let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let page = queue.list_page(after, limit, admits)?;
    Ok(QueueListing {
        format: LIST_FORMAT,
        messages: page
            .items
            .iter()
            .map(|(id, entry)| summary(*id, entry, entry.size))
            .collect(),
        next: page.next.map(|id| id.to_string()),
    })
}

/// A page of the quarantine as `filter` selects.
pub(crate) fn quarantine_page(
    queue: &Queue,
    filter: &QuarantineFilter,
) -> anyhow::Result<QuarantinePage> {
    let kind = filter
        .kind
        .as_deref()
        .map(|k| {
            backstop_types::quarantine::ReasonKind::parse(k).with_context(|| {
                format!("{k:?}: the kinds are content, dmarc, undeliverable and hold")
            })
        })
        .transpose()?;
    let query = backstop_queue::QuarantineQuery {
        sender: filter.sender.clone().filter(|s| !s.is_empty()),
        recipient: filter.recipient.clone().filter(|s| !s.is_empty()),
        kind,
        since: filter.since.map(UnixTime),
        until: filter.until.map(UnixTime),
    };
    let after = filter.after.as_deref().map(parse_id).transpose()?;
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let page = queue.quarantine_page(&query, after, limit)?;
    Ok(QuarantinePage {
        format: LIST_FORMAT,
        items: page
            .items
            .iter()
            .map(|(id, r)| quarantine_summary(*id, r))
            .collect(),
        next: page.next.map(|id| id.to_string()),
    })
}

fn done(found: bool, id: &str, place: &str) -> anyhow::Result<serde_json::Value> {
    if !found {
        bail!("{id}: not {place}");
    }
    Ok(serde_json::to_value(Count { count: 1 })?)
}

pub(crate) fn parse_id(id: &str) -> anyhow::Result<QueueId> {
    id.parse::<QueueId>().map_err(anyhow::Error::from)
}

fn summary(id: QueueId, entry: &Entry, size: u64) -> MessageSummary {
    MessageSummary {
        id: id.to_string(),
        arrival: entry.envelope.arrival.0,
        size,
        sender: entry.envelope.sender.to_string(),
        recipients: recipients(&entry.envelope),
        held: entry.held,
        pending: entry.states.iter().filter(|s| s.is_pending()).count(),
        pending_recipients: entry
            .envelope
            .recipients
            .iter()
            .zip(&entry.states)
            .filter(|(_, s)| s.is_pending())
            .map(|(r, _)| r.address.to_string())
            .collect(),
        last_reply: entry.states.iter().rev().find_map(|s| match s {
            RecipientState::Pending {
                last: Some(attempt),
                ..
            } => Some(attempt_text(attempt)),
            _ => None,
        }),
    }
}

/// `host: code status text`, or without the host when none answered.
fn attempt_text(attempt: &backstop_types::Attempt) -> String {
    match &attempt.remote_host {
        Some(host) => format!("{host}: {}", attempt.reply),
        None => attempt.reply.to_string(),
    }
}

pub(crate) fn detail(id: QueueId, entry: &Entry, body: &backstop_types::Body) -> MessageDetail {
    let e = &entry.envelope;
    let recipient_states = e
        .recipients
        .iter()
        .zip(&entry.states)
        .map(|(r, state)| {
            let (name, attempts, next, last) = match state {
                RecipientState::Pending {
                    attempts,
                    next_attempt,
                    last,
                } => ("pending", *attempts, Some(next_attempt.0), last.as_ref()),
                RecipientState::Delivered { last, .. } => ("delivered", 0, None, Some(last)),
                RecipientState::Failed { last, .. } => ("failed", 0, None, Some(last)),
            };
            RecipientDetail {
                address: r.address.to_string(),
                state: name.to_owned(),
                attempts,
                next_attempt: next,
                remote_host: last.and_then(|a| a.remote_host.clone()),
                last_reply: last.map(|a| a.reply.to_string()),
            }
        })
        .collect();
    MessageDetail {
        summary: summary(id, entry, body.len()),
        client_ip: e.client.ip.to_string(),
        helo: e.client.helo.clone(),
        listener: e.client.listener.clone(),
        tls: e
            .client
            .tls
            .as_ref()
            .map(|t| format!("{} {}", t.version, t.cipher)),
        authenticated: e.client.auth.as_ref().map(|a| a.user.clone()),
        trust: match &e.trust {
            backstop_types::TrustClass::Authenticated { user } => format!("authenticated ({user})"),
            backstop_types::TrustClass::LocalNetwork => "local network".to_owned(),
            backstop_types::TrustClass::Unverified => "unverified".to_owned(),
        },
        recipient_states,
        headers: headers(body.head()),
        message: None,
    }
}

/// The first `limit` octets of `body`, base64.
fn first_octets(body: &backstop_types::Body, limit: u64) -> anyhow::Result<String> {
    use base64::Engine as _;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let start = body
        .read_prefix(limit)
        .map_err(|e| anyhow::anyhow!("reading the spooled message: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(start))
}

pub(crate) fn quarantine_summary(id: QueueId, r: &QuarantineRecord) -> QuarantineSummary {
    use backstop_queue::HeldState;
    QuarantineSummary {
        id: id.to_string(),
        quarantined: r.at.0,
        kind: r.reason.kind.to_string(),
        reason: r.reason.to_string(),
        scanner: r.reason.scanner.clone(),
        check: r.reason.check.clone(),
        detail: r.reason.detail.clone(),
        size: r.size,
        sender: r.envelope.sender.to_string(),
        recipients: r
            .still_held()
            .map(|(_, rcpt, _)| rcpt.address.to_string())
            .collect(),
        held: r
            .envelope
            .recipients
            .iter()
            .zip(&r.held)
            .map(|(rcpt, h)| {
                let (state, at) = match h.state {
                    HeldState::Held => ("held", None),
                    HeldState::Released(t) => ("released", Some(t.0)),
                    HeldState::Deleted(t) => ("deleted", Some(t.0)),
                };
                HeldDetail {
                    address: rcpt.address.to_string(),
                    owner: h.owner.as_str().to_owned(),
                    state: state.to_owned(),
                    at,
                    notified: h.notified,
                }
            })
            .collect(),
    }
}

fn recipients(e: &Envelope) -> Vec<String> {
    e.recipients.iter().map(|r| r.address.to_string()).collect()
}

/// The header section of a message (up to the first empty line), as text.
pub(crate) fn headers(body: &[u8]) -> String {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |p| p + 2);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

// --- Client -------------------------------------------------------------------------------

/// How `show` prints the message itself, besides its envelope and header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The envelope and the header only.
    Header,
    /// The message as text, control characters escaped (see `for_terminal`).
    Text,
    /// The message's octets exactly as stored, and nothing else.
    Raw,
}

/// Sends one request to the server and prints the answer, as a table or as JSON. When the
/// server cannot be reached, a request that only reads (list, show) is answered from the
/// queue on disk under `data_dir`, opened read-only, as mailq and postcat work while Postfix
/// is down.
pub fn run(
    endpoint: &AdminEndpoint,
    data_dir: &Path,
    request: Request,
    json: bool,
    view: View,
) -> anyhow::Result<()> {
    let data = ask_or_read(endpoint, data_dir, &request)?;
    if view == View::Raw {
        use std::io::Write as _;
        let message = data
            .get("message")
            .and_then(|m| m.as_str())
            .context("the server sent no message")?;
        let bytes = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(message)?
        };
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    print!("{}", render(&request, data)?);
    Ok(())
}

/// The age buckets of `queue summary`, in minutes, as qshape's: up to 5, 10, 20, ... 1280,
/// and older.
const AGE_BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// `backstop queue summary`: the messages waiting, by recipient domain and age (qshape's
/// table). A message counts once for each domain it still has a recipient in.
pub fn queue_summary(endpoint: &AdminEndpoint, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let messages = every_queued(|r| ask_or_read(endpoint, data_dir, r))?;
    let now = backstop_types::SystemClock.now().0;
    let rows = shape(&messages, now);
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|(domain, counts)| serde_json::json!({ "domain": domain, "total": counts.iter().sum::<usize>(), "by_age": counts }))
            .collect();
        let out = serde_json::json!({
            "format": LIST_FORMAT,
            "age_buckets_minutes": AGE_BUCKETS,
            "domains": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print!("{}", render_shape(&rows));
    Ok(())
}

/// `list --all`: every page, printed as one list (one JSON page without a cursor).
pub fn run_all(
    endpoint: &AdminEndpoint,
    data_dir: &Path,
    place: Place,
    filter: QuarantineFilter,
    json: bool,
) -> anyhow::Result<()> {
    let ask = |r: &Request| ask_or_read(endpoint, data_dir, r);
    let (request, data) = match place {
        Place::Queue => (
            Request::QueueList {
                after: None,
                limit: None,
            },
            serde_json::to_value(QueueListing {
                format: LIST_FORMAT,
                messages: every_queued(ask)?,
                next: None,
            })?,
        ),
        Place::Quarantine => {
            let all = every_quarantined(ask, &filter)?;
            (
                Request::QuarantineList(filter),
                serde_json::to_value(QuarantinePage {
                    format: LIST_FORMAT,
                    items: all,
                    next: None,
                })?,
            )
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        print!("{}", render(&request, data)?);
    }
    Ok(())
}

/// A `--since`/`--until` value (the CLI's, the console's date fields) as a Unix time: a date (`2026-12-01`, midnight UTC) or an age
/// before now (`24h`, `7d`).
pub fn when(text: &str) -> Result<u64, String> {
    let now = backstop_types::Clock::now(&backstop_types::SystemClock).0;
    if let Ok(age) = backstop_config::parse_duration(text) {
        return Ok(now.saturating_sub(age.as_secs()));
    }
    let parts: Vec<&str> = text.split('-').collect();
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("{text:?} is neither a date (2026-12-01) nor an age (24h)"))
    };
    match parts.as_slice() {
        [y, m, d] => {
            let (y, m, d) = (number(y)?, number(m)?, number(d)?);
            if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
                return Err(format!("{text:?} is not a date"));
            }
            // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let mp = (m + 9) % 12;
            let doy = (153 * mp + 2) / 5 + d - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            let days = era * 146_097 + doe - 719_468;
            u64::try_from(days * 86_400).map_err(|_| format!("{text:?} is before 1970"))
        }
        _ => Err(format!(
            "{text:?} is neither a date (2026-12-01) nor an age (24h)"
        )),
    }
}

/// Every message in the queue, a page at a time.
fn every_queued(
    ask: impl Fn(&Request) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<Vec<MessageSummary>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let request = Request::QueueList {
            after: after.take(),
            limit: Some(MAX_PAGE),
        };
        let page: QueueListing = serde_json::from_value(ask(&request)?)?;
        all.extend(page.messages);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

/// Everything in quarantine `filter` selects, a page at a time.
fn every_quarantined(
    ask: impl Fn(&Request) -> anyhow::Result<serde_json::Value>,
    filter: &QuarantineFilter,
) -> anyhow::Result<Vec<QuarantineSummary>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let request = Request::QuarantineList(QuarantineFilter {
            after: after.take(),
            limit: Some(MAX_PAGE),
            ..filter.clone()
        });
        let page: QuarantinePage = serde_json::from_value(ask(&request)?)?;
        all.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

/// Messages per (domain, age bucket); the domains by their total, largest first, then by name.
fn shape(messages: &[MessageSummary], now: u64) -> Vec<(String, Vec<usize>)> {
    let mut rows: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for m in messages {
        let minutes = now.saturating_sub(m.arrival) / 60;
        let bucket = AGE_BUCKETS
            .iter()
            .position(|limit| minutes < *limit)
            .unwrap_or(AGE_BUCKETS.len());
        let mut domains: Vec<String> = m
            .pending_recipients
            .iter()
            .filter_map(|r| r.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
            .collect();
        domains.sort();
        domains.dedup();
        for domain in domains {
            rows.entry(domain)
                .or_insert_with(|| vec![0; AGE_BUCKETS.len() + 1])[bucket] += 1;
        }
    }
    let mut rows: Vec<(String, Vec<usize>)> = rows.into_iter().collect();
    rows.sort_by(|a, b| {
        let total = |r: &(String, Vec<usize>)| r.1.iter().sum::<usize>();
        total(b).cmp(&total(a)).then_with(|| a.0.cmp(&b.0))
    });
    rows
}

fn render_shape(rows: &[(String, Vec<usize>)]) -> String {
    let width = rows
        .iter()
        .map(|(d, _)| d.chars().count())
        .max()
        .unwrap_or(0)
        .max("TOTAL".len());
    let mut out = format!("{:>width$} {:>6}", "", "T");
    for limit in AGE_BUCKETS {
        out.push_str(&format!(" {limit:>5}"));
    }
    out.push_str(&format!(
        " {:>5}\n",
        format!("{}+", AGE_BUCKETS[AGE_BUCKETS.len() - 1])
    ));
    let mut totals = vec![0; AGE_BUCKETS.len() + 1];
    for (_, counts) in rows {
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
    }
    let line = |name: &str, counts: &[usize]| {
        let mut line = format!("{name:>width$} {:>6}", counts.iter().sum::<usize>());
        for c in counts {
            line.push_str(&format!(" {c:>5}"));
        }
        line.push('\n');
        line
    };
    out.push_str(&line("TOTAL", &totals));
    for (domain, counts) in rows {
        out.push_str(&line(domain, counts));
    }
    out.push_str("(messages waiting, by recipient domain and minutes in the queue)\n");
    out
}

/// The server's answer to `request`; when nobody listens at the endpoint and the request only
/// reads, the answer from the queue on disk under `data_dir`, opened read-only.
fn ask_or_read(
    endpoint: &AdminEndpoint,
    data_dir: &Path,
    request: &Request,
) -> anyhow::Result<serde_json::Value> {
    match ask(endpoint, request) {
        Err(e) if unreachable(&e) && reads_only(request) => {
            let dir = data_dir.join("queue");
            let queue = Queue::open_read_only(&dir)
                .with_context(|| format!("{e:#}; reading the queue on disk instead"))?;
            eprintln!(
                "backstop: the server is not running: read from {} (read-only)",
                dir.display()
            );
            answer(&queue, None, request.clone())
        }
        answered => answered,
    }
}

/// Whether `request` only reads.
fn reads_only(request: &Request) -> bool {
    matches!(
        request,
        Request::QueueList { .. }
            | Request::QueueShow { .. }
            | Request::QuarantineList(_)
            | Request::QuarantineShow { .. }
            | Request::QuarantineAllowList
    )
}

/// Whether `e` is that nobody listens at the admin endpoint (the server is not running).
fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            )
        })
    })
}

/// The message of a `show` answer as text for a terminal, with a note when it was cut.
fn shown_message(message: Option<&str>, size: u64) -> anyhow::Result<String> {
    use base64::Engine as _;
    let Some(message) = message else {
        return Ok(String::new());
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(message)?;
    let mut out = format!("\n--- message ({size} octets) ---\n");
    out.push_str(&backstop_types::text::for_terminal(&bytes));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if (bytes.len() as u64) < size {
        out.push_str(&format!(
            "--- {} more octets not shown (--limit SIZE to see more) ---\n",
            size - bytes.len() as u64
        ));
    }
    Ok(out)
}

/// Asks the server; the answer's data, or the error it gave.
fn ask(endpoint: &AdminEndpoint, request: &Request) -> anyhow::Result<serde_json::Value> {
    let answer = match endpoint {
        AdminEndpoint::Unix(socket) => ask_unix(socket, request)?,
        AdminEndpoint::Http { address, token, .. } => ask_http(*address, token, request)?,
    };
    let response: Response = serde_json::from_str(&answer).context("the server's answer")?;
    if !response.ok {
        bail!("{}", response.error.unwrap_or_else(|| "failed".into()));
    }
    Ok(response.data)
}

/// What narrows a selection of messages (`--to-domain`, `--from`, `--older-than`,
/// `--reason`); a filter not given lets everything through.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// A recipient in this domain (any letter case).
    pub to_domain: Option<String>,
    /// This sender (an address, `<>` for the null sender, or `@domain` for a whole domain).
    pub from: Option<String>,
    /// Arrived (or quarantined) longer ago than this.
    pub older_than: Option<std::time::Duration>,
    /// The quarantine reason contains this (any letter case).
    pub reason: Option<String>,
    /// Leave held messages out of `ALL` and of a filter's selection (flush: held ones stay
    /// held).
    pub not_held: bool,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.to_domain.is_none()
            && self.from.is_none()
            && self.older_than.is_none()
            && self.reason.is_none()
    }

    fn admits(&self, sender: &str, recipients: &[String], at: u64, reason: &str, now: u64) -> bool {
        let domain_of = |address: &str| {
            address
                .rsplit_once('@')
                .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
        };
        let to_domain = self.to_domain.as_ref().is_none_or(|want| {
            let want = want.trim_start_matches('@').to_ascii_lowercase();
            recipients
                .iter()
                .any(|r| domain_of(r).as_deref() == Some(&want))
        });
        let from = self.from.as_ref().is_none_or(|want| {
            let bare = sender.trim_start_matches('<').trim_end_matches('>');
            match want.strip_prefix('@') {
                Some(domain) => domain_of(bare).is_some_and(|d| d.eq_ignore_ascii_case(domain)),
                None => {
                    bare.eq_ignore_ascii_case(want.trim_start_matches('<').trim_end_matches('>'))
                }
            }
        });
        let older = self
            .older_than
            .is_none_or(|age| now.saturating_sub(at) > age.as_secs());
        let reason_ok = self.reason.as_ref().is_none_or(|want| {
            reason
                .to_ascii_lowercase()
                .contains(&want.to_ascii_lowercase())
        });
        to_domain && from && older && reason_ok
    }
}

/// Where a selection is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Queue,
    Quarantine,
}

/// The ids that `ids` (queue ids, `ALL`) and `filter` select in `place`. Explicit ids are
/// kept as given, in order, when there is no filter (the server says which it does not
/// know); otherwise the server's list is read and filtered.
pub fn select(
    endpoint: &AdminEndpoint,
    place: Place,
    ids: &[String],
    filter: &Filter,
) -> anyhow::Result<Vec<String>> {
    let all = ids.iter().any(|id| id.eq_ignore_ascii_case("ALL"));
    if !all && filter.is_empty() {
        return Ok(ids.to_vec());
    }
    let now = backstop_types::SystemClock.now().0;
    let listed: Vec<(String, bool)> = match place {
        Place::Queue => every_queued(|r| ask(endpoint, r))?
            .into_iter()
            .map(|m| {
                let admitted = filter.admits(&m.sender, &m.recipients, m.arrival, "", now)
                    && !(filter.not_held && m.held);
                (m.id, admitted)
            })
            .collect(),
        Place::Quarantine => every_quarantined(|r| ask(endpoint, r), &QuarantineFilter::default())?
            .into_iter()
            .map(|q| {
                let admitted = filter.admits(
                    &q.sender,
                    &q.recipients,
                    q.quarantined,
                    &format!("{} {}", q.kind, q.reason),
                    now,
                );
                (q.id, admitted)
            })
            .collect(),
    };
    // An id named that is not there at all is asked for anyway, so that the server says so.
    let unknown: Vec<String> = ids
        .iter()
        .filter(|given| !given.eq_ignore_ascii_case("ALL"))
        .filter(|given| !listed.iter().any(|(id, _)| id.eq_ignore_ascii_case(given)))
        .cloned()
        .collect();
    Ok(listed
        .into_iter()
        .filter(|(id, admitted)| {
            *admitted && (all || ids.iter().any(|given| given.eq_ignore_ascii_case(id)))
        })
        .map(|(id, _)| id)
        .chain(unknown)
        .collect())
}

/// Sends `request(id)` for each of `ids`, printing each answer (or each error, on standard
/// error) as it comes; every id is tried. The number that failed.
pub fn run_each(
    endpoint: &AdminEndpoint,
    ids: &[String],
    request: impl Fn(String) -> Request,
    json: bool,
) -> usize {
    let mut failed = 0;
    let mut results = Vec::new();
    for id in ids {
        let request = request(id.clone());
        match ask(endpoint, &request) {
            Ok(data) if !json => match render(&request, data) {
                Ok(text) => print!("{text}"),
                Err(e) => {
                    failed += 1;
                    eprintln!("backstop: {e:#}");
                }
            },
            Ok(_) => results.push(serde_json::json!({ "id": id, "ok": true })),
            Err(e) => {
                failed += 1;
                match json {
                    true => results.push(
                        serde_json::json!({ "id": id, "ok": false, "error": format!("{e:#}") }),
                    ),
                    false => eprintln!("backstop: {e:#}"),
                }
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Array(results)).unwrap_or_default()
        );
    }
    failed
}

fn ask_unix(socket: &Path, request: &Request) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the server's admin socket {} (is backstop serve running with this config?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer)
}

fn ask_http(
    address: std::net::SocketAddr,
    token: &str,
    request: &Request,
) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).with_context(|| {
        format!("cannot reach the server's admin API on {address} (is backstop serve running with this config?)")
    })?;
    let body = serde_json::to_vec(request)?;
    let head = format!(
        "POST /v1 HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        bail!("the admin API sent no HTTP response");
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        let reason = serde_json::from_str::<Response>(body)
            .ok()
            .and_then(|r| r.error)
            .unwrap_or_default();
        bail!("admin API: {status}: {reason}");
    }
    Ok(body.to_owned())
}

/// The human form of an answer.
fn render(request: &Request, data: serde_json::Value) -> anyhow::Result<String> {
    let mut out = String::new();
    match request {
        Request::QueueList { .. } => {
            let listing = serde_json::from_value::<QueueListing>(data)?;
            let list = listing.messages;
            if list.is_empty() {
                return Ok("Mail queue is empty\n".into());
            }
            out.push_str(&format!(
                "{:<16}  {:>9}  {:<31}  {:<8}  {}\n",
                "ID", "SIZE", "ARRIVAL", "STATE", "SENDER -> RECIPIENTS"
            ));
            for m in &list {
                let state = if m.held { "held" } else { "queued" };
                out.push_str(&format!(
                    "{:<16}  {:>9}  {:<31}  {:<8}  {} -> {}\n",
                    m.id,
                    m.size,
                    UnixTime(m.arrival).to_rfc5322(),
                    state,
                    m.sender,
                    m.recipients.join(", ")
                ));
                // Why it is still here, on a line of its own as mailq shows it.
                if let Some(reply) = &m.last_reply {
                    let reply = backstop_types::text::Escaped(reply).to_string();
                    let reply = match reply.char_indices().nth(100) {
                        Some((at, _)) => format!("{}…", &reply[..at]),
                        None => reply,
                    };
                    out.push_str(&format!("{:<18}({reply})\n", ""));
                }
            }
            out.push_str(&format!("-- {} message(s)\n", list.len()));
            if let Some(next) = listing.next {
                out.push_str(&format!("-- more: --after {next}\n"));
            }
        }
        Request::QueueShow { .. } => {
            let d: MessageDetail = serde_json::from_value(data)?;
            let s = &d.summary;
            out.push_str(&format!("id:            {}\n", s.id));
            out.push_str(&format!(
                "arrival:       {}\n",
                UnixTime(s.arrival).to_rfc5322()
            ));
            out.push_str(&format!("size:          {}\n", s.size));
            out.push_str(&format!(
                "held:          {}\n",
                if s.held { "yes" } else { "no" }
            ));
            out.push_str(&format!("sender:        {}\n", s.sender));
            out.push_str(&format!(
                "client:        {} ({}) on {}\n",
                d.client_ip, d.helo, d.listener
            ));
            out.push_str(&format!(
                "tls:           {}\n",
                d.tls.as_deref().unwrap_or("none")
            ));
            out.push_str(&format!("trust:         {}\n", d.trust));
            for r in &d.recipient_states {
                out.push_str(&format!("recipient:     {}  {}", r.address, r.state));
                if r.state == "pending" {
                    out.push_str(&format!(", {} attempt(s)", r.attempts));
                    if let Some(next) = r.next_attempt {
                        out.push_str(&format!(", next {}", UnixTime(next).to_rfc5322()));
                    }
                }
                out.push('\n');
                if let Some(reply) = &r.last_reply {
                    let host = r.remote_host.as_deref().unwrap_or("-");
                    // The remote server's words: escaped for the terminal.
                    out.push_str(&format!(
                        "  last reply:  {}: {}\n",
                        backstop_types::text::Escaped(host),
                        backstop_types::text::Escaped(reply)
                    ));
                }
            }
            out.push('\n');
            out.push_str(&backstop_types::text::for_terminal(d.headers.as_bytes()));
            out.push_str(&shown_message(d.message.as_deref(), s.size)?);
        }
        Request::QuarantineList(_) => {
            let page: QuarantinePage = serde_json::from_value(data)?;
            let list = page.items;
            if list.is_empty() {
                return Ok("Quarantine is empty\n".into());
            }
            out.push_str(&format!(
                "{:<16}  {:<31}  {:<13}  {:>9}  {}\n",
                "ID", "QUARANTINED", "KIND", "SIZE", "SENDER -> RECIPIENTS HELD"
            ));
            for q in &list {
                out.push_str(&format!(
                    "{:<16}  {:<31}  {:<13}  {:>9}  {} -> {}\n",
                    q.id,
                    UnixTime(q.quarantined).to_rfc5322(),
                    q.kind,
                    q.size,
                    q.sender,
                    q.recipients.join(", ")
                ));
                // The reason on a line of its own, cut so the table stays; `show` has it all.
                let reason = backstop_types::text::Escaped(&q.reason).to_string();
                let reason = match reason.char_indices().nth(100) {
                    Some((at, _)) => format!("{}…", &reason[..at]),
                    None => reason,
                };
                out.push_str(&format!("{:<18}({reason})\n", ""));
            }
            out.push_str(&format!("-- {} message(s)\n", list.len()));
            if let Some(next) = page.next {
                out.push_str(&format!("-- more: --after {next}\n"));
            }
        }
        Request::QuarantineShow { .. } => {
            let d: QuarantineDetail = serde_json::from_value(data)?;
            let s = &d.summary;
            out.push_str(&format!("id:            {}\n", s.id));
            out.push_str(&format!(
                "quarantined:   {}\n",
                UnixTime(s.quarantined).to_rfc5322()
            ));
            out.push_str(&format!("kind:          {}\n", s.kind));
            out.push_str(&format!(
                "reason:        {}\n",
                backstop_types::text::Escaped(&s.reason)
            ));
            out.push_str(&format!("size:          {}\n", s.size));
            out.push_str(&format!("sender:        {}\n", s.sender));
            for h in &s.held {
                out.push_str(&format!(
                    "recipient:     {} ({}, owner {}{})\n",
                    h.address,
                    h.state,
                    h.owner,
                    if h.notified { ", in a digest" } else { "" }
                ));
            }
            out.push_str(&format!("client:        {} ({})\n", d.client_ip, d.helo));
            out.push('\n');
            out.push_str(&backstop_types::text::for_terminal(d.headers.as_bytes()));
            out.push_str(&shown_message(d.message.as_deref(), s.size)?);
        }
        Request::QueueFlush { .. } => {
            let c: Count = serde_json::from_value(data)?;
            out.push_str(&format!("flushed {} message(s)\n", c.count));
        }
        Request::QueueHold { id } => out.push_str(&format!("{id}: held\n")),
        Request::QueueRelease { id } => out.push_str(&format!("{id}: released\n")),
        Request::QueueDelete { id } => out.push_str(&format!("{id}: deleted\n")),
        Request::QuarantineRelease { id, .. } => {
            let queue_id = data.get("queue_id").and_then(|v| v.as_str()).unwrap_or(id);
            let to: Vec<&str> = data
                .get("recipients")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
                .unwrap_or_default();
            out.push_str(&format!(
                "{id}: released from quarantine into the queue as {queue_id} for {}\n",
                to.join(", ")
            ))
        }
        Request::QuarantineDelete { id } => out.push_str(&format!("{id}: deleted\n")),
        Request::QuarantineHold { id, .. } => {
            out.push_str(&format!("{id}: moved from the queue into quarantine\n"))
        }
        Request::QuarantineAllow { recipient, sender } => {
            out.push_str(&format!("{recipient} now takes mail from {sender}\n"))
        }
        Request::QuarantineDisallow { recipient, sender } => out.push_str(&format!(
            "{sender} is no longer allow-listed for {recipient}\n"
        )),
        Request::QuarantineAllowList => {
            let list = data.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                out.push_str("The allow-list is empty\n");
            }
            for entry in list {
                let field = |k: &str| {
                    entry
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                out.push_str(&format!("{} <- {}\n", field("recipient"), field("sender")));
            }
        }
        Request::QuarantineDigest => {
            let c: Count = serde_json::from_value(data)?;
            out.push_str(&format!("{} digest(s) queued\n", c.count));
        }
        Request::Metrics => out.push_str(data.as_str().unwrap_or_default()),
        Request::AddressTest(_) => {
            out.push_str(&crate::address_test::render(&serde_json::from_value(data)?))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_shape_counts_messages_by_domain_and_age() {
        let now = 1_800_000_000;
        let message = |minutes: u64, to: &[&str]| MessageSummary {
            id: "0".into(),
            arrival: now - minutes * 60,
            size: 1,
            sender: "<>".into(),
            recipients: to.iter().map(|s| s.to_string()).collect(),
            held: false,
            pending: to.len(),
            last_reply: None,
            pending_recipients: to.iter().map(|s| s.to_string()).collect(),
        };
        let rows = shape(
            &[
                message(1, &["a@slow.example", "b@SLOW.example"]),
                message(7, &["a@slow.example", "c@other.example"]),
                message(5000, &["a@slow.example"]),
            ],
            now,
        );
        assert_eq!(
            rows,
            [
                (
                    "slow.example".to_owned(),
                    vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 1]
                ),
                (
                    "other.example".to_owned(),
                    vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
                ),
            ]
        );
        let table = render_shape(&rows);
        assert!(
            table.starts_with("                   T     5    10"),
            "{table}"
        );
        assert!(
            table.contains("\n        TOTAL      4     1     2     0"),
            "{table}"
        );
        assert!(
            table.contains("\n slow.example      3     1     1"),
            "{table}"
        );
    }

    #[test]
    fn filters_select_by_domain_sender_age_and_reason() {
        let now = 1_800_000_000;
        let rcpts = ["a@Example.test".to_owned(), "b@other.test".to_owned()];
        let admits = |f: &Filter, sender: &str, at: u64, reason: &str| {
            f.admits(sender, &rcpts, at, reason, now)
        };
        let every = Filter::default();
        assert!(admits(&every, "<>", now, ""));
        let domain = Filter {
            to_domain: Some("example.TEST".into()),
            ..Filter::default()
        };
        assert!(admits(&domain, "<x@y.test>", now, ""));
        let elsewhere = Filter {
            to_domain: Some("@nowhere.test".into()),
            ..Filter::default()
        };
        assert!(!admits(&elsewhere, "<x@y.test>", now, ""));
        let from = Filter {
            from: Some("X@y.test".into()),
            ..Filter::default()
        };
        assert!(admits(&from, "<x@y.test>", now, ""));
        assert!(!admits(&from, "<z@y.test>", now, ""));
        let from_domain = Filter {
            from: Some("@Y.test".into()),
            ..Filter::default()
        };
        assert!(admits(&from_domain, "<z@y.test>", now, ""));
        assert!(!admits(&from_domain, "<>", now, ""));
        let null = Filter {
            from: Some("<>".into()),
            ..Filter::default()
        };
        assert!(admits(&null, "<>", now, ""));
        assert!(!admits(&null, "<z@y.test>", now, ""));
        let old = Filter {
            older_than: Some(std::time::Duration::from_secs(3600)),
            ..Filter::default()
        };
        assert!(admits(&old, "<>", now - 3601, ""));
        assert!(!admits(&old, "<>", now - 60, ""));
        let reason = Filter {
            reason: Some("VIRUS".into()),
            ..Filter::default()
        };
        assert!(admits(
            &reason,
            "<>",
            now,
            "clamd: virus Eicar-Test-Signature"
        ));
        assert!(!admits(&reason, "<>", now, "delivery failed"));
    }

    #[tokio::test]
    async fn the_socket_is_its_owners_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // The test's umask (022) would leave a plain bind readable by everyone.
        let path = dir.path().join("admin.sock");
        let _listener = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing is left behind next to it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["admin.sock"]);
    }
}
