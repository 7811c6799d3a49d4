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

#[path = "support/lds.rs"]
mod lds_support;
mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use lds_support::LdsEnvoy;
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

/// The shipped middleware config, its listener pushed by LDS (`support/lds.rs`).
fn start_lds(plugin: Value) -> LdsEnvoy {
    let mut overrides = Overrides::default().cluster("app", free_port()).plugin(plugin);
    overrides.edit = Some(answer_directly);
    // Envoy drains the old filter chain's connections gradually over the drain time,
    // closing a growing share of them: a day keeps the kept-alive connection on the
    // old chain open for the test's few seconds.
    let lds = LdsEnvoy::start("envoy/middleware.yaml", free_port(), &overrides, "replay-settings", &["--drain-time-s", "86400"]);
    wait_until_signatures_are_trusted("");
    lds
}

/// Pushes another middleware configuration; returns once new connections get it.
fn push(lds: &mut LdsEnvoy, plugin: Value) {
    lds.push("middleware", &plugin);
    wait_until_signatures_are_trusted("");
}

/// A push that changes `replay_memory_mb` and `max_skew_seconds` leaves one memory:
/// what either chain accepted, the other refuses.
#[test]
fn an_lds_push_keeps_one_replay_memory() {
    let mut lds = start_lds(config(json!({"replay_memory_mb": 64, "max_skew_seconds": 300})));
    let port = lds.envoy.port;
    let mut old = Connection::open(port);
    let (first, second, third) = (signed_request(1, &now_date()), signed_request(2, &now_date()), signed_request(3, &now_date()));
    assert_eq!(old.send(&first), accepted());

    push(&mut lds, config(json!({"replay_memory_mb": 32, "max_skew_seconds": 600})));
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
