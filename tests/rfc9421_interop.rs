//! RFC 9421 signatures (`"signature_format": "rfc9421"`) against a library nobody
//! here wrote: PyPI's http-message-signatures verifies what the `app` role signs in
//! real Envoy, and signs requests the `middleware` role in real Envoy must trust
//! or refuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;

const KEY_K1: &str = "first-shared-key-0123456789";

/// The Python backend that verifies every request with http-message-signatures.
fn verifying_backend(key: &str) -> (u16, Proc) {
    let port = free_port();
    let child = Command::new(python())
        .arg(repo_root().join("tests/apps/rfc9421_backend.py"))
        .args([&port.to_string(), key])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let proc = Proc::adopt(child);
    assert!(wait_for_port(port, Duration::from_secs(20)), "the Python backend did not start");
    (port, proc)
}

fn secret(id: &str, value: &str) -> Value {
    json!({"keys": [{"id": id, "value": value}]})
}

fn app_envoy(backend_port: u16, config: Value) -> Envoy {
    Envoy::start("envoy/app.yaml", &Overrides::default().cluster("backend", backend_port).plugin(config))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The component identifiers the library verified, in order, and their values.
fn covered(seen: &Value) -> Vec<(String, String)> {
    seen["covered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| (pair[0].as_str().unwrap().to_string(), pair[1].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn app_role_signatures_verify_with_http_message_signatures() {
    let (port, _backend) = verifying_backend(KEY_K1);
    for (href, authority) in [
        ("http://backend.internal:8080/mount?q=1", "backend.internal:8080"),
        // The default port is left out of :authority and of @authority alike.
        ("http://Backend.Internal/mount?q=1", "backend.internal"),
    ] {
        let envoy = app_envoy(
            port,
            json!({"role": "app", "href": href, "script_name": "/blog", "signature_format": "rfc9421",
                   "secret": secret("k1", KEY_K1),
                   "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}],
                   "json_keys": [{"key": "roles", "value": "[\"admin\"]"}]}),
        );
        let before = now_secs();
        let r = request(
            envoy.port,
            "POST",
            "/blog/a/b?x=1",
            &[("Host", "www.example.com:8443"), ("X-Auth-User", "bob"), ("X-WSGIProxy-Str-7", "REMOTE_USER root")],
            b"the body is not covered",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.json();
        assert_eq!(seen["verified"], true, "{href}: {seen}");
        assert_eq!(seen["label"], "wsgiproxy");
        assert_eq!(seen["body"], "the body is not covered");
        let expected: Vec<(String, String)> = [
            ("@method", "POST"),
            ("@authority", authority),
            ("@path", "/mount/a/b"),
            ("@query", "?x=1&q=1"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-scheme", "http"),
            ("x-forwarded-server", "www.example.com:8443"),
            ("x-script-name", "/blog"),
            ("x-traversal-path", "/mount"),
            ("x-traversal-query-string", "q=1"),
            ("x-wsgiproxy-json-0", "roles [\"admin\"]"),
            ("x-wsgiproxy-str-0", "REMOTE_USER bob"),
            ("x-wsgiproxy-version", "0.1"),
        ]
        .iter()
        .map(|(n, v)| (format!("\"{n}\""), v.to_string()))
        .collect();
        let got = covered(&seen);
        assert_eq!(got[..got.len() - 1], expected[..], "{href}");
        assert_eq!(got.last().unwrap().0, "\"@signature-params\"");
        let params = &seen["parameters"];
        assert_eq!(params["alg"], "hmac-sha256");
        assert_eq!(params["keyid"], "k1");
        let nonce = params["nonce"].as_str().unwrap();
        assert!(nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()), "{nonce}");
        let created = params["created"].as_u64().unwrap();
        assert!(created >= before && created <= now_secs(), "{created}");
        // A GET without a query of its own: the href's query only.
        let seen = envoy.get("/blog", &[]).json();
        assert_eq!(seen["verified"], true, "{seen}");
        assert!(covered(&seen).contains(&("\"@query\"".into(), "?q=1".into())));
        assert_eq!(envoy.stat("wsgiproxy.app.signed"), 2);
    }

    // Without a query at all, "@query" is "?" and the library agrees.
    let envoy =
        app_envoy(port, json!({"role": "app", "href": "http://b:1/", "signature_format": "rfc9421", "secret": secret("k1", KEY_K1)}));
    let seen = envoy.get("/plain", &[]).json();
    assert_eq!(seen["verified"], true, "{seen}");
    assert!(covered(&seen).contains(&("\"@query\"".into(), "?".into())), "{seen}");

    // Signed with a key the backend does not hold: the library refuses it.
    let wrong = app_envoy(
        port,
        json!({"role": "app", "href": "http://b:1/", "signature_format": "rfc9421", "secret": secret("k1", "a-different-key-0123456789")}),
    );
    let seen = wrong.get("/plain", &[]).json();
    assert_eq!(seen["verified"], false, "{seen}");
}

/// What the Python signer is asked to sign.
struct ToSign {
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    covered: Vec<&'static str>,
    created: u64,
    nonce: String,
    label: &'static str,
    key: &'static str,
}

/// Signs each request with http-message-signatures (one Python run for all);
/// returns each request's headers with Signature-Input and Signature added.
fn signed_by_the_library(requests: &[ToSign]) -> Vec<Vec<(String, String)>> {
    let input: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({"key_id": "k1", "key": r.key, "method": "GET", "url": format!("http://test.local{}", r.path),
                   "headers": r.headers, "covered": r.covered, "created": r.created, "nonce": r.nonce, "label": r.label})
        })
        .collect();
    requests
        .iter()
        .zip(library_signatures(&input))
        .map(|(r, (signature_input, signature))| {
            let mut headers: Vec<(String, String)> = r.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            headers.push(("Signature-Input".into(), signature_input));
            headers.push(("Signature".into(), signature));
            headers
        })
        .collect()
}

fn send(port: u16, path: &str, headers: &[(String, String)]) -> Response {
    let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    request(port, "GET", path, &refs, b"")
}

#[test]
fn requests_signed_by_http_message_signatures_pass_the_middleware_role() {
    let echo = Echo::start();
    let mw = Envoy::start(
        "envoy/middleware.yaml",
        &Overrides::default().cluster("app", echo.port).plugin(json!({
            "role": "middleware", "signature_format": "rfc9421", "secret": secret("k1", KEY_K1),
            "on_untrusted": "reject", "keys": {"REMOTE_USER": "x-remote-user"}})),
    );
    let now = now_secs();
    let base = |nonce: &str| ToSign {
        path: "/p?x=1",
        headers: LIBRARY_PROTOCOL.to_vec(),
        covered: LIBRARY_COVERED.to_vec(),
        created: now,
        nonce: nonce.to_string(),
        label: "wsgiproxy",
        key: KEY_K1,
    };
    // A header sent as two field lines: the library signs them combined, "a, b".
    let mut repeated = base("n-repeated");
    repeated.headers.push(("x-repeated", "a, b"));
    repeated.covered.push("x-repeated");
    let mut no_header_covered = base("n-partial");
    no_header_covered.covered.retain(|c| *c != "x-wsgiproxy-str-0");
    let signed = signed_by_the_library(&[
        base("n-trusted"),
        base("n-tampered-header"),
        base("n-tampered-query"),
        ToSign { created: now - 600, ..base("n-stale") },
        base("n-added-header"),
        no_header_covered,
        ToSign { label: "other", ..base("n-other-label") },
        ToSign { key: "a-different-key-0123456789", ..base("n-other-key") },
        repeated,
    ]);

    // Trusted: the backend gets the decoded keys and the forwarded values.
    let got = send(mw.port, "/p?x=1", &signed[0]).received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("203.0.113.5"));
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(got.header("host").as_deref(), Some("www.example.com"));
    assert_eq!(got.header("signature-input"), None, "our signature is consumed");
    assert_eq!(got.header("signature"), None);
    assert!(!got.names().iter().any(|n| n.starts_with("x-wsgiproxy-")));

    let refused = |r: Response, status: u16, reason: &str, what: &str| {
        assert_eq!((r.status, r.header("x-wsgiproxy-error")), (status, Some(reason)), "{what}: {}", r.text());
    };
    // The same request again: replayed.
    refused(send(mw.port, "/p?x=1", &signed[0]), 403, "signature_replayed", "replay");
    // A covered component changed on the way.
    let mut tampered = signed[1].clone();
    tampered[4].1 = "REMOTE_USER root".into();
    refused(send(mw.port, "/p?x=1", &tampered), 403, "signature_bad", "tampered header");
    refused(send(mw.port, "/p?x=2", &signed[2]), 403, "signature_bad", "tampered query");
    // Created ten minutes ago (the window is 300 s).
    refused(send(mw.port, "/p?x=1", &signed[3]), 403, "signature_stale", "stale");
    // A protocol header added on the way, or one the signer left uncovered.
    let mut added = signed[4].clone();
    added.push(("X-Script-Name".into(), "/admin".into()));
    refused(send(mw.port, "/p?x=1", &added), 403, "signature_bad", "added header");
    refused(send(mw.port, "/p?x=1", &signed[5]), 403, "signature_bad", "uncovered header");
    // Another label only: no signature of ours (401 under on_untrusted: reject).
    refused(send(mw.port, "/p?x=1", &signed[6]), 401, "signature_missing", "other label");
    refused(send(mw.port, "/p?x=1", &signed[7]), 403, "signature_bad", "other key");
    // Two field lines of one header are combined as RFC 9421 §2.1 says.
    let mut two_lines: Vec<(String, String)> = signed[8].iter().filter(|(n, _)| n != "x-repeated").cloned().collect();
    two_lines.push(("X-Repeated".into(), "a".into()));
    two_lines.push(("X-Repeated".into(), " b".into()));
    let got = send(mw.port, "/p?x=1", &two_lines).received();
    assert_eq!(got.all("x-repeated"), ["a", "b"]);
    assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"));

    assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 2);
    assert_eq!(mw.stat("wsgiproxy.middleware.rejected.signature_bad"), 5);
}

