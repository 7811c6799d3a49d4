//! A container app: an existing Docker container (`container = "NAME"`), started on
//! the first request, ready by its healthcheck where it has one (else its port
//! accepting connections, or `ready_path` answering), reached on its address on a
//! network Envoy shares, a published port, or loopback in a shared network
//! namespace; stopped, or paused, when idle.
//!
//! Ownership: the sidecar stops or pauses only containers it started itself,
//! recorded in the state directory with the start time Docker gave them, so that
//! its next run takes over those still running (never starting a second copy), and
//! a container someone else started or restarted is used but never stopped. A
//! start whose time it never learnt (it died, or Docker did not answer, between
//! `docker start` and the inspect after it) proves nothing: the container is
//! left alone, as someone else's.
//!
//! Identity: the configured name is looked up once per start and the answer checked
//! to be the container of that name (Docker answers for a container whose id
//! *begins* with the name when none has it); from then on the container is
//! addressed by its id.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{AfterEarlyExit, Instance, Workload};
use crate::config::{self, AppConfig, ContainerConfig, Readiness, WorkloadConfig};
use crate::context::Context;
use crate::docker::{Docker, DockerError};
use crate::leftovers::{unix_ms, ContainerRecord};
use crate::readiness;
use crate::state_machine::RunningChild;

/// How often readiness is checked: a healthcheck through the daemon, a probe directly.
const HEALTH_EVERY: Duration = Duration::from_millis(100);
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How long a call made outside a start (a stop, a pause, a watch) may take.
const CALL_LIMIT: Duration = Duration::from_secs(10);

pub struct ContainerWorkload {
    app: String,
    config: ContainerConfig,
    readiness: Readiness,
    stop_timeout: Duration,
    ctx: Arc<Context>,
}

/// A container found running that the sidecar started, taken over at its start.
pub struct Adopted {
    pub instance: Arc<dyn Instance>,
    pub paused: bool,
}

fn status(info: &ContainerInspectResponse) -> ContainerStateStatusEnum {
    info.state.as_ref().and_then(|s| s.status).unwrap_or(ContainerStateStatusEnum::EMPTY)
}

fn started_at(info: &ContainerInspectResponse) -> String {
    info.state.as_ref().and_then(|s| s.started_at.clone()).unwrap_or_default()
}

/// Checks that an inspect of the configured `container` answered for the container
/// of that name, or of that full id. Docker looks a reference up as a full id, then
/// a name, then a unique id *prefix*: when no container has the name (removed, or
/// never created), a name that looks like hex resolves to another container.
pub fn check_identity(container: &str, info: &ContainerInspectResponse) -> Result<(), String> {
    let id = info.id.as_deref().unwrap_or_default();
    let name = info.name.as_deref().unwrap_or_default();
    if name.strip_prefix('/') == Some(container) || (!id.is_empty() && id == container) {
        return Ok(());
    }
    let short: String = id.chars().take(12).collect();
    Err(format!(
        "Docker has no container named {container:?}: it answered for the container {short} (named {:?}) whose id begins with it; nothing was done to that one. Configure a container's name, or its full id",
        name.trim_start_matches('/')
    ))
}

fn is_up(status: ContainerStateStatusEnum) -> bool {
    matches!(status, ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED)
}

/// How a container that stopped ended, in a few words.
fn describe_exit(info: &ContainerInspectResponse) -> String {
    let state = info.state.as_ref();
    let code = state.and_then(|s| s.exit_code).unwrap_or_default();
    let oom = state.and_then(|s| s.oom_killed).unwrap_or(false);
    let status = status(info);
    match (oom, code) {
        (true, _) => format!("the container was killed for lack of memory ({status})"),
        (false, 137) => format!("the container was killed (SIGKILL, exit code 137; {status})"),
        (false, code) => format!("the container stopped with exit code {code} ({status})"),
    }
}

/// True when the container runs a healthcheck (one that is not `NONE`).
fn has_healthcheck(info: &ContainerInspectResponse) -> bool {
    let test = info.config.as_ref().and_then(|c| c.healthcheck.as_ref()).and_then(|h| h.test.as_ref());
    test.and_then(|t| t.first()).is_some_and(|kind| kind != "NONE")
}

