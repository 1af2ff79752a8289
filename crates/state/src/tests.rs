use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::redis::{Redis, Servers, Settings};
use super::*;

const T0: UnixTime = UnixTime(1_800_000_000);

#[test]
fn keys_of_different_kinds_never_collide() {
    let keys = [
        Key::GreyTriplet("a".into()),
        Key::GreyPass("a".into()),
        Key::Rate("a".into()),
        Key::Callahead("a".into()),
        Key::SentId(*b"aaaaaaaaaaaaaaaa"),
        Key::AnySent,
    ];
    let mut stored: Vec<_> = keys.iter().map(Key::bytes).collect();
    stored.sort();
    stored.dedup();
    assert_eq!(stored.len(), keys.len());
    // The names the queue's RocksDB used before, so an upgraded node keeps what it knew.
    assert_eq!(
        Key::GreyPass("192.0.2.0/24".into()).bytes(),
        b"grey:pass:192.0.2.0/24"
    );
    assert_eq!(
        Key::Callahead("bob@example.test".into()).bytes(),
        b"callahead:bob@example.test"
    );
}

#[test]
fn message_id_hashes_ignore_brackets_and_space() {
    assert_eq!(
        message_id_hash("<abc@example.test>"),
        message_id_hash(" abc@example.test ")
    );
    assert_ne!(
        message_id_hash("abc@example.test"),
        message_id_hash("abd@example.test")
    );
}

#[test]
fn memory_counters_count_per_key_in_fixed_windows() {
    let counters = MemoryCounters::default();
    let hour = Duration::from_secs(3600);
    let key = Key::Rate("client-messages:192.0.2.1".into());
    let start = UnixTime(window_start(hour, T0));
    assert_eq!(counters.add(&key, 1, hour, start), 1);
    assert_eq!(counters.add(&key, 2, hour, UnixTime(start.0 + 3599)), 3);
    assert_eq!(counters.add(&Key::Rate("other".into()), 1, hour, start), 1);
    // The next window starts again from nothing.
    assert_eq!(counters.add(&key, 1, hour, UnixTime(start.0 + 3600)), 1);
    // A huge amount saturates, never wraps to a small count.
    assert_eq!(
        counters.add(&key, u64::MAX, hour, UnixTime(start.0 + 3600)),
        u64::MAX
    );
}

/// A flood of one-off keys within one window stays bounded, and does not push out a key that
/// counted many times (a password guesser hiding behind a spray of names).
#[test]
fn memory_counters_stay_bounded_and_keep_the_heavy_counts() {
    let counters = MemoryCounters::default();
    let window = Duration::from_secs(600);
    let guesser = Key::AuthFailures("ip:192.0.2.7".into());
    for _ in 0..5 {
        counters.add(&guesser, 1, window, T0);
    }
    for n in 0..(MAX_COUNTERS as u32 * 2) {
        counters.add(&Key::AuthFailures(format!("user:u{n}")), 1, window, T0);
        assert!(counters.len() <= MAX_COUNTERS, "{}", counters.len());
    }
    assert_eq!(counters.add(&guesser, 1, window, T0), 6);
}

/// Counters of different window lengths share the map: a sweep forgets each by its own window
/// (a 10-minute failed-login count outlives a 1-minute rate counter), and reading a count keeps
/// nothing for a key never counted.
#[test]
fn memory_counters_expire_each_by_its_own_window() {
    let counters = MemoryCounters::default();
    let ten = Duration::from_secs(600);
    let t = UnixTime(window_start(ten, T0));
    let guesser = Key::AuthFailures("ip:192.0.2.7".into());
    counters.add(&guesser, 3, ten, t);
    assert_eq!(
        counters.add(&Key::AuthFailures("user:nobody".into()), 0, ten, t),
        0
    );
    assert_eq!(counters.len(), 1, "a read keeps nothing");
    // Fill the map with one-minute counters, two minutes later: the sweep keeps the guesser.
    let later = UnixTime(t.0 + 120);
    for n in 0..(MAX_COUNTERS as u32 + 10) {
        counters.add(
            &Key::Rate(format!("r{n}")),
            1,
            Duration::from_secs(60),
            later,
        );
    }
    assert_eq!(counters.add(&guesser, 0, ten, later), 3);
}

