//! Keys that may change while Envoy runs: a role's key ring, some of whose keys come
//! from files (`secret.keys[i].file`), re-read when a file changes, as a mounted
//! Kubernetes Secret is rotated in place.
//!
//! When some keys come from files, the ring in use is an `Arc` behind a lock taken
//! for reading only as long as a clone of the `Arc` takes: a request holds the ring it
//! started with, and a reload swaps in a whole new ring (all keys at once, never a
//! half-read file). The native module shares one configuration across its worker
//! threads, hence the lock. Keys that never change are read with neither.
//!
//! Files are never read on the request path. The loader calls [`Keys::poll`] from a
//! thread of its own, every `secret.file_check_ms`: each file is `stat`ed (through
//! symlinks) and read again only when its identity changed — device, inode, size,
//! modification or change time. Kubernetes updates a mounted Secret by writing a new
//! timestamped directory and renaming a `..data` symlink onto it, so the path then
//! resolves to a new inode; an in-place write changes the times and size. Content
//! that hashes to what is in use changes nothing (a `touch`, a rewrite of the same
//! key). A file that turns unreadable or invalid keeps the last good keys; the
//! failure is reported once ([`KeyFileEvent::Failed`] with `first`), and the file is
//! taken again as soon as it is valid.
//!
//! Reading goes through [`KeyFiles`], so that the protocol crate tests all of this
//! on the host with a fake file system and clock; the native module reads the real
//! one. The Wasm filter cannot read files at all (Envoy gives a Wasm VM no file
//! system: proxy-wasm's WASI `path_open` always answers "no such file").

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::signature::{Algorithm, KeyRing};

/// A file's identity as `stat(2)` gives it through symlinks: when any of it changes,
/// the file is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    pub device: u64,
    pub inode: u64,
    pub len: u64,
    pub modified_ns: i128,
    pub changed_ns: i128,
}

/// The file system, as keys are read from it.
pub trait KeyFiles {
    /// The identity of the file `path` names, through symlinks.
    fn stamp(&self, path: &str) -> std::io::Result<FileStamp>;
    /// The file's content and the identity of what was read (one open file, so that
    /// both describe one version); a file larger than `limit` bytes is an error.
    fn read(&self, path: &str, limit: usize) -> std::io::Result<(FileStamp, Zeroizing<Vec<u8>>)>;
}

/// The largest key file read: keys are small, and a file this large is a mistake.
pub const MAX_KEY_FILE_BYTES: usize = 1 << 20;

/// The default of `secret.file_check_ms`: how often key files are checked.
pub const DEFAULT_FILE_CHECK: Duration = Duration::from_millis(1000);

/// Keys as one entry of `secret.keys` gives them: `(id, key)` pairs, the key as the
/// configuration would give it inline (an HMAC secret's bytes, a PEM or JWK's text).
pub type Material = Vec<(String, Zeroizing<Vec<u8>>)>;

/// Builds the role's ring from every entry's keys (`(field, keys)`, in the
/// configuration's order): the configuration's checks, the same at start and at
/// every reload.
pub type BuildRing = dyn Fn(&[(&str, &Material)]) -> Result<KeyRing, (String, String)> + Send + Sync;

/// What a poll found, for the loader to count and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFileEvent {
    /// The file changed and its keys are now in use (`recovered`: after a failure).
    Reloaded { field: String, path: String, recovered: bool },
    /// The file is back to the keys in use after a failure (nothing to swap).
    Recovered { field: String, path: String },
    /// The file cannot be used: the last good keys stay. `first`: the first failure
    /// since it was last good (log this one; count them all).
    Failed { field: String, path: String, reason: String, first: bool },
}

/// One entry of `secret.keys`: its keys as last read, and the file it is read from.
pub struct KeySource {
    /// The field the keys came from (`secret.keys[i].value`, `.env` or `.file`), for errors.
    pub field: String,
    material: Material,
    file: Option<WatchedFile>,
}

struct WatchedFile {
    path: String,
    /// The entry's `id`: the file holds that one key; `None`: a key set (JWKS).
    id: Option<String>,
    stamp: Option<FileStamp>,
    /// The hash of the content whose keys are in use.
    digest: [u8; 32],
    /// Why the file cannot be used now (`None`: it is in use).
    failure: Option<String>,
}

