//! ECDSA P-256 verification on fixed-base tables (feature `p256-tables`, the Wasm
//! filter's) against `p256`'s: the same verdict for any message and signature bytes.
//! Input: a key selector, a mode (odd: the 64 bytes are the signature; even: they are
//! XORed into a valid signature of the message, to search near valid ones), 64
//! bytes, then the message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use std::sync::OnceLock;
use wsgiproxy_protocol::asymmetric::P256PublicKey;

struct Key {
    signer: p256::ecdsa::SigningKey,
    /// With its table, built once: the tables cost milliseconds to build.
    public: P256PublicKey,
}

fn keys() -> &'static [Key] {
    static KEYS: OnceLock<Vec<Key>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [[1u8; 32], [7; 32], [0x42; 32], {
            let mut one = [0u8; 32];
            one[31] = 1; // the key G itself: sums meet doubling and infinity
            one
        }]
        .iter()
        .map(|secret| {
            let signer = p256::ecdsa::SigningKey::from_slice(secret).expect("a valid secret");
            Key { public: P256PublicKey::new(*signer.verifying_key()), signer }
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let [selector, mode, rest @ ..] = data else { return };
    if rest.len() < 64 {
        return;
    }
    let (bytes, message) = rest.split_at(64);
    let key = &keys()[usize::from(*selector) % keys().len()];
    let signature: Vec<u8> = if mode & 1 == 1 {
        bytes.to_vec()
    } else {
        let valid: p256::ecdsa::Signature = key.signer.sign(message);
        valid.to_bytes().iter().zip(bytes).map(|(a, b)| a ^ b).collect()
    };
    let by_p256 =
        p256::ecdsa::Signature::from_slice(&signature).is_ok_and(|parsed| key.signer.verifying_key().verify(message, &parsed).is_ok());
    assert_eq!(key.public.verifies(message, &signature), by_p256, "{signature:02x?}");
});
