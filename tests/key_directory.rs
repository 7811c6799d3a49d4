//! The `middleware` role following key directories (`key_directories`) in real Envoy,
//! against a real HTTP server publishing the keys (`tests/apps/key_directory.py`):
//! a sender's rotation under sustained load without one failed request, a flood of
//! unknown key ids fetching the directory once per interval, a directory that fails
//! in every way keeping its last keys for a bounded time and then failing closed,
//! removed keys, and keys of the wrong algorithm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;
use wsgiproxy_protocol::asymmetric::parse_key;
use wsgiproxy_protocol::rfc9421::{sign, Message};
use wsgiproxy_protocol::signature::{Algorithm, KeyRing};

const AUTHORITY: &str = "backend.test";

/// A sender's key: its id, its private half (to sign) and its public JWK (to publish).
#[derive(Clone)]
struct Key {
    id: String,
    ring: Arc<KeyRing>,
    public: Value,
}

/// Key pairs OpenSSL made (`tests/apps/rfc9421_keys.py`).
fn keys(algorithm: &str, ids: &[&str]) -> Vec<Key> {
    let pairs = openssl_key_pairs(algorithm, ids.len());
    let alg = Algorithm::from_name(algorithm).unwrap();
    ids.iter()
        .zip(pairs)
        .map(|(id, pair)| {
            let private = parse_key(alg, pair["private_jwk"].as_str().unwrap()).unwrap();
            let mut public: Value = serde_json::from_str(pair["public_jwk"].as_str().unwrap()).unwrap();
            public["kid"] = json!(id);
            Key { id: id.to_string(), ring: Arc::new(KeyRing::asymmetric(alg, vec![(id.to_string(), private)]).unwrap()), public }
        })
        .collect()
}

/// The directory server, and what it serves.
struct Directory {
    port: u16,
    _proc: Proc,
}

