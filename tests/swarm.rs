//! Swarm service apps in a real single-node swarm: scaled from zero by the first
//! request through a real spawn-role Envoy, replicas served in turn, scaled back
//! when idle (never under an open request), taken over by a restarted sidecar,
//! shared by two sidecars behind two Envoys, and a start that cannot succeed
//! answered at once with Swarm's reason.
//!
//! The swarm: made by the first test when the daemon is not in swarm mode, and
//! left again by the last (`tests/support/swarm.rs`). The tests say SKIPPED and pass when `docker info` fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/docker.rs"]
mod docker_support;
mod support;
#[path = "support/swarm.rs"]
mod swarm_support;

use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use docker_support::*;
use serde_json::json;
use support::*;
use swarm_support::{swarm, SwarmGuard};

const LEASE_MS: u64 = 1500;
/// A service of the test's own, at 0 replicas: the echo answering on 8080 with
/// `"name": "slot-N"` (its task's slot), published in host mode; removed afterwards.
struct Service {
    name: String,
    _swarm: Arc<SwarmGuard>,
}

impl Service {
    fn create(swarm: &Arc<SwarmGuard>, options: &[&str]) -> Service {
        Service::create_running(swarm, options, "exec /echo --listen 0.0.0.0:8080 --name \"slot-$SLOT\"")
    }

    /// The same, its tasks running `script` (in /bin/sh).
    fn create_running(swarm: &Arc<SwarmGuard>, options: &[&str], script: &str) -> Service {
        let name = unique("svc").replace("wsgiproxy-test-", "wt-");
        let mut args = vec!["service", "create", "-d", "--name", &name, "--replicas", "0", "--label", "wsgiproxy.test=1"];
        args.extend_from_slice(&["--publish", "mode=host,target=8080", "--env", "SLOT={{.Task.Slot}}", "--entrypoint", "/bin/sh"]);
        args.extend_from_slice(&["--restart-delay", "1s", "--stop-grace-period", "2s"]);
        args.extend_from_slice(options);
        args.extend_from_slice(&[echo_image(), "-c", script]);
        docker(&args);
        Service { name, _swarm: Arc::clone(swarm) }
    }

    fn replicas(&self) -> u64 {
        docker(&["service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", &self.name]).parse().unwrap()
    }

    fn label(&self, key: &str) -> String {
        docker(&["service", "inspect", "-f", &format!("{{{{index .Spec.Labels \"{key}\"}}}}"), &self.name])
    }

    /// How many tasks Swarm created for it so far.
    fn tasks_created(&self) -> usize {
        docker(&["service", "ps", "-q", &self.name]).lines().count()
    }

    fn running_tasks(&self) -> usize {
        docker(&["service", "ps", "-q", "--filter", "desired-state=running", &self.name]).lines().count()
    }

    fn config(&self, extra: &str) -> String {
        format!("[apps.blog]\nservice = \"{}\"\nport = 8080\n{extra}\n", self.name)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        quietly(&["service", "rm", &self.name]);
    }
}

/// The spawn role for app "blog"; the node's address allowed when it is not loopback.
fn spawn_envoy(swarm: &SwarmGuard, sidecar_port: u16) -> Envoy {
    let networks: Vec<String> = if swarm.node_addr.is_loopback() { vec![] } else { vec![format!("{}/32", swarm.node_addr)] };
    let plugin = json!({
        "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar",
        "report_interval_ms": 200, "ensure_timeout_ms": 30000, "upstream_networks": networks
    });
    Envoy::start("envoy/spawn.yaml", &Overrides::default().cluster("wsgiproxy_sidecar", sidecar_port).plugin(plugin))
}

fn spawns(sidecar: &Sidecar) -> u64 {
    sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}")
}

