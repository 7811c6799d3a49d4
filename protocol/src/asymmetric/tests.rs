//! The public-key algorithms: RFC 9421's own keys and examples, the key forms, the
//! verification policy (no algorithm confusion), the configuration's rules, and a
//! round trip through both roles.

use super::*;
use crate::app::{self, AppOutcome, AppRequest};
use crate::config::{parse, Config, ConfigError};
use crate::middleware::{self, MiddlewareOutcome, MiddlewareRequest, NonceMemory};
use crate::reason::Reason;
use crate::replay::Verdict;
use crate::request::{Decision, RequestHead};
use crate::rfc9421::{self, signature_base, Message};
use crate::signature::{is_signed_header, KeyRing, Nonce, Rejection};
use crate::trust::Downstream;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use serde_json::json;
use sfv::{BareItem, Dictionary, InnerList, ListEntry, Parser};
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// RFC 9421 Appendix B.1.3, "test-key-ecc-p256" (its private key is SEC1).
const RFC_P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf
w0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END PUBLIC KEY-----
";
const RFC_P256_PRIVATE: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIFKbhfNZfpDsW43+0+JjUr9K+bTeuxopu653+hBaXGA7oAoGCCqGSM49
AwEHoUQDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM
4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END EC PRIVATE KEY-----
";
// RFC 9421 Appendix B.1.4, "test-key-ed25519".
const RFC_ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
";
const RFC_ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
";

fn private(algorithm: Algorithm, text: &str) -> PrivateKey {
    match parse_key(algorithm, text) {
        Ok(AsymmetricKey::Private(key)) => key,
        other => panic!("{other:?}"),
    }
}

fn public(algorithm: Algorithm, text: &str) -> PublicKey {
    match parse_key(algorithm, text) {
        Ok(AsymmetricKey::Public(key)) => key,
        other => panic!("{other:?}"),
    }
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
}

