//! A single-node swarm for the tests that need one (`swarm.rs`, `swarm_stack.rs`).
//!
//! When the daemon is not in swarm mode, the first test makes it a single-node
//! swarm (`docker swarm init`), and the last one out of every test process using it
//! leaves it again (`docker swarm leave --force`, on failure too: the guard is
//! dropped while a panic unwinds). Test processes agree through a lock file: each
//! holds it shared while it uses the swarm; the one that can take it exclusively when
//! done is the last, and leaves only a swarm a test created (a marker file says so).
//! A daemon already in swarm mode is left as it was; one made a swarm loses the
//! `docker_gwbridge` network swarm mode made too.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::net::IpAddr;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

use super::docker_support::{docker, docker_available, quietly};

/// `flock(2)` on the lock file (std's `File::lock` is newer than the MSRV); true when taken.
fn flock(file: &File, operation: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor the file owns, for the call's duration.
    unsafe { libc::flock(file.as_raw_fd(), operation) == 0 }
}

const LOCK: &str = "/tmp/wsgiproxy-test-swarm.lock";
const MARKER: &str = "/tmp/wsgiproxy-test-swarm.created";
/// In the marker: the swarm's docker_gwbridge network was made with it.
const GWBRIDGE_NOTE: &str = "docker_gwbridge made by swarm init\n";

/// This process's use of the swarm; the last user out leaves a swarm a test created.
pub struct SwarmGuard {
    lock: File,
    /// The node's address, where tasks publish their ports.
    pub node_addr: IpAddr,
}

fn node_state() -> String {
    let out = Command::new("docker").args(["info", "--format", "{{.Swarm.LocalNodeState}}"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl SwarmGuard {
    fn join() -> SwarmGuard {
        let lock = File::options().create(true).truncate(false).write(true).open(LOCK).unwrap();
        flock(&lock, libc::LOCK_EX);
        if node_state() != "active" {
            // Swarm mode creates this bridge, and leaving the swarm does not remove it.
            let bridge_was_there = quietly(&["network", "inspect", "docker_gwbridge"]);
            let out = Command::new("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1"]).output().unwrap();
            assert!(out.status.success(), "docker swarm init: {}", String::from_utf8_lossy(&out.stderr));
            let note = if bridge_was_there { "" } else { GWBRIDGE_NOTE };
            std::fs::write(MARKER, format!("a test made this daemon a swarm: the last test out leaves it\n{note}")).unwrap();
            eprintln!("made the daemon a single-node swarm");
        }
        let addr = docker(&["info", "--format", "{{.Swarm.NodeAddr}}"]);
        // Shared from now on: other test processes use the swarm beside this one.
        flock(&lock, libc::LOCK_SH);
        SwarmGuard { lock, node_addr: addr.parse().unwrap() }
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        flock(&self.lock, libc::LOCK_UN);
        // Exclusive only when no other test process uses the swarm.
        if flock(&self.lock, libc::LOCK_EX | libc::LOCK_NB) {
            if std::path::Path::new(MARKER).exists() {
                let left = quietly(&["swarm", "leave", "--force"]);
                eprintln!("left the swarm a test made: {left}");
                if std::fs::read_to_string(MARKER).unwrap_or_default().contains(GWBRIDGE_NOTE) {
                    quietly(&["network", "rm", "docker_gwbridge"]);
                }
                let _ = std::fs::remove_file(MARKER);
            }
            flock(&self.lock, libc::LOCK_UN);
        }
    }
}

/// The swarm, for as long as the returned guard lives (shared by this process's tests).
pub fn swarm(test: &str) -> Option<Arc<SwarmGuard>> {
    static CURRENT: Mutex<Weak<SwarmGuard>> = Mutex::new(Weak::new());
    if !docker_available(test) {
        return None;
    }
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(guard) = current.upgrade() {
        return Some(guard);
    }
    let guard = Arc::new(SwarmGuard::join());
    *current = Arc::downgrade(&guard);
    Some(guard)
}
