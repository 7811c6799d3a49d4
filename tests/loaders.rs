//! One protocol, two loaders: the same requests through the Wasm filter and through
//! the native module, with the same configuration, give the backend the same bytes
//! (method, target, every header and its order) and the client the same refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;

const KEY: &str = "loaders-shared-key-0123456789";

/// Headers that differ between any two requests whatever the filter does.
const VOLATILE: [&str; 2] = ["x-request-id", "x-envoy-expected-rq-timeout-ms"];

/// What the client saw: status, and for a refusal its reason and body; for a
/// forwarded request, what the echo backend received.
fn outcome(r: &Response, also_volatile: &[&str]) -> Value {
    if r.status != 200 {
        return json!({"status": r.status, "reason": r.header("x-wsgiproxy-error"), "body": r.text()});
    }
    let got = r.received().0;
    let headers: Vec<&Value> = got["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            let name = h[0].as_str().unwrap();
            !VOLATILE.contains(&name) && !also_volatile.contains(&name)
        })
        .collect();
    json!({"method": got["method"], "uri": got["uri"], "headers": headers, "body": got["body"]})
}

/// A pair of Envoys running one shipped config with one plugin configuration, one per loader.
fn both(file: &str, cluster: &str, port: u16, config: &Value) -> [Envoy; 2] {
    [Loader::Wasm, Loader::Native]
        .map(|loader| Envoy::start(file, &Overrides::default().cluster(cluster, port).plugin(config.clone()).loader(loader)))
}

fn assert_same(what: &str, wasm: &Value, native: &Value) {
    assert_eq!(wasm, native, "{what}: the Wasm filter (left) and the native module (right) differ");
}

