//! What a service instance keeps reading for its life: its tasks (the ready
//! addresses, a failed start in Swarm's words, the service gone), the service
//! itself (scaled down by another sidecar: its tasks are stopping), and what it
//! writes: this sidecar's activity stamp.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bollard::models::Task;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{parts, CALL_LIMIT, CAS_ATTEMPTS};
use crate::agreement;
use crate::config::{Readiness, ServiceConfig};
use crate::context::Context;
use crate::docker::{Docker, DockerError};
use crate::leftovers::unix_ms;
use crate::readiness;
use crate::swarm::Updated;
use crate::workload::tasks;

/// How often the tasks are read while a start waits for them, and after.
const STARTING_EVERY: Duration = Duration::from_millis(200);
const RUNNING_EVERY: Duration = Duration::from_millis(agreement::POLL_MS);
/// Reads in a row without a running task, after ready, before the app counts as exited.
const GONE_AFTER_READS: u32 = 5;

/// What the instance and its watcher share.
pub struct Shared {
    /// When this sidecar last saw a request for the app (unix ms).
    pub last_activity_ms: AtomicU64,
    /// The activity stamp last written to the service's labels.
    pub stamped_ms: AtomicU64,
    /// When it was written (unix ms): the next one waits a throttle from then.
    pub stamp_written_at_ms: AtomicU64,
    /// Set once every expected task was ready: from then on, a task that fails is
    /// Swarm's to replace, not a failed start.
    pub became_ready: AtomicBool,
}

/// Reads the service's tasks for the instance's life: the ready addresses, a
/// failed start (Swarm's reason), the service gone; and writes this sidecar's
/// activity stamp.
pub struct Watch {
    pub app: String,
    pub service: String,
    pub id: String,
    /// The service's version when the start read it: tasks changed since are this start's.
    pub since: u64,
    pub ours: bool,
    pub floor: u32,
    pub config: ServiceConfig,
    pub readiness: Readiness,
    pub timing: agreement::Timing,
    pub ctx: Arc<Context>,
    pub shared: Arc<Shared>,
    /// Node id → its address (for ports published in host mode).
    pub nodes: Mutex<HashMap<String, IpAddr>>,
}

impl Watch {
    pub async fn run(self, ready: watch::Sender<Vec<SocketAddr>>, exited: watch::Sender<Option<String>>) {
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
            if let Some(why) = self.read_service(docker).await {
                // Stop routing to its stopping tasks now: the next request starts it again.
                ready.send_replace(Vec::new());
                let _ = exited.send(Some(why));
                return;
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

    /// Reads the service: scaled down elsewhere (why, then), or still up; and
    /// writes this sidecar's activity stamp when it saw requests since the last one
    /// (at most every throttle, and then the latest request's time, so the label
    /// lags the last request by at most a throttle and a poll period).
    async fn read_service(&self, docker: &Docker) -> Option<String> {
        for _ in 0..CAS_ATTEMPTS {
            let deadline = Instant::now() + CALL_LIMIT;
            // The daemon away: decided at the next read.
            let service = docker.inspect_service(&self.id, deadline).await.ok()?;
            let (_, version, spec) = parts(&service).ok()?;
            if agreement::scaled_down_elsewhere(&spec, self.ours, self.floor) {
                let replicas = agreement::replicas(&spec).unwrap_or_default();
                tracing::info!(app = %self.app, service = %self.service, "the service was scaled down to {replicas} (by another sidecar?): its tasks are no longer used");
                return Some(format!("the service {:?} was scaled down to {replicas} (by another sidecar?)", self.service));
            }
            if !self.ours {
                return None;
            }
            let seen = self.shared.last_activity_ms.load(Ordering::SeqCst);
            let now = unix_ms(SystemTime::now());
            let written_at = self.shared.stamp_written_at_ms.load(Ordering::SeqCst);
            if seen <= self.shared.stamped_ms.load(Ordering::SeqCst) || now < written_at.saturating_add(self.timing.throttle_ms) {
                return None;
            }
            let write = agreement::stamped(&spec, &self.ctx.sidecar_id, seen, now, self.timing);
            match docker.update_service(&self.id, version, write, deadline).await {
                Ok(Updated::Done) => {
                    self.shared.stamped_ms.store(seen, Ordering::SeqCst);
                    self.shared.stamp_written_at_ms.store(now, Ordering::SeqCst);
                    return None;
                }
                Ok(Updated::Conflict) => continue,
                Err(e) => {
                    tracing::debug!(app = %self.app, "cannot write the activity stamp: {e}");
                    return None;
                }
            }
        }
        None
    }
}
