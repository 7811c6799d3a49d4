//! Remembers signed requests' nonces, so that a replay is caught whichever worker
//! thread, whichever process of a hot restart, and whichever Envoy given the same
//! file receives it: the protocol crate's [`MappedMemory`], one per configured path
//! (`replay_memory_path`, by default `/dev/shm/wsgiproxy-replay-<uid>`), opened once
//! per process and kept for the process's life. Where no file can be mapped at all,
//! the in-process [`ProcessMemory`] serves instead (counted and logged).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::replay::{
    default_memory_path, FingerprintKey, Found, Fullness, MappedMemory, ProcessMemory, Unavailable, Verdict, Window, WARN_PERCENT,
};
use wsgiproxy_protocol::signature::Nonce;

use crate::abi::{log, LogLevel};

/// The directory of the default memory file, instead of /dev/shm.
pub const DIR_VARIABLE: &str = "WSGIPROXY_REPLAY_MEMORY_DIR";

pub enum Store {
    Mapped(MappedMemory),
    /// No file could be mapped: this process's own memory (today's restart rule).
    Process(ProcessMemory),
}

pub struct Memory {
    store: Store,
    /// Whether it is past [`WARN_PERCENT`] since the last warning.
    warned: AtomicBool,
}

/// A configuration's memory, and whether opening it found a file it could not
/// trust (counted by that configuration).
pub struct Prepared {
    pub memory: &'static Memory,
    pub untrusted: bool,
}

