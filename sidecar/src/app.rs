//! One state machine per app: stopped → starting → ready → stopping → stopped, and
//! failed (with backoff after repeated failures). Callers wait on state changes
//! through a watch channel (a long poll), never on a timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{AppConfig, Readiness};
use crate::leftovers::{start_time, Record, StateFile};
use crate::metrics::Metrics;
use crate::ports;
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
    /// Where port allocation starts.
    pub first_port: u16,
    pub state_file: StateFile,
    records: Mutex<Vec<Record>>,
    /// Ports in use by apps, so that two allocated apps never pick the same.
    ports_in_use: Mutex<Vec<u16>>,
}

impl Context {
    pub fn new(spawner: Spawner, lease: Duration, first_port: u16, state_file: StateFile) -> Context {
        Context {
            spawner,
            metrics: Metrics::default(),
            lease,
            first_port,
            state_file,
            records: Mutex::new(Vec::new()),
            ports_in_use: Mutex::new(Vec::new()),
        }
    }

    fn remember_child(&self, app: &str, pid: u32) {
        if let Ok(mut records) = self.records.lock() {
            records.push(Record { app: app.to_string(), pid, start_time: start_time(pid).unwrap_or_default() });
            self.state_file.write(&records);
        }
    }

    fn forget_child(&self, pid: u32) {
        if let Ok(mut records) = self.records.lock() {
            records.retain(|r| r.pid != pid);
            self.state_file.write(&records);
        }
    }

    fn take_port(&self, fixed: Option<u16>) -> Option<u16> {
        let mut used = self.ports_in_use.lock().ok()?;
        let port = match fixed {
            Some(p) => p,
            None => ports::allocate(self.first_port, &used)?,
        };
        used.push(port);
        Some(port)
    }

