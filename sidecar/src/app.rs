//! One state machine per app: stopped → starting → ready → stopping → stopped, and
//! failed (with backoff after repeated failures). Callers wait on state changes
//! through a watch channel (a long poll), never on a timer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::config::{AppConfig, Readiness};
use crate::leftovers::{boot_id, unix_ms, HeldPort, Record, State, StateFile};
use crate::metrics::Metrics;
use crate::ports::{self, PortBook};
use crate::process::{ChildHandle, Launch, Spawner};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Ready,
    Stopping,
    Failed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }
}

/// A failure a caller is told about: a 503 with Retry-After.
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub reason: String,
    pub retry_after: Duration,
}

/// A successful ensure or activity report.
#[derive(Debug, Clone)]
pub struct Granted {
    pub port: u16,
    pub lease: Duration,
    /// Set when the caller waited for a start.
    pub waited: Option<Duration>,
}

/// What every app shares.
pub struct Context {
    pub spawner: Spawner,
    pub metrics: Metrics,
    pub lease: Duration,
    state_file: StateFile,
    /// Children and ports, persisted together in the state file.
    book: Mutex<Book>,
    /// Set once SIGTERM or SIGINT arrived: nothing starts any more.
    shutting_down: AtomicBool,
}

struct Book {
    children: Vec<Record>,
    ports: PortBook,
}

impl Context {
    /// `earlier`: what the previous run of the sidecar left in the state directory
    /// (its leftovers already stopped): its ports stay quarantined, since Envoy
    /// workers may still hold leases for them.
    pub fn new(
        spawner: Spawner,
        lease: Duration,
        first_port: u16,
        fixed_ports: impl IntoIterator<Item = u16>,
        state_file: StateFile,
        earlier: Option<State>,
    ) -> Context {
        let mut ports = PortBook::new(first_port, fixed_ports);
        if let Some(earlier) = earlier {
            let now = Instant::now();
            let now_ms = unix_ms(SystemTime::now());
            // Its grants may be used until its lease ran out, counted from now (it may
            // have died just now), plus the margin.
            let longest = Duration::from_millis(earlier.lease_ms) + ports::QUARANTINE_MARGIN;
            let held = earlier.children.iter().map(|c| (c.app.clone(), c.port, None));
            let held = held.chain(earlier.ports.iter().map(|p| (p.app.clone(), p.port, p.until_unix_ms)));
            for (app, port, until_ms) in held.filter(|(_, port, _)| *port != 0) {
                let left = match until_ms {
                    None => longest,
                    Some(ms) => Duration::from_millis(ms.saturating_sub(now_ms)).min(longest),
                };
                if !left.is_zero() {
                    ports.quarantine(&app, port, now + left);
                }
            }
        }
        let ctx = Context {
            spawner,
            metrics: Metrics::default(),
            lease,
            state_file,
            book: Mutex::new(Book { children: Vec::new(), ports }),
            shutting_down: AtomicBool::new(false),
        };
        if let Ok(book) = ctx.book.lock() {
            ctx.persist(&book);
        }
        ctx
    }