const CLIENT_HEADERS: [(&str, &str); 8] = [
    ("X-User", "alice"),
    ("X-Roles", "[\"reader\"]"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Script-Name", "/evil"),
    ("X-WSGIProxy-Str-0", "REMOTE_USER root"),
    ("X-Forwarded-Server", "evil.example"),
    ("Forwarded", "for=6.6.6.6"),
    ("Host", "www.example.com:8443"),
];

#[test]
fn the_app_role_sends_the_same_bytes_from_both_loaders() {
    let echo = Echo::start();
    let config = json!({"role": "app", "href": "http://backend.internal:8080/myapp?v=2", "script_name": "/blog",
        "string_keys": [{"key": "REMOTE_USER", "from_header": "x-user"}, {"key": "PROTO", "from_property": ["request", "protocol"]},
                        {"key": "MTLS", "from_property": ["connection", "mtls"]}],
        "unicode_keys": [{"key": "name", "value": "Jos\u{e9}"}],
        "json_keys": [{"key": "roles", "from_header": "x-roles"}, {"key": "bad", "from_header": "x-user"}]});
    let [wasm, native] = both("envoy/app.yaml", "backend", echo.port, &config);
    let requests: [(&str, &str); 7] = [
        ("GET", "/blog/article/1?x=1&y=%20"),
        ("POST", "/blog/"),
        ("GET", "/blog"),
        ("GET", "/elsewhere"),
        ("GET", "/blog/a/%2e%2e/b"),
        ("GET", "/blog/__redirect?to=%2Fmyapp%2Flogin"),
        ("DELETE", "/blog/x;y"),
    ];
    let mut forwarded = 0;
    for (method, target) in requests {
        let [a, b] = [&wasm, &native].map(|e| request(e.port, method, target, &CLIENT_HEADERS, b"body"));
        forwarded += usize::from(a.status == 200);
        assert_same(&format!("{method} {target}"), &outcome(&a, &[]), &outcome(&b, &[]));
        assert_eq!(a.header("location"), b.header("location"), "{method} {target}: Location");
    }
    assert!(forwarded >= 3 && forwarded < requests.len(), "both forwarded and refused requests are compared");
    // Signed: the same headers, and the same values but for the Date and the
    // signature (a fresh nonce and time on every request).
    let config = json!({"role": "app", "href": "http://backend.internal:8080/", "secret": {"keys": [{"id": "k1", "value": KEY}]},
        "algorithm": "hmac-sha256", "string_keys": [{"key": "REMOTE_USER", "from_header": "x-user"}]});
    let [wasm, native] = both("envoy/app.yaml", "backend", echo.port, &config);
    let [a, b] = [&wasm, &native].map(|e| request(e.port, "GET", "/signed?q=1", &CLIENT_HEADERS, b""));
    let signed = ["date", "x-wsgiproxy-signature"];
    assert_same("signed request", &outcome(&a, &signed), &outcome(&b, &signed));
    for r in [&a, &b] {
        assert_eq!(r.received().names().iter().filter(|n| signed.contains(&n.as_str())).count(), 2);
    }
}

#[test]
fn the_middleware_role_delivers_the_same_bytes_from_both_loaders() {
    let echo = Echo::start();
    // Signed requests made once by a sending Envoy, then sent to each receiver:
    // each receiving Envoy has its own replay memory, so each sees every nonce once.
    let secret = json!({"keys": [{"id": "k1", "value": KEY}]});
    let sender = Envoy::start(
        "envoy/app.yaml",
        &Overrides::default().cluster("backend", echo.port).loader(Loader::Wasm).plugin(json!({"role": "app",
            "href": "http://internal:9000/app", "script_name": "/shop", "secret": secret,
            "string_keys": [{"key": "REMOTE_USER", "from_header": "x-user"}], "json_keys": [{"key": "roles", "from_header": "x-roles"}],
            "pickle_keys": [{"key": "blob", "value": "opaque"}]})),
    );
    let capture = |target: &str| -> Vec<(String, String)> {
        sender.get(target, &CLIENT_HEADERS).received().0["headers"]
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
    let config = json!({"role": "middleware", "secret": secret, "keys": {"REMOTE_USER": "x-remote-user", "roles": "x-roles"},
        "on_untrusted": "reject"});
    // Receivers first: a replay memory refuses what was signed before it began.
    let [wasm, native] = both("envoy/middleware.yaml", "app", echo.port, &config);
    let signed = [capture("/shop/cart?item=1"), capture("/shop/"), capture("/shop/pay")];
    let send = |e: &Envoy, target: &str, headers: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        request(e.port, "GET", target, &refs, b"")
    };
    for (h, target) in signed.iter().zip(["/app/cart?item=1", "/app/", "/app/pay"]) {
        let [a, b] = [&wasm, &native].map(|e| send(e, target, h));
        assert_eq!(a.status, 200, "{}", a.text());
        assert_same(target, &outcome(&a, &[]), &outcome(&b, &[]));
        // And a replay is refused by both.
        let [a, b] = [&wasm, &native].map(|e| send(e, target, h));
        assert_same(&format!("replayed {target}"), &outcome(&a, &[]), &outcome(&b, &[]));
        assert_eq!(a.header("x-wsgiproxy-error"), Some("signature_replayed"));
    }
    // Unsigned, tampered and malformed: the same refusals.
    let mut tampered = signed[0].clone();
    for (n, v) in tampered.iter_mut() {
        if n == "x-wsgiproxy-str-0" {
            *v = "REMOTE_USER root".into();
        }
    }
    let unsigned: Vec<(String, String)> = CLIENT_HEADERS.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    for (what, h) in [("tampered", &tampered), ("unsigned", &unsigned)] {
        let [a, b] = [&wasm, &native].map(|e| send(e, "/app/cart?item=1", h));
        assert!(a.status >= 400, "{what}: {}", a.status);
        assert_same(what, &outcome(&a, &[]), &outcome(&b, &[]));
    }

    // Trusted by address, with every forgery a client could try, and malformed values.
    let config = json!({"role": "middleware", "trust_ips": ["127.0.0.0/8"], "keys": {"REMOTE_USER": "x-remote-user"},
        "pop_prefix": "/app"});
    let [wasm, native] = both("envoy/middleware.yaml", "app", echo.port, &config);
    let cases: [&[(&str, &str)]; 6] = [
        &CLIENT_HEADERS,
        &[
            ("X-Forwarded-Server", "shop.example:443"),
            ("X-Forwarded-Scheme", "https"),
            ("X-Script-Name", "/shop"),
            ("X-WSGIProxy-Str-0", "REMOTE_USER bob"),
            ("X-WSGIProxy-Str-1", "OTHER x"),
            ("X-Remote-User", "root"),
        ],
        &[("X-Forwarded-For", "not-an-ip")],
        &[("X-WSGIProxy-Str-0", "REMOTE_USER b64!!!")],
        &[("X-Script-Name", "/a"), ("X-Forwarded-Script-Name", "/b")],
        &[("X-WSGIProxy-Unicode-0", "REMOTE_USER b64AA==")],
    ];
    for (i, h) in cases.iter().enumerate() {
        for target in ["/app/x?y=1", "/other"] {
            let [a, b] = [&wasm, &native].map(|e| e.get(target, h));
            assert_same(&format!("case {i} {target}"), &outcome(&a, &[]), &outcome(&b, &[]));
        }
    }
}

#[test]
fn the_shipped_native_configs_chain_like_the_wasm_ones() {
    let echo = Echo::start();
    let key = ("WSGIPROXY_KEY_K1", "shipped-native-key-0123456789");
    let native = Overrides::default().loader(Loader::Native).env(key.0, key.1);
    let mw = Envoy::start("envoy/native-middleware.yaml", &native.clone().cluster("app", echo.port));
    let edge = Envoy::start("envoy/native-app.yaml", &native.clone().cluster("backend", mw.port));
    let got = edge.get("/hello?x=1", &[("X-Demo-User", "alice"), ("X-Remote-User", "root"), ("Host", "shop.example")]).received();
    assert_eq!(got.uri(), "/hello?x=1");
    assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"));
    assert_eq!(got.header("x-roles").as_deref(), Some("[\"reader\"]"));
    assert_eq!(got.header("host").as_deref(), Some("shop.example"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 1);
    // A request straight to the receiver, unsigned: nothing it claims is believed.
    let got = mw.get("/direct", &[("X-WSGIProxy-Str-0", "REMOTE_USER root"), ("X-Remote-User", "root")]).received();
    assert_eq!(got.header("x-remote-user"), None);
}

#[test]
fn the_exact_role_passes_the_same_bytes_from_both_loaders_and_the_shipped_native_config() {
    let echo = Echo::start();
    let allowed = format!("127.0.0.1:{}", echo.port);
    let config = json!({"role": "exact", "allow_hosts": [allowed]});
    let [wasm, native] = [Loader::Wasm, Loader::Native]
        .map(|loader| Envoy::start("envoy/exact.yaml", &Overrides::default().plugin(config.clone()).loader(loader)));
    let shipped = Envoy::start("envoy/native-exact.yaml", &Overrides::default().plugin(config.clone()).loader(Loader::Native));
    for host in [allowed.as_str(), "127.0.0.2:1", "evil.example"] {
        let headers = [("Host", host), ("X-Forwarded-For", "6.6.6.6"), ("X-Custom", "a")];
        let [a, b, c] = [&wasm, &native, &shipped].map(|e| request(e.port, "PATCH", "/p;q?r=%2F", &headers, b"body"));
        assert_eq!(a.status == 200, host == allowed, "{host}: {}", a.text());
        assert_same(host, &outcome(&a, &[]), &outcome(&b, &[]));
        assert_same(host, &outcome(&a, &[]), &outcome(&c, &[]));
    }
}

#[test]
fn the_shipped_native_spawn_config_starts_an_app_and_reports_then_envoy_exits_cleanly() {
    let config = "[apps.blog]\ncommand = [\"ECHO\", \"--port\", \"__PORT__\", \"--name\", \"blog\", \"--ready-delay-ms\", \"300\"]\n";
    let sidecar = Sidecar::start(config, 1500);
    let mut envoy =
        Envoy::start("envoy/native-spawn.yaml", &Overrides::default().cluster("wsgiproxy_sidecar", sidecar.port).loader(Loader::Native));
    let first = envoy.get("/hello", &[]);
    assert!(first.header("x-wsgiproxy-cold-start-ms").is_some(), "a cold start says so");
    let got = first.received();
    assert_eq!(got.0["name"], "blog");
    assert_eq!(got.header("host").as_deref(), Some("blog.internal:80"), "the app role ran after the spawn role");
    // Reports from the module's timer keep the lease: later requests go straight on.
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(envoy.get("/again", &[]).received().0["name"], "blog");
    }
    assert!(envoy.stat("wsgiproxy.spawn.reports") >= 1);
    assert!(envoy.stat("wsgiproxy.spawn.lease_hits") >= 1);
    assert_eq!(sidecar.metric("wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), 1);
    // The timer thread stops with the configuration: Envoy exits cleanly.
    let _ = request(envoy.admin_port, "POST", "/quitquitquit", &[], b"");
    let status = envoy.proc.child.wait().unwrap();
    assert!(status.success(), "envoy exited with {status}:\n{}", envoy.proc.log_text());
}

#[test]
fn the_shipped_native_spawn_config_carries_bursts_to_a_small_backlog_server() {
    // The shipped config spawns app "blog": here it is Python's http.server.
    let sidecar = Sidecar::start(&small_backlog_app("blog"), 1500);
    let envoy =
        Envoy::start("envoy/native-spawn.yaml", &Overrides::default().cluster("wsgiproxy_sidecar", sidecar.port).loader(Loader::Native));
    bursts_reach_it(&envoy, &sidecar, "blog");
}

/// The names in `nm -D` output of `file`, defined (`T`) or undefined (`U`) as asked.
fn dynamic_symbols(file: &std::path::Path, defined: bool) -> std::collections::BTreeSet<String> {
    let out = std::process::Command::new("nm")
        .arg("-D")
        .arg(if defined { "--defined-only" } else { "--undefined-only" })
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "nm {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().last()).map(str::to_string).collect()
}

/// The module against the real Envoy binary of this run: every callback it calls is one
/// Envoy exports, and every HTTP filter hook Envoy looks up is one the module exports,
/// but for the optional hooks of features it does not use (per-route configuration,
/// stream callouts from a configuration).
#[test]
fn the_native_module_and_envoy_agree_on_every_symbol() {
    let module = native_module_dir().join("libwsgiproxy.so");
    let envoy = std::fs::canonicalize(envoy_bin()).unwrap();
    let exported_by_envoy = dynamic_symbols(&envoy, true);
    let called = dynamic_symbols(&module, false);
    let callbacks: Vec<_> = called.iter().filter(|s| s.starts_with("envoy_dynamic_module_callback_")).collect();
    assert!(callbacks.len() > 10, "{callbacks:?}");
    for callback in callbacks {
        assert!(exported_by_envoy.contains(callback), "Envoy does not export {callback}");
    }
    // The hook names Envoy looks up are strings in its binary.
    let binary = std::fs::read(&envoy).unwrap();
    let prefix = b"envoy_dynamic_module_on_http_filter";
    let mut looked_up = std::collections::BTreeSet::new();
    let mut at = 0;
    while let Some(found) = binary[at..].windows(prefix.len()).position(|w| w == prefix) {
        let start = at + found;
        let end = start + binary[start..].iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).unwrap();
        looked_up.insert(String::from_utf8_lossy(&binary[start..end]).into_owned());
        at = end;
    }
    assert!(looked_up.contains("envoy_dynamic_module_on_http_filter_request_headers"), "{looked_up:?}");
    let exported = dynamic_symbols(&module, true);
    let optional = ["_per_route_config_", "_config_http_stream_"];
    for hook in &looked_up {
        if !optional.iter().any(|o| hook.contains(o)) {
            assert!(exported.contains(hook), "Envoy looks up {hook}, which the module does not export");
        }
    }
}
