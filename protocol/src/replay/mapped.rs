//! The native module's memory in a file every process maps (issue #27): the workers
//! of one Envoy, a hot-restart child with its parent, and any Envoy given the same
//! path use one memory at once, and a restarted or crashed Envoy finds it as it was.
//!
//! Layout. A 4 KB header, then stripes of 4 KB. The header holds a magic, the format
//! version, the geometry, the memory's first second, its fingerprint key, the boot it
//! was made in and the path it was made for, then a checksum of those; after them,
//! the largest skew and future tolerance any configuration asked for and the count
//! of nonces held. A stripe is a robust, process-shared pthread mutex, a few fields
//! (nonces held, the second through which it dropped everything, when it was last
//! written and swept), then 496 entries of 8 bytes in 31 buckets of 16.
//!
//! An entry is a nonce's keyed fingerprint (upper 48 bits) and its signature's
//! second modulo 2^16 (every live entry is within hours of now, so the second is
//! unambiguous); 0 is an empty slot. A fingerprint chooses a stripe and two of its
//! buckets; a lookup scans both (four cache lines) under the stripe's lock, and an
//! insert goes to the emptier one (two choices keep the fullest bucket far from 16
//! at the bound's 52% load). Everything a stripe holds is read and written under its
//! lock, so two processes can never both find a nonce absent: one inserts it first.
//!
//! Expiry is per entry: an entry whose second is more than the skew behind now is
//! cleared when a lookup meets it, when its stripe is swept (at most once a minute,
//! on a write), or when its stripe was idle longer than any entry lives. Clearing
//! records the stripe's "dropped through" second; a request dated at or before it is
//! refused as stale (a process whose clock reads an earlier second must not find a
//! nonce absent because another one's clock forgot it).
//!
//! A process killed at any instruction: an entry is one aligned 8-byte store, made
//! before the request is answered; a lock whose holder died is handed to the next
//! process with `EOWNERDEAD`, which recounts the stripe and goes on. The count of
//! nonces held (the gauge) may drift by one per such death.
//!
//! A file is trusted only when its header is whole (magic, version, geometry, the
//! file's size, a checksum), made in this boot (a file on a disk may have lost writes
//! in a crash), for this path, and owned by this user and writable by no one else.
//! Otherwise it is replaced by a new memory, which begins now and refuses what is
//! signed at or before its first second plus the future tolerance, as the
//! in-process memory does after every start. The file is opened and made under an
//! `flock` on `<path>.lock`, a new one under a temporary name then renamed, so
//! processes starting together agree on one file and none sees a half-made one.

use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use memmap2::MmapMut;
use siphasher::sip::SipHasher13;

use super::{FingerprintKey, Fullness, Unavailable, Verdict};
use crate::signature::Nonce;

/// Bytes of the bound per nonce: the capacity is the file's size over this, which
/// fills the entries to about 52%.
pub const BYTES_PER_NONCE: u64 = 16;
const MAGIC: [u8; 8] = *b"WSGIRPLY";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 4096;
const STRIPE_BYTES: usize = 4096;
const STRIPE_HEAD: usize = 128;
const BUCKET_SLOTS: usize = 16;
const BUCKETS: usize = (STRIPE_BYTES - STRIPE_HEAD) / 8 / BUCKET_SLOTS;
/// A stripe is swept of its expired entries at most this often.
const SWEEP_SECS: u64 = 60;
/// The most a signature may be dated ahead (config's `MAX_FUTURE_SECONDS`), and the
/// largest skew: what bounds an entry's life, whatever a header says.
const FUTURE_MAX: u64 = 60;
const SKEW_MAX: u64 = 3600;
/// The longest path the header records.
pub const PATH_MAX_BYTES: usize = 256;

// The header's fields (byte offsets).
const H_VERSION: usize = 8;
const H_STRIPE_BYTES: usize = 12;
const H_STRIPES: usize = 16;
const H_FILE_LEN: usize = 24;
const H_BEGAN: usize = 32;
const H_KEY: usize = 40;
const H_BOOT: usize = 56;
const H_PATH_LEN: usize = 72;
const H_PATH: usize = 80;
const H_SUM: usize = H_PATH + PATH_MAX_BYTES;
// Written while in use (not in the checksum).
const H_SKEW: usize = 384;
const H_FUTURE: usize = 392;
const H_LIVE: usize = 448;

// A stripe's fields.
const S_COUNT: usize = 64;
const S_DROPPED: usize = 72;
const S_TOUCHED: usize = 80;
const S_SWEPT: usize = 88;

