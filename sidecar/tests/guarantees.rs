//! The sidecar's guarantees, each with real processes and real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The echo app built beside this test (`…/debug/deps/guarantees-…` → `…/debug/`),
/// wherever the target directory is (CARGO_TARGET_DIR included).
fn echo_bin() -> String {
    let built = || {
        let exe = std::env::current_exe().unwrap();
        exe.parent().and_then(|deps| deps.parent()).unwrap().join("wsgiproxy-echo")
    };
    let path = std::env::var_os("WSGIPROXY_ECHO_BIN").map(PathBuf::from).unwrap_or_else(built);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path.to_string_lossy().into_owned()
}

/// A base port for allocation, apart from other tests' (they run in parallel).
fn first_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    20000 + (std::process::id() % 50) as u16 * 100 + NEXT.fetch_add(1, Ordering::Relaxed) * 7
}

/// The sidecar's lease (its minimum).
const LEASE_MS: u64 = 1000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Sidecar {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn start(config: &str) -> Sidecar {
        Self::start_in(tempfile::tempdir().unwrap(), config)
    }

    fn start_in(dir: tempfile::TempDir, config: &str) -> Sidecar {
        // Tests run side by side: each sidecar allocates from its own range.
        Self::launch(dir, config, first_port())
    }

    /// The command line of a sidecar on `dir` (its state directory inside), listening on `port`.
    fn command(dir: &std::path::Path, config: &str, port: u16, first_port: u16) -> Command {
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, config.replace("ECHO", &echo_bin())).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsgiproxy-sidecar"));
        command
            .arg("--config")
            .arg(&path)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--lease-ms", &LEASE_MS.to_string()])
            .args(["--first-port", &first_port.to_string()])
            .arg("--state-dir")
            .arg(dir.join("state"));
        command
    }

    fn launch(dir: tempfile::TempDir, config: &str, first_port: u16) -> Sidecar {
        let port = free_port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("sidecar.log")).unwrap();
        let child = Self::command(dir.path(), config, port, first_port).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let sidecar = Sidecar { child, port, dir };
        wait_until("the control API listens", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        sidecar
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
        http(self.port, method, path, headers)
    }

    fn ensure(&self, app: &str) -> (u16, Vec<(String, String)>, String) {
        self.call("POST", &format!("/v1/ensure/{app}"), &[])
    }

    fn status(&self, app: &str) -> serde_json::Value {
        let (_, _, body) = self.call("GET", "/v1/status", &[]);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["apps"][app].clone()
    }

    fn metric(&self, line_start: &str) -> u64 {
        let (_, _, body) = self.call("GET", "/metrics", &[]);
        body.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    stream.write_all(raw.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting until {what}");
}

fn alive(pid: u64) -> bool {
    // A zombie is not alive: it has exited and only waits to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

fn pid_of(sidecar: &Sidecar, app: &str) -> u64 {
    sidecar.status(app)["pid"].as_u64().expect("a running app has a pid")
}

/// Echo processes whose command line contains `marker`.
fn echoes_with(marker: &str) -> Vec<u32> {
    processes_with(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).next().is_some_and(|argv0| String::from_utf8_lossy(argv0).ends_with("wsgiproxy-echo")))
        })
        .collect()
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains(marker)).unwrap_or(false)
                && alive(*pid as u64)
        })
        .collect()
}

#[test]
fn concurrent_first_requests_start_exactly_one_process() {
    let sidecar = Sidecar::start("[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--ready-delay-ms\", \"400\"]\n");
    let port = sidecar.port;
    let answers: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || http(port, "POST", "/v1/ensure/blog", &[])))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let upstreams: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, headers, body)| {
            assert_eq!(*status, 200, "{body}");
            header(headers, "x-wsgiproxy-upstream").unwrap().to_string()
        })
        .collect();
    assert_eq!(upstreams.len(), 1);
    assert!(answers.iter().all(|(_, h, _)| header(h, "x-wsgiproxy-cold-start-ms").is_some()), "all waited for the start");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1);
    // The app answers where the sidecar said.
    let upstream = upstreams.into_iter().next().unwrap();
    let port: u16 = upstream.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(http(port, "GET", "/", &[]).0, 200);
    // Warm: no wait, no cold-start header.
    let (status, headers, _) = sidecar.ensure("blog");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-wsgiproxy-cold-start-ms"), None);
}

