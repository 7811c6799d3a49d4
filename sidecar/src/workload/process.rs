//! A process app: a child started on a port the sidecar gives (its fixed port, or
//! one allocated and quarantined by the port book), ready when its port answers and
//! the listener belongs to its process group.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{AfterEarlyExit, Instance, Workload};
use crate::config::{AppConfig, ProcessConfig, Readiness};
use crate::context::Context;
use crate::ports;
use crate::process::{ChildHandle, Launch};
use crate::readiness::{ReadinessCheck, LISTEN_CHECK_EVERY};
use crate::state_machine::RunningChild;

pub struct ProcessWorkload {
    app: String,
    config: ProcessConfig,
    readiness: Readiness,
    stop_timeout: Duration,
    ctx: Arc<Context>,
}

impl ProcessWorkload {
    pub fn new(app: &AppConfig, config: ProcessConfig, ctx: Arc<Context>) -> ProcessWorkload {
        ProcessWorkload { app: app.name.clone(), config, readiness: app.readiness.clone(), stop_timeout: app.stop_timeout, ctx }
    }
}

#[async_trait]
impl Workload for ProcessWorkload {
    async fn start(&self, _deadline: Instant) -> Result<Arc<dyn Instance>, String> {
        let name = &self.app;
        let port = self.ctx.take_port(name, self.config.port).ok_or("no free port")?;
        let launch = Launch { app: name.clone(), config: self.config.clone(), port };
        self.ctx.metrics.started(name);
        let child = match self.ctx.spawner.spawn(launch).await {
            Ok(child) => child,
            Err(e) => {
                self.ctx.release_port(name, port);
                return Err(format!("cannot start {:?}: {e}", self.config.command.first().cloned().unwrap_or_default()));
            }
        };
        tracing::info!(app = %name, pid = child.pid, port, "started");
        self.ctx.remember_child(name, &child, port);
        Ok(Arc::new(ProcessInstance {
            app: name.clone(),
            child,
            port,
            fixed_port: self.config.port.is_some(),
            readiness: self.readiness.clone(),
            stop_signal: self.config.stop_signal,
            stop_timeout: self.stop_timeout,
            ctx: Arc::clone(&self.ctx),
        }))
    }
}

/// A started child, on its port.
pub struct ProcessInstance {
    app: String,
    child: ChildHandle,
    port: u16,
    fixed_port: bool,
    readiness: Readiness,
    stop_signal: nix::sys::signal::Signal,
    stop_timeout: Duration,
    ctx: Arc<Context>,
}

impl ProcessInstance {
    /// The child is gone: the sidecar's books say so, and its port is quarantined.
    fn forget(&self) {
        self.ctx.forget_child(self.child.pid);
        self.ctx.release_port(&self.app, self.port);
    }
}

impl RunningChild for ProcessInstance {
    fn has_exited(&self) -> bool {
        self.child.has_exited()
    }

    fn is_ours(&self) -> bool {
        true
    }
}

#[async_trait]
impl Instance for ProcessInstance {
    fn upstream(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn describe(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("pid".into(), self.child.pid.into());
        fields
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let mut exited = self.child.exited.clone();
        let mut check = ReadinessCheck::new(&self.readiness, self.port, self.child.pid);
        loop {
            if let Some(description) = exited.borrow().clone() {
                return Err(description);
            }
            if check.ready().await {
                return Ok(());
            }
            tokio::select! {
                _ = exited.changed() => {}
                _ = tokio::time::sleep(LISTEN_CHECK_EVERY) => {}
            }
        }
    }

    async fn wait_exit(&self) -> String {
        let mut exited = self.child.exited.clone();
        let _ = exited.wait_for(Option::is_some).await;
        let description = exited.borrow().clone().unwrap_or_default();
        description
    }

    async fn stop(&self) {
        self.child.stop(self.stop_signal, self.stop_timeout).await;
        self.forget();
    }

    async fn discard(&self) -> AfterEarlyExit {
        // Whatever it started goes too, before anything is concluded from the port:
        // a grandchild of ours holding it is not a stranger.
        self.child.kill_group(Duration::from_secs(2)).await;
        let taken = !self.fixed_port && !ports::is_free(self.port);
        self.forget();
        if taken {
            // An allocated port someone else took between our check and the child's bind.
            tracing::warn!(app = %self.app, port = self.port, "the child could not use its port (taken meanwhile): starting again on another");
            AfterEarlyExit::StartAgain
        } else {
            AfterEarlyExit::Failed
        }
    }
}
