//! A Swarm service app (`service = "NAME"`): scaled from its floor (`min_replicas`,
//! 0 by default) to `replicas` on the first request, ready once that many tasks run
//! (Swarm reports a task with a healthcheck running only once it is healthy) and
//! answer the readiness probe, and scaled back when idle.
//!
//! Where requests go: each running task's own address on `network` (an overlay that
//! Envoy's container is attached to), or, without it, the host port each task
//! publishes in `host` mode on its node. Never the ingress routing mesh: its
//! virtual address hides which task is ready (it sends to a task whose app is still
//! starting), and it needs IPVS, which many hosts lack. Each grant names one ready
//! task, the next one in turn: every lease of every Envoy worker goes to the next
//! task.
//!
//! Several sidecars (one per Envoy host) share the service through its labels,
//! written under its version index (`agreement.rs`); a restarted sidecar takes over
//! a service still scaled up as the sidecars left it, and never scales down one
//! that someone else scaled.
//!
//! Here: the workload (a start: scale up, join, or use) and the instance (its
//! addresses in turn, its scale-down); `service/tasks_watch.rs` reads the tasks for
//! the instance's life, `service/check.rs` checks the configuration at start.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::models::{Service, ServiceSpec};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{AfterEarlyExit, Instance, Workload};
use crate::agreement::{self, OnLeave, OnStart};
use crate::config::{AppConfig, Readiness, ServiceConfig};
use crate::context::Context;
use crate::docker::Docker;
use crate::leftovers::unix_ms;
use crate::state_machine::RunningChild;
use crate::swarm::Updated;

mod check;
mod tasks_watch;

pub use check::check_apps;
use tasks_watch::{Shared, Watch};

/// How long a call made outside a start (a scale-down, a watch, a stamp) may take.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Compare-and-set attempts before giving up (each after a conflict: someone wrote between).
const CAS_ATTEMPTS: usize = 20;

pub struct ServiceWorkload {
    app: String,
    config: ServiceConfig,
    readiness: Readiness,
    idle: Option<Duration>,
    ctx: Arc<Context>,
    recheck: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The service's id, version index and spec, from an inspect.
fn parts(service: &Service) -> Result<(String, u64, ServiceSpec), String> {
    let id = service.id.clone().unwrap_or_default();
    let version = service.version.as_ref().and_then(|v| v.index).unwrap_or_default();
    let spec = service.spec.clone().ok_or("Docker gave the service without its spec")?;
    Ok((id, version, spec))
}

impl ServiceWorkload {
    pub fn new(app: &AppConfig, config: ServiceConfig, ctx: Arc<Context>) -> ServiceWorkload {
        ServiceWorkload {
            app: app.name.clone(),
            config,
            readiness: app.readiness.clone(),
            idle: app.idle_shutdown,
            ctx,
            recheck: Arc::default(),
        }
    }

    fn docker(&self) -> Result<&Docker, String> {
        self.ctx.docker.as_ref().ok_or_else(|| "no Docker client".to_string())
    }

    fn instance(&self, id: String, since: u64, ours: bool, expected: u64) -> Arc<dyn Instance> {
        let (ready_tx, ready) = watch::channel(Vec::new());
        let (exited_tx, exited) = watch::channel(None);
        let shared = Arc::new(Shared {
            last_activity_ms: AtomicU64::new(now_ms()),
            stamped_ms: AtomicU64::new(now_ms()),
            stamp_written_at_ms: AtomicU64::new(now_ms()),
            became_ready: std::sync::atomic::AtomicBool::new(false),
        });
        let watch = Watch {
            app: self.app.clone(),
            service: self.config.service.clone(),
            id: id.clone(),
            since,
            ours,
            config: self.config.clone(),
            readiness: self.readiness.clone(),
            timing: self.timing(),
            floor: self.config.min_replicas,
            ctx: Arc::clone(&self.ctx),
            shared: Arc::clone(&shared),
            nodes: Mutex::new(HashMap::new()),
        };
        let watcher = tokio::spawn(watch.run(ready_tx, exited_tx));
        Arc::new(ServiceInstance {
            app: self.app.clone(),
            service: self.config.service.clone(),
            id,
            port: self.config.port,
            floor: self.config.min_replicas,
            expected,
            ours,
            timing: self.timing(),
            ctx: Arc::clone(&self.ctx),
            shared,
            recheck: Arc::clone(&self.recheck),
            ready,
            exited,
            next: AtomicUsize::new(0),
            watcher,
        })
    }

