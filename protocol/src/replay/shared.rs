//! The Wasm filter's memory, over Envoy's shared data: one store per Envoy process
//! for every VM (worker) of the plugin's `vm_id`, behind one host mutex. A get
//! copies the whole value; keys cannot be deleted; creating a key is not atomic
//! (a compare-and-swap is checked only on a key that exists).
//!
//! So the memory is a fixed set of keys, created at configuration before any
//! request: `generations x shards`, where a nonce of time bucket `b` and
//! fingerprint `f` lives in key `(b mod generations, f mod shards)`. A value is
//! small (at most [`VALUE_MAX_BYTES`]): the bucket number, then the bucket's
//! sorted fingerprints. A value holding an older bucket than the one being written
//! is stale and is overwritten as if empty: generations rotate without deletes.
//! A request costs one read and one compare-and-swap write of its key. The first
//! write of a bucket into a key also empties the newest expired bucket's key of its
//! shard (best effort), so that expired fingerprints do not wait a whole rotation
//! to be overwritten.
//!
//! The shard count comes from the memory bound: `generations x shards x
//! VALUE_MAX_BYTES <= replay_memory_mb`. The generations cover every bucket that
//! can be live at once (from the skew behind now to the skew ahead) plus one. A key
//! holds at most [`PER_KEY`] fingerprints; past it, requests of that key are refused
//! (503): the rate this sustains is about `shards x PER_KEY / bucket_secs`.
//!
//! Keys are named after the layout (bucket width, generations, shards), so a
//! configuration with another skew or bound gets a memory of its own, which begins
//! when it is prepared (restart protection covers the switch). The layout's `meta`
//! key holds the memory's first second and its fingerprint key, written once by
//! the first VM to configure it, after every other key: a VM that finds it uses the
//! memory as is. Envoy configures the main thread's VM before the workers', so the
//! creation never races.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{FingerprintKey, Fullness, Unavailable, Verdict, Window};
use crate::signature::Nonce;

/// Largest value a key holds: the bytes one request copies, about three times.
pub const VALUE_MAX_BYTES: u64 = 4096;
const HEADER_LEN: usize = 8;
const FINGERPRINT_LEN: usize = 8;
/// Fingerprints one key holds.
pub const PER_KEY: usize = (VALUE_MAX_BYTES as usize - HEADER_LEN) / FINGERPRINT_LEN;
/// Compare-and-swap attempts before giving up on a contended key.
const CAS_ATTEMPTS: usize = 16;
const META_LEN: usize = 8 + 16;

/// Envoy's shared data, as the proxy-wasm ABI offers it.
pub trait SharedData {
    /// The value and its CAS token; `None` when the key does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String>;
    /// Writes the value. With `cas`, only if the key's token is still `cas`; the
    /// host checks the token only when the key exists.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    Host(String),
}

/// Where a memory's keys are, from the skew and the memory bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLayout {
    window: Window,
    generations: u64,
    shards: u64,
    prefix: String,
}

impl SharedLayout {
    pub fn new(skew_secs: u64, memory_bytes: u64) -> Self {
        let window = Window::for_skew(skew_secs);
        // One more than can be live at once: a bucket and the one that reuses its
        // keys are never both live.
        let generations = window.live_buckets() + 1;
        let shards = (memory_bytes / (generations * VALUE_MAX_BYTES)).max(1);
        let prefix = format!("wsgiproxy.replay.w{}g{generations}s{shards}", window.bucket_secs);
        SharedLayout { window, generations, shards, prefix }
    }

    pub fn window(&self) -> Window {
        self.window
    }

    pub fn shards(&self) -> u64 {
        self.shards
    }

    /// Fingerprints the layout holds when every key is full.
    pub fn capacity(&self) -> u64 {
        self.generations * self.shards * PER_KEY as u64
    }

    fn key(&self, bucket: u64, fingerprint: u64) -> String {
        self.key_at(bucket % self.generations, fingerprint % self.shards)
    }

    fn key_at(&self, generation: u64, shard: u64) -> String {
        format!("{}.{generation}.{shard}", self.prefix)
    }

    fn meta_key(&self) -> String {
        format!("{}.meta", self.prefix)
    }
}