impl KeySource {
    /// Keys given in the configuration (inline or from the environment).
    pub fn fixed(field: String, material: Material) -> KeySource {
        KeySource { field, material, file: None }
    }

    /// Keys read from `path` now, for the entry `field` (`secret.keys[i]`): `id` names
    /// the file's one key, or, `None`, the file is a key set. The error names `{field}.file`.
    pub fn from_file(
        field: String,
        path: String,
        id: Option<String>,
        algorithm: Algorithm,
        files: &dyn KeyFiles,
    ) -> Result<KeySource, (String, String)> {
        let file_field = format!("{field}.file");
        let (stamp, content) = files
            .read(&path, MAX_KEY_FILE_BYTES)
            .map_err(|e| (file_field.clone(), format!("{path:?} cannot be read: {}", io_reason(&e))))?;
        let material = material_of(&content, id.as_deref(), algorithm).map_err(|e| (file_field.clone(), format!("{path:?} {e}")))?;
        let digest = Sha256::digest(&content[..]).into();
        Ok(KeySource { field: file_field, material, file: Some(WatchedFile { path, id, stamp: Some(stamp), digest, failure: None }) })
    }
}

/// A role's keys: the ring in use and, when some come from files, what re-reads them.
pub struct Keys {
    current: Current,
    watch: Option<Mutex<Watch>>,
    /// The ring's algorithm, the same in every ring it swaps in.
    pub algorithm: Algorithm,
    check_every: Duration,
}

/// Keys that never change are read as they are: no lock, no shared count to bump
/// on every request; keys from files behind a lock, held as long as an `Arc` clone.
enum Current {
    Fixed(KeyRing),
    Live(RwLock<Arc<KeyRing>>),
}

/// The ring a request uses.
pub enum Ring<'a> {
    Fixed(&'a KeyRing),
    Live(Arc<KeyRing>),
}

impl std::ops::Deref for Ring<'_> {
    type Target = KeyRing;
    fn deref(&self) -> &KeyRing {
        match self {
            Ring::Fixed(ring) => ring,
            Ring::Live(ring) => ring,
        }
    }
}

struct Watch {
    sources: Vec<KeySource>,
    build: Box<BuildRing>,
    algorithm: Algorithm,
    last_check: Option<Duration>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watched: Vec<String> = self
            .watch
            .as_ref()
            .map(|w| {
                w.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .sources
                    .iter()
                    .filter_map(|s| s.file.as_ref())
                    .map(|f| f.path.clone())
                    .collect()
            })
            .unwrap_or_default();
        f.debug_struct("Keys").field("ring", &*self.ring()).field("files", &watched).field("check_every", &self.check_every).finish()
    }
}

impl Keys {
    /// Keys that never change.
    pub fn fixed(ring: KeyRing) -> Keys {
        Keys { algorithm: ring.algorithm, current: Current::Fixed(ring), watch: None, check_every: DEFAULT_FILE_CHECK }
    }

    /// The ring of `sources`, re-read from their files (if any) every `check_every`.
    pub fn new(
        sources: Vec<KeySource>,
        algorithm: Algorithm,
        build: Box<BuildRing>,
        check_every: Duration,
    ) -> Result<Keys, (String, String)> {
        let ring = {
            let entries: Vec<(&str, &Material)> = sources.iter().map(|s| (s.field.as_str(), &s.material)).collect();
            build(&entries)?
        };
        if !sources.iter().any(|s| s.file.is_some()) {
            return Ok(Keys { check_every, ..Keys::fixed(ring) });
        }
        let watch = Some(Mutex::new(Watch { sources, build, algorithm, last_check: None }));
        Ok(Keys { current: Current::Live(RwLock::new(Arc::new(ring))), watch, algorithm, check_every })
    }

