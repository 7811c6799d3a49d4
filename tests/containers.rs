//! Container apps in real Docker: existing containers the sidecar starts on the
//! first request, stops (or pauses) when idle, starts again after a crash, takes
//! over after its own restart, and leaves alone when it did not start them; through
//! real Envoy and the spawn role where what a client sees matters.
//!
//! The image is built here, FROM scratch: the echo binary, a shell (for
//! healthchecks), the libraries `ldd` lists and the loader, `docker import`ed
//! (nothing is pulled). Every container and network has a name of its own and is
//! removed afterwards. The tests that need Docker say SKIPPED and pass when
//! `docker info` fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/docker.rs"]
mod docker_support;
mod support;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use docker_support::*;
use serde_json::json;
use support::*;

/// The sidecar's lease (the filter stops using one 500 ms before its end).
const LEASE_MS: u64 = 1500;

/// A Docker network of the test's own, removed afterwards.
struct Network {
    name: String,
}

impl Network {
    fn create() -> Network {
        let name = unique("net");
        docker(&["network", "create", "--label", "wsgiproxy.test=1", &name]);
        Network { name }
    }

    /// The network's address range, as Docker chose it.
    fn subnet(&self) -> String {
        docker(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", &self.name])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        quietly(&["network", "rm", &self.name]);
    }
}

/// A stopped echo container (answering with `"name": "blog"` on 8080), removed afterwards.
struct Container {
    name: String,
}

impl Container {
    /// `docker create` with `options` (before the image).
    fn create(options: &[&str]) -> Container {
        Container::create_named(&unique("blog"), options)
    }

    /// The same, named `name`.
    fn create_named(name: &str, options: &[&str]) -> Container {
        let name = name.to_string();
        let mut args = vec!["create", "--name", &name, "--label", "wsgiproxy.test=1"];
        args.extend_from_slice(options);
        args.extend_from_slice(&[echo_image(), "--listen", "0.0.0.0:8080", "--name", "blog"]);
        docker(&args);
        Container { name }
    }

    /// Published on a loopback port Docker picks at each start.
    fn published() -> Container {
        Container::create(&["-p", "127.0.0.1::8080"])
    }

    fn on(network: &Network) -> Container {
        Container::create(&["--network", &network.name])
    }

    fn inspect(&self, format: &str) -> String {
        docker(&["inspect", "-f", format, &self.name])
    }

    fn status(&self) -> String {
        self.inspect("{{.State.Status}}")
    }

    fn started_at(&self) -> String {
        self.inspect("{{.State.StartedAt}}")
    }