    fn persist(&self, book: &Book) {
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        let ports = book
            .ports
            .held(now)
            .into_iter()
            .map(|(app, port, left)| HeldPort {
                app,
                port,
                until_unix_ms: left.map(|l| now_ms.saturating_add(l.as_millis().try_into().unwrap_or(u64::MAX))),
            })
            .collect();
        self.state_file.write(&State {
            boot_id: boot_id(),
            lease_ms: self.lease.as_millis().try_into().unwrap_or(u64::MAX),
            children: book.children.clone(),
            ports,
        });
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        match self.book.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn remember_child(&self, app: &str, child: &ChildHandle, port: u16) {
        let mut book = self.book();
        book.children.push(Record { app: app.to_string(), pid: child.pid, start_time: child.start_time, port });
        self.persist(&book);
    }

    fn forget_child(&self, pid: u32) {
        let mut book = self.book();
        book.children.retain(|r| r.pid != pid);
        self.persist(&book);
    }

    fn take_port(&self, app: &str, fixed: Option<u16>) -> Option<u16> {
        let mut book = self.book();
        let port = book.ports.take(app, fixed, Instant::now(), &ports::is_free)?;
        self.persist(&book);
        Some(port)
    }

    /// `app` no longer uses `port`: other apps may take it once every lease granted
    /// for it has run out.
    fn release_port(&self, app: &str, port: u16) {
        let mut book = self.book();
        book.ports.release(app, port, Instant::now() + self.lease + ports::QUARANTINE_MARGIN);
        self.persist(&book);
    }

    /// From now on, nothing starts: ensure calls answer 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

struct Inner {
    phase: Phase,
    /// Bumped at every start; stale tasks of an older start change nothing.
    generation: u64,
    port: Option<u16>,
    pid: Option<u32>,
    child: Option<Arc<ChildHandle>>,
    last_activity: Instant,
    lease_until: Instant,
    /// reporter id → (requests in flight, when it last reported); only busy ones.
    reporters: HashMap<String, (u64, Instant)>,
    consecutive_failures: u32,
    failed_until: Instant,
    /// The generation whose start failed, and why.
    failure: Option<(u64, String)>,
    ready_since: Option<Instant>,
    restarts: u64,
    /// Start tasks still running (shutdown waits for them).
    starts_running: usize,
}

impl Inner {
    fn new(now: Instant) -> Inner {
        Inner {
            phase: Phase::Stopped,
            generation: 0,
            port: None,
            pid: None,
            child: None,
            last_activity: now,
            lease_until: now,
            reporters: HashMap::new(),
            consecutive_failures: 0,
            failed_until: now,
            failure: None,
            ready_since: None,
            restarts: 0,
            starts_running: 0,
        }
    }

    /// True when the child has exited (a crash whose cleanup is under way).
    fn exited(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.has_exited())
    }

    /// A worker's report: requests it started since its last report, and how many it
    /// has in flight now. Requests in flight are activity, and so is the end of the
    /// last of them: idle time counts from when a worker was last busy, not from when
    /// its long request started.
    fn record_activity(&mut self, reporter: &str, started: u64, in_flight: u64, now: Instant, expiry: Duration) {
        let was_busy = self.reporters.get(reporter).is_some_and(|(n, _)| *n > 0);
        if started > 0 || in_flight > 0 || was_busy {
            self.last_activity = now;
        }
        if !reporter.is_empty() {
            if in_flight > 0 {
                self.reporters.insert(reporter.to_string(), (in_flight, now));
            } else {
                self.reporters.remove(reporter);
            }
        }
        self.reporters.retain(|_, (_, at)| now.duration_since(*at) < expiry);
    }

    /// True when the app may be stopped for idleness at `now`: ready, no worker
    /// reporting a request in flight, the last lease run out (plus a grace for a
    /// report still on its way), and no activity for `idle`.
    fn idle(&self, now: Instant, idle: Duration, expiry: Duration) -> bool {
        let busy = self.reporters.values().any(|(in_flight, at)| *in_flight > 0 && now.duration_since(*at) < expiry);
        self.phase == Phase::Ready && !busy && now >= self.lease_until + STOP_GRACE && now.duration_since(self.last_activity) >= idle
    }
}

pub struct App {
    pub config: AppConfig,
    ctx: Arc<Context>,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

/// How long to wait before the next start after `failures` consecutive failures:
/// the first failure is retried at once, then 1 s, 2 s, 4 s … at most 60 s.
pub fn backoff(failures: u32) -> Duration {
    if failures < 2 {
        Duration::ZERO
    } else {
        Duration::from_secs(1u64 << (failures - 2).min(6)).min(Duration::from_secs(60))
    }
}

/// A child that stayed ready this long no longer counts earlier failures.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// While a child starts, how often its port is knocked on: what a cold start waits
/// at most past readiness.
const LISTEN_CHECK_EVERY: Duration = Duration::from_millis(1);
/// A reporter silent this many leases is presumed gone (its Envoy died). A busy
/// worker reports at least once per lease (before its lease runs out).
const REPORTER_EXPIRY_LEASES: u32 = 10;
/// How long past the last lease an idle stop waits: a worker's report of a request it
/// started just before its lease stopped being usable may still be on its way.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

impl App {
    pub fn new(config: AppConfig, ctx: Arc<Context>) -> Arc<App> {
        let now = Instant::now();
        ctx.metrics.set_state(&config.name, Phase::Stopped.name());
        Arc::new(App { config, ctx, inner: Mutex::new(Inner::new(now)), changed: watch::channel(0).0 })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn set_phase(&self, inner: &mut Inner, phase: Phase) {
        inner.phase = phase;
        self.ctx.metrics.set_state(&self.config.name, phase.name());
        self.changed.send_modify(|n| *n += 1);
    }

    fn grant(&self, inner: &mut Inner, waited: Option<Duration>) -> Option<Granted> {
        let port = inner.port?;
        let until = Instant::now() + self.ctx.lease;
        if until > inner.lease_until {
            inner.lease_until = until;
        }
        Some(Granted { port, lease: self.ctx.lease, waited })
    }

    /// Makes sure the app is up, starting it if need be, and waits until it is ready.
    pub async fn ensure(self: &Arc<App>) -> Result<Granted, Unavailable> {
        let began = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.start_timeout + self.config.stop_timeout + Duration::from_secs(5);
        let mut waited = false;
        // The start this caller is waiting on: its failure is this caller's answer.
        let mut joined: Option<u64> = None;
        loop {
            let mut changes = self.changed.subscribe();
            {
                let mut inner = self.lock();
                let now = Instant::now();
                if self.ctx.is_shutting_down() {
                    return Err(Unavailable { reason: "the sidecar is shutting down".into(), retry_after: Duration::from_secs(1) });
                }
                inner.last_activity = now;
                if let (Some(gen), Some((failed_gen, reason))) = (joined, &inner.failure) {
                    if gen == *failed_gen {
                        return Err(Unavailable {
                            reason: reason.clone(),
                            retry_after: backoff(inner.consecutive_failures).max(Duration::from_secs(1)),
                        });
                    }
                }
                match inner.phase {
                    // Exited, and its crash is being cleaned up: wait for the outcome
                    // rather than grant a lease on a closed port.
                    Phase::Ready if inner.exited() => waited = true,
                    Phase::Ready => {
                        let waited = waited.then(|| began.elapsed());
                        if let Some(w) = waited {
                            self.ctx.metrics.observe("wsgiproxy_sidecar_ensure_wait_seconds", &self.config.name, w);
                        }
                        if let Some(granted) = self.grant(&mut inner, waited) {
                            return Ok(granted);
                        }
                    }
                    Phase::Failed if now < inner.failed_until => {
                        let reason = inner.failure.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
                        return Err(Unavailable {
                            reason: format!("{reason} (retrying after a back-off)"),
                            retry_after: (inner.failed_until - now).max(Duration::from_secs(1)),
                        });
                    }
                    Phase::Stopped | Phase::Failed => {
                        self.begin_start(&mut inner);
                        waited = true;
                        joined = Some(inner.generation);
                    }
                    Phase::Starting => {
                        waited = true;
                        joined = Some(inner.generation);
                    }
                    Phase::Stopping => waited = true,
                }
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return Err(Unavailable { reason: "the app did not become ready in time".into(), retry_after: Duration::from_secs(1) });
            }
        }
    }

    /// Records a worker's activity; renews its lease when the app is ready.
    pub fn activity(&self, reporter: &str, started: u64, in_flight: u64) -> Result<Granted, Phase> {
        let mut inner = self.lock();
        inner.record_activity(reporter, started, in_flight, Instant::now(), self.reporter_expiry());
        if inner.exited() {
            Err(Phase::Failed)
        } else if inner.phase == Phase::Ready {
            self.grant(&mut inner, None).ok_or(inner.phase)
        } else {
            Err(inner.phase)
        }
    }

    fn reporter_expiry(&self) -> Duration {
        self.ctx.lease * REPORTER_EXPIRY_LEASES
    }

    fn begin_start(self: &Arc<App>, inner: &mut Inner) {
        inner.generation += 1;
        inner.failure = None;
        inner.starts_running += 1;
        self.set_phase(inner, Phase::Starting);
        let app = Arc::clone(self);
        let generation = inner.generation;
        tokio::spawn(async move {
            app.run_start(generation).await;
            let mut inner = app.lock();
            inner.starts_running = inner.starts_running.saturating_sub(1);
            app.changed.send_modify(|n| *n += 1);
        });
    }

    async fn run_start(self: &Arc<App>, generation: u64) {
        let name = &self.config.name;
        let began = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        for _attempt in 0..3 {
            let Some(port) = self.ctx.take_port(name, self.config.port) else {
                return self.fail(generation, "no free port".into());
            };
            self.ctx.metrics.inc("wsgiproxy_sidecar_spawns_total", &[("app", name)]);
            let launched = self.ctx.spawner.spawn(Launch { app: self.config.clone(), port }).await;
            let child = match launched {
                Ok(child) => Arc::new(child),
                Err(e) => {
                    self.ctx.release_port(name, port);
                    return self.fail(generation, format!("cannot start {:?}: {e}", self.config.command[0]));
                }
            };
            tracing::info!(app = %name, pid = child.pid, port, "started");
            self.ctx.remember_child(name, &child, port);
            let current = {
                let mut inner = self.lock();
                let current = inner.generation == generation;
                if current {
                    inner.port = Some(port);
                    inner.pid = Some(child.pid);
                    inner.child = Some(Arc::clone(&child));
                }
                current
            };
            let readied = if current { self.wait_ready(&child, port, deadline, generation).await } else { Readied::Abandoned };
            match readied {
                Readied::Ready => {
                    let mut inner = self.lock();
                    if inner.generation != generation {
                        // Shut down meanwhile: the shutdown took the child and stops it.
                        return;
                    }
                    inner.ready_since = Some(Instant::now());
                    self.set_phase(&mut inner, Phase::Ready);
                    drop(inner);
                    self.ctx.metrics.observe("wsgiproxy_sidecar_start_seconds", name, began.elapsed());
                    tracing::info!(app = %name, port, "ready after {:?}", began.elapsed());
                    let app = Arc::clone(self);
                    tokio::spawn(async move { app.watch_exit(generation, child, port).await });
                    return;
                }
                Readied::Abandoned => {
                    // Shut down while it started: this child is nobody's.
                    child.kill_group(Duration::from_secs(2)).await;
                    self.ctx.forget_child(child.pid);
                    self.ctx.release_port(name, port);
                    return;
                }
                Readied::Exited(description) => {
                    // Whatever it started goes too, before anything is concluded from
                    // the port: a grandchild of ours holding it is not a stranger.
                    child.kill_group(Duration::from_secs(2)).await;
                    self.ctx.forget_child(child.pid);
                    let taken = self.config.port.is_none() && !ports::is_free(port);
                    self.ctx.release_port(name, port);
                    // An allocated port someone else took between our check and the child's bind.
                    if taken {
                        tracing::warn!(app = %name, port, "the child could not use its port (taken meanwhile): starting again on another");
                        continue;
                    }
                    self.ctx.metrics.inc("wsgiproxy_sidecar_crashes_total", &[("app", name)]);
                    return self.fail(generation, format!("the app exited before it was ready ({description})"));
                }
                Readied::TimedOut => {
                    child.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(2)).await;
                    self.ctx.forget_child(child.pid);
                    self.ctx.release_port(name, port);
                    self.ctx.metrics.inc("wsgiproxy_sidecar_stops_total", &[("app", name), ("reason", "start_timeout")]);
                    return self
                        .fail(generation, format!("the app did not become ready within {:?} and was killed", self.config.start_timeout));
                }
            }
        }
        self.fail(generation, "the app could not bind a port after 3 attempts".into());
    }

