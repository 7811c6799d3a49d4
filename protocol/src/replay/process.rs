//! The native module's memory: one per Envoy process, shared by every worker.
//!
//! Fingerprints are spread over [`SHARDS`] shards, each behind its own lock, so
//! workers rarely wait for one another. In a shard, each time bucket holds a few
//! sorted runs of fingerprints (8 bytes each, see [`search`]) and a small hash set
//! of the ones added since the last run was made. When the set reaches an eighth of
//! the runs (at most [`RECENT_MAX`]) it is sorted into a new run, and runs are
//! merged until each is more than [`RATIO`] times the next, so a bucket of `n`
//! holds at most about `log8(n / RECENT_MAX)` runs (one or two in practice) and
//! each fingerprint is copied a few times, sequentially. Once time moves past a
//! bucket its runs are merged into one. A bucket is dropped whole once expired.
//!
//! Memory is what Envoy's RSS shows (its tcmalloc keeps freed pages), so the peak
//! counts, and nothing is ever copied whole: a run is kept in pieces of [`PIECE`]
//! fingerprints (4 KB, one allocator size class, so a piece a merge frees is the
//! next one's), a merge frees each input piece as it reads past it, and a hash set
//! never grows past about 37 KB (a closed bucket's past an eighth of its runs). A
//! hash set as large as the bucket cost 16 to 24 bytes a nonce of Envoy's RSS.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{FingerprintKey, Fullness, Unavailable, Verdict, Window};
use crate::signature::Nonce;

/// Locks, each over a share of the fingerprints.
pub const SHARDS: usize = 64;

/// Bytes one live nonce is allowed when sizing the capacity from the memory
/// bound: the allocator's peak is 8.5 to 9.7 bytes (tests/replay_memory.rs, 5,000
/// to 50,000 a second, buckets of 18 s and 225 s) and Envoy's RSS grew 10.7 bytes
/// a nonce with 2.4 million in one bucket (tests/replay_capacity.rs).
pub const BYTES_PER_NONCE: u64 = 12;

/// Fingerprints in a full piece of a run: 4 KB.
const PIECE: usize = 512;

/// The most fingerprints a bucket's hash set holds before they are sorted into a
/// run: 7/8 of 4,096 slots, the most hashbrown fills a table of that size (about
/// 37 KB), so the set never doubles past it.
const RECENT_MAX: usize = 3584;

/// The fewest fingerprints sorted into a run at once (a bucket's first ones).
const RECENT_MIN: usize = 16;

/// How many times larger than the next a run stays. Every run is searched on every
/// request (a cache miss or two each) while merging copies sequentially: for a
/// bucket of 50 hash sets' worth, 8 gives 1.6 runs on average and copies each
/// fingerprint 8 times; 2 gave 2.3 runs and 5 copies, and took half again as long
/// (tests/replay_memory.rs, one bucket at 50,000 a second).
const RATIO: usize = 8;

pub struct ProcessMemory {
    key: FingerprintKey,
    /// The memory's first second: signatures dated at or before it, plus the
    /// future tolerance, are refused.
    began: u64,
    /// The largest `max_future_seconds` any configuration asked for: what a
    /// predecessor may have accepted dated ahead of its clock.
    future_secs: AtomicU64,
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
    /// Sorted runs, oldest first; each holds more than [`RATIO`] times the next.
    runs: Vec<Run>,
    /// Fingerprints in `runs`.
    sorted: usize,
    recent: HashSet<u64>,
}

impl Bucket {
    fn len(&self) -> u64 {
        (self.sorted + self.recent.len()) as u64
    }

    fn contains(&self, fingerprint: u64) -> bool {
        self.recent.contains(&fingerprint) || self.runs.iter().any(|run| run.contains(fingerprint))
    }

    /// Adds a fingerprint not in the bucket. An open bucket (time not yet past it)
    /// keeps its hash set's table for the next ones; a closed one only gets
    /// stragglers, so its table is freed.
    fn insert(&mut self, fingerprint: u64, open: bool) {
        self.recent.insert(fingerprint);
        if self.recent.len() >= (self.sorted / 8).clamp(RECENT_MIN, RECENT_MAX) {
            self.flush(open);
        }
    }

    /// Sorts the hash set into a new run, then merges the newest runs until each
    /// is more than [`RATIO`] times the next.
    fn flush(&mut self, keep_table: bool) {
        if self.recent.is_empty() {
            return;
        }
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        if keep_table {
            self.recent.clear();
        } else {
            self.recent = HashSet::new();
        }
        self.sorted += sorted.len();
        self.runs.push(Run::from_sorted(&sorted));
        while let [.., older, newer] = &self.runs[..] {
            if older.len > RATIO * newer.len {
                break;
            }
            self.merge_newest();
        }
    }

