//! Remembers signed requests' nonces in Envoy's shared data, so that a replay is
//! caught whichever worker thread receives it. The design is the protocol crate's
//! [`SharedMemory`]; this is its binding to the host's shared data.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use wsgiproxy_protocol::config::MiddlewareConfig;
use wsgiproxy_protocol::middleware::NonceMemory;
use wsgiproxy_protocol::replay::{Largest, SetError, SharedData, SharedMemory, SharedSettings, Verdict};
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

/// The largest skew and future tolerance of this VM's configurations (a VM is one
/// thread's instance of the module: its statics are its own).
static LARGEST: OnceLock<Arc<Largest>> = OnceLock::new();

/// Creates the memory's keys (the first VM) or finds them (every later one, of any
/// configuration: one memory per Envoy). Called from `on_configure`, which Envoy
/// runs on its main thread before any worker serves, so no request races the
/// creation. The second value, when set, says the memory was sized by another
/// configuration's `replay_memory_mb`.
pub fn prepare(config: &MiddlewareConfig, now: SystemTime) -> Result<(SharedMemory, Option<String>), String> {
    let settings = SharedSettings {
        skew_secs: config.max_skew.as_secs(),
        future_secs: config.max_future.as_secs(),
        memory_bytes: config.replay_memory_bytes,
    };
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let largest = LARGEST.get_or_init(Arc::default).clone();
    let memory = SharedMemory::prepare(&EnvoySharedData, settings, largest, now, || {
        let mut key = [0u8; 16];
        getrandom::getrandom(&mut key).map_err(|e| format!("no randomness for the fingerprint key: {e}"))?;
        Ok(key)
    })?;
    let resized = (memory.keys() != settings.keys()).then(|| {
        format!(
            "wsgiproxy middleware: replay_memory_mb {} differs from this Envoy's replay memory ({} MB, from the configuration \
             that began it); it takes effect when Envoy restarts",
            config.replay_memory_bytes >> 20,
            (memory.keys() * wsgiproxy_protocol::replay::VALUE_MAX_BYTES) >> 20
        )
    });
    Ok((memory, resized))
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
