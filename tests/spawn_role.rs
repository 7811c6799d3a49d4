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

/// The shipped spawn config of the loader under test (envoy/native-spawn.yaml for the
/// native module), with the sidecar's cluster and the plugin JSON of [`spawn_envoy`].
fn shipped_spawn_envoy(sidecar_port: u16, edit: Option<fn(&mut serde_yaml::Value)>) -> Envoy {
    shipped_spawn_envoy_with(
        sidecar_port,
        edit,
        json!({
            "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar",
            "report_interval_ms": 200, "ensure_timeout_ms": 15000
        }),
    )
}

/// The shipped spawn config of the loader under test, with `plugin` as its configuration.
fn shipped_spawn_envoy_with(sidecar_port: u16, edit: Option<fn(&mut serde_yaml::Value)>, plugin: serde_json::Value) -> Envoy {
    let file = match Loader::from_env() {
        Loader::Native => "envoy/native-spawn.yaml",
        Loader::Wasm => "envoy/spawn.yaml",
    };
    let mut overrides = Overrides::default().cluster("wsgiproxy_sidecar", sidecar_port).plugin(plugin);
    overrides.edit = edit;
    Envoy::start(file, &overrides)
}

/// What Firefox and Safari send for a page.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// During one slow start: a browser gets the waiting page once its wait is over, an
/// API client and a browser's form POST are held and then answered by the app, and
/// the page's reload, once the app is up, reaches it.
#[test]
fn a_browser_gets_the_waiting_page_while_api_clients_wait_for_the_same_start() {
    let slow = "[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--name\", \"blog\", \"--ready-delay-ms\", \"2500\"]\n";
    let sidecar = Sidecar::start(slow, LEASE_MS);
    let plugin = json!({
        "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar", "report_interval_ms": 200, "ensure_timeout_ms": 15000,
        "waiting_page": {"after_ms": 400, "title": "Blog <waking up>", "text": "One moment & it is there."}
    });
    let envoy = shipped_spawn_envoy_with(sidecar.port, None, plugin);
    let port = envoy.port;
    let held = |method: &'static str, accept: &'static str, body: &'static [u8]| {
        std::thread::spawn(move || {
            let began = Instant::now();
            let answer = request(port, method, "/api/items", &[("accept", accept)], body);
            (answer, began.elapsed())
        })
    };
    let api = held("GET", "application/json", b"");
    let form = held("POST", BROWSER_ACCEPT, b"comment=hi");
    std::thread::sleep(Duration::from_millis(150));

    let began = Instant::now();
    let page = request(port, "GET", "/article", &[("accept", BROWSER_ACCEPT)], b"");
    let took = began.elapsed();
    assert_eq!(page.status, 503, "{}", page.text());
    assert!(took >= Duration::from_millis(350) && took < Duration::from_millis(2000), "the page came after {took:?}");
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(page.header("retry-after"), Some("2"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("x-wsgiproxy-error"), Some("app_starting"));
    let html = page.text();
    assert!(html.contains(r#"<meta http-equiv="refresh" content="2">"#), "{html}");
    assert!(html.contains("<title>Blog &lt;waking up&gt;</title>") && html.contains("One moment &amp; it is there."), "{html}");
    assert!(!html.to_ascii_lowercase().contains("<script"), "no JavaScript");

    for (name, client) in [("the API client", api), ("the form", form)] {
        let (answer, waited) = client.join().unwrap();
        assert_eq!(answer.status, 200, "{name}: {}", answer.text());
        assert_eq!(answer.received().0["name"], "blog", "{name}");
        assert!(waited >= Duration::from_millis(2000), "{name} was answered after {waited:?}, before the app was up");
    }
    let reload = request(port, "GET", "/article", &[("accept", BROWSER_ACCEPT)], b"");
    assert_eq!(reload.status, 200, "the reload reaches the app");
    assert_eq!(reload.received().0["name"], "blog");
    assert_eq!(envoy.stat("wsgiproxy.spawn.waiting_pages"), 1);
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1, "one start for all of them");
}

/// Checks that a request reached the spawned app with its body, and that no copy of the
/// destination header the client sent went anywhere.
fn reached_the_app_intact(r: &Response, body: &[u8], spoof: &str) -> Received {
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.received();
    assert_eq!(got.0["name"], "blog", "the client chose the upstream");
    assert_eq!(got.0["body_len"].as_u64(), Some(body.len() as u64));
    assert!(got.body().as_bytes() == body, "the body changed on the way");
    assert!(!got.all("x-envoy-original-dst-host").iter().any(|v| v == spoof), "the client's destination header reached the app");
    got
}

/// A cold start with a body: the body waits with the headers while the sidecar starts
/// the app, and the destination header the client sent is never obeyed (the native
/// module's body hook used to let the request go on before the role had set it).
#[test]
fn a_post_with_a_body_during_a_cold_start_reaches_the_app() {
    let sidecar = Sidecar::start(&blog(""), LEASE_MS);
    let envoy = shipped_spawn_envoy(sidecar.port, None);
    let other = Echo::start_with(&["--name", "not-the-app"]);
    let spoof = format!("127.0.0.1:{}", other.port);
    let cold = request(envoy.port, "POST", "/form", &[("X-Envoy-Original-Dst-Host", &spoof)], b"hello=1");
    assert!(cold.header("x-wsgiproxy-cold-start-ms").is_some(), "not a cold start");
    reached_the_app_intact(&cold, b"hello=1", &spoof);
    // And on the lease.
    let warm = request(envoy.port, "POST", "/form", &[("X-Envoy-Original-Dst-Host", &spoof)], b"hello=2");
    assert_eq!(warm.header("x-wsgiproxy-cold-start-ms"), None);
    reached_the_app_intact(&warm, b"hello=2", &spoof);
    // One start served both.
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1);
}

