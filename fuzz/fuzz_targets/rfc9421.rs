//! RFC 9421: Signature-Input and Signature as received, and a protocol header,
//! against HMAC and public-key (Ed25519, ECDSA P-256 and P-384, RSA-PSS and PKCS#1
//! v1.5) receivers; the header's bytes also as key text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use wsgiproxy_protocol::asymmetric::{parse_key, AsymmetricKey};
use wsgiproxy_protocol::rfc9421::{verify, without_our_member, Message};
use wsgiproxy_protocol::signature::{is_signed_header, Algorithm, KeyRing};

/// RFC 9421 Appendix B.1.4 and B.1.3's public keys.
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
const P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf\nw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==\n-----END PUBLIC KEY-----\n";

/// RFC 9421 Appendix B.1.2's public key (2048-bit RSA).
const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2\n+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+\noAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq\ngDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W\nUtzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4\naOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI\n2wIDAQAB\n-----END PUBLIC KEY-----\n";
/// A P-384 public key (JWK) OpenSSL made.
const P384_PUBLIC: &str = r#"{"kty":"EC","crv":"P-384","x":"zcSN2v2x544J_hn79QcSUYDbArKPPx2uI9F1YauaR1d0p0PY2G4Y5sKPZ1_kqWLU","y":"Zvb92uD1eDVCQX-ARD_1hzQYgmf2WzsZf57_DJR1SoycW3Q5RTL3lA6Hy23H9YPX"}"#;

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
        public_ring(Algorithm::RsaPssSha512, RSA_PUBLIC),
        public_ring(Algorithm::RsaV15Sha256, RSA_PUBLIC),
        public_ring(Algorithm::EcdsaP384Sha384, P384_PUBLIC),
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
        for algorithm in [
            Algorithm::Ed25519,
            Algorithm::EcdsaP256Sha256,
            Algorithm::EcdsaP384Sha384,
            Algorithm::RsaPssSha512,
            Algorithm::RsaV15Sha256,
        ] {
            let _ = parse_key(algorithm, text);
        }
    }
});