#[test]
fn an_impatient_ensure_hears_the_start_goes_on_and_it_does() {
    let sidecar = Sidecar::start("[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--ready-delay-ms\", \"1500\"]\n");
    let port = sidecar.port;
    let began = Instant::now();
    let (status, headers, body) = http(port, "POST", "/v1/ensure/blog", &[("x-wsgiproxy-wait-ms", "300")]);
    assert_eq!(status, 202, "{body}");
    assert!(began.elapsed() < Duration::from_millis(1200), "answered after its patience, not the start: {:?}", began.elapsed());
    assert_eq!((header(&headers, "x-wsgiproxy-sidecar"), header(&headers, "x-wsgiproxy-upstream")), (Some("1"), None));
    // A patient caller during the same start waits for it and is granted the app.
    let (status, headers, body) = sidecar.ensure("blog");
    assert_eq!(status, 200, "{body}");
    assert!(header(&headers, "x-wsgiproxy-cold-start-ms").is_some(), "it waited for the start the first call began");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1, "one start");
    // Ready: an impatient caller is granted at once.
    assert_eq!(http(port, "POST", "/v1/ensure/blog", &[("x-wsgiproxy-wait-ms", "0")]).0, 200);
}

#[test]
fn idle_apps_stop_and_start_again() {
    let sidecar = Sidecar::start("[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\nidle_shutdown = 1\n");
    assert_eq!(sidecar.ensure("blog").0, 200);
    let pid = pid_of(&sidecar, "blog");
    wait_until("the idle app stops", Duration::from_secs(10), || sidecar.status("blog")["state"] == "stopped");
    assert!(!alive(pid), "the process is gone");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), 1);
    let (status, headers, _) = sidecar.ensure("blog");
    assert_eq!(status, 200);
    assert!(header(&headers, "x-wsgiproxy-cold-start-ms").is_some());
    assert_ne!(pid_of(&sidecar, "blog"), pid);
}

#[test]
fn a_request_during_a_stop_waits_and_starts_again() {
    // The wrapper takes a second to stop, so the stop can be caught in the act.
    let sidecar = Sidecar::start(
        "[apps.slow]\ncommand = [\"sh\", \"-c\", \"trap 'sleep 1; exit 0' TERM; ECHO --port $PORT & wait; wait\"]\nidle_shutdown = 1\n",
    );
    assert_eq!(sidecar.ensure("slow").0, 200);
    let pid = pid_of(&sidecar, "slow");
    wait_until("the stop begins", Duration::from_secs(10), || sidecar.status("slow")["state"] == "stopping");
    let (status, _, body) = sidecar.ensure("slow");
    assert_eq!(status, 200, "{body}");
    assert!(!alive(pid));
    assert_eq!(sidecar.status("slow")["state"], "ready");
    assert_ne!(pid_of(&sidecar, "slow"), pid);
}

#[test]
fn a_busy_reporter_holds_off_the_idle_stop_and_its_end_restarts_the_idle_clock() {
    let sidecar = Sidecar::start("[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\nidle_shutdown = 2\n");
    assert_eq!(sidecar.ensure("blog").0, 200);
    let pid = pid_of(&sidecar, "blog");
    // The reports a worker sends for one long request, in flight for twice
    // idle_shutdown: started (1 in flight), still in flight…, then done (0 in flight).
    let report = |started: &str, in_flight: &str| {
        let headers = [("x-wsgiproxy-reporter", "worker-1"), ("x-wsgiproxy-started", started), ("x-wsgiproxy-in-flight", in_flight)];
        let (status, headers, _) = sidecar.call("POST", "/v1/activity/blog", &headers);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-wsgiproxy-lease-ms"), Some("1000"));
    };
    report("1", "1");
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        report("0", "1");
        assert_eq!(sidecar.status("blog")["busy_reporters"], 1);
    }
    assert_eq!(sidecar.status("blog")["state"], "ready");
    let ended = Instant::now();
    report("0", "0");
    assert_eq!(sidecar.status("blog")["busy_reporters"], 0, "the end of the request frees the worker at once");
    wait_until("the app stops once idle", Duration::from_secs(10), || !alive(pid));
    // Idle counts from the end of the request (not from its start, 4 s earlier).
    assert!(ended.elapsed() >= Duration::from_secs(2), "stopped {:?} after the request ended", ended.elapsed());
    assert_eq!(sidecar.call("POST", "/v1/activity/blog", &[]).0, 409, "no lease for a stopped app");
}