/// Every memory this process opened, by path: one per path, whatever the settings
/// of the configurations that use it.
static MEMORIES: Mutex<Vec<(PathBuf, &'static Memory)>> = Mutex::new(Vec::new());

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Opens (or makes) the memory of a configuration that verifies signatures; a later
/// configuration naming the same path (another listener, an xDS update) adopts it.
pub fn prepare(config: &Config) -> Result<Option<Prepared>, String> {
    let Config::Middleware(config) = config else { return Ok(None) };
    if config.verify.is_none() {
        return Ok(None);
    }
    let path = match &config.replay_memory_path {
        Some(path) => PathBuf::from(path),
        None => default_memory_path(std::env::var(DIR_VARIABLE).ok().as_deref()),
    };
    let (skew, future, bytes) = (config.max_skew.as_secs(), config.max_future.as_secs(), config.replay_memory_bytes);
    let mut memories = MEMORIES.lock().map_err(|_| "the replay memories' table is poisoned".to_string())?;
    if let Some((_, memory)) = memories.iter().find(|(p, _)| *p == path) {
        memory.adopt(skew, future, bytes);
        return Ok(Some(Prepared { memory, untrusted: false }));
    }
    let mut key = [0u8; 16];
    getrandom::getrandom(&mut key).map_err(|e| format!("the replay memory has no randomness for its key: {e}"))?;
    let now = now_secs();
    let shown = path.display();
    let (store, untrusted) = match MappedMemory::open(&path, bytes, now, key) {
        Ok((mapped, found)) => {
            mapped.adopt(skew, future);
            let untrusted = matches!(found, Found::Replaced(_));
            match found {
                Found::Kept => {
                    let f = mapped.fullness();
                    log(
                        LogLevel::Info,
                        &format!("wsgiproxy middleware: the replay memory {shown} kept as it was ({} of {} nonces)", f.live, f.capacity),
                    );
                    if mapped.bytes() >> 20 != bytes >> 20 {
                        log(
                            LogLevel::Warn,
                            &format!(
                                "wsgiproxy middleware: the replay memory {shown} holds {} MB, replay_memory_mb asks {}: it is kept as \
                                 it is (every process using it must agree); remove the file while no Envoy uses it to resize it",
                                mapped.bytes() >> 20,
                                bytes >> 20
                            ),
                        );
                    }
                }
                Found::New => log(
                    LogLevel::Info,
                    &format!(
                        "wsgiproxy middleware: a new replay memory {shown}: signatures dated at or before {} are refused (425)",
                        mapped.trusted_after()
                    ),
                ),
                Found::Replaced(why) => log(
                    LogLevel::Warn,
                    &format!(
                        "wsgiproxy middleware: the replay memory {shown} cannot be trusted ({why}): replaced by a new one, \
                         which refuses signatures dated at or before {} (425)",
                        mapped.trusted_after()
                    ),
                ),
            }
            (Store::Mapped(mapped), untrusted)
        }
        Err(e) => {
            log(
                LogLevel::Warn,
                &format!(
                    "wsgiproxy middleware: no replay memory file ({e}): this process keeps its own memory, which a hot \
                     restart's other process does not share; signatures dated at or before {} are refused (425)",
                    now + future
                ),
            );
            (Store::Process(ProcessMemory::new(FingerprintKey::new(key), Window::for_skew(skew), future, bytes, now)), true)
        }
    };
    let memory: &'static Memory = Box::leak(Box::new(Memory { store, warned: AtomicBool::new(false) }));
    memories.push((path, memory));
    Ok(Some(Prepared { memory, untrusted }))
}

impl Memory {
    fn adopt(&self, skew: u64, future: u64, bytes: u64) {
        match &self.store {
            Store::Mapped(m) => m.adopt(skew, future),
            Store::Process(m) => m.adopt(skew, future, bytes),
        }
    }

    pub fn fullness(&self) -> Fullness {
        match &self.store {
            Store::Mapped(m) => m.fullness(),
            Store::Process(m) => m.fullness(),
        }
    }

    pub fn remember(&self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String> {
        let verdict = match &self.store {
            Store::Mapped(m) => m.remember(nonce, signed_at, now),
            Store::Process(m) => m.remember(nonce, signed_at, now),
        }
        .map_err(|e: Unavailable| e.to_string())?;
        let fullness = self.fullness();
        if !fullness.worth_a_warning() {
            self.warned.store(false, Ordering::Relaxed);
        } else if !self.warned.swap(true, Ordering::Relaxed) {
            log(
                LogLevel::Warn,
                &format!(
                    "wsgiproxy middleware: the replay memory is {}% full ({} of {} nonces; past {WARN_PERCENT}%); \
                     at 100% signed requests are refused with 503: raise replay_memory_mb",
                    fullness.percent(),
                    fullness.live,
                    fullness.capacity
                ),
            );
        }
        Ok(verdict)
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_fresh_once_and_the_file_is_shared() {
        let Ok(dir) = tempfile::tempdir() else { panic!("tempdir") };
        let path = dir.path().join("replay");
        let config = format!(
            r#"{{"role":"middleware","replay_memory_mb":1,"replay_memory_path":"{}","secret":{{"keys":[{{"id":"k","value":"0123456789abcdef"}}]}}}}"#,
            path.display()
        );
        let Ok(config) = wsgiproxy_protocol::config::parse(config.as_bytes(), &|_| None) else { panic!("config") };
        let Ok(Some(prepared)) = prepare(&config) else { panic!("prepare") };
        assert!(!prepared.untrusted);
        let memory = prepared.memory;
        let nonce: Nonce = *b"native-replay-01";
        // Past the default future tolerance (2 s).
        let signed = now_secs() + 3;
        assert_eq!(memory.remember(&nonce, signed, signed), Ok(Verdict::Fresh));
        assert_eq!(memory.remember(&nonce, signed, signed + 10), Ok(Verdict::Replayed));
        assert_eq!(memory.remember(&nonce, signed - 2, signed), Ok(Verdict::SignedBeforeMemory));
        // A second configuration naming the path gets the same memory.
        let Ok(Some(again)) = prepare(&config) else { panic!("prepare") };
        assert!(std::ptr::eq(again.memory, memory));
        // And another process (here, another mapping) sees what it accepted.
        let Ok((other, found)) = MappedMemory::open(&path, 1 << 20, now_secs(), [0; 16]) else { panic!("open") };
        assert_eq!(found, Found::Kept);
        other.adopt(300, 2);
        assert_eq!(other.remember(&nonce, signed, signed + 1), Ok(Verdict::Replayed));
    }
}
