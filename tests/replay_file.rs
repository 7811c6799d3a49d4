//! The native module's replay memory in a file (issue #27 item 1), in real Envoy: a
//! hot-restart pair, a cold restart, a SIGKILL, two Envoys and two workers use one
//! memory; a damaged or foreign file falls back to the new-memory rule (425), counted.
//! Native module only: the Wasm filter cannot map a file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use support::*;
use wsgiproxy_protocol::signature::{format_date, Algorithm, KeyRing};

const KEY: &str = "first-shared-key-0123456789";
const FILE: &str = "envoy/middleware.yaml";

fn overrides(echo: &Echo, dir: &Path) -> Overrides {
    let config = json!({"role": "middleware", "secret": {"keys": [{"id": "k1", "value": KEY}]}, "replay_memory_mb": 16});
    Overrides::default()
        .cluster("app", echo.port)
        .plugin(config)
        .loader(Loader::Native)
        .env("WSGIPROXY_REPLAY_MEMORY_DIR", dir.to_str().unwrap())
}

/// A fresh signed `GET /transfer?amount=100`, dated now, on a kept-alive connection.
fn signed_request() -> Vec<u8> {
    let nonce = unique_nonce();
    let date = format_date(SystemTime::now());
    let ring = KeyRing::new(Algorithm::HmacSha1, &[("k1".into(), KEY.as_bytes().to_vec())]).unwrap();
    signed_v1_get(&ring, &nonce, "internal:9000", "/transfer?amount=100", &date)
}

fn once(port: u16, raw: &[u8]) -> (u16, Option<String>) {
    KeptAlive::open(port).verdict(raw)
}

const ACCEPTED: Answer = (200, None);

fn replayed() -> Answer {
    (403, Some("signature_replayed".to_string()))
}

/// A status and the `X-WSGIProxy-Error` it came with, and how many times each was seen.
type Answer = (u16, Option<String>);
type Tally = BTreeMap<Answer, u64>;
/// A damage done to a memory file, and a word its log line must say.
type Damage = (&'static str, fn(&Path));

/// Fresh signed requests on new connections, as fast as one thread sends them,
/// until stopped: every status seen (0 for a connection refused or reset), and a
/// few accepted requests to replay later.
struct Load {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<Tally>>,
    accepted: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (s, st, acc) = (stop.clone(), statuses.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let raw = signed_request();
                let answer = std::panic::catch_unwind(|| once(port, &raw)).unwrap_or((0, None));
                if answer == ACCEPTED {
                    acc.lock().unwrap().push(raw);
                }
                *st.lock().unwrap().entry(answer.clone()).or_default() += 1;
                if answer.0 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Load { stop, statuses, accepted, thread: Some(thread) }
    }

    fn stop(&mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.statuses.lock().unwrap().clone()
    }

    /// Only 200s and connections refused: no protocol refusal of a fresh request.
    fn assert_only_accepted_or_down(statuses: &Tally) {
        assert!(statuses.get(&ACCEPTED).copied().unwrap_or(0) > 20, "{statuses:?}");
        assert!(statuses.keys().all(|k| *k == ACCEPTED || k.0 == 0), "a fresh request refused: {statuses:?}");
    }
}

/// A hot restart (`--restart-epoch 1`) under load: the parent, still serving a
/// kept-alive connection, and the child, serving new ones, share one memory: a
/// request accepted by either is refused as a replay by the other; the child refuses
/// no fresh request (no 425). Today each has its own memory: accepted twice.
#[test]
fn a_hot_restart_pair_accepts_no_replay() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let base_id = 1000 + u32::from(free_port()) % 50_000;
    let mut o = overrides(&echo, dir.path());
    o.hot_restart = Some(HotRestart { base_id, epoch: 0 });
    let parent = Envoy::start(FILE, &o);
    let mut kept = KeptAlive::open(parent.port);
    assert_eq!(kept.verdict(&signed_request()), ACCEPTED);
    let mut load = Load::start(parent.port);
    std::thread::sleep(Duration::from_millis(300));

    o.hot_restart = Some(HotRestart { base_id, epoch: 1 });
    o.memory_survives = true;
    let child = parent.hot_restart(FILE, &o);
    // Accepted by the parent on its kept-alive connection, replayed to the child.
    let first = signed_request();
    assert_eq!(kept.verdict(&first), ACCEPTED);
    assert_eq!(once(child.port, &first), replayed());
    // Accepted by the child, replayed to the parent.
    let second = signed_request();
    assert_eq!(once(child.port, &second), ACCEPTED);
    assert_eq!(kept.verdict(&second), replayed());
    std::thread::sleep(Duration::from_millis(300));
    let statuses = load.stop();
    Load::assert_only_accepted_or_down(&statuses);
    assert!(!statuses.contains_key(&(0, None)), "a hot restart drops no connection: {statuses:?}");
    // Whatever the load had accepted, from either process, is refused by the child.
    for raw in load.accepted.lock().unwrap().iter().step_by(7) {
        assert_eq!(once(child.port, raw), replayed());
    }
    assert_eq!(child.stat("wsgiproxy.middleware.replay_memory_untrusted"), 0);
    drop(parent);
}

