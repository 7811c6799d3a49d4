//! `required_components` in real Envoy: a receiver requiring components refuses a
//! signature that verifies but covers fewer (403 `signature_bad`), and accepts one
//! covering them. Signed by PyPI's http-message-signatures, a sender other than ours.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;

const KEY_K1: &str = "first-shared-key-0123456789";

/// Signs each entry with the library (tests/apps/rfc9421_sign.py); returns the
/// entry's headers with Signature-Input and Signature added.
fn library_signed(entries: &[Value]) -> Vec<Vec<(String, String)>> {
    entries
        .iter()
        .zip(library_signatures(entries))
        .map(|(e, (input, signature))| {
            let mut headers: Vec<(String, String)> = e["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
                .collect();
            headers.push(("Signature-Input".into(), input));
            headers.push(("Signature".into(), signature));
            headers
        })
        .collect()
}

fn send(port: u16, headers: &[(String, String)]) -> Response {
    let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    request(port, "GET", "/p?x=1", &refs, b"")
}

#[test]
fn a_signature_that_verifies_but_covers_fewer_than_required_is_refused() {
    let echo = Echo::start();
    let required = json!({"role": "middleware", "signature_format": "rfc9421", "on_untrusted": "reject",
                          "secret": {"keys": [{"id": "k1", "value": KEY_K1}]}, "keys": {"REMOTE_USER": "x-remote-user"},
                          "required_components": ["@target-uri", "x-forwarded-for"]});
    let mw = Envoy::start("envoy/middleware.yaml", &Overrides::default().cluster("app", echo.port).plugin(required));
    // The same receiver without the requirement, for the control.
    let mut plain_config = json!({"role": "middleware", "signature_format": "rfc9421", "on_untrusted": "reject",
                                  "secret": {"keys": [{"id": "k1", "value": KEY_K1}]}, "keys": {"REMOTE_USER": "x-remote-user"}});
    let plain = Envoy::start("envoy/middleware.yaml", &Overrides::default().cluster("app", echo.port).plugin(plain_config.take()));

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let base = ["@method", "@authority", "@path", "@query", "x-wsgiproxy-version", "x-wsgiproxy-str-0"];
    let entry = |nonce: &str, with_xff: bool, extra: &[&str]| {
        let mut headers = vec![json!(["x-wsgiproxy-version", "0.1"]), json!(["x-wsgiproxy-str-0", "REMOTE_USER alice"])];
        let mut covered: Vec<&str> = base.to_vec();
        if with_xff {
            headers.push(json!(["x-forwarded-for", "203.0.113.5"]));
            covered.push("x-forwarded-for");
        }
        covered.extend_from_slice(extra);
        json!({"key_id": "k1", "key": KEY_K1, "method": "GET", "url": "http://test.local/p?x=1", "headers": headers,
               "covered": covered, "created": now, "nonce": nonce, "label": "wsgiproxy"})
    };
    let signed = library_signed(&[
        // Verifies everywhere, covers neither required component (X-Forwarded-For absent).
        entry("n-fewer", false, &[]),
        // Covers X-Forwarded-For, not @target-uri.
        entry("n-no-target-uri", true, &[]),
        // Covers @target-uri; X-Forwarded-For absent and so not covered.
        entry("n-no-xff", false, &["@target-uri"]),
        // Covers both.
        entry("n-all", true, &["@target-uri"]),
        entry("n-control", false, &[]),
    ]);
    for (i, what) in [(0, "neither"), (1, "no @target-uri"), (2, "no x-forwarded-for")] {
        let r = send(mw.port, &signed[i]);
        assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_bad")), "{what}: {}", r.text());
    }
    let got = send(mw.port, &signed[3]).received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("203.0.113.5"));
    assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 1);
    assert_eq!(mw.stat("wsgiproxy.middleware.rejected.signature_bad"), 3);
    // Without the requirement, the signature covering fewer verifies: it was refused for what it left out.
    let got = send(plain.port, &signed[4]).received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"));
}

#[test]
fn required_components_are_refused_at_load_when_they_cannot_apply() {
    for (config, field) in [
        (
            json!({"role": "middleware", "signature_format": "rfc9421", "secret": {"keys": [{"id": "k1", "value": KEY_K1}]},
                "required_components": ["@query-param"]}),
            "required_components[0]",
        ),
        (
            json!({"role": "middleware", "secret": {"keys": [{"id": "k1", "value": KEY_K1}]},
                "required_components": ["@authority"]}),
            "required_components",
        ),
    ] {
        let log = Envoy::start_refused("envoy/middleware.yaml", &Overrides::default().plugin(config));
        assert!(log.contains(&format!("field `{field}`")), "{log}");
    }
}

/// This project's sender, told to cover `@target-uri` (`covered_components`), meets a
/// receiver requiring it; without it, it is refused.
#[test]
fn the_app_role_covers_what_the_middleware_requires() {
    let echo = Echo::start();
    let mw = Envoy::start(
        "envoy/middleware.yaml",
        &Overrides::default().cluster("app", echo.port).plugin(json!({
            "role": "middleware", "signature_format": "rfc9421", "on_untrusted": "reject",
            "secret": {"keys": [{"id": "k1", "value": KEY_K1}]}, "keys": {"REMOTE_USER": "x-remote-user"},
            "required_components": ["@target-uri", "x-forwarded-for"]})),
    );
    let app = |covered: Option<Value>| {
        let mut config = json!({"role": "app", "href": "http://internal:9000/apps/blog", "script_name": "/blog",
                                "signature_format": "rfc9421", "secret": {"keys": [{"id": "k1", "value": KEY_K1}]},
                                "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}]});
        if let Some(covered) = covered {
            config["covered_components"] = covered;
        }
        Envoy::start("envoy/app.yaml", &Overrides::default().cluster("backend", mw.port).plugin(config))
    };
    let covering = app(Some(json!(["@target-uri"])));
    let got = covering.get("/blog/posts/7?page=2", &[("X-Auth-User", "bob")]).received();
    assert_eq!(got.uri(), "/posts/7?page=2");
    assert_eq!(got.header("x-remote-user").as_deref(), Some("bob"));
    let plain = app(None);
    let r = plain.get("/blog/posts/7?page=2", &[("X-Auth-User", "bob")]);
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (403, Some("signature_bad")), "{}", r.text());
    assert_eq!(mw.stat("wsgiproxy.middleware.verified"), 1);
}
