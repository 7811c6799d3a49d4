//! The rest of RFC 9421's algorithm registry (`ecdsa-p384-sha384`, `rsa-pss-sha512`,
//! `rsa-v1_5-sha256`) in real Envoy, against PyPI's http-message-signatures with keys
//! OpenSSL made: the library verifies what the `app` role signs, and the
//! `middleware` role accepts what the library signs and refuses it tampered, by
//! another key, or under another algorithm's name. RSA signing is the native
//! module's: the Wasm filter refuses an RSA private key at load, saying why. The
//! RFC's own vectors (B.2.1 to B.2.3, §4.3) are the protocol crate's unit tests
//! (`protocol/src/asymmetric/algorithm_tests.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;

const NEW_ALGORITHMS: [&str; 3] = ["ecdsa-p384-sha384", "rsa-pss-sha512", "rsa-v1_5-sha256"];

fn is_rsa(algorithm: &str) -> bool {
    algorithm.starts_with("rsa-")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A key pair made by PyPI's cryptography (OpenSSL), as `tests/apps/rfc9421_keys.py` writes it.
fn key_pairs(algorithm: &str, count: usize, bits: u32) -> Vec<Value> {
    let out = Command::new(python())
        .arg(repo_root().join("tests/apps/rfc9421_keys.py"))
        .args([algorithm, &count.to_string(), &bits.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the Python key maker failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn text(pair: &Value, name: &str) -> String {
    pair[name].as_str().unwrap_or_else(|| panic!("{name} in {pair}")).to_string()
}

/// Signs each entry (as tests/apps/rfc9421_sign.py reads it) with the library;
/// returns each request's headers (`LIBRARY_PROTOCOL` and `extra`) with Signature-Input and Signature.
fn library_signed(entries: &[Value], extra: &[(&str, &str)]) -> Vec<Vec<(String, String)>> {
    let protocol = LIBRARY_PROTOCOL.iter().chain(extra).map(|(n, v)| (n.to_string(), v.to_string()));
    library_signatures(entries)
        .into_iter()
        .map(|(input, signature)| protocol.clone().chain([("Signature-Input".into(), input), ("Signature".into(), signature)]).collect())
        .collect()
}

fn send(port: u16, path: &str, headers: &[(String, String)]) -> Response {
    let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    request(port, "GET", path, &refs, b"")
}

/// The Python backend, verifying with a public key (PEM) and the library's `algorithm`.
fn public_key_backend(algorithm: &str, public_pem: &str) -> (u16, Proc) {
    let port = free_port();
    let child = Command::new(python())
        .arg(repo_root().join("tests/apps/rfc9421_backend.py"))
        .args([&port.to_string(), public_pem, algorithm])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let proc = Proc::adopt(child);
    assert!(wait_for_port(port, Duration::from_secs(20)), "the Python backend did not start");
    (port, proc)
}

#[test]
fn requests_signed_by_http_message_signatures_with_the_new_algorithms_pass_the_middleware_role() {
    let echo = Echo::start();
    for algorithm in NEW_ALGORITHMS {
        let pairs = key_pairs(algorithm, 3, 2048);
        let (k1, k2, stranger) = (&pairs[0], &pairs[1], &pairs[2]);
        // Public keys only: k2 inline as a JWK, k1 from the environment as PEM (RSA's as
        // PKCS#1, `-----BEGIN RSA PUBLIC KEY-----`, for rsa-v1_5-sha256; SPKI otherwise).
        let k1_public = if algorithm == "rsa-v1_5-sha256" { text(k1, "public_pkcs1_pem") } else { text(k1, "public_pem") };
        let mw = Envoy::start(
            "envoy/middleware.yaml",
            &Overrides::default().cluster("app", echo.port).env("WSGIPROXY_KEY_K1", &k1_public).plugin(json!({
                "role": "middleware", "signature_format": "rfc9421", "algorithm": algorithm,
                "secret": {"keys": [{"id": "k2", "value": text(k2, "public_jwk")}, {"id": "k1", "env": "WSGIPROXY_KEY_K1"}]},
                "on_untrusted": "reject", "keys": {"REMOTE_USER": "x-remote-user"}})),
        );
        let now = now_secs();
        // A name the same key could sign under: RSA's other scheme, or P-256 for P-384.
        let other_name = match algorithm {
            "rsa-pss-sha512" => "rsa-v1_5-sha256",
            "rsa-v1_5-sha256" => "rsa-pss-sha512",
            _ => "ecdsa-p256-sha256",
        };
        let entry = |nonce: &str, edits: Value| {
            let mut e = json!({"key_id": "k1", "key": text(k1, "private_pem"), "algorithm": algorithm, "method": "GET",
                               "url": "http://test.local/p?x=1", "headers": LIBRARY_PROTOCOL, "covered": LIBRARY_COVERED,
                               "created": now, "nonce": nonce, "label": "wsgiproxy"});
            for (k, v) in edits.as_object().unwrap() {
                e[k] = v.clone();
            }
            e
        };
        let signed = library_signed(
            &[
                entry("n-trusted", json!({})),
                entry("n-tampered", json!({})),
                entry("n-stranger", json!({"key": text(stranger, "private_pem")})),
                entry("n-claims-other", json!({"claimed_alg": other_name})),
                entry("n-no-alg", json!({"include_alg": false})),
                entry("n-k2", json!({"key_id": "k2", "key": text(k2, "private_pem")})),
            ],
            &[],
        );
        let refused = |r: Response, what: &str| {
            assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_bad")), "{algorithm} {what}: {}", r.text());
        };
        let got = send(mw.port, "/p?x=1", &signed[0]).received();
        assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"), "{algorithm}");
        assert_eq!(got.header("signature-input"), None, "our signature is consumed");
        let mut tampered = signed[1].clone();
        tampered[4].1 = "REMOTE_USER root".into();
        refused(send(mw.port, "/p?x=1", &tampered), "tampered header");
        refused(send(mw.port, "/p?x=1", &signed[2]), "unknown key");
        refused(send(mw.port, "/p?x=1", &signed[3]), "a valid signature under another algorithm's name");
        for (i, what) in [(4, "no alg"), (5, "the ring's other key")] {
            let got = send(mw.port, "/p?x=1", &signed[i]).received();
            assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"), "{algorithm} {what}");
        }
        assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 3, "{algorithm}");
        assert_eq!(mw.stat("wsgiproxy.middleware.rejected.signature_bad"), 3, "{algorithm}");
    }
}

/// The app role's configuration signing with `key` (one entry of `secret.keys`).
fn app_config(algorithm: &str, key: Value) -> Value {
    json!({"role": "app", "href": "http://backend.internal:8080/mount?q=1", "script_name": "/blog",
           "signature_format": "rfc9421", "algorithm": algorithm, "secret": {"keys": [key]},
           "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}]})
}

#[test]
fn app_role_signatures_with_the_new_algorithms_verify_with_http_message_signatures() {
    let loader = Overrides::default().chosen_loader();
    for algorithm in NEW_ALGORITHMS {
        let pairs = key_pairs(algorithm, 2, 2048);
        let (k1, stranger) = (&pairs[0], &pairs[1]);
        // The private key from the environment as OpenSSL's "traditional" form writes
        // it (SEC1 for P-384, PKCS#1 for RSA), then inline as a JWK, then PKCS#8.
        let traditional = if is_rsa(algorithm) { text(k1, "private_pkcs1_pem") } else { text(k1, "private_sec1_pem") };
        if is_rsa(algorithm) && loader == Loader::Wasm {
            let log = Envoy::start_refused(
                "envoy/app.yaml",
                &Overrides::default()
                    .env("WSGIPROXY_KEY_K1", &traditional)
                    .plugin(app_config(algorithm, json!({"id": "k1", "env": "WSGIPROXY_KEY_K1"}))),
            );
            assert!(log.contains("field `secret.keys[0].env`: is an RSA private key, which the Wasm filter does not take"), "{log}");
            assert!(log.contains("RUSTSEC-2023-0071"), "{log}");
            assert!(!log.contains(traditional.lines().nth(1).unwrap()), "the key is never logged");
            continue;
        }
        let (port, _backend) = public_key_backend(algorithm, &text(k1, "public_pem"));
        for (key, env) in [
            (json!({"id": "k1", "env": "WSGIPROXY_KEY_K1"}), Some(traditional.clone())),
            (json!({"id": "k1", "value": text(k1, "private_jwk")}), None),
            (json!({"id": "k1", "value": text(k1, "private_pem")}), None),
        ] {
            let mut overrides = Overrides::default().cluster("backend", port).plugin(app_config(algorithm, key.clone()));
            if let Some(pem) = &env {
                overrides = overrides.env("WSGIPROXY_KEY_K1", pem);
            }
            let envoy = Envoy::start("envoy/app.yaml", &overrides);
            let r = request(envoy.port, "POST", "/blog/a/b?x=1", &[("Host", "www.example.com:8443"), ("X-Auth-User", "bob")], b"body");
            assert_eq!(r.status, 200, "{}", r.text());
            let seen = r.json();
            assert_eq!(seen["verified"], true, "{algorithm} {key}: {seen}");
            assert_eq!(seen["parameters"]["alg"], algorithm);
            let covered: Vec<String> = seen["covered"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap().to_string()).collect();
            assert!(covered.contains(&"\"x-wsgiproxy-str-0\"".to_string()), "{covered:?}");
            assert_eq!(envoy.stat("wsgiproxy.app.signed"), 1);
        }
        // Signed by a key whose public key the backend does not hold: refused by the library.
        let wrong = Envoy::start(
            "envoy/app.yaml",
            &Overrides::default()
                .cluster("backend", port)
                .plugin(app_config(algorithm, json!({"id": "k1", "value": text(stranger, "private_pem")}))),
        );
        assert_eq!(wrong.get("/blog/x", &[]).json()["verified"], false, "{algorithm}");
    }
}

#[test]
fn app_role_to_middleware_role_with_the_new_algorithms() {
    let loader = Overrides::default().chosen_loader();
    for algorithm in NEW_ALGORITHMS {
        // The Wasm filter does not sign with RSA (above).
        if is_rsa(algorithm) && loader == Loader::Wasm {
            continue;
        }
        let pair = &key_pairs(algorithm, 1, 2048)[0];
        let echo = Echo::start();
        let mw = Envoy::start(
            "envoy/middleware.yaml",
            &Overrides::default().cluster("app", echo.port).plugin(json!({
                "role": "middleware", "signature_format": "rfc9421", "algorithm": algorithm,
                "secret": {"keys": [{"id": "k1", "value": text(pair, "public_jwk")}]},
                "on_untrusted": "reject", "keys": {"REMOTE_USER": "x-remote-user"}})),
        );
        let edge = Envoy::start(
            "envoy/app.yaml",
            &Overrides::default().cluster("backend", mw.port).env("WSGIPROXY_KEY_K1", &text(pair, "private_pem")).plugin(json!({
                "role": "app", "href": "http://internal:9000/apps/blog", "script_name": "/blog", "signature_format": "rfc9421",
                "algorithm": algorithm, "secret": {"keys": [{"id": "k1", "env": "WSGIPROXY_KEY_K1"}]},
                "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}]})),
        );
        for _ in 0..3 {
            let got = edge.get("/blog/posts/7?page=2", &[("Host", "www.example.com:8443"), ("X-Auth-User", "bob")]).received();
            assert_eq!(got.uri(), "/posts/7?page=2", "{algorithm}");
            assert_eq!(got.header("x-remote-user").as_deref(), Some("bob"), "{algorithm}");
        }
        assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 3, "{algorithm}");
    }
}

#[test]
fn rsa_keys_under_2048_bits_are_refused_at_load() {
    let weak = &key_pairs("rsa-pss-sha512", 1, 1024)[0];
    for (field, key) in [("value", text(weak, "public_pem")), ("value", text(weak, "public_jwk"))] {
        let log = Envoy::start_refused(
            "envoy/middleware.yaml",
            &Overrides::default().plugin(json!({"role": "middleware", "signature_format": "rfc9421", "algorithm": "rsa-pss-sha512",
                                                "secret": {"keys": [{"id": "k1", field: key}]}})),
        );
        assert!(log.contains("field `secret.keys[0].value`: is a 1024-bit RSA key: RSA keys must have at least 2048 bits"), "{log}");
    }
    // A 2048-bit key of the same kind loads (the refusal is the size, not the form).
    let strong = &key_pairs("rsa-pss-sha512", 1, 2048)[0];
    let echo = Echo::start();
    let mw = Envoy::start(
        "envoy/middleware.yaml",
        &Overrides::default().cluster("app", echo.port).plugin(json!({"role": "middleware", "signature_format": "rfc9421",
            "algorithm": "rsa-pss-sha512", "secret": {"keys": [{"id": "k1", "value": text(strong, "public_pem")}]}})),
    );
    assert_eq!(mw.get("/", &[]).status, 200, "no signature: stripped, forwarded");
}