    async fn wait_ready(&self, child: &ChildHandle, port: u16, deadline: tokio::time::Instant, generation: u64) -> Readied {
        let mut exited = child.exited.clone();
        let mut changes = self.changed.subscribe();
        let mut next_probe = tokio::time::Instant::now();
        loop {
            if let Some(description) = exited.borrow().clone() {
                return Readied::Exited(description);
            }
            if self.lock().generation != generation {
                return Readied::Abandoned;
            }
            // Knock often (a loopback connect that is refused costs tens of µs, where
            // reading /proc/net/tcp can cost a millisecond), and probe for real as soon
            // as the port answers, else every 50 ms. Whose socket it is, /proc says once.
            let now = tokio::time::Instant::now();
            if now >= next_probe || accepts_connections(port).await {
                if probe(&self.config.readiness, port).await && ports::listened_by_group(port, child.pid) {
                    return Readied::Ready;
                }
                next_probe = tokio::time::Instant::now() + PROBE_EVERY;
            }
            tokio::select! {
                _ = exited.changed() => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep(LISTEN_CHECK_EVERY) => {}
                _ = tokio::time::sleep_until(deadline) => return Readied::TimedOut,
            }
        }
    }

    fn fail(&self, generation: u64, reason: String) {
        tracing::warn!(app = %self.config.name, "{reason}");
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        inner.consecutive_failures += 1;
        inner.failed_until = Instant::now() + backoff(inner.consecutive_failures);
        inner.failure = Some((generation, reason));
        inner.child = None;
        inner.pid = None;
        inner.port = None;
        self.set_phase(&mut inner, Phase::Failed);
    }