    /// Its address on `network`, port 8080.
    fn address_on(&self, network: &Network) -> String {
        let ip = self.inspect(&format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", network.name));
        format!("{ip}:8080")
    }

    /// How many times Docker started it since `since` (Unix seconds).
    fn starts_since(&self, since: u64) -> usize {
        let until = (unix_now() + 1).to_string();
        let filter = format!("container={}", self.name);
        let args = ["events", "--since", &since.to_string(), "--until", &until, "--filter", &filter, "--filter", "event=start"];
        docker(&args).lines().count()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        quietly(&["rm", "-f", &self.name]);
    }
}

/// The sidecar configuration of app "blog" running `container`, with `extra` lines.
fn blog(container: &Container, extra: &str) -> String {
    format!("[apps.blog]\ncontainer = \"{}\"\nport = 8080\n{extra}\n", container.name)
}

fn blog_on(container: &Container, network: &Network, extra: &str) -> String {
    blog(container, &format!("network = \"{}\"\n{extra}", network.name))
}

fn spawn_envoy(sidecar_port: u16) -> Envoy {
    spawn_envoy_to(sidecar_port, &[])
}

/// The spawn role allowed to send requests to `networks` besides loopback.
fn spawn_envoy_to(sidecar_port: u16, networks: &[String]) -> Envoy {
    spawn_envoy_with(sidecar_port, json!({ "upstream_networks": networks }))
}

/// The spawn role for app "blog", with `settings` added to its configuration.
fn spawn_envoy_with(sidecar_port: u16, settings: serde_json::Value) -> Envoy {
    let mut plugin = json!({
        "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar",
        "report_interval_ms": 200, "ensure_timeout_ms": 30000
    });
    if let (Some(plugin), Some(settings)) = (plugin.as_object_mut(), settings.as_object()) {
        plugin.extend(settings.clone());
    }
    Envoy::start("envoy/spawn.yaml", &Overrides::default().cluster("wsgiproxy_sidecar", sidecar_port).plugin(plugin))
}

fn ensure(sidecar: &Sidecar) -> Response {
    request(sidecar.port, "POST", "/v1/ensure/blog", &[], b"")
}

/// A GET to an address that is not on loopback (a container's own); `None` when
/// nothing accepts the connection.
fn try_get_at(address: &str, path: &str) -> Option<Response> {
    let address: SocketAddr = address.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: blog\r\nConnection: close\r\n\r\n").ok()?;
    Some(read_response(&mut BufReader::new(stream)))
}

fn get_at(address: &str, path: &str) -> Response {
    try_get_at(address, path).unwrap_or_else(|| panic!("nothing answers at {address}"))
}

#[test]
fn a_burst_of_first_requests_through_envoy_starts_the_container_once() {
    if !docker_available("a_burst_of_first_requests_through_envoy_starts_the_container_once") {
        return;
    }
    let since = unix_now();
    let container = Container::published();
    let sidecar = Sidecar::start(&blog(&container, ""), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port);
    assert_eq!(container.status(), "created");
    let began = Instant::now();
    let answers = burst(envoy.port, 20, "/hello");
    eprintln!("20 first requests answered in {:?}", began.elapsed());
    let failed: Vec<_> = answers.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of 20 first requests failed: {failed:?}\n{}", failed.len(), sidecar.proc.log_text());
    assert_eq!(container.starts_since(since), 1, "Docker started it more than once");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1);
    assert_eq!(container.status(), "running");
    // Warm: under the worker's lease, straight to the container.
    let warm = envoy.get("/again", &[]);
    assert_eq!(warm.status, 200);
    assert_eq!(warm.header("x-wsgiproxy-cold-start-ms"), None);
    assert_eq!(warm.received().0["name"], "blog", "the container answered");
    let status = sidecar.status("blog");
    assert!(status["upstream"].as_str().unwrap().starts_with("127.0.0.1:"), "the published port: {status}");
    assert_eq!(status["started_by_sidecar"], true);
}

#[test]
fn an_idle_container_is_stopped_but_never_under_a_request_in_flight() {
    if !docker_available("an_idle_container_is_stopped_but_never_under_a_request_in_flight") {
        return;
    }
    let container = Container::published();
    let sidecar = Sidecar::start(&blog(&container, "idle_shutdown = 1"), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port);
    assert_eq!(envoy.get("/", &[]).status, 200);
    // A request in flight three times as long as idle_shutdown plus the lease.
    let port = envoy.port;
    let began = Instant::now();
    let slow = std::thread::spawn(move || request(port, "GET", "/__sleep/7000", &[], b""));
    while !slow.is_finished() {
        assert_eq!(container.status(), "running", "stopped {:?} into a request in flight", began.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 200, "the request in flight was cut: {}", slow.text());
    assert!(began.elapsed() >= Duration::from_secs(7));
    let ended = Instant::now();
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 0);
    // Then it stops, idle_shutdown after the request ended (plus the lease its end renewed).
    wait_until("the idle container stops", Duration::from_secs(20), || container.status() == "exited");
    eprintln!("stopped {:?} after the last request ended", ended.elapsed());
    assert!(ended.elapsed() >= Duration::from_secs(1));
    wait_until("the sidecar says stopped", Duration::from_secs(5), || sidecar.status("blog")["state"] == "stopped");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 1);
    // The next request starts it again.
    let again = envoy.get("/", &[]);
    assert_eq!(again.status, 200);
    assert!(again.header("x-wsgiproxy-cold-start-ms").is_some());
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 2);
}

