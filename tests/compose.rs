//! The compose stack (docker-compose.yml) brought up for real, with the image
//! scripts/compose.sh builds: requests from the client container across real
//! container addresses, then faults across containers under load. Everything is
//! torn down after, and the test checks that nothing is left.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::*;
use wsgiproxy_protocol::signature::{format_date, sign, Algorithm, KeyRing, SignedParts};

/// Its own project name: the test never touches a stack a user brought up.
const PROJECT: &str = "wsgiproxy-test";
/// The signing key the edge and the backend share in the test's stack.
const KEY: &str = "compose-test-key-0123456789abcdef";

fn compose_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/compose.sh"))
        .args(args)
        .current_dir(repo_root())
        .env("COMPOSE_PROJECT_NAME", PROJECT)
        // The image is assembled from what scripts/test.sh built (cargo's lock is ours).
        .env("WSGIPROXY_COMPOSE_PROFILE", "debug")
        .env("WSGIPROXY_COMPOSE_SKIP_CARGO", "1")
        .env("CARGO_TARGET_DIR", target_dir())
        .env("WSGIPROXY_KEY_K1", KEY);
    cmd
}

fn compose(args: &[&str]) -> Output {
    compose_command(args).stdin(Stdio::null()).output().unwrap()
}

fn compose_ok(args: &[&str]) -> String {
    let out = compose(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "compose {args:?} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// What this project left in the engine: containers, networks, volumes.
fn leftovers() -> Vec<String> {
    let label = format!("label=com.docker.compose.project={PROJECT}");
    let mut found = Vec::new();
    for what in [&["ps", "-a"][..], &["network", "ls"], &["volume", "ls"]] {
        let out = Command::new("docker").args(what).args(["-q", "--filter", &label]).output().unwrap();
        assert!(out.status.success(), "docker {what:?}: {}", String::from_utf8_lossy(&out.stderr));
        found.extend(String::from_utf8_lossy(&out.stdout).lines().map(|id| format!("{} {id}", what[0])));
    }
    found
}

/// The stack, taken down when dropped (also when the test fails half-way).
struct Stack;

impl Stack {
    fn up() -> Stack {
        let docker = Command::new("docker").arg("version").output();
        assert!(docker.is_ok_and(|o| o.status.success()), "this test needs a Docker engine and Compose (docker-compose or docker compose)");
        // Built artifacts the image is assembled from (with how to build them).
        let _ = (wasm_path(), bin_path("wsgiproxy-echo"), bin_path("wsgiproxy-sidecar"), envoy_bin());
        let _ = compose(&["down", "--timeout", "1"]);
        let stack = Stack;
        compose_ok(&["up"]);
        stack
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = compose(&["down", "--timeout", "1"]);
    }
}

/// One request with curl from the client container (`--raw`: the body as sent).
fn from_client(url: &str, headers: &[&str]) -> Response {
    let mut args = vec!["exec", "-T", "client", "curl", "-sS", "-i", "--raw", "--max-time", "20"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    let out = compose_ok(&args);
    read_response(&mut out.as_bytes())
}

/// The headers of a request to the backend (`GET /signed`, Host backend:10001) that
/// claims user `mallory`, signed with the stack's key as the edge would sign it: for
/// the backend's address on the edge network (it binds signatures to its endpoint).
fn signed_claim(nonce: u8) -> Vec<String> {
    let ring = KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), KEY.as_bytes().to_vec())]).unwrap();
    let date = format_date(std::time::SystemTime::now());
    let headers: Vec<(&str, &[u8])> = vec![
        ("x-wsgiproxy-endpoint", b"10.213.2.20:10001"),
        ("x-wsgiproxy-version", b"0.1"),
        ("x-wsgiproxy-str-0", b"REMOTE_USER mallory"),
    ];
    let parts = SignedParts {
        method: b"GET",
        authority: b"backend:10001",
        path: b"/signed",
        date: date.as_bytes(),
        protocol_headers: headers.clone(),
    };
    let signature = sign(&ring, &[nonce; 16], &parts).unwrap();
    let mut all: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v))).collect();
    all.extend([format!("Date: {date}"), format!("X-WSGIProxy-Signature: {signature}"), "Host: backend:10001".into()]);
    all
}

/// A GET from inside a container to its own loopback (admin and control APIs).
fn inside(service: &str, url: &str) -> String {
    compose_ok(&["exec", "-T", service, "curl", "-sS", "--max-time", "10", url])
}