#[test]
fn crashes_restart_then_back_off() {
    let sidecar = Sidecar::start("[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n");
    for round in 0..2 {
        let (status, headers, _) = sidecar.ensure("blog");
        assert_eq!(status, 200, "round {round}");
        let port: u16 = header(&headers, "x-wsgiproxy-upstream").unwrap().rsplit(':').next().unwrap().parse().unwrap();
        let pid = pid_of(&sidecar, "blog");
        let _ = http(port, "GET", "/__exit/3", &[]);
        wait_until("the crash is seen", Duration::from_secs(10), || !alive(pid) && sidecar.status("blog")["state"] == "failed");
    }
    // Two crashes in a row: a clear 503 with Retry-After, not a hang and not a 200.
    let (status, headers, body) = sidecar.ensure("blog");
    assert_eq!(status, 503, "{body}");
    assert!(header(&headers, "retry-after").is_some());
    assert!(body.contains("exited"), "{body}");
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_crashes_total{app=\"blog\"}"), 2);
    // After the back-off it starts again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(sidecar.ensure("blog").0, 200);
}

#[test]
fn a_child_that_exits_before_ready_is_a_503() {
    let sidecar = Sidecar::start("[apps.broken]\ncommand = \"sh -c 'exit 3'\"\n");
    let (status, headers, body) = sidecar.ensure("broken");
    assert_eq!(status, 503);
    assert!(header(&headers, "retry-after").is_some());
    assert!(body.contains("exited before it was ready"), "{body}");
}

#[test]
fn a_start_timeout_kills_the_child() {
    let marker = format!("600.{}", free_port());
    let sidecar = Sidecar::start(&format!("[apps.stuck]\ncommand = [\"sleep\", \"{marker}\"]\nstart_timeout = 1\n"));
    let began = Instant::now();
    let (status, _, body) = sidecar.ensure("stuck");
    assert_eq!(status, 503);
    assert!(body.contains("did not become ready within"), "{body}");
    assert!(began.elapsed() < Duration::from_secs(5));
    wait_until("the stuck child is gone", Duration::from_secs(5), || processes_with(&marker).is_empty());
}

#[test]
fn sigterm_stops_every_child_before_exiting() {
    let mut sidecar = Sidecar::start(
        "[apps.a]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n[apps.b]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n",
    );
    assert_eq!(sidecar.ensure("a").0, 200);
    assert_eq!(sidecar.ensure("b").0, 200);
    let pids = [pid_of(&sidecar, "a"), pid_of(&sidecar, "b")];
    Command::new("kill").arg("-TERM").arg(sidecar.child.id().to_string()).status().unwrap();
    let status = sidecar.child.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(!alive(pid), "child {pid} outlived the sidecar");
    }
    assert!(sidecar.log().contains("all apps stopped"));
}