#[test]
fn a_chunked_upload_whose_chunks_come_after_the_headers_waits_for_the_cold_start() {
    let sidecar = Sidecar::start(&blog(""), LEASE_MS);
    let envoy = shipped_spawn_envoy(sidecar.port, None);
    let other = Echo::start_with(&["--name", "not-the-app"]);
    let spoof = format!("127.0.0.1:{}", other.port);
    let chunks: [&[u8]; 4] = [b"one,", b"two,", b"three,", b"four"];
    // The app takes 300 ms to be ready: the chunks arrive before, during and after that.
    let gap = Duration::from_millis(120);
    let cold = chunked_upload(envoy.port, "/upload", &[("X-Envoy-Original-Dst-Host", &spoof)], &chunks, gap, &[]);
    assert!(cold.header("x-wsgiproxy-cold-start-ms").is_some(), "not a cold start");
    reached_the_app_intact(&cold, b"one,two,three,four", &spoof);
    let warm = chunked_upload(envoy.port, "/upload", &[("X-Envoy-Original-Dst-Host", &spoof)], &chunks, gap, &[]);
    reached_the_app_intact(&warm, b"one,two,three,four", &spoof);
}

#[test]
fn a_body_larger_than_envoys_buffers_waits_for_the_cold_start() {
    let sidecar = Sidecar::start(&blog(""), LEASE_MS);
    let envoy = shipped_spawn_envoy(sidecar.port, None);
    let other = Echo::start_with(&["--name", "not-the-app"]);
    let spoof = format!("127.0.0.1:{}", other.port);
    // 3 MiB: over the 1 MiB each connection's buffers hold by default, so the wait is
    // bounded by flow control, not by buffering the whole body (a 413).
    let body: Vec<u8> = (0..3 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let cold = request(envoy.port, "POST", "/big", &[("X-Envoy-Original-Dst-Host", &spoof)], &body);
    assert!(cold.header("x-wsgiproxy-cold-start-ms").is_some(), "not a cold start");
    reached_the_app_intact(&cold, &body, &spoof);
    let warm = request(envoy.port, "POST", "/big", &[("X-Envoy-Original-Dst-Host", &spoof)], &body);
    reached_the_app_intact(&warm, &body, &spoof);
}

/// HTTP/1.1 request trailers, which Envoy passes on where both sides enable them.
fn with_trailers(doc: &mut serde_yaml::Value) {
    hcm(doc)["http_protocol_options"] = serde_yaml::from_str("{ enable_trailers: true }").unwrap();
    for cluster in doc["static_resources"]["clusters"].as_sequence_mut().unwrap() {
        if cluster["name"].as_str() == Some("spawned") {
            cluster["typed_extension_protocol_options"] = serde_yaml::from_str(
                r#"{ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                     "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions,
                     explicit_http_config: { http_protocol_options: { enable_trailers: true } } } }"#,
            )
            .unwrap();
        }
    }
}

