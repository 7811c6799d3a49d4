//! The Wasm filter's memory, over Envoy's shared data: one store per Envoy process
//! for every VM (worker) of the plugin's `vm_id`, behind one host mutex. A get
//! copies the whole value; keys cannot be deleted; creating a key is not atomic
//! (a compare-and-swap is checked only on a key that exists).
//!
//! One memory per Envoy (issue #32), whatever the settings of the filter chains
//! that use it: its key names depend on no setting. `wsgiproxy.replay.meta` holds
//! its geometry (how many keys), its first second, its fingerprint key, and the
//! largest skew and future tolerance any configuration asked for; it is written
//! once by the first VM to configure (Envoy configures the main thread's VM before
//! the workers', so the creation never races), after every key
//! `wsgiproxy.replay.{i}` exists. A later configuration, of another listener or an
//! xDS update, uses the memory as it is; a different `replay_memory_mb` takes
//! effect at the next start (the loader warns).
//!
//! A nonce's fingerprint `f` chooses its key, `f mod keys`; every time bucket
//! spreads over every key, so a busy second uses the room quiet ones leave. A value
//! is small (at most [`VALUE_MAX_BYTES`]): a header (the largest skew and future
//! tolerance that wrote it, and the second through which it dropped everything),
//! then sorted entries of 8 bytes: the fingerprint's upper 48 bits (the key stands
//! for the rest; two nonces of one key are taken for one with probability 2^-48 a
//! pair) and the signature's second, 16 bits counted from the dropped-through one.
//! A request costs one read and one compare-and-swap write of its key.
//!
//! An entry is kept while any configuration could still accept its signature: its
//! date no more than the largest skew (carried in the header, so that a VM of a
//! configuration with a smaller skew keeps what another accepts) before now.
//! Writing a key drops its expired entries once they are a sixteenth of the skew
//! behind (or when the key is full), and records through which second it dropped:
//! a request dated at or before that is refused as stale, never looked up in a
//! key that forgot it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::{FingerprintKey, Fullness, Unavailable, Verdict};
use crate::signature::Nonce;

/// Largest value a key holds: the bytes one request copies, about three times.
pub const VALUE_MAX_BYTES: u64 = 4096;
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 8;
/// Entries one key holds.
pub const PER_KEY: usize = (VALUE_MAX_BYTES as usize - HEADER_LEN) / ENTRY_LEN;
/// Compare-and-swap attempts before giving up on a contended key.
const CAS_ATTEMPTS: usize = 16;
const PREFIX: &str = "wsgiproxy.replay";
const META_KEY: &str = "wsgiproxy.replay.meta";
/// The layout of the values and of the meta key; another one is refused.
const FORMAT: u32 = 2;
const META_LEN: usize = 4 + 4 + 8 + 16 + 4 + 4;
/// The bits of an entry that hold its second.
const SECOND_BITS: u32 = 16;

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

/// What one configuration asks of the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSettings {
    pub skew_secs: u64,
    pub future_secs: u64,
    pub memory_bytes: u64,
}

impl SharedSettings {
    /// Keys a memory of this bound has.
    pub fn keys(&self) -> u64 {
        (self.memory_bytes / VALUE_MAX_BYTES).clamp(1, u64::from(u32::MAX))
    }
}

/// The meta key's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    keys: u64,
    began: u64,
    key: [u8; 16],
    skew_secs: u32,
    future_secs: u32,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_LEN);
        out.extend_from_slice(&FORMAT.to_be_bytes());
        out.extend_from_slice(&(self.keys as u32).to_be_bytes());
        out.extend_from_slice(&self.began.to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.skew_secs.to_be_bytes());
        out.extend_from_slice(&self.future_secs.to_be_bytes());
        out
    }

    fn decode(value: &[u8]) -> Result<Meta, String> {
        if value.len() != META_LEN || be_u32(value, 0) != FORMAT {
            return Err(format!("{META_KEY} holds {} bytes of another format (another version of the filter?)", value.len()));
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(&value[16..32]);
        Ok(Meta {
            keys: u64::from(be_u32(value, 4)).max(1),
            began: be_u64(value, 8),
            key,
            skew_secs: be_u32(value, 32),
            future_secs: be_u32(value, 36),
        })
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(b)
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// A key's header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Header {
    skew_secs: u32,
    future_secs: u32,
    /// Every entry dated at or before this second was dropped; entries count their
    /// second from it.
    dropped_through: u64,
}

impl Header {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.skew_secs.to_be_bytes());
        out.extend_from_slice(&self.future_secs.to_be_bytes());
        out.extend_from_slice(&self.dropped_through.to_be_bytes());
    }
}

