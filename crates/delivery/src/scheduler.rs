//! The delivery scheduler: due messages are leased continuously and their recipients handed to
//! per-destination queues; each destination (a relay's next hop, a domain's MX hosts, the
//! local Maildirs) has its own concurrency window, so a slow or dead destination only ever
//! occupies its own window while every other destination's mail flows.
//!
//! - A destination's window starts at [`Limits::initial_window`], grows by one with each
//!   transaction the destination completed and shrinks by one with each connection-level
//!   failure (refused, reset, timed out, TLS failed, 421), between 1 and
//!   [`Limits::per_destination`] (Postfix's slow start with feedback).
//! - A worker holds one connection (and one of [`Limits::connections`] permits) and takes the
//!   destination's jobs one after the other on it; idle, it waits [`Limits::idle`] for more
//!   before it
//!   says QUIT, unless a worker of another destination is waiting for a connection: then it
//!   gives its connection up at once (an idle connection never holds up mail elsewhere).
//! - After [`Limits::dead_after`] connection-level failures in a row a destination is down
//!   for [`Limits::dead_backoff`]: its queued and new jobs are deferred without a connection
//!   being tried, and the first attempt after the backoff probes with one connection.
//! - A message's body is read from the queue when a connection is ready to send it.
//! - A message leased is tracked until its outcomes are recorded: a lease that runs out while
//!   a long transaction is still going is renewed, never handed out twice; after a crash the
//!   lease's end makes it due again (at least once).
//! - On shutdown nothing new starts; a transaction under way may finish within the grace
//!   period, then it is cut off; every message not recorded is made due again at once.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backstop_queue::Entry;
use backstop_smtp_client::{ClientError, Connection, Endpoint, NextHop, Outgoing, Transaction};
use backstop_types::budget::Reservation;
use backstop_types::{
    Attempt, AttemptOutcome, Clock, Domain, EnhancedStatus, QueueId, RecipientState, RemoteReply,
    UnixTime,
};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::agent::Agent;
use crate::mx::Unroutable;

/// How long a leased message is ours before it becomes due again (if we die meanwhile).
pub const LEASE: Duration = Duration::from_secs(600);
/// How long an idle worker keeps its connection for the next job (Postfix's
/// smtp_connection_cache_time_limit).
pub const IDLE: Duration = Duration::from_secs(2);
/// How long a connection is used at most (Postfix's smtp_connection_reuse_time_limit).
pub const AGE: Duration = Duration::from_secs(300);
/// How often the queue is looked at when nothing woke the scheduler.
const POLL: Duration = Duration::from_millis(250);
/// How many addresses of a domain's MX hosts one attempt tries (Postfix's
/// smtp_mx_address_limit).
const MAX_MX_ADDRESSES: usize = 5;

/// How many connections delivery opens, and when a destination counts as down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, in all (Postfix's default_process_limit).
    pub connections: usize,
    /// To one destination at most (Postfix's default_destination_concurrency_limit).
    pub per_destination: usize,
    /// Where a destination's window starts (Postfix's initial_destination_concurrency).
    pub initial_window: usize,
    /// Connection-level failures in a row that mark a destination down.
    pub dead_after: u32,
    /// How long a destination stays down.
    pub dead_backoff: Duration,
    /// Messages in flight at most (leased and not yet recorded): bounds memory.
    pub in_flight: usize,
    /// How long an idle connection waits for its destination's next job ([`IDLE`]).
    pub idle: Duration,
}

/// Where a recipient's delivery goes: one queue and one window each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Maildirs on this host.
    Local,
    /// A fixed next hop, as one route reaches it.
    Relay { hop: NextHop, lmtp: bool },
    /// A domain's MX hosts.
    Mx { domain: Domain, port: u16 },
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Local => f.write_str("local"),
            Destination::Relay { hop, .. } => write!(f, "{}", hop.remote()),
            Destination::Mx { domain, .. } => write!(f, "{domain}"),
        }
    }
}

/// Recipients of one message that travel together to one destination.
struct Job {
    id: QueueId,
    /// When it was leased: the day for BATV tags, the time for Maildir names.
    now: UnixTime,
    agent: Arc<Agent>,
    /// The route (index into the agent's routes); `None` for local delivery.
    route: Option<usize>,
    recipients: Vec<usize>,
    /// Octets of the message as its record says (0: not known), covered in the memory budget
    /// before the message is read.
    size: u64,
}

