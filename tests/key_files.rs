//! Keys from files (issue #28 item 3), in real Envoy: the native module reads a key
//! file at start, follows it as Kubernetes rotates a mounted Secret (a `..data`
//! symlink swapped atomically) under load with no failed request, keeps the last
//! good keys when the file turns invalid or goes (counted, logged once), and refuses
//! a configuration whose file is missing, naming the field; the `app` role signs
//! with the key its file holds now. The Wasm filter cannot read files: it refuses a
//! file key, naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde_json::json;
use support::*;
use wsgiproxy_protocol::signature::{format_date, Algorithm, KeyRing};

const FILE: &str = "envoy/middleware.yaml";
const OLD: &str = "the-old-shared-key-0123456789";
const NEW: &str = "the-new-shared-key-0123456789";

fn overrides(echo: &Echo, secret: serde_json::Value, memory: &Path, loader: Loader) -> Overrides {
    let config = json!({"role": "middleware", "secret": secret, "replay_memory_mb": 16});
    Overrides::default()
        .cluster("app", echo.port)
        .plugin(config)
        .loader(loader)
        .env("WSGIPROXY_REPLAY_MEMORY_DIR", memory.to_str().unwrap())
}

/// A fresh v1-signed GET, dated now, signed with key `id` = `secret`.
fn signed(id: &str, secret: &str) -> Vec<u8> {
    let nonce = unique_nonce();
    let ring = KeyRing::new(Algorithm::HmacSha1, &[(id.to_string(), secret.as_bytes().to_vec())]).unwrap();
    signed_v1_get(&ring, &nonce, "internal:9000", "/transfer?amount=100", &format_date(SystemTime::now()))
}

fn status(port: u16, raw: &[u8]) -> u16 {
    KeptAlive::open(port).verdict(raw).0
}

/// A JWKS of HMAC secrets (`"kty": "oct"`).
fn key_set(keys: &[(&str, &str)]) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    json!({"keys": keys.iter().map(|(kid, k)| json!({"kty": "oct", "kid": kid, "k": b64(k)})).collect::<Vec<_>>()}).to_string()
}

/// A Secret volume as the kubelet writes it: `dir/NAME -> ..data/NAME`, `..data ->
/// ..VERSION`; a new version is a new directory and an atomic rename of `..data`.
struct SecretVolume {
    dir: PathBuf,
    name: &'static str,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path, name: &'static str, content: &str) -> SecretVolume {
        let mut volume = SecretVolume { dir: dir.to_path_buf(), name, version: 0 };
        volume.update(content);
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        volume
    }

    fn path(&self) -> String {
        self.dir.join(self.name).to_str().unwrap().to_string()
    }

    fn update(&mut self, content: &str) {
        let old = format!("..2026_12_07_{:02}", self.version);
        self.version += 1;
        let new = format!("..2026_12_07_{:02}", self.version);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        std::fs::write(self.dir.join(&new).join(self.name), content).unwrap();
        std::os::unix::fs::symlink(&new, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }
}

/// Signed requests from two threads, each signed with the key in `signer` when it
/// is sent, until stopped: every status seen.
struct Load {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<BTreeMap<u16, u64>>>,
    /// The key id of each thread's last answered request.
    last_answered: Arc<Mutex<Vec<&'static str>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, signer: Arc<Mutex<(&'static str, &'static str)>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let last_answered = Arc::new(Mutex::new(vec![""; 2]));
        let threads = (0..2)
            .map(|thread| {
                let (stop, statuses, signer, last_answered) = (stop.clone(), statuses.clone(), signer.clone(), last_answered.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (id, secret) = *signer.lock().unwrap();
                        let verdict = std::panic::catch_unwind(|| KeptAlive::open(port).verdict(&signed(id, secret))).unwrap_or((0, None));
                        if verdict.0 != 200 {
                            eprintln!("the load's request signed with {id}: {verdict:?}");
                        }
                        *statuses.lock().unwrap().entry(verdict.0).or_default() += 1;
                        last_answered.lock().unwrap()[thread] = id;
                    }
                })
            })
            .collect();
        Load { stop, statuses, last_answered, threads }
    }

    /// Waits until no request signed with another key than `id` is on its way: each
    /// thread's last answered request was signed with `id`.
    fn wait_until_all_sign_with(&self, id: &str) -> Duration {
        time_until("every request on its way signed with the new key", || self.last_answered.lock().unwrap().iter().all(|k| *k == id))
    }

    fn stop(self) -> BTreeMap<u16, u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.statuses.lock().unwrap().clone()
    }
}