impl Directory {
    fn start() -> Directory {
        let port = free_port();
        let child = Command::new(python())
            .arg(repo_root().join("tests/apps/key_directory.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let proc = Proc::adopt(child);
        assert!(wait_for_port(port, Duration::from_secs(20)), "the key directory did not start");
        Directory { port, _proc: proc }
    }

    fn set(&self, change: Value) {
        let body = change.to_string();
        let r = request(self.port, "POST", "/control", &[("Content-Type", "application/json")], body.as_bytes());
        assert_eq!(r.status, 200);
    }

    fn publish(&self, keys: &[&Key]) {
        self.set(json!({"keys": keys.iter().map(|k| k.public.clone()).collect::<Vec<_>>(), "mode": "ok"}));
    }

    fn fetches(&self) -> u64 {
        request(self.port, "GET", "/fetches", &[], b"").text().trim().parse().unwrap()
    }
}

/// The receiver: the shipped middleware config, verifying with the directory's keys
/// alone, its cluster added.
fn receiver(echo: &Echo, directory: &Directory, algorithm: &str, settings: Value) -> Envoy {
    receiver_of(echo, directory.port, algorithm, settings, 1)
}

/// The receiver with `workers` worker threads, its directory at `port` on 127.0.0.1.
fn receiver_of(echo: &Echo, port: u16, algorithm: &str, settings: Value, workers: u32) -> Envoy {
    Envoy::start("envoy/middleware.yaml", &receiver_overrides(echo, port, algorithm, settings, workers))
}

fn receiver_overrides(echo: &Echo, port: u16, algorithm: &str, settings: Value, workers: u32) -> Overrides {
    let mut entry = json!({"cluster": "key_directory", "authority": "keys.test"});
    for (k, v) in settings.as_object().unwrap() {
        entry[k] = v.clone();
    }
    let config = json!({
        "role": "middleware",
        "signature_format": "rfc9421",
        "algorithm": algorithm,
        "key_directories": [entry],
        "on_untrusted": "reject",
    });
    Overrides {
        edit_with: Some(Arc::new(move |doc: &mut serde_yaml::Value| {
            let cluster: serde_yaml::Value = serde_yaml::from_str(&format!(
                "name: key_directory
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: key_directory
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]"
            ))
            .unwrap();
            doc["static_resources"]["clusters"].as_sequence_mut().unwrap().push(cluster);
        })),
        concurrency: Some(workers),
        ..Overrides::default()
    }
    .cluster("app", echo.port)
    .plugin(config)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

static NONCES: AtomicU64 = AtomicU64::new(0);

/// The headers of a GET signed by `key` (RFC 9421, as a sender signs it).
fn signed(key: &Key, path: &str) -> Vec<(String, String)> {
    signed_as(key, "GET", path)
}

fn signed_as(key: &Key, method: &str, path: &str) -> Vec<(String, String)> {
    let fields: Vec<(String, Vec<u8>)> = Vec::new();
    let message =
        Message { method: method.as_bytes(), https: false, authority: AUTHORITY.as_bytes(), target: path.as_bytes(), fields: &fields };
    let nonce = format!("n{}-{}", std::process::id(), NONCES.fetch_add(1, Ordering::Relaxed));
    let s = sign(&key.ring, &message, &[], now_secs(), &nonce).unwrap();
    vec![("Host".into(), AUTHORITY.into()), ("Signature-Input".into(), s.signature_input), ("Signature".into(), s.signature)]
}

fn send(envoy: &Envoy, headers: &[(String, String)]) -> Response {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    envoy.get("/hello", &headers)
}

/// (status, x-wsgiproxy-error) of a GET signed by `key`.
fn verdict(envoy: &Envoy, key: &Key) -> (u16, Option<String>) {
    let r = send(envoy, &signed(key, "/hello"));
    (r.status, r.header("x-wsgiproxy-error").map(str::to_string))
}

#[test]
fn a_sender_rotates_under_sustained_load_without_one_failed_request() {
    let k = keys("ed25519", &["k-old", "k-new"]);
    let (old, new) = (&k[0], &k[1]);
    let echo = Echo::start();
    let directory = Directory::start();
    directory.set(json!({"cache_control": "max-age=1"}));
    directory.publish(&[old]);
    // Two workers: with the Wasm filter, one VM fetches and the others take its answers.
    let mw = receiver_of(&echo, directory.port, "ed25519", json!({"min_refresh_seconds": 1, "max_refresh_seconds": 2}), 2);
    wait_until_signatures_are_trusted("");
    assert_eq!(verdict(&mw, old), (200, None));

    // Four clients, one request after another, signing with the sender's current key.
    let signing = Arc::new(Mutex::new(old.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (signing, stop, failures, sent, port) = (signing.clone(), stop.clone(), failures.clone(), sent.clone(), mw.port);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let key = signing.lock().unwrap().clone();
                    let headers = signed(&key, "/hello");
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    let r = request(port, "GET", "/hello", &headers, b"");
                    sent.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 {
                        failures.lock().unwrap().push((key.id.clone(), r.status, r.header("x-wsgiproxy-error").map(str::to_string)));
                    }
                }
            })
        })
        .collect();
    // The rotation: the new key is published; once receivers have had time to fetch it
    // (max-age 1 s, a refresh at most 2 s), the sender signs with it; then the old key
    // leaves the directory.
    std::thread::sleep(Duration::from_secs(1));
    directory.publish(&[old, new]);
    std::thread::sleep(Duration::from_secs(3));
    *signing.lock().unwrap() = new.clone();
    std::thread::sleep(Duration::from_secs(1));
    directory.publish(&[new]);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("rotation under load: {sent} requests, {} failed", failures.len());
    assert!(sent > 200, "too little load: {sent}");
    assert!(failures.is_empty(), "{} of {sent} requests failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    // The old key left the directory: it no longer verifies.
    assert_eq!(verdict(&mw, old), (403, Some("signature_key_unknown".into())));
    assert_eq!(verdict(&mw, new), (200, None));
    assert!(mw.stat("wsgiproxy.middleware.directory_fetches") >= 3);
    assert_eq!(mw.stat("wsgiproxy.middleware.directory_fetch_failures"), 0);
}

