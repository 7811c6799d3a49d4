//! wsgiproxy-sidecar: starts backends on demand for the WSGIProxy Envoy filter's
//! `spawn` role — processes, or existing Docker containers — reports when they are
//! ready, stops (or pauses) them when idle, and stops them all when it stops.

mod agreement;
mod api;
mod app;
mod config;
mod context;
mod docker;
mod leftovers;
mod metrics;
mod ports;
mod process;
mod readiness;
mod state_machine;
mod swarm;
mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(about = "Starts backends (processes or Docker containers) on demand for the WSGIProxy Envoy filter")]
struct Args {
    /// The apps' configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Where the control API listens (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Where children are recorded, to stop leftovers of an earlier run.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How long a grant lets the filter send requests without asking again (at least
    /// 1000: the filter stops using a lease 500 ms before its end, and renews it from
    /// 1000 ms before).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1000..=600_000))]
    lease_ms: u64,
    /// Where port allocation starts for apps without a fixed port.
    #[arg(long, default_value_t = ports::FIRST_PORT)]
    first_port: u16,
    /// The Docker daemon's socket, for container apps.
    #[arg(long, default_value = docker::DEFAULT_SOCKET)]
    docker_socket: PathBuf,
    /// This sidecar's name among several sharing a Swarm service (the label of its
    /// activity stamp): distinct for each sidecar, the same across its restarts;
    /// default: the host's name, its Docker node id (else machine id) and the
    /// control API's port.
    #[arg(long)]
    sidecar_id: Option<String>,
    /// Validate the configuration (and the containers it names, when Docker answers) and exit.
    #[arg(long)]
    check: bool,
}

fn uses_docker(app: &config::AppConfig) -> bool {
    matches!(app.workload, config::WorkloadConfig::Container(_) | config::WorkloadConfig::Service(_))
}

/// The default sidecar id: the host's name, the first 12 characters of what tells
/// this host from others (the Docker node id, else the machine id), and the control
/// API's port. Stable across restarts, so a restarted sidecar recognises its own
/// stamps. A fixed host name (compose `hostname:`) alone would make sidecars on
/// different hosts take each other's stamps for their own.
fn default_sidecar_id(hostname: &str, host_id: &str, port: u16) -> Result<String, String> {
    let host = hostname.trim();
    if host.is_empty() {
        return Err("cannot tell this host's name (/proc/sys/kernel/hostname): give each sidecar a distinct --sidecar-id".into());
    }
    let host_id: String = host_id.trim().chars().take(12).collect();
    Ok(if host_id.is_empty() { format!("{host}-{port}") } else { format!("{host}-{host_id}-{port}") })
}

/// What tells this host from the others: the swarm node id when the daemon answers,
/// else `/etc/machine-id`.
async fn host_id(docker: Option<&docker::Docker>) -> String {
    if let Some(docker) = docker {
        if let Ok(id) = docker.node_id(tokio::time::Instant::now() + Duration::from_secs(5)).await {
            if !id.is_empty() {
                return id;
            }
        }
    }
    std::fs::read_to_string("/etc/machine-id").unwrap_or_default()
}

