//! Ports for apps without a fixed one: the first free from 10000, as WSGIProxy did,
//! with two rules that keep a worker's lease from sending one app's requests to another:
//!
//! - a released port is **quarantined**: no other app may take it until every lease
//!   that pointed at it has run out (the lease, plus a margin). The app that used it
//!   may take it again at once, and is offered it first (its previous port), so that a
//!   lease still held somewhere keeps reaching the right app;
//! - a port an app has configured as fixed is never allocated to another app.
//!
//! The book survives a restart of the sidecar through the state directory
//! (`leftovers.rs`): ports in use or quarantined when it stopped stay quarantined.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

pub const FIRST_PORT: u16 = 10000;

/// How long past the lease a released port stays quarantined: grants still on their
/// way, clock granularity, a slow worker.
pub const QUARANTINE_MARGIN: Duration = Duration::from_secs(5);

/// True when nothing listens on the port (checked by binding it).
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Which app uses or recently used which port.
#[derive(Debug, Default)]
pub struct PortBook {
    first: u16,
    /// Every app's configured fixed port: never allocated.
    fixed: BTreeSet<u16>,
    /// port → the app using it now.
    in_use: BTreeMap<u16, String>,
    /// port → (the app that last used it, until when no other app may take it).
    quarantine: BTreeMap<u16, (String, Instant)>,
    /// app → the port it used last.
    previous: BTreeMap<String, u16>,
}

impl PortBook {
    pub fn new(first: u16, fixed: impl IntoIterator<Item = u16>) -> PortBook {
        PortBook { first, fixed: fixed.into_iter().collect(), ..PortBook::default() }
    }

    /// May `app` take `port` now (leaving aside whether the system has it free)?
    fn allowed(&self, app: &str, port: u16, now: Instant) -> bool {
        !self.in_use.contains_key(&port)
            && !self.fixed.contains(&port)
            && self.quarantine.get(&port).is_none_or(|(owner, until)| owner == app || *until <= now)
    }

    /// A port for `app`: its fixed one, else its previous one when still free, else the
    /// lowest allowed one at or above the first port that `is_free` accepts.
    pub fn take(&mut self, app: &str, fixed: Option<u16>, now: Instant, is_free: &dyn Fn(u16) -> bool) -> Option<u16> {
        self.quarantine.retain(|_, (_, until)| *until > now);
        let port = match fixed {
            Some(port) => port,
            None => {
                let previous = self.previous.get(app).copied().filter(|p| self.allowed(app, *p, now) && is_free(*p));
                match previous {
                    Some(port) => port,
                    None => (self.first..=u16::MAX).find(|p| self.allowed(app, *p, now) && is_free(*p))?,
                }
            }
        };
        self.in_use.insert(port, app.to_string());
        self.quarantine.remove(&port);
        self.previous.insert(app.to_string(), port);
        Some(port)
    }

    /// `app` no longer uses `port`; no other app may take it before `until`.
    pub fn release(&mut self, app: &str, port: u16, until: Instant) {
        if self.in_use.get(&port).is_some_and(|owner| owner == app) {
            self.in_use.remove(&port);
        }
        self.quarantine(app, port, until);
    }

    /// Keeps other apps off `port` until `until` (also for ports of an earlier run).
    pub fn quarantine(&mut self, app: &str, port: u16, until: Instant) {
        let longest = match self.quarantine.get(&port) {
            Some((owner, t)) if owner == app && *t > until => *t,
            _ => until,
        };
        self.quarantine.insert(port, (app.to_string(), longest));
        self.previous.entry(app.to_string()).or_insert(port);
    }

    /// Ports in use or still quarantined, with how long they must stay out of other
    /// apps' reach from `now` (`None`: in use), for the state file.
    pub fn held(&self, now: Instant) -> Vec<(String, u16, Option<Duration>)> {
        let in_use = self.in_use.iter().map(|(port, app)| (app.clone(), *port, None));
        let quarantined = self
            .quarantine
            .iter()
            .filter(|(port, (_, until))| *until > now && !self.in_use.contains_key(port))
            .map(|(port, (app, until))| (app.clone(), *port, Some(until.duration_since(now))));
        in_use.chain(quarantined).collect()
    }