fn inner_list(member: &str) -> InnerList {
    match Parser::new(format!("sig={member}").as_bytes()).parse::<Dictionary>().unwrap().get("sig") {
        Some(ListEntry::InnerList(list)) => list.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rfc_9421_appendix_b_2_6_ed25519_is_reproduced_byte_for_byte() {
    // The test request of Appendix B.2.
    let f = fields(&[
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", "application/json"),
        ("content-digest", "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"),
        ("content-length", "18"),
    ]);
    let message = Message { method: b"POST", https: false, authority: b"example.com", target: b"/foo?param=Value&Pet=dog", fields: &f };
    let params = inner_list(
        r#"("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
    );
    let base = signature_base(&message, &params).unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
         \"@method\": POST\n\
         \"@path\": /foo\n\
         \"@authority\": example.com\n\
         \"content-type\": application/json\n\
         \"content-length\": 18\n\
         \"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
    const EXPECTED: &str = "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==";
    let ring = KeyRing::asymmetric(
        Algorithm::Ed25519,
        vec![("test-key-ed25519".into(), AsymmetricKey::Private(private(Algorithm::Ed25519, RFC_ED25519_PRIVATE)))],
    )
    .unwrap();
    let signature = ring.signing_key().unwrap().signature_of(base.as_bytes()).unwrap();
    assert_eq!(B64.encode(&signature), EXPECTED);
    // The public key of B.1.4 verifies it; one bit off, or another message, does not.
    let key = public(Algorithm::Ed25519, RFC_ED25519_PUBLIC);
    assert!(key.verifies(base.as_bytes(), &signature));
    let mut flipped = signature.clone();
    flipped[10] ^= 1;
    assert!(!key.verifies(base.as_bytes(), &flipped));
    assert!(!key.verifies(base.replace("POST", "GET").as_bytes(), &signature));
    assert_eq!(private(Algorithm::Ed25519, RFC_ED25519_PRIVATE).public_key(), key);
}

#[test]
fn rfc_9421_appendix_b_2_4_ecdsa_p256_verifies() {
    // A response (`@status` is no request component): the base as the appendix prints it.
    let base = "\"@status\": 200\n\
                \"content-type\": application/json\n\
                \"content-digest\": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:\n\
                \"content-length\": 23\n\
                \"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\"";
    let signature = B64.decode("wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==").unwrap();
    let key = public(Algorithm::EcdsaP256Sha256, RFC_P256_PUBLIC);
    assert!(key.verifies(base.as_bytes(), &signature));
    assert!(!key.verifies(base.replace("23", "24").as_bytes(), &signature));
    let mut flipped = signature.clone();
    flipped[40] ^= 0x80;
    assert!(!key.verifies(base.as_bytes(), &flipped));
    // The private key of B.1.3 is that key's other half, and signs deterministically
    // (RFC 6979): the same base, the same signature, which the public key accepts.
    let signer = private(Algorithm::EcdsaP256Sha256, RFC_P256_PRIVATE);
    assert_eq!(signer.public_key(), key);
    let ours = signer.sign(base.as_bytes()).unwrap();
    assert_eq!(ours.len(), 64);
    assert_eq!(signer.sign(base.as_bytes()).unwrap(), ours);
    assert!(key.verifies(base.as_bytes(), &ours));
    // Not the DER form, nor any other length.
    for bad in [&signature[..63], &[0u8; 64][..], &[][..], &[signature.clone(), vec![0]].concat()[..]] {
        assert!(!key.verifies(base.as_bytes(), bad));
    }
}

/// A JWK of `key`, with its private part or not.
fn jwk_of(key: &PrivateKey, with_private: bool) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut jwk = match key {
        PrivateKey::Ed25519(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.verifying_key().as_bytes()), "d": b64(&k.to_bytes())}),
        PrivateKey::EcdsaP256(k) => {
            let point = k.verifying_key().to_encoded_point(false);
            json!({"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()), "d": b64(&k.to_bytes())})
        }
        other => unreachable!("{other:?}: see algorithm_tests.rs"),
    };
    if !with_private {
        jwk.as_object_mut().unwrap().remove("d");
    }
    jwk.to_string()
}

/// PKCS#8 and SPKI PEMs of `key`.
fn pems_of(key: &PrivateKey) -> (String, String) {
    use p256::pkcs8::LineEnding::LF;
    match key {
        PrivateKey::Ed25519(k) => (k.to_pkcs8_pem(LF).unwrap().to_string(), k.verifying_key().to_public_key_pem(LF).unwrap()),
        PrivateKey::EcdsaP256(k) => (k.to_pkcs8_pem(LF).unwrap().to_string(), k.verifying_key().to_public_key_pem(LF).unwrap()),
        other => unreachable!("{other:?}: see algorithm_tests.rs"),
    }
}

/// A key made from fixed bytes, for a second key besides the RFC's.
fn another(algorithm: Algorithm, byte: u8) -> PrivateKey {
    match algorithm {
        Algorithm::Ed25519 => PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[byte; 32])),
        _ => PrivateKey::EcdsaP256(p256::ecdsa::SigningKey::from_slice(&[byte; 32]).unwrap()),
    }
}

const BOTH: [Algorithm; 2] = [Algorithm::Ed25519, Algorithm::EcdsaP256Sha256];

fn rfc_private(algorithm: Algorithm) -> PrivateKey {
    match algorithm {
        Algorithm::Ed25519 => private(algorithm, RFC_ED25519_PRIVATE),
        _ => private(algorithm, RFC_P256_PRIVATE),
    }
}

#[test]
fn every_key_form_reads_the_same_key() {
    for algorithm in BOTH {
        let key = rfc_private(algorithm);
        let (pkcs8, spki) = pems_of(&key);
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"), "{pkcs8}");
        for text in [pkcs8.clone(), jwk_of(&key, true), pkcs8.replace('\n', "\\n"), format!("\n  {pkcs8}  \n")] {
            assert_eq!(private(algorithm, &text).public_key(), key.public_key(), "{algorithm:?}");
        }
        for text in [spki.clone(), jwk_of(&key, false), spki.replace('\n', "\\n")] {
            assert_eq!(public(algorithm, &text), key.public_key(), "{algorithm:?}");
        }
        // The same message, signed by one form, verified by the others.
        let signature = private(algorithm, &jwk_of(&key, true)).sign(b"message").unwrap();
        assert!(public(algorithm, &spki).verifies(b"message", &signature));
    }
    // The RFC's public keys are those of its private keys.
    assert_eq!(public(Algorithm::Ed25519, RFC_ED25519_PUBLIC), rfc_private(Algorithm::Ed25519).public_key());
    assert_eq!(public(Algorithm::EcdsaP256Sha256, RFC_P256_PUBLIC), rfc_private(Algorithm::EcdsaP256Sha256).public_key());
}

