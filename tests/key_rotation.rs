//! A sender's key rotation end to end, in real Envoy (issue #28 item 4): a client
//! sends sustained load to a SENDER Envoy (the `app` role, RFC 9421, publishing its
//! keys with `publish_key_directory`), which signs and forwards to a RECEIVER Envoy
//! (the `middleware` role following the sender's published directory through a
//! cluster pointing at the sender's listener), which forwards to the echo backend.
//! Five clients send one request after another (three open a connection for each,
//! two keep theirs open). The sender rotates in three steps — ring [k1, k2] (k2 published, not signing),
//! [k2, k1] (signing with k2), [k2] (k1 gone) — and no request fails: every one is
//! answered 200 with the user the sender vouched for reaching the backend, and no
//! receiver refuses, retries or holds one. Afterwards a request signed with k1 is
//! refused by the receiver once its cache has dropped the key.
//!
//! How the sender rotates depends on the loader (both Envoys use the one chosen):
//! the native module follows a key file, rotated as Kubernetes rotates a mounted
//! Secret (a `..data` symlink swapped); the Wasm filter cannot read files, so its
//! listener is pushed (file-based LDS, an atomic rename): one sender's own
//! configuration, no receiver's. The receivers' fetches each take a connection of
//! their own: a kept-alive one stays on the filter chain that accepted it, which
//! after the push serves the old ring's directory (the bug this test found).
//!
//! Also: a receiver following a directory of ECDSA P-384 keys (published by a
//! sender's `app` role) and of RSA-PSS keys (served by `tests/apps/key_directory.py`)
//! verifies with them, on both loaders.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/lds.rs"]
mod lds_support;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lds_support::LdsEnvoy;
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use support::*;
use wsgiproxy_protocol::asymmetric::parse_key;
use wsgiproxy_protocol::rfc9421::{sign, Message};
use wsgiproxy_protocol::signature::{Algorithm, KeyRing};

/// The authority the sender forwards to (its `href`'s), which it signs.
const AUTHORITY: &str = "backend.test";
/// The authority the receiver fetches the sender's directory with.
const SENDER_AUTHORITY: &str = "edge.test";
const DIRECTORY_PATH: &str = "/.well-known/http-message-signatures-directory";

/// Key pairs OpenSSL made (`tests/apps/rfc9421_keys.py`), each with its `kid`.
struct Pair {
    id: String,
    private_jwk: Value,
    /// The private key as a ring of its own, for the test to sign with directly
    /// (none for RSA: the protocol crate signs RSA in the native module only).
    ring: Option<KeyRing>,
}

