//! Remembers signed requests' nonces for the whole Envoy process, so that a replay is
//! caught whichever worker thread receives it. The slots and their format are the
//! protocol crate's (`replay`), as in the Wasm filter's shared data; here they live in
//! one process-wide map behind a mutex.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use wsgiproxy_protocol::middleware::NonceMemory;
use wsgiproxy_protocol::replay::{insert, slot_key, Insert};
use wsgiproxy_protocol::signature::Nonce;

fn slots() -> &'static Mutex<HashMap<String, Vec<u8>>> {
    static SLOTS: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    SLOTS.get_or_init(Mutex::default)
}

pub struct ProcessNonces;

impl NonceMemory for ProcessNonces {
    fn remember(&mut self, nonce: &Nonce, expires_at: u64, now: u64) -> Result<bool, String> {
        // A poisoned lock (a panic while it was held) fails closed.
        let mut slots = slots().lock().map_err(|_| "the replay memory is unavailable".to_string())?;
        let key = slot_key(nonce);
        let current = slots.get(&key).map(Vec::as_slice).unwrap_or_default();
        match insert(current, nonce, expires_at, now) {
            Insert::Replayed => Ok(false),
            Insert::Full => Err("the replay memory is full".into()),
            Insert::Fresh(next) => {
                slots.insert(key, next);
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_fresh_once_until_it_expires() {
        let nonce: Nonce = *b"native-replay-01";
        assert_eq!(ProcessNonces.remember(&nonce, 1_000, 900), Ok(true));
        assert_eq!(ProcessNonces.remember(&nonce, 1_000, 950), Ok(false));
        assert_eq!(ProcessNonces.remember(&nonce, 2_000, 1_001), Ok(true));
    }
}
