//! The `middleware` role in real Envoy, alone and chained behind the `app` role.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use support::*;
use wsgiproxy_protocol::signature::{format_date, sign, Algorithm, KeyRing, SignedParts};

const KEY_K1: &str = "first-shared-key-0123456789";
const KEY_K2: &str = "second-shared-key-0123456789";

fn middleware(app_port: u16, config: Value) -> Envoy {
    Envoy::start("envoy/middleware.yaml", &Overrides::default().cluster("app", app_port).plugin(config))
}

fn app(backend_port: u16, config: Value) -> Envoy {
    Envoy::start("envoy/app.yaml", &Overrides::default().cluster("backend", backend_port).plugin(config))
}

fn secret(keys: &[(&str, &str)]) -> Value {
    json!({"keys": keys.iter().map(|(id, v)| json!({"id": id, "value": v})).collect::<Vec<_>>()})
}

const PROTOCOL_LEFTOVERS: [&str; 8] = [
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-script-name",
    "x-forwarded-script-name",
    "x-traversal-path",
    "x-traversal-query-string",
    "x-wsgiproxy-version",
    "x-wsgiproxy-signature",
];

fn assert_no_protocol_headers(got: &Received) {
    for name in got.names() {
        assert!(!PROTOCOL_LEFTOVERS.contains(&name.as_str()) && !name.starts_with("x-wsgiproxy-"), "{name} reached the app");
    }
}

#[test]
fn two_envoys_signed_end_to_end() {
    let echo = Echo::start();
    let mw = middleware(
        echo.port,
        json!({"role": "middleware", "secret": secret(&[("k1", KEY_K1)]),
               "keys": {"REMOTE_USER": "x-remote-user", "roles": "x-roles", "name": "x-name"}}),
    );
    let edge = app(
        mw.port,
        json!({"role": "app", "href": "http://internal:9000/apps/blog", "script_name": "/blog",
               "secret": secret(&[("k1", KEY_K1)]),
               "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}, {"key": "OTHER", "value": "not allowlisted"}],
               "unicode_keys": [{"key": "name", "value": "Jos\u{e9}"}],
               "json_keys": [{"key": "roles", "value": "[\"admin\"]"}]}),
    );
    let got =
        edge.get("/blog/posts/7?page=2", &[("Host", "www.example.com:8443"), ("X-Auth-User", "bob"), ("X-Remote-User", "root")]).received();
    assert_eq!(got.uri(), "/posts/7?page=2");
    assert_eq!(got.header("host").as_deref(), Some("www.example.com:8443"));
    assert_eq!(got.header("x-forwarded-host").as_deref(), Some("www.example.com:8443"));
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-prefix").as_deref(), Some("/blog"));
    assert_eq!(got.header("x-remote-user").as_deref(), Some("bob"));
    assert_eq!(got.header("x-roles").as_deref(), Some("[\"admin\"]"));
    assert_eq!(got.0["headers"].as_array().unwrap().iter().find(|h| h[0] == "x-name").unwrap()[1], "Jos\u{e9}");
    assert_no_protocol_headers(&got);
    assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 1);
    assert_eq!(mw.stat("wsgiproxy.middleware.dropped_keys"), 1);
}