#[test]
fn a_burst_of_first_requests_scales_the_service_up_once_and_idle_scales_it_down() {
    let Some(swarm) = swarm("a_burst_of_first_requests_scales_the_service_up_once_and_idle_scales_it_down") else { return };
    let service = Service::create(&swarm, &[]);
    let sidecar = Sidecar::start(&service.config("idle_shutdown = 2"), LEASE_MS);
    let envoy = spawn_envoy(&swarm, sidecar.port);
    let began = Instant::now();
    let answers = burst(envoy.port, 20, "/hello");
    eprintln!("20 first requests answered in {:?} (a scale-up from 0)", began.elapsed());
    let failed: Vec<_> = answers.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of 20 first requests failed: {failed:?}\n{}", failed.len(), sidecar.proc.log_text());
    assert_eq!(spawns(&sidecar), 1, "scaled up more than once");
    assert_eq!((service.replicas(), service.tasks_created()), (1, 1));
    assert_eq!(service.label("wsgiproxy.scaled-up"), "1");
    let warm = envoy.get("/again", &[]);
    assert_eq!(warm.status, 200);
    assert_eq!(warm.header("x-wsgiproxy-cold-start-ms"), None);
    let received = warm.received();
    assert_eq!(received.0["name"], "slot-1", "the task answered");
    // What any backend behind Envoy receives: none of Envoy's internal headers.
    for internal in ["x-envoy-original-dst-host", "x-envoy-external-address"] {
        assert_eq!(received.header(internal), None, "{internal} reached the app: {:?}", received.names());
    }
    let status = sidecar.status("blog");
    assert_eq!(status["started_by_sidecar"], true, "{status}");
    assert_eq!(status["tasks"].as_array().map(Vec::len), Some(1), "{status}");
    // Idle: scaled back to 0, then the next request scales it up again.
    let last = Instant::now();
    wait_until("the idle service is scaled down", Duration::from_secs(20), || service.replicas() == 0);
    eprintln!("scaled down {:?} after the last request", last.elapsed());
    assert!(last.elapsed() >= Duration::from_secs(2));
    wait_until("the sidecar says stopped", Duration::from_secs(5), || sidecar.status("blog")["state"] == "stopped");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 1);
    assert_eq!(service.label("wsgiproxy.scaled-up"), "", "no longer marked as scaled up");
    wait_until("its task is gone", Duration::from_secs(20), || service.running_tasks() == 0);
    let again = envoy.get("/", &[]);
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(again.header("x-wsgiproxy-cold-start-ms").is_some());
    assert_eq!(spawns(&sidecar), 2);
}

#[test]
fn two_replicas_both_serve_in_turn() {
    let Some(swarm) = swarm("two_replicas_both_serve_in_turn") else { return };
    let service = Service::create(&swarm, &[]);
    let sidecar = Sidecar::start(&service.config("replicas = 2"), LEASE_MS);
    let envoy = spawn_envoy(&swarm, sidecar.port);
    let first = envoy.get("/", &[]);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(service.replicas(), 2);
    assert_eq!(sidecar.status("blog")["tasks"].as_array().map(Vec::len), Some(2), "both ready before the first answer");
    // Each grant names the next task: as the worker's lease is renewed, requests move.
    let mut names = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while names.len() < 2 && Instant::now() < deadline {
        let r = envoy.get("/", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        names.insert(r.received().0["name"].as_str().unwrap().to_string());
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["slot-1", "slot-2"]);
    assert_eq!(spawns(&sidecar), 1);
}

/// Activity is any open request: a response streaming for far longer than the idle
/// time, then an upload doing the same, keep the service up; once they end, it goes.
#[test]
fn a_streaming_response_or_upload_keeps_the_service_up() {
    let Some(swarm) = swarm("a_streaming_response_or_upload_keeps_the_service_up") else { return };
    let service = Service::create(&swarm, &[]);
    let sidecar = Sidecar::start(&service.config("idle_shutdown = 1"), LEASE_MS);
    let envoy = spawn_envoy(&swarm, sidecar.port);
    let port = envoy.port;
    let streaming = thread::spawn(move || request(port, "GET", "/__stream/30/200", &[], b""));
    let uploading = thread::spawn(move || {
        thread::sleep(Duration::from_secs(3));
        let chunks: Vec<&[u8]> = vec![b"part\n"; 12];
        chunked_upload(port, "/upload", &[], &chunks, Duration::from_millis(500), &[])
    });
    let began = Instant::now();
    let mut started = false;
    while !(streaming.is_finished() && uploading.is_finished()) {
        // Once up, it stays up until both end.
        started |= sidecar.status("blog")["state"] == "ready";
        if started {
            assert_eq!(service.replicas(), 1, "scaled down {:?} into an open request", began.elapsed());
        }
        thread::sleep(Duration::from_millis(200));
    }
    let streamed = streaming.join().unwrap();
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.text().lines().count(), 30, "the stream was cut: {}", streamed.text());
    let uploaded = uploading.join().unwrap();
    assert_eq!(uploaded.status, 200, "{}", uploaded.text());
    assert_eq!(uploaded.received().body(), "part\n".repeat(12));
    assert!(began.elapsed() >= Duration::from_secs(9));
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 0);
    assert_eq!(spawns(&sidecar), 1);
    wait_until("the idle service is scaled down", Duration::from_secs(20), || service.replicas() == 0);
}

