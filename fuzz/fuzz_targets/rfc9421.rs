//! RFC 9421: Signature-Input and Signature as received, and a protocol header,
//! against HMAC and public-key (Ed25519, ECDSA P-256) receivers; the header's
//! bytes also as key text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use wsgiproxy_protocol::asymmetric::{parse_key, AsymmetricKey};
use wsgiproxy_protocol::rfc9421::{verify, without_our_member, Message};
use wsgiproxy_protocol::signature::{is_signed_header, Algorithm, KeyRing};

/// RFC 9421 Appendix B.1.4 and B.1.3's public keys.
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
const P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf\nw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==\n-----END PUBLIC KEY-----\n";

fn public_ring(algorithm: Algorithm, pem: &str) -> KeyRing {
    let key = parse_key(algorithm, pem).expect("key");
    assert!(matches!(key, AsymmetricKey::Public(_)));
    KeyRing::asymmetric(algorithm, vec![("k1".into(), key)]).expect("ring")
}

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
    let rings = [
        KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), b"0123456789abcdef".to_vec())]).expect("ring"),
        public_ring(Algorithm::Ed25519, ED25519_PUBLIC),
        public_ring(Algorithm::EcdsaP256Sha256, P256_PUBLIC),
    ];
    let message = Message { method: b"GET", https: false, authority: header, target: b"/p?q", fields: &fields };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_485_600);
    for ring in &rings {
        // A forged signature never verifies.
        assert!(verify(ring, &message, now, Duration::from_secs(300), Duration::from_secs(2), is_signed_header).is_err());
    }
    let _ = without_our_member(input);
    // Key text (PEM, JWK or anything) never panics the parser.
    if let Ok(text) = std::str::from_utf8(header) {
        for algorithm in [Algorithm::Ed25519, Algorithm::EcdsaP256Sha256] {
            let _ = parse_key(algorithm, text);
        }
    }
});
