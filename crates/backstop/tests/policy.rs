//! The assembled policy, in process: the server the config describes, bound to 127.0.0.1:0 and
//! run on this test's runtime with a clock the test moves. Each test speaks SMTP to it and
//! reads the replies; the end-to-end suite (tests/e2e) runs the binary against real peers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use backstop::Server;
use backstop_types::{Clock as _, ManualClock, SystemClock};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A running server and how to stop it.
struct Running {
    mx: SocketAddr,
    clock: Arc<ManualClock>,
    queue: backstop_queue::Queue,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Stops the server and waits until it has.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// Starts the server on a config with an MX listener on port 0, delivery paused, local domain
/// example.test, and `extra` appended.
async fn start(dir: &Path, extra: &str) -> Running {
    start_on(&write_config(dir, extra)).await
}

/// Writes the config `start` runs on, and returns its path.
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = format!(
        r#"hostname = "mx.backstop.test"
data_dir = "{data}"

[smtp]
local_domains = ["example.test"]

[delivery]
paused = true

[sender_checks]
enabled = false

[[listener]]
name = "mx"
address = "127.0.0.1:0"
kind = "mx"
{extra}
"#,
        data = dir.join("var").display()
    );
    let path = dir.join("backstop.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts the server on the config at `path`.
async fn start_on(path: &Path) -> Running {
    let setup = backstop::load::load(Some(path)).unwrap_or_else(|e| panic!("{e}"));
    // Now, so that what the test makes outside the server (a BATV tag) agrees with it.
    let clock = Arc::new(ManualClock::at(SystemClock.now()));
    let server = Server::bind(setup, clock.clone()).await.unwrap();
    let mx = server.listeners()[0].1;
    let queue = server.queue().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(
        async {
            let _ = stopped.await;
        },
        None,
    ));
    Running {
        mx,
        clock,
        queue,
        stop: Some(stop),
        task: Some(task),
    }
}

/// An SMTP client that sends a line and reads the whole reply.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    /// Connects, reads the greeting and says EHLO.
    async fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).await.unwrap();
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        assert!(client.reply().await.starts_with("220 "));
        assert!(client.send("EHLO client.example").await.starts_with("250"));
        client
    }

    /// The reply's lines, joined with `\n`.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.stream.read_line(&mut line).await.unwrap();
            assert!(n > 0, "the server closed the connection; so far: {lines:?}");
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn send(&mut self, line: &str) -> String {
        let stream = self.stream.get_mut();
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// A whole transaction up to the reply to the message; the first reply that is no
    /// success, with the step it answered, ends it.
    async fn transaction(&mut self, from: &str, to: &[&str], message: &str) -> String {
        let reply = self.send(&format!("MAIL FROM:<{from}>")).await;
        if !reply.starts_with("250") {
            return format!("MAIL: {reply}");
        }
        for rcpt in to {
            let reply = self.send(&format!("RCPT TO:<{rcpt}>")).await;
            if !reply.starts_with("250") {
                self.send("RSET").await;
                return format!("RCPT {rcpt}: {reply}");
            }
        }
        let reply = self.send("DATA").await;
        assert!(reply.starts_with("354"), "{reply}");
        format!("DATA: {}", self.send(&format!("{message}\r\n.")).await)
    }
}

const MESSAGE: &str = "From: someone@example.org\r\nTo: bob@example.test\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <1@example.org>\r\nSubject: hi\r\n\r\nhello";