fn pairs(algorithm: &str, ids: &[&str]) -> Vec<Pair> {
    let made = openssl_key_pairs(algorithm, ids.len());
    let alg = Algorithm::from_name(algorithm).unwrap();
    ids.iter()
        .zip(made)
        .map(|(id, pair)| {
            let jwk = |field: &str| -> Value {
                let mut v: Value = serde_json::from_str(pair[field].as_str().unwrap()).unwrap();
                v["kid"] = json!(id);
                v
            };
            let private = parse_key(alg, pair["private_jwk"].as_str().unwrap()).ok();
            Pair {
                id: id.to_string(),
                private_jwk: jwk("private_jwk"),
                ring: private.map(|private| KeyRing::asymmetric(alg, vec![(id.to_string(), private)]).unwrap()),
            }
        })
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A GET of `/hello` signed by `ring` as a sender signs it (RFC 9421), straight to
/// the receiver: (status, `x-wsgiproxy-error`).
fn direct_verdict(port: u16, ring: &KeyRing) -> (u16, Option<String>) {
    static NONCES: AtomicU64 = AtomicU64::new(0);
    let fields: Vec<(String, Vec<u8>)> = Vec::new();
    let message = Message { method: b"GET", https: false, authority: AUTHORITY.as_bytes(), target: b"/hello", fields: &fields };
    let nonce = format!("direct{}-{}", std::process::id(), NONCES.fetch_add(1, Ordering::Relaxed));
    let s = sign(ring, &message, &[], now_secs(), &nonce).unwrap();
    let headers = [("Host", AUTHORITY), ("Signature-Input", s.signature_input.as_str()), ("Signature", s.signature.as_str())];
    let r = request(port, "GET", "/hello", &headers, b"");
    (r.status, r.header("x-wsgiproxy-error").map(str::to_string))
}

/// The receiver on `port`: the shipped middleware config, trusting only what the
/// directory at `directory_port` (its `authority`, its path) publishes, passing the
/// sender's `REMOTE_USER` on as `x-remote-user`.
fn receiver(echo: &Echo, port: u16, algorithm: &str, directory_port: u16, authority: &str) -> Envoy {
    let config = json!({
        "role": "middleware",
        "signature_format": "rfc9421",
        "algorithm": algorithm,
        "keys": {"REMOTE_USER": "x-remote-user"},
        "key_directories": [{"cluster": "key_directory", "authority": authority, "path": DIRECTORY_PATH,
                             "min_refresh_seconds": 1, "max_refresh_seconds": 2}],
        "on_untrusted": "reject",
    });
    let overrides = Overrides {
        edit_with: Some(Arc::new(move |doc: &mut Yaml| {
            let cluster: Yaml = serde_yaml::from_str(&format!(
                "name: key_directory
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: key_directory
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {directory_port}}}}}}}}}]}}]"
            ))
            .unwrap();
            doc["static_resources"]["clusters"].as_sequence_mut().unwrap().push(cluster);
        })),
        // Two workers: with the Wasm filter, one VM fetches and the other takes its answers.
        concurrency: Some(2),
        listen_port: Some(port),
        ..Overrides::default()
    }
    .cluster("app", echo.port)
    .plugin(config);
    Envoy::start("envoy/middleware.yaml", &overrides)
}

/// The sender's configuration, its keys given by `secret`.
fn sender_config(algorithm: &str, secret: Value) -> Value {
    json!({
        "role": "app", "href": format!("http://{AUTHORITY}/"), "signature_format": "rfc9421", "algorithm": algorithm,
        "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}],
        "secret": secret,
        "publish_key_directory": {"max_age_seconds": 1},
    })
}

/// The Wasm sender's ring, inline (the first key signs).
fn inline_secret(ring: &[&Pair]) -> Value {
    json!({"keys": ring.iter().map(|p| json!({"id": p.id, "value": p.private_jwk.to_string()})).collect::<Vec<_>>()})
}