/// A value's header (none when the key was never written) and its entries.
fn parse(value: &[u8]) -> Result<(Option<Header>, &[u8]), Unavailable> {
    if value.is_empty() {
        return Ok((None, &[]));
    }
    if value.len() < HEADER_LEN || (value.len() - HEADER_LEN) % ENTRY_LEN != 0 {
        return Err(Unavailable::Host(format!("a replay memory value of {} bytes", value.len())));
    }
    let (header, entries) = value.split_at(HEADER_LEN);
    let header = Header { skew_secs: be_u32(header, 0), future_secs: be_u32(header, 4), dropped_through: be_u64(header, 8) };
    Ok((Some(header), entries))
}

fn entry_at(entries: &[u8], index: usize) -> u64 {
    be_u64(entries, index * ENTRY_LEN)
}

/// Binary search in sorted entries for a fingerprint's upper 48 bits: `Ok(index)`
/// when present, `Err(index)` where it belongs.
fn search(entries: &[u8], tag: u64) -> Result<usize, usize> {
    let (mut low, mut high) = (0, entries.len() / ENTRY_LEN);
    while low < high {
        let middle = low + (high - low) / 2;
        match (entry_at(entries, middle) >> SECOND_BITS).cmp(&tag) {
            std::cmp::Ordering::Less => low = middle + 1,
            std::cmp::Ordering::Greater => high = middle,
            std::cmp::Ordering::Equal => return Ok(middle),
        }
    }
    Err(low)
}

/// The largest skew and future tolerance the configurations of one VM asked for:
/// each of its configurations' memories reads them on every request (a configuration
/// that began before a larger one must not forget what that one accepts). Between
/// VMs, the keys' headers carry them.
#[derive(Debug, Default)]
pub struct Largest {
    skew_secs: AtomicU32,
    future_secs: AtomicU32,
}

impl Largest {
    fn raise(&self, skew_secs: u32, future_secs: u32) {
        self.skew_secs.fetch_max(skew_secs, Ordering::Relaxed);
        self.future_secs.fetch_max(future_secs, Ordering::Relaxed);
    }
}

/// A prepared memory, as one configuration uses it.
#[derive(Debug, Clone)]
pub struct SharedMemory {
    keys: u64,
    key: FingerprintKey,
    began: u64,
    largest: Arc<Largest>,
}

