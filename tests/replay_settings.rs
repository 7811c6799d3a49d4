//! The replay memory in real Envoy whatever the settings of the filter chains using
//! it (issue #32), on both loaders:
//! - an LDS push that changes `replay_memory_mb` and `max_skew_seconds`, with a
//!   connection opened before it kept alive (it keeps the old filter chain): a
//!   signed request accepted on either chain is refused on the other;
//! - two listeners with different settings: one memory;
//! - a signature dated ahead of the receiver's clock: refused past
//!   `max_future_seconds`, and, within it, refused after a restart (425);
//! - one busy time bucket (`max_skew_seconds` 3600, 225 s buckets) takes the whole
//!   bound: the Wasm memory used to give each bucket a 37th of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use support::*;
use wsgiproxy_protocol::signature::{format_date, Algorithm, KeyRing};

const KEY: &str = "settings-shared-key-0123456789";
const AUTHORITY: &str = "internal:9000";

fn config(extra: Value) -> Value {
    let mut c = json!({"role": "middleware", "secret": {"keys": [{"id": "k1", "value": KEY}]}, "algorithm": "hmac-sha256"});
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

/// A route that answers by itself: only the middleware's verdict matters.
fn answer_directly(doc: &mut Yaml) {
    hcm(doc)["route_config"]["virtual_hosts"][0]["routes"][0] =
        serde_yaml::from_str(r#"{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "ok" } } }"#).unwrap();
}

/// One signed request (v1) with nonce `n`, dated `date`, as raw HTTP/1.1 bytes.
fn signed_request(n: u64, date: &str) -> Vec<u8> {
    let ring = KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), KEY.as_bytes().to_vec())]).unwrap();
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&n.to_be_bytes());
    nonce[8..].copy_from_slice(&0x5e77_u64.to_be_bytes());
    signed_v1_get(&ring, &nonce, AUTHORITY, &format!("/r/{n}"), date)
}

fn now_date() -> String {
    format_date(SystemTime::now())
}

/// A kept-alive connection: (status, `x-wsgiproxy-error`) of each answer.
struct Connection(KeptAlive);

impl Connection {
    fn open(port: u16) -> Connection {
        Connection(KeptAlive::open(port))
    }

    fn send(&mut self, raw: &[u8]) -> (u16, Option<String>) {
        let r = self.0.send(raw);
        assert_ne!(r.header("connection"), Some("close"), "the connection must stay open");
        (r.status, r.header("x-wsgiproxy-error").map(str::to_string))
    }
}

fn accepted() -> (u16, Option<String>) {
    (200, None)
}

fn replayed() -> (u16, Option<String>) {
    (403, Some("signature_replayed".into()))
}

/// An Envoy whose listener comes from an LDS file in a watched directory (rewritten
/// by [`LdsEnvoy::push`] with an atomic rename, as an xDS update).
struct LdsEnvoy {
    envoy: Envoy,
    dir: tempfile::TempDir,
    listener: Yaml,
    pushes: u64,
}

