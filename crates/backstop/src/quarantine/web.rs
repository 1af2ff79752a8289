//! The release pages (`[quarantine] web`): where a digest's links lead.
//!
//! `GET /release/TOKEN` shows what the message is and a button per action the token allows,
//! and changes nothing (a link scanner that follows every link releases nothing). `POST` to
//! the same address, with `action=release|delete|allow`, acts. The token is the only
//! credential: it is checked again on the POST (signature, expiry, and that its recipient's
//! copy is still held and still its own). No page redirects, none takes a destination, every
//! response carries `Cache-Control: no-store`, `Referrer-Policy: no-referrer` and a strict
//! Content-Security-Policy (no scripts at all). Meant to sit behind the site's reverse proxy.

use std::sync::Arc;
use std::time::Duration;

use backstop_queue::{QuarantineRecord, Queue};
use backstop_types::text::Escaped;
use backstop_types::{Clock as _, QueueId, UnixTime};
use backstop_web::html::{field_table, page, Html, STYLE_CSS};
use backstop_web::http::{serve_one, Limits, Method, Request, Response};
use backstop_web::token::{Actions, Claims};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Runtime;

/// Clients served at once.
const CONNECTIONS: usize = 128;

/// How long a client has to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);

/// Serves the release pages until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    queue: Queue,
    runtime: Arc<Runtime>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = Limits {
        max_body: 4096,
        ..Limits::default()
    };
    // At most this many clients at once: the rest wait in the listen queue, and the file
    // descriptors the SMTP listeners need stay theirs.
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "quarantine web: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (queue, runtime) = (queue.clone(), Arc::clone(&runtime));
        tokio::spawn(async move {
            let handled = serve_one(stream, &limits, REQUEST_DEADLINE, |request| {
                answer(request, queue, runtime)
            });
            if let Err(e) = handled.await {
                info!(error = %e, "quarantine web: connection ended");
            }
            drop(slot);
        });
    }
}

/// One request's response.
pub async fn answer(request: Request, queue: Queue, runtime: Arc<Runtime>) -> Response {
    if request.path == "/static/style.css" {
        return Response::css(200, STYLE_CSS);
    }
    let Some(token) = request.path.strip_prefix("/release/") else {
        return message_page(404, "Not found", "There is nothing here.");
    };
    let now = backstop_types::SystemClock.now();
    let claims = match runtime.keys.verify(token, now.0) {
        Ok(claims) => claims,
        Err(e) => {
            warn!(error = %e, "quarantine web: release link refused");
            return message_page(
                403,
                "This link is not valid",
                "The link is not valid: it may have expired, or been changed. Ask your mail administrator if you still need the message.",
            );
        }
    };
    let id = QueueId(claims.queue_id);
    let lookup = {
        let queue = queue.clone();
        tokio::task::spawn_blocking(move || queue.quarantine_show(id)).await
    };
    let (record, head) = match lookup {
        Ok(Ok(Some((record, body)))) => (record, body.head().to_vec()),
        Ok(Ok(None)) => return gone(),
        Ok(Err(e)) => {
            warn!(queue_id = %id, error = %e, "quarantine web: reading the message");
            return message_page(
                503,
                "Try again later",
                "The quarantine cannot be read just now.",
            );
        }
        Err(e) => {
            warn!(queue_id = %id, error = %e, "quarantine web: reading task");
            return message_page(
                503,
                "Try again later",
                "The quarantine cannot be read just now.",
            );
        }
    };
    // Still the recipient's to act on: held, its own, and a verdict it may lift.
    let Some(index) = record.envelope.recipients.iter().position(|r| {
        r.address
            .to_string()
            .eq_ignore_ascii_case(&claims.recipient)
    }) else {
        return gone();
    };
    let allowed = Runtime::actions_for(&record, index);
    if allowed == Actions::NONE {
        return gone();
    }
    match request.method {
        Method::Get | Method::Head => confirm_page(&record, &head, &claims, allowed),
        Method::Post => {
            let form = request.form();
            let action = form
                .iter()
                .find(|(k, _)| k == "action")
                .map(|(_, v)| v.as_str());
            act(queue, runtime, id, &record, &claims, allowed, action, now).await
        }
        Method::Other(_) => message_page(405, "Not allowed", "Use the page's buttons."),
    }
}

