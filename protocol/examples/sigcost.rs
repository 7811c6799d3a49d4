//! What one signature costs natively, per algorithm: the raw crypto (sign and
//! verify one signature base) and the whole RFC 9421 step of each role
//! (`rfc9421::sign`: build the base, sign, serialise the two fields;
//! `rfc9421::verify`: parse them, check the policy, rebuild the base, verify).
//! The message is the benchmark's (`bench/bench.py`): the `app` role's request to
//! `backend.internal:8080/myapp/article/1?x=1` with its seven protocol headers.
//!
//! Unlike callgrind, this runs the code as the CPU runs it (SHA-NI, AVX2 where the
//! crates detect them). Keys: RFC 9421's test keys (B.1.3, B.1.4), not secrets.
//!
//!     cargo run --release -p wsgiproxy-protocol --example sigcost [-- --batches N --batch-ms MS]
//!
//! (`scripts/bench.sh --signatures` runs it.) Prints a Markdown table: the median,
//! over batches, of the mean nanoseconds per operation in a batch, and the fastest
//! batch's.

// A benchmark, not production code: a broken test key or argument should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wsgiproxy_protocol::asymmetric::parse_key;
use wsgiproxy_protocol::rfc9421::{self, Message};
use wsgiproxy_protocol::signature::{is_signed_header, Algorithm, KeyRing};

const HMAC_KEY: &[u8] = b"benchmark-shared-key-0123456789";
// RFC 9421 Appendix B.1.3, "test-key-ecc-p256".
const P256_PRIVATE: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIFKbhfNZfpDsW43+0+JjUr9K+bTeuxopu653+hBaXGA7oAoGCCqGSM49
AwEHoUQDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM
4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END EC PRIVATE KEY-----
";
const P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf
w0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END PUBLIC KEY-----
";
// RFC 9421 Appendix B.1.4, "test-key-ed25519".
const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
";
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
";

/// The `app` role's request as the benchmark sends it (the middleware's input).
const PROTOCOL: [(&str, &str); 7] = [
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-scheme", "http"),
    ("x-forwarded-server", "www.example.com"),
    ("x-script-name", "/blog"),
    ("x-traversal-path", "/myapp"),
    ("x-wsgiproxy-str-0", "REMOTE_USER bob"),
    ("x-wsgiproxy-version", "0.1"),
];

// RFC 9421 Appendix B.1.2, "test-key-rsa-pss" (2048 bits): its public key, and its
// private key's PKCS#1 form (the PKCS#8 is under id-RSASSA-PSS, for rsa-pss-sha512 only).
const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----
";
const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADALBgkqhkiG9w0BAQoEggSqMIIEpgIBAAKCAQEAr4tmm3r20Wd/Pbqv
P1s2+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry5
3mm+oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7Oyr
FAHqgDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUA
AN5WUtzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw
9lq4aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oy
c6XI2wIDAQABAoIBAQCUB8ip+kJiiZVKF8AqfB/aUP0jTAqOQewK1kKJ/iQCXBCq
pbo360gvdt05H5VZ/RDVkEgO2k73VSsbulqezKs8RFs2tEmU+JgTI9MeQJPWcP6X
aKy6LIYs0E2cWgp8GADgoBs8llBq0UhX0KffglIeek3n7Z6Gt4YFge2TAcW2WbN4
XfK7lupFyo6HHyWRiYHMMARQXLJeOSdTn5aMBP0PO4bQyk5ORxTUSeOciPJUFktQ
HkvGbym7KryEfwH8Tks0L7WhzyP60PL3xS9FNOJi9m+zztwYIXGDQuKM2GDsITeD
2mI2oHoPMyAD0wdI7BwSVW18p1h+jgfc4dlexKYRAoGBAOVfuiEiOchGghV5vn5N
RDNscAFnpHj1QgMr6/UG05RTgmcLfVsI1I4bSkbrIuVKviGGf7atlkROALOG/xRx
DLadgBEeNyHL5lz6ihQaFJLVQ0u3U4SB67J0YtVO3R6lXcIjBDHuY8SjYJ7Ci6Z6
vuDcoaEujnlrtUhaMxvSfcUJAoGBAMPsCHXte1uWNAqYad2WdLjPDlKtQJK1diCm
rqmB2g8QE99hDOHItjDBEdpyFBKOIP+NpVtM2KLhRajjcL9Ph8jrID6XUqikQuVi
4J9FV2m42jXMuioTT13idAILanYg8D3idvy/3isDVkON0X3UAVKrgMEne0hJpkPL
FYqgetvDAoGBAKLQ6JZMbSe0pPIJkSamQhsehgL5Rs51iX4m1z7+sYFAJfhvN3Q/
OGIHDRp6HjMUcxHpHw7U+S1TETxePwKLnLKj6hw8jnX2/nZRgWHzgVcY+sPsReRx
NJVf+Cfh6yOtznfX00p+JWOXdSY8glSSHJwRAMog+hFGW1AYdt7w80XBAoGBAImR
NUugqapgaEA8TrFxkJmngXYaAqpA0iYRA7kv3S4QavPBUGtFJHBNULzitydkNtVZ
3w6hgce0h9YThTo/nKc+OZDZbgfN9s7cQ75x0PQCAO4fx2P91Q+mDzDUVTeG30mE
t2m3S0dGe47JiJxifV9P3wNBNrZGSIF3mrORBVNDAoGBAI0QKn2Iv7Sgo4T/XjND
dl2kZTXqGAk8dOhpUiw/HdM3OGWbhHj2NdCzBliOmPyQtAr770GITWvbAI+IRYyF
S7Fnk6ZVVVHsxjtaHy1uJGFlaZzKR4AGNaUTOJMs6NadzCmGPAxNQQOCqoUjn4XR
rOjr9w349JooGXhOxbu8nOxX
-----END PRIVATE KEY-----
";