impl LdsEnvoy {
    fn start(plugin: Value) -> LdsEnvoy {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let mut overrides = Overrides::default().cluster("app", free_port()).plugin(plugin);
        overrides.edit = Some(answer_directly);
        let mut doc: Yaml = serde_yaml::from_str(&render("envoy/middleware.yaml", port, admin_port, &overrides)).unwrap();
        let listener = doc["static_resources"]["listeners"][0].clone();
        doc["static_resources"].as_mapping_mut().unwrap().remove("listeners");
        doc["node"] = serde_yaml::from_str("{ id: replay-settings, cluster: replay-settings }").unwrap();
        let lds = dir.path().join("lds.yaml");
        doc["dynamic_resources"] = serde_yaml::from_str(&format!(
            "{{ lds_config: {{ resource_api_version: V3, path_config_source: {{ path: {}, watched_directory: {{ path: {} }} }} }} }}",
            lds.display(),
            dir.path().display()
        ))
        .unwrap();
        let loader = overrides.chosen_loader();
        let pushes = write_listener(dir.path(), &listener, 0);
        let bootstrap = dir.path().join("envoy.yaml");
        std::fs::write(&bootstrap, serde_yaml::to_string(&doc).unwrap()).unwrap();
        let log = dir.path().join("envoy.log");
        let mut cmd = Command::new(envoy_bin());
        cmd.current_dir(repo_root())
            .arg("-c")
            .arg(&bootstrap)
            // Envoy drains the old filter chain's connections gradually over the drain
            // time, closing a growing share of them: a day keeps the kept-alive
            // connection on the old chain open for the test's few seconds.
            .args(["--concurrency", "1", "--disable-hot-restart", "--drain-time-s", "86400", "--log-level", "warn", "--log-path"])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if loader == Loader::Native {
            cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_module_dir());
        }
        let mut proc = Proc::adopt(cmd.spawn().unwrap());
        proc.log = log;
        let lds_envoy = LdsEnvoy { envoy: Envoy { port, admin_port, proc, loader }, dir, listener, pushes };
        lds_envoy.wait_for_pushes(1);
        wait_until_signatures_are_trusted("");
        lds_envoy
    }

    /// Rewrites the listener with another plugin configuration and waits until Envoy
    /// serves new connections with it.
    fn push(&mut self, plugin: Value) {
        let plugin = plugin.to_string();
        let mut replaced = false;
        for filter in self.listener["filter_chains"][0]["filters"].as_sequence_mut().unwrap() {
            if filter["name"].as_str() != Some("envoy.filters.network.http_connection_manager") {
                continue;
            }
            for http in filter["typed_config"]["http_filters"].as_sequence_mut().unwrap() {
                // The Wasm filter's `config.configuration`, the native module's `filter_config`.
                let Some(typed) = http.get_mut("typed_config") else { continue };
                let holder = if typed.get("filter_config").is_some() {
                    typed.get_mut("filter_config")
                } else {
                    typed.get_mut("config").and_then(|c| c.get_mut("configuration"))
                };
                let Some(holder) = holder else { continue };
                if holder.get("value").and_then(Yaml::as_str).is_some_and(|v| v.contains("middleware")) {
                    holder["value"] = Yaml::from(plugin.clone());
                    replaced = true;
                }
            }
        }
        assert!(replaced, "the listener's middleware configuration");
        self.pushes = write_listener(self.dir.path(), &self.listener, self.pushes);
        self.wait_for_pushes(self.pushes);
        wait_until_signatures_are_trusted("");
    }

    fn wait_for_pushes(&self, pushes: u64) {
        let envoy = &self.envoy;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !wait_for_port(envoy.admin_port, Duration::from_millis(100)) {
            assert!(Instant::now() < deadline, "Envoy's admin endpoint:\n{}", envoy.proc.log_text());
        }
        wait_until("the LDS update", Duration::from_secs(30), || {
            let stats = envoy.stats("listener_manager");
            let stat = |name: &str| stats.get(name).copied().unwrap_or_default();
            stat("listener_manager.lds.update_success") >= pushes
                && stat("listener_manager.total_listeners_warming") == 0
                && stat("listener_manager.total_listeners_active") == 1
                && stat("listener_manager.workers_started") == 1
        });
        assert!(wait_for_port(envoy.port, Duration::from_secs(5)));
    }
}

/// Writes the LDS file with an atomic rename; the pushes made so far.
fn write_listener(dir: &std::path::Path, listener: &Yaml, pushes: u64) -> u64 {
    let mut listener = listener.clone();
    listener["@type"] = Yaml::from("type.googleapis.com/envoy.config.listener.v3.Listener");
    let mut resources = serde_yaml::Mapping::new();
    resources.insert("resources".into(), Yaml::Sequence(vec![listener]));
    let staged = dir.join("lds.yaml.next");
    std::fs::write(&staged, serde_yaml::to_string(&resources).unwrap()).unwrap();
    std::fs::rename(&staged, dir.join("lds.yaml")).unwrap();
    pushes + 1
}

/// A push that changes `replay_memory_mb` and `max_skew_seconds` leaves one memory:
/// what either chain accepted, the other refuses.
#[test]
fn an_lds_push_keeps_one_replay_memory() {
    let mut lds = LdsEnvoy::start(config(json!({"replay_memory_mb": 64, "max_skew_seconds": 300})));
    let port = lds.envoy.port;
    let mut old = Connection::open(port);
    let (first, second, third) = (signed_request(1, &now_date()), signed_request(2, &now_date()), signed_request(3, &now_date()));
    assert_eq!(old.send(&first), accepted());

    lds.push(config(json!({"replay_memory_mb": 32, "max_skew_seconds": 600})));
    let updated = lds.envoy.stats("listener_manager");
    assert!(updated.get("listener_manager.listener_in_place_updated").copied().unwrap_or_default() >= 1, "{updated:?}");
    let mut new = Connection::open(port);
    // Accepted on the old chain before the push, replayed on the new one.
    assert_eq!(new.send(&first), replayed());
    // Accepted on the new chain, replayed on the old one (still on the old chain).
    assert_eq!(new.send(&second), accepted());
    assert_eq!(old.send(&second), replayed());
    // Accepted on the old chain after the push, replayed on the new one.
    assert_eq!(old.send(&third), accepted());
    assert_eq!(new.send(&third), replayed());
    assert_eq!(lds.envoy.stat("wsgiproxy.middleware.rejected.signature_replayed"), 3);
}

