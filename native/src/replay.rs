//! Remembers signed requests' nonces for the whole Envoy process, so that a replay is
//! caught whichever worker thread receives it: the protocol crate's
//! [`ProcessMemory`], in a `static` (the module is loaded once per process).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::middleware::NonceMemory;
use wsgiproxy_protocol::replay::{FingerprintKey, ProcessMemory, Verdict, Window, WARN_PERCENT};
use wsgiproxy_protocol::signature::Nonce;

use crate::abi::{log, LogLevel};

static MEMORY: OnceLock<ProcessMemory> = OnceLock::new();
/// Whether the memory is past [`WARN_PERCENT`] since the last warning.
static WARNED: AtomicBool = AtomicBool::new(false);

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Begins the process's memory at the first configuration that verifies
/// signatures; a later one (another listener, an xDS update) adopts it.
pub fn prepare(config: &Config) -> Result<(), String> {
    let Config::Middleware(config) = config else { return Ok(()) };
    if config.verify.is_none() {
        return Ok(());
    }
    let mut key = [0u8; 16];
    getrandom::getrandom(&mut key).map_err(|e| format!("the replay memory has no randomness for its key: {e}"))?;
    let (skew, future) = (config.max_skew.as_secs(), config.max_future.as_secs());
    let memory = MEMORY.get_or_init(|| {
        ProcessMemory::new(FingerprintKey::new(key), Window::for_skew(skew), future, config.replay_memory_bytes, now_secs())
    });
    memory.adopt(skew, future, config.replay_memory_bytes);
    Ok(())
}

/// How full the process's memory is (percent), once it exists.
pub fn percent_full() -> Option<u64> {
    MEMORY.get().map(|memory| memory.fullness().percent())
}

pub struct ProcessNonces;

impl NonceMemory for ProcessNonces {
    fn remember(&mut self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String> {
        let memory = MEMORY.get().ok_or("the replay memory is not prepared")?;
        let verdict = memory.remember(nonce, signed_at, now).map_err(|e| e.to_string())?;
        let fullness = memory.fullness();
        if !fullness.worth_a_warning() {
            WARNED.store(false, Ordering::Relaxed);
        } else if !WARNED.swap(true, Ordering::Relaxed) {
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
    fn a_nonce_is_fresh_once() {
        let config = r#"{"role":"middleware","secret":{"keys":[{"id":"k","value":"0123456789abcdef"}]}}"#;
        let Ok(config) = wsgiproxy_protocol::config::parse(config.as_bytes(), &|_| None) else { panic!("config") };
        let nonce: Nonce = *b"native-replay-01";
        assert!(ProcessNonces.remember(&nonce, now_secs() + 1, now_secs()).is_err(), "not prepared yet");
        assert_eq!(prepare(&config), Ok(()));
        // Past the default future tolerance (2 s).
        let signed = now_secs() + 3;
        assert_eq!(ProcessNonces.remember(&nonce, signed, signed), Ok(Verdict::Fresh));
        assert_eq!(ProcessNonces.remember(&nonce, signed, signed + 10), Ok(Verdict::Replayed));
        assert_eq!(ProcessNonces.remember(&nonce, signed - 2, signed), Ok(Verdict::SignedBeforeMemory));
    }
}