#[test]
fn unusable_keys_are_refused_without_quoting_them() {
    let ed = rfc_private(Algorithm::Ed25519);
    let ec = rfc_private(Algorithm::EcdsaP256Sha256);
    let (ed_pkcs8, ed_spki) = pems_of(&ed);
    let (ec_pkcs8, ec_spki) = pems_of(&ec);
    let jwk = |key: &PrivateKey, edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut value: serde_json::Value = serde_json::from_str(&jwk_of(key, true)).unwrap();
        edit(value.as_object_mut().unwrap());
        value.to_string()
    };
    let other_ed_x = serde_json::from_str::<serde_json::Value>(&jwk_of(&another(Algorithm::Ed25519, 9), false)).unwrap()["x"].clone();
    let other_ec_y =
        serde_json::from_str::<serde_json::Value>(&jwk_of(&another(Algorithm::EcdsaP256Sha256, 9), false)).unwrap()["y"].clone();
    let cases: Vec<(Algorithm, String, &str)> = vec![
        // Another algorithm's key, in every form.
        (Algorithm::Ed25519, ec_pkcs8.clone(), "PKCS#8"),
        (Algorithm::Ed25519, ec_spki.clone(), "SPKI"),
        (Algorithm::Ed25519, RFC_P256_PRIVATE.into(), "another kind"),
        (Algorithm::EcdsaP256Sha256, ed_pkcs8.clone(), "PKCS#8"),
        (Algorithm::EcdsaP256Sha256, ed_spki.clone(), "SPKI"),
        (Algorithm::Ed25519, jwk_of(&ec, true), "not an Ed25519 JWK"),
        (Algorithm::EcdsaP256Sha256, jwk_of(&ed, false), "not a P-256 JWK"),
        // Broken or inconsistent JWKs.
        (Algorithm::Ed25519, jwk(&ed, &|m| drop(m.insert("x".into(), other_ed_x.clone()))), "not the public half"),
        (Algorithm::EcdsaP256Sha256, jwk(&ec, &|m| drop(m.insert("y".into(), other_ec_y.clone()))), "not a point"),
        (Algorithm::Ed25519, jwk(&ed, &|m| drop(m.remove("x"))), "without \"x\""),
        (Algorithm::EcdsaP256Sha256, jwk(&ec, &|m| drop(m.remove("y"))), "without \"y\""),
        (Algorithm::Ed25519, jwk(&ed, &|m| drop(m.insert("d".into(), json!("*not base64*")))), "not base64url"),
        (Algorithm::Ed25519, jwk(&ed, &|m| drop(m.insert("d".into(), json!("AAAA")))), "not 32 bytes"),
        (Algorithm::EcdsaP256Sha256, jwk(&ec, &|m| drop(m.insert("d".into(), json!("A".repeat(43))))), "not a P-256 private key"),
        (Algorithm::EcdsaP256Sha256, jwk(&ec, &|m| drop(m.insert("alg".into(), json!("ES384")))), "another algorithm"),
        (Algorithm::Ed25519, jwk(&ed, &|m| drop(m.insert("alg".into(), json!("ES256")))), "another algorithm"),
        (Algorithm::Ed25519, jwk(&ed, &|m| drop(m.insert("d".into(), json!(5)))), "not a JWK"),
        // A small-order point: anyone could sign for it.
        (
            Algorithm::Ed25519,
            json!({"kty": "OKP", "crv": "Ed25519", "x": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}).to_string(),
            "weak",
        ),
        // Not keys at all, or not usable here.
        (Algorithm::Ed25519, "0123456789abcdef0123".into(), "is not a key"),
        (Algorithm::Ed25519, "{not json".into(), "not a JWK"),
        (Algorithm::Ed25519, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into(), "PKCS#8"),
        (Algorithm::Ed25519, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----".into(), "encrypted"),
        (Algorithm::EcdsaP256Sha256, "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----".into(), "another kind"),
        (Algorithm::HmacSha256, jwk_of(&ed, true), "HMAC"),
    ];
    for (algorithm, text, expected) in cases {
        let error = match parse_key(algorithm, &text) {
            Err(e) => e,
            Ok(key) => panic!("{algorithm:?} accepted {key:?} from {text}"),
        };
        assert!(error.contains(expected), "{algorithm:?}: {error:?} does not say {expected:?}");
        // No line of key material, nor a JWK's "d", is ever quoted.
        for secret in text.lines().filter(|l| !l.starts_with("-----") && l.len() > 8) {
            assert!(!error.contains(secret), "{error}");
        }
        assert!(!error.contains(&jwk_of(&ed, true)[40..60]) && !error.contains("AAAA"), "{error}");
    }
}