/// A prepared memory: its layout, its fingerprint key, the second it began.
#[derive(Debug, Clone)]
pub struct SharedMemory {
    layout: SharedLayout,
    key: FingerprintKey,
    began: u64,
}

impl SharedMemory {
    /// Creates the layout's keys unless they exist, and reads (or, first, writes)
    /// when the memory began and its fingerprint key. `random` is asked only by the
    /// first VM.
    pub fn prepare(
        data: &dyn SharedData,
        layout: SharedLayout,
        now: u64,
        random: impl FnOnce() -> Result<[u8; 16], String>,
    ) -> Result<SharedMemory, String> {
        let meta_key = layout.meta_key();
        if data.get(&meta_key)?.is_none() {
            for generation in 0..layout.generations {
                for shard in 0..layout.shards {
                    let key = layout.key_at(generation, shard);
                    if data.get(&key)?.is_none() {
                        data.set(&key, &[], None).map_err(|e| format!("{e:?}"))?;
                    }
                }
            }
            let mut meta = Vec::with_capacity(META_LEN);
            meta.extend_from_slice(&now.to_be_bytes());
            meta.extend_from_slice(&random()?);
            data.set(&meta_key, &meta, None).map_err(|e| format!("{e:?}"))?;
        }
        // Read back, so that every VM uses what is stored.
        let meta = data.get(&meta_key)?.map(|(value, _)| value).unwrap_or_default();
        let (Some(began), Some(key)) = (meta.get(..8), meta.get(8..META_LEN)) else {
            return Err(format!("{meta_key} holds {} bytes, not {META_LEN}", meta.len()));
        };
        let mut began_bytes = [0u8; 8];
        began_bytes.copy_from_slice(began);
        let mut key_bytes = [0u8; 16];
        key_bytes.copy_from_slice(key);
        Ok(SharedMemory { layout, key: FingerprintKey::new(key_bytes), began: u64::from_be_bytes(began_bytes) })
    }

    pub fn layout(&self) -> &SharedLayout {
        &self.layout
    }

    pub fn began(&self) -> u64 {
        self.began
    }

    /// Remembers `nonce`, signed at `signed_at`, at `now`. With a fresh nonce comes
    /// the fullness of the key it went to: keys of the current bucket fill evenly,
    /// so it tells how close requests are to being refused.
    pub fn remember(&self, data: &dyn SharedData, nonce: &Nonce, signed_at: u64, now: u64) -> Result<(Verdict, Fullness), Unavailable> {
        let nothing = Fullness::default();
        if signed_at <= self.began {
            return Ok((Verdict::SignedBeforeMemory, nothing));
        }
        let window = self.layout.window;
        let bucket = window.bucket_of(signed_at);
        if window.expired(bucket, now) {
            return Ok((Verdict::Expired, nothing));
        }
        let fingerprint = self.key.fingerprint(nonce);
        let key = self.layout.key(bucket, fingerprint);
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = data.get(&key).map_err(Unavailable::Host)?.ok_or(Unavailable::NotPrepared)?;
            let (stored, entries) = parse(&value)?;
            let entries = match stored {
                Some(b) if b == bucket => entries,
                // Its keys were reused by a newer bucket: a request at the window's
                // edge whose clock reading is older than another's.
                Some(b) if b > bucket => return Ok((Verdict::Expired, nothing)),
                _ => &[],
            };
            let at = match search(entries, fingerprint) {
                Ok(_) => return Ok((Verdict::Replayed, nothing)),
                Err(at) => at,
            };
            let count = entries.len() / FINGERPRINT_LEN;
            if count >= PER_KEY {
                return Err(Unavailable::Full);
            }
            let split = at * FINGERPRINT_LEN;
            let mut next = Vec::with_capacity(HEADER_LEN + entries.len() + FINGERPRINT_LEN);
            next.extend_from_slice(&bucket.to_be_bytes());
            next.extend_from_slice(&entries[..split]);
            next.extend_from_slice(&fingerprint.to_be_bytes());
            next.extend_from_slice(&entries[split..]);
            match data.set(&key, &next, Some(cas)) {
                Ok(()) => {
                    if stored != Some(bucket) {
                        self.empty_newest_expired(data, fingerprint, now);
                    }
                    return Ok((Verdict::Fresh, Fullness { live: count as u64 + 1, capacity: PER_KEY as u64 }));
                }
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host(e)) => return Err(Unavailable::Host(e)),
            }
        }
        Err(Unavailable::Contended)
    }

    /// Empties the key of the newest expired bucket in `fingerprint`'s shard. It is
    /// marked as holding the bucket that reuses it next (with no fingerprint), so
    /// that a late writer of the expired bucket sees it taken, not empty.
    fn empty_newest_expired(&self, data: &dyn SharedData, fingerprint: u64, now: u64) {
        let Some(expired) = self.layout.window.newest_expired(now) else { return };
        let key = self.layout.key(expired, fingerprint);
        let Ok(Some((value, cas))) = data.get(&key) else { return };
        match parse(&value) {
            Ok((Some(stored), entries)) if stored <= expired && !entries.is_empty() => {
                // Best effort: a conflict means someone wrote it meanwhile.
                let _ = data.set(&key, &(expired + self.layout.generations).to_be_bytes(), Some(cas));
            }
            _ => {}
        }
    }
}

