//! ECDSA P-384 and RSA (`ecdsa-p384-sha384`, `rsa-pss-sha512`, `rsa-v1_5-sha256`):
//! RFC 9421's own keys and examples (B.1.1, B.1.2, B.2.1 to B.2.3, §4.3), the key
//! forms, the size and length rules, and the two backends agreeing.

use super::*;
use crate::config::{parse, Config, ConfigError};
use crate::rfc9421::{signature_base, Message};
use crate::signature::KeyRing;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use p384::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use rsa::pkcs8::der::Decode as _;
use serde_json::json;
use sfv::{Dictionary, InnerList, ListEntry, Parser};

// RFC 9421 Appendix B.1.1, "test-key-rsa" (PKCS#1).
const RFC_RSA_PUBLIC: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsPBRrw
WEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsdJKFq
MGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75jfZg
kne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKIlE0P
uKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZSFlQ
PSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQAB
-----END RSA PUBLIC KEY-----
";
const RFC_RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEqAIBAAKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsP
BRrwWEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsd
JKFqMGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75
jfZgkne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKI
lE0PuKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZ
SFlQPSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQABAoIBAG/JZuSWdoVHbi56
vjgCgkjg3lkO1KrO3nrdm6nrgA9P9qaPjxuKoWaKO1cBQlE1pSWp/cKncYgD5WxE
CpAnRUXG2pG4zdkzCYzAh1i+c34L6oZoHsirK6oNcEnHveydfzJL5934egm6p8DW
+m1RQ70yUt4uRc0YSor+q1LGJvGQHReF0WmJBZHrhz5e63Pq7lE0gIwuBqL8SMaA
yRXtK+JGxZpImTq+NHvEWWCu09SCq0r838ceQI55SvzmTkwqtC+8AT2zFviMZkKR
Qo6SPsrqItxZWRty2izawTF0Bf5S2VAx7O+6t3wBsQ1sLptoSgX3QblELY5asI0J
YFz7LJECgYkAsqeUJmqXE3LP8tYoIjMIAKiTm9o6psPlc8CrLI9CH0UbuaA2JCOM
cCNq8SyYbTqgnWlB9ZfcAm/cFpA8tYci9m5vYK8HNxQr+8FS3Qo8N9RJ8d0U5Csw
DzMYfRghAfUGwmlWj5hp1pQzAuhwbOXFtxKHVsMPhz1IBtF9Y8jvgqgYHLbmyiu1
mwJ5AL0pYF0G7x81prlARURwHo0Yf52kEw1dxpx+JXER7hQRWQki5/NsUEtv+8RT
qn2m6qte5DXLyn83b1qRscSdnCCwKtKWUug5q2ZbwVOCJCtmRwmnP131lWRYfj67
B/xJ1ZA6X3GEf4sNReNAtaucPEelgR2nsN0gKQKBiGoqHWbK1qYvBxX2X3kbPDkv
9C+celgZd2PW7aGYLCHq7nPbmfDV0yHcWjOhXZ8jRMjmANVR/eLQ2EfsRLdW69bn
f3ZD7JS1fwGnO3exGmHO3HZG+6AvberKYVYNHahNFEw5TsAcQWDLRpkGybBcxqZo
81YCqlqidwfeO5YtlO7etx1xLyqa2NsCeG9A86UjG+aeNnXEIDk1PDK+EuiThIUa
/2IxKzJKWl1BKr2d4xAfR0ZnEYuRrbeDQYgTImOlfW6/GuYIxKYgEKCFHFqJATAG
IxHrq1PDOiSwXd2GmVVYyEmhZnbcp8CxaEMQoevxAta0ssMK3w6UsDtvUvYvF22m
qQKBiD5GwESzsFPy3Ga0MvZpn3D6EJQLgsnrtUPZx+z2Ep2x0xc5orneB5fGyF1P
WtP+fG5Q6Dpdz3LRfm+KwBCWFKQjg7uTxcjerhBWEYPmEMKYwTJF5PBG9/ddvHLQ
EQeNC8fHGg4UXU8mhHnSBt3EA10qQJfRDs15M38eG2cYwB1PZpDHScDnDA0=
-----END RSA PRIVATE KEY-----
";
// RFC 9421 Appendix B.1.2, "test-key-rsa-pss" (its private key is PKCS#8 under id-RSASSA-PSS).
const RFC_RSA_PSS_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----
";
const RFC_RSA_PSS_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
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

