//! The Docker Swarm API calls service apps need, through the same client as
//! containers (`docker.rs`): read a service, update it under its version index (a
//! compare-and-set: Docker refuses an update written against an older version),
//! list its tasks, and read a node's address.

use std::collections::HashMap;

use bollard::models::{Node, Service, ServiceSpec, Task};
use bollard::query_parameters::{ListTasksOptionsBuilder, UpdateServiceOptionsBuilder};
use tokio::time::Instant;

use crate::docker::{Docker, DockerError};

/// What an update under a version index came to.
#[derive(Debug)]
pub enum Updated {
    Done,
    /// Someone updated the service since it was read: read it again and decide again.
    Conflict,
}

/// Docker's answer to an update written against an older version of the service.
fn out_of_sequence(e: &DockerError) -> bool {
    matches!(e, DockerError::Refused { detail, .. } if detail.contains("out of sequence"))
}

/// A service's 404 is no container's.
fn as_service(e: DockerError, service: &str) -> DockerError {
    match e {
        DockerError::NoSuchContainer { .. } => DockerError::NoSuchService { service: service.to_string() },
        other => other,
    }
}

impl Docker {
    pub async fn inspect_service(&self, service: &str, deadline: Instant) -> Result<Service, DockerError> {
        let client = self.client(deadline).await?;
        self.timed("inspect the service", service, deadline, client.inspect_service(service, None))
            .await
            .map_err(|e| as_service(e, service))
    }

    /// Writes `spec` over the service as it was at `version`.
    pub async fn update_service(&self, service: &str, version: u64, spec: ServiceSpec, deadline: Instant) -> Result<Updated, DockerError> {
        let client = self.client(deadline).await?;
        let version = i32::try_from(version).unwrap_or(i32::MAX);
        let options = UpdateServiceOptionsBuilder::new().version(version).build();
        match self.timed("update the service", service, deadline, client.update_service(service, spec, options, None)).await {
            Ok(_) => Ok(Updated::Done),
            Err(e) if out_of_sequence(&e) => Ok(Updated::Conflict),
            Err(e) => Err(as_service(e, service)),
        }
    }

    /// Every task Swarm keeps of the service (running, starting, and the recent
    /// failed or shut down ones).
    pub async fn service_tasks(&self, service_id: &str, deadline: Instant) -> Result<Vec<Task>, DockerError> {
        let client = self.client(deadline).await?;
        let filters = HashMap::from([("service", vec![service_id.to_string()])]);
        let options = ListTasksOptionsBuilder::new().filters(&filters).build();
        self.timed("list the tasks of", service_id, deadline, client.list_tasks(Some(options))).await.map_err(|e| as_service(e, service_id))
    }

    pub async fn inspect_node(&self, node: &str, deadline: Instant) -> Result<Node, DockerError> {
        let client = self.client(deadline).await?;
        self.timed("inspect the node", "", deadline, client.inspect_node(node)).await
    }

    /// This daemon's node id in the swarm (empty when it is not in one).
    pub async fn node_id(&self, deadline: Instant) -> Result<String, DockerError> {
        let client = self.client(deadline).await?;
        let info = self.timed("read the daemon's info", "", deadline, client.info()).await?;
        Ok(info.swarm.and_then(|s| s.node_id).unwrap_or_default())
    }

    pub async fn inspect_network_id(&self, network: &str, deadline: Instant) -> Result<String, DockerError> {
        let client = self.client(deadline).await?;
        let options = bollard::query_parameters::InspectNetworkOptions::default();
        let info = self.timed("inspect the network", "", deadline, client.inspect_network(network, Some(options))).await?;
        Ok(info.id.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_against_an_older_version_is_a_conflict_not_a_failure() {
        // What Docker 20.10 answers (HTTP 500) to an update under a stale version index.
        let stale = DockerError::Refused {
            call: "update the service",
            container: "blog".into(),
            detail: "rpc error: code = Unknown desc = update out of sequence".into(),
        };
        assert!(out_of_sequence(&stale));
        let other = DockerError::Refused { call: "update the service", container: "blog".into(), detail: "invalid mount config".into() };
        assert!(!out_of_sequence(&other));
        assert_eq!(
            as_service(DockerError::NoSuchContainer { container: "blog".into() }, "blog"),
            DockerError::NoSuchService { service: "blog".into() }
        );
    }
}
