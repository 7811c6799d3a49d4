//! The `spawn` role in real Envoy (envoy/spawn.yaml) with the real sidecar and
//! non-Python children (the echo backend, `sleep`, `sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const LEASE_MS: u64 = 400;

fn spawn_envoy(sidecar_port: u16, app: &str) -> Envoy {
    Envoy::start(
        "envoy/spawn.yaml",
        &Overrides::default().cluster("wsgiproxy_sidecar", sidecar_port).plugin(json!({
            "role": "spawn", "app": app, "sidecar_cluster": "wsgiproxy_sidecar",
            "report_interval_ms": 200, "ensure_timeout_ms": 15000
        })),
    )
}

fn blog(extra: &str) -> String {
    format!("[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--name\", \"blog\", \"--ready-delay-ms\", \"300\"]\n{extra}\n")
}

#[test]
fn cold_start_then_warm_through_envoy() {
    let sidecar = Sidecar::start(&blog(""), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port, "blog");
    let other = Echo::start_with(&["--name", "not-the-app"]);
    let spoof = format!("127.0.0.1:{}", other.port);

    let first = envoy.get("/hello", &[("X-Envoy-Original-Dst-Host", &spoof)]);
    let waited: u64 = first.header("x-wsgiproxy-cold-start-ms").expect("a cold start says so").parse().unwrap();
    assert!(waited >= 250, "waited {waited} ms for a child that takes 300 ms");
    let got = first.received();
    assert_eq!(got.0["name"], "blog", "the client cannot choose the upstream");
    // The app role ran after the spawn role, in the same filter chain.
    assert_eq!(got.header("x-wsgiproxy-version").as_deref(), Some("0.1"));
    assert_eq!(got.header("host").as_deref(), Some("blog.internal:80"));

    let warm = envoy.get("/again", &[]);
    assert_eq!(warm.header("x-wsgiproxy-cold-start-ms"), None);
    assert_eq!(warm.received().0["name"], "blog");
    assert!(envoy.stat("wsgiproxy.spawn.lease_hits") >= 1, "a warm request does not ask the sidecar");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1);
}

#[test]
fn concurrent_cold_start_spawns_once() {
    let sidecar = Sidecar::start(&blog(""), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port, "blog");
    let port = envoy.port;
    let statuses: Vec<u16> = (0..30)
        .map(|i| std::thread::spawn(move || request(port, "GET", &format!("/c/{i}"), &[], b"").status))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1);
}

#[test]
fn idle_shutdown_then_restart_on_the_next_request() {
    let sidecar = Sidecar::start(&blog("idle_shutdown = 1"), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port, "blog");
    assert_eq!(envoy.get("/", &[]).status, 200);
    let pid = sidecar.status("blog")["pid"].as_u64().unwrap();
    wait_until("the idle app stops", Duration::from_secs(15), || sidecar.status("blog")["state"] == "stopped");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the child process is gone");
    let again = envoy.get("/", &[]);
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(again.header("x-wsgiproxy-cold-start-ms").is_some());
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 2);
}

#[test]
fn a_long_request_outlives_idle_shutdown() {
    let sidecar = Sidecar::start(&blog("idle_shutdown = 1"), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port, "blog");
    let began = Instant::now();
    let slow = envoy.get("/__sleep/3500", &[]);
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert!(began.elapsed() >= Duration::from_millis(3500));
    let streamed = envoy.get("/__stream/6/500", &[]);
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.text().lines().count(), 6, "the stream was not cut");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 0);
}

#[test]
fn a_crashed_app_comes_back() {
    let sidecar = Sidecar::start(&blog(""), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port, "blog");
    assert_eq!(envoy.get("/", &[]).status, 200);
    let bye = envoy.get("/__exit/1", &[]);
    assert_eq!(bye.text(), "bye\n");
    wait_until("the sidecar sees the crash", Duration::from_secs(5), || sidecar.status("blog")["state"] == "failed");
    // At most the first request after the crash can still be sent under the old lease:
    // it fails with Envoy's 503, the lease is dropped at once, and the next one restarts the app.
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = envoy.get("/", &[]);
        if r.status == 200 {
            break;
        }
        failures.push(r.status);
        assert!(Instant::now() < deadline, "no recovery: {failures:?}");
    }
    assert!(failures.len() <= 1 && failures.iter().all(|s| *s == 503), "{failures:?}");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_crashes_total{app=\"blog\"}"), 1);
}

#[test]
fn a_start_timeout_is_a_503_saying_so() {
    let sidecar = Sidecar::start("[apps.stuck]\ncommand = [\"sleep\", \"600\"]\nstart_timeout = 1\n", LEASE_MS);
    let envoy = spawn_envoy(sidecar.port, "stuck");
    let r = envoy.get("/", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-wsgiproxy-error"), Some("app_unavailable"));
    assert!(r.header("retry-after").is_some());
    assert!(r.text().contains("did not become ready within"), "{}", r.text());
}

#[test]
fn the_sidecar_down_is_a_prompt_503() {
    let dead = free_port();
    let envoy = spawn_envoy(dead, "blog");
    let began = Instant::now();
    let r = envoy.get("/", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-wsgiproxy-error"), Some("sidecar_unreachable"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_fixed_port_app() {
    let port = free_port();
    let sidecar = Sidecar::start(
        &format!("[apps.fixed]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--name\", \"fixed\"]\nport = {port}\n"),
        LEASE_MS,
    );
    let envoy = spawn_envoy(sidecar.port, "fixed");
    let got = envoy.get("/", &[]).received();
    assert_eq!(got.0["name"], "fixed");
    assert_eq!(sidecar.status("fixed")["port"], port);
}

#[test]
fn stopping_the_sidecar_stops_its_children() {
    let mut sidecar = Sidecar::start(&blog(""), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port, "blog");
    assert_eq!(envoy.get("/", &[]).status, 200);
    let pid = sidecar.status("blog")["pid"].as_u64().unwrap();
    sidecar.terminate();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child {pid} outlived the sidecar");
}