const CONTENT_DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

/// B.2.1, B.2.2 and B.2.3's signatures (rsa-pss-sha512 by test-key-rsa-pss).
const B21_SIGNATURE: &str = "d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==";
const B22_SIGNATURE: &str = "LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==";
const B23_SIGNATURE: &str = "bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==";
/// §4.3's `proxy_sig` (rsa-v1_5-sha256 by test-key-rsa): deterministic, so reproduced.
const PROXY_SIG_SIGNATURE: &str = "S6ZzPXSdAMOPjN/6KXfXWNO/f7V6cHm7BXYUh3YD/fRad4BCaRZxP+JH+8XY1I6+8Cy+CM5g92iHgxtRPz+MjniOaYmdkDcnL9cCpXJleXsOckpURl49GwiyUpZ10KHgOEe11sx3G2gxI8S0jnxQB+Pu68U9vVcasqOWAEObtNKKZd8tSFu7LB5YAv0RAGhB8tmpv7sFnIm9y+7X5kXQfi8NMaZaA8i2ZHwpBdg7a6CMfwnnrtflzvZdXAsD3LH2TwevU+/PBPv0B6NMNk93wUs/vfJvye+YuI87HU38lZHowtznbLVdp770I6VHR6WfgS9ddzirrswsE1w5o0LV/g==";

fn public(algorithm: Algorithm, text: &str) -> PublicKey {
    match parse_key(algorithm, text) {
        Ok(AsymmetricKey::Public(key)) => key,
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "ring")]
fn private(algorithm: Algorithm, text: &str) -> PrivateKey {
    match parse_key(algorithm, text) {
        Ok(AsymmetricKey::Private(key)) => key,
        other => panic!("{other:?}"),
    }
}