fn network_mode(info: &ContainerInspectResponse) -> String {
    info.host_config.as_ref().and_then(|h| h.network_mode.clone()).unwrap_or_default()
}

/// `host`, or `container:…`: the app listens on the loopback of a namespace it shares.
fn shares_a_namespace(info: &ContainerInspectResponse) -> bool {
    let mode = network_mode(info);
    mode == "host" || mode.starts_with("container:")
}

fn networks(info: &ContainerInspectResponse) -> Vec<(String, Option<IpAddr>)> {
    let networks = info.network_settings.as_ref().and_then(|n| n.networks.as_ref());
    let mut all: Vec<_> = networks
        .into_iter()
        .flatten()
        .map(|(name, endpoint)| (name.clone(), endpoint.ip_address.as_deref().and_then(|ip| ip.parse().ok())))
        .collect();
    all.sort();
    all
}

/// Where Docker publishes `port`/tcp on the host: from the running container's
/// bindings, else from its configuration (a stopped container has no ports yet).
fn published(info: &ContainerInspectResponse, port: u16) -> Option<SocketAddr> {
    let key = format!("{port}/tcp");
    let running = info.network_settings.as_ref().and_then(|n| n.ports.as_ref()).and_then(|p| p.get(&key).cloned().flatten());
    let configured = || info.host_config.as_ref().and_then(|h| h.port_bindings.as_ref()).and_then(|p| p.get(&key).cloned().flatten());
    let bindings = running.or_else(configured)?;
    bindings.iter().find_map(|b| {
        // Published on every address (or none said): reached on loopback.
        let ip = match b.host_ip.as_deref().unwrap_or_default() {
            "" | "0.0.0.0" | "::" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip.parse().ok()?,
        };
        // A stopped container's port chosen by Docker at each start: 0 until then.
        let host_port = b.host_port.as_deref().unwrap_or_default().parse().unwrap_or(0);
        Some(SocketAddr::new(ip, host_port))
    })
}

/// Checks, at the sidecar's start, that the configuration fits the container: the
/// network is one it is attached to, or the port is published, or it shares a
/// network namespace. The error names the field.
pub fn check(config: &ContainerConfig, info: &ContainerInspectResponse) -> Result<(), (&'static str, String)> {
    let name = &config.container;
    match &config.network {
        Some(network) => {
            let attached = networks(info);
            if attached.iter().any(|(n, _)| n == network) || network_mode(info) == *network {
                Ok(())
            } else {
                let names: Vec<&str> = attached.iter().map(|(n, _)| n.as_str()).collect();
                Err(("network", format!("the container {name:?} is not attached to the network {network:?} (it is on: {})", names.join(", "))))
            }
        }
        None if shares_a_namespace(info) || published(info, config.port).is_some() => Ok(()),
        None => Err((
            "port",
            format!(
                "the container {name:?} does not publish {}/tcp and shares no network namespace: set `network` to a network Envoy shares with it, or publish the port (docker create -p 127.0.0.1::{})",
                config.port, config.port
            ),
        )),
    }
}

/// Where requests reach a running container, and where the sidecar probes it (its
/// own address where it has one: a published port may accept connections that the
/// container refuses).
fn addresses(config: &ContainerConfig, info: &ContainerInspectResponse) -> Result<(SocketAddr, SocketAddr), String> {
    let name = &config.container;
    let port = config.port;
    let on = |network: &str| networks(info).into_iter().find(|(n, _)| n == network).and_then(|(_, ip)| ip);
    if let Some(network) = &config.network {
        let ip = on(network).ok_or_else(|| format!("the container {name:?} has no address on the network {network:?}"))?;
        let address = SocketAddr::new(ip, port);
        return Ok((address, address));
    }
    if shares_a_namespace(info) {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        return Ok((address, address));
    }
    match published(info, port) {
        Some(address) if address.port() != 0 => {
            let own = networks(info).into_iter().find_map(|(_, ip)| ip).map(|ip| SocketAddr::new(ip, port));
            Ok((address, own.unwrap_or(address)))
        }
        _ => Err(format!("the container {name:?} publishes no host port for {port}/tcp")),
    }
}

