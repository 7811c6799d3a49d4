//! Both backends give the same verdict: valid signatures, each byte flipped, the
//! other `s`, out-of-range scalars, other lengths, another key. With the default
//! backend this checks `p256` alone against the expected verdicts; with `ring`,
//! ring against `p256` and both against them; with `p256-tables`, the tables too.
//! Wycheproof's vectors and random signatures: `wycheproof.rs`, `differential.rs`.

use super::*;
use crate::asymmetric::{parse_key, AsymmetricKey, PrivateKey, PublicKey};
use crate::signature::Algorithm;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

// RFC 9421 Appendix B.1.3, "test-key-ecc-p256".
const RFC_P256_PRIVATE: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIFKbhfNZfpDsW43+0+JjUr9K+bTeuxopu653+hBaXGA7oAoGCCqGSM49
AwEHoUQDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM
4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END EC PRIVATE KEY-----
";
// Appendix B.2.4: the base and the signature the RFC prints.
const RFC_BASE: &str = "\"@status\": 200\n\
    \"content-type\": application/json\n\
    \"content-digest\": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:\n\
    \"content-length\": 23\n\
    \"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\"";
const RFC_SIGNATURE: &str = "wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==";
/// The order of P-256's group, big-endian.
pub(super) const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
    0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

fn rfc_signer() -> p256::ecdsa::SigningKey {
    match parse_key(Algorithm::EcdsaP256Sha256, RFC_P256_PRIVATE) {
        Ok(AsymmetricKey::Private(PrivateKey::EcdsaP256(key))) => key,
        other => panic!("{other:?}"),
    }
}

fn key_of(signer: &p256::ecdsa::SigningKey) -> P256PublicKey {
    P256PublicKey::new(*signer.verifying_key())
}

/// The key's verdict, after checking that every backend built gives it.
pub(super) fn verdict(key: &P256PublicKey, message: &[u8], signature: &[u8]) -> bool {
    let by_p256 = p256_verifies(&key.key, message, signature);
    #[cfg(feature = "ring-verify")]
    assert_eq!(ring_verifies(&key.ring_key, message, signature), by_p256, "ring and p256 differ on {signature:02x?}");
    #[cfg(feature = "p256-tables")]
    assert_eq!(
        key.table().unwrap().verifies(message, signature),
        by_p256,
        "the tables and p256 differ on {signature:02x?}, message {message:02x?}"
    );
    assert_eq!(key.verifies(message, signature), by_p256);
    by_p256
}

/// `r || s` with `s` replaced by `n - s` (the other valid form).
fn other_s(signature: &[u8]) -> Vec<u8> {
    let parsed = p256::ecdsa::Signature::from_slice(signature).unwrap();
    let (r, s) = parsed.split_scalars();
    p256::ecdsa::Signature::from_scalars(r, -s).unwrap().to_bytes().to_vec()
}

fn with_r(signature: &[u8], r: &[u8; 32]) -> Vec<u8> {
    [&r[..], &signature[32..]].concat()
}

fn with_s(signature: &[u8], s: &[u8; 32]) -> Vec<u8> {
    [&signature[..32], &s[..]].concat()
}

/// (message, a valid signature of it): the RFC's own, and ours of a few messages.
fn valid_pairs(signer: &p256::ecdsa::SigningKey) -> Vec<(Vec<u8>, Vec<u8>)> {
    use p256::ecdsa::signature::Signer as _;
    let mut pairs = vec![(RFC_BASE.as_bytes().to_vec(), B64.decode(RFC_SIGNATURE).unwrap())];
    for i in 0..8u8 {
        let message = format!("\"@method\": GET\n\"@signature-params\": (\"@method\");created={i}").into_bytes();
        let signature: p256::ecdsa::Signature = signer.sign(&message);
        pairs.push((message, signature.to_bytes().to_vec()));
    }
    pairs.push((Vec::new(), {
        let signature: p256::ecdsa::Signature = signer.sign(b"");
        signature.to_bytes().to_vec()
    }));
    pairs
}

