//! Restarts of a verifying receiver, seen from the clients of the shipped sender.
//!
//! The shipped sender (envoy/app.yaml, envoy/native-app.yaml) signs each attempt in
//! its cluster's upstream filter (`bind_endpoint`) and retries a 425, a connect
//! failure and a reset with a fresh signature, on another endpoint where there is
//! one. In front of the shipped receiver (envoy/middleware.yaml, …), stopped and
//! started again cold under sustained load — one replica, and two in a rolling
//! restart — its clients get only 200s: requests wait out the down time and the
//! restarted receiver's refused seconds (425 `signed_before_restart` for about 3 s
//! after a start) in the sender's retries. Without the retry policy, the same restart
//! answers clients 425s.
//!
//! And what the Wasm filter does across a real hot restart (`--restart-epoch 1`
//! beside epoch 0): its replay memory is Envoy's shared data, which lives in one
//! process, so while both processes serve, a signed request accepted by one is
//! accepted again by the other (docs/signatures.md, "Restarts": run Wasm receivers
//! without hot restart).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_yaml::Value as Yaml;
use support::*;

const KEY: (&str, &str) = ("WSGIPROXY_KEY_K1", "restart-test-shared-key-0123456789");

/// The shipped config of a role for the loader under test.
fn shipped(role: &str) -> String {
    match Loader::from_env() {
        Loader::Wasm => format!("envoy/{role}.yaml"),
        Loader::Native => format!("envoy/native-{role}.yaml"),
    }
}

/// The shipped receiver on 127.0.0.1:`port`, in front of the echo app.
fn receiver(app_port: u16, port: u16) -> Envoy {
    let o = Overrides { listen_port: Some(port), ..Overrides::default().cluster("app", app_port).env(KEY.0, KEY.1) };
    Envoy::start(&shipped("middleware"), &o)
}

/// The shipped sender, its cluster holding the receivers on 127.0.0.1:`ports`;
/// `retries: false` takes the route's retry policy out (the rest as shipped).
fn sender(ports: &[u16], retries: bool) -> Envoy {
    let ports = ports.to_vec();
    let o = Overrides {
        edit_with: Some(Arc::new(move |doc: &mut Yaml| {
            let endpoints: Vec<Yaml> = ports
                .iter()
                .map(|p| {
                    serde_yaml::from_str(&format!(
                        "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }} }}"
                    ))
                    .unwrap()
                })
                .collect();
            let cluster = &mut doc["static_resources"]["clusters"][0];
            assert_eq!(cluster["name"].as_str(), Some("backend"));
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = Yaml::Sequence(endpoints);
            if !retries {
                let route = &mut hcm(doc)["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
                assert!(route.as_mapping_mut().unwrap().remove("retry_policy").is_some(), "the shipped route retries");
            }
        })),
        ..Overrides::default().env(KEY.0, KEY.1)
    };
    Envoy::start(&shipped("app"), &o)
}

/// One client's answer: its status and `x-wsgiproxy-error` (0 when the connection
/// failed), and how long it took.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    error: String,
    took: Duration,
}

/// One GET on a new connection; never panics.
fn get(port: u16, path: &str) -> Answer {
    let began = Instant::now();
    let attempt = || -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut raw = Vec::new();
        BufReader::new(stream).read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let error = head.lines().find_map(|l| l.strip_prefix("x-wsgiproxy-error: ")).unwrap_or_default().to_string();
        Ok((status, error))
    };
    let (status, error) = attempt().unwrap_or((0, "connection failed".into()));
    Answer { status, error, took: began.elapsed() }
}

/// Clients sending GETs one after another through `port`, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|c| {
                let (stop, answers) = (stop.clone(), answers.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let answer = get(port, &format!("/load/{c}/{i}"));
                        answers.lock().unwrap().push(answer);
                        i += 1;
                    }
                })
            })
            .collect();
        Load { stop, answers, clients }
    }

    fn count(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Runs `for_` more, then stops and returns every answer.
    fn stop_after(self, for_: Duration) -> Vec<Answer> {
        std::thread::sleep(for_);
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        answers
    }
}

/// Answers by status and `x-wsgiproxy-error`: `{"200": 812, "425 signed_before_restart": 31}`.
fn tally(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for a in answers {
        *kinds.entry(format!("{} {}", a.status, a.error).trim().to_string()).or_insert(0) += 1;
    }
    kinds
}

