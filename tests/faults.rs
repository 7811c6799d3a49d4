//! Load with faults: a steady load through Envoy's spawn role while the child is
//! killed, the sidecar restarts, and the sidecar hangs. Every failure must be the
//! documented 503, and service must come back without touching Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// What the load saw: (time since start, status, x-wsgiproxy-error or response detail).
type Log = Arc<Mutex<Vec<(Duration, u16, String)>>>;

fn load(port: u16, stop: Arc<AtomicBool>, log: Log, began: Instant) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = request(port, "GET", "/work", &[], b"");
                    let why = r.header("x-wsgiproxy-error").map(str::to_string).unwrap_or_else(|| {
                        if r.status == 200 {
                            String::new()
                        } else {
                            r.text().chars().take(60).collect()
                        }
                    });
                    log.lock().unwrap().push((began.elapsed(), r.status, why));
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect()
}

/// Failures between `from` and the first success after it, and how long recovery took.
fn window(log: &[(Duration, u16, String)], from: Duration) -> (BTreeMap<String, usize>, Duration) {
    let mut failures = BTreeMap::new();
    let mut recovered = None;
    for (at, status, why) in log.iter().filter(|(at, _, _)| *at >= from) {
        if *status == 200 {
            if recovered.is_none() && !failures.is_empty() {
                recovered = Some(*at - from);
            }
            if !failures.is_empty() {
                break;
            }
            continue;
        }
        *failures.entry(format!("{status} {why}")).or_insert(0) += 1;
    }
    (failures, recovered.unwrap_or_default())
}

fn signal(pid: u32, sig: &str) {
    Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
}

#[test]
fn faults_under_load_are_503s_and_service_comes_back() {
    let config = "[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--name\", \"blog\"]\n";
    let mut sidecar = Sidecar::start(config, 1000);
    let sidecar_port = sidecar.port;
    let envoy = Envoy::start(
        "envoy/spawn.yaml",
        &Overrides::default().cluster("wsgiproxy_sidecar", sidecar_port).plugin(json!({
            "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar",
            "report_interval_ms": 200, "ensure_timeout_ms": 1000
        })),
    );
    assert_eq!(envoy.get("/", &[]).status, 200);
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let workers = load(envoy.port, Arc::clone(&stop), Arc::clone(&log), began);
    std::thread::sleep(Duration::from_secs(2));

    // 1. The child is killed.
    let t_kill = began.elapsed();
    let pid = sidecar.status("blog")["pid"].as_u64().unwrap() as u32;
    signal(pid, "KILL");
    std::thread::sleep(Duration::from_secs(4));

    // 2. The sidecar restarts (SIGTERM stops its children; a new one starts on the same port).
    let t_restart = began.elapsed();
    sidecar.terminate();
    std::thread::sleep(Duration::from_millis(500));
    let mut restarted = None;
    for _ in 0..20 {
        // The port may linger a moment after the old sidecar exits.
        let s = std::panic::catch_unwind(|| Sidecar::start_on(config, 1000, sidecar_port));
        if let Ok(s) = s {
            restarted = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sidecar = restarted.expect("the sidecar restarts");
    std::thread::sleep(Duration::from_secs(4));

    // 3. The sidecar hangs (SIGSTOP) for 3 s, then resumes.
    let t_hang = began.elapsed();
    signal(sidecar.proc.pid(), "STOP");
    std::thread::sleep(Duration::from_secs(3));
    signal(sidecar.proc.pid(), "CONT");
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    let log = log.lock().unwrap();
    let total = log.len();
    let failed: Vec<_> = log.iter().filter(|(_, s, _)| *s != 200).collect();
    // Every failure is a 503: the documented ones, or Envoy's own for a refused connection.
    for (at, status, why) in &failed {
        assert_eq!(*status, 503, "at {at:?}: {status} {why}");
    }
    let tail_ok = log.iter().rev().take(20).all(|(_, s, _)| *s == 200);
    assert!(tail_ok, "service did not come back");
    eprintln!("requests: {total}, failed: {}", failed.len());
    for (name, at) in [("child killed", t_kill), ("sidecar restarted", t_restart), ("sidecar hung 3 s", t_hang)] {
        let (failures, recovery) = window(&log, at);
        eprintln!("{name}: failures {failures:?}, back to 200 after {recovery:?}");
        assert!(recovery < Duration::from_secs(6), "{name}: recovery took {recovery:?}");
    }
}