    /// The ring in use: a request keeps the one it got, whatever a reload swaps in.
    pub fn ring(&self) -> Ring<'_> {
        match &self.current {
            Current::Fixed(ring) => Ring::Fixed(ring),
            Current::Live(ring) => Ring::Live(ring.read().unwrap_or_else(PoisonError::into_inner).clone()),
        }
    }

    /// Whether some keys come from files, which a loader then polls.
    pub fn watches_files(&self) -> bool {
        self.watch.is_some()
    }

    /// How often the loader should call [`Keys::poll`] (`secret.file_check_ms`).
    pub fn check_every(&self) -> Duration {
        self.check_every
    }

    /// Checks the key files, unless the last check was less than `check_every` ago
    /// (`now`: any monotonic clock): each changed file is read, and the ring rebuilt
    /// and swapped in when a valid one changed. Never fails: a file that cannot be
    /// used keeps its last good keys, and says so in the events.
    pub fn poll(&self, files: &dyn KeyFiles, now: Duration) -> Vec<KeyFileEvent> {
        let Some(watch) = &self.watch else { return Vec::new() };
        let mut watch = watch.lock().unwrap_or_else(PoisonError::into_inner);
        if watch.last_check.is_some_and(|last| now.saturating_sub(last) < self.check_every) {
            return Vec::new();
        }
        watch.last_check = Some(now);
        let mut events = Vec::new();
        if let (Some(ring), Current::Live(current)) = (watch.check(files, &mut events), &self.current) {
            *current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        }
        events
    }
}

impl Watch {
    /// The new ring, when a file changed to valid keys; events for whatever happened.
    fn check(&mut self, files: &dyn KeyFiles, events: &mut Vec<KeyFileEvent>) -> Option<KeyRing> {
        // (source index, new keys, their content's hash)
        let mut changed: Vec<(usize, Material, [u8; 32])> = Vec::new();
        for (i, source) in self.sources.iter_mut().enumerate() {
            let field = source.field.clone();
            let Some(file) = &mut source.file else { continue };
            let stamp = match files.stamp(&file.path) {
                Ok(stamp) => stamp,
                Err(e) => {
                    file.stamp = None;
                    fail_once(file, &field, format!("cannot be read: {}", io_reason(&e)), events);
                    continue;
                }
            };
            if file.stamp == Some(stamp) {
                continue;
            }
            let (stamp, content) = match files.read(&file.path, MAX_KEY_FILE_BYTES) {
                Ok(read) => read,
                Err(e) => {
                    file.stamp = None;
                    fail_once(file, &field, format!("cannot be read: {}", io_reason(&e)), events);
                    continue;
                }
            };
            file.stamp = Some(stamp);
            let digest: [u8; 32] = Sha256::digest(&content[..]).into();
            if digest == file.digest {
                if file.failure.take().is_some() {
                    events.push(KeyFileEvent::Recovered { field, path: file.path.clone() });
                }
                continue;
            }
            match material_of(&content, file.id.as_deref(), self.algorithm) {
                Ok(material) => changed.push((i, material, digest)),
                // A new version, however like the last: counted again, logged once.
                Err(reason) => fail(file, &field, reason, events),
            }
        }
        if changed.is_empty() {
            return None;
        }
        let built = {
            let entries: Vec<(&str, &Material)> = self
                .sources
                .iter()
                .enumerate()
                .map(|(i, s)| (s.field.as_str(), changed.iter().find(|c| c.0 == i).map_or(&s.material, |c| &c.1)))
                .collect();
            (self.build)(&entries)
        };
        match built {
            Ok(ring) => {
                for (i, material, digest) in changed {
                    let source = &mut self.sources[i];
                    let field = source.field.clone();
                    source.material = material;
                    if let Some(file) = &mut source.file {
                        file.digest = digest;
                        let recovered = file.failure.take().is_some();
                        events.push(KeyFileEvent::Reloaded { field, path: file.path.clone(), recovered });
                    }
                }
                Some(ring)
            }
            Err((_, reason)) => {
                // The keys read, each valid, do not make a ring together (an id given
                // twice, a key of the wrong half): read again next time, reported once.
                for (i, _, _) in changed {
                    let source = &mut self.sources[i];
                    let field = source.field.clone();
                    if let Some(file) = &mut source.file {
                        file.stamp = None;
                        fail_once(file, &field, reason.clone(), events);
                    }
                }
                None
            }
        }
    }
}

