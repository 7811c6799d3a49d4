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

/// Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split(' ').map(str::to_string).collect())
}

/// The process group of a live process, from /proc.
pub fn process_group(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// The start time of a live process, from /proc.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Live processes still in the process group `pgid` that started no earlier than
/// `since` (so they descend from the recorded leader, not from a reused id).
fn group_members(pgid: u32, since: u64) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
                    && f.get(19).and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t >= since)
            })
        })
        .collect()
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
            // The leader itself (same start time), or what it left in its group.
            let leader_alive = start_time(record.pid) == Some(record.start_time);
            if !leader_alive && group_members(record.pid, record.start_time).is_empty() {
                continue;
            }
            tracing::warn!(app = %record.app, pid = record.pid, "stopping a child left by an earlier run");
            let group = Pid::from_raw(record.pid as i32);
            let _ = killpg(group, Signal::SIGTERM);
            for _ in 0..40 {
                if start_time(record.pid) != Some(record.start_time) && group_members(record.pid, record.start_time).is_empty() {
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
