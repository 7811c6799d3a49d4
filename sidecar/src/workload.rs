//! The seam between an app's lifecycle (`app.rs`, `state_machine.rs`) and what it
//! runs: a [`Workload`] starts [`Instance`]s — a process on a port
//! (`workload/process.rs`), an existing Docker container (`workload/container.rs`)
//! or a Swarm service scaled up (`workload/service.rs`) — and an instance says where it answers, waits until it is ready or has exited,
//! and stops, pauses or resumes. Leases, idleness, bursts, back-off and the state
//! machine are the same for every kind.

pub mod container;
pub mod process;
pub mod service;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::state_machine::RunningChild;

/// What runs an app: starts one instance at a time.
#[async_trait]
pub trait Workload: Send + Sync {
    /// Starts an instance, or takes over one that already runs (a container started
    /// by someone else, or by an earlier run of the sidecar). Every call to the
    /// outside world is done by `deadline`. The error is the reason a client is told.
    async fn start(&self, deadline: Instant) -> Result<Arc<dyn Instance>, String>;
}

/// After an instance exited before it was ready and was discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterEarlyExit {
    /// It could not use its port, taken by someone else meanwhile: a new start, on
    /// another port, may succeed at once.
    StartAgain,
    /// A failure to tell the callers about.
    Failed,
}

/// One running instance of a workload.
#[async_trait]
pub trait Instance: RunningChild + Send + Sync {
    /// Where requests reach it.
    fn upstream(&self) -> SocketAddr;

    /// Where the next grant sends requests: one of its replicas in turn (a
    /// service's tasks); `None` when none is ready now.
    fn next_upstream(&self) -> Option<SocketAddr> {
        Some(self.upstream())
    }

    /// This sidecar saw a request for it (a service tells the other sidecars).
    fn note_activity(&self) {}

    /// What `/v1/status` shows of it (`pid`, `container`).
    fn describe(&self) -> serde_json::Map<String, serde_json::Value>;

    /// Resolves once it is ready to serve; `Err(how it exited)` if it exits first.
    /// The caller bounds it with the start timeout (dropping the future is safe).
    async fn wait_ready(&self) -> Result<(), String>;

    /// Resolves once it has exited, with how.
    async fn wait_exit(&self) -> String;

    /// Stops it gracefully (then forcibly), and forgets it: once this returns,
    /// nothing of it is left. An instance the sidecar did not start is left alone.
    async fn stop(&self);

    /// Gets rid of it at once (a start that failed or was abandoned, a crash):
    /// kills what is left of it, if it is the sidecar's, and forgets it.
    async fn discard(&self) -> AfterEarlyExit;

    /// Freezes it (an idle app, `on_idle = "pause"`).
    async fn pause(&self) -> Result<(), String> {
        Err("this kind of app cannot be paused".into())
    }

    /// Thaws it, by `deadline`; `Ok` if it was not paused and still runs.
    async fn resume(&self, _deadline: Instant) -> Result<(), String> {
        Err("this kind of app cannot be paused".into())
    }
}

/// The time left until `deadline`, at least a millisecond (a call given no time at
/// all fails as a timeout rather than not at all).
pub fn left(deadline: Instant) -> std::time::Duration {
    deadline.saturating_duration_since(Instant::now()).max(std::time::Duration::from_millis(1))
}