/// Activity is any open request: a response streaming for far longer than the idle
/// time, then an upload doing the same, keep the container running; once they end,
/// it stops.
#[test]
fn a_streaming_response_or_upload_keeps_the_container_running() {
    if !docker_available("a_streaming_response_or_upload_keeps_the_container_running") {
        return;
    }
    let container = Container::published();
    let sidecar = Sidecar::start(&blog(&container, "idle_shutdown = 1"), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port);
    let port = envoy.port;
    let streaming = std::thread::spawn(move || request(port, "GET", "/__stream/30/200", &[], b""));
    let uploading = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let chunks: Vec<&[u8]> = vec![b"part\n"; 12];
        chunked_upload(port, "/upload", &[], &chunks, Duration::from_millis(500), &[])
    });
    let began = Instant::now();
    let mut started = false;
    while !(streaming.is_finished() && uploading.is_finished()) {
        // Once up, it stays up until both end.
        started |= sidecar.status("blog")["state"] == "ready";
        if started {
            assert_eq!(container.status(), "running", "stopped {:?} into an open request", began.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let streamed = streaming.join().unwrap();
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.text().lines().count(), 30, "the stream was cut: {}", streamed.text());
    let uploaded = uploading.join().unwrap();
    assert_eq!(uploaded.status, 200, "{}", uploaded.text());
    assert_eq!(uploaded.received().body(), "part\n".repeat(12));
    assert!(began.elapsed() >= Duration::from_secs(9));
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 0);
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1);
    wait_until("the idle container stops", Duration::from_secs(20), || container.status() == "exited");
}

#[test]
fn a_container_killed_by_hand_is_a_503_then_a_restart_then_a_back_off() {
    if !docker_available("a_container_killed_by_hand_is_a_503_then_a_restart_then_a_back_off") {
        return;
    }
    let container = Container::published();
    let sidecar = Sidecar::start(&blog(&container, ""), LEASE_MS);
    let envoy = spawn_envoy(sidecar.port);
    assert_eq!(envoy.get("/", &[]).status, 200);
    docker(&["kill", &container.name]);
    wait_until("the sidecar sees the crash", Duration::from_secs(10), || sidecar.status("blog")["state"] == "failed");
    assert!(sidecar.status("blog")["last_failure"].as_str().unwrap().contains("SIGKILL"), "{}", sidecar.status("blog"));
    // At most the first request after the crash is sent under the old lease (Envoy's
    // 503: the published port is closed); the next one starts the container again.
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = envoy.get("/", &[]);
        if r.status == 200 {
            break;
        }
        failures.push((r.status, r.header("x-wsgiproxy-error").map(str::to_string)));
        assert!(Instant::now() < deadline, "no recovery: {failures:?}");
    }
    assert!(failures.len() <= 1 && failures.iter().all(|(s, _)| *s == 503), "{failures:?}");
    assert_eq!(container.status(), "running");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_crashes_total{app=\"blog\"}"), 1);
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 2);
    // Killed again at once: a second failure in a row backs off, with the sidecar's
    // own 503 and a Retry-After, then the container starts again.
    docker(&["kill", &container.name]);
    wait_until("the sidecar sees the second crash", Duration::from_secs(10), || sidecar.status("blog")["state"] == "failed");
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = envoy.get("/", &[]);
        if r.status == 200 {
            break;
        }
        answers.push((r.status, r.header("x-wsgiproxy-error").map(str::to_string), r.header("retry-after").map(str::to_string)));
        assert!(Instant::now() < deadline, "no recovery: {answers:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answers.iter().any(|(s, e, retry)| *s == 503 && e.as_deref() == Some("app_unavailable") && retry.is_some()), "{answers:?}");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_crashes_total{app=\"blog\"}"), 2);
}

#[test]
fn a_restarted_sidecar_takes_over_the_container_it_started_instead_of_starting_another() {
    if !docker_available("a_restarted_sidecar_takes_over_the_container_it_started_instead_of_starting_another") {
        return;
    }
    let since = unix_now();
    let network = Network::create();
    let container = Container::on(&network);
    let dir = tempfile::tempdir().unwrap();
    let config = blog_on(&container, &network, "idle_shutdown = 2");
    let mut first = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    let r = ensure(&first);
    assert_eq!(r.status, 200, "{}", r.text());
    // Reached on its own address on the network.
    let upstream = r.header("x-wsgiproxy-upstream").unwrap().to_string();
    assert_eq!(upstream, container.address_on(&network));
    assert_eq!(get_at(&upstream, "/").received().0["name"], "blog");
    let started_at = container.started_at();
    first.proc.child.kill().unwrap(); // SIGKILL: nothing is stopped on the way out
    first.proc.child.wait().unwrap();
    assert_eq!(container.status(), "running", "a container outlives the sidecar's SIGKILL");
    let second = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    wait_until("the restarted sidecar takes the container over", Duration::from_secs(10), || second.status("blog")["state"] == "ready");
    assert_eq!(second.status("blog")["started_by_sidecar"], true);
    assert!(second.proc.log_text().contains("taking over the container an earlier run started"), "{}", second.proc.log_text());
    let r = ensure(&second);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-wsgiproxy-upstream"), Some(upstream.as_str()));
    assert_eq!(r.header("x-wsgiproxy-cold-start-ms"), None, "nothing was started");
    assert_eq!(container.started_at(), started_at, "started a second time");
    assert_eq!(second.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 0);
    // Still the sidecar's: stopped once idle.
    wait_until("the taken-over container stops once idle", Duration::from_secs(20), || container.status() == "exited");
    assert_eq!(container.starts_since(since), 1);
}

