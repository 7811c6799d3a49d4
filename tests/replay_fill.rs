//! A helper of `bench/bench.py --replay-memory`, not a test: fills a running
//! verifying Envoy's replay memory with millions of fresh signed requests at full
//! speed, the bench's middleware input (the same target, Host and protocol headers),
//! each with its own nonce, all with one given Date. Ignored by the test run; the
//! bench builds it with `cargo test --release --test replay_fill --no-run` and runs
//! the binary with `--ignored --exact fill`, configured by the environment:
//!
//! - `WSGIPROXY_FILL_PORT`: the Envoy listener (required)
//! - `WSGIPROXY_FILL_DATE`: the Date every request carries (required; within the skew)
//! - `WSGIPROXY_FILL_KEY`: key `k1`'s bytes (required)
//! - `WSGIPROXY_FILL_COUNT`: requests to send (default 2,500,000)
//! - `WSGIPROXY_FILL_CONNECTIONS`: keep-alive connections, a thread each (default 32)
//!
//! It prints one line, `fill: {json}`, with what it sent and the statuses answered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::read_status;
use wsgiproxy_protocol::signature::{sign, Algorithm, KeyRing, SignedParts};

const AUTHORITY: &str = "backend.internal:8080";
const TARGET: &str = "/myapp/article/1?x=1";
/// What the app role adds for the bench's client (bench.py `signed_requests`).
const PROTOCOL: [(&str, &str); 7] = [
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-scheme", "http"),
    ("x-forwarded-server", "www.example.com"),
    ("x-script-name", "/blog"),
    ("x-traversal-path", "/myapp"),
    ("x-wsgiproxy-str-0", "REMOTE_USER bob"),
    ("x-wsgiproxy-version", "0.1"),
];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see tests/replay_fill.rs)"))
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?}"))).unwrap_or(default)
}

/// The bytes before the signature's value, and after it: the same for every request.
fn head_and_tail(date: &str) -> (String, String) {
    let mut head = format!("GET {TARGET} HTTP/1.1\r\nHost: {AUTHORITY}\r\nDate: {date}\r\n");
    for (name, value) in PROTOCOL {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("x-wsgiproxy-signature: ");
    (head, "\r\n\r\n".into())
}

#[test]
#[ignore = "a helper of bench/bench.py --replay-memory, not a test"]
fn fill() {
    let port: u16 = env("WSGIPROXY_FILL_PORT").parse().unwrap();
    let date = env("WSGIPROXY_FILL_DATE");
    let key = env("WSGIPROXY_FILL_KEY");
    let total = env_or("WSGIPROXY_FILL_COUNT", 2_500_000);
    let connections = env_or("WSGIPROXY_FILL_CONNECTIONS", 32).max(1);
    let ring = Arc::new(KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), key.into_bytes())]).unwrap());
    // Nonces: a counter, then this run's own 8 bytes, so that two fills (or the
    // bench's random nonces) never share one.
    let run = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 ^ (u64::from(std::process::id()) << 40);
    let sent = Arc::new(AtomicU64::new(0));
    let began = Instant::now();

    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let (ring, sent, date) = (ring.clone(), sent.clone(), date.clone());
            std::thread::spawn(move || {
                let (head, tail) = head_and_tail(&date);
                let protocol_headers: Vec<(&str, &[u8])> = PROTOCOL.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
                let parts = SignedParts {
                    method: b"GET",
                    authority: AUTHORITY.as_bytes(),
                    path: TARGET.as_bytes(),
                    date: date.as_bytes(),
                    protocol_headers,
                };
                let mut statuses = BTreeMap::<u16, u64>::new();
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_nodelay(true).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let mut request = Vec::with_capacity(head.len() + 128);
                let mut n = c;
                while n < total {
                    let mut nonce = [0u8; 16];
                    nonce[..8].copy_from_slice(&n.to_be_bytes());
                    nonce[8..].copy_from_slice(&run.to_be_bytes());
                    let signature = sign(&ring, &nonce, &parts).unwrap();
                    request.clear();
                    request.extend_from_slice(head.as_bytes());
                    request.extend_from_slice(signature.as_bytes());
                    request.extend_from_slice(tail.as_bytes());
                    writer.write_all(&request).unwrap();
                    *statuses.entry(read_status(&mut reader, &mut line)).or_default() += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += connections;
                }
                statuses
            })
        })
        .collect();

    // Progress on stderr, every tenth.
    let progress = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let mut next = total / 10;
            while next > 0 && next < total {
                std::thread::sleep(Duration::from_millis(500));
                let done = sent.load(Ordering::Relaxed);
                if done >= next {
                    let secs = began.elapsed().as_secs_f64();
                    eprintln!("fill: {done} of {total} in {secs:.0} s ({:.0}/s)", done as f64 / secs);
                    next = (done / (total / 10) + 1) * (total / 10);
                }
            }
        })
    };
    let mut statuses = BTreeMap::<u16, u64>::new();
    for t in threads {
        for (status, count) in t.join().unwrap() {
            *statuses.entry(status).or_default() += count;
        }
    }
    progress.join().unwrap();
    let secs = began.elapsed().as_secs_f64();
    let statuses: Vec<String> = statuses.iter().map(|(s, c)| format!("\"{s}\": {c}")).collect();
    println!(
        "fill: {{\"sent\": {}, \"seconds\": {secs:.1}, \"per_second\": {:.0}, \"statuses\": {{{}}}}}",
        sent.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed) as f64 / secs,
        statuses.join(", ")
    );
}
