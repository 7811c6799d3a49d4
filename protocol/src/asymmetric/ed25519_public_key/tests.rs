//! The key's verifier (the table's, with `ed25519-key-table`) against
//! ed25519-dalek's `verify_strict` and against Wycheproof's verdicts: every vector,
//! then every bit of valid signatures flipped, `S + L`, small-order `R` and keys.

use super::*;
use curve25519_dalek::constants::EIGHT_TORSION;
use ed25519_dalek::Signer as _;

/// Wycheproof's Ed25519 vectors (C2SP/wycheproof `testvectors_v1/ed25519_test.json`,
/// Apache-2.0).
const WYCHEPROOF: &str = include_str!("../../../tests/data/wycheproof/ed25519_test.json");

/// The group's order L, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0x10,
];

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// Both verifiers, which must agree; their verdict.
fn verdict(key: &ed25519_dalek::VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let ours = Ed25519PublicKey::new(*key).verifies(message, signature);
    assert_eq!(ours, dalek_verifies(key, message, signature), "the two verifiers disagree on {}", hex_of(signature));
    ours
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn wycheproof_vectors_get_their_verdicts() {
    let doc: serde_json::Value = serde_json::from_str(WYCHEPROOF).unwrap();
    let mut count = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let pk = hex(group["publicKey"]["pk"].as_str().unwrap());
        let key = <[u8; 32]>::try_from(pk.as_slice()).ok().and_then(|pk| ed25519_dalek::VerifyingKey::from_bytes(&pk).ok());
        for test in group["tests"].as_array().unwrap() {
            let (message, signature) = (hex(test["msg"].as_str().unwrap()), hex(test["sig"].as_str().unwrap()));
            let expected = test["result"] == "valid";
            let got = key.as_ref().is_some_and(|key| verdict(key, &message, &signature));
            assert_eq!(got, expected, "Wycheproof tcId {}: {}", test["tcId"], test["comment"]);
            count += 1;
        }
    }
    assert_eq!(count, doc["numberOfTests"].as_u64().unwrap());
}

#[test]
fn every_mutation_of_valid_signatures_gets_the_same_verdict_from_both() {
    for seed in 1..=3u8 {
        let signer = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let key = signer.verifying_key();
        let message = vec![seed; usize::from(seed) * 37];
        let signature = signer.sign(&message).to_bytes();
        assert!(verdict(&key, &message, &signature));
        assert!(!verdict(&key, b"another message", &signature));
        let mut refused = 0;
        for bit in 0..512 {
            let mut flipped = signature;
            flipped[bit / 8] ^= 1 << (bit % 8);
            refused += usize::from(!verdict(&key, &message, &flipped));
        }
        assert_eq!(refused, 512, "a flipped bit never verifies");
        // S + L: the same S modulo L, a second encoding: refused.
        let mut s_plus_l = signature;
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(s_plus_l[32 + i]) + u16::from(L[i]) + carry;
            s_plus_l[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        assert!(!verdict(&key, &message, &s_plus_l));
        for length in [0, 32, 63, 65, 128] {
            assert!(!verdict(&key, &message, &vec![1; length]));
        }
    }
}

/// Small-order points as `R` or as the key: refused by both (the key's table is not
/// even made). Their canonical encodings, and non-canonical ones of the identity.
#[test]
fn small_order_points_verify_nothing() {
    let mut encodings: Vec<[u8; 32]> = EIGHT_TORSION.iter().map(|p| p.compress().to_bytes()).collect();
    let mut identity_with_sign = [0u8; 32];
    identity_with_sign[0] = 1;
    identity_with_sign[31] = 0x80;
    encodings.push(identity_with_sign);
    let mut y_is_p_plus_1 = [0xffu8; 32];
    y_is_p_plus_1[0] = 0xee;
    y_is_p_plus_1[31] = 0x7f;
    encodings.push(y_is_p_plus_1);
    let signer = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let message = b"a message";
    let signature = signer.sign(message).to_bytes();
    for encoding in &encodings {
        let mut small_r = signature;
        small_r[..32].copy_from_slice(encoding);
        assert!(!verdict(&signer.verifying_key(), message, &small_r));
        if let Ok(small_key) = ed25519_dalek::VerifyingKey::from_bytes(encoding) {
            assert!(!verdict(&small_key, message, &signature));
            // A signature "by" a small-order key: S = 0, R = the identity, which
            // [0]B = R + [k]A would let through for some k without the check.
            let mut forged = [0u8; 64];
            forged[0] = 1;
            assert!(!verdict(&small_key, message, &forged));
        }
    }
}

/// A signature whose equation holds with R the identity (S = k·a, so [S]B − [k]A is
/// the identity): only the small-order check on R refuses it, as RFC 8032's strict
/// reading and verify_strict do.
#[test]
fn an_equation_that_holds_with_a_small_order_r_is_refused() {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use sha2::{Digest as _, Sha512};
    let signer = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let key = signer.verifying_key();
    let message = b"forged with the identity as R";
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut hash = [0u8; 64];
    hash.copy_from_slice(&Sha512::new().chain_update(identity).chain_update(key.as_bytes()).chain_update(message).finalize());
    let k = curve25519_dalek::Scalar::from_bytes_mod_order_wide(&hash);
    let s = k * signer.to_scalar();
    let minus_a = -curve25519_dalek::edwards::CompressedEdwardsY(key.to_bytes()).decompress().unwrap();
    assert_eq!((ED25519_BASEPOINT_POINT * s + minus_a * k).compress().to_bytes(), identity, "the equation holds");
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&identity);
    signature[32..].copy_from_slice(s.as_bytes());
    assert!(!verdict(&key, message, &signature));
}