/// Records a failure of a new version of the file: always an event.
fn fail(file: &mut WatchedFile, field: &str, reason: String, events: &mut Vec<KeyFileEvent>) {
    let first = file.failure.is_none();
    file.failure = Some(reason.clone());
    events.push(KeyFileEvent::Failed { field: field.to_string(), path: file.path.clone(), reason, first });
}

/// Records a failure seen again at every check (a file gone): an event only when
/// it is not the failure already reported.
fn fail_once(file: &mut WatchedFile, field: &str, reason: String, events: &mut Vec<KeyFileEvent>) {
    if file.failure.as_deref() != Some(reason.as_str()) {
        fail(file, field, reason, events);
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The keys of a file's content: the whole file is the key `id` (a trailing line
/// break is not part of it), or, without an id, the file is a key set.
fn material_of(content: &[u8], id: Option<&str>, algorithm: Algorithm) -> Result<Material, String> {
    match id {
        Some(id) => {
            let end = content.iter().rposition(|b| *b != b'\n' && *b != b'\r').map_or(0, |i| i + 1);
            if end == 0 {
                return Err("is empty".into());
            }
            Ok(vec![(id.to_string(), Zeroizing::new(content[..end].to_vec()))])
        }
        None => key_set(content, algorithm),
    }
}

/// A JSON Web Key Set (RFC 7517 §5): `{"keys": [JWK, ...]}`, each JWK with its `kid`.
/// An HMAC key is a JWK of `"kty": "oct"` whose `k` is the secret, base64url; a
/// public-key algorithm's JWKs are read as inline JWKs are ([`crate::asymmetric`]).
/// The first key is the one the `app` role signs with. The error never quotes a key.
fn key_set(content: &[u8], algorithm: Algorithm) -> Result<Material, String> {
    #[derive(serde::Deserialize)]
    struct KeySet {
        keys: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let set: KeySet = serde_json::from_slice(content).map_err(|_| {
        "is not a key set: a JSON Web Key Set, {\"keys\": [{\"kid\": ID, \"kty\": ...}, ...]} (the text is not shown: it may be a secret)"
            .to_string()
    })?;
    if set.keys.is_empty() {
        return Err("is a key set of no key".into());
    }
    let mut material = Vec::with_capacity(set.keys.len());
    for (n, mut jwk) in set.keys.into_iter().enumerate() {
        let Some(serde_json::Value::String(kid)) = jwk.get("kid") else {
            return Err(format!("is a key set whose key {n} has no \"kid\" (a string: the key id)"));
        };
        let kid = kid.clone();
        let key = match algorithm {
            Algorithm::HmacSha1 | Algorithm::HmacSha256 => {
                let text = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
                if text("kty") != Some("oct") {
                    return Err(format!(
                        "is a key set whose key {kid:?} is not an HMAC secret (\"kty\": \"oct\") for {}",
                        algorithm.name()
                    ));
                }
                // JOSE names no HMAC-SHA1: such a key says no "alg".
                let expected = (algorithm == Algorithm::HmacSha256).then_some("HS256");
                if text("alg").is_some_and(|alg| Some(alg) != expected) {
                    return Err(format!(
                        "is a key set whose key {kid:?} is for another algorithm (\"alg\" is not {})",
                        expected.unwrap_or("absent")
                    ));
                }
                let k = text("k").ok_or_else(|| format!("is a key set whose key {kid:?} has no \"k\""))?;
                let engine = base64::engine::general_purpose::GeneralPurpose::new(
                    &base64::alphabet::URL_SAFE,
                    base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
                );
                Zeroizing::new(engine.decode(k).map_err(|_| format!("is a key set whose key {kid:?} has a \"k\" that is not base64url"))?)
            }
            _ => Zeroizing::new(serde_json::to_vec(&jwk).map_err(|_| format!("is a key set whose key {kid:?} cannot be read"))?),
        };
        // The parsed secret members are wiped as the text they came from is.
        for name in ["k", "d", "p", "q", "dp", "dq", "qi"] {
            if let Some(serde_json::Value::String(mut secret)) = jwk.remove(name) {
                zeroize::Zeroize::zeroize(&mut secret);
            }
        }
        material.push((kid, key));
    }
    Ok(material)
}

#[cfg(test)]
mod tests;