/// The RSA private key as PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`).
fn rsa_private_pkcs1() -> String {
    use rsa::pkcs8::der::Decode as _;
    let (_, der) = rsa::pkcs8::der::pem::decode_vec(RSA_PRIVATE.as_bytes()).unwrap();
    let info = rsa::pkcs8::PrivateKeyInfo::from_der(&der).unwrap();
    rsa::pkcs8::der::pem::encode_string("RSA PRIVATE KEY", rsa::pkcs8::LineEnding::LF, info.private_key).unwrap()
}

/// (sender's ring, receiver's ring) of one algorithm; no sender where this build
/// cannot sign (RSA without feature `ring`, as in the Wasm filter).
fn rings(algorithm: Algorithm) -> (Option<KeyRing>, KeyRing) {
    let asymmetric = |text: &str| {
        let key = parse_key(algorithm, text).ok()?;
        KeyRing::asymmetric(algorithm, vec![("k1".to_string(), key)]).ok()
    };
    let pair = |private: &str, public: &str| (asymmetric(private), asymmetric(public).expect("a public key"));
    match algorithm {
        Algorithm::Ed25519 => pair(ED25519_PRIVATE, ED25519_PUBLIC),
        Algorithm::EcdsaP256Sha256 => pair(P256_PRIVATE, P256_PUBLIC),
        Algorithm::EcdsaP384Sha384 => {
            // A key from fixed bytes (RFC 9421 has no P-384 test key).
            use p384::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
            let key = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap();
            let private = key.to_pkcs8_pem(p384::pkcs8::LineEnding::LF).unwrap();
            let public = key.verifying_key().to_public_key_pem(p384::pkcs8::LineEnding::LF).unwrap();
            pair(&private, &public)
        }
        Algorithm::RsaPssSha512 => pair(RSA_PRIVATE, RSA_PUBLIC),
        Algorithm::RsaV15Sha256 => pair(&rsa_private_pkcs1(), RSA_PUBLIC),
        _ => {
            let ring = KeyRing::new(algorithm, &[("k1".to_string(), HMAC_KEY.to_vec())]).expect("a ring");
            (Some(ring.clone()), ring)
        }
    }
}