fn code(reply: &str) -> &str {
    reply
        .split_once(": ")
        .map_or(reply, |(_, r)| r)
        .get(..9)
        .unwrap_or(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_recipients_are_refused_at_rcpt_and_known_ones_are_queued() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("recipients");
    std::fs::write(&table, "bob@example.test\n").unwrap();
    let server = start(
        dir.path(),
        &format!("[recipients]\ntable = \"{}\"\n", table.display()),
    )
    .await;
    let mut client = Client::connect(server.mx).await;
    let sender = "someone@example.org";
    let refused = client
        .transaction(sender, &["nobody@example.test"], MESSAGE)
        .await;
    assert!(
        refused.starts_with("RCPT nobody@example.test: 550 5.1.1"),
        "{refused}"
    );
    let accepted = client
        .transaction(sender, &["bob@example.test"], MESSAGE)
        .await;
    assert!(accepted.starts_with("DATA: 250 2.0.0"), "{accepted}");
    // Refused before anything was stored; the accepted one is in the queue.
    assert_eq!(server.queue.list().unwrap().len(), 1);
    server.stop().await;
}

/// Greylisting decides by the clock the server was given: the retry after the delay passes,
/// without the test waiting five minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisting_passes_a_retry_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "[greylist]\nenabled = true\ndelay = \"5m\"\n").await;
    let mut client = Client::connect(server.mx).await;
    let sender = "someone@example.org";
    let first = client
        .transaction(sender, &["bob@example.test"], MESSAGE)
        .await;
    assert_eq!(code(&first), "451 4.7.1", "{first}");
    server.clock.advance(299);
    let early = client
        .transaction(sender, &["bob@example.test"], MESSAGE)
        .await;
    assert_eq!(code(&early), "451 4.7.1", "{early}");
    server.clock.advance(1);
    let retry = client
        .transaction(sender, &["bob@example.test"], MESSAGE)
        .await;
    assert!(retry.starts_with("DATA: 250 2.0.0"), "{retry}");
    server.stop().await;
}

/// A bounce needs our BATV tag (the default config checks bounces); the tag is removed before
/// the recipient table is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_needs_our_tag() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("recipients");
    std::fs::write(&table, "bob@example.test\n").unwrap();
    let config = write_config(
        dir.path(),
        &format!("[recipients]\ntable = \"{}\"\n", table.display()),
    );
    // Signed first: that makes the key (on first use), which the server then reads.
    let setup = backstop::load::load(Some(&config)).unwrap();
    let tagged = backstop::batv::sign(&setup, "bob@example.test").unwrap();
    let server = start_on(&config).await;
    let mut client = Client::connect(server.mx).await;
    let untagged = client.transaction("", &["bob@example.test"], MESSAGE).await;
    assert_eq!(code(&untagged), "550 5.7.1", "{untagged}");
    let bounce = client.transaction("", &[&tagged], MESSAGE).await;
    assert!(bounce.starts_with("DATA: 250 2.0.0"), "{bounce}");
    server.stop().await;
}

/// The content order: an RFC 5322 violation is refused before the reply to DATA, and so is
/// a message a configured rule refuses; a clean message passes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_checks_answer_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        r#"[content]
rfc5322 = "reject"

[[filter]]
type = "header"
header = "Subject"
pattern = "(?i)viagra"
action = "reject"
"#,
    )
    .await;
    let mut client = Client::connect(server.mx).await;
    let sender = "someone@example.org";
    let no_from = MESSAGE.replace("From: someone@example.org\r\n", "");
    let refused = client
        .transaction(sender, &["bob@example.test"], &no_from)
        .await;
    assert_eq!(code(&refused), "550 5.6.0", "{refused}");
    let spam = MESSAGE.replace("Subject: hi", "Subject: cheap VIAGRA");
    let refused = client
        .transaction(sender, &["bob@example.test"], &spam)
        .await;
    assert!(refused.starts_with("DATA: 5"), "{refused}");
    let clean = client
        .transaction(sender, &["bob@example.test"], MESSAGE)
        .await;
    assert!(clean.starts_with("DATA: 250 2.0.0"), "{clean}");
    assert_eq!(server.queue.list().unwrap().len(), 1);
    server.stop().await;
}

/// The message rate for a client address: the second MAIL within the window is deferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_rate_of_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "[rate_limits]\nclient_messages = \"1/1h\"\n").await;
    let mut client = Client::connect(server.mx).await;
    let sender = "someone@example.org";
    let first = client
        .transaction(sender, &["bob@example.test"], MESSAGE)
        .await;
    assert!(first.starts_with("DATA: 250 2.0.0"), "{first}");
    let second = client
        .transaction(sender, &["bob@example.test"], MESSAGE)
        .await;
    assert!(second.starts_with("MAIL: 451 4.7.1"), "{second}");
    // The window is the clock's: an hour on, the client may send again.
    server.clock.advance(3600);
    let later = client
        .transaction(sender, &["bob@example.test"], MESSAGE)
        .await;
    assert!(later.starts_with("DATA: 250 2.0.0"), "{later}");
    server.stop().await;
}