    /// The idle time (60 s without one: how long another sidecar's stamp keeps the
    /// service up at this one's shutdown), and how often this sidecar writes its
    /// activity stamp while in use.
    fn timing(&self) -> agreement::Timing {
        let idle = self.idle.unwrap_or(Duration::from_secs(60));
        let throttle = (idle / 4).max(Duration::from_millis(250));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        agreement::Timing { idle_ms: ms(idle), throttle_ms: ms(throttle) }
    }

    /// At the sidecar's start: takes over the service if it is still scaled up as
    /// the sidecars left it (an earlier run of this one, or another sidecar).
    pub async fn adopt(&self) -> Option<Arc<dyn Instance>> {
        let docker = self.docker().ok()?;
        let service = match docker.inspect_service(&self.config.service, Instant::now() + CALL_LIMIT).await {
            Ok(service) => service,
            Err(e) => {
                tracing::warn!(app = %self.app, "cannot tell whether the service runs: {e}");
                return None;
            }
        };
        let (id, version, spec) = parts(&service).ok()?;
        let replicas = agreement::replicas(&spec)?;
        if !agreement::managed(&spec) || replicas <= u64::from(self.config.min_replicas) {
            return None;
        }
        tracing::info!(
            app = %self.app,
            service = %self.config.service,
            "taking over the service the sidecars scaled up to {replicas} (label {}={replicas} matches its replicas, version {version})",
            agreement::SCALED_UP
        );
        Some(self.instance(id, version, true, replicas))
    }
}

#[async_trait]
impl Workload for ServiceWorkload {
    async fn start(&self, deadline: Instant) -> Result<Arc<dyn Instance>, String> {
        let docker = self.docker()?;
        let name = &self.config.service;
        let sidecar = &self.ctx.sidecar_id;
        // Used again: no later look at a scale-down.
        if let Some(pending) = self.recheck.lock().ok().and_then(|mut p| p.take()) {
            pending.abort();
        }
        for _ in 0..CAS_ATTEMPTS {
            let service = docker.inspect_service(name, deadline).await.map_err(|e| e.to_string())?;
            let (id, version, spec) = parts(&service)?;
            let Some(replicas) = agreement::replicas(&spec) else {
                return Err(format!("the service {name:?} is not replicated (global, or a job): it cannot be scaled"));
            };
            let (write, ours, expected) = match agreement::on_start(&spec, self.config.min_replicas) {
                OnStart::Foreign => {
                    tracing::info!(app = %self.app, service = %name, "using the service as it runs ({replicas} replicas, scaled by someone else: never scaled down)");
                    return Ok(self.instance(id, version, false, 1));
                }
                OnStart::Join => (agreement::stamped(&spec, sidecar, now_ms(), now_ms(), self.timing()), true, replicas),
                OnStart::ScaleUp => (
                    agreement::scaled_up(&spec, self.config.replicas, sidecar, now_ms(), self.timing()),
                    true,
                    u64::from(self.config.replicas),
                ),
            };
            let scaling = agreement::replicas(&write) != Some(replicas);
            match docker.update_service(&id, version, write, deadline).await.map_err(|e| e.to_string())? {
                Updated::Done => {
                    if scaling {
                        // Only a scale-up that Docker took: a conflict's loser joins the winner's.
                        self.ctx.metrics.started(&self.app);
                        tracing::info!(app = %self.app, service = %name, "scaled the service from {replicas} to {expected}");
                    } else {
                        tracing::info!(app = %self.app, service = %name, "the service is already scaled up by a sidecar: using it");
                    }
                    return Ok(self.instance(id, version, ours, expected));
                }
                Updated::Conflict => {
                    tracing::info!(app = %self.app, "the service changed since it was read (another sidecar?): reading it again")
                }
            }
        }
        Err(format!("the service {name:?} changed under each of {CAS_ATTEMPTS} attempts to scale it up"))
    }
}

/// A service scaled up (or found running).
pub struct ServiceInstance {
    app: String,
    service: String,
    id: String,
    port: u16,
    floor: u32,
    /// How many ready tasks make it ready.
    expected: u64,
    /// Scaled up by the sidecars (by this one, or joined): scaled down when this
    /// one leaves it and no other sidecar is busy on it.
    ours: bool,
    timing: agreement::Timing,
    ctx: Arc<Context>,
    shared: Arc<Shared>,
    /// A later look at a service left up for another sidecar (one per app: a new
    /// one, or a new start, ends the earlier).
    recheck: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
    ready: watch::Receiver<Vec<SocketAddr>>,
    exited: watch::Receiver<Option<String>>,
    /// The next task a grant names.
    next: AtomicUsize,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceInstance {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl ServiceInstance {
    fn docker(&self) -> Option<&Docker> {
        self.ctx.docker.as_ref()
    }

    fn leaving(&self) -> Leaving {
        Leaving {
            app: self.app.clone(),
            service: self.service.clone(),
            id: self.id.clone(),
            floor: self.floor,
            timing: self.timing,
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// This sidecar stops using the service (idle, a start that failed, its
    /// shutdown): scales it back to its floor unless someone else scaled it since or
    /// another sidecar is busy on it (then only removes this sidecar's stamp). The
    /// same for the sidecar that scaled it up and one that joined it. Left up for
    /// another sidecar, it looks again once that one's stamp is no longer busy: the
    /// other may have died without scaling anything down.
    async fn leave(&self) {
        let leaving = self.leaving();
        if let Some(busy_for) = leaving.leave(false).await {
            let recheck = tokio::spawn(leaving.look_again(busy_for));
            if let Ok(mut pending) = self.recheck.lock() {
                if let Some(earlier) = pending.replace(recheck.abort_handle()) {
                    earlier.abort();
                }
            }
        }
    }
}

/// What a scale-down needs, apart from the instance (a later look outlives it).
struct Leaving {
    app: String,
    service: String,
    id: String,
    floor: u32,
    timing: agreement::Timing,
    ctx: Arc<Context>,
}

impl Leaving {
    /// Writes what leaving comes to; `Some(how long another sidecar's stamp stays
    /// busy)` when the service was left up for it. `again`: a later look, which
    /// ends when this sidecar uses the service again (its stamp is back).
    async fn leave(&self, again: bool) -> Option<Duration> {
        let docker = self.ctx.docker.as_ref()?;
        let sidecar = &self.ctx.sidecar_id;
        for _ in 0..CAS_ATTEMPTS {
            let deadline = Instant::now() + CALL_LIMIT;
            let service = match docker.inspect_service(&self.id, deadline).await {
                Ok(service) => service,
                Err(e) => {
                    tracing::warn!(app = %self.app, "cannot scale the service down: {e}");
                    return None;
                }
            };
            let (_, version, spec) = parts(&service).ok()?;
            if again && agreement::has_stamp(&spec, sidecar) {
                return None;
            }
            let (write, busy_for) = match agreement::on_leave(&spec, sidecar, self.floor, now_ms(), self.timing) {
                OnLeave::NotManaged => {
                    tracing::info!(app = %self.app, service = %self.service, "leaving the service as it is: scaled by someone else since, or down already");
                    return None;
                }
                OnLeave::LeaveUp { spec, other, ago_ms } => {
                    tracing::info!(app = %self.app, service = %self.service, "leaving the service up: the sidecar {other} saw a request {ago_ms} ms ago");
                    let busy_for = Duration::from_millis(self.timing.busy_window_ms().saturating_sub(ago_ms));
                    if again {
                        // Nothing to write: this sidecar's stamp is gone already.
                        return Some(busy_for);
                    }
                    (spec, Some(busy_for))
                }
                OnLeave::ScaleDown(spec) => (spec, None),
            };
            let scaling = agreement::replicas(&write) != agreement::replicas(&spec);
            match docker.update_service(&self.id, version, write, deadline).await {
                Ok(Updated::Done) => {
                    if scaling {
                        tracing::info!(app = %self.app, service = %self.service, "scaled the service down to {}", self.floor);
                    }
                    return busy_for;
                }
                Ok(Updated::Conflict) => continue,
                Err(e) => {
                    tracing::warn!(app = %self.app, "cannot scale the service down: {e}");
                    return None;
                }
            }
        }
        None
    }

    /// Looks again each time the busy stamps would have gone stale, until the
    /// service is scaled down, used by this sidecar again, or no longer managed.
    async fn look_again(self, mut busy_for: Duration) {
        loop {
            tokio::time::sleep(busy_for + Duration::from_millis(100)).await;
            match self.leave(true).await {
                Some(next) => busy_for = next,
                None => return,
            }
        }
    }
}

impl RunningChild for ServiceInstance {
    fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    fn is_ours(&self) -> bool {
        self.ours
    }
}

#[async_trait]
impl Instance for ServiceInstance {
    fn upstream(&self) -> SocketAddr {
        self.ready.borrow().first().copied().unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)))
    }

    fn next_upstream(&self) -> Option<SocketAddr> {
        let ready = self.ready.borrow();
        if ready.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        ready.get(turn % ready.len()).copied()
    }

    fn note_activity(&self) {
        self.shared.last_activity_ms.fetch_max(now_ms(), Ordering::SeqCst);
    }

    fn describe(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("service".into(), self.service.clone().into());
        fields.insert("service_id".into(), self.id.chars().take(12).collect::<String>().into());
        fields.insert("started_by_sidecar".into(), self.ours.into());
        let tasks: Vec<serde_json::Value> = self.ready.borrow().iter().map(|a| a.to_string().into()).collect();
        fields.insert("tasks".into(), tasks.into());
        fields
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let mut ready = self.ready.clone();
        let mut exited = self.exited.clone();
        loop {
            if let Some(description) = exited.borrow().clone() {
                return Err(description);
            }
            if ready.borrow().len() as u64 >= self.expected {
                self.shared.became_ready.store(true, Ordering::SeqCst);
                return Ok(());
            }
            tokio::select! {
                _ = exited.changed() => {}
                _ = ready.changed() => {}
            }
        }
    }

    async fn wait_exit(&self) -> String {
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(Option::is_some).await;
        let description = exited.borrow().clone().unwrap_or_default();
        description
    }

    async fn stop(&self) {
        if !self.ours {
            tracing::info!(app = %self.app, service = %self.service, "leaving the service as it is: the sidecars did not scale it up");
            return;
        }
        self.leave().await;
    }

    async fn discard(&self) -> AfterEarlyExit {
        // A start that cannot succeed: its tasks would fail on and on, unless
        // another sidecar serves from them (its start was not this one's).
        if self.ours {
            self.leave().await;
        }
        AfterEarlyExit::Failed
    }

    async fn resume(&self, deadline: Instant) -> Result<(), String> {
        let docker = self.docker().ok_or("no Docker client")?;
        docker.inspect_service(&self.id, deadline).await.map(|_| ()).map_err(|e| e.to_string())
    }
}
