//! One signature verification, `N` times, for `scripts/crypto-cost.sh`: it counts the
//! instructions of `N = 0` and `N = R` under callgrind, natively and in Wasm (Wasmtime),
//! and prints the difference per call. Usage: `crypto-cost <variant> <N>`.
//!
//! Variants: what the protocol crate ships (`hmac-sha256`, `ed25519`, `ecdsa-p256`,
//! through its public API, with the features of the loader the build is for), and the
//! alternatives issue #30 weighed (`ed25519-key-table`, `p256-0.13`, `p256-0.14`).

use std::hint::black_box;
use std::process::ExitCode;

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::BasepointTable as _;
use ed25519_dalek::Signer as _;
use sha2::{Digest as _, Sha512};
use wsgiproxy_protocol::asymmetric::{P256PublicKey, PublicKey};
use wsgiproxy_protocol::hmac_key::{HmacHash, HmacKey};

/// About the length of the benchmark request's RFC 9421 signature base (590 bytes).
fn base() -> Vec<u8> {
    let line = b"\"x-forwarded-for\": 203.0.113.7\n";
    line.iter().copied().cycle().take(590).collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(variant), Some(Ok(n))) = (args.get(1), args.get(2).map(|n| n.parse::<usize>())) else {
        eprintln!("usage: crypto-cost <variant> <N>");
        return ExitCode::from(2);
    };
    let message = base();
    let verify: Box<dyn Fn(&[u8]) -> bool> = match variant.as_str() {
        "hmac-sha256" => {
            let Ok(key) = HmacKey::new(HmacHash::Sha256, b"a-shared-secret-of-thirty-two-by") else { return ExitCode::FAILURE };
            let mac = key.mac(&message);
            Box::new(move |m| key.verify(m, &mac))
        }
        "ed25519" => {
            let signer = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
            let signature = signer.sign(&message).to_bytes();
            let key = PublicKey::Ed25519(signer.verifying_key());
            Box::new(move |m| key.verifies(m, &signature))
        }
        "ed25519-key-table" => {
            let signer = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
            let signature = signer.sign(&message).to_bytes();
            let a_bytes = signer.verifying_key().to_bytes();
            let Some(a) = CompressedEdwardsY(a_bytes).decompress() else { return ExitCode::FAILURE };
            // [k](-A) from a fixed-base table of -A made once, as for the base point:
            // no doublings, at the price of constant-time table reads.
            let minus_a = EdwardsBasepointTable::create(&-a);
            Box::new(move |m| ed25519_with_key_table(&minus_a, &a, &a_bytes, m, &signature))
        }
        "ecdsa-p256" => {
            let signer = p256_signer();
            let signature: p256::ecdsa::Signature = signer.sign(&message);
            let signature = signature.to_bytes().to_vec();
            let key = PublicKey::EcdsaP256(P256PublicKey::new(*signer.verifying_key()));
            Box::new(move |m| key.verifies(m, &signature))
        }
        "p256-0.13" => {
            use p256::ecdsa::signature::Verifier as _;
            let signer = p256_signer();
            let signature: p256::ecdsa::Signature = signer.sign(&message);
            let key = *signer.verifying_key();
            Box::new(move |m| key.verify(m, &signature).is_ok())
        }
        "p256-0.14" => {
            use p256_next::ecdsa::signature::Verifier as _;
            let signer = p256_signer();
            let signature: p256::ecdsa::Signature = signer.sign(&message);
            let point = signer.verifying_key().to_encoded_point(false);
            let (Ok(key), Ok(signature)) = (
                p256_next::ecdsa::VerifyingKey::from_sec1_bytes(point.as_bytes()),
                p256_next::ecdsa::Signature::from_slice(&signature.to_bytes()),
            ) else {
                return ExitCode::FAILURE;
            };
            Box::new(move |m| key.verify(m, &signature).is_ok())
        }
        _ => {
            eprintln!("unknown variant {variant}");
            return ExitCode::from(2);
        }
    };
    let verified = (0..n).filter(|_| verify(black_box(&message))).count();
    println!("{variant}: {verified} of {n} verified");
    if verified == n {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn p256_signer() -> p256::ecdsa::SigningKey {
    let mut secret = [0u8; 32];
    secret[31] = 7;
    match p256::ecdsa::SigningKey::from_bytes(&secret.into()) {
        Ok(key) => key,
        Err(_) => unreachable_key(),
    }
}

#[allow(clippy::panic)]
fn unreachable_key() -> ! {
    panic!("7 is a valid P-256 scalar")
}

/// RFC 8032's check as ed25519-dalek's `verify_strict` makes it, with [k]A taken
/// from a table of A's multiples: R' = [s]B + [k](-A), compared with R.
fn ed25519_with_key_table(
    minus_a: &EdwardsBasepointTable,
    a: &curve25519_dalek::EdwardsPoint,
    a_bytes: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> bool {
    let (r_bytes, s_bytes) = signature.split_at(32);
    let (Ok(r_bytes), Ok(s_bytes)) = (<[u8; 32]>::try_from(r_bytes), <[u8; 32]>::try_from(s_bytes)) else { return false };
    let Some(r) = CompressedEdwardsY(r_bytes).decompress() else { return false };
    if r.is_small_order() || a.is_small_order() {
        return false;
    }
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else { return false };
    let k = Scalar::from_hash(Sha512::new().chain_update(r_bytes).chain_update(a_bytes).chain_update(message));
    (ED25519_BASEPOINT_TABLE * &s + minus_a * &k).compress().0 == r_bytes
}
