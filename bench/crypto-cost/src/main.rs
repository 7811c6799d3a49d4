//! One signature verification, `N` times, for `scripts/crypto-cost.sh`: it counts the
//! instructions of `N = 0` and `N = R` under callgrind, natively and in Wasm (Wasmtime),
//! and prints the difference per call. Usage: `crypto-cost <variant> <N>`.
//!
//! Variants: what the protocol crate ships (`hmac-sha256`, `ed25519`, `ecdsa-p256`,
//! through its public API, with the features of the loader the build is for: the Wasm
//! filter's key tables, the native module's ring and ed25519-dalek), and the libraries
//! issue #30 weighed, called directly (`ed25519-dalek`'s `verify_strict`, `p256-ring`,
//! `p256-0.13`, `p256-0.14`).

use std::hint::black_box;
use std::process::ExitCode;

use ed25519_dalek::Signer as _;
use wsgiproxy_protocol::asymmetric::{Ed25519PublicKey, P256PublicKey, PublicKey};
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
            let key = PublicKey::Ed25519(Ed25519PublicKey::new(signer.verifying_key()));
            Box::new(move |m| key.verifies(m, &signature))
        }
        "ed25519-dalek" => {
            let signer = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
            let signature = signer.sign(&message);
            let key = signer.verifying_key();
            Box::new(move |m| key.verify_strict(m, &signature).is_ok())
        }
        "ecdsa-p256" => {
            let signer = p256_signer();
            let signature: p256::ecdsa::Signature = signer.sign(&message);
            let signature = signature.to_bytes().to_vec();
            let key = PublicKey::EcdsaP256(P256PublicKey::new(*signer.verifying_key()));
            Box::new(move |m| key.verifies(m, &signature))
        }
        "p256-ring" => {
            let signer = p256_signer();
            let signature: p256::ecdsa::Signature = signer.sign(&message);
            let signature = signature.to_bytes().to_vec();
            let point = signer.verifying_key().to_encoded_point(false).as_bytes().to_vec();
            let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
            Box::new(move |m| key.verify(m, &signature).is_ok())
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
    // Once before counting, in every run: a key's table is made on its first use.
    if !verify(&message) {
        return ExitCode::FAILURE;
    }
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