#[test]
fn a_request_with_trailers_waits_for_the_cold_start() {
    let sidecar = Sidecar::start(&blog(""), LEASE_MS);
    let envoy = shipped_spawn_envoy(sidecar.port, Some(with_trailers));
    let other = Echo::start_with(&["--name", "not-the-app"]);
    let spoof = format!("127.0.0.1:{}", other.port);
    let chunks: [&[u8]; 2] = [b"part-1,", b"part-2"];
    for round in ["cold", "warm"] {
        let r = chunked_upload(
            envoy.port,
            "/trailers",
            &[("X-Envoy-Original-Dst-Host", &spoof)],
            &chunks,
            Duration::from_millis(150),
            &[("x-checksum", "abc123")],
        );
        assert_eq!(r.header("x-wsgiproxy-cold-start-ms").is_some(), round == "cold", "{round}");
        let got = reached_the_app_intact(&r, b"part-1,part-2", &spoof);
        assert_eq!(got.0["trailers"], json!([["x-checksum", "abc123"]]), "{round}: the trailers were lost");
    }
}

/// A stand-in sidecar that grants `ensure` at once with `upstream` and holds every
/// activity report for `hold` before answering it; counts the reports it got.
fn slow_reporting_sidecar(upstream: u16, hold: Duration) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reports = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = reports.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && std::io::Read::read(&mut stream, &mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                if head.starts_with(b"POST /v1/activity/") {
                    counted.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(hold);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nx-wsgiproxy-sidecar: 1\r\nx-wsgiproxy-upstream: 127.0.0.1:{upstream}\r\n\
                     x-wsgiproxy-lease-ms: 60000\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
            });
        }
    });
    (port, reports)
}

/// The spawn listener removed (an LDS update) while its configuration's activity
/// report is in flight: the configuration goes (its report thread is stopped at once,
/// the late answer finds nothing), and Envoy carries on serving.
#[test]
fn the_spawn_listener_removed_while_a_report_is_in_flight() {
    let app = Echo::start_with(&["--name", "blog"]);
    let (sidecar, reports) = slow_reporting_sidecar(app.port, Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let lds = dir.path().join("lds.yaml");
    let lds_for_edit = lds.clone();
    let mut overrides = Overrides::default().cluster("wsgiproxy_sidecar", sidecar).plugin(json!({
        "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar", "report_interval_ms": 200
    }));
    // The listener comes from a file Envoy watches, so that the test can take it away.
    overrides.edit_with = Some(std::sync::Arc::new(move |doc: &mut serde_yaml::Value| {
        let mut listeners = doc["static_resources"].as_mapping_mut().unwrap().remove("listeners").unwrap();
        // Rendering puts the native module in place after this edit, which no longer
        // sees the listeners.
        if Loader::from_env() == Loader::Native {
            use_native_module(&mut listeners);
        }
        let mut resources = Vec::new();
        for mut listener in listeners.as_sequence().unwrap().clone() {
            listener.as_mapping_mut().unwrap().insert("@type".into(), "type.googleapis.com/envoy.config.listener.v3.Listener".into());
            resources.push(listener);
        }
        let file = serde_yaml::to_string(&serde_yaml::Mapping::from_iter([("resources".into(), resources.into())])).unwrap();
        std::fs::write(&lds_for_edit, file).unwrap();
        doc["node"] = serde_yaml::from_str("{ id: spawn-test, cluster: spawn-test }").unwrap();
        doc["dynamic_resources"] = serde_yaml::from_str(&format!(
            "{{ lds_config: {{ path_config_source: {{ path: {} }}, resource_api_version: V3 }} }}",
            lds_for_edit.display()
        ))
        .unwrap();
    }));
    overrides.args = vec!["--drain-time-s".into(), "0".into()];
    let mut envoy = Envoy::start("envoy/spawn.yaml", &overrides);
    for _ in 0..3 {
        assert_eq!(envoy.get("/", &[]).received().0["name"], "blog");
    }
    wait_until("a report is in flight", Duration::from_secs(5), || reports.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // Envoy watches the file's directory for a move onto it.
    let empty = dir.path().join("lds.next");
    std::fs::write(&empty, "resources: []\n").unwrap();
    std::fs::rename(&empty, &lds).unwrap();
    wait_until("the listener is gone", Duration::from_secs(10), || {
        envoy.stats("listener_manager.total_listeners").get("listener_manager.total_listeners_active") == Some(&0)
            && envoy.stats("listener_manager.total_listeners").get("listener_manager.total_listeners_draining") == Some(&0)
    });
    // The report's answer comes after the configuration went; Envoy is still well.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(envoy.admin("/ready").status, 200, "Envoy stopped serving");
    let log = stop_and_count_warnings(&mut envoy).0;
    assert!(!log.contains("panic") && !log.contains("[critical]"), "{log}");
}

/// A service Envoy can reach that nobody meant to expose: counts the connections it
/// accepts, and answers each `200 private`.
fn private_service() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && std::io::Read::read(&mut stream, &mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nprivate";
                let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
            });
        }
    });
    (port, connections)
}

