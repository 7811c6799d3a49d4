//! Remembers signed requests' nonces in Envoy's shared data, so that a replay is
//! caught whichever worker thread receives it. The design is the protocol crate's
//! [`SharedMemory`]; this is its binding to the host's shared data.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use wsgiproxy_protocol::config::MiddlewareConfig;
use wsgiproxy_protocol::middleware::NonceMemory;
use wsgiproxy_protocol::replay::{SetError, SharedData, SharedLayout, SharedMemory, Verdict};
use wsgiproxy_protocol::signature::Nonce;

struct EnvoySharedData;

impl SharedData for EnvoySharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
        match hostcalls::get_shared_data(key) {
            // A stored key always has a CAS token, even when its value is empty.
            Ok((value, Some(cas))) => Ok(Some((value.unwrap_or_default(), cas))),
            Ok((_, None)) => Ok(None),
            Err(s) => Err(format!("{s:?}")),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(s) => Err(SetError::Host(format!("{s:?}"))),
        }
    }
}

/// Creates the memory's keys (the first VM) or finds them (every later one).
/// Called from `on_configure`, which Envoy runs on its main thread before any
/// worker serves, so no request races the creation.
pub fn prepare(config: &MiddlewareConfig, now: SystemTime) -> Result<SharedMemory, String> {
    let layout = SharedLayout::new(config.max_skew.as_secs(), config.replay_memory_bytes);
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    SharedMemory::prepare(&EnvoySharedData, layout, now, || {
        let mut key = [0u8; 16];
        getrandom::getrandom(&mut key).map_err(|e| format!("no randomness for the fingerprint key: {e}"))?;
        Ok(key)
    })
}

/// One request's use of the memory; `fullest` keeps the fullest key percentage
/// seen since the last metrics flush.
pub struct SharedNonces<'a> {
    pub memory: Option<&'a SharedMemory>,
    pub fullest: &'a Cell<Option<u64>>,
}

impl NonceMemory for SharedNonces<'_> {
    fn remember(&mut self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String> {
        let memory = self.memory.ok_or("the replay memory is not prepared")?;
        let (verdict, fullness) = memory.remember(&EnvoySharedData, nonce, signed_at, now).map_err(|e| e.to_string())?;
        if verdict == Verdict::Fresh {
            self.fullest.set(Some(self.fullest.get().unwrap_or_default().max(fullness.percent())));
        }
        Ok(verdict)
    }
}
