//! The state directory: what an earlier run of the sidecar left behind.
//!
//! - Children of an earlier run (killed with SIGKILL, say) are found through a state
//!   file and stopped at start. A pid is only signalled when its start time matches
//!   the one recorded *and* the machine has not rebooted since (the boot id is
//!   recorded too), so a reused pid is never touched.
//! - Ports in use or quarantined by the earlier run stay quarantined (see `ports.rs`),
//!   since Envoy workers may still hold leases pointing at them.
//! - Containers it started (`ContainerRecord`) are *not* stopped: the next run takes
//!   over those still running as it left them (same id, same start time), and never
//!   touches a container someone else started or restarted, nor one whose start
//!   time it never learnt (that start cannot be told from someone else's).
//! - The directory is locked (`flock`) for the sidecar's life: a second sidecar on the
//!   same directory refuses to start instead of stopping the first one's children.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub app: String,
    pub pid: u32,
    /// Field 22 of /proc/PID/stat: clock ticks since boot when the process started.
    pub start_time: u64,
    /// The port it was started on.
    #[serde(default)]
    pub port: u16,
}

/// A port the state file keeps out of other apps' reach.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeldPort {
    pub app: String,
    pub port: u16,
    /// Until when (Unix milliseconds); absent: in use when the file was written.
    pub until_unix_ms: Option<u64>,
}

/// A container the sidecar started (and so may stop).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub app: String,
    /// The container's full id.
    pub id: String,
    /// Its `State.StartedAt` as Docker gave it after the start; absent while the
    /// start is under way (the sidecar may die between the call and the answer).
    pub started_at: Option<String>,
    /// When the sidecar asked Docker to start it (Unix milliseconds).
    pub requested_unix_ms: u64,
}

impl ContainerRecord {
    /// True when the container `id` of `app`, started at `started_at` (Docker's
    /// RFC 3339 time), is the very start this record holds: same id, same start time.
    ///
    /// A record without a start time proves nothing: the sidecar asked Docker to
    /// start the container and never learnt when it did (it died, or Docker did not
    /// answer, in between). Whether that request took effect, and whether the
    /// container was not stopped and started again by someone else since, cannot be
    /// told from the container, so it matches no start at all.
    pub fn proves(&self, app: &str, id: &str, started_at: &str) -> bool {
        !started_at.is_empty() && self.app == app && self.id == id && self.started_at.as_deref() == Some(started_at)
    }

    /// Only says that a start was asked for (see [`ContainerRecord::proves`]).
    pub fn is_unproven(&self) -> bool {
        self.started_at.is_none()
    }
}

/// The state file's content.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// /proc/sys/kernel/random/boot_id of the run that wrote it.
    pub boot_id: String,
    /// The lease that run granted (ms): how long its grants may still be used.
    pub lease_ms: u64,
    pub children: Vec<Record>,
    pub ports: Vec<HeldPort>,
    /// Containers started and not yet stopped (older files have none).
    #[serde(default)]
    pub containers: Vec<ContainerRecord>,
}

/// This boot's id; empty when unknown (then recorded pids are never signalled).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
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

/// Live (not zombie) processes in the process group `pgid` that started no earlier
/// than `since` (so they descend from the recorded leader, not from a reused id).
pub fn group_members(pgid: u32, since: u64) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.first().is_some_and(|state| state != "Z")
                    && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
                    && f.get(19).and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t >= since)
            })
        })
        .collect()
}

pub struct StateFile {
    path: PathBuf,
    /// Holds the directory's lock for the sidecar's life (closed on exec: children
    /// never inherit it).
    _lock: File,
}

impl StateFile {
    /// Creates and locks the state directory; fails when another sidecar holds it.
    pub fn open(dir: &Path) -> Result<StateFile, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
        let lock_path = dir.join("lock");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            let holder = holder.trim();
            return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
                format!(
                    "another wsgiproxy-sidecar{} uses the state directory {}: refusing to start (it would stop that sidecar's children); give each sidecar its own --state-dir",
                    if holder.is_empty() { String::new() } else { format!(" (pid {holder})") },
                    dir.display()
                )
            } else {
                format!("cannot lock {}: {err}", lock_path.display())
            });
        }
        let _ = lock.set_len(0);
        let _ = writeln!(lock, "{}", std::process::id());
        Ok(StateFile { path: dir.join("children.json"), _lock: lock })
    }

    /// The state an earlier run left, if it ran since the last boot.
    pub fn read(&self) -> Option<State> {
        let bytes = std::fs::read(&self.path).ok()?;
        let state: State = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("ignoring the unreadable state file {}: {e}", self.path.display());
                return None;
            }
        };
        let now = boot_id();
        if now.is_empty() || state.boot_id != now {
            tracing::info!("the state file {} is from another boot: nothing in it is signalled", self.path.display());
            return None;
        }
        Some(state)
    }

    pub fn write(&self, state: &State) {
        let tmp = self.path.with_extension("tmp");
        if let Ok(bytes) = serde_json::to_vec(state) {
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }
}