#[test]
fn a_sidecar_killed_and_started_again_takes_over_the_service_it_scaled_and_leaves_others_alone() {
    let Some(swarm) = swarm("a_sidecar_killed_and_started_again_takes_over_the_service_it_scaled_and_leaves_others_alone") else { return };
    let service = Service::create(&swarm, &[]);
    let theirs = Service::create(&swarm, &[]);
    docker(&["service", "scale", "-d", &format!("{}=1", theirs.name)]);
    let config =
        format!("{}\n[apps.theirs]\nservice = \"{}\"\nport = 8080\nidle_shutdown = 1\n", service.config("idle_shutdown = 3"), theirs.name);
    let dir = tempfile::tempdir().unwrap();
    let mut first = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    let envoy = spawn_envoy(&swarm, first.port);
    assert_eq!(envoy.get("/", &[]).status, 200);
    let theirs_ensured = request(first.port, "POST", "/v1/ensure/theirs", &[], b"");
    assert_eq!(theirs_ensured.status, 200, "{}", theirs_ensured.text());
    assert_eq!(first.status("theirs")["started_by_sidecar"], false, "scaled up by someone else");
    first.proc.child.kill().unwrap(); // SIGKILL: nothing is scaled down on the way out
    first.proc.child.wait().unwrap();
    assert_eq!(service.replicas(), 1);
    let second = Sidecar::start_in(dir.path(), &config, LEASE_MS, &[]);
    wait_until("the restarted sidecar takes the service over", Duration::from_secs(10), || second.status("blog")["state"] == "ready");
    assert!(second.proc.log_text().contains("taking over the service the sidecars scaled up to 1"), "{}", second.proc.log_text());
    // The default id is the same across restarts but for the port (a new one here:
    // the harness picks a free port; a deployment keeps its own).
    let host_part = |s: &Sidecar| sidecar_key(s).rsplit_once('-').unwrap().0.to_string();
    assert_eq!(host_part(&first), host_part(&second));
    assert_eq!(second.status("blog")["started_by_sidecar"], true);
    assert_eq!(second.status("theirs")["state"], "stopped", "not taken over: not scaled up by a sidecar");
    let r = request(second.port, "POST", "/v1/ensure/blog", &[], b"");
    assert_eq!((r.status, r.header("x-wsgiproxy-cold-start-ms")), (200, None), "{}", r.text());
    assert_eq!(spawns(&second), 0);
    assert_eq!(service.tasks_created(), 1, "a second task was started");
    // Still the sidecars': scaled down once idle — though the first run's stamp, under
    // its old id (its port), looks like a busy sidecar that died: the second leaves
    // the service up for it, looks again once that stamp is stale, and scales it down.
    // The other service is used, never scaled.
    assert_eq!(request(second.port, "POST", "/v1/ensure/theirs", &[], b"").status, 200);
    wait_until("the taken-over service is scaled down once idle", Duration::from_secs(20), || service.replicas() == 0);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(theirs.replicas(), 1, "a service the sidecar did not scale up was scaled down");
    assert_eq!(second.status("theirs")["started_by_sidecar"], false);
}