/// Stops a receiver (SIGTERM: Envoy exits at once, cutting off what it serves), waits
/// `down`, and starts it again on its port, cold: a new process, a new replay memory.
fn restart(receiver: Envoy, app_port: u16, port: u16, down: Duration) -> Envoy {
    drop(receiver);
    std::thread::sleep(down);
    receiver_started(app_port, port)
}

/// Starts a receiver without waiting out its refused seconds (Envoy::start does, for
/// tests that sign requests themselves): here the sender's retries must.
fn receiver_started(app_port: u16, port: u16) -> Envoy {
    let o = Overrides { listen_port: Some(port), ..Overrides::default().cluster("app", app_port).env(KEY.0, KEY.1) };
    Envoy::start_serving(&shipped("middleware"), &o)
}

/// Restarts under load: `replicas` receivers behind the shipped sender, each in turn
/// stopped for `down` and started again cold (a rolling restart when there are two),
/// with `clients` sending meanwhile. Every answer the clients got.
/// Also what the restarted receivers refused as signed before their start (425).
fn restarts_under_load(replicas: usize, retries: bool) -> (Vec<Answer>, Envoy, u64) {
    let app = Echo::start_with(&["--name", "app"]);
    let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
    let mut receivers: Vec<Option<Envoy>> = ports.iter().map(|&p| Some(receiver(app.port, p))).collect();
    let edge = sender(&ports, retries);
    let load = Load::start(edge.port, 6);
    wait_until("the load runs", Duration::from_secs(10), || load.count() >= 50);
    let began = Instant::now();
    for (i, &port) in ports.iter().enumerate() {
        let old = receivers[i].take().unwrap();
        let new = restart(old, app.port, port, Duration::from_millis(300));
        receivers[i] = Some(new);
        // Through the restarted receiver's refused seconds before the next one goes.
        std::thread::sleep(Duration::from_secs(4));
    }
    let answers = load.stop_after(Duration::from_millis(500));
    let refused: u64 = receivers.iter().flatten().map(|r| r.stat("wsgiproxy.middleware.rejected.signed_before_restart")).sum();
    eprintln!(
        "{replicas} replica(s), retries {retries}: {} requests in {:.1?}: {:?}; slowest {:?}",
        answers.len(),
        began.elapsed(),
        tally(&answers),
        answers.iter().map(|a| a.took).max().unwrap_or_default()
    );
    eprintln!(
        "the receivers refused {refused} as signed before their start; the sender's retries: {:?}",
        edge.stats("cluster.backend.upstream_rq_retry")
    );
    (answers, edge, refused)
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_receiver_restarted_under_load_is_invisible_to_the_shipped_senders_clients() {
    let (answers, edge, refused) = restarts_under_load(1, true);
    let kinds = tally(&answers);
    assert_eq!(kinds.keys().collect::<Vec<_>>(), ["200"], "clients got only 200s: {kinds:?}");
    assert!(refused > 0, "the restarted receiver refused requests signed before its start (retried, unseen by clients)");
    assert!(edge.stats("retry").iter().any(|(k, v)| k.ends_with("upstream_rq_retry") && *v > 0), "the sender retried");
    assert_eq!(edge.stats("retry_overflow").values().sum::<u64>(), 0, "no retry failed on the circuit breaker");
}

#[test]
fn a_rolling_restart_of_two_receivers_is_invisible_to_the_shipped_senders_clients() {
    let (answers, _edge, refused) = restarts_under_load(2, true);
    let kinds = tally(&answers);
    assert_eq!(kinds.keys().collect::<Vec<_>>(), ["200"], "clients got only 200s: {kinds:?}");
    assert!(refused > 0, "the restarted receivers refused requests signed before their start (retried elsewhere)");
}

/// The same restart without the shipped retry policy: the restarted receiver's 425s
/// (and the down time's 503s) reach the clients.
#[test]
fn without_the_retry_policy_a_restart_answers_clients_425() {
    let (answers, _edge, _) = restarts_under_load(1, false);
    let kinds = tally(&answers);
    assert!(kinds.get("425 signed_before_restart").is_some_and(|n| *n > 0), "{kinds:?}");
}

/// A signed request as a sender's upstream filter would send it to `port`, built by
/// the test: the head, for sending again as it is.
fn signed_request(port: u16, nonce: u8) -> Vec<u8> {
    use wsgiproxy_protocol::signature::{format_date, sign, Algorithm, KeyRing, SignedParts};
    let ring = KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), KEY.1.as_bytes().to_vec())]).unwrap();
    let date = format_date(SystemTime::now());
    let endpoint = format!("127.0.0.1:{port}");
    let headers: Vec<(&str, &[u8])> =
        vec![("x-wsgiproxy-endpoint", endpoint.as_bytes()), ("x-wsgiproxy-str-0", b"REMOTE_USER bob"), ("x-wsgiproxy-version", b"0.1")];
    let authority = format!("127.0.0.1:{port}");
    let parts = SignedParts {
        method: b"GET",
        authority: authority.as_bytes(),
        path: b"/transfer?amount=100",
        date: date.as_bytes(),
        protocol_headers: headers.clone(),
    };
    let signature = sign(&ring, &[nonce; 16], &parts).unwrap();
    let mut raw =
        format!("GET /transfer?amount=100 HTTP/1.1\r\nHost: {authority}\r\nDate: {date}\r\nX-WSGIProxy-Signature: {signature}\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {}\r\n", String::from_utf8_lossy(value)));
    }
    raw.push_str("\r\n");
    raw.into_bytes()
}