#[tokio::test]
async fn memory_state_expires_values() {
    let state = MemoryState::default();
    let key = Key::GreyPass("192.0.2.0/24".into());
    state
        .put(&key, b"1", UnixTime(T0.0 + 10), T0)
        .await
        .unwrap();
    assert_eq!(
        state.get(&key, UnixTime(T0.0 + 9)).await.unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(state.get(&key, UnixTime(T0.0 + 10)).await.unwrap(), None);
}

/// A store that takes every call and never answers.
struct Silent;

impl State for Silent {
    fn get<'a>(&'a self, _: &'a Key, _: UnixTime) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(std::future::pending())
    }
    fn put<'a>(&'a self, _: &'a Key, _: &'a [u8], _: UnixTime, _: UnixTime) -> Answer<'a, ()> {
        Box::pin(std::future::pending())
    }
    fn add_in_window<'a>(
        &'a self,
        _: &'a Key,
        _: u64,
        _: Duration,
        _: UnixTime,
    ) -> Answer<'a, u64> {
        Box::pin(std::future::pending())
    }
    fn describe(&self) -> String {
        "nothing".into()
    }
}

#[tokio::test]
async fn a_silent_store_is_a_timeout_at_the_deadline() {
    let bounded = Bounded::new(Arc::new(Silent), Duration::from_millis(100));
    let key = Key::AnySent;
    assert_eq!(
        bounded.get(&key, T0).await,
        Err(StateError::Timeout(Duration::from_millis(100)))
    );
    assert!(matches!(
        bounded.put(&key, b"", T0, T0).await,
        Err(StateError::Timeout(_))
    ));
    assert!(matches!(
        bounded
            .add_in_window(&key, 1, Duration::from_secs(1), T0)
            .await,
        Err(StateError::Timeout(_))
    ));
}

/// Whether Redis is installed; missing in CI is a failure, elsewhere a loud skip.
fn have_redis(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: redis-server is not installed, and CI must run every test (cargo xtask test installs it)");
        }
        eprintln!("\n*** SKIPPED {test}: redis-server is not installed (cargo xtask test installs it) ***\n");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server of a test's own on 127.0.0.1, stopped when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start(port: u16, cluster: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        let mut child = command.spawn().expect("redis-server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => panic!("redis-server on port {port} did not start"),
            }
        }
        // Keep reading, so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        RedisServer {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis(servers: Servers) -> Redis {
    Redis::new(Settings {
        servers,
        prefix: "test:".into(),
        timeout: Duration::from_secs(2),
        sent_retention: Duration::from_secs(30 * 86_400),
        ca_file: None,
    })
    .unwrap()
}