#[test]
fn a_service_that_cannot_start_is_a_prompt_503_saying_why() {
    let Some(swarm) = swarm("a_service_that_cannot_start_is_a_prompt_503_saying_why") else { return };
    let exits = Service::create_running(&swarm, &[], "exit 3");
    let no_node = Service::create(&swarm, &["--constraint", "node.labels.wsgiproxy-test-nowhere==1"]);
    let no_image = unique("svc").replace("wsgiproxy-test-", "wt-");
    docker(&[
        "service",
        "create",
        "-d",
        "--name",
        &no_image,
        "--replicas",
        "0",
        "--publish",
        "mode=host,target=8080",
        "wsgiproxy-test/none:1",
    ]);
    let config = format!(
        "[apps.blog]\nservice = \"{no_image}\"\nport = 8080\n[apps.exits]\nservice = \"{}\"\nport = 8080\n[apps.nonode]\nservice = \"{}\"\nport = 8080\n",
        exits.name, no_node.name
    );
    let sidecar = Sidecar::start(&config, LEASE_MS);
    let envoy = spawn_envoy(&swarm, sidecar.port);
    let began = Instant::now();
    let r = envoy.get("/", &[]);
    eprintln!("no such image: answered in {:?}", began.elapsed());
    assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (503, Some("app_unavailable")), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let failure = sidecar.status("blog")["last_failure"].as_str().unwrap_or_default().to_string();
    assert!(failure.contains("is rejected: No such image: wsgiproxy-test/none:1"), "{failure}");
    for (app, why) in [("exits", "is failed: task: non-zero exit (3)"), ("nonode", "stays pending: no suitable node")] {
        let began = Instant::now();
        let r = request(sidecar.port, "POST", &format!("/v1/ensure/{app}"), &[], b"");
        eprintln!("{app}: answered in {:?}", began.elapsed());
        assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains(why), "{app}: {}", r.text());
    }
    // Scaled back: no task keeps failing.
    wait_until("the services are scaled back to 0", Duration::from_secs(10), || exits.replicas() == 0 && no_node.replicas() == 0);
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_failures_total{app=\"exits\",reason=\"exited_before_ready\"}"), 1);
    quietly(&["service", "rm", &no_image]);
}

/// A slow scale-up (the app listens 3 s after its task starts): a browser gets the
/// waiting page after its wait; an API request made during the same start is held
/// until the task is ready, then answered by it.
#[test]
fn a_browser_gets_the_waiting_page_while_a_service_scales_up() {
    let Some(swarm) = swarm("a_browser_gets_the_waiting_page_while_a_service_scales_up") else { return };
    let service = Service::create_running(&swarm, &[], "exec /echo --listen 0.0.0.0:8080 --name \"slot-$SLOT\" --ready-delay-ms 3000");
    let sidecar = Sidecar::start(&service.config(""), LEASE_MS);
    let plugin = json!({
        "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar", "report_interval_ms": 200,
        "ensure_timeout_ms": 30000, "waiting_page": { "after_ms": 500, "title": "Blog" }
    });
    let envoy = Envoy::start("envoy/spawn.yaml", &Overrides::default().cluster("wsgiproxy_sidecar", sidecar.port).plugin(plugin));
    let port = envoy.port;
    let api = thread::spawn(move || request(port, "GET", "/api/posts", &[("accept", "application/json")], b""));
    let browser = [("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")];
    let page = request(port, "GET", "/posts", &browser, b"");
    assert_eq!((page.status, page.header("x-wsgiproxy-error")), (503, Some("app_starting")), "{}", page.text());
    assert!(page.text().contains("<title>Blog</title>") && page.header("retry-after").is_some(), "{}", page.text());
    let answered = api.join().unwrap();
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert_eq!(answered.received().0["name"], "slot-1", "the task answered the held request");
    assert_eq!(request(port, "GET", "/posts", &browser, b"").status, 200, "the page's reload reaches the task");
    assert_eq!(envoy.stat("wsgiproxy.spawn.waiting_pages"), 1);
    assert_eq!(spawns(&sidecar), 1, "one scale-up for both");
}

#[test]
fn the_daemon_unreachable_is_a_prompt_503() {
    // No Docker needed: the socket is one nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let sidecar = Sidecar::start_in(
        dir.path(),
        "[apps.blog]\nservice = \"blog\"\nport = 8080\n",
        LEASE_MS,
        &["--docker-socket", socket.to_str().unwrap()],
    );
    let envoy = Envoy::start(
        "envoy/spawn.yaml",
        &Overrides::default().cluster("wsgiproxy_sidecar", sidecar.port).plugin(json!({
            "role": "spawn", "app": "blog", "sidecar_cluster": "wsgiproxy_sidecar", "ensure_timeout_ms": 30000
        })),
    );
    let began = Instant::now();
    let r = envoy.get("/", &[]);
    assert!(began.elapsed() < Duration::from_secs(2), "took {:?}", began.elapsed());
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (503, Some("app_unavailable")), "{}", r.text());
    let direct = request(sidecar.port, "POST", "/v1/ensure/blog", &[], b"");
    assert!(direct.text().contains("the Docker daemon cannot be reached at"), "{}", direct.text());
    assert!(sidecar.metric("wsgiproxy_sidecar_docker_errors_total{kind=\"unreachable\"}") >= 1);
}