#[test]
fn app_role_to_middleware_role_in_rfc9421() {
    let echo = Echo::start();
    let mw = Envoy::start(
        "envoy/middleware.yaml",
        &Overrides::default().cluster("app", echo.port).plugin(json!({
            "role": "middleware", "signature_format": "rfc9421", "secret": secret("k1", KEY_K1),
            "on_untrusted": "reject", "keys": {"REMOTE_USER": "x-remote-user", "roles": "x-roles"}})),
    );
    let edge = app_envoy(
        mw.port,
        json!({"role": "app", "href": "http://internal:9000/apps/blog", "script_name": "/blog", "signature_format": "rfc9421",
               "secret": secret("k1", KEY_K1),
               "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}],
               "json_keys": [{"key": "roles", "value": "[\"admin\"]"}]}),
    );
    let got = edge.get("/blog/posts/7?page=2", &[("Host", "www.example.com:8443"), ("X-Auth-User", "bob")]).received();
    assert_eq!(got.uri(), "/posts/7?page=2");
    assert_eq!(got.header("host").as_deref(), Some("www.example.com:8443"));
    assert_eq!(got.header("x-forwarded-prefix").as_deref(), Some("/blog"));
    assert_eq!(got.header("x-remote-user").as_deref(), Some("bob"));
    assert_eq!(got.header("x-roles").as_deref(), Some("[\"admin\"]"));
    assert_eq!(got.header("signature-input"), None);
    assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 1);
}