    /// A ready child that exits on its own has crashed: the next request starts it again.
    async fn watch_exit(self: Arc<App>, generation: u64, child: Arc<ChildHandle>, port: u16) {
        let mut exited = child.exited.clone();
        let _ = exited.wait_for(Option::is_some).await;
        let description = exited.borrow().clone().unwrap_or_default();
        {
            let inner = self.lock();
            if inner.generation != generation || inner.phase != Phase::Ready {
                // Stopped on purpose: the stop cleans up.
                return;
            }
        }
        // Whatever it left in its process group goes too. Its port stays out of other
        // apps' reach while workers may still hold leases for it.
        child.kill_group(Duration::from_secs(2)).await;
        self.ctx.forget_child(child.pid);
        self.ctx.release_port(&self.config.name, port);
        self.ctx.metrics.inc("wsgiproxy_sidecar_crashes_total", &[("app", &self.config.name)]);
        let mut inner = self.lock();
        if inner.generation != generation || inner.phase != Phase::Ready {
            return;
        }
        if inner.ready_since.is_some_and(|t| t.elapsed() > HEALTHY_AFTER) {
            inner.consecutive_failures = 0;
        }
        inner.restarts += 1;
        drop(inner);
        self.fail(generation, format!("the app exited ({description})"));
    }