#[test]
fn a_restarted_sidecar_takes_over_a_container_it_paused_still_paused() {
    if !docker_available("a_restarted_sidecar_takes_over_a_container_it_paused_still_paused") {
        return;
    }
    let network = Network::create();
    let container = Container::on(&network);
    let dir = tempfile::tempdir().unwrap();
    let config = blog_on(&container, &network, "idle_shutdown = 1\non_idle = \"pause\"");
    let mut first = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    assert_eq!(ensure(&first).status, 200);
    let started_at = container.started_at();
    wait_until("the idle container is paused", Duration::from_secs(20), || container.status() == "paused");
    first.proc.child.kill().unwrap();
    first.proc.child.wait().unwrap();
    let mut second = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    wait_until("the restarted sidecar takes the paused container over", Duration::from_secs(10), || {
        second.status("blog")["state"] == "paused"
    });
    assert_eq!(container.status(), "paused", "taken over as it was");
    let r = ensure(&second);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(container.status(), "running");
    assert_eq!(container.started_at(), started_at, "thawed, not started again");
    assert_eq!(second.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 0);
    second.terminate();
    assert_eq!(container.status(), "exited", "still the sidecar's: stopped with it");
}

#[test]
fn a_container_the_sidecar_did_not_start_is_used_and_left_running() {
    if !docker_available("a_container_the_sidecar_did_not_start_is_used_and_left_running") {
        return;
    }
    let network = Network::create();
    let container = Container::on(&network);
    docker(&["start", &container.name]);
    let started_at = container.started_at();
    let mut sidecar = Sidecar::start(&blog_on(&container, &network, "idle_shutdown = 1"), LEASE_MS);
    let r = ensure(&sidecar);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-wsgiproxy-upstream"), Some(container.address_on(&network).as_str()));
    assert_eq!(sidecar.status("blog")["started_by_sidecar"], false);
    // Well past idle_shutdown, the lease and its grace: used, never stopped.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(container.status(), "running");
    assert_eq!(sidecar.status("blog")["state"], "ready");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 0);
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 0);
    // Nor when the sidecar stops.
    sidecar.terminate();
    assert_eq!(container.status(), "running");
    assert_eq!(container.started_at(), started_at);
}

/// Docker looks a container up by full id, then by name, then by id prefix: once no
/// container has the configured name, a name that looks like hex resolves to
/// whichever container's id begins with it. That one is never started, used or stopped.
#[test]
fn a_hex_name_no_container_has_any_more_never_reaches_the_container_whose_id_begins_so() {
    if !docker_available("a_hex_name_no_container_has_any_more_never_reaches_the_container_whose_id_begins_so") {
        return;
    }
    let since = unix_now();
    let network = Network::create();
    let other = Container::on(&network);
    let hex_name = other.inspect("{{.Id}}")[..10].to_string();
    let named = Container::create_named(&hex_name, &["--network", &network.name]);
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[apps.blog]\ncontainer = \"{hex_name}\"\nport = 8080\nnetwork = \"{}\"\nidle_shutdown = 1\n", network.name);
    let mut sidecar = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    // The container of that name goes (removed by hand, or recreated by compose).
    drop(named);
    let refused =
        format!("Docker has no container named \"{hex_name}\": it answered for the container {}", &other.inspect("{{.Id}}")[..12]);
    let r = ensure(&sidecar);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains(&refused), "{}", r.text());
    assert_eq!(other.status(), "created", "the other container was started");
    // Started by its owner: still not used (its address is not this app's), nor stopped.
    docker(&["start", &other.name]);
    let started_at = other.started_at();
    std::thread::sleep(Duration::from_millis(1200)); // past the first back-off
    let r = ensure(&sidecar);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains(&refused), "{}", r.text());
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 0);
    sidecar.terminate();
    assert_eq!(other.status(), "running", "the other container was stopped");
    assert_eq!(other.started_at(), started_at);
    assert_eq!(other.starts_since(since), 1, "only its owner's start");
    // Checked at start too: no container has the name.
    let out =
        Command::new(bin_path("wsgiproxy-sidecar")).arg("--config").arg(dir.path().join("sidecar.toml")).arg("--check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("config error: app \"blog\": field \"container\": {refused}")), "{err}");
}

