//! One app's lifecycle: runs what its state machine (`state_machine.rs`) decides —
//! starts, resumes, readiness waits, crash clean-ups, stops, pauses — on its
//! workload (`workload.rs`: a process or a container), and tells callers of every
//! change through a watch channel (a long poll), never on a timer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{AppConfig, OnIdle, WorkloadConfig};
use crate::context::Context;
use crate::metrics::{FailureReason, StopReason};
use crate::state_machine::{reporter_expiry, AppState, EnsureStep, Phase, Stopping, Unavailable};
use crate::workload::container::ContainerWorkload;
use crate::workload::process::ProcessWorkload;
use crate::workload::service::ServiceWorkload;
use crate::workload::{AfterEarlyExit, Instance, Workload};

/// A successful ensure or activity report.
#[derive(Debug, Clone)]
pub struct Granted {
    pub upstream: std::net::SocketAddr,
    pub lease: Duration,
    /// Set when the caller waited for a start.
    pub waited: Option<Duration>,
}

/// What an ensure call ends with, when the app can be had.
#[derive(Debug, Clone)]
pub enum Ensured {
    Ready(Granted),
    /// The start goes on past the caller's patience (it asked not to wait longer).
    StillStarting,
}

/// The state machine, with a workload's instance as its child.
type Inner = AppState<dyn Instance>;

/// How many times a start is tried when its instance could not use its port.
const START_ATTEMPTS: usize = 3;

pub struct App {
    pub config: AppConfig,
    ctx: Arc<Context>,
    workload: Arc<dyn Workload>,
    /// Set for a container app (it may take over a container at the sidecar's start).
    container: Option<Arc<ContainerWorkload>>,
    /// Set for a service app (it may take over the service at the sidecar's start).
    service: Option<Arc<ServiceWorkload>>,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl App {
    pub fn new(config: AppConfig, ctx: Arc<Context>) -> Arc<App> {
        let now = Instant::now();
        ctx.metrics.add_app(&config.name);
        ctx.metrics.set_state(&config.name, Phase::Stopped.name());
        let (workload, container, service): (Arc<dyn Workload>, _, _) = match &config.workload {
            WorkloadConfig::Process(p) => (Arc::new(ProcessWorkload::new(&config, p.clone(), Arc::clone(&ctx))), None, None),
            WorkloadConfig::Container(c) => {
                let container = Arc::new(ContainerWorkload::new(&config, c.clone(), Arc::clone(&ctx)));
                (Arc::clone(&container) as Arc<dyn Workload>, Some(container), None)
            }
            WorkloadConfig::Service(s) => {
                let service = Arc::new(ServiceWorkload::new(&config, s.clone(), Arc::clone(&ctx)));
                (Arc::clone(&service) as Arc<dyn Workload>, None, Some(service))
            }
        };
        Arc::new(App { config, ctx, workload, container, service, inner: Mutex::new(Inner::new(now)), changed: watch::channel(0).0 })
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
        let upstream = inner.grant(Instant::now() + self.ctx.lease)?;
        // A service's replicas in turn, one per grant.
        let upstream = inner.child.as_ref().map_or(Some(upstream), |c| c.next_upstream())?;
        Some(Granted { upstream, lease: self.ctx.lease, waited })
    }

    /// At the sidecar's start: takes over what an earlier run started and left
    /// running (a container), as it is — running (checked for readiness, then idle
    /// from now on) or paused.
    pub async fn take_over(self: &Arc<App>) {
        if let Some(service) = &self.service {
            let Some(adopted) = service.adopt().await else { return };
            let mut inner = self.lock();
            if inner.phase == Phase::Stopped && !self.ctx.is_shutting_down() {
                self.begin_start(&mut inner, Some(adopted));
            }
            return;
        }
        let Some(container) = &self.container else { return };
        let Some(adopted) = container.adopt().await else { return };
        let mut inner = self.lock();
        if inner.phase != Phase::Stopped || self.ctx.is_shutting_down() {
            // A request started it meanwhile (and found it running: the same one).
            return;
        }
        if adopted.paused {
            inner.adopt_paused(adopted.instance.upstream(), adopted.instance, Instant::now());
            self.publish_phase(&inner);
        } else {
            self.begin_start(&mut inner, Some(adopted.instance));
        }
    }

    /// Makes sure the app is up, starting it if need be, and waits until it is ready,
    /// or for `patience` at most (the start goes on without the caller).
    pub async fn ensure(self: &Arc<App>, patience: Option<Duration>) -> Result<Ensured, Unavailable> {
        let began = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.start_timeout + self.config.stop_timeout + Duration::from_secs(5);
        let patience = patience.map(|p| tokio::time::Instant::now() + p).filter(|until| *until < deadline);
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
                        if let Some(child) = &inner.child {
                            child.note_activity();
                        }
                        let waited = waited.then(|| began.elapsed());
                        if let Some(w) = waited {
                            self.ctx.metrics.ensure_waited(&self.config.name, w);
                        }
                        if let Some(granted) = self.grant(&mut inner, waited) {
                            return Ok(Ensured::Ready(granted));
                        }
                    }
                    EnsureStep::Start => {
                        self.begin_start(&mut inner, None);
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
            if tokio::time::timeout_at(patience.unwrap_or(deadline), changes.changed()).await.is_err() {
                if patience.is_some() {
                    return Ok(Ensured::StillStarting);
                }
                return Err(Unavailable { reason: "the app did not become ready in time".into(), retry_after: Duration::from_secs(1) });
            }
        }
    }