    /// Moves a ready app to stopping; what to stop, if anything.
    fn begin_stop(&self, inner: &mut Inner) -> Option<Stopping> {
        if inner.phase != Phase::Ready {
            return None;
        }
        let child = inner.child.clone()?;
        let stopping = Stopping { child, generation: inner.generation, port: inner.port };
        self.set_phase(inner, Phase::Stopping);
        Some(stopping)
    }

    async fn finish_stop(&self, stopping: Stopping, reason: &str) {
        let Stopping { child, generation, port } = stopping;
        tracing::info!(app = %self.config.name, pid = child.pid, "stopping ({reason})");
        child.stop(self.config.stop_signal, self.config.stop_timeout).await;
        self.ctx.forget_child(child.pid);
        if let Some(port) = port {
            self.ctx.release_port(&self.config.name, port);
        }
        self.ctx.metrics.inc("wsgiproxy_sidecar_stops_total", &[("app", &self.config.name), ("reason", reason)]);
        if reason == "idle" {
            self.ctx.metrics.inc("wsgiproxy_sidecar_idle_stops_total", &[("app", &self.config.name)]);
        }
        let mut inner = self.lock();
        if inner.generation == generation && inner.phase == Phase::Stopping {
            inner.child = None;
            inner.pid = None;
            inner.port = None;
            inner.consecutive_failures = 0;
            self.set_phase(&mut inner, Phase::Stopped);
        }
    }

