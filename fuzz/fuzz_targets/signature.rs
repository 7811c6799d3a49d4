//! The signature header and the Date it travels with.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use wsgiproxy_protocol::signature::{check_date, verify_mac, Algorithm, KeyRing, SignatureHeader, SignedParts};

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_485_600);
    let _ = check_date(data, now, Duration::from_secs(300), Duration::from_secs(2));
    if let Some(sig) = SignatureHeader::parse(data) {
        let ring = KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), b"0123456789abcdef".to_vec())]).expect("ring");
        let parts = SignedParts { method: b"GET", authority: b"h", path: b"/", date: data, protocol_headers: vec![("x-wsgiproxy-version", data)] };
        // A forged signature never verifies.
        assert!(verify_mac(&ring, &sig, &parts).is_err());
    }
});