#[test]
fn trusted_peer_by_cidr_without_signature() {
    let echo = Echo::start();
    let mw = middleware(
        echo.port,
        json!({"role": "middleware", "trust_ips": ["10.0.0.0/8", "127.0.0.0/8"], "keys": {"REMOTE_USER": "x-remote-user"}}),
    );
    let edge =
        app(mw.port, json!({"role": "app", "href": "http://b:80/", "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}]}));
    let got = edge.get("/x", &[("Host", "front.example"), ("X-Auth-User", "alice")]).received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"));
    assert_eq!(got.header("host").as_deref(), Some("front.example"));
    assert_eq!(got.uri(), "/x");
    assert_no_protocol_headers(&got);
    assert_eq!(mw.stat("wsgiproxy.middleware.trusted"), 1);
}

fn forged() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Host", "real.example"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Server", "evil.example"),
        ("X-Forwarded-Scheme", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Script-Name", "/evil"),
        ("X-Traversal-Path", "/x"),
        ("X-WSGIProxy-Version", "0.1"),
        ("X-WSGIProxy-Str-0", "REMOTE_USER root"),
        ("X-Remote-User", "root"),
    ]
}

#[test]
fn untrusted_peer_forgeries_are_stripped_or_rejected() {
    let echo = Echo::start();
    let mw = middleware(echo.port, json!({"role": "middleware", "trust_ips": ["10.0.0.0/8"], "keys": {"REMOTE_USER": "x-remote-user"}}));
    let got = mw.get("/x/y", &forged()).received();
    assert_eq!(got.uri(), "/x/y", "the path is not rewritten for an untrusted peer");
    assert_eq!(got.header("host").as_deref(), Some("real.example"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"), "the real peer");
    assert_eq!(got.header("x-forwarded-host").as_deref(), Some("real.example"));
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(got.header("x-forwarded-prefix"), None);
    assert_eq!(got.header("x-remote-user"), None);
    assert_no_protocol_headers(&got);
    assert_eq!(mw.stat("wsgiproxy.middleware.untrusted"), 1);
    assert!(mw.stat("wsgiproxy.middleware.stripped_headers") >= 10);

    let strict = middleware(echo.port, json!({"role": "middleware", "trust_ips": ["10.0.0.0/8"], "on_untrusted": "reject"}));
    let r = strict.get("/x/y", &forged());
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-wsgiproxy-error"), Some("untrusted_peer"));
    assert_eq!(strict.stat("wsgiproxy.middleware.rejected.untrusted_peer"), 1);
}

/// Sends a request through an edge Envoy whose backend is the echo server and
/// returns exactly what it signed, so a test can replay or tamper with it.
fn captured_signed_request(app_key: (&str, &str), path: &str) -> Vec<(String, String)> {
    let echo = Echo::start();
    let edge = app(
        echo.port,
        json!({"role": "app", "href": "http://internal:9000/", "secret": secret(&[app_key]),
               "string_keys": [{"key": "REMOTE_USER", "value": "bob"}]}),
    );
    let got = edge.get(path, &[("Host", "www.example.com")]).received();
    got.0["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
        .filter(|(n, _)| {
            !matches!(n.as_str(), "content-length" | "connection" | "x-request-id" | "x-envoy-expected-rq-timeout-ms" | "x-forwarded-proto")
        })
        .collect()
}

fn send(envoy: &Envoy, path: &str, headers: &[(String, String)]) -> Response {
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    request(envoy.port, "GET", path, &h, b"")
}

fn with(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| if n == name { (n.clone(), value.to_string()) } else { (n.clone(), v.clone()) }).collect()
}

#[test]
fn signatures_replay_tampering_and_rotation() {
    let echo = Echo::start();
    let mw = middleware(
        echo.port,
        json!({"role": "middleware", "secret": secret(&[("k2", KEY_K2), ("k1", KEY_K1)]), "keys": {"REMOTE_USER": "x-remote-user"}}),
    );
    let signed = captured_signed_request(("k2", KEY_K2), "/p?q=1");
    assert!(signed.iter().any(|(n, _)| n == "x-wsgiproxy-signature"));

    // Tampered copies first (they must not burn the nonce), then the real one, then its replay.
    let tamper = |name: &str, value: &str| with(&signed, name, value);
    for (what, headers, path) in [
        ("host", tamper("host", "other.example:9000"), "/p?q=1"),
        ("path", signed.clone(), "/admin?q=1"),
        ("query", signed.clone(), "/p?q=2"),
        ("header", tamper("x-wsgiproxy-str-0", "REMOTE_USER root"), "/p?q=1"),
        ("client address", tamper("x-forwarded-for", "10.9.9.9"), "/p?q=1"),
    ] {
        let r = send(&mw, path, &headers);
        assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_bad")), "tampered {what}: {}", r.text());
    }
    let mut added = signed.clone();
    added.push(("x-wsgiproxy-str-1".into(), "IS_ADMIN yes".into()));
    assert_eq!(send(&mw, "/p?q=1", &added).status, 403, "an added protocol header");

    let got = send(&mw, "/p?q=1", &signed).received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("bob"));
    let replay = send(&mw, "/p?q=1", &signed);
    assert_eq!((replay.status, replay.header("x-wsgiproxy-error")), (403, Some("signature_replayed")));
    assert!(replay.text().contains("replayed"));

    // Signed with the older key of the ring: still accepted after rotation.
    let old = captured_signed_request(("k1", KEY_K1), "/p");
    assert_eq!(send(&mw, "/p", &old).received().header("x-remote-user").as_deref(), Some("bob"));
    // Signed with a key the receiver does not hold.
    let wrong = captured_signed_request(("k1", "a-key-nobody-configured-here"), "/p");
    assert_eq!(send(&mw, "/p", &wrong).status, 403);

    // A stale Date, correctly signed by the test itself.
    let old_date = format_date(SystemTime::now() - Duration::from_secs(600));
    let sig = sign_version_only(("k2", KEY_K2), [9; 16], "/p", &old_date);
    let stale = vec![
        ("host".to_string(), "internal:9000".to_string()),
        ("date".to_string(), old_date.clone()),
        ("x-wsgiproxy-version".to_string(), "0.1".to_string()),
        ("x-wsgiproxy-signature".to_string(), sig),
    ];
    let r = send(&mw, "/p", &stale);
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_stale")));
    // Inside the window but dated before this Envoy's replay memory began: what an
    // Envoy before a restart accepted is unknown, so it is refused as too early.
    let before_start = format_date(SystemTime::now() - Duration::from_secs(60));
    let sig = sign_version_only(("k2", KEY_K2), [10; 16], "/p", &before_start);
    let early = with(&with(&stale, "date", &before_start), "x-wsgiproxy-signature", &sig);
    let r = send(&mw, "/p", &early);
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (425, Some("signed_before_restart")), "{}", r.text());

    // Unsigned: stripped by default (counted), 401 with on_untrusted=reject.
    let got = mw.get("/p", &forged()).received();
    assert_eq!(got.header("x-remote-user"), None);
    let strict = middleware(echo.port, json!({"role": "middleware", "secret": secret(&[("k1", KEY_K1)]), "on_untrusted": "reject"}));
    let r = strict.get("/p", &forged());
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (401, Some("signature_missing")));

    assert_eq!(mw.stat("wsgiproxy.middleware.rejected.signature_bad"), 7);
    assert_eq!(mw.stat("wsgiproxy.middleware.rejected.signature_replayed"), 1);
    assert_eq!(mw.stat("wsgiproxy.middleware.rejected.signature_stale"), 1);
    assert_eq!(mw.stat("wsgiproxy.middleware.rejected.signed_before_restart"), 1);
    // The gauge of how full the replay memory is (percent): in Wasm the fullest key a
    // worker wrote lately, natively the process's memory.
    let gauge = format!("{}wsgiproxy.middleware.replay_memory_percent", mw.loader.stat_prefix());
    wait_until("the replay memory gauge", Duration::from_secs(5), || mw.stats("replay_memory_percent").contains_key(&gauge));
}