    fn merge_newest(&mut self) {
        if let (Some(newer), Some(older)) = (self.runs.pop(), self.runs.pop()) {
            self.runs.push(merge(older, newer));
        }
    }

    /// Time has passed this bucket: from now on it only gets stragglers, so it is
    /// made one run (one search a lookup) and its hash set is freed.
    fn freeze(&mut self) {
        self.flush(false);
        while self.runs.len() > 1 {
            self.merge_newest();
        }
    }
}

/// A sorted run of fingerprints, in pieces of [`PIECE`] but the last, which is
/// exactly as long as what is left.
#[derive(Default)]
struct Run {
    pieces: Vec<Box<[u64]>>,
    /// Each piece's first fingerprint: a lookup searches these, then one piece.
    firsts: Vec<u64>,
    /// The run's greatest fingerprint.
    last: u64,
    len: usize,
}

impl Run {
    fn from_sorted(sorted: &[u64]) -> Self {
        let mut run = Run::with_capacity(sorted.len());
        for piece in sorted.chunks(PIECE) {
            run.push_piece(piece.into());
        }
        run
    }

    fn with_capacity(len: usize) -> Self {
        let pieces = len.div_ceil(PIECE);
        Run { pieces: Vec::with_capacity(pieces), firsts: Vec::with_capacity(pieces), last: 0, len: 0 }
    }

    fn push_piece(&mut self, piece: Box<[u64]>) {
        if let (Some(&first), Some(&last)) = (piece.first(), piece.last()) {
            self.len += piece.len();
            self.firsts.push(first);
            self.last = last;
            self.pieces.push(piece);
        }
    }

    fn contains(&self, fingerprint: u64) -> bool {
        // The piece is the last one whose first fingerprint is at or below it.
        let after = fingerprint.checked_add(1).map_or(self.firsts.len(), |next| below(&self.firsts, next));
        let Some(i) = after.checked_sub(1) else {
            return false;
        };
        let (Some(piece), Some(&first)) = (self.pieces.get(i), self.firsts.get(i)) else {
            return false;
        };
        // Bounds from the index, which is in cache, rather than from the piece.
        let last = self.firsts.get(i + 1).copied().unwrap_or(self.last);
        piece.get(search(piece, fingerprint, first, last)) == Some(&fingerprint)
    }
}

/// How many of `sorted` are below `x` (as `partition_point(|&v| v < x)`).
fn below(sorted: &[u64], x: u64) -> usize {
    match (sorted.first(), sorted.last()) {
        (Some(&first), Some(&last)) => search(sorted, x, first, last),
        _ => 0,
    }
}

/// How many of `sorted` are below `x`, given that they all lie in `first..=last`.
///
/// Fingerprints are uniform (keyed SipHash, nobody can aim them), so the index is
/// first guessed as if they were evenly spread, then bracketed by galloping from the
/// guess and binary-searched: a cache line or two near the guess instead of one
/// line per halving (binary search missed the cache about six times per run).
/// Galloping keeps the worst case O(log n) whatever the values.
fn search(sorted: &[u64], x: u64, first: u64, last: u64) -> usize {
    let len = sorted.len();
    if len == 0 || x <= first {
        return 0;
    }
    if x > last {
        return len;
    }
    // first < x <= last: the division is by more than zero and the guess below len.
    let guess = ((x - first) as u128 * (len - 1) as u128 / (last - first) as u128) as usize;
    let mut step = 1;
    if sorted[guess] < x {
        let mut lo = guess;
        loop {
            let probe = lo + step;
            if probe >= len || sorted[probe] >= x {
                let hi = probe.min(len);
                return lo + 1 + sorted[lo + 1..hi].partition_point(|&v| v < x);
            }
            lo = probe;
            step *= 2;
        }
    } else {
        let mut hi = guess;
        loop {
            match hi.checked_sub(step) {
                Some(probe) if sorted[probe] >= x => hi = probe,
                probe => {
                    let lo = probe.map_or(0, |p| p + 1);
                    return lo + sorted[lo..hi].partition_point(|&v| v < x);
                }
            }
            step *= 2;
        }
    }
}

/// Reads a run in order, freeing each piece once past it.
struct Drain {
    pieces: std::vec::IntoIter<Box<[u64]>>,
    piece: Box<[u64]>,
    at: usize,
}

impl Drain {
    fn new(run: Run) -> Self {
        let mut drain = Drain { pieces: run.pieces.into_iter(), piece: Box::default(), at: 0 };
        drain.skip(0);
        drain
    }

    /// What is left of the current piece: empty once the run is read.
    fn rest(&self) -> &[u64] {
        self.piece.get(self.at..).unwrap_or_default()
    }

