//! One RFC 9421 HMAC-SHA256 signature made and checked many times over the
//! benchmark's request, for callgrind (BENCHMARKS.md "Where the cost goes: RFC 9421"):
//!
//!     cargo build --release -p wsgiproxy-protocol --example rfc9421_profile
//!     valgrind --tool=callgrind target/release/examples/rfc9421_profile 2000
//!     callgrind_annotate --inclusive=yes callgrind.out.*

// A profiling driver, not production code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wsgiproxy_protocol::rfc9421::{self, Message};
use wsgiproxy_protocol::signature::{is_signed_header, Algorithm, KeyRing};

const PROTOCOL: [(&str, &str); 7] = [
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-scheme", "http"),
    ("x-forwarded-server", "www.example.com"),
    ("x-script-name", "/blog"),
    ("x-traversal-path", "/myapp"),
    ("x-wsgiproxy-str-0", "REMOTE_USER bob"),
    ("x-wsgiproxy-version", "0.1"),
];

#[inline(never)]
fn sign_once(ring: &KeyRing, message: &Message<'_>, names: &[&str], created: u64) -> rfc9421::SignatureFields {
    rfc9421::sign(ring, message, names, created, "0123456789abcdef0123456789abcdef").expect("signed")
}

#[inline(never)]
fn verify_once(ring: &KeyRing, message: &Message<'_>, now: SystemTime) -> rfc9421::Verified {
    let skew = Duration::from_secs(300);
    rfc9421::verify(ring, message, now, skew, skew, is_signed_header).expect("verified")
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let ring = KeyRing::new(Algorithm::HmacSha256, &[("k1".to_string(), b"benchmark-shared-key-0123456789".to_vec())]).expect("a ring");
    let fields: Vec<(String, Vec<u8>)> = PROTOCOL.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
    let names: Vec<&str> = PROTOCOL.iter().map(|(n, _)| *n).collect();
    let message = Message {
        method: b"GET",
        https: false,
        authority: b"backend.internal:8080",
        target: b"/myapp/article/1?x=1",
        fields: fields.as_slice(),
    };
    let now = SystemTime::now();
    let created = now.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let signed = sign_once(&ring, &message, &names, created);
    let mut received = fields.clone();
    received.push(("signature-input".to_string(), signed.signature_input.into_bytes()));
    received.push(("signature".to_string(), signed.signature.into_bytes()));
    let received_message = Message { fields: received.as_slice(), ..message };
    for _ in 0..rounds {
        black_box(sign_once(&ring, black_box(&message), &names, created));
        black_box(verify_once(&ring, black_box(&received_message), now));
        black_box(rfc9421::without_our_member(black_box(&received[7].1)));
        black_box(rfc9421::without_our_member(black_box(&received[8].1)));
    }
}