/// A value's bucket number (none when empty) and its fingerprints.
fn parse(value: &[u8]) -> Result<(Option<u64>, &[u8]), Unavailable> {
    if value.is_empty() {
        return Ok((None, &[]));
    }
    if value.len() < HEADER_LEN || (value.len() - HEADER_LEN) % FINGERPRINT_LEN != 0 {
        return Err(Unavailable::Host(format!("a replay memory value of {} bytes", value.len())));
    }
    let (header, entries) = value.split_at(HEADER_LEN);
    Ok((Some(fingerprint_at(header, 0)), entries))
}

fn fingerprint_at(entries: &[u8], index: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&entries[index * FINGERPRINT_LEN..(index + 1) * FINGERPRINT_LEN]);
    u64::from_be_bytes(bytes)
}

/// Binary search in sorted big-endian fingerprints: `Ok(index)` when present,
/// `Err(index)` where it belongs.
fn search(entries: &[u8], fingerprint: u64) -> Result<usize, usize> {
    let (mut low, mut high) = (0, entries.len() / FINGERPRINT_LEN);
    while low < high {
        let middle = low + (high - low) / 2;
        match fingerprint_at(entries, middle).cmp(&fingerprint) {
            std::cmp::Ordering::Less => low = middle + 1,
            std::cmp::Ordering::Greater => high = middle,
            std::cmp::Ordering::Equal => return Ok(middle),
        }
    }
    Err(low)
}

/// Envoy's shared data in memory, with its semantics (proxy-wasm-cpp-host
/// `shared_data.cc`): every write takes a new token from one counter; a CAS is
/// checked only on a key that exists, so a CAS write to a missing key creates it.
#[derive(Default)]
pub struct FakeSharedData {
    store: Mutex<FakeStore>,
}

#[derive(Default)]
struct FakeStore {
    values: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl FakeSharedData {
    /// Bytes stored: every key's name and value.
    pub fn stored_bytes(&self) -> u64 {
        self.store.lock().map(|s| s.values.iter().map(|(k, (v, _))| (k.len() + v.len()) as u64).sum()).unwrap_or_default()
    }

    pub fn key_count(&self) -> usize {
        self.store.lock().map(|s| s.values.len()).unwrap_or_default()
    }
}

impl SharedData for FakeSharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
        let store = self.store.lock().map_err(|_| "poisoned".to_string())?;
        Ok(store.values.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        let mut store = self.store.lock().map_err(|_| SetError::Host("poisoned".into()))?;
        let store = &mut *store;
        if let (Some(cas), Some((_, current))) = (cas, store.values.get(key)) {
            if cas != *current {
                return Err(SetError::CasMismatch);
            }
        }
        // Envoy's tokens start at 1 and skip 0 when they wrap.
        store.next_cas = store.next_cas.wrapping_add(1).max(1);
        store.values.insert(key.to_string(), (value.to_vec(), store.next_cas));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn nonce(i: u64) -> Nonce {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&i.to_be_bytes());
        n
    }