#[test]
fn a_configuration_that_does_not_fit_the_service_names_the_field() {
    let Some(swarm) = swarm("a_configuration_that_does_not_fit_the_service_names_the_field") else { return };
    let service = Service::create(&swarm, &[]);
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(bin_path("wsgiproxy-sidecar")).arg("--config").arg(&path).arg("--check").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let missing = unique("missing");
    let (code, err) = check(&format!("[apps.blog]\nservice = \"{missing}\"\nport = 8080\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("config error: app \"blog\": field \"service\": the swarm has no service \"{missing}\"")), "{err}");
    let (code, err) = check(&format!("[apps.blog]\nservice = \"{}\"\nport = 9999\n", service.name));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("field \"port\"") && err.contains("does not publish 9999/tcp in host mode"), "{err}");
    let (code, err) = check(&service.config("network = \"bridge\""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("field \"network\"") && err.contains("is not attached to the network \"bridge\""), "{err}");
    let (code, err) = check(&service.config(""));
    assert_eq!(code, Some(0), "{err}");
}

/// Two Envoy hosts, each with its sidecar, in front of one service: both cold at once
/// → one scale-up; one busy and one idle → not scaled down; both idle → scaled down.
#[test]
fn two_sidecars_behind_two_envoys_share_one_service() {
    let Some(swarm) = swarm("two_sidecars_behind_two_envoys_share_one_service") else { return };
    let service = Service::create(&swarm, &[]);
    let config = service.config("idle_shutdown = 2");
    let (a, b) = (Sidecar::start(&config, LEASE_MS), Sidecar::start(&config, LEASE_MS));
    let (envoy_a, envoy_b) = (spawn_envoy(&swarm, a.port), spawn_envoy(&swarm, b.port));
    let (port_a, port_b) = (envoy_a.port, envoy_b.port);
    let cold_a = thread::spawn(move || burst(port_a, 10, "/a"));
    let cold_b = thread::spawn(move || burst(port_b, 10, "/b"));
    for (name, answers) in [("a", cold_a.join().unwrap()), ("b", cold_b.join().unwrap())] {
        assert!(answers.iter().all(|(s, _)| *s == 200), "{name}: {answers:?}");
    }
    assert_eq!(spawns(&a) + spawns(&b), 1, "both scaled up:\n{}\n{}", a.proc.log_text(), b.proc.log_text());
    assert_eq!((service.replicas(), service.tasks_created()), (1, 1));
    // A busy, B idle for well past the idle time: B leaves the service up.
    let busy_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < busy_until {
        assert_eq!(envoy_a.get("/busy", &[]).status, 200);
        assert_eq!(service.replicas(), 1, "scaled down while sidecar A is busy:\n{}", b.proc.log_text());
        thread::sleep(Duration::from_millis(300));
    }
    assert!(b.proc.log_text().contains("leaving the service up: the sidecar"), "{}", b.proc.log_text());
    // Default ids: the host's name, its swarm node id and the port.
    let node = docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
    let (key_a, key_b) = (sidecar_key(&a), sidecar_key(&b));
    assert!(key_a.contains(&node[..12]) && key_a != key_b, "{key_a} {key_b}");
    // Both idle: scaled down (by whichever notices last).
    let idle_since = Instant::now();
    wait_until("the service is scaled down once both are idle", Duration::from_secs(20), || service.replicas() == 0);
    eprintln!("scaled down {:?} after the last request", idle_since.elapsed());
    assert!(idle_since.elapsed() >= Duration::from_secs(2));
}