/// The on-demand cluster goes only where the spawn role sent the request. Two ways a
/// client's request reaches that cluster without the role, as users configure them: a
/// second listener (no spawn filter) routing to it, and a route of the spawn listener
/// that disables the spawn filter. Before, the cluster obeyed the client's
/// `x-envoy-original-dst-host` there: an open proxy to anything Envoy can reach.
#[test]
fn a_request_that_skipped_the_spawn_pass_never_chooses_its_upstream() {
    use std::sync::atomic::Ordering;
    let app = Echo::start_with(&["--name", "blog"]);
    let sidecar = fake_sidecar(format!("x-wsgiproxy-upstream: 127.0.0.1:{}\r\nx-wsgiproxy-lease-ms: 60000\r\n", app.port));
    let (private, connections) = private_service();
    let bypass_port = free_port();
    let bypasses: YamlEdit = std::sync::Arc::new(move |doc: &mut serde_yaml::Value| {
        // A route of the spawn listener on which the spawn filter is off.
        let skip: serde_yaml::Value = serde_yaml::from_str(
            r#"{ match: { prefix: "/skip" }, route: { cluster: spawned },
                 typed_per_filter_config: { wsgiproxy-spawn: { "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true } } }"#,
        )
        .unwrap();
        hcm(doc)["route_config"]["virtual_hosts"][0]["routes"].as_sequence_mut().unwrap().insert(0, skip);
        // A second listener to the same cluster, with only the router.
        let mut second = doc["static_resources"]["listeners"][0].clone();
        second["name"] = serde_yaml::Value::from("bypass");
        second["address"]["socket_address"]["port_value"] = serde_yaml::Value::from(bypass_port);
        let chain = &mut second["filter_chains"][0]["filters"];
        chain.as_sequence_mut().unwrap().retain(|f| f["name"].as_str() == Some("envoy.filters.network.http_connection_manager"));
        let http = &mut chain[0]["typed_config"];
        http["stat_prefix"] = serde_yaml::Value::from("bypass");
        http["http_filters"].as_sequence_mut().unwrap().retain(|f| f["name"].as_str() == Some("envoy.filters.http.router"));
        http["route_config"]["virtual_hosts"][0]["routes"]
            .as_sequence_mut()
            .unwrap()
            .retain(|r| r["match"]["prefix"].as_str() == Some("/"));
        doc["static_resources"]["listeners"].as_sequence_mut().unwrap().push(second);
    });
    let file = match Loader::from_env() {
        Loader::Native => "envoy/native-spawn.yaml",
        Loader::Wasm => "envoy/spawn.yaml",
    };
    let mut overrides = Overrides::default().cluster("wsgiproxy_sidecar", sidecar).plugin(json!({
        "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar", "report_interval_ms": 200
    }));
    overrides.edit_with = Some(bypasses);
    let envoy = Envoy::start(file, &overrides);
    let spoof = format!("127.0.0.1:{private}");

    // Through the spawn role: where the sidecar said, whatever the client asked.
    let ok = envoy.get("/page", &[("X-Envoy-Original-Dst-Host", &spoof)]);
    assert_eq!(ok.received().0["name"], "blog");
    assert_eq!(ok.received().header("x-envoy-original-dst-host"), None, "no header names the destination");
    // On the lease too.
    let warm = envoy.get("/page", &[("X-Envoy-Original-Dst-Host", &spoof)]);
    assert_eq!(warm.received().0["name"], "blog");

    let answers: Vec<_> = [("a second listener", bypass_port, "/page"), ("a route without the spawn filter", envoy.port, "/skip/page")]
        .into_iter()
        .map(|(how, port, path)| (how, request(port, "GET", path, &[("X-Envoy-Original-Dst-Host", &spoof)], b"")))
        .collect();
    let reached: Vec<_> = answers.iter().filter(|(_, r)| r.text() == "private").map(|(how, _)| *how).collect();
    assert!(reached.is_empty(), "the client chose the upstream through {reached:?}");
    for (how, r) in &answers {
        // Envoy's own answer: no host to send it to.
        assert_eq!(r.status, 503, "{how}: {}", r.text());
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "Envoy connected where a client said");
}