/// The five-line backend snippet in docs/signatures.md is the one the backend above runs.
#[test]
fn the_readme_snippet_is_the_tested_one() {
    let script = std::fs::read_to_string(repo_root().join("tests/apps/rfc9421_backend.py")).unwrap();
    let start = script.find("# README snippet").unwrap();
    let end = script.find("# end of README snippet").unwrap();
    let snippet: Vec<&str> = script[start..end].lines().skip(1).map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(snippet.len(), 5, "{snippet:?}");
    let doc = std::fs::read_to_string(repo_root().join("docs/signatures.md")).unwrap();
    let block = doc.split("```python").nth(1).and_then(|b| b.split("```").next()).expect("a python block in docs/signatures.md");
    let lines: Vec<&str> = block.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, snippet);
}

// ------------------------------------------------------------ public keys (ed25519, ecdsa-p256-sha256)

const PUBLIC_KEY_ALGORITHMS: [&str; 2] = ["ed25519", "ecdsa-p256-sha256"];

/// A key pair made by PyPI's cryptography (OpenSSL), in every form the filter reads.
struct KeyPair {
    /// PKCS#8.
    private_pem: String,
    /// SEC1 (`-----BEGIN EC PRIVATE KEY-----`), ECDSA only.
    private_sec1_pem: Option<String>,
    /// SPKI.
    public_pem: String,
    private_jwk: String,
    public_jwk: String,
}