    /// The port `app` used last, if any.
    #[cfg(test)]
    pub fn previous(&self, app: &str) -> Option<u16> {
        self.previous.get(app).copied()
    }
}

/// Socket inodes listening on `port` (IPv4 or IPv6), from /proc/net.
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    // tcp6 only when tcp has none (a read can cost a millisecond under gVisor).
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if !inodes.is_empty() {
            break;
        }
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; inode is field 9.
            let local_port = fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && fields.get(3) == Some(&"0A") {
                if let Some(inode) = fields.get(9).and_then(|i| i.parse().ok()) {
                    inodes.push(inode);
                }
            }
        }
    }
    inodes
}

/// True when the process that listens on `port` belongs to the process group
/// `pgid`: the port answered because *our* child bound it, not a stranger.
pub fn listened_by_group(port: u16, pgid: u32) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let holds_socket = |pid: u32| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter_map(|target| {
                let t = target.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok()
            })
            .any(|inode| inodes.contains(&inode))
    };
    // Mostly the child itself (the group's leader) listens: look there first, and
    // scan every process only for a server that forked its listener.
    if holds_socket(pgid) {
        return true;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != pgid && crate::leftovers::process_group(*pid) == Some(pgid))
        .any(holds_socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_free(_: u16) -> bool {
        true
    }

    #[test]
    fn a_released_port_is_kept_from_other_apps_until_its_leases_ran_out() {
        let t0 = Instant::now();
        let mut book = PortBook::new(10000, []);
        assert_eq!(book.take("a", None, t0, &all_free), Some(10000));
        book.release("a", 10000, t0 + Duration::from_secs(7));
        // Another app does not get it while a lease for "a" may still point there…
        assert_eq!(book.take("b", None, t0 + Duration::from_secs(1), &all_free), Some(10001));
        // …but "a" gets its previous port back at once.
        assert_eq!(book.take("a", None, t0 + Duration::from_secs(1), &all_free), Some(10000));
        book.release("a", 10000, t0 + Duration::from_secs(8));
        book.release("b", 10001, t0 + Duration::from_secs(8));
        // Once the quarantine is over, the lowest port is anyone's again.
        assert_eq!(book.take("c", None, t0 + Duration::from_secs(8), &all_free), Some(10000));
    }

    #[test]
    fn an_app_prefers_its_previous_port_when_free() {
        let t0 = Instant::now();
        let mut book = PortBook::new(10000, []);
        assert_eq!(book.take("a", None, t0, &all_free), Some(10000));
        assert_eq!(book.take("b", None, t0, &all_free), Some(10001));
        book.release("b", 10001, t0);
        book.release("a", 10000, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(book.take("b", None, later, &all_free), Some(10001));
        // Its previous port taken by a stranger: the lowest allowed one instead.
        book.release("b", 10001, later);
        assert_eq!(book.take("b", None, later, &|p| p != 10001), Some(10000));
    }

    #[test]
    fn fixed_ports_are_never_allocated() {
        let t0 = Instant::now();
        let mut book = PortBook::new(10000, [10000, 10002]);
        assert_eq!(book.take("alloc", None, t0, &all_free), Some(10001));
        assert_eq!(book.take("other", None, t0, &all_free), Some(10003));
        assert_eq!(book.take("fixed", Some(10000), t0, &all_free), Some(10000));
    }

    #[test]
    fn held_ports_are_listed_for_the_state_file() {
        let t0 = Instant::now();
        let mut book = PortBook::new(10000, []);
        book.take("a", None, t0, &all_free);
        book.take("b", None, t0, &all_free);
        book.release("b", 10001, t0 + Duration::from_secs(3));
        book.quarantine("old", 10005, t0 + Duration::from_secs(1));
        let held = book.held(t0);
        assert!(held.contains(&("a".into(), 10000, None)));
        assert!(held.contains(&("b".into(), 10001, Some(Duration::from_secs(3)))));
        assert!(held.contains(&("old".into(), 10005, Some(Duration::from_secs(1)))));
        assert_eq!(book.held(t0 + Duration::from_secs(2)).len(), 2, "expired quarantines are not kept");
        assert_eq!(book.previous("old"), Some(10005));
    }
}