    fn release_port(&self, port: u16) {
        if let Ok(mut used) = self.ports_in_use.lock() {
            used.retain(|p| *p != port);
        }
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
    /// reporter id → (requests in flight, when it last reported)
    reporters: HashMap<String, (u64, Instant)>,
    consecutive_failures: u32,
    failed_until: Instant,
    /// The generation whose start failed, and why.
    failure: Option<(u64, String)>,
    ready_since: Option<Instant>,
    restarts: u64,
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
const LISTEN_CHECK_EVERY: Duration = Duration::from_millis(3);
/// A reporter silent this many leases is presumed gone (its Envoy died).
const REPORTER_EXPIRY_LEASES: u32 = 10;

impl App {
    pub fn new(config: AppConfig, ctx: Arc<Context>) -> Arc<App> {
        let now = Instant::now();
        ctx.metrics.set_state(&config.name, Phase::Stopped.name());
        Arc::new(App {
            config,
            ctx,
            inner: Mutex::new(Inner {
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
            }),
            changed: watch::channel(0).0,
        })
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
                inner.last_activity = now;
                if let (Some(gen), Some((failed_gen, reason))) = (joined, &inner.failure) {
                    if gen == *failed_gen {
                        return Err(Unavailable { reason: reason.clone(), retry_after: backoff(inner.consecutive_failures).max(Duration::from_secs(1)) });
                    }
                }
                match inner.phase {
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
        let now = Instant::now();
        if started > 0 {
            inner.last_activity = now;
        }
        if !reporter.is_empty() {
            inner.reporters.insert(reporter.to_string(), (in_flight, now));
        }
        if inner.phase == Phase::Ready {
            self.grant(&mut inner, None).ok_or(inner.phase)
        } else {
            Err(inner.phase)
        }
    }

    fn begin_start(self: &Arc<App>, inner: &mut Inner) {
        inner.generation += 1;
        inner.failure = None;
        self.set_phase(inner, Phase::Starting);
        let app = Arc::clone(self);
        let generation = inner.generation;
        tokio::spawn(async move { app.run_start(generation).await });
    }

    async fn run_start(self: Arc<App>, generation: u64) {
        let began = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        for _attempt in 0..3 {
            let Some(port) = self.ctx.take_port(self.config.port) else {
                return self.fail(generation, "no free port".into());
            };
            self.ctx.metrics.inc("wsgiproxy_sidecar_spawns_total", &[("app", &self.config.name)]);
            let launched = self.ctx.spawner.spawn(Launch { app: self.config.clone(), port }).await;
            let child = match launched {
                Ok(child) => Arc::new(child),
                Err(e) => {
                    self.ctx.release_port(port);
                    return self.fail(generation, format!("cannot start {:?}: {e}", self.config.command[0]));
                }
            };
            tracing::info!(app = %self.config.name, pid = child.pid, port, "started");
            self.ctx.remember_child(&self.config.name, child.pid);
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
            if !current {
                // Shut down while forking: this child is nobody's.
                child.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(1)).await;
                self.ctx.forget_child(child.pid);
                self.ctx.release_port(port);
                return;
            }
            match self.wait_ready(&child, port, deadline).await {
                Readied::Ready => {
                    let mut inner = self.lock();
                    if inner.generation != generation {
                        return;
                    }
                    inner.ready_since = Some(Instant::now());
                    self.set_phase(&mut inner, Phase::Ready);
                    drop(inner);
                    self.ctx.metrics.observe("wsgiproxy_sidecar_start_seconds", &self.config.name, began.elapsed());
                    tracing::info!(app = %self.config.name, port, "ready after {:?}", began.elapsed());
                    let app = Arc::clone(&self);
                    tokio::spawn(async move { app.watch_exit(generation, child, port).await });
                    return;
                }
                Readied::Exited(description) => {
                    self.ctx.forget_child(child.pid);
                    self.ctx.release_port(port);
                    // An allocated port someone else took between our check and the child's bind.
                    if self.config.port.is_none() && !ports::is_free(port) {
                        tracing::warn!(app = %self.config.name, port, "the child could not use its port (taken meanwhile): starting again on another");
                        continue;
                    }
                    self.ctx.metrics.inc("wsgiproxy_sidecar_crashes_total", &[("app", &self.config.name)]);
                    return self.fail(generation, format!("the app exited before it was ready ({description})"));
                }
                Readied::TimedOut => {
                    child.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(2)).await;
                    self.ctx.forget_child(child.pid);
                    self.ctx.release_port(port);
                    self.ctx.metrics.inc("wsgiproxy_sidecar_stops_total", &[("app", &self.config.name), ("reason", "start_timeout")]);
                    return self.fail(
                        generation,
                        format!("the app did not become ready within {:?} and was killed", self.config.start_timeout),
                    );
                }
            }
        }
        self.fail(generation, "the app could not bind a port after 3 attempts".into());
    }

    async fn wait_ready(&self, child: &ChildHandle, port: u16, deadline: tokio::time::Instant) -> Readied {
        let mut exited = child.exited.clone();
        let mut next_probe = tokio::time::Instant::now();
        loop {
            if let Some(description) = exited.borrow().clone() {
                return Readied::Exited(description);
            }
            // A listening socket shows in /proc at once: check for it often (cheap, no
            // connection), and probe for real as soon as it is there, else every 50 ms.
            let now = tokio::time::Instant::now();
            if now >= next_probe || ports::is_listening(port) {
                if probe(&self.config.readiness, port).await && ports::listened_by_group(port, child.pid) {
                    return Readied::Ready;
                }
                next_probe = tokio::time::Instant::now() + PROBE_EVERY;
            }
            tokio::select! {
                _ = exited.changed() => {}
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
        self.ctx.forget_child(child.pid);
        {
            let inner = self.lock();
            if inner.generation != generation || inner.phase != Phase::Ready {
                return;
            }
        }
        // Whatever it left in its process group goes too.
        child.signal(nix::sys::signal::Signal::SIGKILL);
        self.ctx.release_port(port);
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

    /// Stops a ready app. Returns once it is gone.
    pub async fn stop(&self, reason: &str) {
        let (child, generation, port) = {
            let mut inner = self.lock();
            if inner.phase != Phase::Ready {
                return;
            }
            let Some(child) = inner.child.clone() else { return };
            let generation = inner.generation;
            let port = inner.port;
            self.set_phase(&mut inner, Phase::Stopping);
            (child, generation, port)
        };
        tracing::info!(app = %self.config.name, pid = child.pid, "stopping ({reason})");
        child.stop(self.config.stop_signal, self.config.stop_timeout).await;
        self.ctx.forget_child(child.pid);
        if let Some(port) = port {
            self.ctx.release_port(port);
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

    /// Stops whatever runs, whatever its phase (at shutdown).
    pub async fn shutdown(&self) {
        self.stop("shutdown").await;
        let child = {
            let mut inner = self.lock();
            inner.generation += 1;
            inner.child.take()
        };
        if let Some(child) = child {
            child.stop(self.config.stop_signal, self.config.stop_timeout).await;
            self.ctx.forget_child(child.pid);
        }
    }

    /// True when the app may be stopped for idleness now.
    fn is_idle(&self) -> bool {
        let Some(idle) = self.config.idle_shutdown else { return false };
        let inner = self.lock();
        let now = Instant::now();
        let reporter_expiry = self.ctx.lease * REPORTER_EXPIRY_LEASES;
        let busy = inner.reporters.values().any(|(in_flight, at)| *in_flight > 0 && now.duration_since(*at) < reporter_expiry);
        inner.phase == Phase::Ready && !busy && now >= inner.lease_until && now.duration_since(inner.last_activity) >= idle
    }

    /// Stops the app when idle; runs for the sidecar's life.
    pub async fn idle_monitor(self: Arc<App>) {
        if self.config.idle_shutdown.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.is_idle() {
                self.stop("idle").await;
            }
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
}