fn key_pairs(algorithm: &str, count: usize) -> Vec<KeyPair> {
    let out = Command::new(python())
        .arg(repo_root().join("tests/apps/rfc9421_keys.py"))
        .args([algorithm, &count.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the Python key maker failed");
    let pairs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let text = |pair: &Value, name: &str| pair[name].as_str().unwrap().to_string();
    pairs
        .iter()
        .map(|p| KeyPair {
            private_pem: text(p, "private_pem"),
            private_sec1_pem: p["private_sec1_pem"].as_str().map(str::to_string),
            public_pem: text(p, "public_pem"),
            private_jwk: text(p, "private_jwk"),
            public_jwk: text(p, "public_jwk"),
        })
        .collect()
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
fn app_role_public_key_signatures_verify_with_http_message_signatures() {
    for algorithm in PUBLIC_KEY_ALGORITHMS {
        let pairs = key_pairs(algorithm, 2);
        let (k1, stranger) = (&pairs[0], &pairs[1]);
        let (port, _backend) = public_key_backend(algorithm, &k1.public_pem);
        let config = |key: Value| {
            json!({"role": "app", "href": "http://backend.internal:8080/mount?q=1", "script_name": "/blog",
                   "signature_format": "rfc9421", "algorithm": algorithm, "secret": {"keys": [key]},
                   "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}]})
        };
        // The private key from the environment as OpenSSL writes it (PKCS#8; for ECDSA
        // SEC1, as `openssl ecparam -genkey` does), then inline as a JWK.
        let from_env = k1.private_sec1_pem.clone().unwrap_or_else(|| k1.private_pem.clone());
        for (key, env) in
            [(json!({"id": "k1", "env": "WSGIPROXY_KEY_K1"}), Some(from_env)), (json!({"id": "k1", "value": k1.private_jwk}), None)]
        {
            let mut overrides = Overrides::default().cluster("backend", port).plugin(config(key.clone()));
            if let Some(pem) = &env {
                overrides = overrides.env("WSGIPROXY_KEY_K1", pem);
            }
            let envoy = Envoy::start("envoy/app.yaml", &overrides);
            let r = request(envoy.port, "POST", "/blog/a/b?x=1", &[("Host", "www.example.com:8443"), ("X-Auth-User", "bob")], b"body");
            assert_eq!(r.status, 200, "{}", r.text());
            let seen = r.json();
            assert_eq!(seen["verified"], true, "{algorithm} {key}: {seen}");
            assert_eq!(seen["parameters"]["alg"], algorithm);
            assert_eq!(seen["parameters"]["keyid"], "k1");
            let got = covered(&seen);
            for expected in [
                ("\"@method\"", "POST"),
                ("\"@authority\"", "backend.internal:8080"),
                ("\"@path\"", "/mount/a/b"),
                ("\"@query\"", "?x=1&q=1"),
                ("\"x-wsgiproxy-str-0\"", "REMOTE_USER bob"),
            ] {
                assert!(got.contains(&(expected.0.to_string(), expected.1.to_string())), "{expected:?} in {got:?}");
            }
            assert_eq!(envoy.stat("wsgiproxy.app.signed"), 1);
        }
        // Signed by a private key (PKCS#8) whose public key the backend does not hold: refused.
        let wrong = app_envoy(port, config(json!({"id": "k1", "value": stranger.private_pem})));
        let seen = wrong.get("/blog/x", &[]).json();
        assert_eq!(seen["verified"], false, "{algorithm}: {seen}");
    }
}

/// Signs each entry (as tests/apps/rfc9421_sign.py reads it) with the library;
/// returns each request's headers with Signature-Input and Signature added.
fn library_signed(entries: &[Value]) -> Vec<Vec<(String, String)>> {
    let protocol = LIBRARY_PROTOCOL.iter().map(|(n, v)| (n.to_string(), v.to_string()));
    library_signatures(entries)
        .into_iter()
        .map(|(input, signature)| protocol.clone().chain([("Signature-Input".into(), input), ("Signature".into(), signature)]).collect())
        .collect()
}

#[test]
fn requests_signed_by_http_message_signatures_with_public_keys_pass_the_middleware_role() {
    // A receiver of HMAC signatures, for the signatures of the other algorithms.
    let echo = Echo::start();
    let hmac_middleware = Envoy::start(
        "envoy/middleware.yaml",
        &Overrides::default().cluster("app", echo.port).plugin(json!({
            "role": "middleware", "signature_format": "rfc9421", "secret": secret("k1", KEY_K1), "on_untrusted": "reject"})),
    );
    for algorithm in PUBLIC_KEY_ALGORITHMS {
        let pairs = key_pairs(algorithm, 3);
        let (k1, k2, stranger) = (&pairs[0], &pairs[1], &pairs[2]);
        // Public keys only: k2 inline as a JWK, first (it would sign after a rotation), k1 from the environment.
        let mw = Envoy::start(
            "envoy/middleware.yaml",
            &Overrides::default().cluster("app", echo.port).env("WSGIPROXY_KEY_K1", &k1.public_pem).plugin(json!({
                "role": "middleware", "signature_format": "rfc9421", "algorithm": algorithm,
                "secret": {"keys": [{"id": "k2", "value": k2.public_jwk}, {"id": "k1", "env": "WSGIPROXY_KEY_K1"}]},
                "on_untrusted": "reject", "keys": {"REMOTE_USER": "x-remote-user"}})),
        );
        let now = now_secs();
        let other_algorithm = PUBLIC_KEY_ALGORITHMS.iter().find(|a| **a != algorithm).unwrap();
        let entry = |nonce: &str, edits: Value| {
            let mut e = json!({"key_id": "k1", "key": k1.private_pem, "algorithm": algorithm, "method": "GET",
                               "url": "http://test.local/p?x=1", "headers": LIBRARY_PROTOCOL, "covered": LIBRARY_COVERED,
                               "created": now, "nonce": nonce, "label": "wsgiproxy"});
            for (k, v) in edits.as_object().unwrap() {
                e[k] = v.clone();
            }
            e
        };
        let signed = library_signed(&[
            entry("n-trusted", json!({})),
            entry("n-tampered", json!({})),
            entry("n-stale", json!({"created": now - 600})),
            entry("n-unknown-id", json!({"key_id": "k9", "key": stranger.private_pem})),
            entry("n-stranger", json!({"key": stranger.private_pem})),
            // A valid signature by k1 whose alg names another algorithm.
            entry("n-claims-hmac", json!({"claimed_alg": "hmac-sha256"})),
            entry("n-claims-other", json!({"claimed_alg": other_algorithm})),
            // The public key (all a receiver holds) taken as an HMAC secret.
            entry("n-hmac-public-key", json!({"algorithm": "hmac-sha256", "key": k1.public_pem})),
            // No alg: the key decides.
            entry("n-no-alg", json!({"include_alg": false})),
            // The other key of the ring.
            entry("n-k2", json!({"key_id": "k2", "key": k2.private_pem})),
            entry("n-to-hmac", json!({})),
        ]);
        let refused = |r: Response, status: u16, reason: &str, what: &str| {
            assert_eq!((r.status, r.header("x-wsgiproxy-error")), (status, Some(reason)), "{algorithm} {what}: {}", r.text());
        };
        let got = send(mw.port, "/p?x=1", &signed[0]).received();
        assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"), "{algorithm}");
        assert_eq!(got.header("signature-input"), None, "our signature is consumed");
        refused(send(mw.port, "/p?x=1", &signed[0]), 403, "signature_replayed", "replay");
        let mut tampered = signed[1].clone();
        tampered[4].1 = "REMOTE_USER root".into();
        refused(send(mw.port, "/p?x=1", &tampered), 403, "signature_bad", "tampered header");
        refused(send(mw.port, "/p?x=1", &signed[2]), 403, "signature_stale", "stale");
        for (i, what) in [
            (3, "unknown key id"),
            (4, "unknown key"),
            (5, "alg hmac-sha256"),
            (6, "alg of the other algorithm"),
            (7, "hmac keyed with the public key"),
        ] {
            refused(send(mw.port, "/p?x=1", &signed[i]), 403, "signature_bad", what);
        }
        for (i, what) in [(8, "no alg"), (9, "the ring's other key")] {
            let got = send(mw.port, "/p?x=1", &signed[i]).received();
            assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"), "{algorithm} {what}");
        }
        assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 3);
        assert_eq!(mw.stat("wsgiproxy.middleware.rejected.signature_bad"), 6);
        // An HMAC receiver does not take a public-key signature for its own.
        refused(send(hmac_middleware.port, "/p?x=1", &signed[10]), 403, "signature_bad", "to an HMAC receiver");
    }
}

#[test]
fn app_role_to_middleware_role_with_public_keys() {
    for algorithm in PUBLIC_KEY_ALGORITHMS {
        let pairs = key_pairs(algorithm, 1);
        let echo = Echo::start();
        let mw = Envoy::start(
            "envoy/middleware.yaml",
            &Overrides::default().cluster("app", echo.port).env("WSGIPROXY_KEY_K1", &pairs[0].public_pem).plugin(json!({
                "role": "middleware", "signature_format": "rfc9421", "algorithm": algorithm,
                "secret": {"keys": [{"id": "k1", "env": "WSGIPROXY_KEY_K1"}]},
                "on_untrusted": "reject", "keys": {"REMOTE_USER": "x-remote-user"}})),
        );
        let edge = Envoy::start(
            "envoy/app.yaml",
            &Overrides::default().cluster("backend", mw.port).env("WSGIPROXY_KEY_K1", &pairs[0].private_pem).plugin(json!({
                "role": "app", "href": "http://internal:9000/apps/blog", "script_name": "/blog", "signature_format": "rfc9421",
                "algorithm": algorithm, "secret": {"keys": [{"id": "k1", "env": "WSGIPROXY_KEY_K1"}]},
                "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}]})),
        );
        let got = edge.get("/blog/posts/7?page=2", &[("Host", "www.example.com:8443"), ("X-Auth-User", "bob")]).received();
        assert_eq!(got.uri(), "/posts/7?page=2", "{algorithm}");
        assert_eq!(got.header("x-remote-user").as_deref(), Some("bob"), "{algorithm}");
        assert_eq!(got.header("signature-input"), None);
        assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 1);
    }
}

#[test]
fn a_private_key_on_a_receiver_or_a_public_key_on_a_sender_is_refused_at_load() {
    let pair = &key_pairs("ed25519", 1)[0];
    let log = Envoy::start_refused(
        "envoy/middleware.yaml",
        &Overrides::default().plugin(json!({"role": "middleware", "signature_format": "rfc9421", "algorithm": "ed25519",
                                            "secret": {"keys": [{"id": "k1", "value": pair.private_pem}]}})),
    );
    assert!(log.contains("field `secret.keys[0].value`: is a private key"), "{log}");
    let log = Envoy::start_refused(
        "envoy/app.yaml",
        &Overrides::default().env("WSGIPROXY_KEY_K1", &pair.public_pem).plugin(json!({
            "role": "app", "href": "http://b/", "signature_format": "rfc9421", "algorithm": "ed25519",
            "secret": {"keys": [{"id": "k1", "env": "WSGIPROXY_KEY_K1"}]}})),
    );
    assert!(log.contains("field `secret.keys[0].env`: is a public key"), "{log}");
    // Never with v1 signatures.
    let log = Envoy::start_refused(
        "envoy/app.yaml",
        &Overrides::default().plugin(json!({"role": "app", "href": "http://b/", "algorithm": "ed25519",
                                            "secret": {"keys": [{"id": "k1", "value": pair.private_pem}]}})),
    );
    assert!(log.contains("field `algorithm`"), "{log}");
    // The key itself is never logged.
    let secret_line = pair.private_pem.lines().nth(1).unwrap();
    assert!(!log.contains(secret_line));
}

/// The five-line public-key verifier in docs/signatures.md is the one the backend runs.
#[test]
fn the_public_key_snippet_is_the_tested_one() {
    let script = std::fs::read_to_string(repo_root().join("tests/apps/rfc9421_backend.py")).unwrap();
    let start = script.find("# public-key snippet").unwrap();
    let end = script.find("# end of public-key snippet").unwrap();
    let snippet: Vec<&str> = script[start..end].lines().skip(1).map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(snippet.len(), 5, "{snippet:?}");
    assert!(snippet.iter().any(|l| l.contains("algorithms.ED25519")), "{snippet:?}");
    let doc = std::fs::read_to_string(repo_root().join("docs/signatures.md")).unwrap();
    let block = doc.split("```python").nth(2).and_then(|b| b.split("```").next()).expect("a second python block in docs/signatures.md");
    let lines: Vec<&str> = block.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, snippet);
}