impl SharedMemory {
    /// Creates the memory's keys unless they exist, and reads (or, first, writes)
    /// its geometry, first second and fingerprint key; raises its largest skew and
    /// future tolerance to this configuration's. `random` is asked only by the
    /// first VM.
    pub fn prepare(
        data: &dyn SharedData,
        settings: SharedSettings,
        largest: Arc<Largest>,
        now: u64,
        random: impl FnOnce() -> Result<[u8; 16], String>,
    ) -> Result<SharedMemory, String> {
        let skew = u32::try_from(settings.skew_secs).map_err(|_| "max_skew_seconds is too large".to_string())?;
        let future = u32::try_from(settings.future_secs).map_err(|_| "max_future_seconds is too large".to_string())?;
        if data.get(META_KEY)?.is_none() {
            let keys = settings.keys();
            for index in 0..keys {
                let name = key_name(index);
                if data.get(&name)?.is_none() {
                    data.set(&name, &[], None).map_err(|e| format!("{e:?}"))?;
                }
            }
            let meta = Meta { keys, began: now, key: random()?, skew_secs: skew, future_secs: future };
            data.set(META_KEY, &meta.encode(), None).map_err(|e| format!("{e:?}"))?;
        }
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = data.get(META_KEY)?.ok_or_else(|| format!("{META_KEY} vanished"))?;
            let meta = Meta::decode(&value)?;
            let raised = Meta { skew_secs: meta.skew_secs.max(skew), future_secs: meta.future_secs.max(future), ..meta };
            if raised != meta {
                match data.set(META_KEY, &raised.encode(), Some(cas)) {
                    Ok(()) => {}
                    Err(SetError::CasMismatch) => continue,
                    Err(SetError::Host(e)) => return Err(e),
                }
            }
            largest.raise(raised.skew_secs, raised.future_secs);
            return Ok(SharedMemory { keys: raised.keys, key: FingerprintKey::new(raised.key), began: raised.began, largest });
        }
        Err(format!("{META_KEY} is too contended"))
    }

    /// Keys the memory has (its bound, from the first configuration).
    pub fn keys(&self) -> u64 {
        self.keys
    }

    pub fn began(&self) -> u64 {
        self.began
    }

    /// Remembers `nonce`, signed at `signed_at`, at `now`. With a fresh nonce comes
    /// the fullness of the key it went to: keys fill evenly, so it tells how close
    /// requests are to being refused.
    pub fn remember(&self, data: &dyn SharedData, nonce: &Nonce, signed_at: u64, now: u64) -> Result<(Verdict, Fullness), Unavailable> {
        let nothing = Fullness::default();
        let (skew_secs, future_secs) = (self.largest.skew_secs.load(Ordering::Relaxed), self.largest.future_secs.load(Ordering::Relaxed));
        if signed_at <= self.began.saturating_add(u64::from(future_secs)) {
            return Ok((Verdict::SignedBeforeMemory, nothing));
        }
        let fingerprint = self.key.fingerprint(nonce);
        let tag = fingerprint >> SECOND_BITS;
        let key = key_name(fingerprint % self.keys);
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = data.get(&key).map_err(Unavailable::Host)?.ok_or(Unavailable::NotPrepared)?;
            let (header, entries) = parse(&value)?;
            let stored = header.unwrap_or_default();
            let header = Header {
                skew_secs: stored.skew_secs.max(skew_secs),
                future_secs: stored.future_secs.max(future_secs),
                dropped_through: stored.dropped_through,
            };
            // A configuration with a larger future tolerance wrote here: a
            // predecessor may have accepted what it dates ahead.
            if signed_at <= self.began.saturating_add(u64::from(header.future_secs)) {
                return Ok((Verdict::SignedBeforeMemory, nothing));
            }
            if signed_at <= header.dropped_through {
                return Ok((Verdict::Expired, nothing));
            }
            let skew = u64::from(header.skew_secs);
            // Dated at or before it, no configuration accepts a signature any more.
            let horizon = now.saturating_sub(skew + 1);
            if signed_at <= horizon {
                return Ok((Verdict::Expired, nothing));
            }
            let at = match search(entries, tag) {
                Ok(_) => return Ok((Verdict::Replayed, nothing)),
                Err(at) => at,
            };
            let count = entries.len() / ENTRY_LEN;
            let second = signed_at - header.dropped_through;
            let overdue = horizon > header.dropped_through.saturating_add((skew / 16).max(1));
            let next = if header_fits(stored, second) && !overdue && count < PER_KEY {
                let split = at * ENTRY_LEN;
                let mut next = Vec::with_capacity(HEADER_LEN + entries.len() + ENTRY_LEN);
                header.write(&mut next);
                next.extend_from_slice(&entries[..split]);
                next.extend_from_slice(&(tag << SECOND_BITS | second).to_be_bytes());
                next.extend_from_slice(&entries[split..]);
                next
            } else {
                drop_expired(header, entries, horizon, tag, signed_at)?
            };
            let live = ((next.len() - HEADER_LEN) / ENTRY_LEN) as u64;
            match data.set(&key, &next, Some(cas)) {
                Ok(()) => return Ok((Verdict::Fresh, Fullness { live, capacity: PER_KEY as u64 })),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host(e)) => return Err(Unavailable::Host(e)),
            }
        }
        Err(Unavailable::Contended)
    }
}