/// What every store must do, asked of one.
async fn behaves_as_a_state(state: Arc<dyn State>) {
    let now = UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let key = Key::GreyTriplet("192.0.2.0/24/a@example.test/b@example.test".into());
    assert_eq!(state.get(&key, now).await.unwrap(), None);
    state
        .put(&key, b"\x00first\r\n", UnixTime(now.0 + 60), now)
        .await
        .unwrap();
    assert_eq!(
        state.get(&key, now).await.unwrap(),
        Some(b"\x00first\r\n".to_vec())
    );
    // Put again: the new value.
    state
        .put(&key, b"second", UnixTime(now.0 + 60), now)
        .await
        .unwrap();
    assert_eq!(
        state.get(&key, now).await.unwrap(),
        Some(b"second".to_vec())
    );
    // Put as expired: gone.
    state.put(&key, b"third", now, now).await.unwrap();
    assert_eq!(state.get(&key, now).await.unwrap(), None);

    // Sent Message-IDs: found on the day recorded and for the retention after it.
    let sent = Key::SentId(message_id_hash("<behaves@example.test>"));
    assert_eq!(state.get(&sent, now).await.unwrap(), None);
    let kept = UnixTime(now.0 + 30 * 86_400);
    state
        .put(&sent, &now.0.to_be_bytes(), kept, now)
        .await
        .unwrap();
    assert_eq!(
        state.get(&sent, now).await.unwrap(),
        Some(now.0.to_be_bytes().to_vec())
    );
    let later = UnixTime(now.0 + 20 * 86_400);
    assert_eq!(
        state.get(&sent, later).await.unwrap(),
        Some(now.0.to_be_bytes().to_vec())
    );
    let other = Key::SentId(message_id_hash("<other@example.test>"));
    assert_eq!(state.get(&other, later).await.unwrap(), None);

    // Counters: concurrent additions all count.
    let counter = Key::Rate("client-messages:192.0.2.1".into());
    let hour = Duration::from_secs(3600);
    let adds: Vec<_> = (0..50)
        .map(|_| {
            let (state, counter) = (Arc::clone(&state), counter.clone());
            tokio::spawn(async move { state.add_in_window(&counter, 2, hour, now).await })
        })
        .collect();
    let mut counts = Vec::new();
    for add in adds {
        counts.push(add.await.unwrap().unwrap());
    }
    counts.sort();
    assert_eq!(counts, (1..=50).map(|n| n * 2).collect::<Vec<_>>());
    // The next window is a new count; a huge amount does not wrap.
    let next = UnixTime(window_start(hour, now) + 3600);
    assert_eq!(
        state.add_in_window(&counter, 1, hour, next).await.unwrap(),
        1
    );
}

#[tokio::test]
async fn memory_state_behaves_as_a_state() {
    behaves_as_a_state(Arc::new(MemoryState::default())).await;
}

