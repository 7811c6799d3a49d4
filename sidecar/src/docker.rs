//! The Docker Engine API, through `bollard` on the daemon's unix socket: the few
//! calls container apps need, each under a timeout, with errors that say which
//! call failed and why (the daemon down, hung, or refusing).
//!
//! The client connects lazily and negotiates the API version on its first call
//! (the daemon may be down when the sidecar starts, and come up later).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{KillContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder};
use tokio::time::Instant;

use crate::workload::left;

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The longest any one call may take (a stop: past the container's own grace).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a Docker call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerError {
    /// The socket is missing, refuses connections, or the connection broke.
    Unreachable { socket: String, detail: String },
    /// No answer in time.
    TimedOut { socket: String, call: &'static str, after: Duration },
    /// The daemon has no such container.
    NoSuchContainer { container: String },
    /// The swarm has no such service.
    NoSuchService { service: String },
    /// The daemon answered with an error.
    Refused { call: &'static str, container: String, detail: String },
}

impl std::fmt::Display for DockerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DockerError::Unreachable { socket, detail } => write!(f, "the Docker daemon cannot be reached at {socket}: {detail}"),
            DockerError::TimedOut { socket, call, after } => {
                write!(f, "the Docker daemon at {socket} did not answer `{call}` within {} ms", after.as_millis())
            }
            DockerError::NoSuchContainer { container } => write!(f, "Docker has no container {container:?}"),
            DockerError::NoSuchService { service } => write!(f, "the swarm has no service {service:?}"),
            DockerError::Refused { call, container, detail } => write!(f, "Docker refused to {call} the container {container:?}: {detail}"),
        }
    }
}

impl DockerError {
    /// The kind of failure, as `wsgiproxy_sidecar_docker_errors_total{kind}` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            DockerError::Unreachable { .. } => "unreachable",
            DockerError::TimedOut { .. } => "timed_out",
            DockerError::NoSuchContainer { .. } => "no_such_container",
            DockerError::NoSuchService { .. } => "no_such_service",
            DockerError::Refused { .. } => "refused",
        }
    }
}

pub struct Docker {
    socket: PathBuf,
    /// Connected, with the API version negotiated.
    client: Mutex<Option<bollard::Docker>>,
    /// Counts each failed call by kind (the daemon unreachable shows here first).
    errors: Option<crate::metrics::DockerErrors>,
}

impl Docker {
    pub fn new(socket: PathBuf) -> Docker {
        Docker { socket, client: Mutex::new(None), errors: None }
    }

    /// Counts each failed call in `errors`.
    pub fn counting_errors(mut self, errors: crate::metrics::DockerErrors) -> Docker {
        self.errors = Some(errors);
        self
    }

    /// Counts `e` (by its kind), and gives it back.
    pub(crate) fn counted(&self, e: DockerError) -> DockerError {
        if let Some(errors) = &self.errors {
            errors.count(e.kind());
        }
        e
    }

    fn socket_name(&self) -> String {
        self.socket.display().to_string()
    }

    fn cached(&self) -> Option<bollard::Docker> {
        match self.client.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The client, connecting and negotiating the API version first if need be.
    pub(crate) async fn client(&self, deadline: Instant) -> Result<bollard::Docker, DockerError> {
        if let Some(client) = self.cached() {
            return Ok(client);
        }
        let path = self.socket_name();
        // bollard's own timeout bounds a call until the daemon's answer begins (a
        // wait's answer begins at once); every call here has its own, tighter one.
        let client = bollard::Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| self.counted(DockerError::Unreachable { socket: path.clone(), detail: e.to_string() }))?;
        let client = self.timed("negotiate the API version with", "", deadline, client.negotiate_version()).await?;
        if let Ok(mut g) = self.client.lock() {
            *g = Some(client.clone());
        }
        Ok(client)
    }

