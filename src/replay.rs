//! Remembers signed requests' nonces in Envoy's shared data, so that a replay is
//! caught whichever worker thread receives it.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use wsgiproxy_protocol::middleware::NonceMemory;
use wsgiproxy_protocol::replay::{all_slot_keys, insert, slot_key, Insert};
use wsgiproxy_protocol::signature::Nonce;

/// Compare-and-swap attempts before giving up on a contended slot.
const CAS_ATTEMPTS: usize = 16;

pub struct SharedNonces;

impl SharedNonces {
    /// Creates every slot that does not exist yet. Called from `on_configure`, which
    /// Envoy runs on its main thread before any worker serves (and again in each
    /// worker, where every slot then exists), so no request races the creation.
    pub fn prepare() -> Result<(), String> {
        for key in all_slot_keys() {
            match hostcalls::get_shared_data(&key) {
                // A stored slot always has a CAS token, even when its value is empty.
                Ok((_, Some(_))) => {}
                Ok((_, None)) => hostcalls::set_shared_data(&key, Some(&[]), None).map_err(|s| format!("shared data: {s:?}"))?,
                Err(s) => return Err(format!("shared data: {s:?}")),
            }
        }
        Ok(())
    }
}

impl NonceMemory for SharedNonces {
    fn remember(&mut self, nonce: &Nonce, expires_at: u64, now: u64) -> Result<bool, String> {
        let key = slot_key(nonce);
        for _ in 0..CAS_ATTEMPTS {
            let (current, cas) = hostcalls::get_shared_data(&key).map_err(|s| format!("shared data: {s:?}"))?;
            // Never write without a CAS token: that write would be unconditional.
            let Some(cas) = cas else {
                return Err("the replay memory is not prepared".into());
            };
            match insert(&current.unwrap_or_default(), nonce, expires_at, now) {
                Insert::Replayed => return Ok(false),
                Insert::Full => return Err("the replay memory is full".into()),
                Insert::Fresh(next) => match hostcalls::set_shared_data(&key, Some(&next), Some(cas)) {
                    Ok(()) => return Ok(true),
                    Err(Status::CasMismatch) => continue,
                    Err(s) => return Err(format!("shared data: {s:?}")),
                },
            }
        }
        Err("the replay memory is too contended".into())
    }
}