/// The page a GET shows: what the message is, and a form per action.
fn confirm_page(
    record: &QuarantineRecord,
    head: &[u8],
    claims: &Claims,
    allowed: Actions,
) -> Response {
    let shown = super::digest::Shown::of(record, head);
    let mut body = format!(
        "<h1>A message is held for you</h1>\n<p>For <strong>{}</strong>. Nothing has been done yet: choose below.</p>\n",
        Html(&claims.recipient)
    );
    body.push_str(&field_table([
        ("From", shown.from.as_str()),
        ("Subject", shown.subject.as_str()),
        ("Date", shown.date.as_str()),
        ("Envelope sender", shown.sender.as_str()),
        ("Held since", &UnixTime(record.at.0).to_rfc5322()),
        ("Why", shown.why.as_str()),
        ("Size", &format!("{} octets", record.size)),
    ]));
    for (action, flag, label) in [
        ("release", Actions::RELEASE, "Deliver it to my mailbox"),
        (
            "allow",
            Actions::ALLOW_SENDER,
            "Deliver it, and always accept mail from this sender",
        ),
        ("delete", Actions::DELETE, "Delete it"),
    ] {
        if allowed.contains(flag) && claims.actions.contains(flag) {
            // No action attribute: the form posts to this very page.
            body.push_str(&format!(
                "<form method=\"post\"><input type=\"hidden\" name=\"action\" value=\"{action}\"><button type=\"submit\" id=\"{action}\">{label}</button></form>\n"
            ));
        }
    }
    Response::html(200, page("Held message", &body))
}

#[allow(clippy::too_many_arguments)]
async fn act(
    queue: Queue,
    runtime: Arc<Runtime>,
    id: QueueId,
    record: &QuarantineRecord,
    claims: &Claims,
    allowed: Actions,
    action: Option<&str>,
    now: UnixTime,
) -> Response {
    let flag = match action {
        Some("release") => Actions::RELEASE,
        Some("delete") => Actions::DELETE,
        Some("allow") => Actions::ALLOW_SENDER,
        _ => return message_page(400, "No action", "Use the page's buttons."),
    };
    if !(allowed.contains(flag) && claims.actions.contains(flag)) {
        return message_page(403, "Not allowed", "This link does not allow that.");
    }
    let recipient = claims.recipient.clone();
    let sender = record.envelope.sender.address().map(|a| a.to_string());
    let action = action.unwrap_or_default().to_owned();
    let work = {
        let (recipient, action) = (recipient.clone(), action.clone());
        // Decided again under the queue's lock, on the record as it is then: still held,
        // still the recipient's, still a verdict it may lift (a second POST, or a copy that
        // came back as the administrator's, finds nothing).
        let may = move |record: &QuarantineRecord, index: usize| {
            Runtime::actions_for(record, index).contains(flag)
        };
        move || -> Result<bool, backstop_queue::QueueError> {
            match action.as_str() {
                "delete" => queue.quarantine_discard(id, &recipient, now, may),
                _ => {
                    let released = queue
                        .quarantine_release_if(id, Some(&recipient), now, may)?
                        .is_some_and(|r| !r.recipients.is_empty());
                    if let (true, "allow", Some(sender)) = (released, action.as_str(), &sender) {
                        queue.allow_sender(&recipient, sender)?;
                    }
                    Ok(released)
                }
            }
        }
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(true)) => {
            info!(queue_id = %id, to = %Escaped(&recipient), action = %action, "quarantine: acted on by its recipient's release link");
            if action == "delete" {
                runtime.counters.deleted(1);
                message_page(200, "Deleted", "The message is deleted.")
            } else {
                runtime.counters.released(1);
                message_page(
                    200,
                    "Released",
                    "The message is on its way to your mailbox.",
                )
            }
        }
        Ok(Ok(false)) => gone(),
        Ok(Err(e)) => {
            warn!(queue_id = %id, error = %e, "quarantine web: acting");
            message_page(
                503,
                "Try again later",
                "The quarantine cannot be changed just now.",
            )
        }
        Err(e) => {
            warn!(queue_id = %id, error = %e, "quarantine web: acting task");
            message_page(
                503,
                "Try again later",
                "The quarantine cannot be changed just now.",
            )
        }
    }
}

fn gone() -> Response {
    message_page(
        410,
        "No longer held",
        "This message is no longer held for you: it was released or deleted, or its time in quarantine is over.",
    )
}

fn message_page(status: u16, title: &str, text: &str) -> Response {
    Response::html(
        status,
        page(
            title,
            &format!("<h1>{}</h1>\n<p>{}</p>\n", Html(title), Html(text)),
        ),
    )
}