    fn prepared(data: &FakeSharedData, mb: u64) -> SharedMemory {
        let mut asked = 0;
        let memory = SharedMemory::prepare(data, SharedLayout::new(300, mb << 20), NOW, || {
            asked += 1;
            Ok([3; 16])
        });
        assert_eq!(asked, 1);
        memory.unwrap()
    }

    #[test]
    fn the_fake_keeps_envoys_semantics() {
        let data = FakeSharedData::default();
        assert_eq!(data.get("k"), Ok(None));
        // A CAS on a missing key does not protect anything: the write happens.
        assert_eq!(data.set("k", b"a", Some(77)), Ok(()));
        let Ok(Some((value, cas))) = data.get("k") else { panic!() };
        assert_eq!(value, b"a");
        assert_eq!(data.set("k", b"b", Some(cas)), Ok(()));
        assert_eq!(data.set("k", b"c", Some(cas)), Err(SetError::CasMismatch));
        assert_eq!(data.set("k", b"d", None), Ok(()), "no token: unconditional");
        assert_eq!(data.get("k").map(|v| v.map(|(v, _)| v)), Ok(Some(b"d".to_vec())));
        assert_eq!(data.stored_bytes(), 2);
    }

    #[test]
    fn layout_from_the_bound() {
        let layout = SharedLayout::new(300, 256 << 20);
        assert_eq!(layout.window, Window { bucket_secs: 18, skew_secs: 300 });
        assert_eq!(layout.generations, 37);
        assert_eq!(layout.shards, 1771);
        assert!(layout.generations * layout.shards * VALUE_MAX_BYTES <= 256 << 20);
        assert_eq!(PER_KEY, 511);
        assert_eq!(SharedLayout::new(300, 1).shards, 1);
        assert_ne!(SharedLayout::new(60, 256 << 20).prefix, layout.prefix);
    }

    #[test]
    fn prepares_once_and_every_vm_reads_the_same_memory() {
        let data = FakeSharedData::default();
        let first = prepared(&data, 1);
        assert_eq!(data.key_count() as u64, first.layout.generations * first.layout.shards + 1);
        // Another VM, later (a reload): the same key and first second; nothing random asked.
        let second = SharedMemory::prepare(&data, SharedLayout::new(300, 1 << 20), NOW + 50, || Err("not asked".into())).unwrap();
        assert_eq!((second.began, second.key), (NOW, first.key));
        assert_eq!(first.remember(&data, &nonce(1), NOW + 60, NOW + 60).map(|r| r.0), Ok(Verdict::Fresh));
        assert_eq!(second.remember(&data, &nonce(1), NOW + 60, NOW + 61).map(|r| r.0), Ok(Verdict::Replayed));
    }

    #[test]
    fn remembers_and_refuses() {
        let data = FakeSharedData::default();
        let m = prepared(&data, 1);
        let signed = NOW + 10;
        assert_eq!(m.remember(&data, &nonce(1), NOW, NOW + 1).map(|r| r.0), Ok(Verdict::SignedBeforeMemory));
        let (verdict, fullness) = m.remember(&data, &nonce(1), signed, signed).unwrap();
        assert_eq!((verdict, fullness), (Verdict::Fresh, Fullness { live: 1, capacity: PER_KEY as u64 }));
        assert_eq!(m.remember(&data, &nonce(1), signed, signed + 299).map(|r| r.0), Ok(Verdict::Replayed));
        assert_eq!(m.remember(&data, &nonce(1), signed, signed + 400).map(|r| r.0), Ok(Verdict::Expired));
    }

