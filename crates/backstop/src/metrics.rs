//! The metrics in Prometheus' text format: what the listeners and the delivery agent count,
//! and the queue's depth and age read at each scrape. Served over HTTP (`GET /metrics`) when
//! `[metrics] address` is set, and printed by `backstop metrics` through the admin API.

use backstop_types::prometheus::Kind;
use backstop_types::Clock as _;
use std::sync::Arc;

use backstop_delivery::report::Counters;
use backstop_listener::metrics::SmtpMetrics;
use backstop_queue::Queue;
use backstop_types::UnixTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the numbers come from.
pub struct Sources {
    pub queue: Queue,
    /// The quarantine's counters and its count per kind.
    pub quarantine: Arc<crate::quarantine::Runtime>,
    pub delivery: Arc<Counters>,
    pub smtp: Arc<SmtpMetrics>,
    pub memory: Arc<backstop_session::budget::MemoryBudget>,
}

impl Sources {
    /// All metrics at `now`. Blocking: it reads the queue.
    pub fn render(&self, now: UnixTime) -> String {
        let mut out = self.smtp.prometheus();
        out.append(self.delivery.prometheus());
        out.single(
            "smtp_message_memory_bytes",
            Kind::Gauge,
            "Memory held for message data in progress (smtp.max_message_memory).",
            self.memory.used(),
        )
        .single(
            "smtp_message_memory_limit_bytes",
            Kind::Gauge,
            "The limit on memory for message data in progress.",
            self.memory.limit(),
        );
        let (released, deleted, digests) = self.quarantine.counters.totals();
        out.single(
            "quarantine_released_total",
            Kind::Counter,
            "Recipients' copies released from quarantine by the administrator or a release link.",
            released,
        )
        .single(
            "quarantine_deleted_total",
            Kind::Counter,
            "Quarantined messages or copies deleted by a person (not by retention).",
            deleted,
        )
        .single(
            "quarantine_digests_sent_total",
            Kind::Counter,
            "Quarantine digests queued to recipients.",
            digests,
        );
        // Counted now (a scan of the records, as the queue's gauges are), and kept for the
        // console.
        let totals = match self.queue.quarantine_totals() {
            Ok(totals) => {
                if let Ok(mut kept) = self.quarantine.totals.lock() {
                    kept.clone_from(&totals);
                }
                totals
            }
            Err(e) => {
                warn!(error = %e, "metrics: cannot read the quarantine");
                Vec::new()
            }
        };
        out.family(
            "quarantine_kind_messages",
            Kind::Gauge,
            "Messages in quarantine by reason kind.",
        );
        for (kind, t) in &totals {
            out.sample(
                "quarantine_kind_messages",
                &[("kind", kind.as_str())],
                t.messages,
            );
        }
        out.family(
            "quarantine_kind_bytes",
            Kind::Gauge,
            "Octets in quarantine by reason kind.",
        );
        for (kind, t) in &totals {
            out.sample(
                "quarantine_kind_bytes",
                &[("kind", kind.as_str())],
                t.octets,
            );
        }
        let quarantined: u64 = totals.iter().map(|(_, t)| t.messages).sum();
        match self.queue.list() {
            Ok(entries) => {
                let oldest = entries.iter().map(|(_, e)| e.envelope.arrival.0).min();
                let age = oldest.map_or(0, |a| now.0.saturating_sub(a));
                out.single(
                    "queue_messages",
                    Kind::Gauge,
                    "Messages in the queue.",
                    entries.len(),
                )
                .single(
                    "queue_oldest_seconds",
                    Kind::Gauge,
                    "Age of the oldest message in the queue.",
                    age,
                )
                .single(
                    "quarantine_messages",
                    Kind::Gauge,
                    "Messages in quarantine.",
                    quarantined,
                );
            }
            Err(e) => warn!(error = %e, "metrics: cannot read the queue"),
        }
        out.finish()
    }
}

/// Binds the metrics endpoint.
pub async fn bind(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {address}: {e}"))?;
    info!(address = %socket.local_addr()?, "metrics endpoint");
    Ok(socket)
}

/// Answers `GET /metrics` until `shutdown`.
pub async fn serve(
    socket: TcpListener,
    sources: Arc<Sources>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let sources = Arc::clone(&sources);
        tokio::spawn(async move {
            let answered =
                tokio::time::timeout(std::time::Duration::from_secs(10), answer(stream, sources))
                    .await;
            if let Ok(Err(e)) = answered {
                warn!(error = %e, "metrics request");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, sources: Arc<Sources>) -> anyhow::Result<()> {
    // The request head, at most 8 KiB; the body of a GET is ignored.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (status, kind, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => {
            let now = backstop_types::SystemClock.now();
            let body = tokio::task::spawn_blocking(move || sources.render(now)).await?;
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        (Some("GET"), _) => ("404 Not Found", "text/plain", "only /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}