/// Stops the live leftovers of an earlier run; returns how many were found.
pub async fn stop_leftovers(children: &[Record]) -> usize {
    let mut stopped = 0;
    for record in children {
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
    stopped
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_is_locked_by_one_sidecar_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateFile::open(dir.path()).unwrap();
        let Err(e) = StateFile::open(dir.path()) else { panic!("a second sidecar got the lock") };
        assert!(e.contains(&format!("(pid {})", std::process::id())) && e.contains("refusing to start"), "{e}");
        drop(first);
        assert!(StateFile::open(dir.path()).is_ok(), "the lock goes with the sidecar");
    }

    #[test]
    fn state_from_another_boot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::open(dir.path()).unwrap();
        let child = Record { app: "a".into(), pid: 1, start_time: 0, port: 10000 };
        let mut state = State { boot_id: boot_id(), lease_ms: 2000, children: vec![child], ports: Vec::new(), containers: Vec::new() };
        file.write(&state);
        assert_eq!(file.read(), Some(state.clone()));
        state.boot_id = "0b0b0b0b-not-this-boot".into();
        file.write(&state);
        assert_eq!(file.read(), None, "pid 1 of an earlier boot is not ours");
        // The format of an earlier version (a bare list, no boot id) is not trusted either.
        std::fs::write(dir.path().join("children.json"), r#"[{"app":"a","pid":1,"start_time":0}]"#).unwrap();
        assert_eq!(file.read(), None);
    }

    #[test]
    fn a_container_is_ours_only_as_we_started_it() {
        let at = "2026-05-01T12:00:00.123456789Z";
        let started =
            ContainerRecord { app: "blog".into(), id: "abc".into(), started_at: Some(at.into()), requested_unix_ms: 1_777_636_800_000 };
        assert!(started.proves("blog", "abc", at));
        assert!(!started.is_unproven());
        assert!(!started.proves("blog", "abc", "2026-05-01T12:05:00Z"), "restarted by someone else since");
        assert!(!started.proves("blog", "abc", "2026-05-01T12:00:00.123456788Z"));
        assert!(!started.proves("shop", "abc", at));
        assert!(!started.proves("blog", "abd", at));
        assert!(!started.proves("blog", "abc", ""));
    }

    #[test]
    fn a_start_whose_time_was_never_learnt_proves_no_start() {
        // The sidecar asked, then died before Docker's answer: any start since may be
        // someone else's (its own may never have reached Docker, or was stopped since).
        let asked = ContainerRecord { app: "blog".into(), id: "abc".into(), started_at: None, requested_unix_ms: 1_777_636_800_000 };
        assert!(asked.is_unproven());
        for later in [
            "2026-05-01T12:00:00.5Z",
            "2026-05-01T12:00:00Z",
            "2026-05-01T13:00:00Z",
            "2026-05-01T11:59:00Z",
            "0001-01-01T00:00:00Z",
            "",
            "garbage",
        ] {
            assert!(!asked.proves("blog", "abc", later), "{later}");
        }
    }

    #[test]
    fn a_state_file_of_an_earlier_version_still_reads_its_unproven_records() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::open(dir.path()).unwrap();
        let written = format!(
            r#"{{"boot_id":"{}","lease_ms":2000,"children":[],"ports":[],"containers":[{{"app":"blog","id":"abc","started_at":null,"requested_unix_ms":5}}]}}"#,
            boot_id()
        );
        std::fs::write(dir.path().join("children.json"), written).unwrap();
        let state = file.read().unwrap();
        assert_eq!(state.containers.len(), 1);
        assert!(state.containers[0].is_unproven());
    }
}
