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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::models::{Service, ServiceSpec, Task};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{tasks, AfterEarlyExit, Instance, Workload};
use crate::agreement::{self, OnStart};
use crate::config::{self, AppConfig, Readiness, ServiceConfig, WorkloadConfig};
use crate::context::Context;
use crate::docker::{Docker, DockerError};
use crate::leftovers::unix_ms;
use crate::readiness;
use crate::state_machine::RunningChild;
use crate::swarm::Updated;

/// How often the tasks are read while a start waits for them, and after.
const STARTING_EVERY: Duration = Duration::from_millis(200);
const RUNNING_EVERY: Duration = Duration::from_secs(1);
/// How long a call made outside a start (a scale-down, a watch, a stamp) may take.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Compare-and-set attempts before giving up (each after a conflict: someone wrote between).
const CAS_ATTEMPTS: usize = 20;
/// Reads in a row without a running task, after ready, before the app counts as exited.
const GONE_AFTER_READS: u32 = 5;

pub struct ServiceWorkload {
    app: String,
    config: ServiceConfig,
    readiness: Readiness,
    idle: Option<Duration>,
    ctx: Arc<Context>,
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

/// Checks, at the sidecar's start, that the configuration fits the service: it
/// exists and is replicated, and its tasks are on `network`, or publish `port` in
/// host mode. The error names the field.
pub async fn check(docker: &Docker, config: &ServiceConfig) -> Result<(), (&'static str, String)> {
    let deadline = Instant::now() + CALL_LIMIT;
    let name = &config.service;
    let service = match docker.inspect_service(name, deadline).await {
        Ok(service) => service,
        Err(e @ DockerError::NoSuchService { .. }) => return Err(("service", e.to_string())),
        // The daemon away, or not in swarm mode yet: told at each request.
        Err(e) => {
            tracing::warn!(service = %name, "cannot check the service: {e}; its requests get a 503 until Docker answers");
            return Ok(());
        }
    };
    let (_, _, spec) = parts(&service).map_err(|e| ("service", e))?;
    if agreement::replicas(&spec).is_none() {
        return Err(("service", format!("the service {name:?} is not replicated (global, or a job): it cannot be scaled")));
    }
    match &config.network {
        Some(network) => {
            let id = docker.inspect_network_id(network, deadline).await.map_err(|e| ("network", e.to_string()))?;
            let task_networks = spec.task_template.as_ref().and_then(|t| t.networks.clone()).or_else(|| spec.networks.clone());
            let targets: Vec<String> = task_networks.into_iter().flatten().filter_map(|n| n.target).collect();
            if targets.iter().any(|t| t == network || *t == id) {
                Ok(())
            } else {
                Err(("network", format!("the service {name:?} is not attached to the network {network:?}")))
            }
        }
        None => {
            let ports = spec.endpoint_spec.as_ref().and_then(|e| e.ports.clone()).unwrap_or_default();
            let host = ports.iter().any(|p| {
                p.target_port == Some(i64::from(config.port))
                    && p.publish_mode == Some(bollard::models::EndpointPortConfigPublishModeEnum::HOST)
            });
            if host {
                Ok(())
            } else {
                Err((
                    "port",
                    format!(
                        "the service {name:?} does not publish {}/tcp in host mode: set `network` to an overlay Envoy is on, or publish it (docker service create --publish mode=host,target={})",
                        config.port, config.port
                    ),
                ))
            }
        }
    }
}

/// Checks every service app against Docker at the sidecar's start.
pub async fn check_apps(docker: &Docker, apps: &[AppConfig]) -> Result<(), String> {
    for app in apps {
        let WorkloadConfig::Service(config) = &app.workload else { continue };
        check(docker, config).await.map_err(|(field, message)| config::error(&app.name, field, message))?;
    }
    Ok(())
}

impl ServiceWorkload {
    pub fn new(app: &AppConfig, config: ServiceConfig, ctx: Arc<Context>) -> ServiceWorkload {
        ServiceWorkload { app: app.name.clone(), config, readiness: app.readiness.clone(), idle: app.idle_shutdown, ctx }
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
            throttle: self.throttle(),
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
            idle: self.idle,
            ctx: Arc::clone(&self.ctx),
            shared,
            ready,
            exited,
            next: AtomicUsize::new(0),
            watcher,
        })
    }

    /// How often this sidecar writes its activity stamp while in use.
    fn throttle(&self) -> Duration {
        (self.idle.unwrap_or(Duration::from_secs(60)) / 4).max(Duration::from_millis(250))
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
                OnStart::Join => (agreement::stamped(&spec, sidecar, now_ms()), true, replicas),
                OnStart::ScaleUp => {
                    (agreement::scaled_up(&spec, self.config.replicas, sidecar, now_ms()), true, u64::from(self.config.replicas))
                }
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
                Updated::Conflict => tracing::debug!(app = %self.app, "the service changed since it was read: reading it again"),
            }
        }
        Err(format!("the service {name:?} changed under each of {CAS_ATTEMPTS} attempts to scale it up"))
    }
}

