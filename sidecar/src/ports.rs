//! Ports for apps without a fixed one: the first free from 10000, as WSGIProxy did.

use std::net::{Ipv4Addr, TcpListener};

pub const FIRST_PORT: u16 = 10000;

/// True when nothing listens on the port (checked by binding it).
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The first free port at or above `first` not in `taken`.
pub fn allocate(first: u16, taken: &[u16]) -> Option<u16> {
    (first..=u16::MAX).find(|p| !taken.contains(p) && is_free(*p))
}

/// Socket inodes listening on `port` (IPv4 or IPv6), from /proc/net.
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
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

/// True when some socket listens on `port`.
pub fn is_listening(port: u16) -> bool {
    !listening_inodes(port).is_empty()
}

/// True when the process that listens on `port` belongs to the process group
/// `pgid`: the port answered because *our* child bound it, not a stranger.
pub fn listened_by_group(port: u16, pgid: u32) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| crate::leftovers::process_group(*pid) == Some(pgid))
        .any(|pid| {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|target| {
                    let t = target.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok()
                })
                .any(|inode| inodes.contains(&inode))
        })
}
