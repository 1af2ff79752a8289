//! The administrator's console: server-rendered pages on the admin HTTP listener (loopback
//! only), beside the JSON API at `POST /v1`.
//!
//! Logging in takes the admin token once; the browser then holds a session cookie
//! (`HttpOnly`, `SameSite=Strict`, 12 hours) and every form carries the session's own CSRF
//! token. The pages use the admin API's typed answers ([`crate::admin`]): queue and
//! quarantine lists a page at a time with search, a message's envelope and per-recipient
//! state, the actions (release, delete, hold, flush), and the backscatter accounting. No
//! script at all; every string from a message or a peer is escaped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backstop_types::quarantine::ReasonKind;
use backstop_types::UnixTime;
use backstop_web::html::{field_table, page, Html, STYLE_CSS};
use backstop_web::http::{percent_encode, Method, Request, Response};

use crate::admin::{self, QuarantineFilter, Served};

/// The cookie that names a console session.
const COOKIE: &str = "backstop_console";
/// How long a session lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// Rows per page.
const PAGE: usize = 50;

/// The console's logged-in sessions: id → (CSRF token, end).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, (String, Instant)>>);

impl Sessions {
    fn open(&self) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        if let Ok(mut all) = self.0.lock() {
            let now = Instant::now();
            all.retain(|_, (_, end)| *end > now);
            all.insert(id.clone(), (csrf.clone(), now + SESSION));
        }
        (id, csrf)
    }

    /// The session's CSRF token, if `id` names a live session.
    fn csrf(&self, id: &str) -> Option<String> {
        let all = self.0.lock().ok()?;
        let (csrf, end) = all.get(id)?;
        (*end > Instant::now()).then(|| csrf.clone())
    }

    fn close(&self, id: &str) {
        if let Ok(mut all) = self.0.lock() {
            all.remove(id);
        }
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 24];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One console request (anything on the admin HTTP listener but `POST /v1`), on the listener
/// bound to `local`.
///
/// Only a browser that asked for this listener by its own address is answered (a page of
/// another site that rebinds its name to 127.0.0.1 names itself in `Host`), and a form is
/// taken only from a page of this origin (`Origin` and `Sec-Fetch-Site`, when the browser
/// sends them) with the session's CSRF token.
pub async fn answer(request: Request, served: Served, token: &str, local: SocketAddr) -> Response {
    if !own_host(request.header("host"), local) {
        return Response::html(
            421,
            page(
                "backstop: wrong address",
                &format!(
                    "<h1>Wrong address</h1><p>Open the console as http://{}/</p>",
                    Html(&local.to_string())
                ),
            ),
        );
    }
    if request.method == Method::Post && !same_origin(&request, local) {
        tracing::warn!("admin console: a form from another origin refused");
        return login_page(403, "That form did not come from this console.");
    }
    if request.path == "/static/style.css" {
        return Response::css(200, STYLE_CSS);
    }
    if request.path == "/login" && request.method == Method::Post {
        let given = request
            .form()
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v)
            .unwrap_or_default();
        if !backstop_types::secret::same_secret(given.as_bytes(), token.as_bytes()) {
            tracing::warn!("admin console: login with a wrong token");
            // Slows guessing: each wrong try costs a second (and a connection slot).
            tokio::time::sleep(Duration::from_secs(1)).await;
            return login_page(401, "That token is not the admin token.");
        }
        let (id, csrf) = served.console.open();
        tracing::info!("admin console: logged in");
        let cookie = format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            SESSION.as_secs()
        );
        return overview(&served, &csrf)
            .await
            .with_header("Set-Cookie", cookie);
    }
    let session = request.cookie(COOKIE).map(str::to_owned);
    let Some(csrf) = session.as_deref().and_then(|id| served.console.csrf(id)) else {
        return login_page(401, "");
    };
    if request.method == Method::Post {
        let form = request.form();
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let given = field("csrf").unwrap_or_default();
        if !backstop_types::secret::same_secret(given.as_bytes(), csrf.as_bytes()) {
            return notice(
                403,
                "Refused",
                "The form did not come from this console.",
                &csrf,
            );
        }
        if request.path == "/logout" {
            if let Some(id) = &session {
                served.console.close(id);
            }
            return login_page(200, "Logged out.").with_header(
                "Set-Cookie",
                format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
            );
        }
        return act(
            &served,
            &request.path,
            field("action"),
            field("recipient"),
            field("sender"),
            &csrf,
        )
        .await;
    }
    if !matches!(request.method, Method::Get | Method::Head) {
        return notice(405, "Not allowed", "Use the page's buttons.", &csrf);
    }
    let query = |name: &str| {
        request
            .query_value(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    match request.path.as_str() {
        "/" => overview(&served, &csrf).await,
        "/queue" => queue_list(&served, query("after"), query("q"), &csrf).await,
        "/quarantine" => {
            let day = |name: &str| match query(name) {
                None => Ok(None),
                Some(text) => admin::when(&text).map(Some),
            };
            let (since, until) = match (day("since"), day("until")) {
                (Ok(since), Ok(until)) => (since, until),
                (Err(why), _) | (_, Err(why)) => return notice(400, "Quarantine", &why, &csrf),
            };
            let filter = QuarantineFilter {
                after: query("after"),
                limit: Some(PAGE),
                sender: query("sender"),
                recipient: query("recipient"),
                kind: query("kind"),
                since,
                until,
            };
            let dates = (query("since"), query("until"));
            quarantine_list(&served, filter, dates, &csrf).await
        }
        "/allow" => allow_list(&served, &csrf).await,
        path => match (
            path.strip_prefix("/queue/"),
            path.strip_prefix("/quarantine/"),
        ) {
            (Some(id), _) => queue_message(&served, id, &csrf).await,
            (_, Some(id)) => quarantined_message(&served, id, &csrf).await,
            _ => notice(404, "Not found", "There is no such page.", &csrf),
        },
    }
}

/// Whether `host` (the `Host` field) names the listener itself: its own address and port,
/// or `localhost` with its port.
fn own_host(host: Option<&str>, local: SocketAddr) -> bool {
    let Some(host) = host else {
        return false;
    };
    if let Ok(address) = host.parse::<SocketAddr>() {
        return address.port() == local.port() && address.ip().is_loopback();
    }
    host.eq_ignore_ascii_case(&format!("localhost:{}", local.port()))
}

/// Whether a POST comes from a page of this console: `Sec-Fetch-Site`, when sent, says the
/// same origin (or none: typed by the user), and `Origin`, when sent, names this listener
/// (`null` is what a browser sends under our `Referrer-Policy: no-referrer`).
fn same_origin(request: &Request, local: SocketAddr) -> bool {
    let origin_ok = request.header("origin").is_none_or(|origin| {
        origin == "null"
            || origin
                .strip_prefix("http://")
                .is_some_and(|host| own_host(Some(host), local))
    });
    let site_ok = request
        .header("sec-fetch-site")
        .is_none_or(|site| matches!(site, "same-origin" | "none"));
    origin_ok && site_ok
}

/// A retention as people say it: `30 days`, `12 hours`, `90 minutes`.
fn span(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s / 60),
    }
}