/// What the instance and its watcher share.
struct Shared {
    /// When this sidecar last saw a request for the app (unix ms).
    last_activity_ms: AtomicU64,
    /// The activity stamp last written to the service's labels.
    stamped_ms: AtomicU64,
    /// Set once every expected task was ready: from then on, a task that fails is
    /// Swarm's to replace, not a failed start.
    became_ready: std::sync::atomic::AtomicBool,
}

/// Reads the service's tasks for the instance's life: the ready addresses, a
/// failed start (Swarm's reason), the service gone; and writes this sidecar's
/// activity stamp.
struct Watch {
    app: String,
    service: String,
    id: String,
    /// The service's version when the start read it: tasks changed since are this start's.
    since: u64,
    ours: bool,
    config: ServiceConfig,
    readiness: Readiness,
    throttle: Duration,
    ctx: Arc<Context>,
    shared: Arc<Shared>,
    /// Node id → its address (for ports published in host mode).
    nodes: Mutex<HashMap<String, IpAddr>>,
}

impl Watch {
    async fn run(self, ready: watch::Sender<Vec<SocketAddr>>, exited: watch::Sender<Option<String>>) {
        let Some(docker) = self.ctx.docker.as_ref() else { return };
        let mut empty_reads = 0;
        loop {
            let became_ready = self.shared.became_ready.load(Ordering::SeqCst);
            match docker.service_tasks(&self.id, Instant::now() + CALL_LIMIT).await {
                Err(DockerError::NoSuchService { .. }) => {
                    let _ = exited.send(Some(format!("the service {:?} was removed", self.service)));
                    return;
                }
                // The daemon away: the tasks are taken to run on (Envoy's failing
                // connections say otherwise).
                Err(e) => tracing::debug!(app = %self.app, "reading the service's tasks: {e}"),
                Ok(tasks) => {
                    if !became_ready {
                        if let Some(why) =
                            tasks.iter().filter(|t| tasks::is_fresh(t, self.since)).find_map(|t| tasks::failure(t, &self.service))
                        {
                            let _ = exited.send(Some(why));
                            return;
                        }
                    }
                    let addresses = self.ready_addresses(docker, &tasks).await;
                    empty_reads = if addresses.is_empty() { empty_reads + 1 } else { 0 };
                    ready.send_if_modified(|current| {
                        let changed = *current != addresses;
                        *current = addresses;
                        changed
                    });
                    if became_ready && empty_reads >= GONE_AFTER_READS {
                        let _ =
                            exited.send(Some(format!("no task of the service {:?} runs any more (scaled down elsewhere?)", self.service)));
                        return;
                    }
                }
            }
            if self.ours {
                self.stamp(docker).await;
            }
            tokio::time::sleep(if became_ready { RUNNING_EVERY } else { STARTING_EVERY }).await;
        }
    }

    /// The addresses of the running tasks that pass the readiness probe, in task order.
    async fn ready_addresses(&self, docker: &Docker, all: &[Task]) -> Vec<SocketAddr> {
        let mut running: Vec<&Task> = all.iter().filter(|t| tasks::is_running(t)).collect();
        running.sort_by_key(|t| t.slot);
        let mut ready = Vec::new();
        for task in running {
            let Some(address) = self.address(docker, task).await else { continue };
            // A published port accepts connections before the app listens (Docker's
            // proxy holds it): the task's own address, where this node has it, says.
            let probe = match self.config.network {
                Some(_) => Some(address),
                None => self.own_address(docker, task).await,
            };
            if readiness::probe(&self.readiness, probe.unwrap_or(address)).await {
                ready.push(address);
            }
        }
        ready
    }

    /// The task's container's own address (on any of its networks), where this node
    /// runs it.
    async fn own_address(&self, docker: &Docker, task: &Task) -> Option<SocketAddr> {
        let info = docker.inspect(tasks::container_id(task)?, Instant::now() + CALL_LIMIT).await.ok()?;
        let networks = info.network_settings?.networks?;
        let mut ips: Vec<IpAddr> = networks.values().filter_map(|n| n.ip_address.as_deref()?.parse().ok()).collect();
        ips.sort();
        ips.first().map(|ip| SocketAddr::new(*ip, self.config.port))
    }