    fn skip(&mut self, n: usize) {
        self.at += n;
        while self.at >= self.piece.len() {
            // The old piece is freed here; the merge's next output piece reuses it.
            (self.piece, self.at) = (Box::default(), 0);
            match self.pieces.next() {
                Some(piece) => self.piece = piece,
                None => return,
            }
        }
    }
}

/// Merges two runs into one, holding at most one unread piece of each and one
/// unwritten piece of output on top of the fingerprints themselves.
fn merge(older: Run, newer: Run) -> Run {
    let len = older.len + newer.len;
    let mut out = Run::with_capacity(len);
    let (mut a, mut b) = (Drain::new(older), Drain::new(newer));
    let mut piece: Vec<u64> = Vec::new();
    loop {
        let (xs, ys) = (a.rest(), b.rest());
        if xs.is_empty() && ys.is_empty() {
            break;
        }
        if piece.len() == piece.capacity() {
            if !piece.is_empty() {
                out.push_piece(std::mem::take(&mut piece).into_boxed_slice());
            }
            // Exactly what is left, up to a piece: no allocation is shrunk or grown.
            piece.reserve_exact(PIECE.min(len.saturating_sub(out.len)).max(1));
        }
        let room = piece.capacity() - piece.len();
        let (mut i, mut j) = (0, 0);
        if xs.is_empty() || ys.is_empty() {
            let rest = if xs.is_empty() { ys } else { xs };
            let n = rest.len().min(room);
            piece.extend_from_slice(rest.get(..n).unwrap_or_default());
            (i, j) = if xs.is_empty() { (0, n) } else { (n, 0) };
        } else {
            while let (Some(&x), Some(&y), true) = (xs.get(i), ys.get(j), i + j < room) {
                if x <= y {
                    piece.push(x);
                    i += 1;
                } else {
                    piece.push(y);
                    j += 1;
                }
            }
        }
        a.skip(i);
        b.skip(j);
    }
    out.push_piece(piece.into_boxed_slice());
    out
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
    pub fn new(key: FingerprintKey, window: Window, future_secs: u64, memory_bytes: u64, now: u64) -> Self {
        ProcessMemory {
            key,
            began: now,
            future_secs: AtomicU64::new(future_secs),
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
    /// accepts), signatures dated ahead are refused after a start for the largest
    /// future tolerance ever asked, and the memory bound is the newest configuration's.
    pub fn adopt(&self, skew_secs: u64, future_secs: u64, memory_bytes: u64) {
        self.skew_secs.fetch_max(skew_secs, Ordering::Relaxed);
        self.future_secs.fetch_max(future_secs, Ordering::Relaxed);
        self.capacity.store(memory_bytes / BYTES_PER_NONCE, Ordering::Relaxed);
    }

    pub fn window(&self) -> Window {
        Window { bucket_secs: self.bucket_secs, skew_secs: self.skew_secs.load(Ordering::Relaxed) }
    }

    pub fn began(&self) -> u64 {
        self.began
    }

    /// The last second a signature may be dated and still be refused as possibly
    /// accepted before this memory began: its first second plus the future tolerance
    /// (a predecessor accepted signatures dated up to that far ahead of its clock).
    pub fn trusted_after(&self) -> u64 {
        self.began.saturating_add(self.future_secs.load(Ordering::Relaxed))
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
        if signed_at <= self.trusted_after() {
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
        shard.buckets.entry(bucket).or_default().insert(fingerprint, bucket >= current);
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
        ProcessMemory::new(FingerprintKey::new([9; 16]), Window::for_skew(300), 0, mb << 20, NOW)
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
    fn refuses_what_a_predecessor_may_have_accepted_dated_ahead() {
        let m = ProcessMemory::new(FingerprintKey::new([9; 16]), Window::for_skew(300), 2, 1 << 20, NOW);
        // A predecessor accepted signatures dated up to 2 s ahead of its clock.
        assert_eq!(m.remember(&nonce(1), NOW + 2, NOW + 1), Ok(Verdict::SignedBeforeMemory));
        assert_eq!(m.remember(&nonce(1), NOW + 3, NOW + 3), Ok(Verdict::Fresh));
        // A later configuration with a larger tolerance widens it, never narrows it.
        m.adopt(300, 5, 1 << 20);
        m.adopt(300, 1, 1 << 20);
        assert_eq!(m.trusted_after(), NOW + 5);
        assert_eq!(m.remember(&nonce(2), NOW + 5, NOW + 5), Ok(Verdict::SignedBeforeMemory));
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
        let m = ProcessMemory::new(FingerprintKey::new([9; 16]), Window::for_skew(300), 0, 100 * BYTES_PER_NONCE, NOW);
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
    fn search_agrees_with_partition_point_on_any_values() {
        let key = FingerprintKey::new([3; 16]);
        let uniform: Vec<u64> = (0..2000).map(|i| key.fingerprint(&nonce(i))).collect();
        // Far from evenly spread: the guesses are wrong and galloping must make up for it.
        let clustered: Vec<u64> = (0..2000u64).map(|i| if i % 3 == 0 { i } else { u64::MAX - i * i }).collect();
        let duplicates: Vec<u64> = (0..2000u64).map(|i| i / 7 * 1_000_000_007).collect();
        let edges = vec![0, 1, 2, u64::MAX - 1, u64::MAX];
        for mut values in [uniform, clustered, duplicates, edges, vec![5], vec![]] {
            values.sort_unstable();
            let mut probes: Vec<u64> = values.iter().flat_map(|&v| [v.wrapping_sub(1), v, v.wrapping_add(1)]).collect();
            probes.extend([0, u64::MAX, u64::MAX / 3]);
            for len in [0, 1, 2, 3, 17, values.len()] {
                let sorted = &values[..len.min(values.len())];
                let (first, last) = (sorted.first().copied().unwrap_or(0), sorted.last().copied().unwrap_or(0));
                for &x in &probes {
                    let expected = sorted.partition_point(|&v| v < x);
                    assert_eq!(below(sorted, x), expected, "{x} in {len}");
                    // Looser bounds than the values (a piece's, from the index).
                    assert_eq!(search(sorted, x, 0, u64::MAX), expected, "{x} in {len}");
                    assert_eq!(search(sorted, x, first.saturating_sub(9), last.saturating_add(9)), expected, "{x} in {len}");
                }
            }
        }
    }

    #[test]
    fn runs_merge_and_find_every_fingerprint() {
        let key = FingerprintKey::new([4; 16]);
        let fingerprints: Vec<u64> = (0..20_000).map(|i| key.fingerprint(&nonce(i))).collect();
        let mut bucket = Bucket::default();
        for (i, &f) in fingerprints.iter().enumerate() {
            assert!(!bucket.contains(f));
            bucket.insert(f, true);
            assert!(bucket.recent.len() < RECENT_MAX && bucket.recent.capacity() <= RECENT_MAX, "the table never doubles past 4,096 slots");
            assert!(bucket.runs.windows(2).all(|w| w[0].len > RATIO * w[1].len), "each run more than RATIO times the next");
            assert_eq!(bucket.len(), i as u64 + 1);
        }
        assert!(bucket.runs.len() <= 4, "{} runs", bucket.runs.len());
        bucket.freeze();
        assert_eq!((bucket.runs.len(), bucket.recent.len(), bucket.len()), (1, 0, 20_000));
        let run = &bucket.runs[0];
        assert!(run.pieces.iter().rev().skip(1).all(|p| p.len() == PIECE), "full pieces but the last");
        assert!(run.pieces.iter().flat_map(|p| p.iter()).is_sorted());
        assert!(fingerprints.iter().all(|&f| bucket.contains(f)));
        assert!((20_000..21_000).all(|i| !bucket.contains(key.fingerprint(&nonce(i)))));
    }

    #[test]
    fn merging_keeps_every_fingerprint_in_full_pieces() {
        let sizes = [0, 1, 2, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 7];
        for (k, &x) in sizes.iter().enumerate() {
            for &y in &sizes {
                // Interleaved, and one run wholly above the other.
                let (older, newer): (Vec<u64>, Vec<u64>) = if k % 2 == 0 {
                    ((0..x as u64).map(|i| i * 2).collect(), (0..y as u64).map(|i| i * 2 + 1).collect())
                } else {
                    ((0..x as u64).map(|i| i + 1_000_000).collect(), (0..y as u64).collect())
                };
                let merged = merge(Run::from_sorted(&older), Run::from_sorted(&newer));
                let all: Vec<u64> = merged.pieces.iter().flat_map(|p| p.iter().copied()).collect();
                let mut expected = [older, newer].concat();
                expected.sort_unstable();
                assert_eq!((all, merged.len), (expected, x + y), "{x} and {y}");
                assert!(merged.pieces.iter().rev().skip(1).all(|p| p.len() == PIECE), "{x} and {y}");
                assert!(merged.pieces.iter().all(|p| !p.is_empty()));
                assert_eq!(merged.firsts, merged.pieces.iter().map(|p| p[0]).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_later_configuration_never_shortens_the_window() {
        let m = memory(1);
        m.adopt(60, 0, 2 << 20);
        assert_eq!(m.window().skew_secs, 300);
        assert_eq!(m.fullness().capacity, (2 << 20) / BYTES_PER_NONCE);
        m.adopt(900, 0, 1 << 20);
        assert_eq!(m.window().skew_secs, 900);
        assert_eq!(m.remember(&nonce(1), NOW + 1, NOW + 1), Ok(Verdict::Fresh));
        assert_eq!(m.remember(&nonce(1), NOW + 1, NOW + 800), Ok(Verdict::Replayed));
    }
}