fn default_state_dir(config: &std::path::Path) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    // FNV-1a of the config path: one state directory per configuration.
    let hash = absolute.to_string_lossy().bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    base.join(format!("wsgiproxy-sidecar-{hash:016x}"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let apps = match config::load(&args.config) {
        Ok(apps) => apps,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if apps.iter().any(uses_docker) {
        let docker = docker::Docker::new(args.docker_socket.clone());
        let checked = match workload::container::check_apps(&docker, &apps).await {
            Ok(()) => workload::service::check_apps(&docker, &apps).await,
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
    if args.check {
        println!("configuration {} OK ({} apps)", args.config.display(), apps.len());
        return;
    }
    if let Err(e) = run(args, apps).await {
        eprintln!("wsgiproxy-sidecar: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args, configs: Vec<config::AppConfig>) -> Result<(), Box<dyn std::error::Error>> {
    let state_dir = args.state_dir.clone().unwrap_or_else(|| default_state_dir(&args.config));
    // Locked first: a second sidecar on the same directory must not touch the first
    // one's children.
    let state_file = leftovers::StateFile::open(&state_dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let earlier = state_file.read();
    if let Some(earlier) = &earlier {
        let stopped = leftovers::stop_leftovers(&earlier.children).await;
        if stopped > 0 {
            tracing::warn!("stopped {stopped} children left by an earlier run");
        }
    }
    let lease = Duration::from_millis(args.lease_ms);
    for c in &configs {
        if let Some(idle) = c.idle_shutdown.filter(|idle| *idle < lease + state_machine::STOP_GRACE) {
            tracing::info!(
                app = %c.name,
                "idle_shutdown ({idle:?}) is shorter than the lease plus its grace ({:?}): the app stops that long after its last request",
                lease + state_machine::STOP_GRACE
            );
        }
    }
    let fixed_ports: Vec<u16> = configs.iter().filter_map(config::AppConfig::fixed_port).collect();
    let container_apps: Vec<String> =
        configs.iter().filter(|c| matches!(c.workload, config::WorkloadConfig::Container(_))).map(|c| c.name.clone()).collect();
    // A Docker client for container apps, and for containers an earlier run started.
    let recorded = earlier.as_ref().is_some_and(|e| !e.containers.is_empty());
    let docker = (configs.iter().any(uses_docker) || recorded).then(|| docker::Docker::new(args.docker_socket.clone()));
    let uses_services = configs.iter().any(|c| matches!(c.workload, config::WorkloadConfig::Service(_)));
    let sidecar_id = match args.sidecar_id.clone().filter(|id| !id.trim().is_empty()) {
        Some(id) => id,
        None if uses_services => {
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let port = listener.local_addr().unwrap_or(args.listen).port();
            default_sidecar_id(&hostname, &host_id(docker.as_ref()).await, port)?
        }
        // Only service apps share anything under this id.
        None => format!("sidecar-{}", args.listen.port()),
    };
    if uses_services {
        tracing::info!("sidecar id {sidecar_id:?} (its activity stamp: the label {})", agreement::stamp_key(&sidecar_id));
    }
    let ctx = context::Context::new(process::Spawner::start()?, docker, lease, args.first_port, fixed_ports, state_file, earlier);
    let ctx = Arc::new(ctx.with_sidecar_id(sidecar_id));
    let apps: BTreeMap<String, Arc<app::App>> = configs.into_iter().map(|c| (c.name.clone(), app::App::new(c, Arc::clone(&ctx)))).collect();
    {
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move { workload::container::stop_orphans(&ctx, &container_apps).await });
    }
    for app in apps.values() {
        let taking_over = Arc::clone(app);
        tokio::spawn(async move { taking_over.take_over().await });
        tokio::spawn(Arc::clone(app).idle_monitor());
    }
    tracing::info!("control API on http://{} ({} apps)", listener.local_addr()?, apps.len());
    let api = Arc::new(api::Api { apps: apps.clone(), ctx: Arc::clone(&ctx) });
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let api = Arc::clone(&api);
                tokio::spawn(async move {
                    let service = service_fn(move |req| Arc::clone(&api).handle(req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("stopping every app");
    // Connections kept alive still reach the API: from now on, ensure answers 503.
    ctx.begin_shutdown();
    let stops: Vec<_> = apps
        .values()
        .map(|a| {
            let a = Arc::clone(a);
            tokio::spawn(async move { a.shutdown().await })
        })
        .collect();
    for stop in stops {
        let _ = stop.await;
    }
    tracing::info!("all apps stopped");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sidecar_id_tells_hosts_apart_and_refuses_no_host_name() {
        let a = default_sidecar_id("web\n", "x4ymg1abcdefghijk\n", 9090);
        let b = default_sidecar_id("web", "p9q8r7stuvwxyzab", 9090);
        assert_eq!(a.as_deref(), Ok("web-x4ymg1abcdef-9090"));
        assert_ne!(a, b, "one compose hostname on two hosts");
        assert_eq!(default_sidecar_id("web", "", 9091).as_deref(), Ok("web-9091"));
        let no_host = default_sidecar_id(" \n", "x4ymg1", 9090).unwrap_err();
        assert!(no_host.contains("--sidecar-id"), "{no_host}");
    }
}
