//! A service app's configuration checked against the swarm at the sidecar's start.

use tokio::time::Instant;

use super::{parts, CALL_LIMIT};
use crate::agreement;
use crate::config::{self, AppConfig, ServiceConfig, WorkloadConfig};
use crate::docker::{Docker, DockerError};

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