/// Whether a new entry can be added to a key as it stands: the key was written
/// before (its seconds count from a real second) and the entry's second fits.
fn header_fits(stored: Header, second: u64) -> bool {
    stored.dropped_through != 0 && second < 1 << SECOND_BITS
}

/// The key's value rebuilt: entries dated at or before `horizon` dropped, seconds
/// counted from it, and the new entry in its place; `Full` when no room is left.
fn drop_expired(header: Header, entries: &[u8], horizon: u64, tag: u64, signed_at: u64) -> Result<Vec<u8>, Unavailable> {
    let through = header.dropped_through.max(horizon);
    let mut next = Vec::with_capacity(HEADER_LEN + entries.len() + ENTRY_LEN);
    Header { dropped_through: through, ..header }.write(&mut next);
    let mut pending = Some(tag);
    let push = |next: &mut Vec<u8>, tag: u64, signed: u64| -> Result<(), Unavailable> {
        let second = signed - through;
        if second >= 1 << SECOND_BITS {
            return Err(Unavailable::Host(format!("a signature dated {second} s past its key's oldest second")));
        }
        next.extend_from_slice(&(tag << SECOND_BITS | second).to_be_bytes());
        Ok(())
    };
    for index in 0..entries.len() / ENTRY_LEN {
        let entry = entry_at(entries, index);
        let (old_tag, signed) = (entry >> SECOND_BITS, header.dropped_through + (entry & ((1 << SECOND_BITS) - 1)));
        if let Some(new) = pending.filter(|new| *new < old_tag) {
            push(&mut next, new, signed_at)?;
            pending = None;
        }
        if signed > through {
            push(&mut next, old_tag, signed)?;
        }
    }
    if let Some(new) = pending {
        push(&mut next, new, signed_at)?;
    }
    if next.len() - HEADER_LEN > PER_KEY * ENTRY_LEN {
        return Err(Unavailable::Full);
    }
    Ok(next)
}