fn refused(algorithm: Algorithm, text: &str) -> String {
    match parse_key(algorithm, text) {
        Err(e) => e,
        Ok(key) => panic!("{key:?} was read"),
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

/// The request of Appendix B.2.
fn rfc_request() -> Vec<(String, Vec<u8>)> {
    fields(&[
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", "application/json"),
        ("content-digest", CONTENT_DIGEST),
        ("content-length", "18"),
    ])
}

/// Both backends' verdicts, which must agree: the build's own (ring with feature
/// `ring`) and RustCrypto's.
fn rsa_verdict(key: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    let verdict = key.verifies(message, signature);
    if let PublicKey::Rsa(scheme, rsa_key) = key {
        assert_eq!(rsa_key::rsa_verifies(&rsa_key.key, *scheme, message, signature), verdict, "the backends disagree");
    }
    verdict
}

#[test]
fn rfc_9421_appendix_b_2_1_to_b_2_3_rsa_pss_sha512_verify() {
    let key = public(Algorithm::RsaPssSha512, RFC_RSA_PSS_PUBLIC);
    assert_eq!(key.algorithm(), Algorithm::RsaPssSha512);
    let f = rfc_request();
    let message =
        Message { method: b"POST", https: true, authority: b"example.com", target: b"/foo?param=Value&Pet=dog", fields: f.as_slice() };

    // B.2.1: no component at all (the signature covers its parameters only).
    let b21 =
        signature_base(&message, &inner_list(r#"();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#)).unwrap();
    assert_eq!(b21, r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#);
    // B.2.2 covers `@query-param`, which the filter does not build: its base as printed.
    let b22 = format!(
        "\"@authority\": example.com\n\"content-digest\": {CONTENT_DIGEST}\n\"@query-param\";name=\"Pet\": dog\n\
         \"@signature-params\": (\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\");created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\""
    );
    // B.2.3: every component of the request, built by the filter's code.
    let b23 = signature_base(
        &message,
        &inner_list(r#"("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#),
    )
    .unwrap();
    assert!(
        b23.starts_with("\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@query\": ?param=Value&Pet=dog\n"),
        "{b23}"
    );

    for (base, signature) in [(b21, B21_SIGNATURE), (b22, B22_SIGNATURE), (b23, B23_SIGNATURE)] {
        let signature = B64.decode(signature).unwrap();
        assert_eq!(signature.len(), 256);
        assert!(rsa_verdict(&key, base.as_bytes(), &signature), "{base}");
        // One bit off in the signature or the base, or another message, and it is not.
        let mut flipped = signature.clone();
        flipped[100] ^= 1;
        assert!(!rsa_verdict(&key, base.as_bytes(), &flipped));
        assert!(!rsa_verdict(&key, format!("{base} ").as_bytes(), &signature));
        // The same key as rsa-v1_5-sha256 does not take a PSS signature: the algorithm is the ring's.
        assert!(!rsa_verdict(&public(Algorithm::RsaV15Sha256, RFC_RSA_PSS_PUBLIC), base.as_bytes(), &signature));
    }
}

/// §4.3's proxy signature, built by the filter's code from the forwarded request.
fn proxy_sig_base() -> String {
    let f = fields(&[
        ("date", "Tue, 20 Apr 2021 02:07:56 GMT"),
        ("content-type", "application/json"),
        ("content-length", "18"),
        ("forwarded", "for=192.0.2.123;host=example.com;proto=https"),
        ("content-digest", CONTENT_DIGEST),
    ]);
    let message = Message {
        method: b"POST",
        https: true,
        authority: b"origin.host.internal.example",
        target: b"/foo?param=Value&Pet=dog",
        fields: f.as_slice(),
    };
    signature_base(
        &message,
        &inner_list(r#"("@method" "@authority" "@path" "content-digest" "content-type" "content-length" "forwarded");created=1618884480;keyid="test-key-rsa";alg="rsa-v1_5-sha256";expires=1618884540"#),
    )
    .unwrap()
}

/// A PKCS#1 v1.5 SHA-256 signature by RustCrypto's `rsa` (the reference, in tests only).
fn reference_pkcs1v15(private_pem: &str, message: &[u8]) -> Vec<u8> {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    use sha2::Digest as _;
    let key = rsa::RsaPrivateKey::from_pkcs1_der(&pkcs1_private_der(private_pem)).unwrap();
    key.sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &sha2::Sha256::digest(message)).unwrap()
}

/// The PKCS#1 `RSAPrivateKey` of a PKCS#1 or PKCS#8 PEM.
fn pkcs1_private_der(pem: &str) -> Vec<u8> {
    let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap();
    match label {
        "RSA PRIVATE KEY" => der,
        _ => rsa::pkcs8::PrivateKeyInfo::from_der(&der).unwrap().private_key.to_vec(),
    }
}

/// B.1.2's key (whose primes have the same length, as ring asks) as a PKCS#1 PEM,
/// for rsa-v1_5-sha256 too.
fn balanced_rsa_private() -> String {
    rsa::pkcs8::der::pem::encode_string("RSA PRIVATE KEY", rsa::pkcs8::LineEnding::LF, &pkcs1_private_der(RFC_RSA_PSS_PRIVATE)).unwrap()
}

#[test]
fn rfc_9421_section_4_3_rsa_v1_5_sha256_verifies() {
    let key = public(Algorithm::RsaV15Sha256, RFC_RSA_PUBLIC);
    assert_eq!(key.algorithm(), Algorithm::RsaV15Sha256);
    let base = proxy_sig_base();
    let signature = B64.decode(PROXY_SIG_SIGNATURE).unwrap();
    // The filter's signature base is the one the RFC's proxy signed: the reference
    // signer reproduces the published signature from it, to the byte.
    assert_eq!(B64.encode(reference_pkcs1v15(RFC_RSA_PRIVATE, base.as_bytes())), PROXY_SIG_SIGNATURE);
    assert!(rsa_verdict(&key, base.as_bytes(), &signature));
    assert!(!rsa_verdict(&key, base.replace("192.0.2.123", "192.0.2.124").as_bytes(), &signature));
    assert!(!rsa_verdict(&public(Algorithm::RsaPssSha512, RFC_RSA_PUBLIC), base.as_bytes(), &signature));
}

/// The native module signs with ring: PKCS#1 v1.5 gives the reference signer's bytes,
/// and B.1.2's PKCS#8 key (id-RSASSA-PSS) signs what B.1.2's public key verifies.
#[cfg(feature = "ring")]
#[test]
fn ring_signs_rsa_as_the_rfc_does() {
    let signer = private(Algorithm::RsaV15Sha256, &balanced_rsa_private());
    assert_eq!(signer.public_key(), public(Algorithm::RsaV15Sha256, RFC_RSA_PSS_PUBLIC));
    let base = proxy_sig_base();
    assert_eq!(signer.sign(base.as_bytes()).unwrap(), reference_pkcs1v15(RFC_RSA_PSS_PRIVATE, base.as_bytes()));
    // ring takes no key whose primes differ in length, such as B.1.1's: refused, saying so.
    assert!(refused(Algorithm::RsaV15Sha256, RFC_RSA_PRIVATE).contains("same length"));

    let pss = private(Algorithm::RsaPssSha512, RFC_RSA_PSS_PRIVATE);
    assert_eq!(pss.public_key(), public(Algorithm::RsaPssSha512, RFC_RSA_PSS_PUBLIC));
    let signature = pss.sign(b"message").unwrap();
    assert_eq!(signature.len(), 256);
    assert_ne!(pss.sign(b"message").unwrap(), signature, "PSS salts each signature");
    assert!(rsa_verdict(&public(Algorithm::RsaPssSha512, RFC_RSA_PSS_PUBLIC), b"message", &signature));
    // A PSS key's PKCS#8 (id-RSASSA-PSS) is for rsa-pss-sha512 only.
    assert!(refused(Algorithm::RsaV15Sha256, RFC_RSA_PSS_PRIVATE).contains("rsa-pss-sha512 only"));
}

/// The Wasm filter (no ring) holds no RSA private key: the `rsa` crate would sign.
#[cfg(not(feature = "ring"))]
#[test]
fn without_ring_an_rsa_private_key_is_refused_with_the_reason() {
    for (algorithm, text) in [(Algorithm::RsaV15Sha256, RFC_RSA_PRIVATE), (Algorithm::RsaPssSha512, RFC_RSA_PSS_PRIVATE)] {
        let e = refused(algorithm, text);
        assert!(e.contains("RUSTSEC-2023-0071") && e.contains("native module"), "{e}");
    }
    let e = refused(Algorithm::RsaV15Sha256, &rsa_jwk(true));
    assert!(e.contains("RUSTSEC-2023-0071"), "{e}");
}

/// B.1.1's key as a JWK, with its private members or not.
fn rsa_jwk(with_private: bool) -> String {
    jwk_of(RFC_RSA_PRIVATE, with_private)
}

/// An RSA private key's PEM as a JWK, with its private members or not.
fn jwk_of(private_pem: &str, with_private: bool) -> String {
    let der = pkcs1_private_der(private_pem);
    let key = rsa::pkcs1::RsaPrivateKey::from_der(&der).unwrap();
    let b = |uint: rsa::pkcs1::UintRef<'_>| B64URL.encode(uint.as_bytes());
    let mut jwk = json!({"kty": "RSA", "kid": "test-key-rsa", "n": b(key.modulus), "e": b(key.public_exponent)});
    if with_private {
        for (name, value) in [
            ("d", key.private_exponent),
            ("p", key.prime1),
            ("q", key.prime2),
            ("dp", key.exponent1),
            ("dq", key.exponent2),
            ("qi", key.coefficient),
        ] {
            jwk[name] = json!(b(value));
        }
    }
    jwk.to_string()
}

#[test]
fn rsa_key_forms_read_the_same_key() {
    let key = public(Algorithm::RsaV15Sha256, RFC_RSA_PUBLIC);
    // SPKI, as `openssl rsa -RSAPublicKey_in -pubout` writes it.
    let PublicKey::Rsa(_, rsa_public) = &key else { panic!() };
    let spki = rsa_public.key.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    for text in [spki.clone(), rsa_jwk(false), spki.replace('\n', "\\n"), RFC_RSA_PUBLIC.replace('\n', "\\n")] {
        assert_eq!(public(Algorithm::RsaV15Sha256, &text), key, "{text}");
    }
    let with_alg = |alg: &str| rsa_jwk(false).replace("\"kty\"", &format!("\"alg\":\"{alg}\",\"kty\""));
    assert_eq!(public(Algorithm::RsaV15Sha256, &with_alg("RS256")), key);
    assert!(refused(Algorithm::RsaV15Sha256, &with_alg("PS512")).contains("another algorithm"));
    assert!(refused(Algorithm::RsaPssSha512, &with_alg("RS256")).contains("another algorithm"));
    assert!(matches!(public(Algorithm::RsaPssSha512, &with_alg("PS512")), PublicKey::Rsa(RsaScheme::PssSha512, _)));
    #[cfg(feature = "ring")]
    {
        let signer = private(Algorithm::RsaV15Sha256, &jwk_of(RFC_RSA_PSS_PRIVATE, true));
        assert_eq!(signer.public_key(), public(Algorithm::RsaV15Sha256, RFC_RSA_PSS_PUBLIC));
        assert_eq!(signer.sign(b"message").unwrap(), reference_pkcs1v15(RFC_RSA_PSS_PRIVATE, b"message"));
        let without_qi = jwk_of(RFC_RSA_PSS_PRIVATE, true).replace("\"qi\"", "\"xx\"");
        assert!(refused(Algorithm::RsaV15Sha256, &without_qi).contains("without \"qi\""));
    }
}

#[test]
fn rsa_keys_under_2048_bits_or_malformed_are_refused() {
    // A 1024-bit modulus (odd; its size is checked first), as SPKI and as a JWK.
    let mut n = vec![0xc5u8; 128];
    n[127] = 0x01;
    let weak = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(&n), rsa::BigUint::from(65537u32)).unwrap();
    let pem = weak.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let jwk = json!({"kty": "RSA", "n": B64URL.encode(&n), "e": "AQAB"}).to_string();
    for algorithm in [Algorithm::RsaPssSha512, Algorithm::RsaV15Sha256] {
        for text in [&pem, &jwk] {
            let e = refused(algorithm, text);
            assert!(e.contains("1024-bit") && e.contains("at least 2048"), "{e}");
        }
    }
    let big = json!({"kty": "RSA", "n": B64URL.encode([0xffu8; 1024]), "e": "AQAB"}).to_string();
    assert!(refused(Algorithm::RsaPssSha512, &big).contains("at most 4096"));
    let even_exponent = json!({"kty": "RSA", "n": rsa_jwk_member("n"), "e": B64URL.encode([1u8, 0, 0])}).to_string();
    assert!(refused(Algorithm::RsaPssSha512, &even_exponent).contains("not a usable RSA public key"));
    let p384_spki = {
        let PrivateKey::EcdsaP384(k) = p384_pair(5).0 else { panic!() };
        k.verifying_key().to_public_key_pem(p384::pkcs8::LineEnding::LF).unwrap()
    };
    for (text, why) in [
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "SPKI"),
        ("-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----", "PKCS#1"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "PKCS#8"),
        ("-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----", "not a PEM"),
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----", "encrypted"),
        ("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----", "another kind"),
        (p384_spki.as_str(), "not an RSA key"),
        (r#"{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}"#, "not an RSA JWK"),
        (r#"{"kty": "RSA", "e": "AQAB"}"#, "without \"n\""),
    ] {
        let e = refused(Algorithm::RsaPssSha512, text);
        assert!(e.contains(why), "{why}: {e}");
    }
}

fn rsa_jwk_member(name: &str) -> String {
    serde_json::from_str::<serde_json::Value>(&rsa_jwk(false)).unwrap()[name].as_str().unwrap().to_string()
}

#[test]
fn malformed_signatures_are_not_signatures() {
    let message = b"message";
    let keys = [public(Algorithm::RsaPssSha512, RFC_RSA_PSS_PUBLIC), public(Algorithm::RsaV15Sha256, RFC_RSA_PUBLIC), p384_pair(7).1];
    for key in &keys {
        for length in [0, 1, 48, 95, 96, 97, 128, 255, 256, 257, 512] {
            assert!(!rsa_verdict(key, message, &vec![0u8; length]), "{key:?} {length}");
            assert!(!rsa_verdict(key, message, &vec![0xffu8; length]), "{key:?} {length}");
        }
    }
    // The modulus itself, as a signature, is out of range.
    let PublicKey::Rsa(_, rsa_public) = &keys[1] else { panic!() };
    let n = rsa::traits::PublicKeyParts::n(&rsa_public.key).to_bytes_be();
    assert!(!rsa_verdict(&keys[1], message, &n));
}

// ------------------------------------------------------------------------- P-384

/// A P-384 key pair from fixed bytes.
fn p384_pair(byte: u8) -> (PrivateKey, PublicKey) {
    let key = p384::ecdsa::SigningKey::from_slice(&[byte; 48]).unwrap();
    let public = PublicKey::EcdsaP384(P384PublicKey::new(*key.verifying_key()));
    (PrivateKey::EcdsaP384(key), public)
}

#[test]
fn p384_signs_deterministically_and_both_backends_agree() {
    let (signer, key) = p384_pair(7);
    assert_eq!(signer.algorithm(), Algorithm::EcdsaP384Sha384);
    assert_eq!(signer.public_key(), key);
    let signature = signer.sign(b"message").unwrap();
    assert_eq!(signature.len(), 96, "r || s, 48 bytes each (§3.3.5)");
    assert_eq!(signer.sign(b"message").unwrap(), signature, "RFC 6979");
    let PublicKey::EcdsaP384(p384_key) = &key else { panic!() };
    let both = |message: &[u8], signature: &[u8]| {
        let verdict = key.verifies(message, signature);
        assert_eq!(p384_key::p384_verifies(&p384_key.key, message, signature), verdict, "the backends disagree");
        verdict
    };
    assert!(both(b"message", &signature));
    assert!(!both(b"massage", &signature));
    // s and n - s both verify (OpenSSL signs either); r or s zero never does.
    let parsed = p384::ecdsa::Signature::from_slice(&signature).unwrap();
    let (r, s) = parsed.split_scalars();
    let high = p384::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    assert!(both(b"message", &high.to_bytes()));
    let mut zero_s = signature.clone();
    zero_s[48..].fill(0);
    assert!(!both(b"message", &zero_s));
    // Another key does not verify it.
    assert!(!p384_pair(8).1.verifies(b"message", &signature));
}

#[test]
fn p384_key_forms_read_the_same_key() {
    use p384::pkcs8::LineEnding::LF;
    let (signer, key) = p384_pair(9);
    let PrivateKey::EcdsaP384(k) = &signer else { panic!() };
    let pkcs8 = k.to_pkcs8_pem(LF).unwrap().to_string();
    let sec1 = p384::SecretKey::from_slice(&[9u8; 48]).unwrap().to_sec1_pem(LF).unwrap().to_string();
    let spki = k.verifying_key().to_public_key_pem(LF).unwrap();
    let point = k.verifying_key().to_encoded_point(false);
    let jwk = json!({"kty": "EC", "crv": "P-384", "alg": "ES384", "x": B64URL.encode(point.x().unwrap()), "y": B64URL.encode(point.y().unwrap())});
    let mut private_jwk = jwk.clone();
    private_jwk["d"] = json!(B64URL.encode(k.to_bytes()));
    for text in [pkcs8.clone(), sec1, private_jwk.to_string(), pkcs8.replace('\n', "\\n")] {
        match parse_key(Algorithm::EcdsaP384Sha384, &text) {
            Ok(AsymmetricKey::Private(read)) => assert_eq!(read.public_key(), key),
            other => panic!("{other:?}"),
        }
    }
    for text in [spki.clone(), jwk.to_string()] {
        assert_eq!(public(Algorithm::EcdsaP384Sha384, &text), key);
    }
    // The other curves' and algorithms' keys are refused, with the reason.
    let mut es256 = jwk.clone();
    es256["alg"] = json!("ES256");
    let mut other_d = private_jwk.clone();
    other_d["d"] = json!(B64URL.encode([3u8; 48]));
    for (text, why) in [
        (es256.to_string(), "\"alg\" is not \"ES384\""),
        (jwk.to_string().replace("P-384", "P-256"), "not a P-384 JWK"),
        (other_d.to_string(), "not the public half"),
        (RFC_RSA_PSS_PUBLIC.to_string(), "not an SPKI public key of an ECDSA P-384 key"),
        (RFC_RSA_PRIVATE.to_string(), "another kind"),
    ] {
        let e = refused(Algorithm::EcdsaP384Sha384, &text);
        assert!(e.contains(why), "{why}: {e}");
    }
    // A P-384 key is not a P-256 key.
    assert!(parse_key(Algorithm::EcdsaP256Sha256, &spki).is_err());
}

// ------------------------------------------------------------- configuration

fn config(value: serde_json::Value, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    parse(value.to_string().as_bytes(), &|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

#[test]
fn the_configuration_takes_the_new_algorithms() {
    let p384_spki = {
        let PrivateKey::EcdsaP384(k) = p384_pair(5).0 else { panic!() };
        k.verifying_key().to_public_key_pem(p384::pkcs8::LineEnding::LF).unwrap()
    };
    for (algorithm, key) in
        [("ecdsa-p384-sha384", p384_spki.as_str()), ("rsa-pss-sha512", RFC_RSA_PSS_PUBLIC), ("rsa-v1_5-sha256", RFC_RSA_PUBLIC)]
    {
        let c = config(
            json!({"role": "middleware", "signature_format": "rfc9421", "algorithm": algorithm, "secret": {"keys": [{"id": "k1", "env": "KEY"}]}}),
            &[("KEY", key)],
        );
        let Ok(Config::Middleware(m)) = c else { panic!("{algorithm}: {c:?}") };
        assert_eq!(m.verify.map(|k| k.algorithm.name()), Some(algorithm));
        // With v1 it is a configuration error, as for the other public-key algorithms.
        let e = config(json!({"role": "middleware", "algorithm": algorithm, "secret": {"keys": [{"id": "k1", "value": key}]}}), &[])
            .unwrap_err();
        assert_eq!(e.field, "algorithm");
    }
    let e = config(json!({"role": "middleware", "signature_format": "rfc9421", "algorithm": "rsa-pss-sha256", "secret": {"keys": [{"id": "k1", "value": "x"}]}}), &[])
        .unwrap_err();
    assert!(e.field == "algorithm" && e.message.contains("rsa-v1_5-sha256"), "{e:?}");
    // An RSA private key given to the app role: the native module signs with it; the Wasm filter refuses it, naming the field.
    let app = json!({"role": "app", "href": "http://backend:8080/", "signature_format": "rfc9421", "algorithm": "rsa-v1_5-sha256",
                     "secret": {"keys": [{"id": "k1", "value": balanced_rsa_private()}]}});
    #[cfg(feature = "ring")]
    assert!(matches!(config(app, &[]), Ok(Config::App(_))));
    #[cfg(not(feature = "ring"))]
    {
        let e = config(app, &[]).unwrap_err();
        assert!(e.field == "secret.keys[0].value" && e.message.contains("RUSTSEC-2023-0071"), "{e:?}");
    }
}

/// A sender's published directory (`publish_key_directory`) holds the new key types,
/// and a receiver following it reads back the same keys, `alg` named as JOSE names it.
#[test]
fn the_new_key_types_are_published_and_followed() {
    use crate::key_directory::{parse_key_set, public_jwk, published_key_set};
    let rsa_pss = public(Algorithm::RsaPssSha512, RFC_RSA_PSS_PUBLIC);
    let rsa_v15 = public(Algorithm::RsaV15Sha256, RFC_RSA_PUBLIC);
    for (algorithm, key, alg) in [
        (Algorithm::EcdsaP384Sha384, p384_pair(9).1, "ES384"),
        (Algorithm::RsaPssSha512, rsa_pss, "PS512"),
        (Algorithm::RsaV15Sha256, rsa_v15, "RS256"),
    ] {
        let ring = KeyRing::asymmetric(algorithm, vec![("k1".to_string(), AsymmetricKey::Public(key.clone()))]).unwrap();
        let body = published_key_set(&ring).unwrap();
        let document: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(document["keys"][0]["alg"], alg, "{body}");
        let followed = parse_key_set(algorithm, body.as_bytes()).unwrap();
        assert_eq!(followed.len(), 1);
        assert_eq!(followed[0].0, "k1");
        let AsymmetricKey::Public(read) = &followed[0].1 else { panic!("{algorithm:?}: not a public key") };
        assert_eq!(public_jwk("k1", read), public_jwk("k1", &key));
        // Another algorithm's receiver takes none of it.
        let other = if algorithm == Algorithm::EcdsaP384Sha384 { Algorithm::EcdsaP256Sha256 } else { Algorithm::EcdsaP384Sha384 };
        assert!(parse_key_set(other, body.as_bytes()).is_err(), "{algorithm:?} read as {other:?}");
    }
    // Each RSA scheme's receiver refuses the other's key by its `alg`.
    let pss_body = published_key_set(
        &KeyRing::asymmetric(
            Algorithm::RsaPssSha512,
            vec![("k1".into(), AsymmetricKey::Public(public(Algorithm::RsaPssSha512, RFC_RSA_PSS_PUBLIC)))],
        )
        .unwrap(),
    )
    .unwrap();
    assert!(parse_key_set(Algorithm::RsaV15Sha256, pss_body.as_bytes()).is_err());
}
