//! Remembers signed requests' nonces in Envoy's shared data, so that a replay is
//! caught whichever worker thread receives it.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use wsgiproxy_protocol::middleware::NonceMemory;
use wsgiproxy_protocol::replay::{insert, slot_key, Insert};
use wsgiproxy_protocol::signature::Nonce;

/// Compare-and-swap attempts before giving up on a contended slot.
const CAS_ATTEMPTS: usize = 16;

pub struct SharedNonces;

impl NonceMemory for SharedNonces {
    fn remember(&mut self, nonce: &Nonce, expires_at: u64, now: u64) -> Result<bool, String> {
        let key = slot_key(nonce);
        for _ in 0..CAS_ATTEMPTS {
            let (current, cas) = hostcalls::get_shared_data(&key).map_err(|s| format!("shared data: {s:?}"))?;
            let current = current.unwrap_or_default();
            match insert(&current, nonce, expires_at, now) {
                Insert::Replayed => return Ok(false),
                Insert::Full => return Err("the replay memory is full".into()),
                Insert::Fresh(next) => match hostcalls::set_shared_data(&key, Some(&next), cas) {
                    Ok(()) => return Ok(true),
                    Err(Status::CasMismatch) => continue,
                    Err(s) => return Err(format!("shared data: {s:?}")),
                },
            }
        }
        Err("the replay memory is too contended".into())
    }
}