fn key_name(index: u64) -> String {
    format!("{PREFIX}.{index}")
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

    fn settings(skew_secs: u64, future_secs: u64, mb: u64) -> SharedSettings {
        SharedSettings { skew_secs, future_secs, memory_bytes: mb << 20 }
    }

    fn prepared(data: &FakeSharedData, mb: u64) -> SharedMemory {
        let mut asked = 0;
        let memory = SharedMemory::prepare(data, settings(300, 0, mb), Arc::default(), NOW, || {
            asked += 1;
            Ok([3; 16])
        });
        assert_eq!(asked, 1);
        memory.unwrap()
    }

    fn verdict(m: &SharedMemory, data: &FakeSharedData, i: u64, signed: u64, now: u64) -> Result<Verdict, Unavailable> {
        m.remember(data, &nonce(i), signed, now).map(|r| r.0)
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
    fn geometry_from_the_first_bound() {
        assert_eq!(settings(300, 2, 512).keys(), 131_072);
        assert_eq!(SharedSettings { skew_secs: 1, future_secs: 0, memory_bytes: 1 }.keys(), 1);
        assert_eq!(PER_KEY, 510);
    }

    #[test]
    fn prepares_once_and_every_configuration_reads_the_same_memory() {
        let data = FakeSharedData::default();
        let first = prepared(&data, 1);
        assert_eq!(data.key_count() as u64, first.keys + 1);
        // Another configuration, later (an xDS update, another listener) with other
        // settings: the same keys, first second and fingerprint key; nothing random asked.
        let second = SharedMemory::prepare(&data, settings(60, 0, 4), Arc::default(), NOW + 50, || Err("not asked".into())).unwrap();
        assert_eq!((second.began, second.key, second.keys), (NOW, first.key, first.keys));
        assert_eq!(data.key_count() as u64, first.keys + 1, "no key of its own");
        assert_eq!(verdict(&first, &data, 1, NOW + 60, NOW + 60), Ok(Verdict::Fresh));
        assert_eq!(verdict(&second, &data, 1, NOW + 60, NOW + 61), Ok(Verdict::Replayed));
        assert_eq!(verdict(&second, &data, 2, NOW + 62, NOW + 62), Ok(Verdict::Fresh));
        assert_eq!(verdict(&first, &data, 2, NOW + 62, NOW + 63), Ok(Verdict::Replayed));
        // A memory of another format is refused, never misread.
        let foreign = FakeSharedData::default();
        foreign.set(META_KEY, &[0; META_LEN], None).unwrap();
        assert!(SharedMemory::prepare(&foreign, settings(300, 0, 1), Arc::default(), NOW, || Ok([1; 16])).is_err());
    }

    #[test]
    fn remembers_and_refuses() {
        let data = FakeSharedData::default();
        let m = prepared(&data, 1);
        let signed = NOW + 10;
        assert_eq!(verdict(&m, &data, 1, NOW, NOW + 1), Ok(Verdict::SignedBeforeMemory));
        let (v, fullness) = m.remember(&data, &nonce(1), signed, signed).unwrap();
        assert_eq!((v, fullness), (Verdict::Fresh, Fullness { live: 1, capacity: PER_KEY as u64 }));
        assert_eq!(verdict(&m, &data, 1, signed, signed + 300), Ok(Verdict::Replayed));
        assert_eq!(verdict(&m, &data, 1, signed, signed + 301), Ok(Verdict::Expired));
    }

    #[test]
    fn the_largest_skew_and_future_tolerance_hold_for_every_configuration() {
        let data = FakeSharedData::default();
        // Two configurations of one VM (an xDS update: the same VM, a new one beside).
        let vm = Arc::new(Largest::default());
        let short = SharedMemory::prepare(&data, settings(60, 0, 1), vm.clone(), NOW, || Ok([5; 16])).unwrap();
        let long = SharedMemory::prepare(&data, settings(3600, 5, 1), vm, NOW + 1, || Err("not asked".into())).unwrap();
        // The short one of another VM, prepared before the long one existed: it keeps
        // what the keys' headers say, and refuses (never accepts) the rest.
        let other_vm = SharedMemory::prepare(&data, settings(60, 0, 1), Arc::default(), NOW, || Err("not asked".into())).unwrap();
        // Accepted under the long skew, then many writes by the short one's VM (which
        // began before the long one existed) long after its own skew: never dropped.
        let old = NOW + 100;
        assert_eq!(verdict(&long, &data, 1, old, old), Ok(Verdict::Fresh));
        for i in 2..4000 {
            assert_eq!(verdict(&short, &data, i, old + 1000 + i % 60, old + 1000 + i % 60), Ok(Verdict::Fresh), "{i}");
        }
        assert_eq!(verdict(&long, &data, 1, old, old + 3000), Ok(Verdict::Replayed));
        for i in 2..1000 {
            assert_eq!(verdict(&other_vm, &data, i, old + 1000 + i % 60, old + 1060), Ok(Verdict::Replayed), "{i}");
        }
        assert_eq!(verdict(&long, &data, 1, old, old + 3000), Ok(Verdict::Replayed));
        assert_eq!(verdict(&long, &data, 77_777, old + 1, old + 3000), Ok(Verdict::Fresh), "long after the short skew, still kept");
        // The future tolerance of the long one covers the short one's requests too.
        assert_eq!(verdict(&short, &data, 9999, NOW + 5, NOW + 4), Ok(Verdict::SignedBeforeMemory));
        assert_eq!(verdict(&long, &data, 9999, NOW + 5, NOW + 4), Ok(Verdict::SignedBeforeMemory));
    }

    #[test]
    fn one_busy_second_uses_every_key() {
        // 1 MB, 256 keys: the old layout gave a 225 s bucket 7 keys (3,577 nonces).
        let data = FakeSharedData::default();
        let m = SharedMemory::prepare(&data, settings(3600, 0, 1), Arc::default(), NOW, || Ok([6; 16])).unwrap();
        assert_eq!(m.keys, 256);
        let signed = NOW + 1;
        for i in 0..100_000 {
            assert_eq!(verdict(&m, &data, i, signed, signed), Ok(Verdict::Fresh), "{i}");
        }
        for i in (0..100_000).step_by(97) {
            assert_eq!(verdict(&m, &data, i, signed, signed + 3600), Ok(Verdict::Replayed), "{i}");
        }
        // Full keys refuse (fail closed), and a replay is still recognised.
        let refused = (100_000..140_000).filter(|&i| verdict(&m, &data, i, signed, signed) == Err(Unavailable::Full)).count();
        assert!(refused > 0);
        assert_eq!(verdict(&m, &data, 7, signed, signed), Ok(Verdict::Replayed));
        // Room again once they expire.
        let later = signed + 3601;
        assert_eq!(verdict(&m, &data, 200_000, later, later), Ok(Verdict::Fresh));
        assert!(data.stored_bytes() <= (256 * VALUE_MAX_BYTES) + 256 * 32 + 64);
    }

    #[test]
    fn expired_entries_are_dropped_and_stay_refused() {
        let data = FakeSharedData::default();
        let m = SharedMemory::prepare(&data, settings(300, 0, 0), Arc::default(), NOW, || Ok([7; 16])).unwrap();
        assert_eq!(m.keys, 1);
        for i in 0..400 {
            assert_eq!(verdict(&m, &data, i, NOW + 1 + i % 20, NOW + 20), Ok(Verdict::Fresh));
        }
        // Far later, one more write drops them all: the key holds one entry.
        let later = NOW + 1000;
        assert_eq!(verdict(&m, &data, 1000, later, later), Ok(Verdict::Fresh));
        let Ok(Some((value, _))) = data.get(&key_name(0)) else { panic!() };
        assert_eq!(value.len(), HEADER_LEN + ENTRY_LEN);
        // A request dated in the dropped seconds whose clock reading is older (a race
        // at the window's edge) is refused as stale, not taken as fresh.
        assert_eq!(verdict(&m, &data, 5, NOW + 690, later - 400), Ok(Verdict::Expired));
        // Entries dated ahead are counted from the dropped-through second and survive rebuilds.
        assert_eq!(verdict(&m, &data, 1001, later + 30, later), Ok(Verdict::Fresh));
        assert_eq!(verdict(&m, &data, 1002, later + 200, later + 200), Ok(Verdict::Fresh));
        assert_eq!(verdict(&m, &data, 1001, later + 30, later + 320), Ok(Verdict::Replayed));
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
        assert_eq!(verdict(&m, &data, 1, NOW + 1, NOW + 1), Ok(Verdict::Replayed));
        let racing = Racing { data: &data, losses: 100.into() };
        assert_eq!(m.remember(&racing, &nonce(2), NOW + 1, NOW + 1), Err(Unavailable::Contended));
        // A missing key is never written blindly.
        let unprepared = FakeSharedData::default();
        assert_eq!(m.remember(&unprepared, &nonce(1), NOW + 1, NOW + 1), Err(Unavailable::NotPrepared));
    }

    #[test]
    fn search_finds_and_places() {
        let entries: Vec<u8> = [3u64, 9, 20].iter().flat_map(|t| (t << SECOND_BITS | 7).to_be_bytes()).collect();
        assert_eq!(search(&entries, 9), Ok(1));
        assert_eq!(search(&entries, 1), Err(0));
        assert_eq!(search(&entries, 10), Err(2));
        assert_eq!(search(&entries, 21), Err(3));
        assert_eq!(search(&[], 5), Err(0));
        assert!(parse(&[1, 2, 3]).is_err());
        assert!(parse(&[0; 20]).is_err());
    }
}
