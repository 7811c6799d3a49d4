//! The replay memory in real Envoy past the old fixed ceiling (4096 slots x 512 =
//! 2,097,152 live nonces): `max_skew_seconds: 3600`, so that nothing expires, and
//! well over 2.1 million signed requests with fresh nonces at full speed into a
//! verifying Envoy with two workers. Every one is accepted (no 503), replays of a
//! sample are refused at the end, and the memory per live nonce is measured from
//! Envoy's RSS. Minutes long, so not in the default run:
//! `scripts/replay-capacity.sh` runs it on both loaders.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use support::*;
use wsgiproxy_protocol::signature::{format_date, Algorithm, KeyRing};

const KEY: &str = "capacity-shared-key-0123456789";
const AUTHORITY: &str = "internal:9000";

/// A route that answers by itself: the verifying Envoy does only the middleware's work.
fn answer_directly(doc: &mut serde_yaml::Value) {
    hcm(doc)["route_config"]["virtual_hosts"][0]["routes"][0] =
        serde_yaml::from_str(r#"{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "ok" } } }"#).unwrap();
}

/// One signed request (v1, HMAC-SHA256) with nonce `n`, as raw HTTP/1.1 bytes.
fn signed_request(ring: &KeyRing, n: u64, date: &str) -> Vec<u8> {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&n.to_be_bytes());
    nonce[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
    signed_v1_get(ring, &nonce, AUTHORITY, &format!("/r/{n}"), date)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kb * 1024
}

#[test]
#[ignore = "minutes long: scripts/replay-capacity.sh"]
fn millions_of_live_nonces_in_real_envoy() {
    let total: u64 = std::env::var("WSGIPROXY_REPLAY_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_400_000);
    let connections: u64 = 16;
    let mut overrides = Overrides::default().cluster("app", free_port()).env("WSGIPROXY_KEY_K1", KEY).plugin(json!({
        "role": "middleware", "secret": {"keys": [{"id": "k1", "value": KEY}]}, "algorithm": "hmac-sha256",
        "max_skew_seconds": 3600
    }));
    overrides.edit = Some(answer_directly);
    overrides.concurrency = Some(2);
    let envoy = Envoy::start("envoy/middleware.yaml", &overrides);
    let rss_before = rss_bytes(envoy.proc.pid());
    let ring = Arc::new(KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), KEY.as_bytes().to_vec())]).unwrap());

    let began = Instant::now();
    let refused = Arc::new(AtomicU64::new(0));
    let sample_every = (total / 1000).max(1);
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let (ring, refused, port) = (ring.clone(), refused.clone(), envoy.port);
            std::thread::spawn(move || {
                let mut statuses = BTreeMap::<u16, u64>::new();
                // Requests kept as sent, to be replayed at the end.
                let mut captured = Vec::new();
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_nodelay(true).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let (mut date, mut dated_at) = (format_date(SystemTime::now()), Instant::now());
                let mut n = c;
                while n < total {
                    if dated_at.elapsed() >= Duration::from_millis(500) {
                        (date, dated_at) = (format_date(SystemTime::now()), Instant::now());
                    }
                    let request = signed_request(&ring, n, &date);
                    writer.write_all(&request).unwrap();
                    if n % sample_every == 0 {
                        captured.push((n, request));
                    }
                    let status = read_status(&mut reader, &mut line);
                    *statuses.entry(status).or_default() += 1;
                    if status != 200 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    n += connections;
                }
                (statuses, captured)
            })
        })
        .collect();
    let mut statuses = BTreeMap::<u16, u64>::new();
    let mut captured = Vec::new();
    for t in threads {
        let (counted, kept) = t.join().unwrap();
        for (status, count) in counted {
            *statuses.entry(status).or_default() += count;
        }
        captured.extend(kept);
    }
    let took = began.elapsed();
    let rss_after = rss_bytes(envoy.proc.pid());
    let per_nonce = rss_after.saturating_sub(rss_before) as f64 / total as f64;
    eprintln!(
        "{total} signed requests in {took:?} ({:.0}/s, {:?}): {statuses:?}; Envoy RSS {:.1} -> {:.1} MiB, {per_nonce:.2} bytes per live nonce",
        total as f64 / took.as_secs_f64(),
        envoy.loader,
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
    );
    assert_eq!(statuses.get(&200).copied(), Some(total), "every fresh signed request is accepted: {statuses:?}");
    assert_eq!(refused.load(Ordering::Relaxed), 0);
    assert_eq!(envoy.stat("wsgiproxy.middleware.verified"), total);

    // Replays of a sample spread over the run, byte for byte, each on a new connection
    // (whichever worker takes it).
    assert!(captured.len() >= 1000, "{}", captured.len());
    for (n, request) in &captured {
        let r = raw_request(envoy.port, request);
        assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_replayed")), "replay of {n}");
    }
    eprintln!("{} replays refused", captured.len());
    match envoy.loader {
        Loader::Native => assert!(per_nonce <= 16.0, "{per_nonce:.2} bytes per live nonce"),
        Loader::Wasm => {
            let fixed = 32.0 * 1048576.0 / total as f64;
            assert!(per_nonce <= 16.0 + fixed, "{per_nonce:.2} bytes per live nonce (16 + {fixed:.2} of the 32 MB fixed allowance)");
        }
    }
}