/// Checks every container app against Docker at the sidecar's start: an unknown
/// container, or a configuration that does not fit it, is a configuration error;
/// a daemon that cannot be reached is a warning (its apps answer 503 until it can).
pub async fn check_apps(docker: &Docker, apps: &[AppConfig]) -> Result<(), String> {
    let deadline = Instant::now() + CALL_LIMIT;
    for app in apps {
        let WorkloadConfig::Container(config) = &app.workload else { continue };
        match docker.inspect(&config.container, deadline).await {
            Ok(info) => {
                check_identity(&config.container, &info).map_err(|message| config::error(&app.name, "container", message))?;
                check(config, &info).map_err(|(field, message)| config::error(&app.name, field, message))?;
            }
            Err(e @ DockerError::NoSuchContainer { .. }) => return Err(config::error(&app.name, "container", e)),
            Err(e) => tracing::warn!(app = %app.name, "cannot check its container: {e}; its requests get a 503 until Docker answers"),
        }
    }
    Ok(())
}

/// At the sidecar's start: stops the containers an earlier run started for apps
/// that are no longer container apps (still running as that run left them), and
/// forgets the others.
pub async fn stop_orphans(ctx: &Context, container_apps: &[String]) {
    let Some(docker) = ctx.docker.as_ref() else { return };
    for record in ctx.all_containers_started().into_iter().filter(|r| !container_apps.contains(&r.app)) {
        match docker.inspect(&record.id, Instant::now() + CALL_LIMIT).await {
            Ok(info) if is_up(status(&info)) && record.is_unproven() => leave_unproven(ctx, &record),
            Ok(info) if is_up(status(&info)) && record.proves(&record.app, &record.id, &started_at(&info)) => {
                tracing::warn!(app = %record.app, "stopping the container {} an earlier run started for an app no longer configured", record.id);
                if !stop_recorded(docker, &record).await {
                    continue;
                }
            }
            Ok(_) | Err(DockerError::NoSuchContainer { .. }) => {}
            Err(e) => {
                tracing::warn!(app = %record.app, "cannot tell whether the container {} an earlier run started still runs: {e}", record.id);
                continue;
            }
        }
        ctx.forget_container(&record.id);
    }
}

/// Stops a container the sidecar proved it started (thawing it first); false when
/// Docker would not.
async fn stop_recorded(docker: &Docker, record: &ContainerRecord) -> bool {
    let _ = docker.unpause(&record.id, Instant::now() + CALL_LIMIT).await;
    match docker.stop(&record.id, Duration::from_secs(10)).await {
        Ok(()) | Err(DockerError::NoSuchContainer { .. }) => true,
        Err(e) => {
            tracing::warn!(app = %record.app, "cannot stop the container {}: {e}", record.id);
            false
        }
    }
}

/// A running container that a record without a start time names: the sidecar asked
/// Docker to start it and never learnt when it started, so it cannot tell its own
/// start from someone else's since. Left alone, never stopped; the record goes.
fn leave_unproven(ctx: &Context, record: &ContainerRecord) {
    tracing::warn!(
        app = %record.app,
        "the container {} runs, but the sidecar cannot prove it started it (it asked Docker to start it and never learnt the start's time: it died, or Docker did not answer, in between): it is used if configured, and never stopped or paused by the sidecar",
        record.id
    );
    ctx.metrics.unproven_start(&record.app);
    ctx.forget_container(&record.id);
}

impl ContainerWorkload {
    pub fn new(app: &AppConfig, config: ContainerConfig, ctx: Arc<Context>) -> ContainerWorkload {
        ContainerWorkload { app: app.name.clone(), config, readiness: app.readiness.clone(), stop_timeout: app.stop_timeout, ctx }
    }

    fn docker(&self) -> Result<&Docker, String> {
        self.ctx.docker.as_ref().ok_or_else(|| "no Docker client (the sidecar has no container app)".to_string())
    }

    /// True when the sidecar started this container (and so may stop it).
    fn started_by_us(&self, info: &ContainerInspectResponse) -> bool {
        let id = info.id.as_deref().unwrap_or_default();
        let at = started_at(info);
        self.ctx.containers_started(&self.app).iter().any(|r| r.proves(&self.app, id, &at))
    }