/// Mean nanoseconds per call of `op` in each of `batches` batches of about
/// `batch` each (after one warm-up batch).
fn measure(batches: usize, batch: Duration, mut op: impl FnMut()) -> Vec<f64> {
    // Calibrate: how many calls fill a batch.
    let mut n = 1u64;
    loop {
        let began = Instant::now();
        for _ in 0..n {
            op();
        }
        if began.elapsed() >= batch / 4 {
            n = (n as f64 * batch.as_secs_f64() / began.elapsed().as_secs_f64()).ceil() as u64;
            break;
        }
        n *= 2;
    }
    let mut out = Vec::with_capacity(batches);
    for _ in 0..=batches {
        let began = Instant::now();
        for _ in 0..n {
            op();
        }
        out.push(began.elapsed().as_nanos() as f64 / n as f64);
    }
    out.remove(0);
    out
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut batches, mut batch_ms) = (15usize, 40u64);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok()).expect("a number after the flag");
        match arg.as_str() {
            "--batches" => batches = value as usize,
            "--batch-ms" => batch_ms = value,
            other => panic!("unknown argument {other}"),
        }
    }
    let batch = Duration::from_millis(batch_ms);

    let fields: Vec<(String, Vec<u8>)> = PROTOCOL.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
    let names: Vec<&str> = PROTOCOL.iter().map(|(n, _)| *n).collect();
    let message =
        Message { method: b"GET", https: false, authority: b"backend.internal:8080", target: b"/myapp/article/1?x=1", fields: &fields };
    let now = SystemTime::now();
    let created = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let nonce = "0123456789abcdef0123456789abcdef";
    let skew = Duration::from_secs(300);

    #[cfg(target_arch = "x86_64")]
    let features =
        format!("x86_64; sha_ni {}, avx2 {}", std::arch::is_x86_feature_detected!("sha"), std::arch::is_x86_feature_detected!("avx2"));
    #[cfg(not(target_arch = "x86_64"))]
    let features = std::env::consts::ARCH.to_string();
    println!(
        "Native cost of one signature (the protocol crate, `--release`; {features}): the median over {batches} batches \
         of about {batch_ms} ms of each batch's mean ns/op (the fastest batch's in brackets); a signature base of the \
         benchmark's request."
    );
    println!();
    println!("| algorithm | base bytes | sign (raw) ns | verify (raw) ns | `rfc9421::sign` ns | `rfc9421::verify` ns |");
    println!("|---|---:|---:|---:|---:|---:|");
    for algorithm in [
        Algorithm::HmacSha256,
        Algorithm::Ed25519,
        Algorithm::EcdsaP256Sha256,
        Algorithm::EcdsaP384Sha384,
        Algorithm::RsaPssSha512,
        Algorithm::RsaV15Sha256,
    ] {
        let (Some(sender), receiver) = rings(algorithm) else {
            println!("| {} | | (no signer in this build: RSA signs with `--features ring` only) | | | |", algorithm.name());
            continue;
        };
        let signed = rfc9421::sign(&sender, &message, &names, created, nonce).expect("signed");
        let mut received = fields.clone();
        received.push(("signature-input".to_string(), signed.signature_input.clone().into_bytes()));
        received.push(("signature".to_string(), signed.signature.clone().into_bytes()));
        let received_message = Message { fields: &received, ..message };
        // The base and the signature as the receiver sees them.
        let (params, signature) = rfc9421::find_signature(&received).expect("our signature");
        let base = rfc9421::signature_base(&received_message, &params).expect("a base");
        rfc9421::verify(&receiver, &received_message, now, skew, skew, is_signed_header).expect("it verifies");
        let signing_key = sender.signing_key().unwrap();
        let verifying_key = receiver.key("k1").unwrap();
        assert!(verifying_key.verifies(base.as_bytes(), &signature));

        let sign_raw = measure(batches, batch, || {
            black_box(signing_key.signature_of(black_box(base.as_bytes())));
        });
        let verify_raw = measure(batches, batch, || {
            assert!(black_box(verifying_key.verifies(black_box(base.as_bytes()), black_box(&signature))));
        });
        let sign_full = measure(batches, batch, || {
            black_box(rfc9421::sign(&sender, black_box(&message), &names, created, nonce));
        });
        let verify_full = measure(batches, batch, || {
            assert!(black_box(rfc9421::verify(&receiver, black_box(&received_message), now, skew, skew, is_signed_header)).is_ok());
        });
        let cell = |v: &[f64]| {
            let fastest = v.iter().copied().fold(f64::INFINITY, f64::min);
            format!("{:.0} ({:.0})", median(v), fastest)
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            algorithm.name(),
            base.len(),
            cell(&sign_raw),
            cell(&verify_raw),
            cell(&sign_full),
            cell(&verify_full)
        );
    }
}