#[test]
fn undecodable_or_malformed_protocol_headers_are_400() {
    let echo = Echo::start();
    let mw = middleware(
        echo.port,
        json!({"role": "middleware", "trust_ips": ["127.0.0.1"], "keys": {"REMOTE_USER": "x-remote-user", "roles": "x-roles"}}),
    );
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&[("X-WSGIProxy-Str-0", "REMOTE_USER b64%%%")], "undecodable_payload", "x-wsgiproxy-str-0"),
        (&[("X-WSGIProxy-Unicode-0", "REMOTE_USER b64/w==")], "undecodable_payload", "x-wsgiproxy-unicode-0"),
        (&[("X-WSGIProxy-Json-0", "roles {\"a\":")], "undecodable_payload", "x-wsgiproxy-json-0"),
        (&[("X-WSGIProxy-Str-0", "REMOTE_USER b64cm9vdApYLUFkbWluOiAx")], "undeliverable_value", "x-wsgiproxy-str-0"),
        (&[("X-WSGIProxy-Str-007", "REMOTE_USER a")], "bad_payload_index", "x-wsgiproxy-str-007"),
        (&[("X-Script-Name", "/a"), ("X-Script-Name", "/b")], "duplicate_header", "x-script-name"),
        (&[("X-Forwarded-Server", "user@evil.example")], "bad_forwarded_server", "X-Forwarded-Server"),
        (&[("X-Traversal-Path", "/elsewhere")], "outside_traversal_path", "X-Traversal-Path"),
    ];
    for (headers, reason, named) in cases {
        let r = mw.get("/x", headers);
        assert_eq!(r.status, 400, "{headers:?}: {}", r.text());
        assert_eq!(r.header("x-wsgiproxy-error"), Some(*reason), "{headers:?}");
        assert!(r.text().contains(named), "{headers:?}: body {:?} should name {named}", r.text());
    }
    // WSGIProxy 0.2.2's own spelling is accepted.
    let got = mw.get("/app/x", &[("X-Forwarded-Script-Name", "/mount"), ("X-Traversal-Path", "app")]).received();
    assert_eq!(got.uri(), "/x");
    assert_eq!(got.header("x-forwarded-prefix").as_deref(), Some("/mount"));
}

