//! The memory of signed requests' nonces, which refuses replayed requests.
//!
//! Design (issue #17). A nonce only needs remembering while a request carrying it
//! could still pass the Date check: while `now - signed_at <= max_skew`. So each
//! nonce is kept in a time bucket chosen by the signature's own timestamp (the
//! Date of v1, `created` of RFC 9421), which a replay carries unchanged: a replay
//! looks in exactly one bucket. Buckets are [`Window::bucket_secs`] wide (a
//! sixteenth of the skew) and a whole bucket is forgotten at once when its last
//! second is more than the skew in the past; nothing is expired entry by entry.
//!
//! A nonce is kept as a 64-bit fingerprint, SipHash-1-3 under a random 128-bit key
//! of this memory ([`FingerprintKey`]): without the key nobody can aim two nonces
//! at one fingerprint, and two different nonces collide by chance with
//! probability `live / 2^64` per request (about 1e-12 with 16 million live).
//!
//! Two stores share this:
//! - [`ProcessMemory`]: the native module's, one per process, in 64 locked shards;
//!   a bucket is a few sorted runs (8 bytes a nonce) and a small hash set.
//! - [`SharedMemory`]: the Wasm filter's, over Envoy's shared data ([`SharedData`]):
//!   a fixed set of small keys, one read and one compare-and-swap per request.
//!
//! Restart protection (RFC 8446 §8, as TLS 1.3 does for 0-RTT): a memory knows
//! nothing of what was accepted before it began, so it refuses every signature
//! dated at or before its first second ([`Verdict::SignedBeforeMemory`]). A
//! request in flight across a restart is refused once (425); its sender signs a
//! new one.

#[cfg(not(target_family = "wasm"))]
mod mapped;
mod process;
mod shared;

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::signature::Nonce;

#[cfg(not(target_family = "wasm"))]
pub use mapped::{default_memory_path, Found, MappedMemory};
pub use process::ProcessMemory;
pub use shared::{FakeSharedData, Largest, SetError, SharedData, SharedMemory, SharedSettings, VALUE_MAX_BYTES};

/// Fullness at or past which the loaders warn (and keep warning in their gauge).
pub const WARN_PERCENT: u64 = 80;

/// The secret key of a memory's fingerprints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FingerprintKey([u8; 16]);

impl FingerprintKey {
    pub fn new(random: [u8; 16]) -> Self {
        FingerprintKey(random)
    }

    pub fn fingerprint(&self, nonce: &Nonce) -> u64 {
        let mut hasher = SipHasher13::new_with_key(&self.0);
        hasher.write(nonce);
        hasher.finish()
    }
}

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey(..)")
    }
}

/// The time buckets of a memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub bucket_secs: u64,
    pub skew_secs: u64,
}

impl Window {
    /// Buckets a sixteenth of the skew wide (at least a second): a bucket is kept
    /// for the skew plus its own width, so the memory holds about 1/16 more than
    /// the nonces that could still be replayed.
    pub fn for_skew(skew_secs: u64) -> Self {
        Window { bucket_secs: (skew_secs / 16).max(1), skew_secs }
    }

    pub fn bucket_of(&self, signed_at: u64) -> u64 {
        signed_at / self.bucket_secs
    }

    /// True once no request signed inside `bucket` can pass the Date check: its
    /// last second is more than the skew before `now`.
    pub fn expired(&self, bucket: u64, now: u64) -> bool {
        let last_second = bucket.saturating_add(1).saturating_mul(self.bucket_secs).saturating_sub(1);
        now > last_second.saturating_add(self.skew_secs)
    }

    /// The newest bucket that is expired at `now`, if any.
    pub fn newest_expired(&self, now: u64) -> Option<u64> {
        (now.checked_sub(self.skew_secs)? / self.bucket_secs).checked_sub(1)
    }

    /// Buckets that can hold live nonces at once: signatures are accepted from
    /// `skew` before to `skew` after now.
    pub fn live_buckets(&self) -> u64 {
        (2 * self.skew_secs + self.bucket_secs).div_ceil(self.bucket_secs) + 1
    }
}

/// What a memory says of a nonce it was asked to remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: now remembered.
    Fresh,
    /// Seen before inside the window.
    Replayed,
    /// Signed at or before the memory began (restart protection): it may have
    /// been accepted by the memory's predecessor.
    SignedBeforeMemory,
    /// Its bucket was already forgotten: the request's own clock reading is older
    /// than the one that expired it (a race at the window's edge). Refused as stale.
    Expired,
}

/// Why a memory cannot answer: the filter fails closed (503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// Past the configured memory bound (`replay_memory_mb`).
    Full,
    /// Lock poisoned by a panic while it was held.
    Poisoned,
    /// Too many compare-and-swap conflicts in a row.
    Contended,
    /// The shared-data keys were not created at configuration.
    NotPrepared,
    /// The host's shared data failed, or holds a value this memory did not write.
    Host(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Full => f.write_str("the replay memory is full (raise replay_memory_mb)"),
            Unavailable::Poisoned => f.write_str("the replay memory is unavailable"),
            Unavailable::Contended => f.write_str("the replay memory is too contended"),
            Unavailable::NotPrepared => f.write_str("the replay memory is not prepared"),
            Unavailable::Host(e) => write!(f, "shared data: {e}"),
        }
    }
}

/// How full a memory is, for a gauge and a warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fullness {
    pub live: u64,
    pub capacity: u64,
}

impl Fullness {
    pub fn percent(&self) -> u64 {
        if self.capacity == 0 {
            return 100;
        }
        (self.live.saturating_mul(100) / self.capacity).min(100)
    }

    pub fn worth_a_warning(&self) -> bool {
        self.percent() >= WARN_PERCENT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_expire_after_their_last_second_plus_the_skew() {
        let w = Window::for_skew(300);
        assert_eq!(w.bucket_secs, 18);
        assert_eq!(Window::for_skew(5).bucket_secs, 1);
        // Bucket 10 is seconds 180..=197: still acceptable at 197 + 300.
        assert_eq!(w.bucket_of(180), 10);
        assert_eq!(w.bucket_of(197), 10);
        assert!(!w.expired(10, 497));
        assert!(w.expired(10, 498));
        assert_eq!(w.newest_expired(498), Some(10));
        assert_eq!(w.newest_expired(497), Some(9));
        assert_eq!(w.newest_expired(317), None);
        assert!(w.expired(w.newest_expired(1_000_000).unwrap_or_default(), 1_000_000));
        assert!(!w.expired(w.newest_expired(1_000_000).unwrap_or_default() + 1, 1_000_000));
        // From 300 s behind to 300 s ahead of now.
        assert_eq!(w.live_buckets(), 36);
    }

    #[test]
    fn fingerprints_depend_on_the_key() {
        let nonce = [7u8; 16];
        let a = FingerprintKey::new([1; 16]);
        let b = FingerprintKey::new([2; 16]);
        assert_eq!(a.fingerprint(&nonce), a.fingerprint(&nonce));
        assert_ne!(a.fingerprint(&nonce), b.fingerprint(&nonce));
        assert_ne!(a.fingerprint(&nonce), a.fingerprint(&[8u8; 16]));
        assert_eq!(format!("{a:?}"), "FingerprintKey(..)");
    }

    #[test]
    fn fullness() {
        assert_eq!(Fullness { live: 79, capacity: 100 }.percent(), 79);
        assert!(!Fullness { live: 79, capacity: 100 }.worth_a_warning());
        assert!(Fullness { live: 80, capacity: 100 }.worth_a_warning());
        assert_eq!(Fullness { live: 5, capacity: 0 }.percent(), 100);
    }
}
