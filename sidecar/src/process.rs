//! Starting and stopping children.
//!
//! Every child is forked by one long-lived thread: PR_SET_PDEATHSIG fires when the
//! *thread* that forked exits, so forking from short-lived tokio threads would kill
//! children at random. Each child leads its own process group, so a stop reaches
//! whatever it started too. The early-death race (the sidecar dies between fork and
//! prctl) is closed by checking the parent pid after prctl.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use crate::config::ProcessConfig;

/// What to run for one start.
pub struct Launch {
    /// The app's name (its output is logged under it).
    pub app: String,
    pub config: ProcessConfig,
    pub port: u16,
}

/// A running child.
pub struct ChildHandle {
    pub pid: u32,
    /// Its start time (clock ticks since boot), to tell its process group from a later one.
    pub start_time: u64,
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
    /// SIGKILL to the whole process group, then waits (at most `limit`) until nothing
    /// of it is left: what the leader started is gone too, and its ports are closed.
    pub async fn kill_group(&self, limit: Duration) {
        self.signal(Signal::SIGKILL);
        self.wait_exit(limit).await;
        let deadline = tokio::time::Instant::now() + limit;
        while !crate::leftovers::group_members(self.pid, self.start_time).is_empty() && tokio::time::Instant::now() < deadline {
            self.signal(Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

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
        self.requests.send((launch, tx)).map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.await.map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

fn spawn_child(launch: Launch) -> std::io::Result<ChildHandle> {
    let Launch { app, config, port } = launch;
    let port_text = port.to_string();
    let argv: Vec<String> = config.command.iter().map(|a| a.replace("__PORT__", &port_text)).collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::other("an empty command"));
    };
    let mut command = Command::new(program);
    command.args(args).envs(&config.env).env("PORT", &port_text).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(cwd) = &config.cwd {
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
    let start_time = crate::leftovers::start_time(pid).unwrap_or_default();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let name = app.clone();
        std::thread::spawn(move || drain(stream, &name));
    }
    let (tx, rx) = watch::channel(None);
    std::thread::spawn(move || {
        let description = match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        let _ = tx.send(Some(description));
    });
    Ok(ChildHandle { pid, start_time, exited: rx })
}

/// The longest piece of output logged as one line.
const MAX_LINE: usize = 16 * 1024;

/// Logs a child's output line by line, prefixed with the app's name, until the child
/// closes it. Bytes that are not UTF-8 are logged lossily and never stop the reading:
/// a child whose pipe is no longer read would block, or die of SIGPIPE.
fn drain(stream: impl Read, name: &str) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        match read_line(&mut reader, &mut line) {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.strip_suffix('\n').unwrap_or(&text);
                tracing::info!(target: "child", "[{name}] {}", text.strip_suffix('\r').unwrap_or(text));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(target: "child", "[{name}] reading its output failed ({e}): discarding the rest");
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                return;
            }
        }
    }
}

/// Reads up to a newline (included) or `MAX_LINE` bytes into `line`; 0 at the end.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    while line.len() < MAX_LINE {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            break;
        }
        let room = MAX_LINE - line.len();
        let (take, done) = match available.iter().take(room).position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len().min(room), false),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            break;
        }
    }
    Ok(line.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn output_is_read_in_lines_whatever_the_bytes() {
        let input: &[u8] = b"ok\n\xff\xfe not utf-8\nlast without newline";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_line(&mut reader, &mut line).unwrap() > 0 {
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        assert_eq!(lines, ["ok\n", "\u{fffd}\u{fffd} not utf-8\n", "last without newline"]);
        let long = vec![b'x'; MAX_LINE + 10];
        let mut reader = BufReader::new(long.as_slice());
        assert_eq!(read_line(&mut reader, &mut line).unwrap(), MAX_LINE);
        assert_eq!(read_line(&mut reader, &mut line).unwrap(), 10);
    }
}