/// What a job came to.
#[derive(Default)]
struct JobResult {
    outcomes: Vec<(usize, AttemptOutcome)>,
    /// Recipients handed to a next hop that took the DSN request.
    passed_on: Vec<usize>,
    /// Recipients handed over SMTP to a next hop without DSN ("relayed").
    relayed: Vec<usize>,
    /// The Message-ID of our own user's message, delivered to a remote host.
    sent_message_id: Option<String>,
    /// The destination could not be reached at all (for its window and its down state).
    connection_failed: bool,
    /// The destination took a transaction (whatever it said of the recipients).
    completed: bool,
}

/// One leased message until its outcomes are recorded.
struct InFlight {
    entry: Entry,
    jobs_left: usize,
    result: JobResult,
    agent: Arc<Agent>,
    /// Every job is done and the outcomes are being written: still tracked (so it is not
    /// leased again) until the write is on disk.
    recording: bool,
}

/// A destination's queue and window.
struct Dest {
    queue: VecDeque<Job>,
    /// Workers running for it.
    active: usize,
    /// Workers waiting for a job on an open connection.
    idle: usize,
    window: usize,
    failures: u32,
    down_until: Option<Instant>,
    /// Wakes idle workers when a job arrives.
    arrived: Arc<Notify>,
}

struct State {
    dests: HashMap<Destination, Dest>,
    in_flight: HashMap<QueueId, InFlight>,
    /// Workers running, for shutdown.
    workers: usize,
}

/// The scheduler's shared state; workers hold an `Arc` of it.
pub struct Scheduler {
    state: Mutex<State>,
    connections: Arc<Semaphore>,
    /// Workers waiting for one of the `connections` permits.
    waiting: std::sync::atomic::AtomicUsize,
    /// Told when a worker starts to wait for a connection: idle workers let theirs go.
    wanted: Notify,
    /// Maildir writes at once (file system work on the blocking pool).
    local: Arc<Semaphore>,
    /// A message finished or a worker stopped.
    changed: Notify,
    /// True once workers must stop starting jobs; the second stage cuts transactions off.
    stopping: watch::Sender<Stop>,
    /// The time, for leases and attempts.
    clock: Arc<dyn Clock>,
    /// `Some` in tests: the time the queue is told it is.
    fixed_now: Mutex<Option<UnixTime>>,
    /// Outcomes counted since the last [`Scheduler::drain`] (tests).
    counted: Mutex<PassReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// No new jobs; the current transaction may finish.
    Draining,
    /// Cut everything off now.
    Now,
}

/// What one [`Scheduler::drain`] did, for tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub messages: usize,
    pub delivered: usize,
    pub deferred: usize,
    pub failed: usize,
}