    /// Stops a ready app. Returns once it is gone.
    pub async fn stop(&self, reason: &str) {
        let stopping = self.begin_stop(&mut self.lock());
        if let Some(stopping) = stopping {
            self.finish_stop(stopping, reason).await;
        }
    }

    /// Stops the app if it is idle, deciding under the same lock as the move to
    /// stopping: a lease granted meanwhile keeps it. True when it stopped.
    pub async fn stop_if_idle(&self) -> bool {
        let Some(idle) = self.config.idle_shutdown else { return false };
        let stopping = {
            let mut inner = self.lock();
            if !inner.idle(Instant::now(), idle, self.reporter_expiry()) {
                return false;
            }
            self.begin_stop(&mut inner)
        };
        match stopping {
            Some(stopping) => {
                self.finish_stop(stopping, "idle").await;
                true
            }
            None => false,
        }
    }

    /// Stops whatever runs, whatever its phase (at shutdown, once the context says
    /// so: nothing starts any more). Returns once nothing of the app is left.
    pub async fn shutdown(&self) {
        self.stop("shutdown").await;
        let mut changes = self.changed.subscribe();
        let (child, port) = {
            let mut inner = self.lock();
            // A start in progress is abandoned: its task kills what it started.
            inner.generation += 1;
            self.changed.send_modify(|n| *n += 1);
            (inner.child.take(), inner.port.take())
        };
        if let Some(child) = child {
            child.stop(self.config.stop_signal, self.config.stop_timeout).await;
            self.ctx.forget_child(child.pid);
            if let Some(port) = port {
                self.ctx.release_port(&self.config.name, port);
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.stop_timeout + Duration::from_secs(10);
        while self.lock().starts_running > 0 {
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                tracing::warn!(app = %self.config.name, "a start did not wind up in time");
                return;
            }
        }
    }

    /// Stops the app when idle; runs for the sidecar's life.
    pub async fn idle_monitor(self: Arc<App>) {
        if self.config.idle_shutdown.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.stop_if_idle().await;
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let inner = self.lock();
        let now = Instant::now();
        serde_json::json!({
            "state": inner.phase.name(),
            "pid": inner.pid,
            "port": inner.port,
            "idle_for_seconds": now.duration_since(inner.last_activity).as_secs_f64(),
            "lease_left_ms": inner.lease_until.saturating_duration_since(now).as_millis() as u64,
            "busy_reporters": inner.reporters.values().filter(|(n, _)| *n > 0).count(),
            "restarts": inner.restarts,
            "consecutive_failures": inner.consecutive_failures,
            "last_failure": inner.failure.as_ref().map(|(_, r)| r.clone()),
        })
    }
}

enum Readied {
    Ready,
    Exited(String),
    TimedOut,
    /// Shut down while it started.
    Abandoned,
}

/// A stop under way.
struct Stopping {
    child: Arc<ChildHandle>,
    generation: u64,
    port: Option<u16>,
}

/// Whether something accepts connections on the port (refused at once when not).
async fn accepts_connections(port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    matches!(tokio::time::timeout(Duration::from_millis(50), connect).await, Ok(Ok(_)))
}

/// One readiness check: a TCP connect, or an HTTP GET answering 2xx/3xx.
async fn probe(readiness: &Readiness, port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(500), connect).await else {
        return false;
    };
    let Readiness::Http(path) = readiness else { return true };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = stream;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    match tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut head)).await {
        Ok(Ok(_)) => matches!(&head[9..10], b"2" | b"3") && head.starts_with(b"HTTP/1."),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(60));
    }

    const IDLE: Duration = Duration::from_secs(5);
    const EXPIRY: Duration = Duration::from_secs(20);

    fn ready_at(t0: Instant) -> Inner {
        let mut inner = Inner::new(t0);
        inner.phase = Phase::Ready;
        inner
    }

    #[test]
    fn requests_in_flight_are_activity_and_so_is_their_end() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut inner = ready_at(t0);
        // A long request: started at 0, reported in flight until 30, done at 31.
        inner.record_activity("w1", 1, 1, s(0), EXPIRY);
        for t in (1..=30).step_by(3) {
            inner.record_activity("w1", 0, 1, s(t), EXPIRY);
            assert!(!inner.idle(s(t), IDLE, EXPIRY), "busy at {t}");
        }
        inner.record_activity("w1", 0, 0, s(31), EXPIRY);
        assert!(inner.reporters.is_empty(), "a worker with nothing in flight is not busy");
        // Idle time counts from the end of the request, not from its start.
        assert!(!inner.idle(s(35), IDLE, EXPIRY));
        assert!(inner.idle(s(36), IDLE, EXPIRY));
    }

    #[test]
    fn a_silent_busy_reporter_expires_and_the_lease_gets_a_grace() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut inner = ready_at(t0);
        inner.record_activity("gone", 1, 1, s(0), EXPIRY);
        assert!(!inner.idle(s(19), IDLE, EXPIRY));
        assert!(inner.idle(s(20), IDLE, EXPIRY), "its Envoy died: not busy for ever");
        inner.lease_until = s(30);
        assert!(!inner.idle(s(30), IDLE, EXPIRY), "a report of a request sent late in the lease may be on its way");
        assert!(inner.idle(s(30) + STOP_GRACE, IDLE, EXPIRY));
        inner.phase = Phase::Stopped;
        assert!(!inner.idle(s(60), IDLE, EXPIRY));
    }

    fn config(command: &[&str], idle: Option<Duration>) -> AppConfig {
        AppConfig {
            name: "t".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: Default::default(),
            port: None,
            idle_shutdown: idle,
            readiness: Readiness::Tcp,
            start_timeout: Duration::from_secs(5),
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            stop_timeout: Duration::from_secs(2),
        }
    }

    async fn context(dir: &std::path::Path) -> Arc<Context> {
        let state = StateFile::open(dir).unwrap();
        Arc::new(Context::new(Spawner::start().unwrap(), Duration::from_secs(1), 41000, [], state, None))
    }

    /// An app made ready by hand around a real child (`sleep`), idle for a while.
    async fn idle_ready_app(dir: &std::path::Path) -> Arc<App> {
        let ctx = context(dir).await;
        let app = App::new(config(&["sleep", "30"], Some(Duration::from_millis(100))), Arc::clone(&ctx));
        let child = ctx.spawner.spawn(Launch { app: app.config.clone(), port: 41000 }).await.unwrap();
        let mut inner = app.lock();
        let past = Instant::now() - Duration::from_secs(10);
        inner.phase = Phase::Ready;
        inner.pid = Some(child.pid);
        inner.port = Some(41000);
        inner.child = Some(Arc::new(child));
        inner.last_activity = past;
        inner.lease_until = past;
        drop(inner);
        app
    }

    #[tokio::test]
    async fn a_lease_granted_after_the_idle_check_keeps_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let app = idle_ready_app(dir.path()).await;
        let expiry = app.reporter_expiry();
        // The idle monitor would decide to stop now…
        assert!(app.lock().idle(Instant::now(), Duration::from_millis(100), expiry));
        // …and a worker is granted a lease before the stop takes the lock.
        assert!(app.activity("w1", 1, 0).is_ok());
        assert!(!app.stop_if_idle().await, "stopped an app under a lease it had just granted");
        assert_eq!(app.lock().phase, Phase::Ready);
        // Once the lease (and its grace) ran out, the same call stops it.
        app.lock().lease_until = Instant::now() - STOP_GRACE;
        app.lock().last_activity = Instant::now() - Duration::from_secs(1);
        let child = app.lock().child.clone().unwrap();
        assert!(app.stop_if_idle().await);
        assert_eq!(app.lock().phase, Phase::Stopped);
        assert!(child.has_exited());
    }

    #[tokio::test]
    async fn nothing_starts_once_shutting_down() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path()).await;
        let app = App::new(config(&["sleep", "30"], None), Arc::clone(&ctx));
        ctx.begin_shutdown();
        let e = app.ensure().await.expect_err("an ensure during shutdown");
        assert!(e.reason.contains("shutting down"), "{}", e.reason);
        assert_eq!(app.lock().phase, Phase::Stopped);
        assert_eq!(app.lock().generation, 0, "no start was begun");
    }
}