    /// Records a worker's activity; renews its lease when the app is ready.
    pub fn activity(&self, reporter: &str, started: u64, in_flight: u64) -> Result<Granted, Phase> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.record_activity(reporter, started, in_flight, now, self.reporter_expiry());
        if inner.last_activity == now {
            if let Some(child) = &inner.child {
                child.note_activity();
            }
        }
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

    /// Begins a start (or a resume of the paused child, or the take-over of
    /// `running`) in a task of its own.
    fn begin_start(self: &Arc<App>, inner: &mut Inner, running: Option<Arc<dyn Instance>>) {
        let (generation, paused) = inner.begin_start();
        self.publish_phase(inner);
        let app = Arc::clone(self);
        tokio::spawn(async move {
            app.run_start(generation, running.or(paused)).await;
            let mut inner = app.lock();
            inner.start_wound_up();
            app.changed.send_modify(|n| *n += 1);
        });
    }

    /// Resumes `existing` (a paused child, or one found running), or starts the
    /// workload, then waits until it is ready.
    async fn run_start(self: &Arc<App>, generation: u64, existing: Option<Arc<dyn Instance>>) {
        let name = &self.config.name;
        let began = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        let mut existing = existing;
        let mut cold = true;
        for _attempt in 0..START_ATTEMPTS {
            let instance = match existing.take() {
                Some(instance) => match instance.resume(deadline).await {
                    Ok(()) => {
                        // Thawed, or found running: not a cold start.
                        cold = false;
                        instance
                    }
                    Err(e) => {
                        tracing::warn!(app = %name, "cannot resume it ({e}): starting it afresh");
                        instance.discard().await;
                        continue;
                    }
                },
                None => match self.workload.start(deadline).await {
                    Ok(instance) => instance,
                    Err(e) => return self.fail(generation, format!("cannot start it: {e}"), FailureReason::StartError),
                },
            };
            let current = self.lock().adopt_child(generation, instance.upstream(), Arc::clone(&instance));
            let readied = if current { self.wait_ready(&instance, deadline, generation).await } else { Readied::Abandoned };
            match readied {
                Readied::Ready => {
                    let mut inner = self.lock();
                    if !inner.became_ready(generation, Instant::now()) {
                        // Shut down meanwhile: the shutdown took the child and stops it.
                        return;
                    }
                    // A service's address is known once its tasks are ready.
                    inner.upstream = Some(instance.upstream());
                    self.publish_phase(&inner);
                    drop(inner);
                    if cold {
                        self.ctx.metrics.cold_start(name, began.elapsed());
                    }
                    tracing::info!(app = %name, upstream = %instance.upstream(), "ready after {:?}", began.elapsed());
                    let app = Arc::clone(self);
                    tokio::spawn(async move { app.watch_exit(generation, instance).await });
                    return;
                }
                Readied::Abandoned => {
                    // Shut down while it started: this instance is nobody's.
                    instance.discard().await;
                    return;
                }
                Readied::Exited(description) => match instance.discard().await {
                    AfterEarlyExit::StartAgain => continue,
                    AfterEarlyExit::Failed => {
                        let reason = format!("the app exited before it was ready ({description})");
                        return self.fail(generation, reason, FailureReason::ExitedBeforeReady);
                    }
                },
                Readied::TimedOut => {
                    instance.discard().await;
                    self.ctx.metrics.stopped(name, StopReason::StartTimeout);
                    let what = if instance.is_ours() { "and was killed" } else { "(left running: the sidecar did not start it)" };
                    let reason = format!("the app did not become ready within {:?} {what}", self.config.start_timeout);
                    return self.fail(generation, reason, FailureReason::StartTimeout);
                }
            }
        }
        self.fail(generation, format!("the app could not be started after {START_ATTEMPTS} attempts"), FailureReason::StartError);
    }