/// A kept-alive connection: (status, `x-wsgiproxy-error`, the user delivered) of each answer.
struct Connection(KeptAlive);

impl Connection {
    fn open(port: u16) -> Connection {
        Connection(KeptAlive::open(port))
    }
    fn send(&mut self, raw: &[u8]) -> (u16, Option<String>, Option<String>) {
        let r = self.0.send(raw);
        let user = if r.status == 200 { r.received().header("x-remote-user") } else { None };
        (r.status, r.header("x-wsgiproxy-error").map(str::to_string), user)
    }
}

/// What the Wasm filter does across a real hot restart. Epoch 1 starts beside epoch 0
/// (the same `--base-id`): it takes over the listening socket, while epoch 0 drains
/// and still answers the connections it had. Each process has its own replay memory
/// (Envoy's shared data is per process; a Wasm VM cannot map a file). What epoch 0
/// accepted before epoch 1 began is refused by epoch 1 (425, the restart rule); but a
/// request signed after epoch 1 began is accepted by each of them once: the window
/// docs/signatures.md describes, and the reason Wasm receivers run without hot
/// restart. (The native module's memory outlives the process: not tested here.)
#[test]
fn a_wasm_receiver_across_a_hot_restart_accepts_a_fresh_request_in_each_process() {
    if Loader::from_env() == Loader::Native {
        return;
    }
    let app = Echo::start_with(&["--name", "app"]);
    let port = free_port();
    let base_id = 40_000 + u32::from(port);
    let o = |epoch| Overrides {
        listen_port: Some(port),
        hot_restart: Some(HotRestart { base_id, epoch }),
        // (Envoy's default drain: epoch 0 serves its open connections for 600 s, and
        // closes each with a probability that grows over that time.)
        ..Overrides::default().cluster("app", app.port).env(KEY.0, KEY.1)
    };
    let epoch0 = Envoy::start("envoy/middleware.yaml", &o(0));
    let before = signed_request(port, 1);
    let mut old_connection = Connection::open(port);
    assert_eq!(old_connection.send(&before), (200, None, Some("bob".into())), "epoch 0 accepts a fresh request");

    let epoch1 = Envoy::start("envoy/middleware.yaml", &o(1));
    // (Envoy::start waited until a request signed now is past epoch 1's refused seconds.)
    assert!(epoch0.proc.child.id() != epoch1.proc.child.id());
    // Accepted by epoch 0 before epoch 1 began: refused by epoch 1 by the restart rule.
    assert_eq!(Connection::open(port).send(&before).0, 425, "a new connection reaches epoch 1");
    // Signed after epoch 1 began: epoch 0 (on its old connection) accepts it, and
    // epoch 1 (a new connection) accepts the same bytes again.
    let fresh = signed_request(port, 2);
    assert_eq!(old_connection.send(&fresh), (200, None, Some("bob".into())), "epoch 0, draining, accepts it");
    assert_eq!(Connection::open(port).send(&fresh), (200, None, Some("bob".into())), "epoch 1 accepts it again");
    // And the other way round.
    let fresh = signed_request(port, 3);
    assert_eq!(Connection::open(port).send(&fresh).0, 200, "epoch 1 accepts it");
    assert_eq!(old_connection.send(&fresh).0, 200, "epoch 0 accepts it again");
    // Within one process the memory holds.
    assert_eq!(Connection::open(port).send(&fresh).1.as_deref(), Some("signature_replayed"));
    assert_eq!(old_connection.send(&fresh).1.as_deref(), Some("signature_replayed"));
}
