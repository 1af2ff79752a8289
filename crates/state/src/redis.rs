//! The state in Redis: one server (`redis://host:port/db`) or a Redis Cluster (a list of
//! nodes), so every node of a site reads and writes the same greylisting, counters, callahead
//! answers and sent Message-IDs. Keys carry the site's prefix; Redis expires them itself.
//!
//! The connection is made at the first call and made again after a failure, so a node starts
//! while Redis is down and serves normally again when Redis is back, without a restart; until
//! then every call fails at once with [`StateError::Unreachable`] or at the deadline.

use std::time::Duration;

use backstop_types::UnixTime;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::Mutex;

use crate::{window_start, Answer, Key, State, StateError};

/// Where the site's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    /// One server: a `redis://` (or `redis+unix://`) URL.
    One(String),
    /// The nodes of a Redis Cluster to start from (the others are found through them).
    Cluster(Vec<String>),
}

/// How to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub servers: Servers,
    /// Put before every key, so that a Redis can be shared with other programs.
    pub prefix: String,
    /// For connecting and for each answer.
    pub timeout: Duration,
    /// How long a sent Message-ID is kept (`[bounce_provenance] retention`): how many daily
    /// buckets a lookup reads.
    pub sent_retention: Duration,
    /// For `rediss://`: the CA certificates (PEM) Redis's certificate must chain to; without
    /// it, the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

const DAY: u64 = 86_400;

/// Counts in a window atomically: adds, and starts the key's life with the window's first
/// addition. One key, so a cluster routes it to the node that holds it.
const ADD_IN_WINDOW: &str = "local n = redis.call('INCRBY', KEYS[1], ARGV[1]) \
     if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
     return n";

#[derive(Clone)]
enum Connection {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self.clone() {
            Connection::One(mut c) => cmd.query_async(&mut c).await,
            Connection::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match self.clone() {
            Connection::One(mut c) => pipe.query_async(&mut c).await,
            Connection::Cluster(mut c) => pipe.query_async(&mut c).await,
        }
    }
}

/// The site's state in Redis.
pub struct Redis {
    settings: Settings,
    /// The CA file's PEM, read once.
    root_cert: Option<Vec<u8>>,
    /// Made at the first call; dropped after a failure that says the connection is gone.
    connection: Mutex<Option<Connection>>,
}