const NOW: u64 = 1_795_485_600;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn app_message(f: &[(String, Vec<u8>)]) -> Message<'_> {
    Message { method: b"GET", https: false, authority: b"backend:8080", target: b"/app/x?y=1", fields: f }
}

fn ring(algorithm: Algorithm, keys: Vec<(&str, AsymmetricKey)>) -> KeyRing {
    KeyRing::asymmetric(algorithm, keys.into_iter().map(|(id, k)| (id.to_string(), k)).collect()).unwrap()
}

fn signer(algorithm: Algorithm, id: &str, key: PrivateKey) -> KeyRing {
    ring(algorithm, vec![(id, AsymmetricKey::Private(key))])
}

fn verifier(algorithm: Algorithm, keys: Vec<(&str, PublicKey)>) -> KeyRing {
    ring(algorithm, keys.into_iter().map(|(id, k)| (id, AsymmetricKey::Public(k))).collect())
}

const PROTOCOL: [(&str, &str); 2] = [("x-wsgiproxy-version", "0.1"), ("x-forwarded-for", "10.0.0.1")];

/// The protocol headers, signed by `ring` as the `app` role signs.
fn signed(ring: &KeyRing, created: u64) -> Vec<(String, Vec<u8>)> {
    let f = fields(&PROTOCOL);
    let names: Vec<&str> = PROTOCOL.iter().map(|(n, _)| *n).collect();
    let s = rfc9421::sign(ring, &app_message(&f), &names, created, "00112233445566778899aabbccddeeff").unwrap();
    [f.clone(), fields(&[("signature-input", &s.signature_input), ("signature", &s.signature)])].concat()
}