/// A hot restart of the receiver under load: the new process follows the directory
/// from its start (its first requests wait for its first fetch), and no request fails.
/// The native module's replay memory outlives the process (one file for both epochs);
/// the Wasm filter's does not, so there the new process refuses what is dated before
/// it began (425, the restart rule, which the shipped senders retry): those are
/// counted apart, every other answer must be 200.
#[test]
fn a_receiver_hot_restarted_under_load_fails_no_request() {
    let k = keys("ed25519", &["k1"]);
    let key = k[0].clone();
    let echo = Echo::start();
    let directory = Directory::start();
    directory.publish(&[&key]);
    let memory = tempfile::tempdir().unwrap();
    let port = free_port();
    let base_id = 41_000 + u32::from(port);
    let native = Loader::from_env() == Loader::Native;
    let epoch = |epoch| Overrides {
        listen_port: Some(port),
        hot_restart: Some(HotRestart { base_id, epoch }),
        memory_survives: epoch > 0 && native,
        ..receiver_overrides(&echo, directory.port, "ed25519", json!({}), 2)
            .env("WSGIPROXY_REPLAY_MEMORY_DIR", memory.path().to_str().unwrap())
    };
    let epoch0 = Envoy::start("envoy/middleware.yaml", &epoch(0));
    wait_until_signatures_are_trusted("");
    assert_eq!(verdict(&epoch0, &key), (200, None));

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let (sent, restart_rule) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (key, stop, failures, sent, restart_rule) =
                (key.clone(), stop.clone(), failures.clone(), sent.clone(), restart_rule.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let headers = signed(&key, "/hello");
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    let r = request(port, "GET", "/hello", &headers, b"");
                    sent.fetch_add(1, Ordering::Relaxed);
                    match r.status {
                        200 => {}
                        425 if !native => {
                            restart_rule.fetch_add(1, Ordering::Relaxed);
                        }
                        status => failures.lock().unwrap().push((status, r.header("x-wsgiproxy-error").map(str::to_string))),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let fetches_before = directory.fetches();
    let epoch1 = epoch0.hot_restart("envoy/middleware.yaml", &epoch(1));
    std::thread::sleep(Duration::from_secs(if native { 2 } else { 5 }));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (failures, sent) = (failures.lock().unwrap().clone(), sent.load(Ordering::Relaxed));
    eprintln!(
        "hot restart under load: {sent} requests, {} failed, {} refused 425 by the Wasm restart rule",
        failures.len(),
        restart_rule.load(Ordering::Relaxed)
    );
    assert!(sent > 100, "too little load: {sent}");
    assert!(failures.is_empty(), "{} of {sent} requests failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(directory.fetches() > fetches_before, "the new process fetched the directory");
    assert_eq!(verdict(&epoch1, &key), (200, None));
    assert_eq!(epoch1.stat("wsgiproxy.middleware.directory_fetch_failures"), 0);
}

#[test]
fn a_key_signing_before_its_receivers_fetched_it_waits_for_one_refetch() {
    let k = keys("ed25519", &["k-1", "k-2", "k-3"]);
    let echo = Echo::start();
    let directory = Directory::start();
    // Fresh for an hour: only an unknown key id makes the receiver look again.
    directory.set(json!({"cache_control": "max-age=3600"}));
    directory.publish(&[&k[0]]);
    // Two workers: a request in any of them asks for the refetch and is woken by its answer.
    let mw = receiver_of(&echo, directory.port, "ed25519", json!({"unknown_key_interval_seconds": 2}), 2);
    wait_until_signatures_are_trusted("");
    assert_eq!(verdict(&mw, &k[0]), (200, None));
    let before = directory.fetches();
    // The sender publishes k-2 and signs with it at once: the first request waits for
    // the refetch it causes, and passes.
    directory.publish(&[&k[0], &k[1]]);
    std::thread::sleep(Duration::from_secs(2));
    let began = Instant::now();
    assert_eq!(verdict(&mw, &k[1]), (200, None));
    assert!(began.elapsed() < Duration::from_secs(3), "waited {:?}", began.elapsed());
    assert_eq!(directory.fetches() - before, 1);
    assert_eq!(mw.stat("wsgiproxy.middleware.directory_refetches"), 1);
    // A request with a body is held whole, and delivered whole.
    directory.publish(&[&k[0], &k[1], &k[2]]);
    std::thread::sleep(Duration::from_secs(2));
    let headers = signed_as(&k[2], "POST", "/upload");
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let r = request(mw.port, "POST", "/upload", &headers, b"the body, held while the directory is fetched");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.received().body(), "the body, held while the directory is fetched");
    assert_eq!(mw.stat("wsgiproxy.middleware.directory_refetches"), 2);
}

#[test]
fn an_unknown_key_id_flood_fetches_the_directory_once_per_interval() {
    let k = keys("ed25519", &["k-1", "k-unknown"]);
    let echo = Echo::start();
    let directory = Directory::start();
    directory.set(json!({"cache_control": "max-age=3600"}));
    directory.publish(&[&k[0]]);
    // Two workers: one Envoy follows the directory once (the Wasm filter's VMs through
    // one lease in shared data, the native module in its process).
    let mw = receiver_of(&echo, directory.port, "ed25519", json!({"unknown_key_interval_seconds": 3}), 2);
    wait_until_signatures_are_trusted("");
    assert_eq!(verdict(&mw, &k[0]), (200, None));
    let before = directory.fetches();
    assert_eq!(before, 1, "fetched once at start, for every worker");
    // 8 clients for 2 s (less than the interval), every request naming a key id no
    // directory publishes.
    let began = Instant::now();
    let answers: Vec<Vec<(u16, Option<String>)>> = (0..8)
        .map(|_| {
            let (key, port) = (k[1].clone(), mw.port);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while began.elapsed() < Duration::from_secs(2) {
                    let headers = signed(&key, "/hello");
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    let r = request(port, "GET", "/hello", &headers, b"");
                    seen.push((r.status, r.header("x-wsgiproxy-error").map(str::to_string)));
                }
                seen
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let all: Vec<_> = answers.into_iter().flatten().collect();
    let fetched = directory.fetches() - before;
    eprintln!("unknown key flood: {} requests, {fetched} directory fetches", all.len());
    assert!(all.len() > 100, "{}", all.len());
    assert!(all.iter().all(|a| *a == (403, Some("signature_key_unknown".to_string()))), "{:?}", all.iter().find(|a| a.0 != 403));
    assert_eq!(fetched, 1, "one refetch for {} requests naming an unknown key", all.len());
    // Known keys went on verifying meanwhile, with no fetch on their way.
    assert_eq!(verdict(&mw, &k[0]), (200, None));
    assert_eq!(directory.fetches() - before, 1);
}

#[test]
fn a_failing_directory_keeps_its_last_keys_for_max_stale_then_fails_closed() {
    let k = keys("ed25519", &["k-1"]);
    let echo = Echo::start();
    let directory = Directory::start();
    directory.set(json!({"cache_control": "max-age=1"}));
    directory.publish(&[&k[0]]);
    let mw = receiver(
        &echo,
        &directory,
        "ed25519",
        json!({"min_refresh_seconds": 1, "max_refresh_seconds": 1, "max_stale_seconds": 8, "timeout_ms": 500, "max_bytes": 65536}),
    );
    wait_until_signatures_are_trusted("");
    assert_eq!(verdict(&mw, &k[0]), (200, None));
    let failing_since = Instant::now();
    // Down, 5xx, slow past the timeout, garbage, a body past max_bytes: each for about
    // a second, fetched about once a second; the last good key verifies throughout.
    for mode in [
        json!({"mode": "reset"}),
        json!({"mode": "error"}),
        json!({"mode": "slow", "delay": 2}),
        json!({"mode": "garbage"}),
        json!({"mode": "huge"}),
    ] {
        directory.set(mode.clone());
        let until = Instant::now() + Duration::from_millis(1300);
        while Instant::now() < until {
            assert_eq!(verdict(&mw, &k[0]), (200, None), "while the directory is {mode}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let failures = mw.stat("wsgiproxy.middleware.directory_fetch_failures");
    assert!(failures >= 4, "{failures}");
    // Past max_stale (8 s after the keys' 1 s of freshness): dropped, and nothing
    // verifies: 503 until the directory answers again.
    let stale_end = Duration::from_secs(10);
    std::thread::sleep(stale_end.saturating_sub(failing_since.elapsed()));
    let r = verdict(&mw, &k[0]);
    assert_eq!(r, (503, Some("key_directory_unavailable".into())));
    assert_eq!(mw.stat("wsgiproxy.middleware.directory_keys_dropped"), 1);
    directory.publish(&[&k[0]]);
    wait_until("the directory answers again", Duration::from_secs(10), || verdict(&mw, &k[0]) == (200, None));
    let mut mw = mw;
    let log = mw.stop_and_log();
    // The failure streak is logged once, not once per fetch; its end once (at info
    // level, which the harness shows for the Wasm filter only).
    let lines = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines("key directory 0 (cluster key_directory"), 1, "{log}");
    if mw.loader == Loader::Wasm {
        assert_eq!(lines("answers again: "), 1, "{log}");
    }
}

#[test]
fn a_directory_of_another_algorithm_verifies_nothing_and_alg_must_agree() {
    let ed = keys("ed25519", &["k-ed"]);
    let ec = keys("ecdsa-p256-sha256", &["k-ec"]);
    let echo = Echo::start();
    let directory = Directory::start();
    directory.set(json!({"cache_control": "max-age=3600"}));
    // An ECDSA key published to an Ed25519 receiver: the set is refused whole.
    directory.publish(&[&ed[0], &ec[0]]);
    let mw = receiver(&echo, &directory, "ed25519", json!({"unknown_key_interval_seconds": 1}));
    wait_until_signatures_are_trusted("");
    assert_eq!(verdict(&mw, &ed[0]), (503, Some("key_directory_unavailable".into())));
    assert_eq!(verdict(&mw, &ec[0]), (503, Some("key_directory_unavailable".into())));
    assert!(mw.stat("wsgiproxy.middleware.directory_fetch_failures") >= 1);
    // The Ed25519 key alone: it verifies; a signature by it that says alg="ecdsa-p256-sha256"
    // does not, nor one by the P-256 key under the Ed25519 key's id.
    directory.publish(&[&ed[0]]);
    std::thread::sleep(Duration::from_millis(1100));
    wait_until("the directory is fetched again", Duration::from_secs(10), || verdict(&mw, &ed[0]) == (200, None));
    let lying = signed(&ed[0], "/hello")
        .into_iter()
        .map(|(n, v)| if n == "Signature-Input" { (n, v.replace("alg=\"ed25519\"", "alg=\"ecdsa-p256-sha256\"")) } else { (n, v) })
        .collect::<Vec<_>>();
    let r = send(&mw, &lying);
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_bad")));
    // A P-256 key signing under the Ed25519 key's id: refused whether its alg says
    // so or is left out (the receiver's algorithm decides how it is checked).
    let impostor = &keys("ecdsa-p256-sha256", &["k-ed"])[0];
    for strip_alg in [false, true] {
        let headers = signed(impostor, "/hello")
            .into_iter()
            .map(|(n, v)| if n == "Signature-Input" && strip_alg { (n, v.replace(";alg=\"ecdsa-p256-sha256\"", "")) } else { (n, v) })
            .collect::<Vec<_>>();
        let r = send(&mw, &headers);
        assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_bad")), "alg left out: {strip_alg}");
    }
}

#[test]
fn the_app_role_publishes_its_keys_and_a_receiver_follows_them() {
    let pairs = Command::new(python()).arg(repo_root().join("tests/apps/rfc9421_keys.py")).args(["ed25519", "2"]).output().unwrap();
    let pairs: Vec<Value> = serde_json::from_slice(&pairs.stdout).unwrap();
    let echo = Echo::start();
    let edge_port = free_port();
    // The receiver follows the sender's own listener.
    let mw = receiver_of(&echo, edge_port, "ed25519", json!({"min_refresh_seconds": 1, "authority": "edge.test"}), 1);
    // The sender signs with k-now and publishes k-next too, which it is rotating in.
    let sender = json!({
        "role": "app", "href": format!("http://{AUTHORITY}/"), "signature_format": "rfc9421", "algorithm": "ed25519",
        "secret": {"keys": [{"id": "k-now", "value": pairs[0]["private_pem"]}, {"id": "k-next", "value": pairs[1]["private_jwk"]}]},
        "publish_key_directory": {"max_age_seconds": 60},
    });
    let edge = Envoy::start(
        "envoy/app.yaml",
        &Overrides { listen_port: Some(edge_port), ..Overrides::default() }.cluster("backend", mw.port).plugin(sender),
    );
    let directory = edge.get("/.well-known/http-message-signatures-directory?x=1", &[("Host", "edge.test")]);
    assert_eq!(directory.status, 200, "{}", directory.text());
    assert_eq!(directory.header("content-type"), Some("application/http-message-signatures-directory+json"));
    assert_eq!(directory.header("cache-control"), Some("max-age=60"));
    assert_eq!(directory.header("x-wsgiproxy-error"), None);
    let set = directory.json();
    let ids: Vec<&str> = set["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(ids, ["k-now", "k-next"]);
    // The public halves only: what the key generator wrote as public JWKs.
    for (key, pair) in set["keys"].as_array().unwrap().iter().zip(&pairs) {
        let public: Value = serde_json::from_str(pair["public_jwk"].as_str().unwrap()).unwrap();
        assert_eq!(key["x"], public["x"]);
        assert!(key.get("d").is_none());
    }
    wait_until_signatures_are_trusted("");
    wait_until("the receiver follows the sender's directory", Duration::from_secs(10), || edge.get("/hello", &[]).status == 200);
    let r = edge.get("/hello", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(mw.stat("wsgiproxy.middleware.directory_fetches") >= 1);
    assert!(edge.stat("wsgiproxy.app.key_directory_served") >= 2);
}
