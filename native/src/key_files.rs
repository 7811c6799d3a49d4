//! Keys from files (`secret.keys[i].file`): the real file system under the protocol
//! crate's [`KeyFiles`], and the module thread that polls a configuration's key
//! files every `secret.file_check_ms`.
//!
//! The poll runs on that thread, never on a worker: a request only clones the `Arc`
//! of the ring in use. What it finds is counted and logged from the configuration's
//! context on Envoy's main thread (woken through the configuration's scheduler), where
//! counters may be touched outside a stream.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::counters;
use wsgiproxy_protocol::key_files::{FileStamp, KeyFileEvent, KeyFiles, Keys};
use zeroize::Zeroizing;

use crate::abi::{log, ConfigHandle, LogLevel, Scheduler};
use crate::shared::Shared;
use crate::spawn::Ticker;

/// The scheduler event that says key file events wait to be counted (the spawn
/// role's reports use 0).
pub const EVENT: u64 = 1;

/// Envoy's file system, as the process sees it.
pub struct SystemFiles;

fn stamp_of(metadata: &std::fs::Metadata) -> FileStamp {
    let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    FileStamp {
        device: metadata.dev(),
        inode: metadata.ino(),
        len: metadata.len(),
        modified_ns: ns(metadata.mtime(), metadata.mtime_nsec()),
        changed_ns: ns(metadata.ctime(), metadata.ctime_nsec()),
    }
}

impl KeyFiles for SystemFiles {
    fn stamp(&self, path: &str) -> std::io::Result<FileStamp> {
        // Through symlinks: a Kubernetes `..data` swap shows as another inode.
        std::fs::metadata(path).map(|m| stamp_of(&m))
    }

    fn read(&self, path: &str, limit: usize) -> std::io::Result<(FileStamp, Zeroizing<Vec<u8>>)> {
        // Non-blocking: opening a FIFO put in the key's place must not hang Envoy's
        // main thread (at load) or the poll thread; it is refused below.
        let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(std::io::Error::other("is not a regular file"));
        }
        let mut content = Zeroizing::new(Vec::with_capacity(metadata.len().min(limit as u64) as usize));
        file.take(limit as u64 + 1).read_to_end(&mut content)?;
        if content.len() > limit {
            return Err(std::io::Error::other(format!("is larger than {limit} bytes")));
        }
        Ok((stamp_of(&metadata), content))
    }
}

/// The keys of a configuration, when some come from files.
pub fn watched(config: &Config) -> Option<&Keys> {
    let keys = match config {
        Config::Middleware(m) => m.verify.as_ref(),
        Config::App(a) => a.signing.as_ref(),
        _ => None,
    };
    keys.filter(|k| k.watches_files())
}

/// The polling thread of a configuration's key files, and what it found, waiting
/// to be counted on the main thread.
pub struct KeyFileWatch {
    pending: Arc<Mutex<Vec<KeyFileEvent>>>,
    _ticker: Ticker,
}

impl KeyFileWatch {
    /// Starts polling, when the configuration has key files.
    pub fn start(shared: &Arc<Shared>, scheduler: Scheduler) -> Option<KeyFileWatch> {
        let every = watched(&shared.config)?.check_every();
        let pending = Arc::new(Mutex::new(Vec::new()));
        let (found, weak) = (pending.clone(), Arc::downgrade(shared));
        let began = Instant::now();
        let ticker = Ticker::every(every, move || {
            let Some(shared) = weak.upgrade() else { return };
            let Some(keys) = watched(&shared.config) else { return };
            let events = keys.poll(&SystemFiles, began.elapsed());
            if !events.is_empty() {
                found.lock().unwrap_or_else(PoisonError::into_inner).extend(events);
                scheduler.commit(EVENT);
            }
        });
        ticker.map(|ticker| KeyFileWatch { pending, _ticker: ticker })
    }

    /// Counts and logs what the poll found (on the main thread). A failure is logged
    /// when it is the first since the file was last good; each is counted.
    pub fn report(&self, handle: &ConfigHandle, shared: &Shared) {
        let events = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let (reloads, errors) = match &shared.config {
            Config::App(_) => (counters::app::KEY_FILE_RELOADS, counters::app::KEY_FILE_ERRORS),
            _ => (counters::middleware::KEY_FILE_RELOADS, counters::middleware::KEY_FILE_ERRORS),
        };
        for event in events {
            match event {
                KeyFileEvent::Reloaded { field, path, recovered } => {
                    shared.metrics.inc_config(handle, reloads);
                    let again = if recovered { " (valid again)" } else { "" };
                    log(LogLevel::Info, &format!("wsgiproxy: {field}: {path:?} changed{again}: its keys are in use"));
                }
                KeyFileEvent::Recovered { field, path } => {
                    log(LogLevel::Info, &format!("wsgiproxy: {field}: {path:?} is valid again (the keys in use)"));
                }
                KeyFileEvent::Failed { field, path, reason, first } => {
                    shared.metrics.inc_config(handle, errors);
                    if first {
                        log(
                            LogLevel::Warn,
                            &format!("wsgiproxy: {field}: {path:?} {reason}: the last good keys stay in use (logged once until it is valid again)"),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_stamp_changes_with_a_symlink_swap_and_an_in_place_write() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        std::fs::create_dir(at("..v1")).unwrap();
        std::fs::write(at("..v1/key"), "first-key-0123456789").unwrap();
        std::os::unix::fs::symlink("..v1", at("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", at("key")).unwrap();
        let path = at("key").to_str().unwrap().to_string();
        let (first, content) = SystemFiles.read(&path, 1024).unwrap();
        assert_eq!(&content[..], b"first-key-0123456789");
        assert_eq!(SystemFiles.stamp(&path).unwrap(), first);

        // The kubelet's swap: a new directory, `..data` renamed onto it.
        std::fs::create_dir(at("..v2")).unwrap();
        std::fs::write(at("..v2/key"), "other-key-0123456789").unwrap();
        std::os::unix::fs::symlink("..v2", at("..data_tmp")).unwrap();
        std::fs::rename(at("..data_tmp"), at("..data")).unwrap();
        let swapped = SystemFiles.stamp(&path).unwrap();
        assert_ne!(swapped, first, "same size, maybe the same times: the inode differs");
        assert_eq!(&SystemFiles.read(&path, 1024).unwrap().1[..], b"other-key-0123456789");

        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(at("..v2/key"), "third-key-0123456789").unwrap();
        assert_ne!(SystemFiles.stamp(&path).unwrap(), swapped);

        assert!(SystemFiles.read(&path, 10).is_err(), "larger than the limit");
        assert!(SystemFiles.read(dir.path().to_str().unwrap(), 1024).is_err(), "a directory");
        assert_eq!(SystemFiles.stamp(&at("none").to_string_lossy()).unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }

    /// A FIFO in a key's place, no writer on it: refused at once, never a blocked open.
    #[test]
    #[allow(unsafe_code)] // mkfifo, to make the FIFO
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("key");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let path = fifo.to_str().unwrap().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(SystemFiles.read(&path, 1024).map(|_| ())).unwrap());
        let read = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("reading a FIFO blocked");
        assert!(read.is_err(), "a FIFO is not a key file");
    }
}