const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= 64);
const _: () = assert!(H_SUM + 8 <= H_SKEW && H_LIVE + 8 <= HEADER_BYTES);

/// How a memory was found when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A trusted file: the memory as it was, no refusal after this start.
    Kept,
    /// No file: a new memory, refusing what is signed at or before its first second.
    New,
    /// A file that could not be trusted (why), replaced by a new memory.
    Replaced(String),
}

pub struct MappedMemory {
    map: MmapMut,
    base: *mut u8,
    stripes: u64,
    key: FingerprintKey,
    path: PathBuf,
}

// The mapping is shared memory, read and written through atomics and under the
// stripes' process-shared locks only.
unsafe impl Send for MappedMemory {}
unsafe impl Sync for MappedMemory {}

/// A stripe's lock, held: unlocks when dropped.
struct Held<'a> {
    memory: &'a MappedMemory,
    at: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        unsafe { libc::pthread_mutex_unlock(self.memory.mutex(self.at)) };
    }
}

impl MappedMemory {
    /// Opens the memory at `path`, or makes a new one of `memory_bytes` beginning at
    /// `now` with the fingerprint key `random` when there is none or it cannot be
    /// trusted. An error: no memory could be mapped there at all.
    pub fn open(path: &Path, memory_bytes: u64, now: u64, random: [u8; 16]) -> Result<(MappedMemory, Found), String> {
        Self::open_in_boot(path, memory_bytes, now, random, boot_id())
    }