/// Runs `work` on the queue off the async workers.
async fn blocking<T: Send + 'static>(
    served: &Served,
    work: impl FnOnce(&backstop_queue::Queue) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let queue = served.queue.clone();
    tokio::task::spawn_blocking(move || work(&queue)).await?
}

fn frame(title: &str, csrf: &str, body: &str) -> String {
    let nav = format!(
        "<nav><a href=\"/\">Overview</a> · <a href=\"/queue\">Queue</a> · <a href=\"/quarantine\">Quarantine</a> · <a href=\"/allow\">Allow-list</a>\
         <form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form></nav>\n",
        Html(csrf)
    );
    page(
        &format!("backstop: {title}"),
        &format!("{nav}<h1>{}</h1>\n{body}", Html(title)),
    )
}

fn login_page(status: u16, note: &str) -> Response {
    let note = match note {
        "" => String::new(),
        text => format!("<p class=\"note\">{}</p>", Html(text)),
    };
    Response::html(
        status,
        page(
            "backstop: log in",
            &format!(
                "<h1>backstop console</h1>{note}\n<form method=\"post\" action=\"/login\">\
                 <label>Admin token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\"></label>\
                 <button type=\"submit\" id=\"login\">Log in</button></form>"
            ),
        ),
    )
}

fn notice(status: u16, title: &str, text: &str, csrf: &str) -> Response {
    Response::html(
        status,
        frame(title, csrf, &format!("<p id=\"notice\">{}</p>", Html(text))),
    )
}

