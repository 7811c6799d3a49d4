//! Children of an earlier run of the sidecar (killed with SIGKILL, say) are found
//! through a state file and stopped at start. A pid is only signalled when its
//! start time matches the one recorded, so a reused pid is never touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub app: String,
    pub pid: u32,
    /// Field 22 of /proc/PID/stat: clock ticks since boot when the process started.
    pub start_time: u64,
}

/// The start time of a live process, from /proc.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> std::io::Result<StateFile> {
        std::fs::create_dir_all(dir)?;
        Ok(StateFile { path: dir.join("children.json") })
    }

    pub fn read(&self) -> Vec<Record> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn write(&self, records: &[Record]) {
        let tmp = self.path.with_extension("tmp");
        if let Ok(bytes) = serde_json::to_vec(records) {
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }

    /// Stops the live leftovers of an earlier run, then forgets them.
    pub async fn stop_leftovers(&self) -> usize {
        let mut stopped = 0;
        for record in self.read() {
            if start_time(record.pid) != Some(record.start_time) {
                continue;
            }
            tracing::warn!(app = %record.app, pid = record.pid, "stopping a child left by an earlier run");
            let group = Pid::from_raw(record.pid as i32);
            let _ = killpg(group, Signal::SIGTERM);
            for _ in 0..40 {
                if start_time(record.pid) != Some(record.start_time) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = killpg(group, Signal::SIGKILL);
            stopped += 1;
        }
        self.write(&[]);
        stopped
    }
}