/// A JWKS of private keys, as a key file holds them (the first key signs).
fn key_set(ring: &[&Pair]) -> String {
    json!({"keys": ring.iter().map(|p| p.private_jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A Secret volume as the kubelet writes it: `dir/NAME -> ..data/NAME`, `..data ->
/// ..VERSION`; a new version is a new directory and an atomic rename of `..data`.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    const NAME: &'static str = "keys.json";

    fn new(dir: &Path, content: &str) -> SecretVolume {
        let mut volume = SecretVolume { dir: dir.to_path_buf(), version: 0 };
        volume.update(content);
        std::os::unix::fs::symlink(format!("..data/{}", Self::NAME), dir.join(Self::NAME)).unwrap();
        volume
    }

    fn path(&self) -> String {
        self.dir.join(Self::NAME).to_str().unwrap().to_string()
    }

    fn update(&mut self, content: &str) {
        let old = format!("..2026_12_07_{:02}", self.version);
        self.version += 1;
        let new = format!("..2026_12_07_{:02}", self.version);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        std::fs::write(self.dir.join(&new).join(Self::NAME), content).unwrap();
        std::os::unix::fs::symlink(&new, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }
}

/// The Wasm sender: the shipped `app` config, its listener pushed by LDS
/// (`support/lds.rs`).
fn start_lds_sender(port: u16, receiver_port: u16, plugin: Value) -> LdsEnvoy {
    let overrides = Overrides::default().cluster("backend", receiver_port).plugin(plugin);
    // As docs/keys.md tells a sender rotating by push: the old filter chain's busy
    // connections are told to close at their next answer, so none goes on signing
    // with the old ring once the push is done (gradual, the default, leaves some of
    // them on it for most of the drain time).
    LdsEnvoy::start("envoy/app.yaml", port, &overrides, "key-rotation", &["--drain-strategy", "immediate"])
}

/// The sender, and how it rotates.
enum Sender {
    /// Native module: keys from a file, rotated by a symlink swap.
    File { envoy: Envoy, volume: SecretVolume, _dir: tempfile::TempDir },
    /// Wasm filter: keys inline, rotated by an LDS push.
    Lds { sender: LdsEnvoy, algorithm: String },
}

impl Sender {
    fn start(algorithm: &str, port: u16, receiver_port: u16, ring: &[&Pair]) -> Sender {
        match Loader::from_env() {
            Loader::Native => {
                let dir = tempfile::tempdir().unwrap();
                let volume = SecretVolume::new(dir.path(), &key_set(ring));
                let secret = json!({"keys": [{"file": volume.path()}], "file_check_ms": 100});
                let overrides = Overrides { listen_port: Some(port), ..Overrides::default() }
                    .cluster("backend", receiver_port)
                    .plugin(sender_config(algorithm, secret));
                Sender::File { envoy: Envoy::start("envoy/app.yaml", &overrides), volume, _dir: dir }
            }
            Loader::Wasm => Sender::Lds {
                sender: start_lds_sender(port, receiver_port, sender_config(algorithm, inline_secret(ring))),
                algorithm: algorithm.to_string(),
            },
        }
    }

    fn envoy(&self) -> &Envoy {
        match self {
            Sender::File { envoy, .. } => envoy,
            Sender::Lds { sender, .. } => &sender.envoy,
        }
    }

    /// The sender's ring becomes `ring`; returns once its directory lists it (so it
    /// signs with `ring[0]` from then on).
    fn rotate(&mut self, ring: &[&Pair]) {
        match self {
            Sender::File { volume, .. } => volume.update(&key_set(ring)),
            Sender::Lds { sender, algorithm } => sender.push("app", &sender_config(algorithm, inline_secret(ring))),
        }
        let want: Vec<&str> = ring.iter().map(|p| p.id.as_str()).collect();
        wait_until("the sender's directory lists its new ring", Duration::from_secs(10), || self.published() == want);
    }

    /// The key ids the sender's directory lists, the signing key first.
    fn published(&self) -> Vec<String> {
        let r = self.envoy().get(DIRECTORY_PATH, &[("Host", SENDER_AUTHORITY)]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
    }
}

/// Clients sending requests one after another through the sender, each as another
/// user; what went wrong, and how many were sent in each step of the rotation.
struct Load {
    stop: Arc<AtomicBool>,
    step: Arc<AtomicU64>,
    sent: Arc<Mutex<BTreeMap<u64, u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients, a connection per request, and `kept_alive` more, each on a
    /// connection kept open (opened again when Envoy answers `Connection: close`).
    fn start(port: u16, clients: usize, kept_alive: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let step = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients + kept_alive)
            .map(|client| {
                let (stop, step, sent, failures) = (stop.clone(), step.clone(), sent.clone(), failures.clone());
                let keep_alive = client >= clients;
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    let mut connection: Option<KeptAlive> = None;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let user = format!("user-{client}-{n}");
                        let at = step.load(Ordering::Relaxed);
                        let target = format!("/hello?n={n}");
                        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            if keep_alive {
                                let raw = format!("GET {target} HTTP/1.1\r\nHost: {SENDER_AUTHORITY}\r\nX-Auth-User: {user}\r\n\r\n");
                                connection.get_or_insert_with(|| KeptAlive::open(port)).send(raw.as_bytes())
                            } else {
                                request(port, "GET", &target, &[("Host", SENDER_AUTHORITY), ("X-Auth-User", &user)], b"")
                            }
                        }));
                        *sent.lock().unwrap().entry(at).or_default() += 1;
                        let Ok(r) = answer else {
                            connection = None;
                            failures.lock().unwrap().push(format!("step {at}: no answer for {user} (kept alive: {keep_alive})"));
                            continue;
                        };
                        if r.header("connection") == Some("close") {
                            connection = None;
                        }
                        let remote_user = if r.status == 200 { r.received().header("x-remote-user") } else { None };
                        if r.status != 200 || remote_user.as_deref() != Some(user.as_str()) {
                            failures.lock().unwrap().push(format!(
                                "step {at}: {} {:?}, the backend saw x-remote-user {remote_user:?} for {user} (kept alive: {keep_alive})",
                                r.status,
                                r.header("x-wsgiproxy-error")
                            ));
                        }
                    }
                })
            })
            .collect();
        Load { stop, step, sent, failures, threads }
    }

    fn stop(self) -> (BTreeMap<u64, u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let sent = self.sent.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (sent, failures)
    }
}