/// A form posting `action` (and `recipient`) to `path`, with the session's CSRF token.
fn button(path: &str, action: &str, recipient: Option<&str>, label: &str, csrf: &str) -> String {
    let recipient = recipient.map_or(String::new(), |r| {
        format!(
            "<input type=\"hidden\" name=\"recipient\" value=\"{}\">",
            Html(r)
        )
    });
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"action\" value=\"{}\">{recipient}<button type=\"submit\">{}</button></form>",
        Html(path),
        Html(csrf),
        Html(action),
        Html(label)
    )
}

async fn overview(served: &Served, csrf: &str) -> Response {
    let runtime = &served.quarantine;
    let mut body = String::from("<h2>Backscatter prevented</h2>\n<p>Reports a classic MTA would have sent to a return path it cannot verify.</p>\n<table><tr><th>Reason</th><th>Suppressed</th></tr>\n");
    let counters = &served.metrics.delivery;
    for reason in backstop_dsn::gate::Reason::ALL
        .into_iter()
        .filter(|r| r.prevents_backscatter())
    {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td></tr>",
            Html(reason.label()),
            counters.suppressed(reason)
        );
    }
    body.push_str("</table>\n<h2>Quarantine by kind</h2>\n<table><tr><th>Kind</th><th>Messages</th><th>Octets</th><th>Retention</th></tr>\n");
    let totals = runtime.totals.lock().map(|t| t.clone()).unwrap_or_default();
    for kind in ReasonKind::ALL {
        let t = totals
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| *t)
            .unwrap_or_default();
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/quarantine?kind={kind}\">{kind}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.messages,
            t.octets,
            span(runtime.retention(kind))
        );
    }
    let (released, deleted, digests) = runtime.counters.totals();
    let _ = write!(
        body,
        "</table>\n<p>Since the server started: {released} released, {deleted} deleted by a person, {digests} digests sent. The counts above are as last counted (hourly, and at each metrics scrape).</p>\n"
    );
    let history = runtime
        .history
        .lock()
        .map(|h| h.iter().rev().take(24).cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    if !history.is_empty() {
        body.push_str(
            "<h2>Over time</h2>\n<table><tr><th>At</th><th>Reports suppressed (so far)</th>",
        );
        for kind in ReasonKind::ALL {
            let _ = write!(body, "<th>{kind} held</th>");
        }
        body.push_str("</tr>\n");
        for snapshot in history {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td>",
                Html(&snapshot.at.to_rfc5322()),
                snapshot.suppressed
            );
            for kind in ReasonKind::ALL {
                let n = snapshot
                    .held
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(0, |(_, t)| t.messages);
                let _ = write!(body, "<td>{n}</td>");
            }
            body.push_str("</tr>\n");
        }
        body.push_str("</table>\n");
    }
    Response::html(200, frame("Overview", csrf, &body))
}

async fn queue_list(
    served: &Served,
    after: Option<String>,
    q: Option<String>,
    csrf: &str,
) -> Response {
    let search = q.clone().map(|s| s.to_ascii_lowercase());
    let page = blocking(served, move |queue| {
        admin::queue_page(queue, after.as_deref(), Some(PAGE), |entry| {
            search.as_deref().is_none_or(|s| {
                entry
                    .envelope
                    .sender
                    .to_string()
                    .to_ascii_lowercase()
                    .contains(s)
                    || entry
                        .envelope
                        .recipients
                        .iter()
                        .any(|r| r.address.to_string().to_ascii_lowercase().contains(s))
            })
        })
    })
    .await;
    let page = match page {
        Ok(page) => page,
        Err(e) => return notice(400, "Queue", &format!("{e:#}"), csrf),
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/queue\"><label>Sender or recipient <input name=\"q\" id=\"q\" value=\"{}\"></label> <button type=\"submit\">Search</button></form>\n\
         <table><tr><th>ID</th><th>Arrival</th><th>Size</th><th>State</th><th>Sender</th><th>Recipients</th><th>Last reply</th></tr>\n",
        Html(q.as_deref().unwrap_or_default())
    );
    for m in &page.messages {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/queue/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Html(&UnixTime(m.arrival).to_rfc5322()),
            m.size,
            if m.held { "held" } else { "queued" },
            Html(&m.sender),
            Html(&m.recipients.join(", ")),
            Html(m.last_reply.as_deref().unwrap_or_default()),
            id = Html(&m.id),
        );
    }
    body.push_str("</table>\n");
    if page.messages.is_empty() {
        body.push_str("<p>No message.</p>\n");
    }
    if let Some(next) = &page.next {
        let _ = writeln!(
            body,
            "<p><a href=\"/queue?after={}&amp;q={}\" id=\"next\">Next page</a></p>",
            percent_encode(next),
            percent_encode(q.as_deref().unwrap_or_default())
        );
    }
    Response::html(200, frame("Queue", csrf, &body))
}

