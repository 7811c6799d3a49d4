//! What a Swarm service's tasks say, read from the task list: which ones are
//! running, where a task publishes its port in `host` mode, and why a task of a
//! start failed (Swarm's own words: its state and error).

use bollard::models::{EndpointPortConfigPublishModeEnum, Task, TaskState};

pub fn state(task: &Task) -> Option<TaskState> {
    task.status.as_ref()?.state
}

/// Running, and meant to run (not one being shut down).
pub fn is_running(task: &Task) -> bool {
    state(task) == Some(TaskState::RUNNING) && task.desired_state == Some(TaskState::RUNNING)
}

/// Created or changed after the service's version `since` (a task of this start,
/// not a failed one left from before).
pub fn is_fresh(task: &Task, since: u64) -> bool {
    task.version.as_ref().and_then(|v| v.index).is_some_and(|i| i > since)
}

pub fn container_id(task: &Task) -> Option<&str> {
    task.status.as_ref()?.container_status.as_ref()?.container_id.as_deref().filter(|id| !id.is_empty())
}

fn name(task: &Task, service: &str) -> String {
    match task.slot {
        Some(slot) => format!("{service}.{slot}"),
        None => format!("{service} (task {})", task.id.as_deref().unwrap_or_default().chars().take(12).collect::<String>()),
    }
}

/// Why a task of this start cannot serve: failed or rejected (a missing image, a
/// command that exits), or pending with an error (no node can take it); `None`
/// while it may still come up.
pub fn failure(task: &Task, service: &str) -> Option<String> {
    let status = task.status.as_ref()?;
    let err = status.err.as_deref().unwrap_or_default().trim();
    let message = status.message.as_deref().unwrap_or_default().trim();
    let state = status.state?;
    let why = if err.is_empty() { message } else { err };
    match state {
        TaskState::FAILED | TaskState::REJECTED => Some(format!("the task {} is {state}: {why}", name(task, service))),
        TaskState::PENDING if !err.is_empty() => Some(format!("the task {} stays pending: {err}", name(task, service))),
        _ => None,
    }
}

/// The host port a task publishes `port` on in `host` mode.
pub fn published_port(task: &Task, port: u16) -> Option<u16> {
    let ports = task.status.as_ref()?.port_status.as_ref()?.ports.as_ref()?;
    ports.iter().find_map(|p| {
        let host_mode = p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST);
        (host_mode && p.target_port == Some(i64::from(port))).then_some(p.published_port).flatten().and_then(|n| u16::try_from(n).ok())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn task(json: serde_json::Value) -> Task {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn swarm_says_why_a_task_cannot_serve() {
        let rejected = task(serde_json::json!({
            "ID": "abcdef0123456789", "Slot": 1, "Version": { "Index": 40 }, "DesiredState": "running",
            "Status": { "State": "rejected", "Message": "preparing", "Err": "No such image: nope:1" }
        }));
        assert_eq!(failure(&rejected, "blog").unwrap(), "the task blog.1 is rejected: No such image: nope:1");
        assert!(is_fresh(&rejected, 39) && !is_fresh(&rejected, 40));
        let exited = task(serde_json::json!({ "Slot": 2, "Status": { "State": "failed", "Err": "task: non-zero exit (3)" } }));
        assert_eq!(failure(&exited, "blog").unwrap(), "the task blog.2 is failed: task: non-zero exit (3)");
        let no_node = task(
            serde_json::json!({ "Slot": 1, "Status": { "State": "pending", "Err": "no suitable node (scheduling constraints not satisfied on 1 node)" } }),
        );
        assert!(failure(&no_node, "blog").unwrap().contains("stays pending: no suitable node"));
        let starting = task(serde_json::json!({ "Slot": 1, "Status": { "State": "starting" } }));
        assert_eq!(failure(&starting, "blog"), None);
        assert!(!is_running(&starting));
    }

    #[test]
    fn a_port_published_in_host_mode() {
        let running = task(serde_json::json!({
            "DesiredState": "running",
            "Status": { "State": "running", "ContainerStatus": { "ContainerID": "c0ffee" },
                        "PortStatus": { "Ports": [{ "Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 32768, "PublishMode": "host" }] } }
        }));
        assert!(is_running(&running));
        assert_eq!(published_port(&running, 8080), Some(32768));
        assert_eq!(published_port(&running, 80), None);
        assert_eq!(container_id(&running), Some("c0ffee"));
    }
}