    /// Drops what the sidecar recorded of starts of this container whose time it
    /// never learnt (a start of this run whose inspect failed, or of an earlier run):
    /// they prove nothing; counted when the container runs.
    fn drop_unproven(&self, info: &ContainerInspectResponse) {
        let id = info.id.as_deref().unwrap_or_default();
        for record in self.ctx.containers_started(&self.app).into_iter().filter(|r| r.id == id && r.is_unproven()) {
            if is_up(status(info)) {
                leave_unproven(&self.ctx, &record);
            } else {
                self.ctx.forget_container(&record.id);
            }
        }
    }

    fn instance(&self, info: &ContainerInspectResponse, ours: bool) -> Result<Arc<dyn Instance>, String> {
        let id = info.id.clone().unwrap_or_default();
        let (upstream, probe) = addresses(&self.config, info)?;
        let (exited_tx, exited) = watch::channel(None);
        let watcher = tokio::spawn(watch_exit(Arc::clone(&self.ctx), id.clone(), exited_tx));
        Ok(Arc::new(ContainerInstance {
            app: self.app.clone(),
            container: self.config.container.clone(),
            id,
            upstream,
            probe,
            healthcheck: has_healthcheck(info),
            ours,
            readiness: self.readiness.clone(),
            stop_timeout: self.stop_timeout,
            ctx: Arc::clone(&self.ctx),
            exited,
            watcher,
        }))
    }