/// A record of a start whose time the sidecar never learnt (it died between
/// `docker start` and the inspect after it) proves nothing: the container runs
/// now may have been stopped and started again by someone else since.
#[test]
fn a_start_the_sidecar_never_learnt_the_time_of_does_not_make_a_container_its_own() {
    if !docker_available("a_start_the_sidecar_never_learnt_the_time_of_does_not_make_a_container_its_own") {
        return;
    }
    let network = Network::create();
    let container = Container::on(&network);
    let dir = tempfile::tempdir().unwrap();
    let config = blog_on(&container, &network, "idle_shutdown = 1");
    let mut first = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    assert_eq!(ensure(&first).status, 200);
    first.proc.child.kill().unwrap();
    first.proc.child.wait().unwrap();
    // The state file as it stands when the sidecar dies before the inspect answers.
    let path = dir.path().join("state").join("children.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let records = state["containers"].as_array_mut().unwrap();
    assert_eq!(records.len(), 1, "{state}");
    records[0]["started_at"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    // Since: stopped, and started again by someone else.
    docker(&["stop", "-t", "1", &container.name]);
    docker(&["start", &container.name]);
    let started_at = container.started_at();
    let mut second = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    wait_until("the restarted sidecar looks at the container", Duration::from_secs(10), || {
        let log = second.proc.log_text();
        log.contains("cannot prove it started it") || log.contains("taking over")
    });
    let r = ensure(&second);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(second.status("blog")["started_by_sidecar"], false, "{}", second.proc.log_text());
    // Well past idle_shutdown, the lease and its grace: used, never stopped.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(container.status(), "running");
    assert_eq!(second.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 0);
    assert!(!second.proc.log_text().contains("taking over"), "{}", second.proc.log_text());
    assert_eq!(second.metric("wsgiproxy_sidecar_unproven_starts_total{app=\"blog\"}"), 1);
    second.terminate();
    assert_eq!(container.status(), "running", "stopped as the sidecar's own");
    assert_eq!(container.started_at(), started_at);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state["containers"], serde_json::json!([]), "the record that proves nothing is dropped");
}

/// The app now names another container: the one an earlier run started for it is
/// not taken over as the app's (its requests would go to the old container), but
/// stopped, as the sidecar's own that nothing configures any more.
#[test]
fn a_restarted_sidecar_does_not_take_over_a_container_its_app_no_longer_names() {
    if !docker_available("a_restarted_sidecar_does_not_take_over_a_container_its_app_no_longer_names") {
        return;
    }
    let network = Network::create();
    let old = Container::on(&network);
    let new = Container::on(&network);
    let dir = tempfile::tempdir().unwrap();
    let mut first = Sidecar::start_in(dir.path(), &blog_on(&old, &network, ""), LEASE_MS, &[]);
    assert_eq!(ensure(&first).status, 200);
    first.proc.child.kill().unwrap();
    first.proc.child.wait().unwrap();
    let second = Sidecar::start_in(dir.path(), &blog_on(&new, &network, ""), LEASE_MS, &[]);
    wait_until("the container of the old configuration is stopped", Duration::from_secs(20), || old.status() == "exited");
    assert_eq!(second.status("blog")["state"], "stopped", "{}", second.proc.log_text());
    assert!(second.proc.log_text().contains("no longer the one configured"), "{}", second.proc.log_text());
    let r = ensure(&second);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-wsgiproxy-upstream"), Some(new.address_on(&network).as_str()));
}

#[test]
fn an_idle_container_is_paused_and_the_next_request_thaws_it_on_the_same_address() {
    if !docker_available("an_idle_container_is_paused_and_the_next_request_thaws_it_on_the_same_address") {
        return;
    }
    let network = Network::create();
    let container = Container::on(&network);
    let mut sidecar = Sidecar::start(&blog_on(&container, &network, "idle_shutdown = 1\non_idle = \"pause\""), LEASE_MS);
    let r = ensure(&sidecar);
    assert_eq!(r.status, 200, "{}", r.text());
    let upstream = r.header("x-wsgiproxy-upstream").unwrap().to_string();
    let started_at = container.started_at();
    wait_until("the idle container is paused", Duration::from_secs(20), || container.status() == "paused");
    assert_eq!(sidecar.status("blog")["state"], "paused");
    let began = Instant::now();
    let r = ensure(&sidecar);
    eprintln!("thawed in {:?}", began.elapsed());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-wsgiproxy-upstream"), Some(upstream.as_str()), "the same address");
    assert!(r.header("x-wsgiproxy-cold-start-ms").is_some(), "the request waited for the thaw");
    assert_eq!(container.status(), "running");
    assert_eq!(container.started_at(), started_at, "thawed, not started again");
    assert_eq!(get_at(&upstream, "/").received().0["name"], "blog");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_pauses_total{app=\"blog\"}"), 1);
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_resumes_total{app=\"blog\"}"), 1);
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1);
    // Paused again, then the sidecar stops: it stops the paused container.
    wait_until("the idle container is paused again", Duration::from_secs(20), || container.status() == "paused");
    sidecar.terminate();
    assert_eq!(container.status(), "exited");
}