/// A SIGKILL, then a cold restart, under load: the restarted Envoy finds the memory
/// as it was: it refuses what was accepted before and refuses no fresh request
/// (no 425 after the start, and the test waits for nothing). Today the memory dies
/// with the process: replays are answered 425 and so are fresh requests for seconds.
#[test]
fn a_crash_and_a_cold_restart_keep_the_memory() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let mut o = overrides(&echo, dir.path());
    let mut first = Envoy::start(FILE, &o);
    let (port, admin_port) = (first.port, first.admin_port);
    let accepted = signed_request();
    assert_eq!(once(port, &accepted), ACCEPTED);
    let mut load = Load::start(port);
    std::thread::sleep(Duration::from_millis(300));

    first.kill();
    o.memory_survives = true;
    let mut second = Envoy::start_on(FILE, &o, port, admin_port);
    assert_eq!(once(second.port, &accepted), replayed());
    std::thread::sleep(Duration::from_millis(300));

    second.stop_and_log();
    let third = Envoy::start_on(FILE, &o, second.port, second.admin_port);
    assert_eq!(once(third.port, &accepted), replayed());
    std::thread::sleep(Duration::from_millis(300));
    let statuses = load.stop();
    Load::assert_only_accepted_or_down(&statuses);
    for raw in load.accepted.lock().unwrap().iter().step_by(5) {
        assert_eq!(once(third.port, raw), replayed());
    }
    assert_eq!(third.stat("wsgiproxy.middleware.replay_memory_untrusted"), 0);
}

fn memory_file(dir: &Path) -> std::path::PathBuf {
    let uid = std::fs::metadata(dir).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    dir.join(format!("wsgiproxy-replay-{uid}"))
}

/// A damaged or foreign file is never trusted: the restarted Envoy begins a new
/// memory, refuses what was signed before it (425), counts it and says why.
#[test]
fn a_damaged_or_foreign_file_falls_back_to_the_new_memory_rule() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let o = overrides(&echo, dir.path());
    let damages: [Damage; 3] = [
        ("checksum", |p| {
            let mut data = std::fs::read(p).unwrap();
            data[33] ^= 0x40; // the memory's first second
            std::fs::write(p, data).unwrap();
        }),
        ("magic", |p| std::fs::write(p, vec![0x42u8; 1 << 20]).unwrap()),
        ("version", |p| {
            let mut data = std::fs::read(p).unwrap();
            data[8] = 99;
            std::fs::write(p, data).unwrap();
        }),
    ];
    for (why, damage) in damages {
        let mut before = Envoy::start(FILE, &o);
        let accepted = signed_request();
        assert_eq!(once(before.port, &accepted), ACCEPTED);
        before.stop_and_log();
        damage(&memory_file(dir.path()));
        let mut after = Envoy::start(FILE, &o);
        assert_eq!(once(after.port, &accepted), (425, Some("signed_before_restart".to_string())), "{why}");
        assert_eq!(once(after.port, &signed_request()), ACCEPTED, "{why}");
        assert_eq!(after.stat("wsgiproxy.middleware.replay_memory_untrusted"), 1, "{why}");
        let log = after.stop_and_log();
        assert!(log.contains("cannot be trusted") && log.contains(why), "{why}: {log}");
    }
}

/// Two unrelated Envoys, two workers each, given one file: one memory. The same
/// signed request sent to both at once is accepted exactly once.
#[test]
fn two_envoys_with_two_workers_share_one_file() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let mut o = overrides(&echo, dir.path());
    o.concurrency = Some(2);
    let a = Envoy::start(FILE, &o);
    o.memory_survives = true;
    let b = Envoy::start(FILE, &o);
    let first = signed_request();
    assert_eq!(once(a.port, &first), ACCEPTED);
    assert_eq!(once(b.port, &first), replayed());
    for round in 0..30 {
        let raw = signed_request();
        // Two connections to each Envoy (both workers), released together.
        let conns: Vec<TcpStream> =
            [a.port, a.port, b.port, b.port].iter().map(|p| TcpStream::connect(("127.0.0.1", *p)).unwrap()).collect();
        let barrier = Arc::new(std::sync::Barrier::new(conns.len()));
        let answers: Vec<u16> = conns
            .into_iter()
            .map(|mut stream| {
                let (barrier, raw) = (barrier.clone(), raw.clone());
                std::thread::spawn(move || {
                    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    barrier.wait();
                    stream.write_all(&raw).unwrap();
                    read_response(&mut BufReader::new(stream)).status
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(answers.iter().filter(|s| **s == 200).count(), 1, "round {round}: {answers:?}");
        assert_eq!(answers.iter().filter(|s| **s == 403).count(), 3, "round {round}: {answers:?}");
    }
}