#[test]
fn a_sender_rotates_its_published_key_under_load_without_one_failed_request() {
    let began = Instant::now();
    let k = pairs("ed25519", &["k1", "k2"]);
    let (k1, k2) = (&k[0], &k[1]);
    let echo = Echo::start();
    let (sender_port, receiver_port) = (free_port(), free_port());
    // The sender first, so that the receiver's first fetch of its directory is answered.
    let mut sender = Sender::start("ed25519", sender_port, receiver_port, &[k1]);
    let mw = receiver(&echo, receiver_port, "ed25519", sender_port, SENDER_AUTHORITY);
    assert_eq!(mw.loader, sender.envoy().loader);
    wait_until_signatures_are_trusted("");
    let first = sender.envoy().get("/hello", &[("Host", SENDER_AUTHORITY), ("X-Auth-User", "first")]);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.received().header("x-remote-user").as_deref(), Some("first"));

    let load = Load::start(sender_port, 3, 2);
    std::thread::sleep(Duration::from_secs(1));
    // 1. k2 published beside k1, which still signs.
    load.step.store(1, Ordering::Relaxed);
    sender.rotate(&[k1, k2]);
    // Receivers take it within the directory's max-age (1 s), their refresh at most
    // max_refresh_seconds (2 s) apart.
    std::thread::sleep(Duration::from_secs(3));
    // 2. The sender signs with k2.
    load.step.store(2, Ordering::Relaxed);
    sender.rotate(&[k2, k1]);
    std::thread::sleep(Duration::from_secs(2));
    // 3. k1 leaves: nothing signed with it is on its way any more.
    load.step.store(3, Ordering::Relaxed);
    sender.rotate(&[k2]);
    let removed = Instant::now();
    let waits = mw.stat("wsgiproxy.middleware.directory_waits");
    // The receiver drops k1 at its next fetch: a request the test signs with k1 is
    // refused (no refetch brings it back), while the load goes on with k2.
    let mut k1_verified = 0;
    wait_until("the receiver refuses k1", Duration::from_secs(8), || {
        let refused = direct_verdict(receiver_port, k1.ring.as_ref().unwrap()).0 != 200;
        k1_verified += u64::from(!refused);
        refused
    });
    let dropped_after = removed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (sent, failures) = load.stop();
    let total: u64 = sent.values().sum();
    eprintln!(
        "rotation through the sender ({:?}): {total} requests by step {sent:?}, {} failed; k1 refused {dropped_after:?} after it left; {:?} in all",
        mw.loader,
        failures.len(),
        began.elapsed()
    );
    assert!(failures.is_empty(), "{} of {total} requests failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    for step in 0..=3 {
        assert!(sent.get(&step).copied().unwrap_or(0) >= 20, "too little load in step {step}: {sent:?}");
    }
    assert_eq!(direct_verdict(receiver_port, k1.ring.as_ref().unwrap()), (403, Some("signature_key_unknown".into())));
    assert_eq!(direct_verdict(receiver_port, k2.ring.as_ref().unwrap()), (200, None));
    // Nothing was hidden by a retry, a refetch or a failed fetch: the receiver verified
    // every request of the load (and the first, and the test's k2 request) at once.
    assert_eq!(sender.envoy().stats("upstream_rq_retry").values().sum::<u64>(), 0);
    assert_eq!(mw.stat("wsgiproxy.middleware.verified"), total + 2 + k1_verified);
    assert_eq!(waits, 0, "a request of the load waited for a refetch: the receiver did not have the key");
    assert_eq!(mw.stat("wsgiproxy.middleware.directory_fetch_failures"), 0);
    assert!(mw.stat("wsgiproxy.middleware.directory_fetches") >= 4);
}