    /// Where a running task is reached: its address on `network` (from its
    /// container, on this node), or its node's address and the port it publishes.
    async fn address(&self, docker: &Docker, task: &Task) -> Option<SocketAddr> {
        let deadline = Instant::now() + CALL_LIMIT;
        match &self.config.network {
            Some(network) => {
                let info = docker.inspect(tasks::container_id(task)?, deadline).await.ok()?;
                let networks = info.network_settings?.networks?;
                let ip = networks.get(network)?.ip_address.as_deref()?.parse().ok()?;
                Some(SocketAddr::new(ip, self.config.port))
            }
            None => {
                let port = tasks::published_port(task, self.config.port)?;
                let node = task.node_id.clone()?;
                let known = self.nodes.lock().ok().and_then(|n| n.get(&node).copied());
                let ip = match known {
                    Some(ip) => ip,
                    None => {
                        let info = docker.inspect_node(&node, deadline).await.ok()?;
                        let addr = info.status.and_then(|s| s.addr).unwrap_or_default();
                        // Published on every address of its node: this node's on loopback.
                        let ip = match addr.parse::<IpAddr>() {
                            Ok(ip) if !ip.is_unspecified() => ip,
                            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        };
                        if let Ok(mut nodes) = self.nodes.lock() {
                            nodes.insert(node, ip);
                        }
                        ip
                    }
                };
                Some(SocketAddr::new(ip, port))
            }
        }
    }

    /// Writes this sidecar's activity stamp when it saw requests since the last one
    /// (at most every `throttle`).
    async fn stamp(&self, docker: &Docker) {
        let seen = self.shared.last_activity_ms.load(Ordering::SeqCst);
        let written = self.shared.stamped_ms.load(Ordering::SeqCst);
        if seen <= written || seen < written + u64::try_from(self.throttle.as_millis()).unwrap_or(u64::MAX) {
            return;
        }
        for _ in 0..CAS_ATTEMPTS {
            let deadline = Instant::now() + CALL_LIMIT;
            let Ok(service) = docker.inspect_service(&self.id, deadline).await else { return };
            let Ok((_, version, spec)) = parts(&service) else { return };
            match docker.update_service(&self.id, version, agreement::stamped(&spec, &self.ctx.sidecar_id, seen), deadline).await {
                Ok(Updated::Done) => {
                    self.shared.stamped_ms.store(seen, Ordering::SeqCst);
                    return;
                }
                Ok(Updated::Conflict) => continue,
                Err(e) => {
                    tracing::debug!(app = %self.app, "cannot write the activity stamp: {e}");
                    return;
                }
            }
        }
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
    /// Scaled up by the sidecars: scaled down when idle.
    ours: bool,
    idle: Option<Duration>,
    ctx: Arc<Context>,
    shared: Arc<Shared>,
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

    /// Scales the service back to its floor, unless someone else scaled it since,
    /// or (`unless_busy_elsewhere`) another sidecar saw a request within the idle time.
    async fn scale_down(&self, unless_busy_elsewhere: bool) {
        let Some(docker) = self.docker() else { return };
        let idle_ms = u64::try_from(self.idle.unwrap_or_default().as_millis()).unwrap_or(u64::MAX);
        for _ in 0..CAS_ATTEMPTS {
            let deadline = Instant::now() + CALL_LIMIT;
            let service = match docker.inspect_service(&self.id, deadline).await {
                Ok(service) => service,
                Err(e) => {
                    tracing::warn!(app = %self.app, "cannot scale the service down: {e}");
                    return;
                }
            };
            let Ok((_, version, spec)) = parts(&service) else { return };
            if !agreement::managed(&spec) {
                tracing::info!(app = %self.app, service = %self.service, "leaving the service as it is: scaled by someone else since, or down already");
                return;
            }
            if unless_busy_elsewhere {
                if let Some((other, ago)) = agreement::busy_elsewhere(&spec, &self.ctx.sidecar_id, now_ms(), idle_ms) {
                    tracing::info!(app = %self.app, service = %self.service, "leaving the service up: the sidecar {other} saw a request {ago} ms ago");
                    return;
                }
            }
            match docker.update_service(&self.id, version, agreement::scaled_down(&spec, self.floor), deadline).await {
                Ok(Updated::Done) => {
                    tracing::info!(app = %self.app, service = %self.service, "scaled the service down to {}", self.floor);
                    return;
                }
                Ok(Updated::Conflict) => continue,
                Err(e) => {
                    tracing::warn!(app = %self.app, "cannot scale the service down: {e}");
                    return;
                }
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
        self.scale_down(true).await;
    }

    async fn discard(&self) -> AfterEarlyExit {
        // A start that cannot succeed: its tasks would fail on and on.
        if self.ours {
            self.scale_down(false).await;
        }
        AfterEarlyExit::Failed
    }

    async fn resume(&self, deadline: Instant) -> Result<(), String> {
        let docker = self.docker().ok_or("no Docker client")?;
        docker.inspect_service(&self.id, deadline).await.map(|_| ()).map_err(|e| e.to_string())
    }
}
