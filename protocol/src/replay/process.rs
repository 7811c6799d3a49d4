//! The native module's memory: one per Envoy process, shared by every worker.
//!
//! Fingerprints are spread over [`SHARDS`] shards, each behind its own lock, so
//! workers rarely wait for one another. In a shard, each time bucket holds a
//! sorted array of fingerprints (8 bytes each, binary search) and a hash set of
//! the ones added since the array was last rebuilt. The bucket `now` is in takes
//! most inserts and stays a hash set; once time moves past it, it is frozen into
//! the array, and late arrivals (a sender's clock behind) rebuild the array when
//! they reach an eighth of it. A bucket is dropped whole once expired.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{FingerprintKey, Fullness, Unavailable, Verdict, Window};
use crate::signature::Nonce;

/// Locks, each over a share of the fingerprints.
pub const SHARDS: usize = 64;

/// Bytes one live nonce is allowed when sizing the capacity from the memory
/// bound: the measured cost is 8.4 to 8.7 bytes (tests/replay_memory.rs, at 5,000
/// and 50,000 a second); the rest is headroom for the hash sets of open buckets.
pub const BYTES_PER_NONCE: u64 = 12;

pub struct ProcessMemory {
    key: FingerprintKey,
    /// The memory's first second: signatures dated at or before it are refused.
    began: u64,
    bucket_secs: u64,
    /// The largest skew any configuration asked for (see [`ProcessMemory::adopt`]).
    skew_secs: AtomicU64,
    capacity: AtomicU64,
    live: AtomicU64,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Default)]
struct Shard {
    buckets: BTreeMap<u64, Bucket>,
    /// Every bucket below this one was dropped: a late insert there is refused
    /// instead of being remembered in a new, empty bucket.
    dropped_below: u64,
    /// Every bucket below this one was frozen when time passed it.
    frozen_below: u64,
}

#[derive(Default)]
struct Bucket {
    frozen: Box<[u64]>,
    recent: HashSet<u64>,
}

impl Bucket {
    fn len(&self) -> u64 {
        (self.frozen.len() + self.recent.len()) as u64
    }

    fn contains(&self, fingerprint: u64) -> bool {
        self.recent.contains(&fingerprint) || self.frozen.binary_search(&fingerprint).is_ok()
    }

    /// Moves the hash set into the sorted array; the new array is allocated at its
    /// exact size and the set's table is freed.
    fn freeze(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let mut all = Vec::with_capacity(self.frozen.len() + self.recent.len());
        all.extend_from_slice(&self.frozen);
        all.extend(std::mem::take(&mut self.recent));
        all.sort_unstable();
        self.frozen = all.into_boxed_slice();
    }
}