    /// Waits until the instance is ready, has exited, the start is abandoned (a
    /// shutdown), or the deadline.
    async fn wait_ready(&self, instance: &Arc<dyn Instance>, deadline: tokio::time::Instant, generation: u64) -> Readied {
        let mut changes = self.changed.subscribe();
        let ready = instance.wait_ready();
        tokio::pin!(ready);
        loop {
            if self.lock().generation != generation {
                return Readied::Abandoned;
            }
            tokio::select! {
                outcome = &mut ready => return match outcome {
                    Ok(()) => Readied::Ready,
                    Err(description) => Readied::Exited(description),
                },
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Readied::TimedOut,
            }
        }
    }

    fn fail(&self, generation: u64, reason: String, why: FailureReason) {
        tracing::warn!(app = %self.config.name, "{reason}");
        let mut inner = self.lock();
        if inner.fail(generation, reason, Instant::now()) {
            self.ctx.metrics.failed(&self.config.name, why);
            self.publish_phase(&inner);
        }
    }

    /// A ready instance that exits on its own has crashed: the next request starts it again.
    async fn watch_exit(self: Arc<App>, generation: u64, instance: Arc<dyn Instance>) {
        let description = instance.wait_exit().await;
        if !self.lock().is_ready_as(generation) {
            // Stopped or paused on purpose, or resumed since: that cleans up.
            return;
        }
        // Whatever is left of it goes too. A process's port stays out of other
        // apps' reach while workers may still hold leases for it.
        instance.discard().await;
        if !self.lock().count_crash(generation, Instant::now()) {
            return;
        }
        self.fail(generation, format!("the app exited ({description})"), FailureReason::Crashed);
    }

    async fn finish_stop(&self, stopping: Stopping<dyn Instance>, why: StopReason) {
        let Stopping { child, generation } = stopping;
        tracing::info!(app = %self.config.name, "stopping ({})", why.name());
        child.stop().await;
        // A container the sidecar did not start was left running.
        if child.is_ours() {
            self.ctx.metrics.stopped(&self.config.name, why);
        }
        let mut inner = self.lock();
        if inner.stopped(generation) {
            self.publish_phase(&inner);
        }
    }

    async fn finish_pause(&self, pausing: Stopping<dyn Instance>) {
        let Stopping { child, generation } = pausing;
        let paused = child.pause().await;
        let mut inner = self.lock();
        let moved = match &paused {
            Ok(()) => inner.paused(generation),
            Err(e) => {
                tracing::warn!(app = %self.config.name, "cannot pause it ({e}): it stays up, and is tried again after another idle period");
                inner.pause_failed(generation, Instant::now())
            }
        };
        if moved {
            if paused.is_ok() {
                tracing::info!(app = %self.config.name, "paused (idle)");
                self.ctx.metrics.paused(&self.config.name);
            }
            self.publish_phase(&inner);
        }
    }

    /// Stops a ready app. Returns once it is gone.
    pub async fn stop(&self, why: StopReason) {
        let stopping = {
            let mut inner = self.lock();
            let stopping = inner.begin_stop();
            if stopping.is_some() {
                self.publish_phase(&inner);
            }
            stopping
        };
        if let Some(stopping) = stopping {
            self.finish_stop(stopping, why).await;
        }
    }

