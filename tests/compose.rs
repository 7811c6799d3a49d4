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

/// The stack's Prometheus on the host's loopback (the port Docker published).
fn prometheus() -> String {
    let port = compose_ok(&["port", "prometheus", "9090"]);
    let address = port.lines().next().unwrap_or_default().trim().to_string();
    assert!(address.starts_with("127.0.0.1:"), "prometheus' published port: {port:?}");
    address
}

/// A GET of Prometheus' HTTP API (`params` URL-encoded); its `data`.
fn prometheus_api(prometheus: &str, path: &str, params: &[(&str, &str)]) -> Json {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-G"]);
    for (name, value) in params {
        cmd.args(["--data-urlencode", &format!("{name}={value}")]);
    }
    let out = cmd.arg(format!("http://{prometheus}{path}")).output().unwrap();
    let answer: Json =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{path} {params:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(answer["status"], "success", "{path} {params:?}: {answer}");
    answer["data"].clone()
}

/// The series an instant query returns.
fn query(prometheus: &str, expr: &str) -> Vec<Json> {
    prometheus_api(prometheus, "/api/v1/query", &[("query", expr)])["result"].as_array().cloned().unwrap_or_default()
}

/// The alerts firing now, as Prometheus' own API lists them: `name {labels}`.
fn firing(prometheus: &str) -> Vec<String> {
    let alerts = prometheus_api(prometheus, "/api/v1/alerts", &[]);
    alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| format!("{} {}", a["labels"]["alertname"].as_str().unwrap_or_default(), a["labels"]))
        .collect()
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
    // Prometheus has scraped the counters the monitoring checks below watch, at 0,
    // before anything happens (an alert on a rise needs a sample before it).
    let prom = prometheus();
    for baseline in [
        r#"wsgiproxy_middleware_rejected_signature_bad{service="backend"} == 0"#,
        r#"wsgiproxy_middleware_stripped_headers{service="backend"} == 0"#,
        r#"wsgiproxy_sidecar_failures_total{app="unstartable",reason="start_error"} == 0"#,
    ] {
        wait_for(&format!("prometheus has {baseline}"), Duration::from_secs(60), || !query(&prom, baseline).is_empty());
    }
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

    // For the monitoring: the same signed request replayed 7 times, and a flood of 15
    // forged signatures (the claim changed after signing), from the edge's address.
    let url = "http://10.213.2.20:10001/signed";
    let mut args: Vec<&str> = vec!["exec", "-T", "edge", "curl", "-s", "--max-time", "20", "-w", "%{http_code} "];
    claim.iter().for_each(|h| args.extend(["-H", h.as_str()]));
    (0..7).for_each(|_| args.extend(["-o", "/dev/null", url]));
    let replays = compose_ok(&args);
    assert_eq!(replays.split_whitespace().filter(|s| *s == "403").count(), 7, "replays refused: {replays}");
    let forged: Vec<String> = signed_claim(3).into_iter().map(|h| h.replace("REMOTE_USER mallory", "REMOTE_USER root")).collect();
    let mut args: Vec<&str> = vec!["exec", "-T", "edge", "curl", "-s", "-o", "/dev/null", "--max-time", "20", "-w", "%{http_code} "];
    forged.iter().for_each(|h| args.extend(["-H", h.as_str()]));
    let flood = format!("{url}?[1-15]");
    args.push(&flood);
    let statuses = compose_ok(&args);
    assert_eq!(statuses.split_whitespace().filter(|s| *s == "403").count(), 15, "forged signatures refused: {statuses}");
    // A spawn that fails: an app whose command does not exist.
    let failed = compose(&[
        "exec",
        "-T",
        "sidecar",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "--max-time",
        "20",
        "http://127.0.0.1:9090/v1/ensure/unstartable",
    ]);
    assert_eq!(String::from_utf8_lossy(&failed.stdout), "503", "the unstartable app");

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

    // The monitoring: Prometheus' own API shows the alerts of what happened above active
    // (the stack's Prometheus evaluates every 2 s; none of these alerts waits a `for:`).
    let expected = ["WSGIProxySignaturesBad", "WSGIProxySignaturesReplayed", "WSGIProxyForgedHeaders", "WSGIProxyAppStartFailed"];
    let began = Instant::now();
    wait_for("the alerts fire", Duration::from_secs(60), || {
        let now = firing(&prom);
        expected.iter().all(|name| now.iter().any(|a| a.starts_with(&format!("{name} "))))
    });
    let now = firing(&prom);
    eprintln!("monitoring: alerts firing after {:?}: {now:#?}", began.elapsed());
    assert!(now.iter().any(|a| a.starts_with("WSGIProxyAppStartFailed ") && a.contains(r#""app":"unstartable""#)), "{now:#?}");
    assert!(now.iter().any(|a| a.starts_with("WSGIProxySignaturesBad ") && a.contains(r#""instance":"10.213.5.20:9102""#)), "{now:#?}");
    for quiet in [
        "WSGIProxyEnvoyDown",
        "WSGIProxyReplayStoreUnavailable",
        "WSGIProxyDockerUnreachable",
        "WSGIProxyConfigRejected",
        "WSGIProxyWasmVmFailing",
    ] {
        assert!(!now.iter().any(|a| a.starts_with(&format!("{quiet} "))), "{quiet} fired: {now:#?}");
    }
    // Every query of the dashboard returns data from the live Prometheus.
    let dashboard: Json =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("deploy/grafana/wsgiproxy.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in &exprs {
        wait_for(&format!("the dashboard's query has data: {expr}"), Duration::from_secs(30), || !query(&prom, expr).is_empty());
    }
    if let Ok(path) = std::env::var("WSGIPROXY_MONITORING_SCREENSHOT") {
        screenshot(&prom, &path);
    }

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

/// Prometheus' graph page with the key queries, taken by headless Chromium (Debian's
/// `chromium`) into `path` (a PNG): docs/img/prometheus.png is one.
fn screenshot(prometheus: &str, path: &str) {
    let graphs = [
        r#"sum by (role, reason) (rate(label_replace(label_replace({__name__=~"(envoy_dynamicmodulescustom_)?wsgiproxy_[a-z]+_rejected_.+"}, "role", "$2", "__name__", "(envoy_dynamicmodulescustom_)?wsgiproxy_([a-z]+)_rejected_(.+)"), "reason", "$3", "__name__", "(envoy_dynamicmodulescustom_)?wsgiproxy_([a-z]+)_rejected_(.+)")[5m:])) > 0"#,
        r#"ALERTS{alertstate="firing"}"#,
    ];
    let mut url = format!("http://{prometheus}/graph?");
    for (i, expr) in graphs.iter().enumerate() {
        let encoded: String =
            expr.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
        url.push_str(&format!("g{i}.expr={encoded}&g{i}.tab=0&g{i}.range_input=1m&"));
    }
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1500", "--virtual-time-budget=8000"])
        .arg(format!("--screenshot={path}"))
        .arg(&url)
        .output()
        .expect("chromium (Debian's package) for the screenshot");
    assert!(out.status.success() && std::path::Path::new(path).exists(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("monitoring: screenshot of {url} in {path}");
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
        // The stack's Envoys have a `metrics` listener more, for its Prometheus, and the
        // admin cluster it reaches: nothing of the roles' chains.
        for (list, name) in [("listeners", "metrics"), ("clusters", "envoy_admin")] {
            let items = stack_doc["static_resources"][list].as_sequence_mut().unwrap();
            let before = items.len();
            items.retain(|item| item["name"].as_str() != Some(name));
            assert_eq!(items.len(), before - 1, "{stack}: its {list} named {name}");
        }
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