/// As the middleware role's memory (`&memory`, shared by every worker).
impl crate::middleware::NonceMemory for &ProcessMemory {
    fn remember(&mut self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String> {
        ProcessMemory::remember(self, nonce, signed_at, now).map_err(|e| e.to_string())
    }
}

impl ProcessMemory {
    /// A memory that begins at `now` (seconds since the epoch) and holds at most
    /// `memory_bytes / BYTES_PER_NONCE` nonces.
    pub fn new(key: FingerprintKey, window: Window, memory_bytes: u64, now: u64) -> Self {
        ProcessMemory {
            key,
            began: now,
            bucket_secs: window.bucket_secs,
            skew_secs: AtomicU64::new(window.skew_secs),
            capacity: AtomicU64::new(memory_bytes / BYTES_PER_NONCE),
            live: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Serves one more configuration (a listener, an xDS update) with this process's
    /// one memory: nonces are kept for the largest skew ever asked (a smaller one
    /// from a later configuration must not forget what an earlier one still
    /// accepts), and the memory bound is the newest configuration's.
    pub fn adopt(&self, skew_secs: u64, memory_bytes: u64) {
        self.skew_secs.fetch_max(skew_secs, Ordering::Relaxed);
        self.capacity.store(memory_bytes / BYTES_PER_NONCE, Ordering::Relaxed);
    }

    pub fn window(&self) -> Window {
        Window { bucket_secs: self.bucket_secs, skew_secs: self.skew_secs.load(Ordering::Relaxed) }
    }

    pub fn began(&self) -> u64 {
        self.began
    }

    pub fn fullness(&self) -> Fullness {
        Fullness { live: self.live.load(Ordering::Relaxed), capacity: self.capacity.load(Ordering::Relaxed) }
    }

    /// Remembers `nonce`, signed at `signed_at`, at `now` (seconds since the epoch).
    pub fn remember(&self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, Unavailable> {
        match self.try_remember(nonce, signed_at, now) {
            // Shards drop their expired buckets when they are next written: a full
            // memory first sweeps them all, then tries once more.
            Err(Unavailable::Full) => {
                self.forget_expired(now)?;
                self.try_remember(nonce, signed_at, now)
            }
            other => other,
        }
    }

    /// Drops every expired bucket now, in every shard.
    pub fn forget_expired(&self, now: u64) -> Result<(), Unavailable> {
        let window = self.window();
        for shard in self.shards.iter() {
            self.drop_expired(&mut *shard.lock().map_err(|_| Unavailable::Poisoned)?, window, now);
        }
        Ok(())
    }

    fn try_remember(&self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, Unavailable> {
        if signed_at <= self.began {
            return Ok(Verdict::SignedBeforeMemory);
        }
        let window = self.window();
        let bucket = window.bucket_of(signed_at);
        if window.expired(bucket, now) {
            return Ok(Verdict::Expired);
        }
        let fingerprint = self.key.fingerprint(nonce);
        // Fingerprints are uniform: any bits choose a shard.
        let shard = &self.shards[(fingerprint >> 32) as usize % SHARDS];
        let mut shard = shard.lock().map_err(|_| Unavailable::Poisoned)?;
        self.drop_expired(&mut shard, window, now);
        if bucket < shard.dropped_below {
            return Ok(Verdict::Expired);
        }
        let current = window.bucket_of(now);
        if shard.frozen_below < current {
            shard.buckets.range_mut(..current).for_each(|(_, b)| b.freeze());
            shard.frozen_below = current;
        }
        if shard.buckets.get(&bucket).is_some_and(|b| b.contains(fingerprint)) {
            return Ok(Verdict::Replayed);
        }
        if self.live.load(Ordering::Relaxed) >= self.capacity.load(Ordering::Relaxed) {
            return Err(Unavailable::Full);
        }
        let entry = shard.buckets.entry(bucket).or_default();
        entry.recent.insert(fingerprint);
        if bucket < current && entry.recent.len() > (entry.frozen.len() / 8).max(16) {
            entry.freeze();
        }
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(Verdict::Fresh)
    }

    fn drop_expired(&self, shard: &mut Shard, window: Window, now: u64) {
        while let Some(oldest) = shard.buckets.first_entry() {
            if !window.expired(*oldest.key(), now) {
                break;
            }
            shard.dropped_below = shard.dropped_below.max(oldest.key() + 1);
            self.live.fetch_sub(oldest.remove().len(), Ordering::Relaxed);
        }
        if let Some(newest) = window.newest_expired(now) {
            shard.dropped_below = shard.dropped_below.max(newest + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn memory(mb: u64) -> ProcessMemory {
        ProcessMemory::new(FingerprintKey::new([9; 16]), Window::for_skew(300), mb << 20, NOW)
    }

    fn nonce(i: u64) -> Nonce {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&i.to_be_bytes());
        n
    }

    #[test]
    fn remembers_a_nonce_until_its_bucket_expires() {
        let m = memory(1);
        let signed = NOW + 10;
        assert_eq!(m.remember(&nonce(1), signed, signed), Ok(Verdict::Fresh));
        assert_eq!(m.remember(&nonce(1), signed, signed + 1), Ok(Verdict::Replayed));
        // Another timestamp is another signature (its MAC differs), and another bucket.
        assert_eq!(m.remember(&nonce(1), signed + 100, signed + 100), Ok(Verdict::Fresh));
        // Frozen once time has moved on, and still found.
        assert_eq!(m.remember(&nonce(2), signed + 200, signed + 200), Ok(Verdict::Fresh));
        assert_eq!(m.remember(&nonce(1), signed, signed + 300), Ok(Verdict::Replayed));
        assert_eq!(m.fullness().live, 3);
        // Past its bucket's last second plus the skew, the bucket is dropped whole.
        let window = m.window();
        let bucket_end = (window.bucket_of(signed) + 1) * window.bucket_secs - 1;
        assert_eq!(m.remember(&nonce(3), signed + 250, bucket_end + 301), Ok(Verdict::Fresh));
        assert_eq!(m.forget_expired(bucket_end + 301), Ok(()));
        assert_eq!(m.fullness().live, 3, "one dropped, one added");
        // A clock reading older than the one that dropped it is refused as stale.
        assert_eq!(m.remember(&nonce(1), signed, bucket_end + 300), Ok(Verdict::Expired));
    }

    #[test]
    fn refuses_what_was_signed_before_it_began() {
        let m = memory(1);
        assert_eq!(m.remember(&nonce(1), NOW, NOW + 1), Ok(Verdict::SignedBeforeMemory));
        assert_eq!(m.remember(&nonce(1), NOW - 100, NOW + 1), Ok(Verdict::SignedBeforeMemory));
        assert_eq!(m.remember(&nonce(1), NOW + 1, NOW + 1), Ok(Verdict::Fresh));
        assert_eq!(m.fullness().live, 1);
    }

    #[test]
    fn late_arrivals_in_a_frozen_bucket() {
        let m = memory(1);
        let signed = NOW + 36;
        for i in 0..1000 {
            assert_eq!(m.remember(&nonce(i), signed, signed), Ok(Verdict::Fresh));
        }
        // Two buckets later, stragglers signed back then keep arriving.
        for i in 1000..3000 {
            assert_eq!(m.remember(&nonce(i), signed, signed + 40), Ok(Verdict::Fresh));
        }
        for i in (0..3000).step_by(7) {
            assert_eq!(m.remember(&nonce(i), signed, signed + 60), Ok(Verdict::Replayed), "{i}");
        }
    }

    #[test]
    fn past_the_bound_it_fails_closed() {
        let m = ProcessMemory::new(FingerprintKey::new([9; 16]), Window::for_skew(300), 100 * BYTES_PER_NONCE, NOW);
        for i in 0..100 {
            assert_eq!(m.remember(&nonce(i), NOW + 1, NOW + 1), Ok(Verdict::Fresh));
        }
        assert_eq!(m.fullness(), Fullness { live: 100, capacity: 100 });
        assert_eq!(m.remember(&nonce(100), NOW + 1, NOW + 1), Err(Unavailable::Full));
        // A replay is still recognised as one.
        assert_eq!(m.remember(&nonce(5), NOW + 1, NOW + 1), Ok(Verdict::Replayed));
        // Room again once the bucket expires: a full memory sweeps every shard.
        for i in 0..100 {
            assert_eq!(m.remember(&nonce(i), NOW + 400, NOW + 400), Ok(Verdict::Fresh));
        }
        assert_eq!(m.fullness().live, 100);
    }

    #[test]
    fn a_later_configuration_never_shortens_the_window() {
        let m = memory(1);
        m.adopt(60, 2 << 20);
        assert_eq!(m.window().skew_secs, 300);
        assert_eq!(m.fullness().capacity, (2 << 20) / BYTES_PER_NONCE);
        m.adopt(900, 1 << 20);
        assert_eq!(m.window().skew_secs, 900);
        assert_eq!(m.remember(&nonce(1), NOW + 1, NOW + 1), Ok(Verdict::Fresh));
        assert_eq!(m.remember(&nonce(1), NOW + 1, NOW + 800), Ok(Verdict::Replayed));
    }
}
