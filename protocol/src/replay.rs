//! The nonce memory that refuses replayed signed requests.
//!
//! Nonces are kept in Envoy's shared data (one store per Envoy, across its worker
//! threads), spread over a fixed number of slots so that memory stays bounded and
//! each compare-and-swap touches a small value. A slot holds entries of 16 nonce
//! bytes and an 8-byte big-endian expiry (seconds since the epoch); expired entries
//! are dropped whenever the slot is written. This module is the pure part: which
//! slot, and what the slot becomes; the filter does the compare-and-swap loop.

use crate::signature::{Nonce, NONCE_LEN};

/// Slots in the store.
pub const SLOT_COUNT: usize = 4096;
/// Live nonces one slot holds at most; past it, requests are refused (fail closed).
pub const SLOT_CAPACITY: usize = 512;
const ENTRY_LEN: usize = NONCE_LEN + 8;

/// The shared-data key of the slot that holds `nonce`.
pub fn slot_key(nonce: &Nonce) -> String {
    let index = u32::from_be_bytes([nonce[0], nonce[1], nonce[2], nonce[3]]) as usize % SLOT_COUNT;
    key_of(index)
}

/// Every slot's key. The filter creates them all when it is configured: Envoy's
/// shared data has no atomic "create if absent" (a write with no compare-and-swap
/// token is unconditional), so a slot written for the first time by two workers at
/// once could lose a nonce. Created up front, every later write is a real CAS.
pub fn all_slot_keys() -> impl Iterator<Item = String> {
    (0..SLOT_COUNT).map(key_of)
}

fn key_of(index: usize) -> String {
    format!("wsgiproxy.replay.{index}")
}

#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    /// Not seen: store this as the slot's new value.
    Fresh(Vec<u8>),
    /// Seen before and not yet expired.
    Replayed,
    /// The slot is full of live nonces.
    Full,
}

/// Adds `nonce` (remembered until `expires_at`) to a slot's current value.
pub fn insert(slot: &[u8], nonce: &Nonce, expires_at: u64, now: u64) -> Insert {
    let mut kept = Vec::with_capacity(slot.len() + ENTRY_LEN);
    for entry in slot.chunks_exact(ENTRY_LEN) {
        let (seen, expiry) = entry.split_at(NONCE_LEN);
        let mut expiry_bytes = [0u8; 8];
        expiry_bytes.copy_from_slice(expiry);
        if u64::from_be_bytes(expiry_bytes) < now {
            continue;
        }
        if seen == nonce {
            return Insert::Replayed;
        }
        kept.extend_from_slice(entry);
    }
    if kept.len() / ENTRY_LEN >= SLOT_CAPACITY {
        return Insert::Full;
    }
    kept.extend_from_slice(nonce);
    kept.extend_from_slice(&expires_at.to_be_bytes());
    Insert::Fresh(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_expiry() {
        let a = [1u8; NONCE_LEN];
        let b = [2u8; NONCE_LEN];
        let Insert::Fresh(slot) = insert(&[], &a, 100, 10) else { panic!() };
        assert_eq!(insert(&slot, &a, 100, 50), Insert::Replayed);
        let Insert::Fresh(slot) = insert(&slot, &b, 200, 50) else { panic!() };
        assert_eq!(slot.len(), 2 * ENTRY_LEN);
        // After a's expiry it is dropped on the next write, and may be seen again.
        let Insert::Fresh(slot) = insert(&slot, &a, 300, 101) else { panic!() };
        assert_eq!(slot.len(), 2 * ENTRY_LEN);
        assert_eq!(insert(&slot, &b, 300, 150), Insert::Replayed);
    }

    #[test]
    fn a_full_slot_refuses() {
        let mut slot = Vec::new();
        for i in 0..SLOT_CAPACITY {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let Insert::Fresh(next) = insert(&slot, &n, 100, 0) else { panic!() };
            slot = next;
        }
        assert_eq!(insert(&slot, &[9u8; NONCE_LEN], 100, 0), Insert::Full);
        // Once they expire, there is room again.
        assert!(matches!(insert(&slot, &[9u8; NONCE_LEN], 200, 101), Insert::Fresh(_)));
    }

    #[test]
    fn slots_spread() {
        assert_ne!(slot_key(&[0u8; NONCE_LEN]), slot_key(&[1u8; NONCE_LEN]));
    }

    #[test]
    fn every_nonce_lands_in_a_prepared_slot() {
        let all: std::collections::HashSet<String> = all_slot_keys().collect();
        assert_eq!(all.len(), SLOT_COUNT);
        for first in [0u8, 1, 127, 255] {
            assert!(all.contains(&slot_key(&[first; NONCE_LEN])));
        }
    }
}