/// A sender signing with ECDSA P-384 (either loader signs with it) and, on the native
/// module, with RSA-PSS (the Wasm filter does not sign with RSA) publishes its key; a
/// receiver following its directory verifies what it signs, and nothing else.
#[test]
fn a_receiver_follows_a_published_directory_of_ecdsa_p384_or_rsa_pss_keys() {
    let mut algorithms = vec!["ecdsa-p384-sha384"];
    if Loader::from_env() == Loader::Native {
        algorithms.push("rsa-pss-sha512");
    }
    for algorithm in algorithms {
        let k = pairs(algorithm, &["published", "stranger"]);
        let echo = Echo::start();
        let (sender_port, receiver_port) = (free_port(), free_port());
        let sender = Sender::start(algorithm, sender_port, receiver_port, &[&k[0]]);
        let mw = receiver(&echo, receiver_port, algorithm, sender_port, SENDER_AUTHORITY);
        wait_until_signatures_are_trusted("");
        assert_eq!(sender.published(), ["published"]);
        for user in ["alice", "bob"] {
            let r = sender.envoy().get("/hello", &[("Host", SENDER_AUTHORITY), ("X-Auth-User", user)]);
            assert_eq!(r.status, 200, "{algorithm}: {}", r.text());
            assert_eq!(r.received().header("x-remote-user").as_deref(), Some(user));
        }
        let mut verified = 2;
        // The test signs with the protocol crate, which signs RSA in the native module only.
        if let (Some(published), Some(stranger)) = (&k[0].ring, &k[1].ring) {
            assert_eq!(direct_verdict(receiver_port, published), (200, None));
            assert_eq!(direct_verdict(receiver_port, stranger), (403, Some("signature_key_unknown".into())));
            verified += 1;
        }
        assert_eq!(mw.stat("wsgiproxy.middleware.verified"), verified, "{algorithm}");
        assert_eq!(mw.stat("wsgiproxy.middleware.directory_fetch_failures"), 0, "{algorithm}");
    }
}