    /// Runs one call under the deadline (and [`CALL_TIMEOUT`]), mapping its errors.
    pub(crate) async fn timed<T>(
        &self,
        call: &'static str,
        container: &str,
        deadline: Instant,
        future: impl std::future::Future<Output = Result<T, BollardError>>,
    ) -> Result<T, DockerError> {
        let limit = left(deadline).min(CALL_TIMEOUT);
        match tokio::time::timeout(limit, future).await {
            Err(_) | Ok(Err(BollardError::RequestTimeoutError)) => {
                Err(self.counted(DockerError::TimedOut { socket: self.socket_name(), call, after: limit }))
            }
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(call, container, e)),
        }
    }

    /// Maps (and counts) a failed call's error.
    fn error(&self, call: &'static str, container: &str, e: BollardError) -> DockerError {
        let e = match e {
            BollardError::DockerResponseServerError { status_code: 404, .. } if !container.is_empty() => {
                DockerError::NoSuchContainer { container: container.to_string() }
            }
            BollardError::DockerResponseServerError { message, .. } => {
                DockerError::Refused { call, container: container.to_string(), detail: message.trim().to_string() }
            }
            other => DockerError::Unreachable { socket: self.socket_name(), detail: other.to_string() },
        };
        self.counted(e)
    }

    pub async fn inspect(&self, container: &str, deadline: Instant) -> Result<ContainerInspectResponse, DockerError> {
        let client = self.client(deadline).await?;
        self.timed("inspect", container, deadline, client.inspect_container(container, None)).await
    }

    pub async fn start(&self, container: &str, deadline: Instant) -> Result<(), DockerError> {
        let client = self.client(deadline).await?;
        self.timed("start", container, deadline, client.start_container(container, None)).await
    }

    /// `docker stop`: the container's stop signal, then SIGKILL after `grace`.
    pub async fn stop(&self, container: &str, grace: Duration) -> Result<(), DockerError> {
        let deadline = Instant::now() + grace + CALL_TIMEOUT;
        let client = self.client(deadline).await?;
        let seconds = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        let stop = client.stop_container(container, Some(options));
        // Past CALL_TIMEOUT: the daemon answers once the container is gone.
        match tokio::time::timeout(left(deadline), stop).await {
            Err(_) => Err(self.counted(DockerError::TimedOut { socket: self.socket_name(), call: "stop", after: grace + CALL_TIMEOUT })),
            Ok(result) => result.map_err(|e| self.error("stop", container, e)),
        }
    }

    pub async fn kill(&self, container: &str, deadline: Instant) -> Result<(), DockerError> {
        let client = self.client(deadline).await?;
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        self.timed("kill", container, deadline, client.kill_container(container, Some(options))).await
    }

    pub async fn pause(&self, container: &str, deadline: Instant) -> Result<(), DockerError> {
        let client = self.client(deadline).await?;
        self.timed("pause", container, deadline, client.pause_container(container)).await
    }

    pub async fn unpause(&self, container: &str, deadline: Instant) -> Result<(), DockerError> {
        let client = self.client(deadline).await?;
        self.timed("unpause", container, deadline, client.unpause_container(container)).await
    }

    /// Resolves when the daemon says the container is not running (at once if it
    /// is not), or with an error when the wait is cut (the daemon went away): a
    /// long poll, with no timeout of its own.
    pub async fn wait_not_running(&self, container: &str) -> Result<(), DockerError> {
        use futures_util::StreamExt as _;
        let client = self.client(Instant::now() + CALL_TIMEOUT).await?;
        let options = WaitContainerOptionsBuilder::new().condition("not-running").build();
        let mut answers = client.wait_container(container, Some(options));
        match answers.next().await {
            // A non-zero exit code comes as this error: the container is not running.
            Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) => Ok(()),
            Some(Err(e)) => Err(self.error("wait for", container, e)),
            None => {
                Err(self
                    .counted(DockerError::Unreachable { socket: self.socket_name(), detail: "the wait ended without an answer".into() }))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_daemon_that_is_not_there_is_a_prompt_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // No socket at all.
        let missing = Docker::new(dir.path().join("docker.sock"));
        let e = missing.inspect("blog", Instant::now() + Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().starts_with("the Docker daemon cannot be reached at "), "{e}");
        // A socket nobody listens on any more.
        let path = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let began = std::time::Instant::now();
        let e = Docker::new(path).start("blog", Instant::now() + Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e:?}");
        assert!(began.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn failed_calls_are_counted_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = crate::metrics::Metrics::default();
        let missing = Docker::new(dir.path().join("docker.sock")).counting_errors(metrics.docker_errors());
        for _ in 0..2 {
            let e = missing.start("blog", Instant::now() + Duration::from_secs(5)).await.unwrap_err();
            assert_eq!(e.kind(), "unreachable");
        }
        let text = metrics.render();
        assert!(text.contains("wsgiproxy_sidecar_docker_errors_total{kind=\"unreachable\"} 2\n"), "{text}");
    }

    #[tokio::test]
    async fn a_hung_daemon_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hung.sock");
        // Accepts connections and never answers.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let began = std::time::Instant::now();
        let e = Docker::new(path).inspect("blog", Instant::now() + Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(e, DockerError::TimedOut { .. }), "{e:?}");
        assert!(e.to_string().contains("did not answer"), "{e}");
        assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
    }
}
