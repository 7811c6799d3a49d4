//! RFC 9421: Signature-Input and Signature as received, and a protocol header.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use wsgiproxy_protocol::rfc9421::{verify, without_our_member, Message};
use wsgiproxy_protocol::signature::{is_signed_header, Algorithm, KeyRing};

fuzz_target!(|data: &[u8]| {
    // Signature-Input, Signature and one protocol header's value, split by newlines.
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let input = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();
    let fields = vec![
        ("signature-input".to_string(), input.to_vec()),
        ("signature".to_string(), signature.to_vec()),
        ("x-wsgiproxy-version".to_string(), header.to_vec()),
    ];
    let ring = KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), b"0123456789abcdef".to_vec())]).expect("ring");
    let message = Message { method: b"GET", https: false, authority: header, target: b"/p?q", fields: &fields };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_485_600);
    // A forged signature never verifies.
    assert!(verify(&ring, &message, now, Duration::from_secs(300), is_signed_header).is_err());
    let _ = without_our_member(input);
});
