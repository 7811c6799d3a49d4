//! The `app` role in real Envoy: what the backend receives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine as _;
use serde_json::json;
use support::*;

fn app_envoy(echo: &Echo, config: serde_json::Value) -> Envoy {
    Envoy::start("envoy/app.yaml", &Overrides::default().cluster("backend", echo.port).plugin(config))
}

#[test]
fn backend_receives_the_protocol_headers() {
    let echo = Echo::start();
    let envoy = app_envoy(
        &echo,
        json!({
            "role": "app",
            "href": "http://backend.internal:8080/myapp?some=querystring",
            "string_keys": [
                {"key": "REMOTE_USER", "from_header": "x-auth-user"},
                {"key": "absent", "from_header": "x-not-sent"},
                {"key": "multi line", "value": "one\ntwo"},
                {"key": "SPACED", "from_header": "x-spaced"},
                {"key": "B64ISH", "value": "b64notreally"}
            ],
            "unicode_keys": [{"key": "name", "value": "Jos\u{e9} \u{263a}"}],
            "json_keys": [
                {"key": "roles", "from_header": "x-roles"},
                {"key": "broken", "from_header": "x-broken-json"}
            ],
            "pickle_keys": [{"key": "obj", "value": "(dp0\n."}]
        }),
    );
    let r = request(
        envoy.port,
        "POST",
        "/article/1?x=1",
        &[
            ("Host", "www.example.com:8000"),
            ("X-Auth-User", "bob"),
            ("X-Spaced", "a\tb"),
            ("X-Roles", "[\"admin\", \"editor\"]"),
            ("X-Broken-Json", "{not json"),
            // Spoofed by the client: all must be gone or replaced.
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Server", "evil.example"),
            ("X-Forwarded-Scheme", "https"),
            ("X-Script-Name", "/evil"),
            ("X-Forwarded-Script-Name", "/evil"),
            ("X-Traversal-Path", "/evil"),
            ("X-Traversal-Query-String", "evil=1"),
            ("X-WSGIProxy-Str-7", "REMOTE_USER root"),
            ("X-WSGIProxy-Version", "9"),
            ("X-WSGIProxy-Anything", "x"),
        ],
        b"payload",
    );
    let got = r.received();
    assert_eq!(got.method(), "POST");
    assert_eq!(got.body(), "payload");
    assert_eq!(got.uri(), "/myapp/article/1?x=1&some=querystring");
    assert_eq!(got.header("host").as_deref(), Some("backend.internal:8080"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-server").as_deref(), Some("www.example.com:8000"));
    assert_eq!(got.header("x-forwarded-scheme").as_deref(), Some("http"));
    assert_eq!(got.header("x-script-name"), None);
    assert_eq!(got.header("x-forwarded-script-name"), None);
    assert_eq!(got.header("x-traversal-path").as_deref(), Some("/myapp"));
    assert_eq!(got.header("x-traversal-query-string").as_deref(), Some("some=querystring"));
    assert_eq!(got.header("x-wsgiproxy-version").as_deref(), Some("0.1"));
    assert_eq!(got.header("x-wsgiproxy-anything"), None);
    assert_eq!(got.header("x-wsgiproxy-str-7"), None);
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(got.header("x-wsgiproxy-str-0").as_deref(), Some("REMOTE_USER bob"));
    assert_eq!(got.header("x-wsgiproxy-str-1"), Some(format!("multi%20line b64{}", b64(b"one\ntwo"))));
    assert_eq!(got.header("x-wsgiproxy-str-2"), Some(format!("SPACED b64{}", b64(b"a\tb"))));
    assert_eq!(got.header("x-wsgiproxy-str-3"), Some(format!("B64ISH b64{}", b64(b"b64notreally"))));
    assert_eq!(got.header("x-wsgiproxy-str-4"), None);
    assert_eq!(got.header("x-wsgiproxy-unicode-0"), Some(format!("name b64{}", b64("Jos\u{e9} \u{263a}".as_bytes()))));
    assert_eq!(got.header("x-wsgiproxy-json-0").as_deref(), Some("roles [\"admin\", \"editor\"]"));
    // A json key whose header is not JSON is left out (and counted), never sent half-valid.
    assert_eq!(got.header("x-wsgiproxy-json-1"), None);
    assert_eq!(got.header("x-wsgiproxy-pickle-0"), Some(format!("obj b64{}", b64(b"(dp0\n."))));
    assert_eq!(envoy.stat("wsgiproxy.app.invalid_keys"), 1);
    assert_eq!(envoy.stat("wsgiproxy.app.forwarded"), 1);
    // Nine forged headers (X-Forwarded-For is Envoy's own at the edge, replaced, not counted).
    assert_eq!(envoy.stat("wsgiproxy.app.stripped_headers"), 9);
}

#[test]
fn mount_point_in_and_out() {
    let echo = Echo::start();
    let envoy = app_envoy(&echo, json!({"role": "app", "href": "http://127.0.0.1:8080/deep", "script_name": "/blog/"}));

    let got = envoy.get("/blog/article/1?q=2", &[]).received();
    assert_eq!(got.uri(), "/deep/article/1?q=2");
    assert_eq!(got.header("x-script-name").as_deref(), Some("/blog"));
    assert_eq!(got.header("x-traversal-path").as_deref(), Some("/deep"));
    assert_eq!(got.header("x-traversal-query-string"), None);

    let got = envoy.get("/blog", &[]).received();
    assert_eq!(got.uri(), "/deep");

    for outside in ["/blogger", "/", "/other/blog"] {
        let r = envoy.get(outside, &[]);
        assert_eq!(r.status, 404, "{outside}");
        assert_eq!(r.header("x-wsgiproxy-error"), Some("outside_mount"));
        assert!(r.text().contains("/blog"), "{}", r.text());
    }
    assert_eq!(envoy.stat("wsgiproxy.app.rejected.outside_mount"), 3);

    // `..;` leaves the mount on Tomcat, Jetty and Spring, which read it as `..`;
    // Envoy's normalisation decodes `%2e` but keeps the segment.
    for escaping in ["/blog/%2e%2e;/admin", "/blog/.%2e;/admin", "/blog/%2e%2e;x/admin", "/blog/a/%2e;/%2e%2e;/admin"] {
        let r = envoy.get(escaping, &[]);
        assert_eq!(r.status, 400, "{escaping}: {}", r.text());
        assert_eq!(r.header("x-wsgiproxy-error"), Some("unsafe_path"), "{escaping}");
    }
    assert_eq!(envoy.stat("wsgiproxy.app.rejected.unsafe_path"), 4);
}

#[test]
fn root_href_keeps_the_path_and_adds_no_traversal() {
    let echo = Echo::start();
    let envoy = app_envoy(&echo, json!({"role": "app", "href": "https://secure.example"}));
    let got = envoy.get("/a/b?c=d", &[("Host", "front.example")]).received();
    assert_eq!(got.uri(), "/a/b?c=d");
    assert_eq!(got.header("host").as_deref(), Some("secure.example:443"));
    assert_eq!(got.header("x-forwarded-server").as_deref(), Some("front.example"));
    assert_eq!(got.header("x-traversal-path"), None);
    assert_eq!(got.header("x-script-name"), None);
}

#[test]
fn keys_from_envoy_properties() {
    let echo = Echo::start();
    let envoy = app_envoy(
        &echo,
        json!({"role": "app", "href": "http://b:80/",
               "string_keys": [{"key": "SERVER_PROTOCOL", "from_property": ["request", "protocol"]},
                               {"key": "SERVER_PORT", "from_property": ["destination", "port"]},
                               {"key": "MTLS", "from_property": ["connection", "mtls"]}]}),
    );
    let got = envoy.get("/", &[]).received();
    assert_eq!(got.header("x-wsgiproxy-str-0").as_deref(), Some("SERVER_PROTOCOL HTTP/1.1"));
    // Numbers and booleans as text, not Envoy's raw bytes.
    assert_eq!(got.header("x-wsgiproxy-str-1"), Some(format!("SERVER_PORT {}", envoy.port)));
    assert_eq!(got.header("x-wsgiproxy-str-2").as_deref(), Some("MTLS false"));
}

#[test]
fn signing_adds_date_and_signature() {
    let echo = Echo::start();
    let envoy = Envoy::start(
        "envoy/app.yaml",
        &Overrides::default().cluster("backend", echo.port).env("WSGIPROXY_KEY_K1", "an-example-key-of-enough-length"),
    );
    let first = envoy.get("/x", &[("Date", "Mon, 01 Jan 1990 00:00:00 GMT")]).received();
    let second = envoy.get("/x", &[]).received();
    let sig1 = first.header("x-wsgiproxy-signature").unwrap();
    let sig2 = second.header("x-wsgiproxy-signature").unwrap();
    let fields: Vec<&str> = sig1.split(' ').collect();
    assert_eq!(fields.len(), 3, "{sig1}");
    assert_eq!(fields[0], "k1");
    assert_eq!(fields[1].len(), 32);
    assert_eq!(fields[2].len(), 64, "hmac-sha256 is 32 bytes of hex");
    assert_ne!(sig1.split(' ').nth(1), sig2.split(' ').nth(1), "a fresh nonce per request");
    let date = first.header("date").unwrap();
    assert!(!date.contains("1990"), "the client's Date is replaced by the signing time: {date}");
    assert_eq!(envoy.stat("wsgiproxy.app.signed"), 2);
}

#[test]
fn bad_configurations_are_refused_at_load() {
    let cases = [
        (json!("not an object"), "must be a JSON object"),
        (json!({"role": "proxy"}), "field `role`: unknown role \"proxy\""),
        (json!({"role": "app", "href": "http://x/", "hreff": 1}), "unknown field `hreff`"),
        (json!({"role": "app", "href": "ftp://x/"}), "field `href`: scheme must be http or https"),
        (json!({"role": "app", "href": "http://x/", "script_name": "blog"}), "field `script_name`: must start with /"),
        (json!({"role": "app", "href": "http://x/", "string_keys": [{"key": "A"}]}), "field `string_keys[0]`: needs one source"),
        (
            json!({"role": "app", "href": "http://x/", "secret": {"keys": [{"id": "k", "env": "UNSET_VAR"}]}}),
            "field `secret.keys[0].env`: environment variable \"UNSET_VAR\" is not set",
        ),
    ];
    for (config, expected) in cases {
        let log = Envoy::start_refused("envoy/app.yaml", &Overrides::default().plugin(config.clone()));
        let line = log.lines().find(|l| l.contains("wsgiproxy: invalid configuration") || l.contains("wsgiproxy: "));
        assert!(log.contains(expected), "config {config} should be refused with {expected:?}; got {line:?}\n{log}");
    }
    // Not JSON at all: the StringValue holds plain text.
    let o = Overrides {
        edit: Some(|doc| {
            let filter = &mut hcm(doc)["http_filters"][0];
            filter["typed_config"]["config"]["configuration"]["value"] = serde_yaml::Value::String("role: app".into());
            // (The role before routing only: not the cluster's copy, which signs.)
            doc["static_resources"]["clusters"][0].as_mapping_mut().unwrap().remove("typed_extension_protocol_options");
        }),
        ..Overrides::default()
    };
    let log = Envoy::start_refused("envoy/app.yaml", &o);
    assert!(log.contains("not valid JSON"), "{log}");
}

#[test]
fn responses_are_rewritten_to_the_clients_view() {
    let echo = Echo::start();
    let envoy = app_envoy(&echo, json!({"role": "app", "href": "http://backend.internal:8080/myapp", "script_name": "/blog"}));
    let r =
        envoy.get("/blog/__redirect?to=http%3A%2F%2Fbackend.internal%3A8080%2Fmyapp%2Flogin%3Fnext%3D1", &[("Host", "www.example.com")]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://www.example.com/blog/login?next=1"));
    assert_eq!(r.header("content-location"), Some("http://www.example.com/blog/login?next=1"));
    let r = envoy.get("/blog/__redirect?to=%2Fmyapp%2Fdone", &[("Host", "www.example.com")]);
    assert_eq!(r.header("location"), Some("/blog/done"));
    let r = envoy.get("/blog/__redirect?to=https%3A%2F%2Felsewhere.example%2Fx", &[("Host", "www.example.com")]);
    assert_eq!(r.header("location"), Some("https://elsewhere.example/x"), "other servers are left alone");

    let r = envoy.get(
        "/blog/__cookie?c=sid%3D1%3B%20Path%3D%2Fmyapp%3B%20HttpOnly&c=other%3D2%3B%20Path%3D%2Fmyapp%2Fadmin&c=keep%3D3%3B%20Path%3D%2F",
        &[("Host", "www.example.com")],
    );
    let cookies: Vec<&str> = r.headers.iter().filter(|(n, _)| n == "set-cookie").map(|(_, v)| v.as_str()).collect();
    assert_eq!(cookies, ["sid=1; Path=/blog; HttpOnly", "other=2; Path=/blog/admin", "keep=3; Path=/"]);

    let off = app_envoy(
        &echo,
        json!({"role": "app", "href": "http://backend.internal:8080/myapp", "script_name": "/blog", "rewrite_response": false}),
    );
    let r = off.get("/blog/__redirect?to=%2Fmyapp%2Fdone", &[]);
    assert_eq!(r.header("location"), Some("/myapp/done"));

    // No href path: a backend that honours SCRIPT_NAME already answers under the mount
    // point, so paths stay as written; URLs naming the backend still change.
    let shallow = app_envoy(&echo, json!({"role": "app", "href": "http://backend.internal:8080/", "script_name": "/blog"}));
    let r = shallow.get("/blog/__redirect?to=%2Fblog%2Flogin", &[("Host", "www.example.com")]);
    assert_eq!(r.header("location"), Some("/blog/login"));
    let r = shallow.get("/blog/__cookie?c=sid%3D1%3B%20Path%3D%2Fblog", &[("Host", "www.example.com")]);
    assert_eq!(r.header("set-cookie"), Some("sid=1; Path=/blog"));
    let r = shallow.get("/blog/__redirect?to=http%3A%2F%2Fbackend.internal%3A8080%2Flogin", &[("Host", "www.example.com")]);
    assert_eq!(r.header("location"), Some("http://www.example.com/blog/login"));
}

#[test]
fn a_declared_scheme_is_sent_and_used_for_redirects() {
    // An operator whose TLS ends in front of this plaintext listener declares it.
    let echo = Echo::start();
    let envoy = app_envoy(&echo, json!({"role": "app", "href": "http://backend.internal:8080/myapp", "scheme": "https"}));
    let got = envoy.get("/x", &[("Host", "www.example.com")]).received();
    assert_eq!(got.header("x-forwarded-scheme").as_deref(), Some("https"));
    let r = envoy.get("/__redirect?to=http%3A%2F%2Fbackend.internal%3A8080%2Fmyapp%2Flogin", &[("Host", "www.example.com")]);
    assert_eq!(r.header("location"), Some("https://www.example.com/login"));
    // Undeclared, it is what the connection is.
    let plain = app_envoy(&echo, json!({"role": "app", "href": "http://backend.internal:8080/myapp"}));
    assert_eq!(plain.get("/x", &[]).received().header("x-forwarded-scheme").as_deref(), Some("http"));
}