async fn quarantine_list(
    served: &Served,
    filter: QuarantineFilter,
    (since, until): (Option<String>, Option<String>),
    csrf: &str,
) -> Response {
    let asked = filter.clone();
    let page = blocking(served, move |queue| admin::quarantine_page(queue, &asked)).await;
    let page = match page {
        Ok(page) => page,
        Err(e) => return notice(400, "Quarantine", &format!("{e:#}"), csrf),
    };
    let value = |v: &Option<String>| Html(v.as_deref().unwrap_or_default()).to_string();
    let mut kinds = String::from("<option value=\"\">any</option>");
    for kind in ReasonKind::ALL {
        let selected = if filter.kind.as_deref() == Some(kind.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(kinds, "<option value=\"{kind}\"{selected}>{kind}</option>");
    }
    let mut body = format!(
        "<form method=\"get\" action=\"/quarantine\">\
         <label>Sender <input name=\"sender\" id=\"sender\" value=\"{}\"></label> \
         <label>Recipient <input name=\"recipient\" id=\"recipient\" value=\"{}\"></label> \
         <label>Kind <select name=\"kind\">{kinds}</select></label> \
         <label>Since <input type=\"date\" name=\"since\" value=\"{}\"></label> \
         <label>Before <input type=\"date\" name=\"until\" value=\"{}\"></label> \
         <button type=\"submit\" id=\"search\">Search</button></form>\n\
         <table><tr><th>ID</th><th>Held since</th><th>Kind</th><th>Size</th><th>Sender</th><th>Held for</th><th>Reason</th></tr>\n",
        value(&filter.sender),
        value(&filter.recipient),
        value(&since),
        value(&until),
    );
    for q in &page.items {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/quarantine/{id}\" class=\"message\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Html(&UnixTime(q.quarantined).to_rfc5322()),
            Html(&q.kind),
            q.size,
            Html(&q.sender),
            Html(&q.recipients.join(", ")),
            Html(&q.reason),
            id = Html(&q.id),
        );
    }
    body.push_str("</table>\n");
    if page.items.is_empty() {
        body.push_str("<p>Nothing held matches.</p>\n");
    }
    if let Some(next) = &page.next {
        let _ = writeln!(
            body,
            "<p><a href=\"/quarantine?after={}&amp;sender={}&amp;recipient={}&amp;kind={}&amp;since={}&amp;until={}\" id=\"next\">Next page</a></p>",
            percent_encode(next),
            percent_encode(filter.sender.as_deref().unwrap_or_default()),
            percent_encode(filter.recipient.as_deref().unwrap_or_default()),
            percent_encode(filter.kind.as_deref().unwrap_or_default()),
            percent_encode(since.as_deref().unwrap_or_default()),
            percent_encode(until.as_deref().unwrap_or_default()),
        );
    }
    Response::html(200, frame("Quarantine", csrf, &body))
}