#[test]
fn sigkill_leaves_no_child_and_a_restart_stops_leftovers() {
    let marker = format!("leftover-{}", free_port());
    // `sh -c '...; true'` forks: the echo is a grandchild that PDEATHSIG does not reach,
    // so the restarted sidecar must find it through its state file.
    let config = format!(
        "[apps.direct]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n[apps.wrapped]\ncommand = [\"sh\", \"-c\", \"ECHO --port $PORT --name {marker}; true\"]\n"
    );
    let mut sidecar = Sidecar::start(&config);
    assert_eq!(sidecar.ensure("direct").0, 200);
    assert_eq!(sidecar.ensure("wrapped").0, 200);
    let direct = pid_of(&sidecar, "direct");
    assert_eq!(echoes_with(&marker).len(), 1);
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    wait_until("the direct child dies with the sidecar", Duration::from_secs(5), || !alive(direct));
    assert_eq!(echoes_with(&marker).len(), 1, "the grandchild is still there, for the restart to find");
    let dir = std::mem::replace(&mut sidecar.dir, tempfile::tempdir().unwrap());
    let restarted = Sidecar::start_in(dir, &config);
    wait_until("the leftover is stopped", Duration::from_secs(5), || echoes_with(&marker).is_empty());
    assert!(restarted.log().contains("left by an earlier run"));
}

#[test]
fn a_port_taken_in_between_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("first-run-done");
    // The first run makes its port busy from another session (bound, not listening,
    // so nothing answers), then fails to bind it; the sidecar must move to another port.
    // The squatter says when it holds the port (a fixed sleep loses the race on a
    // loaded machine).
    let bound = dir.path().join("port-squatted");
    let squat =
        "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',int(sys.argv[1]))); open(sys.argv[2],'w').close(); time.sleep(20)";
    let config = format!(
        "[apps.blog]\ncommand = [\"sh\", \"-c\", \"if [ -e {mark} ]; then exec ECHO --port $PORT; fi; touch {mark}; setsid python3 -c \\\"{squat}\\\" $PORT {bound} & while [ ! -e {bound} ]; do sleep 0.02; done; exit 98\"]\n",
        mark = mark.display(),
        bound = bound.display(),
    );
    let sidecar = Sidecar::start_in(dir, &config);
    let (status, headers, body) = sidecar.ensure("blog");
    assert_eq!(status, 200, "{body}\n{}", sidecar.log());
    let upstream = header(&headers, "x-wsgiproxy-upstream").unwrap();
    let first = sidecar.log().lines().find_map(|l| l.contains("taken meanwhile").then_some(l.to_string())).unwrap_or_default();
    assert!(!first.is_empty());
    assert!(!first.contains(&format!("port={}", upstream.rsplit(':').next().unwrap())), "moved off the squatted port: {upstream}");
    assert!(sidecar.log().contains("taken meanwhile"), "{}", sidecar.log());
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 2);
}

#[test]
fn unknown_apps_and_bad_configs() {
    let sidecar = Sidecar::start("[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n");
    let (status, _, body) = sidecar.ensure("nope");
    assert_eq!(status, 404);
    assert!(body.contains("nope"));
    assert_eq!(sidecar.call("GET", "/healthz", &[]).0, 200);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[apps.blog]\ncommand = \"x\"\nstop_signal = \"SIGFOO\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsgiproxy-sidecar")).arg("--config").arg(&path).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app \"blog\": field \"stop_signal\": unknown signal \"SIGFOO\""), "{err}");
}