#[test]
fn a_healthcheck_decides_readiness_not_the_port() {
    if !docker_available("a_healthcheck_decides_readiness_not_the_port") {
        return;
    }
    let network = Network::create();
    let health = ["--health-cmd", "test -e /tmp/healthy", "--health-interval", "200ms", "--health-retries", "1000"];
    let container = Container::create(&[&["--network", &network.name][..], &health].concat());
    let never = Container::create(&[&["--network", &network.name][..], &health].concat());
    let config = format!(
        "{}\n[apps.never]\ncontainer = \"{}\"\nport = 8080\nnetwork = \"{}\"\nstart_timeout = 3\n",
        blog_on(&container, &network, ""),
        never.name,
        network.name
    );
    let sidecar = Sidecar::start(&config, LEASE_MS);
    let port = sidecar.port;
    let waiting = std::thread::spawn(move || request(port, "POST", "/v1/ensure/blog", &[], b""));
    // Its port answers long before it is healthy: the ensure waits on.
    wait_until("the container serves", Duration::from_secs(20), || {
        container.status() == "running" && try_get_at(&container.address_on(&network), "/").is_some_and(|r| r.status == 200)
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!waiting.is_finished(), "ready before its healthcheck passed");
    assert_eq!(sidecar.status("blog")["state"], "starting");
    docker(&["exec", &container.name, "/bin/sh", "-c", ": > /tmp/healthy"]);
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(container.inspect("{{.State.Health.Status}}"), "healthy");
    // Never healthy: a 503 at start_timeout saying so, and the container it started is killed.
    let r = request(sidecar.port, "POST", "/v1/ensure/never", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("did not become ready within 3s and was killed"), "{}", r.text());
    wait_until("the unhealthy container is gone", Duration::from_secs(10), || never.status() == "exited");
}

/// A slow start, ended by the test: the container's healthcheck passes only once the
/// test says so. A browser gets the waiting page after its wait; an API request made
/// during the same start is held until the container is healthy, then answered by it.
#[test]
fn a_browser_gets_the_waiting_page_while_an_api_request_waits_for_the_same_start() {
    if !docker_available("a_browser_gets_the_waiting_page_while_an_api_request_waits_for_the_same_start") {
        return;
    }
    let since = unix_now();
    let health = ["--health-cmd", "test -e /tmp/healthy", "--health-interval", "200ms", "--health-retries", "1000"];
    let container = Container::create(&[&["-p", "127.0.0.1::8080"][..], &health].concat());
    let sidecar = Sidecar::start(&blog(&container, ""), LEASE_MS);
    let envoy = spawn_envoy_with(sidecar.port, json!({ "waiting_page": { "after_ms": 500, "title": "Blog" } }));
    let port = envoy.port;
    let api = std::thread::spawn(move || request(port, "GET", "/api/posts", &[("accept", "application/json")], b""));
    wait_until("the container runs", Duration::from_secs(20), || container.status() == "running");

    let browser = [("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")];
    let page = request(port, "GET", "/posts", &browser, b"");
    assert_eq!((page.status, page.header("x-wsgiproxy-error")), (503, Some("app_starting")), "{}", page.text());
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.header("retry-after").is_some(), "crawlers and load balancers are told when to come back");
    assert!(page.text().contains("<title>Blog</title>") && page.text().contains("http-equiv=\"refresh\""), "{}", page.text());
    assert!(!api.is_finished(), "the API request is held, not answered with the page");

    docker(&["exec", &container.name, "/bin/sh", "-c", ": > /tmp/healthy"]);
    let answered = api.join().unwrap();
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert_eq!(answered.received().0["name"], "blog", "the container answered the held request");
    let reload = request(port, "GET", "/posts", &browser, b"");
    assert_eq!(reload.status, 200, "the page's reload reaches the container: {}", reload.text());
    assert_eq!(envoy.stat("wsgiproxy.spawn.waiting_pages"), 1);
    assert_eq!(container.starts_since(since), 1, "one start for both");
}