    fn open_in_boot(path: &Path, memory_bytes: u64, now: u64, random: [u8; 16], boot: [u8; 16]) -> Result<(MappedMemory, Found), String> {
        let path_bytes = path.as_os_str().as_encoded_bytes();
        if !path.is_absolute() || path_bytes.len() > PATH_MAX_BYTES {
            return Err(format!("{}: the replay memory's path must be absolute and at most {PATH_MAX_BYTES} bytes", path.display()));
        }
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        // Released when `lock` is closed, or by the kernel if this process dies.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("{}: flock: {}", lock_path.display(), std::io::Error::last_os_error()));
        }
        let found = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => match Self::trust(file, path, now, boot) {
                Ok(memory) => return Ok((memory, Found::Kept)),
                Err(why) => Found::Replaced(why),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::New,
            Err(e) => Found::Replaced(format!("cannot open it: {e}")),
        };
        let memory = Self::create(path, memory_bytes, now, random, boot)?;
        drop(lock);
        Ok((memory, found))
    }

    /// Maps an existing file if every check passes; else says why not.
    fn trust(file: File, path: &Path, now: u64, boot: [u8; 16]) -> Result<MappedMemory, String> {
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o022 != 0 {
            return Err(format!("owned by uid {} with mode {:o}: not this user's alone", meta.uid(), meta.mode() & 0o777));
        }
        let len = meta.len();
        if len < (HEADER_BYTES + STRIPE_BYTES) as u64 || (len - HEADER_BYTES as u64) % STRIPE_BYTES as u64 != 0 {
            return Err(format!("{len} bytes: not a replay memory's size"));
        }
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| format!("mmap: {e}"))?;
        let header = map.get(..HEADER_BYTES).ok_or("too short")?;
        if header[..8] != MAGIC {
            return Err("not a replay memory (another magic)".into());
        }
        let version = u32::from_le_bytes(header[H_VERSION..H_VERSION + 4].try_into().map_err(|_| "header")?);
        if version != VERSION {
            return Err(format!("format version {version}, this module writes {VERSION}"));
        }
        if checksum(header) != read_u64(header, H_SUM) {
            return Err("its header's checksum is wrong (damaged)".into());
        }
        let stripes = read_u64(header, H_STRIPES);
        let stripe_bytes = u32::from_le_bytes(header[H_STRIPE_BYTES..H_STRIPE_BYTES + 4].try_into().map_err(|_| "header")?);
        if stripe_bytes as usize != STRIPE_BYTES
            || read_u64(header, H_FILE_LEN) != len
            || HEADER_BYTES as u64 + stripes * STRIPE_BYTES as u64 != len
        {
            return Err("its geometry does not match its size".into());
        }
        if header[H_BOOT..H_BOOT + 16] != boot {
            return Err("made before this machine's last boot (a file on disk may have lost writes)".into());
        }
        let path_len = usize::from(u16::from_le_bytes([header[H_PATH_LEN], header[H_PATH_LEN + 1]]));
        if header.get(H_PATH..H_PATH + path_len) != Some(path.as_os_str().as_encoded_bytes()) {
            return Err("made for another path (moved or copied)".into());
        }
        if read_u64(header, H_BEGAN) > now + FUTURE_MAX {
            return Err("it begins in the future".into());
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(&header[H_KEY..H_KEY + 16]);
        let base = map.as_mut_ptr();
        Ok(MappedMemory { map, base, stripes, key: FingerprintKey::new(key), path: path.to_path_buf() })
    }

    /// Makes a new memory under a temporary name, then renames it to `path`.
    fn create(path: &Path, memory_bytes: u64, now: u64, random: [u8; 16], boot: [u8; 16]) -> Result<MappedMemory, String> {
        let stripes = (memory_bytes.saturating_sub(HEADER_BYTES as u64) / STRIPE_BYTES as u64).max(1);
        let len = HEADER_BYTES as u64 + stripes * STRIPE_BYTES as u64;
        let temporary = with_suffix(path, &format!(".new.{}", std::process::id()));
        let made = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)
                .map_err(|e| format!("{}: {e}", temporary.display()))?;
            // Reserved now: a tmpfs out of room would otherwise kill the process
            // (SIGBUS) at its first write to a page it cannot have.
            let reserved = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
            if reserved != 0 {
                return Err(format!(
                    "{}: cannot reserve {len} bytes: {}",
                    temporary.display(),
                    std::io::Error::from_raw_os_error(reserved)
                ));
            }
            let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| format!("mmap: {e}"))?;
            let path_bytes = path.as_os_str().as_encoded_bytes();
            let header = map.get_mut(..HEADER_BYTES).ok_or("too short")?;
            header[..8].copy_from_slice(&MAGIC);
            header[H_VERSION..H_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
            header[H_STRIPE_BYTES..H_STRIPE_BYTES + 4].copy_from_slice(&(STRIPE_BYTES as u32).to_le_bytes());
            header[H_STRIPES..H_STRIPES + 8].copy_from_slice(&stripes.to_le_bytes());
            header[H_FILE_LEN..H_FILE_LEN + 8].copy_from_slice(&len.to_le_bytes());
            header[H_BEGAN..H_BEGAN + 8].copy_from_slice(&now.to_le_bytes());
            header[H_KEY..H_KEY + 16].copy_from_slice(&random);
            header[H_BOOT..H_BOOT + 16].copy_from_slice(&boot);
            header[H_PATH_LEN..H_PATH_LEN + 2].copy_from_slice(&(path_bytes.len() as u16).to_le_bytes());
            header[H_PATH..H_PATH + path_bytes.len()].copy_from_slice(path_bytes);
            let sum = checksum(header);
            header[H_SUM..H_SUM + 8].copy_from_slice(&sum.to_le_bytes());
            let base = map.as_mut_ptr();
            let memory = MappedMemory { map, base, stripes, key: FingerprintKey::new(random), path: path.to_path_buf() };
            memory.init_locks()?;
            std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(memory)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        made
    }

    fn init_locks(&self) -> Result<(), String> {
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            let mut status = libc::pthread_mutexattr_init(&mut attr);
            if status == 0 {
                status = libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            }
            if status == 0 {
                status = libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            }
            for stripe in 0..self.stripes {
                if status != 0 {
                    break;
                }
                status = libc::pthread_mutex_init(self.mutex(self.stripe_at(stripe)), &attr);
            }
            libc::pthread_mutexattr_destroy(&mut attr);
            if status != 0 {
                return Err(format!("pthread mutex: {}", std::io::Error::from_raw_os_error(status)));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves one more configuration: entries are kept for the largest skew ever
    /// asked of this file, and a new memory refuses signatures dated up to the largest
    /// future tolerance past its first second.
    pub fn adopt(&self, skew_secs: u64, future_secs: u64) {
        self.word(H_SKEW).fetch_max(skew_secs.min(SKEW_MAX), Ordering::Relaxed);
        self.word(H_FUTURE).fetch_max(future_secs.min(FUTURE_MAX), Ordering::Relaxed);
    }

    /// The memory's bound, in bytes (its file's size).
    pub fn bytes(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn began(&self) -> u64 {
        self.word(H_BEGAN).load(Ordering::Relaxed)
    }

    /// The last second a signature may be dated and still be refused as possibly
    /// accepted before this memory began.
    pub fn trusted_after(&self) -> u64 {
        self.began().saturating_add(self.future_secs())
    }

    fn skew_secs(&self) -> u64 {
        self.word(H_SKEW).load(Ordering::Relaxed).clamp(1, SKEW_MAX)
    }

    fn future_secs(&self) -> u64 {
        self.word(H_FUTURE).load(Ordering::Relaxed).min(FUTURE_MAX)
    }

    pub fn fullness(&self) -> Fullness {
        let live = self.live().load(Ordering::Relaxed).max(0) as u64;
        Fullness { live, capacity: self.capacity() }
    }

    fn capacity(&self) -> u64 {
        self.bytes() / BYTES_PER_NONCE
    }

    /// Remembers `nonce`, signed at `signed_at`, at `now` (seconds since the epoch).
    pub fn remember(&self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, Unavailable> {
        if signed_at <= self.trusted_after() {
            return Ok(Verdict::SignedBeforeMemory);
        }
        let skew = self.skew_secs();
        if now > signed_at.saturating_add(skew) {
            return Ok(Verdict::Expired);
        }
        let fingerprint = self.key.fingerprint(nonce);
        let stripe = ((fingerprint & 0xffff_ffff) * self.stripes) >> 32;
        let first = ((fingerprint >> 32) & 0xffff) as usize % BUCKETS;
        let mut second = (fingerprint >> 48) as usize % BUCKETS;
        if second == first {
            second = (first + 1) % BUCKETS;
        }
        let entry = match (fingerprint & !0xffff) | (signed_at & 0xffff) {
            0 => 1 << 16,
            entry => entry,
        };
        let held = self.lock(self.stripe_at(stripe))?;
        let at = held.at;
        let touched = self.word(at + S_TOUCHED).load(Ordering::Relaxed);
        if now > touched.saturating_add(skew + FUTURE_MAX) {
            // Idle longer than any entry lives: whatever it holds is expired.
            self.sweep(at, now, skew, true);
        } else if now >= self.word(at + S_SWEPT).load(Ordering::Relaxed).saturating_add(SWEEP_SECS) {
            self.sweep(at, now, skew, false);
        }
        self.word(at + S_TOUCHED).fetch_max(now, Ordering::Relaxed);
        if signed_at <= self.word(at + S_DROPPED).load(Ordering::Relaxed) {
            return Ok(Verdict::Expired);
        }
        let mut free = [None, None];
        let mut held_in = [0usize; 2];
        for (k, bucket) in [first, second].into_iter().enumerate() {
            for slot in 0..BUCKET_SLOTS {
                let word = self.entry(at, bucket, slot);
                let e = word.load(Ordering::Relaxed);
                if e == 0 {
                    free[k] = free[k].or(Some(slot));
                } else if e == entry {
                    return Ok(Verdict::Replayed);
                } else if expired(e, now, skew) {
                    self.clear(at, word, now, skew);
                    free[k] = free[k].or(Some(slot));
                } else {
                    held_in[k] += 1;
                }
            }
        }
        if self.live().load(Ordering::Relaxed) >= self.capacity() as i64 {
            // Past the bound: this stripe's expired entries first.
            self.sweep(at, now, skew, false);
            if self.live().load(Ordering::Relaxed) >= self.capacity() as i64 {
                return Err(Unavailable::Full);
            }
        }
        let choice = if held_in[1] < held_in[0] { [(second, free[1]), (first, free[0])] } else { [(first, free[0]), (second, free[1])] };
        let Some((bucket, slot)) = choice.into_iter().find_map(|(b, s)| s.map(|s| (b, s))) else {
            return Err(Unavailable::Full);
        };
        // The entry is the commit: once stored, a process killed after it has
        // remembered the nonce; before it, the request was not answered.
        self.entry(at, bucket, slot).store(entry, Ordering::Relaxed);
        self.word(at + S_COUNT).fetch_add(1, Ordering::Relaxed);
        self.live().fetch_add(1, Ordering::Relaxed);
        drop(held);
        Ok(Verdict::Fresh)
    }

    /// Clears a stripe's expired entries (or all of them, when it was idle longer
    /// than any entry lives).
    fn sweep(&self, at: usize, now: u64, skew: u64, all: bool) {
        for bucket in 0..BUCKETS {
            for slot in 0..BUCKET_SLOTS {
                let word = self.entry(at, bucket, slot);
                let e = word.load(Ordering::Relaxed);
                if e != 0 && (all || expired(e, now, skew)) {
                    self.clear(at, word, now, skew);
                }
            }
        }
        self.word(at + S_DROPPED).fetch_max(now.saturating_sub(skew + 1), Ordering::Relaxed);
        self.word(at + S_SWEPT).fetch_max(now, Ordering::Relaxed);
    }

    fn clear(&self, at: usize, word: &AtomicU64, now: u64, skew: u64) {
        // Dropped through first: a process that dies next leaves the stripe
        // refusing as stale what it may have forgotten.
        self.word(at + S_DROPPED).fetch_max(now.saturating_sub(skew + 1), Ordering::Relaxed);
        word.store(0, Ordering::Relaxed);
        self.word(at + S_COUNT).fetch_sub(1, Ordering::Relaxed);
        self.live().fetch_sub(1, Ordering::Relaxed);
    }

    fn lock(&self, at: usize) -> Result<Held<'_>, Unavailable> {
        match unsafe { libc::pthread_mutex_lock(self.mutex(at)) } {
            0 => Ok(Held { memory: self, at }),
            libc::EOWNERDEAD => {
                // Its holder died holding it: the entries are whole (each one store),
                // only the count may be off.
                unsafe { libc::pthread_mutex_consistent(self.mutex(at)) };
                let held = Held { memory: self, at };
                self.recount(at);
                Ok(held)
            }
            _ => Err(Unavailable::Poisoned),
        }
    }

    fn recount(&self, at: usize) {
        let counted = (0..BUCKETS)
            .flat_map(|b| (0..BUCKET_SLOTS).map(move |s| (b, s)))
            .filter(|&(b, s)| self.entry(at, b, s).load(Ordering::Relaxed) != 0)
            .count() as u64;
        let was = self.word(at + S_COUNT).swap(counted, Ordering::Relaxed);
        self.live().fetch_add(counted as i64 - was as i64, Ordering::Relaxed);
    }

    fn stripe_at(&self, stripe: u64) -> usize {
        HEADER_BYTES + stripe as usize * STRIPE_BYTES
    }

    fn mutex(&self, at: usize) -> *mut libc::pthread_mutex_t {
        unsafe { self.base.add(at) as *mut libc::pthread_mutex_t }
    }

    /// The 8-byte word at `offset` (aligned: every offset used is a multiple of 8).
    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= self.map.len());
        unsafe { &*(self.base.add(offset) as *const AtomicU64) }
    }

    fn live(&self) -> &AtomicI64 {
        unsafe { &*(self.base.add(H_LIVE) as *const AtomicI64) }
    }

    fn entry(&self, at: usize, bucket: usize, slot: usize) -> &AtomicU64 {
        self.word(at + STRIPE_HEAD + (bucket * BUCKET_SLOTS + slot) * 8)
    }

    /// Holds a nonce's stripe lock until the process dies (tests of a killed holder).
    #[cfg(test)]
    fn lock_forever(&self, nonce: &Nonce) {
        let stripe = ((self.key.fingerprint(nonce) & 0xffff_ffff) * self.stripes) >> 32;
        if let Ok(held) = self.lock(self.stripe_at(stripe)) {
            std::mem::forget(held);
        }
    }
}