/// The port an ensure answer points at.
fn upstream_port(headers: &[(String, String)]) -> u16 {
    header(headers, "x-wsgiproxy-upstream").unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn a_crashed_apps_port_is_not_given_to_another_app_while_leases_may_point_at_it() {
    let sidecar = Sidecar::start(
        "[apps.a]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n[apps.b]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n",
    );
    let (status, headers, _) = sidecar.ensure("a");
    assert_eq!(status, 200);
    let a_port = upstream_port(&headers);
    let pid = pid_of(&sidecar, "a");
    let _ = http(a_port, "GET", "/__exit/3", &[]);
    wait_until("the crash is seen", Duration::from_secs(10), || !alive(pid) && sidecar.status("a")["state"] == "failed");
    // A worker may still hold a lease for "a" on that port: "b" must not answer there.
    let (status, headers, _) = sidecar.ensure("b");
    assert_eq!(status, 200);
    assert_ne!(upstream_port(&headers), a_port, "b got the port a worker's lease for a points at");
    // "a" gets its port back, so that such a lease reaches "a" again.
    let (status, headers, _) = sidecar.ensure("a");
    assert_eq!(status, 200);
    assert_eq!(upstream_port(&headers), a_port);
}

#[test]
fn ports_of_an_earlier_run_stay_quarantined_after_a_restart() {
    let config = "[apps.a]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n[apps.b]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n";
    let first = first_port();
    let mut sidecar = Sidecar::launch(tempfile::tempdir().unwrap(), config, first);
    let (status, headers, _) = sidecar.ensure("a");
    assert_eq!(status, 200);
    let a_port = upstream_port(&headers);
    let pid = pid_of(&sidecar, "a");
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    wait_until("the child dies with the sidecar", Duration::from_secs(5), || !alive(pid));
    let dir = std::mem::replace(&mut sidecar.dir, tempfile::tempdir().unwrap());
    // Same state directory, same port range.
    let restarted = Sidecar::launch(dir, config, first);
    let (status, headers, _) = restarted.ensure("b");
    assert_eq!(status, 200);
    assert_ne!(upstream_port(&headers), a_port, "b got a port Envoy may still hold a lease for, for a");
    let (status, headers, _) = restarted.ensure("a");
    assert_eq!(status, 200);
    assert_eq!(upstream_port(&headers), a_port, "a is offered the port it had");
}

#[test]
fn another_apps_fixed_port_is_never_allocated() {
    let first = first_port();
    let config = format!(
        "[apps.alloc]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n[apps.fixed]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\nport = {first}\n"
    );
    let sidecar = Sidecar::launch(tempfile::tempdir().unwrap(), &config, first);
    let (status, headers, _) = sidecar.ensure("alloc");
    assert_eq!(status, 200);
    assert_ne!(upstream_port(&headers), first);
    let (status, headers, body) = sidecar.ensure("fixed");
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream_port(&headers), first);
}

#[test]
fn output_that_is_not_utf8_is_logged_and_the_child_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noisy.sh");
    std::fs::write(
        &script,
        "printf 'bad \\377\\376 bytes\\n'\nECHO --port $PORT &\nwhile :; do echo still-talking; sleep 0.02; done\n"
            .replace("ECHO", &echo_bin()),
    )
    .unwrap();
    let sidecar = Sidecar::start_in(dir, &format!("[apps.noisy]\ncommand = [\"sh\", \"{}\"]\n", script.display()));
    let (status, headers, body) = sidecar.ensure("noisy");
    assert_eq!(status, 200, "{body}\n{}", sidecar.log());
    let pid = pid_of(&sidecar, "noisy");
    // The child keeps writing after its bad line, and the sidecar keeps reading.
    wait_until("the output after the bad line is logged", Duration::from_secs(10), || {
        sidecar.log().matches("[noisy] still-talking").count() >= 20
    });
    assert!(sidecar.log().contains("[noisy] bad \u{fffd}\u{fffd} bytes"), "{}", sidecar.log());
    assert!(alive(pid));
    assert_eq!(sidecar.status("noisy")["state"], "ready");
    assert_eq!(http(upstream_port(&headers), "GET", "/", &[]).0, 200);
}

#[test]
fn a_child_that_exits_before_ready_takes_its_process_group_along() {
    let marker = format!("holder-{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("exits.sh");
    // The leader exits; a grandchild in its group holds the port (bound, not listening).
    let hold = "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',int(sys.argv[1]))); time.sleep(30)";
    std::fs::write(&script, format!("python3 -c \"{hold}\" $PORT {marker} &\nsleep 0.5\nexit 3\n")).unwrap();
    let sidecar = Sidecar::start_in(dir, &format!("[apps.holder]\ncommand = [\"sh\", \"{}\"]\n", script.display()));
    let (status, _, body) = sidecar.ensure("holder");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("exited before it was ready"), "{body}\n{}", sidecar.log());
    assert!(processes_with(&marker).is_empty(), "the grandchild outlived its group's leader");
    assert!(!sidecar.log().contains("taken meanwhile"), "our own grandchild is not a stranger\n{}", sidecar.log());
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"holder\"}"), 1);
}