impl Redis {
    /// Checks the settings (a URL that does not parse is an error now, not at the first mail);
    /// connects later.
    pub fn new(settings: Settings) -> Result<Redis, StateError> {
        let urls = match &settings.servers {
            Servers::One(url) => std::slice::from_ref(url),
            Servers::Cluster(urls) => urls.as_slice(),
        };
        for url in urls {
            redis::Client::open(url.as_str())
                .map_err(|e| StateError::Failed(format!("{}: {e}", redacted(url))))?;
        }
        let root_cert = match &settings.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| StateError::Failed(format!("{}: {e}", path.display())))?,
            ),
            None => None,
        };
        Ok(Redis {
            settings,
            root_cert,
            connection: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<Connection, StateError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let timeout = self.settings.timeout;
        let unreachable = |e: redis::RedisError| StateError::Unreachable(e.to_string());
        let made = match &self.settings.servers {
            Servers::One(url) => {
                let client = match &self.root_cert {
                    Some(root) => {
                        redis::Client::build_with_tls(url.as_str(), self.certificates(root))
                    }
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(unreachable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let manager = tokio::time::timeout(
                    timeout,
                    client.get_connection_manager_with_config(config),
                )
                .await
                .map_err(|_| StateError::Timeout(timeout))?
                .map_err(unreachable)?;
                Connection::One(manager)
            }
            Servers::Cluster(urls) => {
                let mut builder = ClusterClient::builder(urls.iter().map(String::as_str));
                if let Some(root) = &self.root_cert {
                    builder = builder.certs(self.certificates(root));
                }
                let client = builder
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()
                    .map_err(unreachable)?;
                let connection = tokio::time::timeout(timeout, client.get_async_connection())
                    .await
                    .map_err(|_| StateError::Timeout(timeout))?
                    .map_err(unreachable)?;
                Connection::Cluster(connection)
            }
        };
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Runs `cmd`; a failure that means the connection is gone forgets it.
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StateError> {
        let connection = self.connection().await?;
        let answer = connection.query(&cmd).await;
        self.answer(answer).await
    }

    /// Runs `pipe` (its keys in one slot), as [`Redis::query`].
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T, StateError> {
        let connection = self.connection().await?;
        let answer = connection.pipeline(&pipe).await;
        self.answer(answer).await
    }

    async fn answer<T>(&self, answer: redis::RedisResult<T>) -> Result<T, StateError> {
        match answer {
            Ok(answer) => Ok(answer),
            Err(e) => {
                if e.is_connection_dropped() || e.is_io_error() || e.is_timeout() {
                    *self.connection.lock().await = None;
                    Err(StateError::Unreachable(e.to_string()))
                } else {
                    Err(StateError::Failed(e.to_string()))
                }
            }
        }
    }

    fn certificates(&self, root: &[u8]) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root.to_vec()),
        }
    }

    fn key(&self, key: &Key) -> Vec<u8> {
        [self.settings.prefix.as_bytes(), &key.bytes()].concat()
    }

    /// The hash of the Message-IDs sent on `day` (days since the epoch). One hash per day
    /// holds an entry in about 80 bytes where a key of its own takes about 150, and expires
    /// whole; the `{sent}` hash tag keeps every day on one cluster node, so a lookup of all
    /// the days kept is one pipeline.
    fn sent_bucket(&self, day: u64) -> Vec<u8> {
        format!("{}{{sent}}:{day}", self.settings.prefix).into_bytes()
    }

    /// Records a sent Message-ID in today's hash, which lives until `expires` of its newest
    /// entry (and a day, for the entries made late that day).
    async fn put_sent(
        &self,
        hash: &[u8; 16],
        value: &[u8],
        expires: UnixTime,
        now: UnixTime,
    ) -> Result<(), StateError> {
        let bucket = self.sent_bucket(now.0 / DAY);
        let life = expires.0.saturating_sub(now.0).saturating_add(DAY);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&bucket)
            .arg(hash.as_slice())
            .arg(value)
            .ignore()
            .cmd("EXPIRE")
            .arg(&bucket)
            .arg(life)
            .ignore();
        self.pipeline::<()>(pipe).await
    }

    /// The value recorded for a sent Message-ID on any day kept.
    async fn get_sent(
        &self,
        hash: &[u8; 16],
        now: UnixTime,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let today = now.0 / DAY;
        let days = self.settings.sent_retention.as_secs() / DAY + 1;
        let mut pipe = redis::pipe();
        for day in (today.saturating_sub(days)..=today).rev() {
            pipe.cmd("HGET")
                .arg(self.sent_bucket(day))
                .arg(hash.as_slice());
        }
        let found: Vec<Option<Vec<u8>>> = self.pipeline(pipe).await?;
        Ok(found.into_iter().flatten().next())
    }
}

/// Whether `url` is one redis-rs can connect to.
pub fn parses(url: &str) -> bool {
    redis::Client::open(url).is_ok()
}

/// A URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl State for Redis {
    fn get<'a>(&'a self, key: &'a Key, now: UnixTime) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            if let Key::SentId(hash) = key {
                return self.get_sent(hash, now).await;
            }
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.key(key));
            self.query(cmd).await
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        expires: UnixTime,
        now: UnixTime,
    ) -> Answer<'a, ()> {
        Box::pin(async move {
            if let Key::SentId(hash) = key {
                return self.put_sent(hash, value, expires, now).await;
            }
            let seconds = expires.0.saturating_sub(now.0);
            let mut cmd = if seconds == 0 {
                // Expired already: what was there goes.
                let mut cmd = redis::cmd("DEL");
                cmd.arg(self.key(key));
                cmd
            } else {
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.key(key)).arg(value).arg("EX").arg(seconds);
                cmd
            };
            let _: redis::Value = self.query(std::mem::take(&mut cmd)).await?;
            Ok(())
        })
    }

    fn add_in_window<'a>(
        &'a self,
        key: &'a Key,
        amount: u64,
        window: Duration,
        now: UnixTime,
    ) -> Answer<'a, u64> {
        Box::pin(async move {
            let start = window_start(window, now);
            let stored = [self.key(key), format!(":{start}").into_bytes()].concat();
            // The counter lives for its window and a minute more (clocks of nodes differ).
            let life_ms = window.as_millis().saturating_add(60_000);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(ADD_IN_WINDOW)
                .arg(1)
                .arg(stored)
                .arg(amount)
                .arg(u64::try_from(life_ms).unwrap_or(u64::MAX));
            self.query(cmd).await
        })
    }

    fn describe(&self) -> String {
        match &self.settings.servers {
            Servers::One(url) => format!("Redis at {}", redacted(url)),
            Servers::Cluster(urls) => format!(
                "the Redis Cluster of {}",
                urls.iter()
                    .map(|u| redacted(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}