async fn queue_message(served: &Served, id: &str, csrf: &str) -> Response {
    let asked = id.to_owned();
    let found = blocking(served, move |queue| {
        let id = admin::parse_id(&asked)?;
        Ok(queue
            .message(id)?
            .map(|m| admin::detail(id, &m.entry, &m.body)))
    })
    .await;
    let d = match found {
        Ok(Some(d)) => d,
        Ok(None) => {
            return notice(
                404,
                "Not in the queue",
                &format!("{id} is not in the queue."),
                csrf,
            )
        }
        Err(e) => return notice(400, "Queue", &format!("{e:#}"), csrf),
    };
    let s = &d.summary;
    let mut body = field_table([
        ("ID", s.id.clone()),
        ("Arrival", UnixTime(s.arrival).to_rfc5322()),
        ("Size", s.size.to_string()),
        (
            "State",
            if s.held {
                "held".into()
            } else {
                "queued".into()
            },
        ),
        ("Sender", s.sender.clone()),
        (
            "Client",
            format!("{} ({}) on {}", d.client_ip, d.helo, d.listener),
        ),
        ("TLS", d.tls.clone().unwrap_or_else(|| "none".into())),
        ("Trust", d.trust.clone()),
    ]);
    body.push_str("<h2>Recipients</h2>\n<table><tr><th>Recipient</th><th>State</th><th>Attempts</th><th>Next attempt</th><th>Last reply</th></tr>\n");
    for r in &d.recipient_states {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Html(&r.address),
            Html(&r.state),
            r.attempts,
            Html(
                &r.next_attempt
                    .map(|t| UnixTime(t).to_rfc5322())
                    .unwrap_or_default()
            ),
            Html(&format!(
                "{}{}",
                r.remote_host
                    .as_deref()
                    .map(|h| format!("{h}: "))
                    .unwrap_or_default(),
                r.last_reply.as_deref().unwrap_or_default()
            )),
        );
    }
    body.push_str("</table>\n<p>");
    let path = format!("/queue/{}", s.id);
    for (action, label) in [
        ("flush", "Deliver now"),
        (
            if s.held { "release" } else { "hold" },
            if s.held { "Release the hold" } else { "Hold" },
        ),
        ("quarantine", "Move to quarantine"),
        ("delete", "Delete"),
    ] {
        body.push_str(&button(&path, action, None, label, csrf));
    }
    let _ = write!(
        body,
        "</p>\n<h2>Header</h2>\n<pre>{}</pre>\n",
        Html(&d.headers)
    );
    Response::html(200, frame(&format!("Message {}", s.id), csrf, &body))
}

async fn quarantined_message(served: &Served, id: &str, csrf: &str) -> Response {
    let asked = id.to_owned();
    let found = blocking(served, move |queue| {
        let id = admin::parse_id(&asked)?;
        Ok(queue.quarantine_show(id)?.map(|(record, body)| {
            (
                admin::quarantine_summary(id, &record),
                admin::headers(body.head()),
                record,
            )
        }))
    })
    .await;
    let (s, headers, record) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            return notice(
                404,
                "Not in quarantine",
                &format!("{id} is not in quarantine."),
                csrf,
            )
        }
        Err(e) => return notice(400, "Quarantine", &format!("{e:#}"), csrf),
    };
    let mut body = field_table([
        ("ID", s.id.clone()),
        ("Held since", UnixTime(s.quarantined).to_rfc5322()),
        ("Kind", s.kind.clone()),
        ("Decided by", format!("{} {}", s.scanner, s.check)),
        ("Reason", s.detail.clone()),
        ("Size", s.size.to_string()),
        ("Sender", s.sender.clone()),
        (
            "Client",
            format!(
                "{} ({})",
                record.envelope.client.ip, record.envelope.client.helo
            ),
        ),
    ]);
    body.push_str("<h2>Recipients</h2>\n<table><tr><th>Recipient</th><th>Owner</th><th>State</th><th>In a digest</th><th></th></tr>\n");
    let path = format!("/quarantine/{}", s.id);
    for h in &s.held {
        let release = if h.state == "held" {
            button(
                &path,
                "release",
                Some(&h.address),
                &format!("Release to {}", h.address),
                csrf,
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{release}</td></tr>",
            Html(&h.address),
            Html(&h.owner),
            Html(&h.state),
            if h.notified { "yes" } else { "no" },
        );
    }
    body.push_str("</table>\n<p>");
    body.push_str(&button(
        &path,
        "release",
        None,
        "Release to every recipient held",
        csrf,
    ));
    body.push_str(&button(&path, "delete", None, "Delete", csrf));
    let _ = write!(
        body,
        "</p>\n<h2>Header</h2>\n<pre>{}</pre>\n",
        Html(&headers)
    );
    Response::html(200, frame(&format!("Held message {}", s.id), csrf, &body))
}