impl Scheduler {
    pub fn new(limits: Limits, clock: Arc<dyn Clock>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            state: Mutex::new(State {
                dests: HashMap::new(),
                in_flight: HashMap::new(),
                workers: 0,
            }),
            connections: Arc::new(Semaphore::new(limits.connections.max(1))),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            wanted: Notify::new(),
            local: Arc::new(Semaphore::new(8)),
            changed: Notify::new(),
            stopping: watch::channel(Stop::Running).0,
            clock,
            fixed_now: Mutex::new(None),
            counted: Mutex::new(PassReport::default()),
        })
    }

    /// Messages leased and not yet recorded.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Runs until `shutdown` turns true, taking the settings `agents` holds at each lease (a
    /// reload sends new ones). Then stops within `grace` (see the module docs).
    pub async fn run(
        self: Arc<Scheduler>,
        agents: watch::Receiver<Agent>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        loop {
            let agent = Arc::new(agents.borrow().clone());
            let leased = self.lease(&agent, self.now()).await;
            if leased == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = self.changed.notified() => {}
                    _ = shutdown.changed() => break,
                }
            }
            if *shutdown.borrow() {
                break;
            }
        }
        let agent = agents.borrow().clone();
        self.stop(&agent, grace).await;
    }

    /// Leases everything due at `now`, delivers it and waits until every message leased is
    /// recorded: one pass, for tests (time stands still at `now`).
    pub async fn drain(self: &Arc<Scheduler>, agent: &Agent, now: UnixTime) -> PassReport {
        *self
            .fixed_now
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(now);
        let agent = Arc::new(agent.clone());
        let mut report = PassReport::default();
        loop {
            let leased = self.lease(&agent, now).await;
            report.messages += leased;
            if leased == 0 {
                break;
            }
        }
        loop {
            let notified = self.changed.notified();
            if self.in_flight() == 0 {
                break;
            }
            notified.await;
        }
        let counted =
            std::mem::take(&mut *self.counted.lock().unwrap_or_else(PoisonError::into_inner));
        report.delivered = counted.delivered;
        report.deferred = counted.deferred;
        report.failed = counted.failed;
        report
    }

    /// Leases due messages (as many as the in-flight bound allows) and hands their
    /// recipients to destinations. Returns how many were new.
    async fn lease(self: &Arc<Scheduler>, agent: &Arc<Agent>, now: UnixTime) -> usize {
        let room = agent
            .limits
            .in_flight
            .saturating_sub(self.in_flight())
            .min(1000);
        if room == 0 {
            return 0;
        }
        let queue = agent.queue.clone();
        let leased = tokio::task::spawn_blocking(move || queue.lease_due(now, LEASE, room)).await;
        let leased = match leased {
            Ok(Ok(leased)) => leased,
            Ok(Err(e)) => {
                warn!(error = %e, "leasing due messages failed");
                return 0;
            }
            Err(e) => {
                warn!(error = %e, "leasing task failed");
                return 0;
            }
        };
        let mut new = 0;
        for (id, entry) in leased {
            // Still being delivered: its lease was renewed, nothing else to do.
            if self.lock().in_flight.contains_key(&id) {
                continue;
            }
            new += 1;
            self.start(agent, id, entry, now);
        }
        new
    }

    /// Splits a message's due recipients into jobs, one per destination.
    fn start(self: &Arc<Scheduler>, agent: &Arc<Agent>, id: QueueId, entry: Entry, now: UnixTime) {
        let envelope = &entry.envelope;
        let mut jobs: Vec<(Destination, Job)> = Vec::new();
        let mut immediate = Vec::new();
        for (index, (recipient, state)) in envelope.recipients.iter().zip(&entry.states).enumerate()
        {
            let RecipientState::Pending { next_attempt, .. } = state else {
                continue;
            };
            if next_attempt.0 > now.0 {
                continue;
            }
            let domain = recipient.address.domain();
            let Some((destination, route)) = agent.destination(domain) else {
                immediate.push((index, crate::agent::no_route(domain)));
                continue;
            };
            match jobs
                .iter_mut()
                .find(|(d, j)| *d == destination && j.route == route)
            {
                Some((_, job)) => job.recipients.push(index),
                None => jobs.push((
                    destination,
                    Job {
                        id,
                        now,
                        agent: Arc::clone(agent),
                        route,
                        recipients: vec![index],
                        size: entry.size,
                    },
                )),
            }
        }
        let flight = InFlight {
            entry,
            jobs_left: jobs.len(),
            result: JobResult {
                outcomes: immediate,
                ..JobResult::default()
            },
            agent: Arc::clone(agent),
            recording: false,
        };
        self.lock().in_flight.insert(id, flight);
        if jobs.is_empty() {
            self.finish_if_done(id);
            return;
        }
        for (destination, job) in jobs {
            self.enqueue(destination, job);
        }
    }

    /// Puts a job in its destination's queue and starts workers as its window allows; a
    /// destination that is down defers it at once.
    fn enqueue(self: &Arc<Scheduler>, destination: Destination, job: Job) {
        let mut state = self.lock();
        let limits = &job.agent.limits;
        let initial = limits
            .initial_window
            .clamp(1, limits.per_destination.max(1));
        let dest = state
            .dests
            .entry(destination.clone())
            .or_insert_with(|| Dest {
                queue: VecDeque::new(),
                active: 0,
                idle: 0,
                window: initial,
                failures: 0,
                down_until: None,
                arrived: Arc::new(Notify::new()),
            });
        if let Some(until) = dest.down_until {
            if Instant::now() < until {
                drop(state);
                self.defer_down(&destination, job, until);
                return;
            }
        }
        dest.queue.push_back(job);
        self.dispatch(&mut state, &destination);
    }

    /// Starts workers for `destination` while its window and its queue allow.
    fn dispatch(self: &Arc<Scheduler>, state: &mut State, destination: &Destination) {
        let Some(dest) = state.dests.get_mut(destination) else {
            return;
        };
        if dest.idle > 0 {
            dest.arrived.notify_one();
        }
        // As many workers as the window allows and the work needs: those busy now, plus one
        // per queued job beyond what idle workers will take.
        let busy = dest.active - dest.idle;
        let target = dest.window.min(busy + dest.queue.len());
        let start = target.saturating_sub(dest.active);
        dest.active += start;
        state.workers += start;
        for _ in 0..start {
            let me = Arc::clone(self);
            let destination = destination.clone();
            let span = info_span!("destination", to = %destination);
            tokio::spawn(async move { me.worker(destination).await }.instrument(span));
        }
    }

    /// Completes a job of a destination that is down without connecting.
    fn defer_down(self: &Arc<Scheduler>, destination: &Destination, job: Job, until: Instant) {
        let wait = until.saturating_duration_since(Instant::now());
        let outcome = AttemptOutcome::Transient(Attempt {
            remote_host: None,
            reply: RemoteReply {
                code: 451,
                status: Some(EnhancedStatus(4, 4, 1)),
                text: format!(
                    "{destination} is down (its connections failed); not tried for {}s",
                    wait.as_secs()
                ),
            },
        });
        let result = JobResult {
            outcomes: job
                .recipients
                .iter()
                .map(|&i| (i, outcome.clone()))
                .collect(),
            ..JobResult::default()
        };
        self.complete(job.id, result);
    }

    /// One worker: takes the destination's jobs one after another on one connection.
    async fn worker(self: Arc<Scheduler>, destination: Destination) {
        let mut stopping = self.stopping.subscribe();
        let remote = destination != Destination::Local;
        let permits = match remote {
            false => Arc::clone(&self.local),
            true => Arc::clone(&self.connections),
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                // Every connection is in use: idle ones are asked to close.
                if remote {
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    self.wanted.notify_waiters();
                }
                let permit = tokio::select! {
                    permit = permits.acquire_owned() => permit.ok(),
                    _ = stopping.wait_for(|s| *s != Stop::Running) => None,
                };
                if remote {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                permit
            }
        };
        let mut connection: Option<Connection> = None;
        // The agent's, once a job has brought it.
        let mut idle = IDLE;
        if permit.is_some() {
            loop {
                let next = {
                    let mut state = self.lock();
                    let dest = state.dests.get_mut(&destination);
                    dest.and_then(|d| d.queue.pop_front())
                };
                let Some(job) = next else {
                    if !self
                        .wait_for_job(&destination, idle, remote, &mut stopping)
                        .await
                    {
                        break;
                    }
                    continue;
                };
                if *stopping.borrow() != Stop::Running {
                    // Not started: the message stays leased and is made due again at stop.
                    break;
                }
                let id = job.id;
                idle = job.agent.limits.idle;
                let work = deliver(&destination, &job, &mut connection);
                let result = tokio::select! {
                    result = work => Some(result),
                    _ = stopping.wait_for(|s| *s == Stop::Now) => None,
                };
                let Some(result) = result else {
                    connection = None;
                    break;
                };
                self.feedback(&destination, &result, &job.agent);
                self.complete(id, result);
            }
        }
        if let Some(connection) = connection {
            if connection.is_ready() {
                let _ = tokio::time::timeout(Duration::from_secs(5), connection.quit()).await;
            }
        }
        let mut state = self.lock();
        if let Some(dest) = state.dests.get_mut(&destination) {
            dest.active -= 1;
            if dest.active == 0 && dest.queue.is_empty() && dest.down_until.is_none() {
                state.dests.remove(&destination);
            }
        }
        state.workers -= 1;
        drop(state);
        self.changed.notify_waiters();
    }

    /// Waits up to [`Limits::idle`] for a job for `destination`; false when none came, when another
    /// destination wants the connection (`remote`: it holds one), or when stopping.
    async fn wait_for_job(
        &self,
        destination: &Destination,
        idle: Duration,
        remote: bool,
        stopping: &mut watch::Receiver<Stop>,
    ) -> bool {
        // Registered before the check, so a worker that starts waiting in between wakes us.
        let wanted = self.wanted.notified();
        tokio::pin!(wanted);
        wanted.as_mut().enable();
        if remote && self.waiting.load(Ordering::SeqCst) > 0 {
            let state = self.lock();
            return state
                .dests
                .get(destination)
                .is_some_and(|d| !d.queue.is_empty());
        }
        let arrived = {
            let mut state = self.lock();
            let Some(dest) = state.dests.get_mut(destination) else {
                return false;
            };
            dest.idle += 1;
            Arc::clone(&dest.arrived)
        };
        let woken = tokio::select! {
            _ = arrived.notified() => true,
            _ = tokio::time::sleep(idle) => false,
            _ = &mut wanted, if remote => false,
            _ = stopping.wait_for(|s| *s != Stop::Running) => false,
        };
        let mut state = self.lock();
        if let Some(dest) = state.dests.get_mut(destination) {
            dest.idle -= 1;
            if !woken && !dest.queue.is_empty() {
                return true;
            }
        }
        woken
    }

    /// Adjusts the destination's window after a job, and marks it down after repeated
    /// connection-level failures (its queued jobs are deferred without connecting). After
    /// the down period the window is 1, so the first job probes; it coming through ends the
    /// down state, it failing starts another period.
    fn feedback(
        self: &Arc<Scheduler>,
        destination: &Destination,
        result: &JobResult,
        agent: &Agent,
    ) {
        let limits = &agent.limits;
        let down = &agent.reports.counters.destinations_down;
        let mut state = self.lock();
        let Some(dest) = state.dests.get_mut(destination) else {
            return;
        };
        if result.completed {
            dest.failures = 0;
            if dest.down_until.take().is_some() {
                down.fetch_sub(1, Ordering::Relaxed);
                info!(%destination, "destination is up again");
            }
            dest.window = (dest.window + 1).min(limits.per_destination.max(1));
        } else if result.connection_failed {
            dest.failures += 1;
            dest.window = dest.window.saturating_sub(1).max(1);
            if dest.failures >= limits.dead_after.max(1) {
                let until = Instant::now() + limits.dead_backoff;
                if dest.down_until.replace(until).is_none() {
                    down.fetch_add(1, Ordering::Relaxed);
                }
                dest.window = 1;
                warn!(
                    %destination,
                    failures = dest.failures,
                    backoff = limits.dead_backoff.as_secs(),
                    "destination is down: its mail is deferred without connecting"
                );
                let queued: Vec<Job> = dest.queue.drain(..).collect();
                drop(state);
                for job in queued {
                    self.defer_down(destination, job, until);
                }
                return;
            }
        }
        self.dispatch(&mut state, destination);
    }

    /// Merges a job's result into its message; records the message when it was the last.
    fn complete(self: &Arc<Scheduler>, id: QueueId, result: JobResult) {
        {
            let mut state = self.lock();
            let Some(flight) = state.in_flight.get_mut(&id) else {
                return;
            };
            flight.jobs_left = flight.jobs_left.saturating_sub(1);
            let r = &mut flight.result;
            r.outcomes.extend(result.outcomes);
            r.passed_on.extend(result.passed_on);
            r.relayed.extend(result.relayed);
            if r.sent_message_id.is_none() {
                r.sent_message_id = result.sent_message_id;
            }
        }
        self.finish_if_done(id);
    }

    /// Records a message whose jobs are all done (on the blocking pool: RocksDB and fsync).
    fn finish_if_done(self: &Arc<Scheduler>, id: QueueId) {
        let taken = {
            let mut state = self.lock();
            match state.in_flight.get_mut(&id) {
                Some(f) if f.jobs_left == 0 && !f.recording => {
                    f.recording = true;
                    Some((
                        Arc::clone(&f.agent),
                        f.entry.clone(),
                        std::mem::take(&mut f.result),
                    ))
                }
                _ => None,
            }
        };
        let Some((agent, entry, result)) = taken else {
            return;
        };
        let me = Arc::clone(self);
        let now = self.now();
        tokio::spawn(async move {
            if let (Some(site), Some(id)) = (&agent.site_sent, &result.sent_message_id) {
                site.record(id, now).await;
            }
            let attempted = crate::agent::Attempted {
                outcomes: result.outcomes,
                passed_on: result.passed_on,
                relayed: result.relayed,
                sent_message_id: result.sent_message_id,
            };
            me.count(&attempted.outcomes);
            let recorded = tokio::task::spawn_blocking(move || {
                let span = info_span!("delivery", queue_id = %id);
                span.in_scope(|| agent.record(id, &entry, attempted, now))
            })
            .await;
            match recorded {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(queue_id = %id, error = %e, "recording a delivery attempt failed")
                }
                Err(e) => warn!(queue_id = %id, error = %e, "recording task failed"),
            }
            me.lock().in_flight.remove(&id);
            me.changed.notify_waiters();
        });
    }

    /// Stops: no new jobs; transactions under way may finish within `grace`; then the rest
    /// are cut off and every message not recorded is made due again at once.
    async fn stop(self: &Arc<Scheduler>, agent: &Agent, grace: Duration) {
        self.stopping.send_replace(Stop::Draining);
        let deadline = Instant::now() + grace;
        loop {
            let notified = self.changed.notified();
            if self.lock().workers == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        self.stopping.send_replace(Stop::Now);
        loop {
            let notified = self.changed.notified();
            if self.lock().workers == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
        // Attempts being written finish (they are quick); the rest were cut off.
        loop {
            let notified = self.changed.notified();
            if !self.lock().in_flight.values().any(|f| f.recording) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
        let unfinished: Vec<QueueId> = self.lock().in_flight.keys().copied().collect();
        if unfinished.is_empty() {
            return;
        }
        info!(
            messages = unfinished.len(),
            "shutting down: unfinished deliveries are due again at once"
        );
        let queue = agent.queue.clone();
        let now = self.now();
        let _ = tokio::task::spawn_blocking(move || {
            for id in unfinished {
                if let Err(e) = queue.flush(Some(id), now) {
                    warn!(queue_id = %id, error = %e, "could not make an unfinished message due again");
                }
            }
        })
        .await;
    }

    fn count(&self, outcomes: &[(usize, AttemptOutcome)]) {
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, outcome) in outcomes {
            match outcome {
                AttemptOutcome::Delivered(_) => counted.delivered += 1,
                AttemptOutcome::Transient(_) => counted.deferred += 1,
                AttemptOutcome::Permanent(_) => counted.failed += 1,
            }
        }
    }

    fn now(&self) -> UnixTime {
        self.fixed_now
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(|| self.clock.now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Delivers one job: into Maildirs, or over the worker's connection (opened, or opened anew,
/// as needed).
async fn deliver(
    destination: &Destination,
    job: &Job,
    connection: &mut Option<Connection>,
) -> JobResult {
    // Room for the message first: a wait for memory happens before a connection is opened,
    // and the share covers a second try on a fresh connection too.
    let mut memory = memory_for(job, job.size.min(STREAMED_SHARE)).await;
    match destination {
        Destination::Local => deliver_local(job).await,
        Destination::Relay { hop, .. } => deliver_relay(job, hop, connection, &mut memory).await,
        Destination::Mx { domain, port } => {
            deliver_mx(job, domain, *port, connection, &mut memory).await
        }
    }
}

async fn deliver_local(job: &Job) -> JobResult {
    let agent = Arc::clone(&job.agent);
    let (id, recipients) = (job.id, job.recipients.clone());
    let now = job.now;
    let done = tokio::task::spawn_blocking(move || agent.deliver_local(id, &recipients, now)).await;
    match done {
        Ok(Some(outcomes)) => JobResult {
            outcomes,
            completed: true,
            ..JobResult::default()
        },
        // Deleted meanwhile.
        Ok(None) => JobResult::default(),
        Err(e) => JobResult {
            outcomes: job
                .recipients
                .iter()
                .map(|&i| {
                    (
                        i,
                        local_failure(&format!("local delivery task failed: {e}")),
                    )
                })
                .collect(),
            ..JobResult::default()
        },
    }
}

async fn deliver_relay(
    job: &Job,
    hop: &NextHop,
    connection: &mut Option<Connection>,
    memory: &mut Reservation,
) -> JobResult {
    let agent = &job.agent;
    let route = &agent.routes.routes[job.route.unwrap_or_default()];
    if let Some(address) = hop.endpoint.socket_addr() {
        if agent.own.is_self(address) {
            return all(job, crate::agent::loops_back(&hop.host));
        }
    }
    let reused = usable(connection);
    if !reused {
        *connection = match Connection::open(hop, &route.client).await {
            Ok(c) => Some(c),
            Err(e) => return failed_connection(job, hop, &e),
        };
    }
    let Some(c) = connection.as_mut() else {
        return JobResult::default();
    };
    let result = send(job, c, route.client.lmtp, memory).await;
    if !(reused && result.connection_failed) {
        return result;
    }
    // The next hop closed the idle connection meanwhile: once more on a new one.
    match Connection::open(hop, &route.client).await {
        Ok(c) => send(job, connection.insert(c), route.client.lmtp, memory).await,
        Err(e) => {
            *connection = None;
            failed_connection(job, hop, &e)
        }
    }
}

async fn deliver_mx(
    job: &Job,
    domain: &Domain,
    port: u16,
    connection: &mut Option<Connection>,
    memory: &mut Reservation,
) -> JobResult {
    let agent = &job.agent;
    let route = &agent.routes.routes[job.route.unwrap_or_default()];
    // A connection kept from the last job to this domain is used first.
    if usable(connection) {
        let Some(c) = connection.as_mut() else {
            return JobResult::default();
        };
        let result = send(job, c, false, memory).await;
        if !result.connection_failed {
            return result;
        }
        *connection = None;
    }
    let Some(resolver) = &agent.resolver else {
        return all(
            job,
            crate::agent::unroutable(domain, Unroutable::Temporary("no resolver".into())),
        );
    };
    let hosts = match resolver.mx_hosts(domain).await {
        Ok(hosts) => hosts,
        Err(why) => return all(job, crate::agent::unroutable(domain, why)),
    };
    let mut last: Option<JobResult> = None;
    let mut tried = 0;
    'hosts: for host in hosts {
        let ips = match resolver.addresses(&host).await {
            Ok(ips) => ips,
            Err(why) => {
                warn!(%host, "{}", backstop_types::text::Escaped(&crate::agent::describe(&why)));
                last.get_or_insert_with(|| all(job, crate::agent::unroutable(domain, why)));
                continue;
            }
        };
        for ip in ips {
            if tried == MAX_MX_ADDRESSES {
                break 'hosts;
            }
            let address = SocketAddr::new(ip, port);
            // We are this MX: hosts of this preference or worse would only send it back.
            if agent.own.is_self(address) {
                warn!(%host, %ip, "an MX host of {domain} is this server");
                return match last {
                    Some(last) => last,
                    None => all(job, crate::agent::loops_back(domain.as_str())),
                };
            }
            tried += 1;
            let hop = NextHop {
                endpoint: Endpoint::from(address),
                host: host.clone(),
            };
            let result = match Connection::open(&hop, &route.client).await {
                Ok(c) => {
                    let c = connection.insert(c);
                    send(job, c, false, memory).await
                }
                Err(e) => {
                    let result = failed_connection(job, &hop, &e);
                    if !e.try_next_host() {
                        return result;
                    }
                    result
                }
            };
            if !result.connection_failed {
                return result;
            }
            *connection = None;
            warn!(%host, %ip, "trying the next MX address");
            last = Some(result);
        }
    }
    last.unwrap_or_else(|| {
        all(
            job,
            crate::agent::unroutable(
                domain,
                Unroutable::Temporary(format!("no MX host of {domain} could be reached")),
            ),
        )
    })
}

/// What a delivery covers before it reads a message (whose record says only its size): the
/// head of a spooled message and the chunks on their way out, or a message stored whole below
/// the spool threshold (256 KiB by default). Once read, the share is made what it holds.
const STREAMED_SHARE: u64 = 1024 * 1024 + 256 * 1024;

/// A chunk of a spooled message on its way out (the SMTP client reads 64 KiB at a time).
const STREAM_CHUNK: u64 = 64 * 1024;

/// Makes `share` cover `size` octets, waiting while the budget has no room; a size larger than
/// the whole budget goes with what it has rather than never (as [`memory_for`]).
async fn grow(job: &Job, share: &mut Reservation, size: u64) {
    let budget = &job.agent.memory;
    if size <= share.held() || size > budget.limit() {
        return;
    }
    let mut waiting = false;
    while !share.cover(size) {
        if !waiting {
            debug!(queue_id = %job.id, size, "waiting for memory to read the message");
            waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A share of the memory budget for `job`'s message, taken before the message is read. While
/// the budget is used up (by sessions receiving, or other deliveries) it waits: delivery can
/// wait, and what it waits for is given back as soon as those messages are stored or sent. A
/// message larger than the whole budget, or one whose size its record does not say, goes
/// without a share rather than never.
async fn memory_for(job: &Job, size: u64) -> Reservation {
    let mut share = Reservation::new(&job.agent.memory);
    grow(job, &mut share, size).await;
    share
}

/// Sends the job's message over an open connection: the body is read from the queue now.
async fn send(job: &Job, c: &mut Connection, lmtp: bool, memory: &mut Reservation) -> JobResult {
    let agent = Arc::clone(&job.agent);
    let id = job.id;
    let read = tokio::task::spawn_blocking(move || agent.queue.message(id)).await;
    let message = match read {
        Ok(Ok(Some(message))) => message,
        // Deleted meanwhile: nothing to send, nothing to record.
        Ok(Ok(None)) => return JobResult::default(),
        Ok(Err(e)) => return all(job, local_failure(&format!("reading the message: {e}"))),
        Err(e) => return all(job, local_failure(&format!("reading the message: {e}"))),
    };
    let envelope = &message.entry.envelope;
    // What is held of it: the head and the chunks on their way out, or all of it.
    let held = match message.body.tail() {
        Some(_) => message.body.head().len() as u64 + 2 * STREAM_CHUNK,
        None => message.body.len(),
    };
    grow(job, memory, held).await;
    let (sender, prefix) = match message.body.in_memory() {
        Some(whole) => job.agent.identify(envelope, whole, job.now),
        // A DKIM signature covers the whole body: our own user's spooled message is read
        // whole to sign it, within the memory budget.
        None if crate::agent::ours(envelope, &job.agent.routes.local_domains) => {
            grow(job, memory, held + message.body.len()).await;
            let body = message.body.clone();
            match tokio::task::spawn_blocking(move || body.read_all()).await {
                Ok(Ok(whole)) => job.agent.identify(envelope, &whole, job.now),
                Ok(Err(e)) => return all(job, local_failure(&format!("reading the message: {e}"))),
                Err(e) => return all(job, local_failure(&format!("reading the message: {e}"))),
            }
        }
        None => job.agent.identify(envelope, &[], job.now),
    };
    let recipients: Vec<(usize, &backstop_types::Recipient)> = job
        .recipients
        .iter()
        .map(|&i| (i, &envelope.recipients[i]))
        .collect();
    let txn = Transaction {
        sender: &sender,
        recipients,
        ret: envelope.dsn.ret,
        envid: envelope.dsn.envid.as_deref(),
        body_type: envelope.body_type,
        smtputf8: envelope.smtputf8,
        size: prefix.len() as u64 + message.body.len(),
    };
    let pieces = [prefix.as_bytes(), message.body.head()];
    let body = Outgoing {
        pieces: &pieces,
        tail: message.body.tail(),
    };
    let result = c.deliver(&txn, body).await;
    let connection_failed = result
        .error
        .as_ref()
        .is_some_and(|e| e.is_connection_level() && e.try_next_host());
    let mut job_result = JobResult {
        completed: !connection_failed,
        connection_failed,
        ..JobResult::default()
    };
    if result.passed_on {
        job_result.passed_on = job.recipients.clone();
    }
    // LMTP is final delivery; SMTP to a next hop without DSN is "relayed".
    if !lmtp && !result.passed_on {
        job_result.relayed = job.recipients.clone();
    }
    let delivered_remote = result
        .outcomes
        .iter()
        .any(|(_, o)| matches!(o, AttemptOutcome::Delivered(_)));
    if delivered_remote && crate::agent::ours(envelope, &job.agent.routes.local_domains) {
        job_result.sent_message_id = crate::agent::message_id(message.body.head());
    }
    job_result.outcomes = result.outcomes;
    job_result
}

fn usable(connection: &Option<Connection>) -> bool {
    connection
        .as_ref()
        .is_some_and(|c| c.is_ready() && c.age() < AGE)
}

fn failed_connection(job: &Job, hop: &NextHop, error: &ClientError) -> JobResult {
    let remote = match error.source {
        backstop_smtp_client::Source::Local => None,
        _ => Some(hop.remote()),
    };
    JobResult {
        outcomes: job
            .recipients
            .iter()
            .map(|&i| (i, error.outcome(remote.as_deref())))
            .collect(),
        connection_failed: error.is_connection_level() || error.try_next_host(),
        ..JobResult::default()
    }
}

fn all(job: &Job, outcome: AttemptOutcome) -> JobResult {
    JobResult {
        outcomes: job
            .recipients
            .iter()
            .map(|&i| (i, outcome.clone()))
            .collect(),
        ..JobResult::default()
    }
}

fn local_failure(text: &str) -> AttemptOutcome {
    AttemptOutcome::Transient(Attempt {
        remote_host: None,
        reply: RemoteReply {
            code: 451,
            status: Some(EnhancedStatus(4, 3, 0)),
            text: text.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests;