/// Two listeners of one Envoy with different settings share one memory.
#[test]
fn two_listeners_with_different_settings_share_one_memory() {
    let second_port = free_port();
    let mut overrides =
        Overrides::default().cluster("app", free_port()).plugin(config(json!({"replay_memory_mb": 64, "max_skew_seconds": 300})));
    overrides.edit = Some(answer_directly);
    let other = config(json!({"replay_memory_mb": 16, "max_skew_seconds": 900})).to_string();
    overrides.edit_with = Some(std::sync::Arc::new(move |doc: &mut Yaml| {
        let listeners = doc["static_resources"]["listeners"].as_sequence_mut().unwrap();
        let mut second = listeners[0].clone();
        second["name"] = Yaml::from("second");
        second["address"]["socket_address"]["port_value"] = Yaml::from(second_port);
        let filters = second["filter_chains"][0]["filters"].as_sequence_mut().unwrap();
        let hcm = filters.iter_mut().find(|f| f["name"].as_str() == Some("envoy.filters.network.http_connection_manager")).unwrap();
        let mut replaced = false;
        for http in hcm["typed_config"]["http_filters"].as_sequence_mut().unwrap() {
            let holder = http.get_mut("typed_config").and_then(|t| t.get_mut("config")).and_then(|c| c.get_mut("configuration"));
            let Some(holder) = holder else { continue };
            if holder.get("value").and_then(Yaml::as_str).is_some_and(|v| v.contains("middleware")) {
                holder["value"] = Yaml::from(other.clone());
                replaced = true;
            }
        }
        assert!(replaced);
        listeners.push(second);
    }));
    let envoy = Envoy::start("envoy/middleware.yaml", &overrides);
    assert!(wait_for_port(second_port, Duration::from_secs(5)));
    let (mut one, mut two) = (Connection::open(envoy.port), Connection::open(second_port));
    let (a, b) = (signed_request(10, &now_date()), signed_request(11, &now_date()));
    assert_eq!(one.send(&a), accepted());
    assert_eq!(two.send(&a), replayed());
    assert_eq!(two.send(&b), accepted());
    assert_eq!(one.send(&b), replayed());
}

/// A signature dated past `max_future_seconds` is refused (it used to pass with
/// the whole skew); one dated ahead within it, accepted once, is refused after a
/// restart (425): the restart rule covers what the predecessor accepted ahead.
#[test]
fn a_signature_dated_ahead_is_bounded_and_refused_after_a_restart() {
    let plugin = config(json!({"max_skew_seconds": 300}));
    let mut overrides = Overrides::default().cluster("app", free_port()).plugin(plugin);
    overrides.edit = Some(answer_directly);
    let mut before = Envoy::start("envoy/middleware.yaml", &overrides);
    let mut connection = Connection::open(before.port);
    let far = signed_request(20, &format_date(SystemTime::now() + Duration::from_secs(60)));
    assert_eq!(connection.send(&far), (403, Some("signature_dated_ahead".into())));
    assert_eq!(before.stat("wsgiproxy.middleware.rejected.signature_dated_ahead"), 1);

    // Dated as far ahead as the default tolerance allows (2 s): accepted once.
    let ahead = signed_request(21, &format_date(SystemTime::now() + Duration::from_secs(2)));
    assert_eq!(connection.send(&ahead), accepted());
    assert_eq!(connection.send(&ahead), replayed());
    drop(connection);
    before.stop_and_log();
    let started = Instant::now();
    let after = Envoy::start("envoy/middleware.yaml", &overrides);
    assert!(started.elapsed() < Duration::from_secs(60), "within the skew");
    let mut connection = Connection::open(after.port);
    assert_eq!(connection.send(&ahead), (425, Some("signed_before_restart".into())));
    assert_eq!(connection.send(&far), (403, Some("signature_dated_ahead".into())));
    assert_eq!(connection.send(&signed_request(22, &now_date())), accepted());
}

/// Item 5: 6,000 fresh signed requests all dated in one 225 s bucket
/// (`max_skew_seconds` 3600) into a 1 MB memory. The old Wasm layout gave a bucket
/// 7 keys of 511 (3,577 nonces) and answered the rest 503; the memory holds about
/// 130,000, and every one is accepted.
#[test]
fn one_busy_time_bucket_takes_the_whole_bound() {
    let mut overrides =
        Overrides::default().cluster("app", free_port()).plugin(config(json!({"max_skew_seconds": 3600, "replay_memory_mb": 1})));
    overrides.edit = Some(answer_directly);
    let envoy = Envoy::start("envoy/middleware.yaml", &overrides);
    let date = now_date();
    let port = envoy.port;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let date = date.clone();
            std::thread::spawn(move || {
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                for i in 0..1500 {
                    writer.write_all(&signed_request(100_000 + t * 10_000 + i, &date)).unwrap();
                    *statuses.entry(read_status(&mut reader, &mut line)).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for t in threads {
        for (status, count) in t.join().unwrap() {
            *statuses.entry(status).or_default() += count;
        }
    }
    assert_eq!(statuses, [(200, 6000)].into_iter().collect(), "every fresh signed request accepted");
    assert_eq!(envoy.stat("wsgiproxy.middleware.rejected.replay_store_unavailable"), 0);
    assert_eq!(Connection::open(port).send(&signed_request(100_007, &date)), replayed());
}