    #[test]
    fn a_stale_generation_reads_as_empty_and_expired_keys_are_emptied() {
        let data = FakeSharedData::default();
        let m = prepared(&data, 1);
        let w = m.layout.window;
        let g = m.layout.generations;
        let first = NOW + 1;
        let write = |signed: u64, now: u64| {
            for i in 0..50 {
                assert_eq!(m.remember(&data, &nonce(i), signed, now).map(|r| r.0), Ok(Verdict::Fresh), "{i}");
            }
        };
        write(first, first);
        let one_bucket = data.stored_bytes();
        // One rotation later the same keys hold the new bucket: the old one reads as empty.
        let rotated = first + g * w.bucket_secs;
        write(rotated, rotated);
        assert!(data.stored_bytes() <= one_bucket, "{} > {one_bucket}", data.stored_bytes());
        // When that bucket is the newest expired one, the first writes of a new
        // bucket in each shard empty its keys: nothing grows.
        let old = w.bucket_of(rotated);
        let expiry = (old + 1) * w.bucket_secs + w.skew_secs;
        assert_eq!(w.newest_expired(expiry), Some(old));
        write(expiry, expiry);
        assert!(data.stored_bytes() <= one_bucket + m.layout.shards * 8, "{} > {one_bucket}", data.stored_bytes());
        // A late writer of the emptied bucket (its clock a second behind) sees it
        // taken by the next generation, not empty.
        assert_eq!(m.remember(&data, &nonce(1), rotated, expiry - 1).map(|r| r.0), Ok(Verdict::Expired));
        assert_eq!(m.remember(&data, &nonce(1), expiry, expiry).map(|r| r.0), Ok(Verdict::Replayed));
    }

    #[test]
    fn a_key_conflict_is_retried_and_a_full_key_refuses() {
        let data = FakeSharedData::default();
        let m = prepared(&data, 1);
        let signed = NOW + 1;
        // A tiny layout has one shard: fill its key.
        let tiny = SharedMemory::prepare(&data, SharedLayout::new(300, 1), NOW, || Ok([4; 16])).unwrap();
        for i in 0..PER_KEY as u64 {
            assert_eq!(tiny.remember(&data, &nonce(i), signed, signed).map(|r| r.0), Ok(Verdict::Fresh));
        }
        assert_eq!(tiny.remember(&data, &nonce(9999), signed, signed), Err(Unavailable::Full));
        assert_eq!(tiny.remember(&data, &nonce(7), signed, signed).map(|r| r.0), Ok(Verdict::Replayed));
        let key = tiny.layout.key(tiny.layout.window.bucket_of(signed), 0);
        let Ok(Some((value, _))) = data.get(&key) else { panic!() };
        assert_eq!(value.len() as u64, VALUE_MAX_BYTES);
        // A missing key is never written blindly.
        let unprepared = FakeSharedData::default();
        assert_eq!(m.remember(&unprepared, &nonce(1), signed, signed), Err(Unavailable::NotPrepared));
    }

    /// Shared data whose every write first loses a race to another VM, `losses` times.
    struct Racing<'a> {
        data: &'a FakeSharedData,
        losses: std::cell::Cell<usize>,
    }

    impl SharedData for Racing<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
            self.data.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            if self.losses.get() > 0 {
                self.losses.set(self.losses.get() - 1);
                let (current, _) = self.data.get(key).map_err(SetError::Host)?.unwrap_or_default();
                self.data.set(key, &current, None)?;
            }
            self.data.set(key, value, cas)
        }
    }

    #[test]
    fn cas_conflicts() {
        let data = FakeSharedData::default();
        let m = prepared(&data, 1);
        let racing = Racing { data: &data, losses: 3.into() };
        assert_eq!(m.remember(&racing, &nonce(1), NOW + 1, NOW + 1).map(|r| r.0), Ok(Verdict::Fresh));
        assert_eq!(m.remember(&data, &nonce(1), NOW + 1, NOW + 1).map(|r| r.0), Ok(Verdict::Replayed));
        let racing = Racing { data: &data, losses: 100.into() };
        assert_eq!(m.remember(&racing, &nonce(2), NOW + 1, NOW + 1), Err(Unavailable::Contended));
    }

    #[test]
    fn search_finds_and_places() {
        let entries: Vec<u8> = [3u64, 9, 20].iter().flat_map(|f| f.to_be_bytes()).collect();
        assert_eq!(search(&entries, 9), Ok(1));
        assert_eq!(search(&entries, 1), Err(0));
        assert_eq!(search(&entries, 10), Err(2));
        assert_eq!(search(&entries, 21), Err(3));
        assert_eq!(search(&[], 5), Err(0));
        assert!(parse(&[1, 2, 3]).is_err());
        assert!(parse(&[0; 12]).is_err());
    }
}