/// B joins the service A scaled up and serves, and B's own start fails (here its
/// readiness probe fails from B's host until B's start timeout): B leaves the
/// service up under A's traffic, and says why. Once A is idle too, it goes.
#[test]
fn a_sidecar_whose_join_fails_leaves_the_service_another_serves_up() {
    let Some(swarm) = swarm("a_sidecar_whose_join_fails_leaves_the_service_another_serves_up") else { return };
    let service = Service::create(&swarm, &[]);
    let a = Sidecar::start(&service.config("idle_shutdown = 4"), LEASE_MS);
    let b = Sidecar::start(&service.config("idle_shutdown = 4\nstart_timeout = 3\nready_path = \"/__status/503\""), LEASE_MS);
    let envoy_a = spawn_envoy(&swarm, a.port);
    assert_eq!(envoy_a.get("/", &[]).status, 200);
    assert_eq!(spawns(&a), 1);
    let b_port = b.port;
    let joining = thread::spawn(move || request(b_port, "POST", "/v1/ensure/blog", &[], b""));
    let began = Instant::now();
    while !joining.is_finished() || began.elapsed() < Duration::from_secs(6) {
        let r = envoy_a.get("/a", &[]);
        assert_eq!(r.status, 200, "A's request failed {:?} after B joined: {}\n{}", began.elapsed(), r.text(), b.proc.log_text());
        assert_eq!(service.replicas(), 1, "B scaled the service down under A's traffic:\n{}", b.proc.log_text());
        thread::sleep(Duration::from_millis(200));
    }
    let joined = joining.join().unwrap();
    assert_eq!(joined.status, 503, "{}", joined.text());
    assert!(joined.text().contains("did not become ready within 3s"), "{}", joined.text());
    assert!(b.proc.log_text().contains("leaving the service up: the sidecar"), "{}", b.proc.log_text());
    assert_eq!(service.label(&format!("wsgiproxy.activity.{}", sidecar_key(&b))), "", "B's stamp removed as it left");
    assert_eq!((spawns(&a), spawns(&b)), (1, 0));
    // A idle: nobody else busy, scaled down.
    wait_until("the service is scaled down once A is idle", Duration::from_secs(30), || service.replicas() == 0);
}

/// The label key part of a sidecar's id, from its log.
fn sidecar_key(sidecar: &Sidecar) -> String {
    let log = sidecar.proc.log_text();
    let line = log.lines().find(|l| l.contains("its activity stamp: the label wsgiproxy.activity.")).unwrap_or_else(|| panic!("{log}"));
    line.rsplit("wsgiproxy.activity.").next().unwrap().trim_end_matches(')').trim().to_string()
}

/// A sidecar whose service another sidecar scaled down (B, with a shorter idle
/// time, found A's stamp older than its window) notices at the next read and stops
/// routing to the stopping task at once: A's next request scales it up again.
#[test]
fn a_sidecar_notices_at_once_that_another_scaled_the_service_down() {
    let Some(swarm) = swarm("a_sidecar_notices_at_once_that_another_scaled_the_service_down") else { return };
    let service = Service::create(&swarm, &[]);
    let a = Sidecar::start(&service.config("idle_shutdown = 120"), LEASE_MS);
    let b = Sidecar::start(&service.config("idle_shutdown = 1"), LEASE_MS);
    let envoy_a = spawn_envoy(&swarm, a.port);
    assert_eq!(envoy_a.get("/", &[]).status, 200);
    // A's stamp (its scale-up) gets older than B's busy window (1 s idle, 0.25 s
    // throttle, 1 s poll): B, once idle, does not wait for A.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(request(b.port, "POST", "/v1/ensure/blog", &[], b"").status, 200);
    assert_eq!(a.status("blog")["state"], "ready");
    // B idle for its idle time and A's stamp older than B's window: B scales it down.
    wait_until("B scales the service down", Duration::from_secs(20), || service.replicas() == 0);
    let scaled_down = Instant::now();
    wait_until("A notices", Duration::from_secs(10), || a.status("blog")["state"] != "ready");
    let noticed = scaled_down.elapsed();
    eprintln!("A noticed the scale-down {noticed:?} after it");
    assert!(noticed < Duration::from_millis(2500), "A kept the stopped service for {noticed:?}:\n{}", a.proc.log_text());
    assert!(a.proc.log_text().contains("was scaled down to 0 (by another sidecar?)"), "{}", a.proc.log_text());
    let again = envoy_a.get("/again", &[]);
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(again.header("x-wsgiproxy-cold-start-ms").is_some(), "scaled up again");
    assert_eq!(service.replicas(), 1);
}
