//! The `spawn` role in real Envoy (envoy/spawn.yaml) with the real sidecar and
//! non-Python children (the echo backend, `sleep`, `sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// The sidecar's lease (its minimum is 1000 ms; the filter stops using one 500 ms
/// before its end).
const LEASE_MS: u64 = 1500;

fn spawn_envoy(sidecar_port: u16, app: &str) -> Envoy {
    spawn_envoy_with(
        sidecar_port,
        json!({
            "role": "spawn", "app": app, "sidecar_cluster": "wsgiproxy_sidecar",
            "report_interval_ms": 200, "ensure_timeout_ms": 15000
        }),
    )
}

fn spawn_envoy_with(sidecar_port: u16, plugin: serde_json::Value) -> Envoy {
    let overrides = Overrides::default();
    Envoy::start("envoy/spawn.yaml", &overrides.cluster("wsgiproxy_sidecar", sidecar_port).plugin(plugin))
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
    // Under a lease too, twice over.
    let warm = envoy.get("/again", &[("X-Envoy-Original-Dst-Host", &spoof), ("X-Envoy-Original-Dst-Host", &spoof)]);
    assert_eq!(warm.received().0["name"], "blog", "the client cannot choose the upstream");
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
fn a_long_request_started_late_in_a_lease_outlives_idle_shutdown() {
    let sidecar = Sidecar::start(&blog("idle_shutdown = 1"), LEASE_MS);
    // Reports at most once a minute by the interval: only the lease can make the
    // worker tell the sidecar about the long request in time.
    let envoy = spawn_envoy_with(
        sidecar.port,
        json!({
            "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar",
            "report_interval_ms": 60000, "ensure_timeout_ms": 15000
        }),
    );
    assert_eq!(envoy.get("/", &[]).status, 200);
    let pid = sidecar.status("blog")["pid"].as_u64().unwrap();
    // The lease is over 1 s old, and so is the last activity: left alone, the app
    // would stop as soon as the lease runs out.
    wait_until("the lease nears its end", Duration::from_secs(10), || sidecar.status("blog")["lease_left_ms"].as_u64().unwrap() <= 900);
    let began = Instant::now();
    let slow = envoy.get("/__sleep/3000", &[]);
    assert_eq!(slow.status, 200, "the long request was cut: {}", slow.text());
    assert!(began.elapsed() >= Duration::from_millis(3000));
    assert_eq!(envoy.stat("wsgiproxy.spawn.ensure_calls"), 1, "the long request went under the worker's lease");
    let streamed = envoy.get("/__stream/4/500", &[]);
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.text().lines().count(), 4, "the stream was not cut");
    let ended = Instant::now();
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 0);
    assert_eq!(sidecar.status("blog")["pid"].as_u64(), Some(pid), "the same process served them all");
    // Then the app stops once idle for idle_shutdown, counted from the end of the
    // last request (plus the lease the end's report renewed, and its grace).
    wait_until("the idle app stops", Duration::from_secs(10), || sidecar.status("blog")["state"] == "stopped");
    let after = ended.elapsed();
    eprintln!("the idle app stopped {after:?} after its last request ended");
    assert!(after >= Duration::from_secs(1) && after < Duration::from_secs(6), "stopped {after:?} after the last request ended");
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
fn a_connection_refused_under_a_lease_drops_the_lease_at_once() {
    // A long lease and no report due: the refused connection is the only news of the crash.
    let sidecar = Sidecar::start(&blog(""), 60_000);
    let envoy = spawn_envoy_with(
        sidecar.port,
        json!({
            "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar",
            "report_interval_ms": 60000, "ensure_timeout_ms": 15000
        }),
    );
    assert_eq!(envoy.get("/", &[]).status, 200);
    // The first request's activity is reported at the next tick (250 ms): let that
    // report be answered while the app is up, or it would be the news of the crash.
    wait_until("the first report is answered", Duration::from_secs(5), || envoy.stat("wsgiproxy.spawn.reports") >= 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(envoy.get("/__exit/1", &[]).text(), "bye\n");
    wait_until("the sidecar sees the crash", Duration::from_secs(5), || sidecar.status("blog")["state"] == "failed");
    let r = envoy.get("/", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-wsgiproxy-error"), None, "Envoy's own answer: the filter trusted its lease");
    assert_eq!(envoy.stat("wsgiproxy.spawn.connect_failures"), 1);
    let r = envoy.get("/", &[]);
    assert_eq!(r.status, 200, "the next request asks the sidecar, which starts the app again");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 2);
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

/// Stops Envoy (which flushes its log) and returns the log and the warnings the
/// filter logged about the sidecar.
fn stop_and_count_warnings(envoy: &mut Envoy) -> (String, usize) {
    let _ = request(envoy.admin_port, "POST", "/quitquitquit", &[], b"");
    envoy.proc.child.wait().unwrap();
    let log = envoy.proc.log_text();
    let warnings = log.lines().filter(|l| l.contains("[warning]") && l.contains("wsgiproxy spawn:")).count();
    (log, warnings)
}

#[test]
fn the_sidecar_down_is_a_prompt_503() {
    let dead = free_port();
    let mut envoy = spawn_envoy(dead, "blog");
    for _ in 0..5 {
        let began = Instant::now();
        let r = envoy.get("/", &[]);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-wsgiproxy-error"), Some("sidecar_unreachable"));
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(began.elapsed() < Duration::from_secs(5));
    }
    let (log, warnings) = stop_and_count_warnings(&mut envoy);
    assert_eq!(warnings, 1, "one warning for the outage, not one per request:\n{log}");
}

#[test]
fn a_sidecar_cluster_that_cannot_be_called_is_logged_once() {
    // The cluster does not exist: every call fails at once, in the filter.
    let mut envoy = spawn_envoy_with(free_port(), json!({"role": "spawn", "app": "blog", "sidecar_cluster": "no_such_cluster"}));
    for _ in 0..5 {
        let r = envoy.get("/", &[]);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-wsgiproxy-error"), Some("sidecar_unreachable"));
    }
    let (log, warnings) = stop_and_count_warnings(&mut envoy);
    assert!(log.contains("no_such_cluster"), "{log}");
    assert_eq!(warnings, 1, "{log}");
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

/// A stand-in for the sidecar that grants every call with the given extra headers.
fn fake_sidecar(headers: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && std::io::Read::read(&mut stream, &mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let answer = format!("HTTP/1.1 200 OK\r\nx-wsgiproxy-sidecar: 1\r\n{headers}content-length: 0\r\nconnection: close\r\n\r\n");
            let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
        }
    });
    port
}

#[test]
fn huge_durations_from_the_sidecar_are_capped() {
    let echo = Echo::start_with(&["--name", "app"]);
    let max = u64::MAX;
    let sidecar = fake_sidecar(format!(
        "x-wsgiproxy-upstream: 127.0.0.1:{}\r\nx-wsgiproxy-lease-ms: {max}\r\nx-wsgiproxy-cold-start-ms: {max}\r\n",
        echo.port
    ));
    let mut envoy = spawn_envoy(sidecar, "blog");
    let answers: Vec<_> = (0..3).map(|_| envoy.get("/", &[])).collect();
    let (log, _) = stop_and_count_warnings(&mut envoy);
    assert!(!log.contains("panicked") && !log.contains("[critical]"), "{log}");
    for r in &answers {
        assert_eq!(r.received().0["name"], "app");
    }
    assert_eq!(answers[0].header("x-wsgiproxy-cold-start-ms"), Some("600000"), "capped");
}

#[test]
fn bursts_reach_a_server_with_a_small_backlog() {
    let sidecar = Sidecar::start(&small_backlog_app("dev"), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port, "dev");
    bursts_reach_it(&envoy, &sidecar, "dev");
}