fn counter(service: &str, name: &str) -> u64 {
    inside(service, &format!("http://127.0.0.1:9901/stats?filter={name}"))
        .lines()
        .find_map(|l| l.strip_prefix(&format!("wasmcustom.{name}: ")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn sidecar_app() -> Json {
    serde_json::from_str::<Json>(&inside("sidecar", "http://127.0.0.1:9090/v1/status")).unwrap()["apps"]["blog"].clone()
}

fn container_ip(service: &str) -> String {
    let id = compose_ok(&["ps", "-q", service]).trim().to_string();
    let out =
        Command::new("docker").args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", &id]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One answer of the load: when the line arrived, the status, curl's time for the
/// request, and the cold-start header.
#[derive(Debug, Clone)]
struct Answer {
    at: Duration,
    status: u16,
    took: Duration,
    cold_start: bool,
    /// x-wsgiproxy-error, when the filter answered itself.
    error: String,
}

/// Requests one after another from the client container, each answer time-stamped
/// here as it arrives, until stopped.
struct Load {
    child: Child,
    answers: Arc<Mutex<Vec<Answer>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    began: Instant,
}

impl Load {
    fn start(url: &str) -> Load {
        let began = Instant::now();
        let glob = format!("{url}/[1-1000000]");
        // `timeout` only as a backstop: stop() ends it (curl dies writing to the
        // closed pipe), line-buffered so that each answer comes as it is received.
        let mut child = compose_command(&[
            "exec",
            "-T",
            "client",
            "timeout",
            "300",
            "stdbuf",
            "-oL",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-w",
            "%{http_code} %{time_total} %header{x-wsgiproxy-cold-start-ms} %header{x-wsgiproxy-error}\\n",
            &glob,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: stop() ends the script and the Compose client it runs.
        .process_group(0)
        .spawn()
        .unwrap();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&answers);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut fields = line.split(' ');
                let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let took = fields.next().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
                let cold_start = fields.next().is_some_and(|h| !h.trim().is_empty());
                let error = fields.next().unwrap_or_default().trim().to_string();
                into.lock().unwrap().push(Answer { at: began.elapsed(), status, took: Duration::from_secs_f64(took), cold_start, error });
            }
        });
        let load = Load { child, answers, reader: Some(reader), began };
        load.wait_for("the load runs", Duration::from_secs(30), |answers| answers.iter().filter(|a| a.status == 200).count() >= 50);
        load
    }

    fn now(&self) -> Duration {
        self.began.elapsed()
    }

    fn wait_for(&self, what: &str, limit: Duration, mut ok: impl FnMut(&[Answer]) -> bool) {
        wait_for(what, limit, || ok(&self.answers.lock().unwrap()));
    }

    /// Waits until `count` answers in a row after `from` are 200s.
    fn wait_for_recovery(&self, from: Duration, limit: Duration) {
        self.wait_for("the service recovers", limit, |answers| {
            let after: Vec<_> = answers.iter().filter(|a| a.at >= from).collect();
            after.len() >= 20 && after.iter().rev().take(20).all(|a| a.status == 200)
        });
    }

    fn stop(mut self) -> Vec<Answer> {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.answers.lock().unwrap().clone()
    }
}

/// How many failed, by status and x-wsgiproxy-error (empty: Envoy's own answer).
fn kinds(failures: &[Answer]) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for a in failures {
        *kinds.entry(format!("{} {}", a.status, a.error).trim().to_string()).or_insert(0) += 1;
    }
    kinds
}

/// Runs of the same status: `200x2168 2.4s-6.2s, ...`.
fn timeline(answers: &[Answer]) -> String {
    let mut runs: Vec<(u16, usize, Duration, Duration)> = Vec::new();
    for a in answers {
        match runs.last_mut() {
            Some((status, n, _, last)) if *status == a.status => {
                *n += 1;
                *last = a.at;
            }
            _ => runs.push((a.status, 1, a.at, a.at)),
        }
    }
    runs.iter().map(|(s, n, from, to)| format!("{s}x{n} {from:.1?}-{to:.1?}")).collect::<Vec<_>>().join(", ")
}

/// The failures after `from`, until the first success after them, and when that came.
fn outage(answers: &[Answer], from: Duration) -> (Vec<Answer>, Option<Duration>) {
    let mut failures = Vec::new();
    for a in answers.iter().filter(|a| a.at >= from) {
        if a.status == 200 {
            if !failures.is_empty() {
                return (failures, Some(a.at));
            }
        } else {
            failures.push(a.clone());
        }
    }
    (failures, None)
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_stack_serves_across_containers_and_survives_faults() {
    let stack = Stack::up();
    let client_ip = container_ip("client");
    assert!(client_ip.starts_with("10.213.1."), "the client is on the client network only: {client_ip}");

    // Through the edge: the backend trusts the edge's address and signature, and the
    // app receives the client's address and the user.
    let r = from_client("http://edge:10000/hello?x=1", &["X-Demo-User: alice", "X-Forwarded-For: 6.6.6.6"]);
    let got = r.received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"));
    assert_eq!(got.header("x-forwarded-for"), Some(client_ip.clone()), "the client's own address, not its claim");
    assert_eq!(got.header("x-forwarded-host").as_deref(), Some("edge:10000"));
    assert_eq!(got.uri(), "/hello?x=1");
    // (The filter flushes its counters every 250 ms.)
    wait_for("the backend counts a trusted request", Duration::from_secs(5), || counter("backend", "wsgiproxy.middleware.trusted") == 1);
    assert_eq!(counter("backend", "wsgiproxy.middleware.verified"), 1);

    // From the client network straight to the backend: not trusted, whatever it claims.
    let r = from_client(
        "http://backend:10001/hello",
        &["X-WSGIProxy-Str-0: REMOTE_USER root", "X-Forwarded-For: 10.213.2.10", "X-Forwarded-Server: bank.example", "X-Remote-User: root"],
    );
    let got = r.received();
    assert_eq!(got.header("x-remote-user"), None);
    assert_eq!(got.header("x-forwarded-for"), Some(client_ip.clone()));
    assert_eq!(got.header("x-forwarded-host").as_deref(), Some("backend:10001"));
    wait_for("the backend counts an untrusted request", Duration::from_secs(5), || {
        counter("backend", "wsgiproxy.middleware.untrusted") == 1
    });
    assert_eq!(counter("backend", "wsgiproxy.middleware.trusted"), 1);

    // A correctly signed request is believed from the edge's address only: sent from
    // the client network it is not; sent from inside the edge's container (its
    // address on the edge network, 10.213.2.10) it is.
    let claim = signed_claim(1);
    let mut args: Vec<&str> = vec!["exec", "-T", "client", "curl", "-sS", "--max-time", "20"];
    claim.iter().for_each(|h| args.extend(["-H", h.as_str()]));
    args.push("http://backend:10001/signed");
    let got: Json = serde_json::from_str(&compose_ok(&args)).unwrap();
    assert!(!got["headers"].to_string().contains("mallory"), "believed from the client network: {got}");
    wait_for("the backend counts it untrusted", Duration::from_secs(5), || counter("backend", "wsgiproxy.middleware.untrusted") == 2);
    let claim = signed_claim(2);
    let mut args: Vec<&str> = vec!["exec", "-T", "edge", "curl", "-sS", "--max-time", "20"];
    claim.iter().for_each(|h| args.extend(["-H", h.as_str()]));
    args.push("http://10.213.2.20:10001/signed");
    let got: Json = serde_json::from_str(&compose_ok(&args)).unwrap();
    assert!(got["headers"].to_string().contains(r#"["x-remote-user","mallory"]"#), "not believed from the edge's address: {got}");

    // The exact proxy: the request as sent, to the allowed destination only.
    let r = from_client("http://exact:10003/e?q=1", &["Host: echo:8080", "X-Probe: 1"]);
    let got = r.received();
    assert_eq!(got.names(), ["host", "user-agent", "accept", "x-probe"], "nothing added");
    assert_eq!(got.uri(), "/e?q=1");
    let r = from_client("http://exact:10003/", &["Host: backend:10001"]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-wsgiproxy-error"), Some("destination_not_allowed"));

    // Spawn: a cold start, a warm request, then the idle stop (idle_shutdown = 5 s).
    let first = from_client("http://spawn:10002/first", &[]);
    assert!(first.header("x-wsgiproxy-cold-start-ms").is_some(), "{:?}", first.headers);
    assert_eq!(first.received().0["name"], "blog");
    let warm = from_client("http://spawn:10002/warm", &[]);
    assert_eq!(warm.header("x-wsgiproxy-cold-start-ms"), None);
    assert_eq!(sidecar_app()["state"], "ready");
    let idle_from = Instant::now();
    wait_for("the idle app stops", Duration::from_secs(30), || sidecar_app()["state"] == "stopped");
    eprintln!("spawn: the idle app stopped {:?} after its last request", idle_from.elapsed());
    let again = from_client("http://spawn:10002/again", &[]);
    assert!(again.header("x-wsgiproxy-cold-start-ms").is_some(), "started again on demand");

    // The on-demand container: `up` created it and left it stopped; the first request
    // through the spawn Envoy's port 10005 has the sidecar start it (through the Docker
    // socket), and reaches it on its own address on the ondemand network; idle, it is
    // stopped again, and the next request starts it again.
    let container = format!("{PROJECT}-blog-container");
    let state = || {
        let out = Command::new("docker").args(["inspect", "-f", "{{.State.Status}}", &container]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(state(), "created", "compose started the on-demand container");
    let first = from_client("http://spawn:10005/first", &[]);
    assert!(first.header("x-wsgiproxy-cold-start-ms").is_some(), "{:?}", first.headers);
    let got = first.received();
    assert_eq!(got.0["name"], "blog-container");
    assert_eq!(got.header("x-envoy-original-dst-host"), None, "the destination is filter state, not a header");
    // The spawn Envoy's `spawned` cluster has a host there (its admin API, on the
    // loopback the sidecar's container shares).
    let clusters = inside("sidecar", "http://127.0.0.1:9901/clusters");
    assert!(
        clusters.lines().any(|l| l.starts_with("spawned::10.213.4.") && l.contains("::cx_total::")),
        "reached on its address on the ondemand network:\n{clusters}"
    );
    assert_eq!(state(), "running");
    let warm = from_client("http://spawn:10005/warm", &[]);
    assert_eq!((warm.status, warm.header("x-wsgiproxy-cold-start-ms")), (200, None));
    wait_for("the idle container stops", Duration::from_secs(30), || state() == "exited");
    let again = from_client("http://spawn:10005/again", &[]);
    assert!(again.header("x-wsgiproxy-cold-start-ms").is_some(), "started again on demand: {:?}", again.headers);
    assert_eq!(again.received().0["name"], "blog-container");

    // Fault 1: the backend Envoy's container restarts under load through the edge.
    // The edge retries (connect failures while the backend is down, 425
    // signed_before_restart for about 3 s after it starts), signing each attempt anew:
    // requests wait, and clients see no refusal. A request that outlasts the edge's
    // retries (10, about 7 s) while the backend is down gets the edge's 503.
    let load = Load::start("http://edge:10000/load");
    let stopped_at = load.now();
    compose_ok(&["stop", "--timeout", "1", "backend"]);
    let starting_at = load.now();
    compose_ok(&["start", "backend"]);
    let started_at = load.now();
    load.wait_for("the backend serves again", Duration::from_secs(30), |answers| {
        answers.iter().filter(|a| a.at >= started_at).count() >= 20
    });
    std::thread::sleep(Duration::from_secs(4));
    let answers = load.stop();
    eprintln!("backend stopped at {stopped_at:.1?}, started at {starting_at:.1?}-{started_at:.1?}: {}", timeline(&answers));
    let failures: Vec<Answer> = answers.iter().filter(|a| a.at >= stopped_at && a.status != 200).cloned().collect();
    let slowest = answers.iter().filter(|a| a.at >= stopped_at).map(|a| a.took).max().unwrap_or_default();
    eprintln!(
        "backend restarted: {} requests, {} failed ({:?}), slowest answer {slowest:?}",
        answers.len(),
        failures.len(),
        kinds(&failures)
    );
    assert!(
        !failures.iter().any(|a| a.status == 425 || !a.error.is_empty()),
        "no protocol refusal reaches clients: {:?}",
        kinds(&failures)
    );
    assert!(
        failures.iter().all(|a| a.status == 503 && a.took >= Duration::from_secs(3)),
        "only a request that outlasted the retries fails: {:?}",
        kinds(&failures)
    );

    // Fault 2: the sidecar's container is killed under load through the spawn Envoy.
    let load = Load::start("http://spawn:10002/load");
    let app = sidecar_app();
    assert_eq!(app["state"], "ready", "{app}");
    let port = app["port"].as_u64().unwrap();
    let killed_at = load.now();
    compose_ok(&["kill", "sidecar"]);
    // Its app went with it: nothing listens on the app's port in the shared namespace.
    let probe = compose(&["exec", "-T", "spawn", "curl", "-s", "--max-time", "2", &format!("http://127.0.0.1:{port}/")]);
    assert!(!probe.status.success(), "the app outlived its sidecar's container");
    load.wait_for("requests fail", Duration::from_secs(30), |answers| answers.last().is_some_and(|a| a.status != 200));
    std::thread::sleep(Duration::from_secs(2));
    compose_ok(&["start", "sidecar"]);
    let started_at = load.now();
    load.wait_for_recovery(started_at, Duration::from_secs(30));
    let answers = load.stop();
    eprintln!("sidecar killed at {killed_at:.1?}, started by {started_at:.1?}: {}", timeline(&answers));
    let (failures, back) = outage(&answers, killed_at);
    let back = back.unwrap();
    let first_after = answers.iter().find(|a| a.at >= back).unwrap();
    eprintln!(
        "sidecar killed: {} requests, {} failed ({:?}); first 200 {:?} after `start` returned, cold start: {}",
        answers.len(),
        failures.len(),
        kinds(&failures),
        back.saturating_sub(started_at),
        first_after.cold_start
    );
    assert!(failures.iter().all(|a| a.status == 503), "{}", timeline(&answers));
    assert!(first_after.cold_start, "the first request served after the restart cold-started the app");

    drop(stack);
    let left = leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A config with what the stack may change taken out: addresses, the .wasm's path,
/// how a cluster finds its endpoints, and the plugin settings that name places
/// (href, trust_ips, allow_hosts, app, upstream_networks).
fn filter_chains_of(file: &str) -> serde_yaml::Value {
    use serde_yaml::Value as Yaml;
    fn walk(v: &mut Yaml) {
        match v {
            Yaml::Mapping(m) => {
                for (k, v) in m.iter_mut() {
                    match k.as_str() {
                        Some("socket_address" | "filename") => *v = Yaml::Null,
                        Some("type") if v.as_str() == Some("STRICT_DNS") => *v = Yaml::from("STATIC"),
                        Some("value") if v.as_str().is_some_and(|s| s.trim_start().starts_with('{')) => {
                            let mut config: Json = serde_json::from_str(v.as_str().unwrap()).unwrap();
                            for place in ["href", "trust_ips", "allow_hosts", "app", "upstream_networks"] {
                                config.as_object_mut().unwrap().remove(place);
                            }
                            *v = Yaml::from(config.to_string());
                        }
                        _ => walk(v),
                    }
                }
            }
            Yaml::Sequence(s) => s.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut doc: Yaml = serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(file)).unwrap()).unwrap();
    walk(&mut doc);
    doc
}

#[test]
fn the_stack_runs_the_shipped_configs_with_its_own_addresses() {
    for (stack, shipped) in [
        ("deploy/compose/edge.yaml", "envoy/app.yaml"),
        ("deploy/compose/backend.yaml", "envoy/middleware.yaml"),
        ("deploy/compose/spawn.yaml", "envoy/spawn.yaml"),
        ("deploy/compose/exact.yaml", "envoy/exact.yaml"),
    ] {
        let mut stack_doc = filter_chains_of(stack);
        let shipped_doc = filter_chains_of(shipped);
        if stack.ends_with("spawn.yaml") {
            // The stack's spawn Envoy has one listener more, for the on-demand
            // container: the shipped chain, for another app on its own network.
            let listeners = stack_doc["static_resources"]["listeners"].as_sequence_mut().unwrap();
            let extra = listeners.pop().unwrap();
            assert_eq!(extra["name"].as_str(), Some("on-demand-container"));
            let mut chains = extra["filter_chains"].clone();
            let manager = &mut chains[0]["filters"][1]["typed_config"]["stat_prefix"];
            assert_eq!(manager.as_str(), Some("on_demand_container"));
            *manager = "ingress".into();
            assert!(chains == shipped_doc["static_resources"]["listeners"][0]["filter_chains"], "the on-demand container's chain");
        }
        assert!(stack_doc == shipped_doc, "{stack} differs from {shipped} beyond addresses");
    }
}