async fn allow_list(served: &Served, csrf: &str) -> Response {
    let listed = blocking(served, |queue| Ok(queue.allow_list()?)).await;
    let listed = match listed {
        Ok(listed) => listed,
        Err(e) => return notice(503, "Allow-list", &format!("{e:#}"), csrf),
    };
    let mut body = String::from(
        "<p>A sender (an address or @domain) a recipient takes mail from where a content check would hold it; never a virus, SPF, reverse-DNS or DMARC verdict.</p>\n\
         <table><tr><th>Recipient</th><th>Sender</th><th></th></tr>\n",
    );
    for (recipient, sender) in &listed {
        let remove = format!(
            "<form method=\"post\" action=\"/allow\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"action\" value=\"disallow\"><input type=\"hidden\" name=\"recipient\" value=\"{}\">\
             <input type=\"hidden\" name=\"sender\" value=\"{}\"><button type=\"submit\">Remove</button></form>",
            Html(csrf),
            Html(recipient),
            Html(sender)
        );
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{remove}</td></tr>",
            Html(recipient),
            Html(sender)
        );
    }
    let _ = write!(
        body,
        "</table>\n<h2>Add</h2>\n<form method=\"post\" action=\"/allow\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"action\" value=\"allow\">\
         <label>Recipient <input name=\"recipient\" id=\"allow-recipient\"></label> \
         <label>Sender <input name=\"sender\" id=\"allow-sender\"></label> \
         <button type=\"submit\" id=\"allow\">Allow</button></form>\n",
        Html(csrf)
    );
    Response::html(200, frame("Allow-list", csrf, &body))
}

/// A button's POST: the admin API's request for it, answered as the API answers it.
async fn act(
    served: &Served,
    path: &str,
    action: Option<String>,
    recipient: Option<String>,
    sender: Option<String>,
    csrf: &str,
) -> Response {
    use admin::Request;
    let (place, id) = match (
        path.strip_prefix("/queue/"),
        path.strip_prefix("/quarantine/"),
    ) {
        (Some(id), _) => ("queue", id.to_owned()),
        (_, Some(id)) => ("quarantine", id.to_owned()),
        _ if path == "/allow" => ("allow", String::new()),
        _ => return notice(404, "Not found", "There is no such action.", csrf),
    };
    let pair = || {
        (
            recipient.clone().unwrap_or_default(),
            sender.clone().unwrap_or_default(),
        )
    };
    let request = match (place, action.as_deref()) {
        ("allow", Some("allow")) => {
            let (recipient, sender) = pair();
            Request::QuarantineAllow { recipient, sender }
        }
        ("allow", Some("disallow")) => {
            let (recipient, sender) = pair();
            Request::QuarantineDisallow { recipient, sender }
        }
        ("queue", Some("flush")) => Request::QueueFlush {
            id: Some(id.clone()),
        },
        ("queue", Some("hold")) => Request::QueueHold { id: id.clone() },
        ("queue", Some("release")) => Request::QueueRelease { id: id.clone() },
        ("queue", Some("delete")) => Request::QueueDelete { id: id.clone() },
        ("queue", Some("quarantine")) => Request::QuarantineHold {
            id: id.clone(),
            reason: None,
        },
        ("quarantine", Some("release")) => Request::QuarantineRelease {
            id: id.clone(),
            recipient: recipient.filter(|r| !r.is_empty()),
        },
        ("quarantine", Some("delete")) => Request::QuarantineDelete { id: id.clone() },
        _ => return notice(400, "Unknown action", "There is no such action.", csrf),
    };
    tracing::info!(request = %request.describe(), "admin console action");
    let counters_served = served.clone();
    let answered = blocking(served, move |queue| {
        admin::answer(queue, Some(&counters_served.quarantine.counters), request)
    })
    .await;
    match answered {
        Ok(data) => {
            let what = match data.get("queue_id").and_then(|v| v.as_str()) {
                Some(queue_id) => format!(
                    "Done: released into the queue as {queue_id} for {}.",
                    data.get("recipients")
                        .and_then(|v| v.as_array())
                        .map(|a| a
                            .iter()
                            .filter_map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ),
                None if id.is_empty() => format!("Done: {}.", action.unwrap_or_default()),
                None => format!("Done: {} {id}.", action.unwrap_or_default()),
            };
            notice(200, "Done", &what, csrf)
        }
        Err(e) => notice(409, "Not done", &format!("{e:#}"), csrf),
    }
}