#[test]
fn forced_prefix_and_host() {
    let echo = Echo::start();
    let mw = middleware(
        echo.port,
        json!({"role": "middleware", "trust_ips": [], "pop_prefix": "/shop", "scheme": "https", "host": "shop.example:443"}),
    );
    let got = mw.get("/shop/cart?id=3", &[]).received();
    assert_eq!(got.uri(), "/cart?id=3");
    assert_eq!(got.header("x-forwarded-prefix").as_deref(), Some("/shop"));
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(got.header("host").as_deref(), Some("shop.example:443"));
    let r = mw.get("/elsewhere", &[]);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("/shop"), "{}", r.text());
}

#[test]
fn werkzeug_proxyfix_builds_the_clients_url() {
    let port = free_port();
    let python = repo_root().join(".venv/bin/python");
    let child = Command::new(&python)
        .arg(repo_root().join("tests/apps/proxyfix_app.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _guard = Proc::adopt(child);
    assert!(wait_for_port(port, Duration::from_secs(20)), "the WSGI app did not start");

    let mw = middleware(port, json!({"role": "middleware", "secret": secret(&[("k1", KEY_K1)]), "keys": {"REMOTE_USER": "x-remote-user"}}));
    let edge = app(
        mw.port,
        json!({"role": "app", "href": "http://wsgi-backend:8000/", "script_name": "/blog", "secret": secret(&[("k1", KEY_K1)]),
               "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}]}),
    );
    let r = edge.get("/blog/entries/1?x=y", &[("Host", "www.example.com:8080"), ("X-Auth-User", "carol")]);
    let seen = r.json();
    assert_eq!(seen["url_root"], "http://www.example.com:8080/blog/", "{seen}");
    assert_eq!(seen["url"], "http://www.example.com:8080/blog/entries/1?x=y");
    assert_eq!(seen["script_root"], "/blog");
    assert_eq!(seen["path"], "/entries/1");
    assert_eq!(seen["remote_addr"], "127.0.0.1");
    assert_eq!(seen["remote_user"], "carol");
}

#[test]
fn a_replay_is_caught_across_worker_threads() {
    let echo = Echo::start();
    let overrides = Overrides { concurrency: Some(2), ..Overrides::default() }
        .cluster("app", echo.port)
        .plugin(json!({"role": "middleware", "secret": secret(&[("k1", KEY_K1)])}));
    let mw = Envoy::start("envoy/middleware.yaml", &overrides);
    let signed = captured_signed_request(("k1", KEY_K1), "/p");
    // The same signed request on 24 connections at once: the kernel spreads them over
    // both workers, and exactly one may pass.
    let port = mw.port;
    let statuses: Vec<u16> = (0..24)
        .map(|_| {
            let h = signed.clone();
            std::thread::spawn(move || {
                let refs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                request(port, "GET", "/p", &refs, b"").status
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 23, "{statuses:?}");

    // Fresh nonces land in slots no request has written yet: the first write to a
    // slot must be a compare-and-swap too. Each request is fired on 6 connections
    // opened beforehand and released together.
    let date = format_date(SystemTime::now());
    for round in 0..40u8 {
        let nonce: [u8; 16] = std::array::from_fn(|i| round.wrapping_mul(31).wrapping_add(i as u8 * 7) ^ 0x5a);
        let raw = format!(
            "GET /burst HTTP/1.1\r\nHost: internal:9000\r\nDate: {date}\r\nX-WSGIProxy-Version: 0.1\r\nX-WSGIProxy-Signature: {}\r\nConnection: close\r\n\r\n",
            sign_version_only(("k1", KEY_K1), nonce, "/burst", &date)
        );
        let statuses = fire_together(port, raw.as_bytes(), 6);
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "round {round}: {statuses:?}");
        assert!(statuses.iter().all(|s| *s == 200 || *s == 403), "round {round}: {statuses:?}");
    }

    // Both workers took connections (Envoy's per-worker listener counters).
    let per_worker = mw.stats("downstream_cx_total");
    for worker in ["worker_0", "worker_1"] {
        let taken: u64 = per_worker.iter().filter(|(k, _)| k.contains(worker)).map(|(_, v)| v).sum();
        assert!(taken > 0, "{worker} took no connection: {per_worker:?}");
    }
}

/// The signature (HMAC-SHA1) of `GET {path}` to internal:9000 whose only protocol
/// header is X-WSGIProxy-Version: 0.1, signed by the test itself.
fn sign_version_only(key: (&str, &str), nonce: [u8; 16], path: &str, date: &str) -> String {
    let ring = KeyRing::new(Algorithm::HmacSha1, &[(key.0.into(), key.1.as_bytes().to_vec())]).unwrap();
    let parts = SignedParts {
        method: b"GET",
        authority: b"internal:9000",
        path: path.as_bytes(),
        date: date.as_bytes(),
        protocol_headers: vec![("x-wsgiproxy-version", b"0.1")],
    };
    sign(&ring, &nonce, &parts).unwrap()
}

/// Opens `copies` connections, then writes `raw` on all of them at once; the statuses.
fn fire_together(port: u16, raw: &[u8], copies: usize) -> Vec<u16> {
    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    use std::sync::{Arc, Barrier};
    let barrier = Arc::new(Barrier::new(copies));
    let threads: Vec<_> = (0..copies)
        .map(|_| {
            let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let (barrier, raw) = (barrier.clone(), raw.to_vec());
            std::thread::spawn(move || {
                let mut stream = stream;
                barrier.wait();
                stream.write_all(&raw).unwrap();
                read_response(&mut BufReader::new(stream)).status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// A signed request accepted by a verifying Envoy, then replayed to that Envoy after
/// a restart (a new process, its replay memory empty): refused, as TLS 1.3 refuses
/// 0-RTT data across a restart; a request signed after the restart goes through.
#[test]
fn a_request_replayed_to_a_restarted_envoy_is_refused() {
    let echo = Echo::start();
    let config = json!({"role": "middleware", "secret": secret(&[("k1", KEY_K1)]), "keys": {"REMOTE_USER": "x-remote-user"}});
    let mut before = middleware(echo.port, config.clone());
    let signed = captured_signed_request(("k1", KEY_K1), "/p");
    assert_eq!(send(&before, "/p", &signed).received().header("x-remote-user").as_deref(), Some("bob"));
    before.stop_and_log();
    let after = middleware(echo.port, config);
    let replay = send(&after, "/p", &signed);
    assert_eq!((replay.status, replay.header("x-wsgiproxy-error")), (425, Some("signed_before_restart")), "{}", replay.text());
    assert_eq!(after.stat("wsgiproxy.middleware.rejected.signed_before_restart"), 1);
    let fresh = captured_signed_request(("k1", KEY_K1), "/p");
    assert_eq!(send(&after, "/p", &fresh).received().header("x-remote-user").as_deref(), Some("bob"));
}