#[tokio::test]
async fn redis_behaves_as_a_state_and_expires_by_itself() {
    if !have_redis("redis_behaves_as_a_state_and_expires_by_itself") {
        return;
    }
    let server = RedisServer::start(free_port(), false);
    let state = Arc::new(redis(Servers::One(server.url())));
    behaves_as_a_state(state.clone()).await;
    // Redis expires what was put, by its own clock.
    let now = T0;
    let key = Key::Callahead("bob@example.test".into());
    state
        .put(&key, b"250", UnixTime(now.0 + 1), now)
        .await
        .unwrap();
    assert_eq!(state.get(&key, now).await.unwrap(), Some(b"250".to_vec()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(state.get(&key, now).await.unwrap(), None);
    assert!(state.describe().contains(&server.port.to_string()));
}

#[tokio::test]
async fn redis_down_then_back_without_a_restart() {
    if !have_redis("redis_down_then_back_without_a_restart") {
        return;
    }
    let port = free_port();
    // Down from the start: calls fail, the node does not wait forever.
    let state = redis(Servers::One(format!("redis://127.0.0.1:{port}/0")));
    let key = Key::GreyPass("192.0.2.0/24".into());
    assert!(matches!(
        state.get(&key, T0).await,
        Err(StateError::Unreachable(_) | StateError::Timeout(_))
    ));
    // Up: it answers.
    let server = RedisServer::start(port, false);
    state
        .put(&key, b"1", UnixTime(T0.0 + 600), T0)
        .await
        .unwrap();
    assert_eq!(state.get(&key, T0).await.unwrap(), Some(b"1".to_vec()));
    // Down in the middle: an error, not a hang and not an empty answer.
    drop(server);
    let answer = state.get(&key, T0).await;
    assert!(
        matches!(
            answer,
            Err(StateError::Unreachable(_) | StateError::Timeout(_))
        ),
        "{answer:?}"
    );
    // Back (empty: it kept nothing): normal service on the same handle.
    let _server = RedisServer::start(port, false);
    let mut answer = state.get(&key, T0).await;
    for _ in 0..20 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = state.get(&key, T0).await;
    }
    assert_eq!(answer, Ok(None));
    state
        .put(&key, b"2", UnixTime(T0.0 + 600), T0)
        .await
        .unwrap();
    assert_eq!(state.get(&key, T0).await.unwrap(), Some(b"2".to_vec()));
}

#[tokio::test]
async fn a_peer_that_is_not_redis_is_an_error_not_a_hang() {
    // Answers every connection with garbage, then a second one stays silent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut held = Vec::new();
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let _ = socket
                .write_all(b"\x00\xff garbage\r\nHTTP/1.1 400\r\n\r\n")
                .await;
            held.push(socket);
        }
    });
    let state = Redis::new(Settings {
        servers: Servers::One(format!("redis://127.0.0.1:{port}/0")),
        prefix: String::new(),
        timeout: Duration::from_millis(500),
        sent_retention: Duration::from_secs(30 * 86_400),
        ca_file: None,
    })
    .unwrap();
    let bounded = Bounded::new(Arc::new(state), Duration::from_secs(3));
    let started = std::time::Instant::now();
    let answer = bounded.get(&Key::AnySent, T0).await;
    assert!(answer.is_err(), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn a_bad_url_is_refused_at_once_without_its_password() {
    let Err(e) = Redis::new(Settings {
        servers: Servers::One("http://user:secret@host/".into()),
        prefix: String::new(),
        timeout: Duration::from_secs(1),
        sent_retention: Duration::from_secs(30 * 86_400),
        ca_file: None,
    }) else {
        panic!("accepted");
    };
    assert!(!e.to_string().contains("secret"), "{e}");
}

#[tokio::test]
async fn a_redis_cluster_behaves_as_a_state() {
    if !have_redis("a_redis_cluster_behaves_as_a_state") {
        return;
    }
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start(free_port(), true))
        .collect();
    let nodes: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stdout)
    );
    // Until every node agrees the cluster is up.
    for _ in 0..100 {
        let info = Command::new("redis-cli")
            .args(["-p", &servers[0].port.to_string(), "cluster", "info"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = Arc::new(redis(Servers::Cluster(
        servers.iter().map(RedisServer::url).collect(),
    )));
    behaves_as_a_state(state.clone()).await;
    // Keys of many kinds spread over the three masters, each readable back.
    for n in 0..100 {
        let key = Key::Callahead(format!("user{n}@example.test"));
        state
            .put(&key, b"250", UnixTime(T0.0 + 600), T0)
            .await
            .unwrap();
        assert_eq!(state.get(&key, T0).await.unwrap(), Some(b"250".to_vec()));
    }
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it in `dir` (ca.pem, server.pem,
/// server.key) with the openssl command.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=test-ca",
            "-days",
            "2",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

#[tokio::test]
async fn redis_over_tls_with_the_sites_ca() {
    if !have_redis("redis_over_tls_with_the_sites_ca") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while !lines
        .next()
        .unwrap()
        .unwrap()
        .contains("Ready to accept connections")
    {}
    std::thread::spawn(move || lines.for_each(drop));
    let settings = |ca: &str| Settings {
        servers: Servers::One(format!("rediss://127.0.0.1:{port}/0")),
        prefix: "tls:".into(),
        timeout: Duration::from_secs(2),
        sent_retention: Duration::from_secs(30 * 86_400),
        ca_file: Some(dir.path().join(ca)),
    };
    // With the site's CA: it answers.
    let state = Redis::new(settings("ca.pem")).unwrap();
    let key = Key::GreyPass("192.0.2.0/24".into());
    state
        .put(&key, b"1", UnixTime(T0.0 + 60), T0)
        .await
        .unwrap();
    assert_eq!(state.get(&key, T0).await.unwrap(), Some(b"1".to_vec()));
    // A certificate that does not chain to the CA given: refused, not used.
    let other = tempfile::tempdir().unwrap();
    certificates(other.path());
    std::fs::copy(other.path().join("ca.pem"), dir.path().join("other-ca.pem")).unwrap();
    let wrong = Redis::new(settings("other-ca.pem")).unwrap();
    let answer = wrong.get(&key, T0).await;
    assert!(
        matches!(
            answer,
            Err(StateError::Unreachable(_) | StateError::Timeout(_))
        ),
        "{answer:?}"
    );
    // A CA file that is not there: an error at once, naming it.
    let Err(e) = Redis::new(settings("missing.pem")) else {
        panic!("accepted a missing CA file");
    };
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let _ = child.kill();
    let _ = child.wait();
}