/// The protocol headers with a signature made by hand: `params` after the covered
/// components, signed by `sign` over the base they give.
fn hand_signed(params: &str, sign: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<(String, Vec<u8>)> {
    let f = fields(&PROTOCOL);
    let member = format!(r#"("@method" "@authority" "@path" "@query" "x-forwarded-for" "x-wsgiproxy-version"){params}"#);
    let base = signature_base(&app_message(&f), &inner_list(&member)).unwrap();
    let signature = format!("wsgiproxy=:{}:", B64.encode(sign(base.as_bytes())));
    [f.clone(), fields(&[("signature-input", &format!("wsgiproxy={member}")), ("signature", &signature)])].concat()
}

fn check(ring: &KeyRing, f: &[(String, Vec<u8>)]) -> Result<rfc9421::Verified, Rejection> {
    rfc9421::verify(ring, &app_message(f), now(), Duration::from_secs(300), Duration::from_secs(2), is_signed_header)
}

#[test]
fn public_key_signatures_sign_and_verify_as_rfc_9421_says() {
    for algorithm in BOTH {
        let k1 = rfc_private(algorithm);
        let k2 = another(algorithm, 2);
        let all = signed(&signer(algorithm, "k1", k1.clone()), NOW);
        let input = String::from_utf8(all[2].1.clone()).unwrap();
        assert!(input.ends_with(&format!(r#";keyid="k1";alg="{}";nonce="00112233445566778899aabbccddeeff""#, algorithm.name())), "{input}");
        // Verified by the public key, by any key of a rotated ring, and by the signer's own ring.
        let v = check(&verifier(algorithm, vec![("k1", k1.public_key())]), &all).unwrap();
        assert_eq!((v.created, v.nonce), (NOW, rfc9421::nonce_key("00112233445566778899aabbccddeeff")));
        assert!(check(&verifier(algorithm, vec![("k2", k2.public_key()), ("k1", k1.public_key())]), &all).is_ok());
        assert!(check(&signer(algorithm, "k1", k1.clone()), &all).is_ok());
        // An unknown key id, or another key under the same id.
        assert_eq!(check(&verifier(algorithm, vec![("k2", k1.public_key())]), &all), Err(Rejection::Bad));
        assert_eq!(check(&verifier(algorithm, vec![("k1", k2.public_key())]), &all), Err(Rejection::Bad));
        // Tampered, stale.
        let receiver = verifier(algorithm, vec![("k1", k1.public_key())]);
        let mut tampered = all.clone();
        tampered[1].1 = b"10.0.0.2".to_vec();
        assert_eq!(check(&receiver, &tampered), Err(Rejection::Bad));
        assert_eq!(check(&receiver, &signed(&signer(algorithm, "k1", k1.clone()), NOW - 301)), Err(Rejection::Stale));
        // A public key cannot sign.
        let f = fields(&PROTOCOL);
        assert!(rfc9421::sign(&receiver, &app_message(&f), &["x-forwarded-for"], NOW, "n").is_none());
        // A malformed signature is refused, never a panic.
        for sig in ["wsgiproxy=::", "wsgiproxy=:AAAA:", &format!("wsgiproxy=:{}:", B64.encode([7u8; 65]))] {
            let mut bad = all.clone();
            bad[3].1 = sig.as_bytes().to_vec();
            assert_eq!(check(&receiver, &bad), Err(Rejection::Bad), "{sig}");
        }
    }
}

#[test]
fn the_key_decides_the_algorithm_never_the_request() {
    let created = format!(";created={NOW};keyid=\"k1\"");
    let nonce = ";nonce=\"n1\"";
    for algorithm in BOTH {
        let key = rfc_private(algorithm);
        let receiver = verifier(algorithm, vec![("k1", key.public_key())]);
        let by_key = |base: &[u8]| key.sign(base).unwrap();
        // `alg` naming the key's algorithm, or none: the key says what it is.
        assert!(check(&receiver, &hand_signed(&format!("{created};alg=\"{}\"{nonce}", algorithm.name()), &by_key)).is_ok());
        assert!(check(&receiver, &hand_signed(&format!("{created}{nonce}"), &by_key)).is_ok());
        // A valid signature by the right key, but `alg` says otherwise: refused.
        for alg in ["\"hmac-sha256\"", "\"ed25519\"", "\"ecdsa-p256-sha256\"", "\"rsa-pss-sha512\"", "ed25519", "1"] {
            if alg.trim_matches('"') == algorithm.name() && alg.starts_with('"') {
                continue;
            }
            let f = hand_signed(&format!("{created};alg={alg}{nonce}"), &by_key);
            assert_eq!(check(&receiver, &f), Err(Rejection::Bad), "{algorithm:?} with alg={alg}");
        }
        // The public key taken as an HMAC secret (the classic confusion): refused.
        for secret in [pems_of(&key).1.into_bytes(), key.public_key_bytes()] {
            let hmac = KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), secret)]).unwrap();
            let mac = |base: &[u8]| hmac.signing_key().unwrap().mac_of(base);
            for params in [format!("{created};alg=\"hmac-sha256\"{nonce}"), format!("{created}{nonce}")] {
                assert_eq!(check(&receiver, &hand_signed(&params, &mac)), Err(Rejection::Bad), "{algorithm:?} {params}");
            }
        }
        // An HMAC receiver refuses a public-key signature, with or without `alg`.
        let hmac = KeyRing::new(Algorithm::HmacSha256, &[("k1".into(), b"0123456789abcdef".to_vec())]).unwrap();
        assert_eq!(check(&hmac, &signed(&signer(algorithm, "k1", key.clone()), NOW)), Err(Rejection::Bad));
        assert_eq!(check(&hmac, &hand_signed(&format!("{created}{nonce}"), &by_key)), Err(Rejection::Bad));
        // And the two public-key algorithms never stand for each other.
        let other = if algorithm == Algorithm::Ed25519 { Algorithm::EcdsaP256Sha256 } else { Algorithm::Ed25519 };
        let other_receiver = verifier(other, vec![("k1", rfc_private(other).public_key())]);
        assert_eq!(check(&other_receiver, &signed(&signer(algorithm, "k1", key.clone()), NOW)), Err(Rejection::Bad));
    }
    // The policy on its own.
    let named = |name: &str| Some(BareItem::String(sfv::String::from_string(name.to_string()).unwrap()));
    assert!(rfc9421::alg_suits(Algorithm::Ed25519, named("ed25519").as_ref()));
    assert!(rfc9421::alg_suits(Algorithm::Ed25519, None));
    assert!(!rfc9421::alg_suits(Algorithm::Ed25519, named("hmac-sha256").as_ref()));
    assert!(!rfc9421::alg_suits(Algorithm::HmacSha256, named("ed25519").as_ref()));
    assert!(!rfc9421::alg_suits(Algorithm::HmacSha256, None), "HMAC requires alg, as before");
    assert!(!rfc9421::alg_suits(Algorithm::HmacSha1, named("hmac-sha1").as_ref()), "not an RFC 9421 algorithm");
}

impl PrivateKey {
    /// The public key's raw bytes (test only): what a careless verifier might take as an HMAC key.
    fn public_key_bytes(&self) -> Vec<u8> {
        match self.public_key() {
            PublicKey::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
            PublicKey::EcdsaP256(k) => k.verifying_key().to_encoded_point(false).as_bytes().to_vec(),
            other => unreachable!("{other:?}: see algorithm_tests.rs"),
        }
    }
}

#[test]
fn rings_hold_one_algorithm_and_named_keys() {
    let ed = || AsymmetricKey::Private(rfc_private(Algorithm::Ed25519));
    assert!(KeyRing::asymmetric(Algorithm::Ed25519, vec![]).is_err());
    assert!(KeyRing::asymmetric(Algorithm::HmacSha256, vec![("k".into(), ed())]).is_err());
    assert!(KeyRing::asymmetric(Algorithm::EcdsaP256Sha256, vec![("k".into(), ed())]).is_err());
    assert!(KeyRing::asymmetric(Algorithm::Ed25519, vec![("bad id".into(), ed())]).is_err());
    assert!(KeyRing::asymmetric(Algorithm::Ed25519, vec![("k".into(), ed()), ("k".into(), ed())]).is_err());
    assert!(KeyRing::new(Algorithm::Ed25519, &[("k".into(), RFC_ED25519_PRIVATE.as_bytes().to_vec())]).is_err());
    let debug = format!("{:?}", KeyRing::asymmetric(Algorithm::Ed25519, vec![("k".into(), ed())]).unwrap());
    assert!(!debug.contains("MC4C") && !debug.contains("SigningKey {"), "{debug}");
    assert_eq!(format!("{:?}", ed()), "Private(PrivateKey(ed25519, <secret>))");
}

// ---------------------------------------------------------------- configuration

fn config(value: serde_json::Value, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    parse(value.to_string().as_bytes(), &|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

fn config_error(value: serde_json::Value, env: &[(&str, &str)]) -> ConfigError {
    match config(value, env) {
        Err(e) => e,
        Ok(c) => panic!("accepted: {c:?}"),
    }
}

#[test]
fn the_app_role_signs_with_private_keys_the_middleware_verifies_with_public_keys() {
    for algorithm in BOTH {
        let key = rfc_private(algorithm);
        let (pkcs8, spki) = pems_of(&key);
        let name = algorithm.name();
        let app = |keys: serde_json::Value| json!({"role": "app", "href": "http://b/", "signature_format": "rfc9421", "algorithm": name, "secret": {"keys": keys}});
        let middleware = |keys: serde_json::Value| json!({"role": "middleware", "signature_format": "rfc9421", "algorithm": name, "secret": {"keys": keys}});
        // Private keys, from the environment or inline, PEM or JWK, for the app role.
        for (keys, env) in [
            (json!([{"id": "k1", "env": "KEY"}]), vec![("KEY", pkcs8.as_str())]),
            (json!([{"id": "k1", "value": jwk_of(&key, true)}]), vec![]),
        ] {
            let Ok(Config::App(a)) = config(app(keys), &env) else { panic!("{algorithm:?}") };
            assert_eq!(a.signing.as_ref().map(|r| r.algorithm), Some(algorithm));
        }
        // Public keys, rotated, for the middleware role.
        let keys = json!([{"id": "k2", "value": jwk_of(&another(algorithm, 2), false)}, {"id": "k1", "env": "KEY"}]);
        let Ok(Config::Middleware(m)) = config(middleware(keys), &[("KEY", &spki)]) else { panic!("{algorithm:?}") };
        assert!(m
            .verify
            .as_ref()
            .is_some_and(|r| r.algorithm == algorithm && r.ring().key("k1").is_some() && r.ring().key("k2").is_some()));

        // A public key given to the app role, a private one to the middleware role: named.
        let e = config_error(app(json!([{"id": "k1", "env": "KEY"}])), &[("KEY", &spki)]);
        assert_eq!(e.field, "secret.keys[0].env", "{e}");
        assert!(e.message.contains("is a public key"), "{e}");
        let e = config_error(middleware(json!([{"id": "k1", "value": jwk_of(&key, false)}, {"id": "k2", "value": pkcs8}])), &[]);
        assert_eq!(e.field, "secret.keys[1].value", "{e}");
        assert!(e.message.contains("is a private key"), "{e}");
        assert!(!e.to_string().contains(&pkcs8.lines().nth(1).unwrap()[..20]), "{e}");
        let e = config_error(middleware(json!([{"id": "k1", "value": jwk_of(&key, true)}])), &[]);
        assert_eq!(e.field, "secret.keys[0].value", "{e}");
        // Unreadable keys, twice the same id, a missing variable.
        let e = config_error(middleware(json!([{"id": "k1", "value": "0123456789abcdef"}])), &[]);
        assert_eq!(e.field, "secret.keys[0].value", "{e}");
        assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
        let e = config_error(middleware(json!([{"id": "k1", "value": spki}, {"id": "k1", "value": spki}])), &[]);
        assert_eq!(e.field, "secret.keys", "{e}");
        let e = config_error(middleware(json!([{"id": "k1", "env": "NOPE"}])), &[]);
        assert_eq!(e.field, "secret.keys[0].env", "{e}");
        // Not with v1 signatures: the field is named.
        let mut v1 = middleware(json!([{"id": "k1", "value": spki}]));
        v1.as_object_mut().unwrap().remove("signature_format");
        let e = config_error(v1.clone(), &[]);
        assert_eq!(e.field, "algorithm", "{e}");
        assert!(e.message.contains("rfc9421"), "{e}");
        v1["signature_format"] = json!("v1");
        assert_eq!(config_error(v1, &[]).field, "algorithm");
    }
    // One algorithm's key under the other's name.
    let e = config_error(
        json!({"role": "middleware", "signature_format": "rfc9421", "algorithm": "ecdsa-p256-sha256",
               "secret": {"keys": [{"id": "k1", "value": RFC_ED25519_PUBLIC}]}}),
        &[],
    );
    assert_eq!(e.field, "secret.keys[0].value", "{e}");
    let e = config_error(json!({"role": "middleware", "trust_ips": [], "algorithm": "ed448"}), &[]);
    assert_eq!(e.field, "algorithm");
    assert!(e.message.contains("ecdsa-p256-sha256"), "{e}");
    // HMAC secrets are read as before, even if they look like keys.
    let Ok(Config::Middleware(m)) = config(
        json!({"role": "middleware", "signature_format": "rfc9421", "secret": {"keys": [{"id": "k1", "value": RFC_ED25519_PUBLIC}]}}),
        &[],
    ) else {
        panic!()
    };
    assert_eq!(m.verify.map(|r| r.algorithm), Some(Algorithm::HmacSha256));
}

// ---------------------------------------------------------------- both roles

struct Memory(HashSet<Nonce>);

impl NonceMemory for Memory {
    fn remember(&mut self, nonce: &Nonce, _signed_at: u64, _now: u64) -> Result<Verdict, String> {
        Ok(if self.0.insert(*nonce) { Verdict::Fresh } else { Verdict::Replayed })
    }
}

/// What the middleware receives from the app role configured with `app_json`.
fn through_app(app_json: &serde_json::Value, nonce: u8) -> RequestHead {
    let Ok(Config::App(a)) = config(app_json.clone(), &[]) else { panic!("{app_json}") };
    let to = |pairs: &[(&str, &str)]| RequestHead::new(fields(pairs));
    let client = to(&[(":method", "GET"), (":path", "/blog/p?x=1"), (":authority", "www.example.com"), ("x-auth-user", "bob")]);
    let downstream = Downstream { tcp_peer: "203.0.113.9".parse().ok(), ..Default::default() };
    let req = AppRequest { head: &client, downstream, https: true, now: now(), nonce: [nonce; 16] };
    let decision = app::decide(&a, &req, &mut |_| None, &mut AppOutcome::default());
    let Decision::Forward(e) = decision else { panic!("{decision:?}") };
    let mut headers: Vec<(String, Vec<u8>)> =
        client.to_pairs().into_iter().filter(|(n, _)| !e.remove.iter().any(|r| r == n) && e.value_of(n).is_none()).collect();
    headers.extend(e.set.into_iter().map(|(n, v)| (n.into_owned(), v.into_owned())));
    RequestHead::new(headers)
}

fn through_middleware(m: &crate::config::MiddlewareConfig, head: &RequestHead, memory: &mut Memory) -> Result<String, Reason> {
    let downstream = Downstream { tcp_peer: "198.51.100.1".parse().ok(), ..Default::default() };
    let req = MiddlewareRequest { head, downstream, https: false, now: now(), local_address: None };
    match middleware::decide(m, &req, memory, &mut MiddlewareOutcome::default()) {
        Decision::Forward(e) => Ok(e.value_of("x-remote-user").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()),
        Decision::Reply(r) => Err(r.reason),
    }
}

#[test]
fn app_role_to_middleware_role() {
    for algorithm in BOTH {
        let key = rfc_private(algorithm);
        let app_json = json!({"role": "app", "href": "http://backend:8080/blog", "script_name": "/blog", "signature_format": "rfc9421",
                              "algorithm": algorithm.name(), "secret": {"keys": [{"id": "k1", "value": pems_of(&key).0}]},
                              "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}]});
        let middleware_json = |keys: serde_json::Value| {
            json!({"role": "middleware", "signature_format": "rfc9421", "algorithm": algorithm.name(), "on_untrusted": "reject",
                   "keys": {"REMOTE_USER": "x-remote-user"}, "secret": {"keys": keys}})
        };
        let Ok(Config::Middleware(m)) = config(middleware_json(json!([{"id": "k1", "value": jwk_of(&key, false)}])), &[]) else { panic!() };
        let mut memory = Memory(HashSet::new());
        let h = through_app(&app_json, 1);
        assert!(String::from_utf8_lossy(h.get("signature-input").unwrap()).contains(&format!("alg=\"{}\"", algorithm.name())));
        assert_eq!(through_middleware(&m, &h, &mut memory), Ok("bob".into()));
        assert_eq!(through_middleware(&m, &h, &mut memory), Err(Reason::SignatureReplayed));
        let mut tampered = through_app(&app_json, 2);
        for (n, v) in tampered.headers_mut().iter_mut() {
            if n == "x-wsgiproxy-str-0" {
                *v = b"REMOTE_USER root".to_vec();
            }
        }
        assert_eq!(through_middleware(&m, &tampered, &mut memory), Err(Reason::SignatureBad));
        // A receiver holding another public key, or an HMAC secret, under "k1".
        let Ok(Config::Middleware(other)) =
            config(middleware_json(json!([{"id": "k1", "value": jwk_of(&another(algorithm, 3), false)}])), &[])
        else {
            panic!()
        };
        assert_eq!(through_middleware(&other, &through_app(&app_json, 3), &mut memory), Err(Reason::SignatureBad));
        let Ok(Config::Middleware(hmac)) = config(
            json!({"role": "middleware", "signature_format": "rfc9421", "on_untrusted": "reject",
                   "secret": {"keys": [{"id": "k1", "value": pems_of(&key).1}]}}),
            &[],
        ) else {
            panic!()
        };
        assert_eq!(through_middleware(&hmac, &through_app(&app_json, 4), &mut memory), Err(Reason::SignatureBad));
    }
}

#[test]
fn ecdsa_signatures_verify_with_either_s() {
    // OpenSSL (so the Python library) does not normalise s to its low half: (r, s)
    // and (r, n - s) are both valid, and a verifier must take both.
    let key = rfc_private(Algorithm::EcdsaP256Sha256);
    let signature = p256::ecdsa::Signature::from_slice(&key.sign(b"message").unwrap()).unwrap();
    let (r, s) = signature.split_scalars();
    let other_s = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
    assert_ne!(other_s, signature);
    assert!(signature.normalize_s().is_some() != other_s.normalize_s().is_some(), "one is high, one is low");
    for form in [signature, other_s] {
        assert!(key.public_key().verifies(b"message", &form.to_bytes()));
    }
}