/// Whether an entry's second is more than the skew behind `now`. Every live entry is
/// within hours of now, so its second modulo 2^16 says which second it is.
fn expired(entry: u64, now: u64, skew: u64) -> bool {
    let age = (now as u16).wrapping_sub(entry as u16) as i16;
    i64::from(age) > skew as i64
}

fn checksum(header: &[u8]) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0x5753_4749_5250_4c59, VERSION.into());
    hasher.write(&header[..H_SUM]);
    hasher.finish()
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The default memory file of this user: `<dir>/wsgiproxy-replay-<uid>`, in `dir`
/// or else /dev/shm (a tmpfs: the memory outlives the process, not the machine).
pub fn default_memory_path(dir: Option<&str>) -> PathBuf {
    let uid = unsafe { libc::geteuid() };
    Path::new(dir.unwrap_or("/dev/shm")).join(format!("wsgiproxy-replay-{uid}"))
}

/// This boot's id (Linux's random boot id), or zeros where there is none.
fn boot_id() -> [u8; 16] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: String = text.chars().filter(char::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    if let Ok(bytes) = hex::decode(hex) {
        let n = bytes.len().min(16);
        id[..n].copy_from_slice(&bytes[..n]);
    }
    id
}

#[cfg(test)]
#[path = "mapped_tests.rs"]
mod tests;
