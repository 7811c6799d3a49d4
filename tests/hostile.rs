//! Hostile input through real Envoy (envoy/middleware.yaml and envoy/app.yaml as
//! shipped): every case gets a defined answer (stripped, or a 4xx), the backend
//! never sees a forged value, and no panic reaches the Wasm VM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

const KEYS: &str = r#"{"REMOTE_USER": "x-remote-user", "roles": "x-roles"}"#;

fn middleware(echo: &Echo, trust: &[&str]) -> Envoy {
    let keys: serde_json::Value = serde_json::from_str(KEYS).unwrap();
    Envoy::start(
        "envoy/middleware.yaml",
        &Overrides::default()
            .cluster("app", echo.port)
            .plugin(json!({"role": "middleware", "trust_ips": trust, "keys": keys, "pop_prefix": "/app"})),
    )
}

/// Every header a client could use to pass itself off, in several spellings.
const FORGERIES: [(&str, &str); 26] = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Server", "evil.example"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Script-Name", "/evil"),
    ("X-Forwarded-Script-Name", "/evil"),
    ("X-Traversal-Path", "/app"),
    ("X-Traversal-Query-String", "evil=1"),
    ("X-WSGIProxy-Version", "0.1"),
    ("X-WSGIProxy-Signature", "k1 00112233445566778899aabbccddeeff 00"),
    ("X-WSGIProxy-Str-0", "REMOTE_USER root"),
    ("X-WSGIProxy-Unicode-0", "REMOTE_USER root"),
    ("X-WSGIProxy-Json-0", "roles [\"admin\"]"),
    ("X-WSGIProxy-Pickle-0", "REMOTE_USER b64gAJ9cQAu"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Prefix", "/evil"),
    ("X-Remote-User", "root"),
    ("x-ReMoTe-UsEr", "root"),
    ("X-Roles", "[\"admin\"]"),
    ("x_remote_user", "root"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("x-wsgiproxy_str_0", "REMOTE_USER root"),
    // Other spellings of the client, host and scheme that frameworks believe.
    ("Forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
    ("X-Forwarded-Port", "6666"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Forwarded-Ssl", "on-evil"),
];

/// No forged value reached the backend.
fn assert_clean(got: &Received) {
    let headers = got.0["headers"].as_array().unwrap();
    for h in headers {
        let (name, value) = (h[0].as_str().unwrap(), h[1].as_str().unwrap());
        assert!(
            !value.contains("root") && !value.contains("evil") && !value.contains("6.6.6") && !value.contains("admin"),
            "forged {name}: {value} reached the backend"
        );
        assert!(!name.contains('_'), "{name} reached the backend");
        assert!(
            !name.starts_with("x-wsgiproxy") && !name.starts_with("x-traversal") && name != "x-script-name",
            "{name} reached the backend"
        );
    }
}

#[test]
fn untrusted_forgeries_never_reach_the_backend() {
    let echo = Echo::start();
    let mw = middleware(&echo, &["10.0.0.0/8"]);
    // All at once, one at a time, and each twice.
    let got = mw.get("/app/x", &FORGERIES).received();
    assert_clean(&got);
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    for forged in FORGERIES {
        assert_clean(&mw.get("/app/x", &[forged]).received());
        assert_clean(&mw.get("/app/x", &[forged, forged]).received());
    }
}

/// Envoy as Istio runs it by default: header names with underscores let through.
fn allow_underscores(doc: &mut serde_yaml::Value) {
    let hcm = hcm(doc);
    hcm["common_http_protocol_options"]["headers_with_underscores_action"] = "ALLOW".into();
}

#[test]
fn the_filter_itself_strips_underscore_spellings() {
    let echo = Echo::start();
    let keys: serde_json::Value = serde_json::from_str(KEYS).unwrap();
    for trust in ["10.0.0.0/8", "127.0.0.1"] {
        let o = Overrides::default()
            .cluster("app", echo.port)
            .plugin(json!({"role": "middleware", "trust_ips": [trust], "keys": keys, "pop_prefix": "/app"}));
        let mw = Envoy::start("envoy/middleware.yaml", &Overrides { edit: Some(allow_underscores), ..o });
        // This Envoy does let underscores through: what is gone, the filter removed.
        assert_eq!(mw.get("/app/x", &[("x_custom", "kept")]).received().header("x_custom").as_deref(), Some("kept"));
        let forged: Vec<(&str, &str)> = if trust == "127.0.0.1" {
            // A trusted peer's protocol headers are believed: forge only what it never sends.
            FORGERIES
                .iter()
                .copied()
                .filter(|(n, _)| {
                    n.contains('_')
                        || !n.to_ascii_lowercase().starts_with("x-wsgiproxy")
                            && !matches!(
                                n.to_ascii_lowercase().as_str(),
                                "x-forwarded-for"
                                    | "x-forwarded-server"
                                    | "x-forwarded-scheme"
                                    | "x-script-name"
                                    | "x-forwarded-script-name"
                                    | "x-traversal-path"
                                    | "x-traversal-query-string"
                            )
                })
                .collect()
        } else {
            FORGERIES.to_vec()
        };
        assert_clean(&mw.get("/app/x", &forged).received());
        for one in &forged {
            assert_clean(&mw.get("/app/x", &[*one]).received());
        }
    }
}

#[test]
fn trusted_but_malformed_is_refused_whole() {
    let echo = Echo::start();
    let mw = middleware(&echo, &["127.0.0.1"]);
    let long = "a".repeat(9000);
    let many: Vec<(String, String)> = (0..70).map(|i| (format!("X-WSGIProxy-Str-{i}"), format!("K{i} v"))).collect();
    let mut many_refs: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    many_refs.push(("X-Remote-User", "root"));
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16);
    let cases: Vec<Case> = vec![
        ("duplicate protocol header", vec![("X-Forwarded-Server", "a.example"), ("X-Forwarded-Server", "b.example")], "/app/x", 400),
        ("oversized value", vec![("X-Forwarded-Server", &long)], "/app/x", 400),
        ("too many payloads", many_refs, "/app/x", 400),
        ("userinfo in X-Forwarded-Server", vec![("X-Forwarded-Server", "root@evil.example")], "/app/x", 400),
        ("path in X-Forwarded-Server", vec![("X-Forwarded-Server", "evil.example/x")], "/app/x", 400),
        ("comma in X-Forwarded-Server", vec![("X-Forwarded-Server", "a.example,evil.example")], "/app/x", 400),
        ("scheme not http(s)", vec![("X-Forwarded-Scheme", "javascript")], "/app/x", 400),
        ("scheme not http(s), case", vec![("X-Forwarded-Scheme", "HTTPS ")], "/app/x", 200),
        ("two client addresses", vec![("X-Forwarded-For", "1.2.3.4, 6.6.6.6")], "/app/x", 400),
        ("index with leading zero", vec![("X-WSGIProxy-Str-00", "REMOTE_USER root")], "/app/x", 400),
        ("index with sign", vec![("X-WSGIProxy-Str-+1", "REMOTE_USER root")], "/app/x", 400),
        ("bad base64", vec![("X-WSGIProxy-Str-0", "REMOTE_USER b64!!!")], "/app/x", 400),
        ("decoded newline", vec![("X-WSGIProxy-Str-0", "REMOTE_USER b64cm9vdApYLUFkbWluOiB5ZXM=")], "/app/x", 400),
        ("same key twice", vec![("X-WSGIProxy-Str-0", "REMOTE_USER a"), ("X-WSGIProxy-Str-1", "REMOTE_USER root")], "/app/x", 400),
        ("dot segments in X-Script-Name", vec![("X-Script-Name", "/a/../b")], "/app/x", 400),
        ("encoded dots in X-Traversal-Path", vec![("X-Traversal-Path", "/app/%2e%2e")], "/app/x", 400),
        ("traversal not on a segment", vec![("X-Traversal-Path", "/ap")], "/app/x", 400),
        ("outside pop_prefix", vec![], "/application", 400),
        ("encoded dot segment after the prefix", vec![], "/app/%2e%2e/admin", 400),
        ("dot segment after the prefix", vec![], "/app/../admin", 400),
        ("encoded slash", vec![], "/app%2Fadmin", 400),
        ("back slash", vec![], "/app/..\\admin", 400),
        // `..;` is `..` to Tomcat, Jetty and Spring; Envoy's normalisation decodes the dots.
        ("encoded dot segment with a path parameter", vec![], "/app/%2e%2e;/admin", 400),
        ("half-encoded dot segment with a path parameter", vec![], "/app/.%2e;/admin", 400),
        ("dot segment with a path parameter", vec![], "/app/..;jsessionid=1/admin", 400),
        ("dot segment with a path parameter in X-Script-Name", vec![("X-Script-Name", "/a/..;/b")], "/app/x", 400),
        ("dot segment with a path parameter in X-Traversal-Path", vec![("X-Traversal-Path", "/app/..;")], "/app/x", 400),
    ];
    for (what, headers, path, status) in cases {
        let r = request(mw.port, "GET", path, &headers, b"");
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if r.status == 200 {
            assert_clean(&r.received());
        }
    }
    // Doubled slashes are merged by Envoy before the filter sees the path.
    assert_eq!(mw.get("//app//x", &[]).received().uri(), "/x");
}

#[test]
fn raw_protocol_abuse_is_refused_by_envoy_or_the_filter() {
    let echo = Echo::start();
    let mw = middleware(&echo, &["127.0.0.1"]);
    let huge = format!("GET /app/x HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(70 * 1024));
    let mut too_many = String::from("GET /app/x HTTP/1.1\r\nHost: h\r\n");
    for i in 0..120 {
        too_many.push_str(&format!("X-H{i}: v\r\n"));
    }
    too_many.push_str("Connection: close\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CR in a value", b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-Script-Name: /a\rb\r\nConnection: close\r\n\r\n".to_vec()),
        ("NUL in a value", b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-Script-Name: /a\0b\r\nConnection: close\r\n\r\n".to_vec()),
        ("folded header", b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-Remote-User: a\r\n root\r\nConnection: close\r\n\r\n".to_vec()),
        ("space before colon", b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-Remote-User : root\r\nConnection: close\r\n\r\n".to_vec()),
        ("non-token header name", b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-R\xffmote: root\r\nConnection: close\r\n\r\n".to_vec()),
        ("headers over 60 KiB", huge.into_bytes()),
        ("more than 100 headers", too_many.into_bytes()),
    ];
    for (what, raw) in cases {
        let r = raw_request(mw.port, &raw);
        // Refused, or (Envoy's parser drops a bare CR) passed on with no control character.
        if r.status == 200 {
            let got = r.received();
            for h in got.0["headers"].as_array().unwrap() {
                let value = h[1].as_str().unwrap();
                assert!(!value.chars().any(|c| c.is_control() && c != '\t'), "{what}: {value:?} reached the backend");
            }
            eprintln!("{what}: sanitised by Envoy, passed on clean");
        } else {
            assert!((400..500).contains(&r.status), "{what}: {} {}", r.status, r.text());
            eprintln!("{what}: refused with {}", r.status);
        }
    }
    // A non-UTF-8 payload from a trusted peer: refused, never passed on half-decoded.
    let r = raw_request(mw.port, b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-WSGIProxy-Str-0: \xff\xfe v\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.text());
    // A non-UTF-8 forged value from an untrusted peer: stripped.
    let untrusted = middleware(&echo, &["10.0.0.0/8"]);
    let r = raw_request(untrusted.port, b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-Remote-User: \xffroot\r\nConnection: close\r\n\r\n");
    assert_eq!(r.received().header("x-remote-user"), None);
}

#[test]
fn no_panic_reaches_the_vm() {
    let echo = Echo::start();
    let mw = middleware(&echo, &["127.0.0.1"]);
    let app = Envoy::start(
        "envoy/app.yaml",
        &Overrides::default().cluster("backend", echo.port).plugin(json!({
            "role": "app", "href": "http://b/", "script_name": "/app",
            "string_keys": [{"key": "REMOTE_USER", "from_header": "x-user"}],
            "unicode_keys": [{"key": "name", "from_header": "x-name"}],
            "json_keys": [{"key": "roles", "from_header": "x-roles"}]})),
    );
    // Throw everything at both, raw bytes included.
    let nasty: Vec<Vec<u8>> = vec![
        b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-WSGIProxy-Str-0: \xff\xfe\xfd\r\nX-User: \xff\r\nX-Name: \xc3\x28\r\nX-Roles: \xff{\r\n\r\n"
            .to_vec(),
        b"GET /app/x HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n".to_vec(),
        b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-WSGIProxy-Json-0: roles b64\r\nX-WSGIProxy-Str-999: a\r\nX-WSGIProxy-Str-1000: a\r\n\r\n"
            .to_vec(),
        b"GET /app/x HTTP/1.1\r\nHost: h\r\nX-Traversal-Path: \r\nX-Script-Name: \r\nX-Forwarded-Server: :\r\n\r\n".to_vec(),
        b"GET /app/x HTTP/1.1\r\nHost: [::1\r\nX-Forwarded-Server: [zz]:1\r\nX-WSGIProxy-Str-0: %\r\n\r\n".to_vec(),
        b"GET /app HTTP/1.1\r\nHost: h\r\nX-WSGIProxy-Signature: \xff \xff \xff\r\n\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        b"CONNECT h:80 HTTP/1.1\r\nHost: h:80\r\n\r\n".to_vec(),
    ];
    for raw in &nasty {
        for envoy in [&mw, &app] {
            let mut with_close = raw.clone();
            with_close.truncate(with_close.len() - 2);
            with_close.extend_from_slice(b"Connection: close\r\n\r\n");
            let r = raw_request(envoy.port, &with_close);
            assert!(r.status < 500, "{}: {} {}", String::from_utf8_lossy(raw), r.status, r.text());
        }
    }
    for forged in FORGERIES {
        let _ = mw.get("/app/x", &[forged, forged]);
        let _ = app.get("/app/x", &[forged]);
    }
    // The same (only) worker still answers normally, and the filter still runs.
    let got = mw.get("/app/ok", &[("X-Forwarded-Server", "fine.example")]).received();
    assert_eq!(got.header("x-forwarded-host").as_deref(), Some("fine.example"));
    let got = app.get("/app/ok", &[("X-User", "bob")]).received();
    assert_eq!(got.header("x-wsgiproxy-str-0").as_deref(), Some("REMOTE_USER bob"));
    for envoy in [&mw, &app] {
        let stats = envoy.stats("wasm.");
        for (name, value) in &stats {
            if name.contains("vm_reload") || name.contains("failure") || name.contains("error") {
                assert_eq!(*value, 0, "{name}");
            }
        }
        let log = envoy.proc.log_text();
        assert!(!log.contains("panicked") && !log.contains("[critical]"), "{log}");
    }
}

#[test]
fn replayed_and_reordered_signed_requests() {
    let echo = Echo::start();
    let key = "hostile-suite-key-0123456789";
    let secret = json!({"keys": [{"id": "k1", "value": key}]});
    let mw = Envoy::start(
        "envoy/middleware.yaml",
        &Overrides::default()
            .cluster("app", echo.port)
            .plugin(json!({"role": "middleware", "secret": secret, "keys": {"REMOTE_USER": "x-remote-user"}})),
    );
    let edge = Envoy::start(
        "envoy/app.yaml",
        &Overrides::default()
            .cluster("backend", echo.port)
            .plugin(json!({"role": "app", "href": "http://internal:9000/", "secret": secret,
            "string_keys": [{"key": "REMOTE_USER", "value": "bob"}]})),
    );
    let capture = |path: &str| -> Vec<(String, String)> {
        edge.get(path, &[]).received().0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "content-length" | "connection" | "x-request-id" | "x-envoy-expected-rq-timeout-ms" | "x-forwarded-proto"
                )
            })
            .collect()
    };
    let first = capture("/one");
    let second = capture("/two");
    let send = |path: &str, h: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        request(mw.port, "GET", path, &refs, b"")
    };
    // Out of order: both fine (each nonce once, both Dates in the window).
    assert_eq!(send("/two", &second).status, 200);
    assert_eq!(send("/one", &first).status, 200);
    // Replays: refused, whatever the order.
    for (path, h) in [("/one", &first), ("/two", &second), ("/one", &first)] {
        let r = send(path, h);
        assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_replayed")));
    }
    // A signature moved onto another request: refused.
    let mut moved = second.clone();
    for (n, v) in moved.iter_mut() {
        if n == "x-wsgiproxy-signature" {
            *v = first.iter().find(|(n, _)| n == "x-wsgiproxy-signature").unwrap().1.clone();
        }
    }
    assert_eq!(send("/two", &moved).status, 403);
}