#[test]
fn valid_signatures_verify_with_either_s() {
    let signer = rfc_signer();
    let key = key_of(&signer);
    for (message, signature) in valid_pairs(&signer) {
        assert!(verdict(&key, &message, &signature));
        let high_or_low = other_s(&signature);
        assert_ne!(high_or_low, signature);
        assert!(verdict(&key, &message, &high_or_low), "n - s verifies too");
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let signer = rfc_signer();
    let key = key_of(&signer);
    for (message, signature) in valid_pairs(&signer).into_iter().take(3) {
        for form in [signature.clone(), other_s(&signature)] {
            for i in 0..form.len() {
                for bit in [0x01, 0x80] {
                    let mut flipped = form.clone();
                    flipped[i] ^= bit;
                    assert!(!verdict(&key, &message, &flipped), "byte {i} ^ {bit:#x}");
                }
            }
        }
        if !message.is_empty() {
            let mut other_message = message.clone();
            other_message[0] ^= 1;
            assert!(!verdict(&key, &other_message, &signature));
        }
    }
}

#[test]
fn scalars_outside_1_to_n_minus_1_are_refused() {
    let signer = rfc_signer();
    let key = key_of(&signer);
    let mut n_plus_1 = N;
    n_plus_1[31] += 1;
    let mut one = [0u8; 32];
    one[31] = 1;
    for (message, signature) in valid_pairs(&signer).into_iter().take(3) {
        for scalar in [[0u8; 32], N, n_plus_1, [0xff; 32]] {
            assert!(!verdict(&key, &message, &with_r(&signature, &scalar)), "r = {scalar:02x?}");
            assert!(!verdict(&key, &message, &with_s(&signature, &scalar)), "s = {scalar:02x?}");
        }
        // In range but wrong: refused the same way.
        assert!(!verdict(&key, &message, &with_r(&signature, &one)));
        assert!(!verdict(&key, &message, &with_s(&signature, &one)));
        assert!(!verdict(&key, &message, &[0u8; 64]));
    }
}

#[test]
fn only_64_bytes_are_a_signature() {
    let signer = rfc_signer();
    let key = key_of(&signer);
    for (message, signature) in valid_pairs(&signer).into_iter().take(3) {
        for length in [0, 1, 32, 63] {
            assert!(!verdict(&key, &message, &signature[..length]), "{length} bytes");
        }
        for extra in [&[0u8][..], &[0, 0], &signature[..]] {
            assert!(!verdict(&key, &message, &[&signature[..], extra].concat()), "64 + {} bytes", extra.len());
        }
        // Nor the DER form that OpenSSL's own API uses.
        let der = p256::ecdsa::Signature::from_slice(&signature).unwrap().to_der();
        assert!(!verdict(&key, &message, der.as_bytes()));
    }
}

#[test]
fn another_keys_signatures_are_refused() {
    let signer = rfc_signer();
    let other = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    for (message, signature) in valid_pairs(&other).into_iter().skip(1) {
        assert!(verdict(&key_of(&other), &message, &signature));
        assert!(!verdict(&key_of(&signer), &message, &signature));
        assert!(!verdict(&key_of(&signer), &message, &other_s(&signature)));
    }
}

#[test]
fn equality_clone_and_debug() {
    let signer = rfc_signer();
    let key = key_of(&signer);
    assert_eq!(key.clone(), key);
    assert_eq!(key.verifying_key(), signer.verifying_key());
    assert_ne!(key_of(&p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap()), key);
    assert_eq!(format!("{key:?}"), "P256PublicKey");
    assert_eq!(format!("{:?}", PublicKey::EcdsaP256(key)), "PublicKey(ecdsa-p256-sha256)");
    #[cfg(feature = "ring-verify")]
    {
        let point = signer.verifying_key().to_encoded_point(false);
        assert_eq!(key_of(&signer).ring_key.as_ref(), point.as_bytes());
        assert_eq!(point.as_bytes().len(), 65);
    }
}

/// A key read again (a directory's refresh) takes the table it has; the table goes
/// with the last key holding it.
#[cfg(feature = "p256-tables")]
#[test]
fn a_key_read_again_shares_its_table_until_no_key_holds_it() {
    let signer = p256::ecdsa::SigningKey::from_bytes(&[0x5a; 32].into()).unwrap();
    let (first, again) = (key_of(&signer), key_of(&signer));
    let table = first.table().unwrap().clone();
    assert!(std::sync::Arc::ptr_eq(&table, again.table().unwrap()));
    let gone = std::sync::Arc::downgrade(&table);
    drop((first, again, table));
    assert_eq!(gone.strong_count(), 0);
    let message = b"signed after the table was made again";
    let signature: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&signer, message);
    assert!(key_of(&signer).verifies(message, &signature.to_bytes()));
}