    /// Stops (or pauses) the app if it is idle, deciding under the same lock as the
    /// move to stopping: a lease granted meanwhile keeps it. True when it did.
    pub async fn stop_if_idle(&self) -> bool {
        let Some(idle) = self.config.idle_shutdown else { return false };
        let leaving = {
            let mut inner = self.lock();
            if !inner.idle(Instant::now(), idle, self.reporter_expiry()) {
                return false;
            }
            let leaving = match self.config.on_idle {
                OnIdle::Stop => inner.begin_stop(),
                OnIdle::Pause => inner.begin_pause(),
            };
            if leaving.is_some() {
                self.publish_phase(&inner);
            }
            leaving
        };
        match (leaving, self.config.on_idle) {
            (Some(stopping), OnIdle::Stop) => {
                self.finish_stop(stopping, StopReason::Idle).await;
                true
            }
            (Some(pausing), OnIdle::Pause) => {
                self.finish_pause(pausing).await;
                true
            }
            (None, _) => false,
        }
    }

    /// Stops whatever runs, whatever its phase (at shutdown, once the context says
    /// so: nothing starts any more). Returns once nothing of the app is left.
    pub async fn shutdown(&self) {
        self.stop(StopReason::Shutdown).await;
        let mut changes = self.changed.subscribe();
        let child = {
            let mut inner = self.lock();
            let left = inner.abandon();
            self.changed.send_modify(|n| *n += 1);
            left
        };
        if let Some(child) = child {
            child.stop().await;
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
        let mut status = serde_json::json!({
            "state": inner.phase.name(),
            "pid": null,
            "upstream": inner.upstream.map(|u| u.to_string()),
            "port": inner.upstream.map(|u| u.port()),
            "idle_for_seconds": now.duration_since(inner.last_activity).as_secs_f64(),
            "lease_left_ms": inner.lease_until.saturating_duration_since(now).as_millis() as u64,
            "busy_reporters": inner.reporters.values().filter(|(n, _)| *n > 0).count(),
            "restarts": inner.restarts,
            "consecutive_failures": inner.consecutive_failures,
            "last_failure": inner.failure.as_ref().map(|(_, r)| r.clone()),
        });
        if let (Some(child), Some(fields)) = (&inner.child, status.as_object_mut()) {
            fields.extend(child.describe());
        }
        status
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
    use crate::config::{ProcessConfig, Readiness};
    use crate::leftovers::StateFile;
    use crate::process::Spawner;
    use crate::state_machine::STOP_GRACE;

    fn config(command: &[&str], idle: Option<Duration>) -> AppConfig {
        AppConfig {
            name: "t".into(),
            workload: WorkloadConfig::Process(ProcessConfig {
                command: command.iter().map(|s| s.to_string()).collect(),
                cwd: None,
                env: Default::default(),
                port: None,
                stop_signal: nix::sys::signal::Signal::SIGTERM,
            }),
            idle_shutdown: idle,
            on_idle: OnIdle::Stop,
            readiness: Readiness::Tcp,
            start_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(2),
        }
    }

    async fn context(dir: &std::path::Path) -> Arc<Context> {
        let state = StateFile::open(dir).unwrap();
        Arc::new(Context::new(Spawner::start().unwrap(), None, Duration::from_secs(1), 41000, [], state, None))
    }

    /// An app made ready by hand around a real child (`sleep`), idle for a while.
    async fn idle_ready_app(dir: &std::path::Path) -> Arc<App> {
        let ctx = context(dir).await;
        let app = App::new(config(&["sleep", "30"], Some(Duration::from_millis(100))), Arc::clone(&ctx));
        let child = app.workload.start(tokio::time::Instant::now() + Duration::from_secs(5)).await.unwrap();
        let mut inner = app.lock();
        let past = Instant::now() - Duration::from_secs(10);
        inner.phase = Phase::Ready;
        inner.upstream = Some(child.upstream());
        inner.child = Some(child);
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
        let e = app.ensure(None).await.expect_err("an ensure during shutdown");
        assert!(e.reason.contains("shutting down"), "{}", e.reason);
        assert_eq!(app.lock().phase, Phase::Stopped);
        assert_eq!(app.lock().generation, 0, "no start was begun");
    }
}