#[test]
fn a_second_sidecar_on_the_same_state_dir_refuses_to_start() {
    let config = "[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n";
    let sidecar = Sidecar::start(config);
    assert_eq!(sidecar.ensure("blog").0, 200);
    let pid = pid_of(&sidecar, "blog");
    let mut second = Sidecar::command(sidecar.dir.path(), config, free_port(), first_port())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("the second sidecar started beside the first");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    second.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("uses the state directory") && err.contains("refusing to start"), "{err}");
    assert!(alive(pid), "the second sidecar stopped the first one's child");
    assert_eq!(sidecar.status("blog")["state"], "ready");
}

/// One request on a kept-alive connection; the answer is read by its Content-Length.
fn keep_alive(stream: &mut TcpStream, method: &str, path: &str) -> (u16, String) {
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn an_ensure_during_shutdown_starts_nothing() {
    let marker = format!("late-{}", free_port());
    // "slow" takes a second to stop, so the shutdown can be caught in the act.
    let mut sidecar = Sidecar::start(&format!(
        "[apps.slow]\ncommand = [\"sh\", \"-c\", \"trap 'sleep 1; exit 0' TERM; ECHO --port $PORT & wait; wait\"]\n[apps.late]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--name\", \"{marker}\"]\n"
    ));
    assert_eq!(sidecar.ensure("slow").0, 200);
    let mut conn = TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(keep_alive(&mut conn, "GET", "/healthz").0, 200);
    Command::new("kill").arg("-TERM").arg(sidecar.child.id().to_string()).status().unwrap();
    wait_until("the shutdown is stopping slow", Duration::from_secs(5), || {
        let status: serde_json::Value = serde_json::from_str(&keep_alive(&mut conn, "GET", "/v1/status").1).unwrap();
        status["apps"]["slow"]["state"] == "stopping"
    });
    let (status, body) = keep_alive(&mut conn, "POST", "/v1/ensure/late");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    assert!(echoes_with(&marker).is_empty(), "an app was started during the shutdown");
    assert!(sidecar.child.wait().unwrap().success());
    assert!(echoes_with(&marker).is_empty());
}

#[test]
fn metrics_show_starts_waits_and_states() {
    let sidecar = Sidecar::start(
        "[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--ready-delay-ms\", \"300\"]\n\
         [apps.idle]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\"]\n",
    );
    let (status, _, _) = sidecar.ensure("blog");
    assert_eq!(status, 200);
    let (_, _, text) = sidecar.call("GET", "/metrics", &[]);
    let value = |line: &str| -> f64 {
        let found = text.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no {line} in\n{text}"));
        found.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(text.contains("# TYPE wsgiproxy_sidecar_start_seconds histogram"), "{text}");
    assert_eq!(value("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1.0);
    // One start of ~0.3 s: not in the 0.25 s bucket, in the 0.5 s one and above (cumulative).
    assert_eq!(value("wsgiproxy_sidecar_start_seconds_bucket{le=\"0.25\",app=\"blog\"}"), 0.0);
    assert_eq!(value("wsgiproxy_sidecar_start_seconds_bucket{le=\"0.5\",app=\"blog\"}"), 1.0);
    assert_eq!(value("wsgiproxy_sidecar_start_seconds_bucket{le=\"+Inf\",app=\"blog\"}"), 1.0);
    assert_eq!(value("wsgiproxy_sidecar_start_seconds_count{app=\"blog\"}"), 1.0);
    let took = value("wsgiproxy_sidecar_start_seconds_sum{app=\"blog\"}");
    assert!((0.3..0.5).contains(&took), "{took}");
    assert!(value("wsgiproxy_sidecar_ensure_wait_seconds_count{app=\"blog\"}") >= 1.0, "{text}");
    // One state per app is 1, the others 0.
    assert_eq!(value("wsgiproxy_sidecar_app_state{app=\"blog\",state=\"ready\"}"), 1.0);
    assert_eq!(value("wsgiproxy_sidecar_app_state{app=\"blog\",state=\"stopped\"}"), 0.0);
    assert_eq!(value("wsgiproxy_sidecar_app_state{app=\"idle\",state=\"stopped\"}"), 1.0);
}