#[test]
fn an_unknown_container_or_a_configuration_that_does_not_fit_it_is_refused_at_start() {
    if !docker_available("an_unknown_container_or_a_configuration_that_does_not_fit_it_is_refused_at_start") {
        return;
    }
    let container = Container::create(&[]);
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(bin_path("wsgiproxy-sidecar")).arg("--config").arg(&path).arg("--check").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let missing = unique("missing");
    let (code, err) = check(&format!("[apps.blog]\ncontainer = \"{missing}\"\nport = 8080\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("config error: app \"blog\": field \"container\": Docker has no container \"{missing}\"")), "{err}");
    let (code, err) = check(&blog(&container, "network = \"elsewhere\""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("field \"network\": the container") && err.contains("is not attached to the network \"elsewhere\""), "{err}");
    let (code, err) = check(&blog(&container, ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("field \"port\"") && err.contains("does not publish 8080/tcp"), "{err}");
    let (code, err) = check(&blog(&container, "network = \"bridge\""));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_docker_daemon_that_is_down_is_a_prompt_503_and_a_warning() {
    // No Docker needed: the socket is one nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let config = "[apps.blog]\ncontainer = \"blog\"\nport = 8080\nnetwork = \"apps\"\n";
    let sidecar = Sidecar::start_in(dir.path(), config, LEASE_MS, &["--docker-socket", socket.to_str().unwrap()]);
    assert!(sidecar.proc.log_text().contains("cannot be reached"), "a warning at start: {}", sidecar.proc.log_text());
    let began = Instant::now();
    let r = ensure(&sidecar);
    assert!(began.elapsed() < Duration::from_secs(2), "took {:?}", began.elapsed());
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(r.text().contains("the Docker daemon cannot be reached at"), "{}", r.text());
}

/// The configuration users run: the container on its own address on a Docker network
/// that Envoy shares (Envoy on the host reaches the bridge address).
#[test]
fn through_envoy_to_the_containers_own_address() {
    if !docker_available("through_envoy_to_the_containers_own_address") {
        return;
    }
    let network = Network::create();
    let container = Container::on(&network);
    let sidecar = Sidecar::start(&blog_on(&container, &network, ""), LEASE_MS);
    // Not without the network allowed: the filter takes no address but loopback.
    let refused = spawn_envoy(sidecar.port).get("/hello", &[]);
    assert_eq!((refused.status, refused.header("x-wsgiproxy-error")), (503, Some("app_unavailable")), "{}", refused.text());
    let envoy = spawn_envoy_to(sidecar.port, &[network.subnet()]);
    let r = envoy.get("/hello", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.received().0["name"], "blog");
    assert_eq!(sidecar.status("blog")["upstream"], container.address_on(&network));
}
