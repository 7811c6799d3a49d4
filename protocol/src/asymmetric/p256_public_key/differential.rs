//! Random keys, messages and signatures, valid (`p256`'s signer) and mutated: every
//! backend built gives the same verdict (`super::tests::verdict` asserts it), and
//! the expected one where it is known.

use super::tests::{verdict, N};
use super::P256PublicKey;
use p256::ecdsa::signature::Signer as _;

/// splitmix64: reproducible pseudo-random test data.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }
}

fn n_minus(k: u8) -> [u8; 32] {
    let mut out = N;
    out[31] -= k;
    out
}

/// The signature with r (half 0) or s (half 1) replaced.
fn with_half(signature: &[u8], half: usize, value: &[u8; 32]) -> Vec<u8> {
    let mut out = signature.to_vec();
    out[half * 32..half * 32 + 32].copy_from_slice(value);
    out
}

#[test]
fn random_signatures_get_the_same_verdict_from_every_backend() {
    const KEYS: usize = 12;
    const MESSAGES_PER_KEY: usize = 12;
    let mut random = Random(0x5eed);
    let signers: Vec<p256::ecdsa::SigningKey> =
        std::iter::from_fn(|| Some(p256::ecdsa::SigningKey::from_slice(&random.bytes(32)).ok())).flatten().take(KEYS).collect();
    let keys: Vec<P256PublicKey> = signers.iter().map(|signer| P256PublicKey::new(*signer.verifying_key())).collect();
    let (mut checked, mut accepted) = (0, 0);
    let mut check = |key: &P256PublicKey, message: &[u8], signature: &[u8], expected: Option<bool>| {
        let got = verdict(key, message, signature);
        if let Some(expected) = expected {
            assert_eq!(got, expected, "{signature:02x?}");
        }
        checked += 1;
        accepted += usize::from(got);
    };
    for (index, (signer, key)) in signers.iter().zip(&keys).enumerate() {
        let other_key = &keys[(index + 1) % keys.len()];
        for _ in 0..MESSAGES_PER_KEY {
            let length = random.below(300);
            let message = random.bytes(length);
            let signature: p256::ecdsa::Signature = signer.sign(&message);
            let (r, s) = signature.split_scalars();
            let signature = signature.to_bytes().to_vec();
            let other_s = p256::ecdsa::Signature::from_scalars(r, -s).unwrap().to_bytes().to_vec();
            check(key, &message, &signature, Some(true));
            check(key, &message, &other_s, Some(true));
            check(other_key, &message, &signature, Some(false));
            // A flipped bit anywhere in the signature, or in the message.
            let mut flipped = signature.clone();
            flipped[random.below(64)] ^= 1 << random.below(8);
            check(key, &message, &flipped, Some(false));
            if !message.is_empty() {
                let mut other_message = message.clone();
                other_message[random.below(message.len())] ^= 1 << random.below(8);
                check(key, &other_message, &signature, Some(false));
            }
            // r and s swapped, extreme or random halves, random bytes, other lengths.
            check(key, &message, &[&signature[32..], &signature[..32]].concat(), None);
            for half in 0..2 {
                for value in [[0u8; 32], N, n_minus(1), n_minus(2), [0xff; 32], {
                    let mut one = [0u8; 32];
                    one[31] = 1;
                    one
                }] {
                    check(key, &message, &with_half(&signature, half, &value), Some(false));
                }
                let random_half: [u8; 32] = random.bytes(32).try_into().unwrap();
                check(key, &message, &with_half(&signature, half, &random_half), None);
            }
            check(key, &message, &random.bytes(64), None);
            let length = random.below(80);
            check(key, &message, &random.bytes(length), None);
        }
    }
    assert!(checked > 2_500, "{checked}");
    assert_eq!(accepted, 2 * KEYS * MESSAGES_PER_KEY);
}
