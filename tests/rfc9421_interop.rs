//! RFC 9421 signatures (`"signature_format": "rfc9421"`) against a library nobody
//! here wrote: PyPI's http-message-signatures verifies what the `app` role signs in
//! real Envoy, and signs requests the `middleware` role in real Envoy must trust
//! or refuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;

const KEY_K1: &str = "first-shared-key-0123456789";

fn python() -> std::path::PathBuf {
    repo_root().join(".venv/bin/python")
}

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
    let mut child = Command::new(python())
        .arg(repo_root().join("tests/apps/rfc9421_sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(Value::from(input).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Python signer failed");
    let signatures: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    requests
        .iter()
        .zip(signatures)
        .map(|(r, s)| {
            let mut headers: Vec<(String, String)> = r.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            headers.push(("Signature-Input".into(), s["signature-input"].as_str().unwrap().into()));
            headers.push(("Signature".into(), s["signature"].as_str().unwrap().into()));
            headers
        })
        .collect()
}

fn send(port: u16, path: &str, headers: &[(String, String)]) -> Response {
    let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    request(port, "GET", path, &refs, b"")
}

const PROTOCOL: [(&str, &str); 5] = [
    ("x-forwarded-for", "203.0.113.5"),
    ("x-forwarded-server", "www.example.com"),
    ("x-forwarded-scheme", "https"),
    ("x-wsgiproxy-version", "0.1"),
    ("x-wsgiproxy-str-0", "REMOTE_USER alice"),
];

const ALL_COVERED: [&str; 9] = [
    "@method",
    "@authority",
    "@path",
    "@query",
    "x-forwarded-for",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-wsgiproxy-version",
    "x-wsgiproxy-str-0",
];

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
        headers: PROTOCOL.to_vec(),
        covered: ALL_COVERED.to_vec(),
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
