//! One app's lifecycle: runs what its state machine (`state_machine.rs`) decides —
//! starts, readiness waits, crash clean-ups, stops — and tells callers of every
//! change through a watch channel (a long poll), never on a timer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::AppConfig;
use crate::context::Context;
use crate::ports;
use crate::process::{ChildHandle, Launch};
use crate::readiness::{ReadinessCheck, LISTEN_CHECK_EVERY};
use crate::state_machine::{reporter_expiry, AppState, EnsureStep, Phase, RunningChild, Stopping, Unavailable};

/// A successful ensure or activity report.
#[derive(Debug, Clone)]
pub struct Granted {
    pub port: u16,
    pub lease: Duration,
    /// Set when the caller waited for a start.
    pub waited: Option<Duration>,
}

impl RunningChild for ChildHandle {
    fn has_exited(&self) -> bool {
        ChildHandle::has_exited(self)
    }
}

/// The state machine, with the sidecar's process handle as its child.
type Inner = AppState<ChildHandle>;

pub struct App {
    pub config: AppConfig,
    ctx: Arc<Context>,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

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

    /// Tells the metrics and every waiter of the phase the state machine moved to.
    fn publish_phase(&self, inner: &Inner) {
        self.ctx.metrics.set_state(&self.config.name, inner.phase.name());
        self.changed.send_modify(|n| *n += 1);
    }

    fn grant(&self, inner: &mut Inner, waited: Option<Duration>) -> Option<Granted> {
        let port = inner.grant(Instant::now() + self.ctx.lease)?;
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
                match inner.on_ensure(joined, now) {
                    EnsureStep::Refuse(unavailable) => return Err(unavailable),
                    EnsureStep::Grant => {
                        let waited = waited.then(|| began.elapsed());
                        if let Some(w) = waited {
                            self.ctx.metrics.observe("wsgiproxy_sidecar_ensure_wait_seconds", &self.config.name, w);
                        }
                        if let Some(granted) = self.grant(&mut inner, waited) {
                            return Ok(granted);
                        }
                    }
                    EnsureStep::Start => {
                        self.begin_start(&mut inner);
                        waited = true;
                        joined = Some(inner.generation);
                    }
                    EnsureStep::JoinStart => {
                        waited = true;
                        joined = Some(inner.generation);
                    }
                    EnsureStep::Wait => waited = true,
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
        reporter_expiry(self.ctx.lease)
    }

    fn begin_start(self: &Arc<App>, inner: &mut Inner) {
        let generation = inner.begin_start();
        self.publish_phase(inner);
        let app = Arc::clone(self);
        tokio::spawn(async move {
            app.run_start(generation).await;
            let mut inner = app.lock();
            inner.start_wound_up();
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
            let current = self.lock().adopt_child(generation, port, child.pid, Arc::clone(&child));
            let readied = if current { self.wait_ready(&child, port, deadline, generation).await } else { Readied::Abandoned };
            match readied {
                Readied::Ready => {
                    let mut inner = self.lock();
                    if !inner.became_ready(generation, Instant::now()) {
                        // Shut down meanwhile: the shutdown took the child and stops it.
                        return;
                    }
                    self.publish_phase(&inner);
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
        let mut check = ReadinessCheck::new(&self.config.readiness, port, child.pid);
        loop {
            if let Some(description) = exited.borrow().clone() {
                return Readied::Exited(description);
            }
            if self.lock().generation != generation {
                return Readied::Abandoned;
            }
            if check.ready().await {
                return Readied::Ready;
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
        if inner.fail(generation, reason, Instant::now()) {
            self.publish_phase(&inner);
        }
    }

    /// A ready child that exits on its own has crashed: the next request starts it again.
    async fn watch_exit(self: Arc<App>, generation: u64, child: Arc<ChildHandle>, port: u16) {
        let mut exited = child.exited.clone();
        let _ = exited.wait_for(Option::is_some).await;
        let description = exited.borrow().clone().unwrap_or_default();
        if !self.lock().is_ready_as(generation) {
            // Stopped on purpose: the stop cleans up.
            return;
        }
        // Whatever it left in its process group goes too. Its port stays out of other
        // apps' reach while workers may still hold leases for it.
        child.kill_group(Duration::from_secs(2)).await;
        self.ctx.forget_child(child.pid);
        self.ctx.release_port(&self.config.name, port);
        self.ctx.metrics.inc("wsgiproxy_sidecar_crashes_total", &[("app", &self.config.name)]);
        if !self.lock().count_crash(generation, Instant::now()) {
            return;
        }
        self.fail(generation, format!("the app exited ({description})"));
    }

    /// Moves a ready app to stopping; what to stop, if anything.
    fn begin_stop(&self, inner: &mut Inner) -> Option<Stopping<ChildHandle>> {
        let stopping = inner.begin_stop()?;
        self.publish_phase(inner);
        Some(stopping)
    }

    async fn finish_stop(&self, stopping: Stopping<ChildHandle>, reason: &str) {
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
        if inner.stopped(generation) {
            self.publish_phase(&inner);
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
            let left = inner.abandon();
            self.changed.send_modify(|n| *n += 1);
            left
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::Readiness;
    use crate::leftovers::StateFile;
    use crate::process::Spawner;
    use crate::state_machine::STOP_GRACE;

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