/// How long until `ok`, polled every 20 ms, at most 10 s.
fn time_until(what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let began = Instant::now();
    while !ok() {
        assert!(began.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    began.elapsed()
}

/// Rotation as a Secret volume does it, under load: the set gains the new key, the
/// senders move to it, the old key leaves. Every request the load sent was signed
/// with a key the file held before and after each swap: none fails. The new key
/// verifies within a check interval of the swap, and the old one stops as soon.
#[test]
fn a_key_set_file_rotated_by_symlink_swap_is_followed_under_load() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let memory = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::new(dir.path(), "keys.json", &key_set(&[("k1", OLD)]));
    let secret = json!({"keys": [{"file": volume.path()}], "file_check_ms": 200});
    // Two workers share the configuration, and the ring a reload swaps in.
    let mut o = overrides(&echo, secret, memory.path(), Loader::Native);
    o.concurrency = Some(2);
    let envoy = Envoy::start(FILE, &o);
    assert_eq!(status(envoy.port, &signed("k1", OLD)), 200, "the key read at start verifies");
    assert_ne!(status(envoy.port, &signed("k2", NEW)), 200);

    let signer = Arc::new(Mutex::new(("k1", OLD)));
    let load = Load::start(envoy.port, signer.clone());
    std::thread::sleep(Duration::from_millis(300));
    // 1. The new key is published beside the old one.
    volume.update(&key_set(&[("k2", NEW), ("k1", OLD)]));
    let taken = time_until("the new key verifies", || status(envoy.port, &signed("k2", NEW)) == 200);
    // 2. The senders sign with it; 3. the old key leaves.
    *signer.lock().unwrap() = ("k2", NEW);
    // The old key leaves once nothing signed with it is on its way (a fixed pause was
    // not enough on a loaded machine: an answer can take longer).
    load.wait_until_all_sign_with("k2");
    volume.update(&key_set(&[("k2", NEW)]));
    let dropped = time_until("the old key stops verifying", || status(envoy.port, &signed("k1", OLD)) != 200);
    std::thread::sleep(Duration::from_millis(300));
    let statuses = load.stop();
    println!("new key taken after {taken:?}, old key dropped after {dropped:?}; load: {statuses:?}");
    assert!(statuses.keys().all(|s| *s == 200), "a request signed with a key the file held failed: {statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 50, "{statuses:?}");
    assert_eq!(KeptAlive::open(envoy.port).verdict(&signed("k1", OLD)), (403, Some("signature_bad".to_string())));
    assert_eq!(envoy.stat("wsgiproxy.middleware.key_file_reloads"), 2);
    assert_eq!(envoy.stat("wsgiproxy.middleware.key_file_errors"), 0);
}

/// One key per file, written in place: a file made invalid, then removed, keeps the
/// last good key (each counted, logged once); valid again, its new key is taken.
#[test]
fn an_invalid_or_missing_key_file_keeps_the_last_good_key() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let memory = tempfile::tempdir().unwrap();
    let path = dir.path().join("k1");
    std::fs::write(&path, format!("{OLD}\n")).unwrap();
    let secret = json!({"keys": [{"id": "k1", "file": path.to_str().unwrap()}], "file_check_ms": 100});
    let mut envoy = Envoy::start(FILE, &overrides(&echo, secret, memory.path(), Loader::Native));
    assert_eq!(status(envoy.port, &signed("k1", OLD)), 200);

    std::fs::write(&path, "too-short").unwrap();
    time_until("the invalid file is counted", || envoy.stats("key_file_errors").values().sum::<u64>() == 1);
    assert_eq!(status(envoy.port, &signed("k1", OLD)), 200, "the last good key stays");
    std::fs::remove_file(&path).unwrap();
    time_until("the missing file is counted", || envoy.stats("key_file_errors").values().sum::<u64>() == 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(envoy.port, &signed("k1", OLD)), 200, "the last good key stays");

    std::fs::write(&path, NEW).unwrap();
    time_until("the new key verifies", || status(envoy.port, &signed("k1", NEW)) == 200);
    assert_ne!(status(envoy.port, &signed("k1", OLD)), 200);
    assert_eq!(envoy.stat("wsgiproxy.middleware.key_file_errors"), 2, "a failure seen again at each check is counted once");
    assert_eq!(envoy.stat("wsgiproxy.middleware.key_file_reloads"), 1);
    let log = envoy.stop_and_log();
    assert_eq!(log.matches("the last good keys stay in use").count(), 1, "logged once:\n{log}");
    assert!(log.contains("wsgiproxy: secret.keys[0].file: "), "{log}");
    assert!(!log.contains("too-short"), "a key is never logged");
}

/// A key file missing at start: the configuration is refused, the field named.
#[test]
fn a_key_file_missing_at_start_is_a_config_error() {
    let echo = Echo::start();
    let memory = tempfile::tempdir().unwrap();
    let secret = json!({"keys": [{"id": "k1", "file": "/nonexistent/wsgiproxy/k1"}]});
    let log = Envoy::start_refused(FILE, &overrides(&echo, secret, memory.path(), Loader::Native));
    assert!(log.contains("field `secret.keys[0].file`: \"/nonexistent/wsgiproxy/k1\" cannot be read: no such file"), "{log}");
}

/// The Wasm filter has no file system: a file key is refused, the field named, with
/// what to use instead.
#[test]
fn the_wasm_filter_refuses_a_key_file() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let memory = tempfile::tempdir().unwrap();
    let path = dir.path().join("k1");
    std::fs::write(&path, OLD).unwrap();
    let secret = json!({"keys": [{"id": "k1", "file": path.to_str().unwrap()}]});
    let log = Envoy::start_refused(FILE, &overrides(&echo, secret, memory.path(), Loader::Wasm));
    assert!(log.contains("field `secret.keys[0].file`: keys cannot come from a file in the Wasm filter"), "{log}");
}

/// The `app` role signs with the first key of its file and follows it: after the
/// swap the backend sees signatures by the new key.
#[test]
fn the_app_role_signs_with_the_key_its_file_holds_now() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::new(dir.path(), "keys.json", &key_set(&[("k1", OLD)]));
    let config = json!({"role": "app", "href": "http://backend/", "secret": {"keys": [{"file": volume.path()}], "file_check_ms": 100}});
    let envoy = Envoy::start("envoy/app.yaml", &Overrides::default().cluster("backend", echo.port).plugin(config).loader(Loader::Native));
    let key_id = || envoy.get("/x", &[]).received().header("x-wsgiproxy-signature").unwrap().split(' ').next().unwrap().to_string();
    assert_eq!(key_id(), "k1");
    volume.update(&key_set(&[("k2", NEW), ("k1", OLD)]));
    time_until("the app signs with the new key", || key_id() == "k2");
    assert_eq!(envoy.stat("wsgiproxy.app.key_file_reloads"), 1);
}