/// RSA-PSS keys (`rsa-pss-sha512`) from a directory another server publishes
/// (`tests/apps/key_directory.py`), signatures made by PyPI's http-message-signatures
/// (signing RSA is the native module's only): both loaders verify with them, a
/// 2048-bit and a 3072-bit key, and refuse a key the directory does not list.
#[test]
fn a_receiver_follows_a_directory_of_rsa_pss_keys() {
    let made = |bits: &str| -> Value {
        let out = Command::new(python())
            .arg(repo_root().join("tests/apps/rfc9421_keys.py"))
            .args(["rsa-pss-sha512", "1", bits])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap().remove(0)
    };
    let (rsa_2048, rsa_3072, stranger) = (made("2048"), made("3072"), made("2048"));
    let public = |pair: &Value, kid: &str| {
        let mut jwk: Value = serde_json::from_str(pair["public_jwk"].as_str().unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk
    };

    let echo = Echo::start();
    let directory_port = free_port();
    let child = Command::new(python())
        .arg(repo_root().join("tests/apps/key_directory.py"))
        .arg(directory_port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _directory = Proc::adopt(child);
    assert!(wait_for_port(directory_port, Duration::from_secs(20)), "the key directory did not start");
    let publish =
        json!({"keys": [public(&rsa_2048, "rsa-2048"), public(&rsa_3072, "rsa-3072")], "cache_control": "max-age=60", "mode": "ok"});
    let r = request(directory_port, "POST", "/control", &[("Content-Type", "application/json")], publish.to_string().as_bytes());
    assert_eq!(r.status, 200);

    let receiver_port = free_port();
    let mw = receiver(&echo, receiver_port, "rsa-pss-sha512", directory_port, "keys.test");
    wait_until_signatures_are_trusted("");
    let now = now_secs();
    let entry = |kid: &str, pair: &Value, user: &str| {
        json!({"key_id": kid, "key": pair["private_pem"], "algorithm": "rsa-pss-sha512", "method": "GET",
               "url": "http://test.local/hello", "headers": [["x-wsgiproxy-str-0", format!("REMOTE_USER {user}")]],
               "covered": ["@method", "@authority", "@path", "@query", "x-wsgiproxy-str-0"],
               "created": now, "nonce": format!("rsa-{kid}-{user}"), "label": "wsgiproxy"})
    };
    let entries = [entry("rsa-2048", &rsa_2048, "alice"), entry("rsa-3072", &rsa_3072, "bob"), entry("rsa-stranger", &stranger, "mallory")];
    let signatures = library_signatures(&entries);
    let send = |i: usize, user: &str| {
        let s = &signatures[i];
        let claim = format!("REMOTE_USER {user}");
        let headers = [("x-wsgiproxy-str-0", claim.as_str()), ("Signature-Input", s.0.as_str()), ("Signature", s.1.as_str())];
        request(receiver_port, "GET", "/hello", &headers, b"")
    };
    for (i, user) in [(0, "alice"), (1, "bob")] {
        let r = send(i, user);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.received().header("x-remote-user").as_deref(), Some(user));
    }
    let r = send(2, "mallory");
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_key_unknown")));
    assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 2);
    assert_eq!(mw.stat("wsgiproxy.middleware.directory_fetch_failures"), 0);
}

/// The caution of a rotation by configuration push (docs/keys.md, Rotation): a client
/// connection kept open, idle, across the push stays on the old filter chain, which
/// signs with the old ring's first key until Envoy drains it. Removing the old key
/// before the sender's drain time is over refuses its next request. With the native
/// module's key file the ring is the process's: the same connection signs with the
/// new key at once.
#[test]
fn a_connection_kept_open_across_a_push_signs_with_the_old_ring_until_drained() {
    let k = pairs("ed25519", &["k1", "k2"]);
    let (k1, k2) = (&k[0], &k[1]);
    let echo = Echo::start();
    let (sender_port, receiver_port) = (free_port(), free_port());
    let mut sender = Sender::start("ed25519", sender_port, receiver_port, &[k1, k2]);
    let _mw = receiver(&echo, receiver_port, "ed25519", sender_port, SENDER_AUTHORITY);
    wait_until_signatures_are_trusted("");
    let raw = format!("GET /hello HTTP/1.1\r\nHost: {SENDER_AUTHORITY}\r\nX-Auth-User: idle\r\n\r\n");
    let mut idle = KeptAlive::open(sender_port);
    assert_eq!(idle.send(raw.as_bytes()).status, 200);
    sender.rotate(&[k2, k1]);
    sender.rotate(&[k2]);
    wait_until("the receiver refuses k1", Duration::from_secs(8), || direct_verdict(receiver_port, k1.ring.as_ref().unwrap()).0 != 200);
    let r = idle.send(raw.as_bytes());
    let fresh = sender.envoy().get("/hello", &[("Host", SENDER_AUTHORITY), ("X-Auth-User", "fresh")]);
    assert_eq!(fresh.status, 200, "a new connection is signed with k2");
    match sender.envoy().loader {
        Loader::Wasm => assert_eq!(
            (r.status, r.header("x-wsgiproxy-error")),
            (403, Some("signature_key_unknown")),
            "the old filter chain signed with k1"
        ),
        Loader::Native => assert_eq!(r.status, 200, "the process's ring signs with k2: {}", r.text()),
    }
}
