//! Starting and stopping children.
//!
//! Every child is forked by one long-lived thread: PR_SET_PDEATHSIG fires when the
//! *thread* that forked exits, so forking from short-lived tokio threads would kill
//! children at random. Each child leads its own process group, so a stop reaches
//! whatever it started too. The early-death race (the sidecar dies between fork and
//! prctl) is closed by checking the parent pid after prctl.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use crate::config::AppConfig;

/// What to run for one start.
pub struct Launch {
    pub app: AppConfig,
    pub port: u16,
}

/// A running child.
pub struct ChildHandle {
    pub pid: u32,
    /// Becomes `Some(exit description)` when the child has exited and been reaped.
    pub exited: watch::Receiver<Option<String>>,
}

impl ChildHandle {
    /// Sends a signal to the child's whole process group.
    pub fn signal(&self, signal: Signal) {
        let _ = killpg(Pid::from_raw(self.pid as i32), signal);
    }

    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Waits until the child has exited, at most `limit`.
    pub async fn wait_exit(&self, limit: Duration) -> bool {
        let mut rx = self.exited.clone();
        let exited = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await.is_ok();
        exited
    }

    /// Signal, grace period, SIGKILL, reap: returns once the child is gone.
    pub async fn stop(&self, signal: Signal, grace: Duration) {
        if self.has_exited() {
            // The leader is gone; make sure nothing it started lingers in its group.
            self.signal(Signal::SIGKILL);
            return;
        }
        self.signal(signal);
        if !self.wait_exit(grace).await {
            tracing::warn!(pid = self.pid, "child did not stop within {grace:?}: SIGKILL");
        }
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(5)).await;
    }
}

type Request = (Launch, oneshot::Sender<std::io::Result<ChildHandle>>);

/// The one thread that forks children.
#[derive(Clone)]
pub struct Spawner {
    requests: mpsc::Sender<Request>,
}

impl Spawner {
    pub fn start() -> std::io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new().name("spawner".into()).spawn(move || {
            for (launch, reply) in rx {
                let _ = reply.send(spawn_child(launch));
            }
        })?;
        Ok(Spawner { requests: tx })
    }

    pub async fn spawn(&self, launch: Launch) -> std::io::Result<ChildHandle> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((launch, tx))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.await.map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

fn spawn_child(launch: Launch) -> std::io::Result<ChildHandle> {
    let Launch { app, port } = launch;
    let port_text = port.to_string();
    let argv: Vec<String> = app.command.iter().map(|a| a.replace("__PORT__", &port_text)).collect();
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(&app.env)
        .env("PORT", &port_text)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &app.cwd {
        command.current_dir(cwd);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setsid, prctl, getppid, _exit) run between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child: Child = command.spawn()?;
    let pid = child.id();
    for (stream, is_err) in [
        (child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), false),
        (child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), true),
    ] {
        if let Some(stream) = stream {
            let name = app.name.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if is_err {
                        tracing::info!(target: "child", "[{name}] {line}");
                    } else {
                        tracing::info!(target: "child", "[{name}] {line}");
                    }
                }
            });
        }
    }
    let (tx, rx) = watch::channel(None);
    std::thread::spawn(move || {
        let description = match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        let _ = tx.send(Some(description));
    });
    Ok(ChildHandle { pid, exited: rx })
}