    /// At the sidecar's start: takes over the container an earlier run started, if
    /// it still runs as that run left it; forgets the records of the others.
    pub async fn adopt(&self) -> Option<Adopted> {
        let docker = self.docker().ok()?;
        let mut adopted = None;
        for record in self.ctx.containers_started(&self.app) {
            let deadline = Instant::now() + CALL_LIMIT;
            let info = match docker.inspect(&record.id, deadline).await {
                Ok(info) => info,
                Err(DockerError::NoSuchContainer { .. }) => {
                    self.ctx.forget_container(&record.id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(app = %self.app, "cannot tell whether the container {} an earlier run started still runs: {e}", record.id);
                    continue;
                }
            };
            let status = status(&info);
            if is_up(status) && record.is_unproven() {
                leave_unproven(&self.ctx, &record);
                continue;
            }
            let ours = is_up(status) && record.proves(&self.app, &record.id, &started_at(&info));
            if ours {
                if let Err(e) = check_identity(&self.config.container, &info) {
                    // The app now names another container: this one is an orphan.
                    tracing::warn!(app = %self.app, "stopping the container {} an earlier run started for this app, no longer the one configured: {e}", record.id);
                    if stop_recorded(docker, &record).await {
                        self.ctx.forget_container(&record.id);
                    }
                    continue;
                }
            }
            if adopted.is_none() && ours {
                match self.instance(&info, true) {
                    Ok(instance) => {
                        tracing::info!(app = %self.app, container = %self.config.container, "taking over the container an earlier run started ({status})");
                        adopted = Some(Adopted { instance, paused: status == ContainerStateStatusEnum::PAUSED });
                        continue;
                    }
                    Err(e) => tracing::warn!(app = %self.app, "cannot take over the container an earlier run started: {e}"),
                }
            }
            // Stopped since, or restarted by someone else: no longer the sidecar's.
            self.ctx.forget_container(&record.id);
        }
        adopted
    }
}

#[async_trait]
impl Workload for ContainerWorkload {
    async fn start(&self, deadline: Instant) -> Result<Arc<dyn Instance>, String> {
        let docker = self.docker()?;
        let name = &self.config.container;
        let info = docker.inspect(name, deadline).await.map_err(|e| e.to_string())?;
        // Never start, use or stop another container than the one named so.
        check_identity(name, &info)?;
        // From here on, addressed by its id.
        let id = info.id.clone().unwrap_or_default();
        self.drop_unproven(&info);
        match status(&info) {
            ContainerStateStatusEnum::RUNNING if self.started_by_us(&info) => {
                tracing::info!(app = %self.app, container = %name, "the container the sidecar started still runs: using it");
                self.instance(&info, true)
            }
            ContainerStateStatusEnum::RUNNING => {
                tracing::info!(app = %self.app, container = %name, "the container already runs (not started by the sidecar): using it, never stopping it");
                self.instance(&info, false)
            }
            ContainerStateStatusEnum::PAUSED if self.started_by_us(&info) => {
                docker.unpause(&id, deadline).await.map_err(|e| e.to_string())?;
                self.ctx.metrics.resumed(&self.app);
                self.instance(&info, true)
            }
            ContainerStateStatusEnum::PAUSED => {
                Err(format!("the container {name:?} is paused, not by the sidecar: unpause it (docker unpause {name}) or stop it"))
            }
            ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::EMPTY => {
                let requested_unix_ms = unix_ms(SystemTime::now());
                // Recorded before the call: if the sidecar dies before the answer,
                // its next run knows it asked, and says so when it finds the
                // container running (it cannot prove that start its own: it leaves
                // the container alone).
                self.ctx.remember_container(ContainerRecord { app: self.app.clone(), id: id.clone(), started_at: None, requested_unix_ms });
                self.ctx.metrics.started(&self.app);
                if let Err(e) = docker.start(&id, deadline).await {
                    self.ctx.forget_container(&id);
                    return Err(e.to_string());
                }
                let info = docker.inspect(&id, deadline).await.map_err(|e| e.to_string())?;
                let at = started_at(&info);
                tracing::info!(app = %self.app, container = %name, "started the container");
                self.ctx.remember_container(ContainerRecord { app: self.app.clone(), id, started_at: Some(at), requested_unix_ms });
                self.instance(&info, true)
            }
            other => Err(format!("the container {name:?} cannot be started now: it is {other}")),
        }
    }
}

/// Sets `exited` once the container no longer runs: a wait on the daemon (a long
/// poll), confirmed with an inspect; while the daemon cannot be reached, the
/// container is taken to run on (Envoy's failing connections say otherwise).
async fn watch_exit(ctx: Arc<Context>, id: String, exited: watch::Sender<Option<String>>) {
    let Some(docker) = ctx.docker.as_ref() else { return };
    loop {
        let waited = docker.wait_not_running(&id).await;
        match docker.inspect(&id, Instant::now() + CALL_LIMIT).await {
            Ok(info) if !is_up(status(&info)) => {
                let _ = exited.send(Some(describe_exit(&info)));
                return;
            }
            Err(DockerError::NoSuchContainer { .. }) => {
                let _ = exited.send(Some("the container was removed".into()));
                return;
            }
            // Still up (the wait was cut), or the daemon is away: wait again shortly.
            Ok(_) | Err(_) => {
                if let Err(e) = waited {
                    tracing::debug!(container = %id, "waiting for the container's exit: {e}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// A started (or found running) container.
pub struct ContainerInstance {
    app: String,
    /// Its name as configured (for logs and errors).
    container: String,
    id: String,
    upstream: SocketAddr,
    probe: SocketAddr,
    healthcheck: bool,
    /// Started by the sidecar: it may stop or pause it.
    ours: bool,
    readiness: Readiness,
    stop_timeout: Duration,
    ctx: Arc<Context>,
    exited: watch::Receiver<Option<String>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for ContainerInstance {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl ContainerInstance {
    fn docker(&self) -> Option<&Docker> {
        self.ctx.docker.as_ref()
    }

    /// One readiness check.
    async fn ready(&self) -> bool {
        match &self.readiness {
            Readiness::Http(_) => readiness::probe(&self.readiness, self.probe).await,
            Readiness::Tcp if self.healthcheck => {
                let Some(docker) = self.docker() else { return false };
                let Ok(info) = docker.inspect(&self.id, Instant::now() + Duration::from_secs(2)).await else { return false };
                info.state.and_then(|s| s.health).and_then(|h| h.status) == Some(HealthStatusEnum::HEALTHY)
            }
            Readiness::Tcp => readiness::probe(&self.readiness, self.probe).await,
        }
    }

    async fn wait_stopped(&self, limit: Duration) {
        let mut exited = self.exited.clone();
        let _ = tokio::time::timeout(limit, exited.wait_for(Option::is_some)).await;
    }
}

impl RunningChild for ContainerInstance {
    fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    fn is_ours(&self) -> bool {
        self.ours
    }
}

#[async_trait]
impl Instance for ContainerInstance {
    fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    fn describe(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("container".into(), self.container.clone().into());
        fields.insert("container_id".into(), self.id.chars().take(12).collect::<String>().into());
        fields.insert("started_by_sidecar".into(), self.ours.into());
        fields
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let mut exited = self.exited.clone();
        let every = if self.healthcheck && self.readiness == Readiness::Tcp { HEALTH_EVERY } else { PROBE_EVERY };
        loop {
            if let Some(description) = exited.borrow().clone() {
                return Err(description);
            }
            if self.ready().await {
                return Ok(());
            }
            tokio::select! {
                _ = exited.changed() => {}
                _ = tokio::time::sleep(every) => {}
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
            tracing::info!(app = %self.app, container = %self.container, "leaving the container running: the sidecar did not start it");
            return;
        }
        let Some(docker) = self.docker() else { return };
        // A paused container is thawed first, so that it gets its stop signal.
        let _ = docker.unpause(&self.id, Instant::now() + CALL_LIMIT).await;
        match docker.stop(&self.id, self.stop_timeout).await {
            Ok(()) | Err(DockerError::NoSuchContainer { .. }) => {}
            Err(e) => {
                // Still recorded as the sidecar's: the next start, or run, takes it over.
                tracing::warn!(app = %self.app, "could not stop the container {:?}: {e}", self.container);
                return;
            }
        }
        self.wait_stopped(Duration::from_secs(5)).await;
        self.ctx.forget_container(&self.id);
    }

    async fn discard(&self) -> AfterEarlyExit {
        if !self.ours {
            return AfterEarlyExit::Failed;
        }
        let Some(docker) = self.docker() else { return AfterEarlyExit::Failed };
        if !self.has_exited() {
            match docker.kill(&self.id, Instant::now() + CALL_LIMIT).await {
                Ok(()) | Err(DockerError::NoSuchContainer { .. }) => self.wait_stopped(Duration::from_secs(5)).await,
                // "is not running": gone meanwhile.
                Err(DockerError::Refused { .. }) => {}
                Err(e) => {
                    tracing::warn!(app = %self.app, "could not kill the container {:?}: {e}", self.container);
                    return AfterEarlyExit::Failed;
                }
            }
        }
        self.ctx.forget_container(&self.id);
        AfterEarlyExit::Failed
    }

    async fn pause(&self) -> Result<(), String> {
        if !self.ours {
            return Err("the sidecar did not start it".into());
        }
        let docker = self.docker().ok_or("no Docker client")?;
        docker.pause(&self.id, Instant::now() + CALL_LIMIT).await.map_err(|e| e.to_string())
    }

    async fn resume(&self, deadline: Instant) -> Result<(), String> {
        let docker = self.docker().ok_or("no Docker client")?;
        let info = docker.inspect(&self.id, deadline).await.map_err(|e| e.to_string())?;
        match status(&info) {
            ContainerStateStatusEnum::RUNNING => Ok(()),
            ContainerStateStatusEnum::PAUSED => {
                docker.unpause(&self.id, deadline).await.map_err(|e| e.to_string())?;
                self.ctx.metrics.resumed(&self.app);
                Ok(())
            }
            other => Err(format!("the container is {other}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An inspect answer as the daemon gives it (the fields read here).
    fn inspect(json: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(json).unwrap()
    }

    fn config(network: Option<&str>) -> ContainerConfig {
        ContainerConfig { container: "blog".into(), port: 8080, network: network.map(str::to_string) }
    }

    #[test]
    fn the_address_on_a_network_a_published_port_or_loopback() {
        let running = inspect(serde_json::json!({
            "Id": "abc",
            "HostConfig": { "NetworkMode": "apps" },
            "NetworkSettings": {
                "Networks": { "apps": { "IPAddress": "10.213.3.7" }, "other": { "IPAddress": "10.9.0.2" } },
                "Ports": { "8080/tcp": [{ "HostIp": "0.0.0.0", "HostPort": "32771" }, { "HostIp": "::", "HostPort": "32771" }] }
            }
        }));
        let on_apps: SocketAddr = "10.213.3.7:8080".parse().unwrap();
        assert_eq!(addresses(&config(Some("apps")), &running).unwrap(), (on_apps, on_apps));
        // Published on every address: reached on loopback, probed on its own address.
        let (upstream, probe) = addresses(&config(None), &running).unwrap();
        assert_eq!(upstream, "127.0.0.1:32771".parse().unwrap());
        assert!(probe.port() == 8080 && probe.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST), "{probe}");
        assert!(addresses(&config(Some("nowhere")), &running).unwrap_err().contains("no address on the network \"nowhere\""));
        let shared =
            inspect(serde_json::json!({ "HostConfig": { "NetworkMode": "container:envoy" }, "NetworkSettings": { "Networks": {} } }));
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(addresses(&config(None), &shared).unwrap(), (loopback, loopback));
        let unreachable =
            inspect(serde_json::json!({ "HostConfig": { "NetworkMode": "bridge" }, "NetworkSettings": { "Networks": { "bridge": {} } } }));
        assert!(addresses(&config(None), &unreachable).is_err());
    }

    #[test]
    fn a_configuration_that_does_not_fit_the_container_names_the_field() {
        let stopped = inspect(serde_json::json!({
            "HostConfig": { "NetworkMode": "apps", "PortBindings": { "8080/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "" }] } },
            "NetworkSettings": { "Networks": { "apps": { "IPAddress": "" } } }
        }));
        assert!(check(&config(Some("apps")), &stopped).is_ok());
        assert!(check(&config(None), &stopped).is_ok(), "published (on a port Docker picks at each start)");
        let (field, message) = check(&config(Some("web")), &stopped).unwrap_err();
        assert_eq!(field, "network");
        assert!(message.contains("not attached to the network \"web\" (it is on: apps)"), "{message}");
        let unpublished =
            inspect(serde_json::json!({ "HostConfig": { "NetworkMode": "bridge" }, "NetworkSettings": { "Networks": { "bridge": {} } } }));
        let (field, message) = check(&config(None), &unpublished).unwrap_err();
        assert_eq!(field, "port");
        assert!(message.contains("does not publish 8080/tcp"), "{message}");
        let host = inspect(serde_json::json!({ "HostConfig": { "NetworkMode": "host" } }));
        assert!(check(&config(None), &host).is_ok());
    }

    #[test]
    fn an_inspect_by_name_answered_for_another_container_is_refused() {
        let id = "cca7ab7fa8e858b2f45af58b417aa445c6077f9fa328c244e46c5d2b4e3fcdbd";
        let other = inspect(serde_json::json!({ "Id": id, "Name": "/shop" }));
        assert!(check_identity("shop", &other).is_ok());
        assert!(check_identity(id, &other).is_ok(), "its full id");
        // No container is named "cca7ab7fa8": Docker answered for the one whose id begins so.
        let e = check_identity("cca7ab7fa8", &other).unwrap_err();
        assert!(
            e.starts_with("Docker has no container named \"cca7ab7fa8\": it answered for the container cca7ab7fa8e8 (named \"shop\")"),
            "{e}"
        );
        assert!(
            check_identity("cca7ab7fa8e858b2f45af58b417aa445c6077f9fa328c244e46c5d2b4e3fcdb", &other).is_err(),
            "a prefix, however long"
        );
        assert!(check_identity("Shop", &other).is_err());
        assert!(check_identity("sho", &other).is_err());
        assert!(check_identity("", &inspect(serde_json::json!({}))).is_err());
    }

    #[test]
    fn healthchecks_and_exits_read_from_an_inspect() {
        let with = inspect(serde_json::json!({ "Config": { "Healthcheck": { "Test": ["CMD", "/health"] } } }));
        let disabled = inspect(serde_json::json!({ "Config": { "Healthcheck": { "Test": ["NONE"] } } }));
        assert!(has_healthcheck(&with));
        assert!(!has_healthcheck(&disabled));
        assert!(!has_healthcheck(&inspect(serde_json::json!({ "Config": {} }))));
        let killed = inspect(serde_json::json!({ "State": { "Status": "exited", "ExitCode": 137 } }));
        assert_eq!(describe_exit(&killed), "the container was killed (SIGKILL, exit code 137; exited)");
        let crashed = inspect(serde_json::json!({ "State": { "Status": "exited", "ExitCode": 3 } }));
        assert_eq!(describe_exit(&crashed), "the container stopped with exit code 3 (exited)");
    }
}
