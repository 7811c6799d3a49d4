//! A receiver's `required_components`: a signature covering fewer is refused,
//! whatever it verifies (GHSA-x9cc-346q-g27m: a verifier that accepted a signature
//! covering nothing at all).

use super::*;
use crate::config::{parse, Config, ConfigError};

const NOW: u64 = 1_795_485_600;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
}

fn ring() -> KeyRing {
    KeyRing::new(Algorithm::HmacSha256, &[("k1".to_string(), b"0123456789abcdef".to_vec())]).unwrap()
}

fn message<'a>(f: &'a [(String, Vec<u8>)]) -> Message<'a> {
    Message { method: b"GET", https: false, authority: b"backend.internal:8080", target: b"/p?x=1", fields: f }
}

/// `f` with a valid HMAC signature covering exactly `covered`.
fn signed_covering(f: &[(String, Vec<u8>)], covered: &[&str], nonce: &str) -> Vec<(String, Vec<u8>)> {
    let names: Vec<String> = covered.iter().map(|c| format!("\"{c}\"")).collect();
    let member = format!(r#"({});created={NOW};keyid="k1";alg="hmac-sha256";nonce="{nonce}""#, names.join(" "));
    let list = match Parser::new(format!("{LABEL}={member}").as_bytes()).parse::<Dictionary>().unwrap().get(LABEL) {
        Some(ListEntry::InnerList(list)) => list.clone(),
        other => panic!("{other:?}"),
    };
    let base = signature_base(&message(f), &list).unwrap();
    let mac = ring().signing_key().unwrap().signature_of(base.as_bytes()).unwrap();
    let mut out = f.to_vec();
    out.push((SIGNATURE_INPUT.into(), format!("{LABEL}={member}").into_bytes()));
    out.push((SIGNATURE.into(), format!("{LABEL}=:{}:", base64::engine::general_purpose::STANDARD.encode(mac)).into_bytes()));
    out
}

fn check(f: &[(String, Vec<u8>)], required: &[&str]) -> Result<Verified, Rejection> {
    let required: Vec<String> = required.iter().map(|r| r.to_string()).collect();
    let skew = Duration::from_secs(300);
    verify_requiring(&ring(), &message(f), now(), skew, Duration::from_secs(2), crate::signature::is_signed_header, &required)
}

#[test]
fn a_signature_covering_fewer_than_required_is_refused_whatever_it_verifies() {
    let f = fields(&[("x-wsgiproxy-version", "0.1"), ("accept", "text/html")]);
    let usual = signed_covering(&f, &["@method", "@authority", "@path", "@query", "x-wsgiproxy-version"], "n1");
    // It verifies: nothing more is required by default.
    assert!(check(&usual, &[]).is_ok());
    // A derived component, a header present but uncovered, a protocol header absent
    // (and so uncovered): each required, each refused.
    for required in [&["@target-uri"][..], &["accept"], &["x-forwarded-for"], &["@method", "@scheme"]] {
        assert_eq!(check(&usual, required).err(), Some(Rejection::Bad), "{required:?}");
    }
    // Covering them, it passes.
    let fuller =
        signed_covering(&f, &["@method", "@authority", "@path", "@query", "@target-uri", "@scheme", "accept", "x-wsgiproxy-version"], "n2");
    assert!(check(&fuller, &["@target-uri", "accept", "@scheme"]).is_ok());
    // A required header must be there to be covered: covering an absent one fails the base.
    let with_xff = fields(&[("x-wsgiproxy-version", "0.1"), ("x-forwarded-for", "203.0.113.5")]);
    let xff = signed_covering(&with_xff, &["@method", "@authority", "@path", "@query", "x-forwarded-for", "x-wsgiproxy-version"], "n3");
    assert!(check(&xff, &["x-forwarded-for"]).is_ok());
    // The refusal comes before any key is used: a wrong MAC and a required component
    // missing give the same answer, and an unknown key too.
    let mut forged = usual.clone();
    forged.last_mut().unwrap().1 = format!("{LABEL}=:AAAA:").into_bytes();
    assert_eq!(check(&forged, &["@target-uri"]).err(), Some(Rejection::Bad));
}

/// GHSA-x9cc-346q-g27m: a valid signature over no component at all is refused,
/// with or without a configured requirement (the four derived components always are).
#[test]
fn an_empty_covered_list_is_refused() {
    let f = fields(&[]);
    let empty = signed_covering(&f, &[], "n-empty");
    assert_eq!(check(&empty, &[]).err(), Some(Rejection::Bad));
    assert_eq!(check(&empty, &["@authority"]).err(), Some(Rejection::Bad));
    let three = signed_covering(&f, &["@method", "@authority", "@path"], "n-three");
    assert_eq!(check(&three, &[]).err(), Some(Rejection::Bad), "@query is always required");
}

fn config(value: serde_json::Value) -> Result<Config, ConfigError> {
    parse(value.to_string().as_bytes(), &|_| None)
}

#[test]
fn required_components_are_checked_when_the_configuration_is_read() {
    let with = |required: serde_json::Value| {
        config(serde_json::json!({"role": "middleware", "signature_format": "rfc9421", "required_components": required,
                                  "secret": {"keys": [{"id": "k1", "value": "0123456789abcdef"}]}}))
    };
    let Ok(Config::Middleware(m)) = with(serde_json::json!(["@target-uri", "x-forwarded-for", "@target-uri", "content-digest"])) else {
        panic!()
    };
    assert_eq!(m.required_components, ["@target-uri", "x-forwarded-for", "content-digest"]);
    for (required, field, why) in [
        (serde_json::json!([]), "required_components", "at least one"),
        (serde_json::json!(["@query-param"]), "required_components[0]", "not a derived component"),
        (serde_json::json!(["@method", "@status"]), "required_components[1]", "not a derived component"),
        (serde_json::json!(["X-Forwarded-For"]), "required_components[0]", "lowercase"),
        (serde_json::json!([""]), "required_components[0]", "not a component"),
    ] {
        let e = with(required.clone()).unwrap_err();
        assert!(e.field == field && e.message.contains(why), "{required}: {e:?}");
    }
    // v1 signatures cover a fixed set; without a secret nothing is verified.
    for c in [
        serde_json::json!({"role": "middleware", "required_components": ["@authority"], "secret": {"keys": [{"id": "k1", "value": "0123456789abcdef"}]}}),
        serde_json::json!({"role": "middleware", "signature_format": "rfc9421", "required_components": ["@authority"], "trust_ips": ["10.0.0.0/8"]}),
    ] {
        assert_eq!(config(c).unwrap_err().field, "required_components");
    }
}

/// The app role covers the extra derived components it is told to, so a receiver
/// requiring them accepts this project's own sender.
#[test]
fn the_app_role_covers_what_a_receiver_requires() {
    use crate::app::{self, AppOutcome, AppRequest};
    use crate::request::{Decision, RequestHead};
    let sign = |covered: Option<serde_json::Value>| -> RequestHead {
        let mut json = serde_json::json!({"role": "app", "href": "http://backend.internal:8080/", "signature_format": "rfc9421",
                                          "secret": {"keys": [{"id": "k1", "value": "0123456789abcdef"}]}});
        if let Some(covered) = covered {
            json["covered_components"] = covered;
        }
        let Ok(Config::App(a)) = config(json) else { panic!() };
        let client = RequestHead::new(fields(&[(":method", "GET"), (":path", "/p?x=1"), (":authority", "www.example.com")]));
        let req = AppRequest {
            head: &client,
            downstream: crate::trust::Downstream { tcp_peer: "203.0.113.9".parse().ok(), ..Default::default() },
            https: false,
            now: now(),
            nonce: [7; 16],
        };
        let Decision::Forward(e) = app::decide(&a, &req, &mut |_| None, &mut AppOutcome::default()) else { panic!() };
        let mut head: Vec<(String, Vec<u8>)> =
            client.to_pairs().into_iter().filter(|(n, _)| !e.remove.iter().any(|r| r == n) && e.value_of(n).is_none()).collect();
        head.extend(e.set.into_iter().map(|(n, v)| (n.into_owned(), v.into_owned())));
        RequestHead::new(head)
    };
    let received = |head: &RequestHead, required: &[&str]| {
        let message = Message {
            method: head.get(":method").unwrap_or_default(),
            https: false,
            authority: head.get(":authority").unwrap_or_default(),
            target: head.get(":path").unwrap_or_default(),
            fields: head,
        };
        let required: Vec<String> = required.iter().map(|r| r.to_string()).collect();
        let skew = Duration::from_secs(300);
        let ring = KeyRing::new(Algorithm::HmacSha256, &[("k1".to_string(), b"0123456789abcdef".to_vec())]).unwrap();
        verify_requiring(&ring, &message, now(), skew, skew, crate::signature::is_signed_header, &required)
    };
    let plain = sign(None);
    assert!(received(&plain, &[]).is_ok());
    assert!(received(&plain, &["x-forwarded-for", "x-wsgiproxy-version"]).is_ok(), "the protocol headers it always sends");
    assert_eq!(received(&plain, &["@target-uri"]).err(), Some(Rejection::Bad));
    let fuller = sign(Some(serde_json::json!(["@target-uri", "@scheme"])));
    let input = String::from_utf8_lossy(fuller.get(SIGNATURE_INPUT).unwrap()).into_owned();
    assert!(input.contains("\"@scheme\" \"@target-uri\""), "{input}");
    assert!(received(&fuller, &["@target-uri", "@scheme", "x-forwarded-for"]).is_ok());
    // Only the derived components beyond the four, with RFC 9421.
    for (covered, field) in [
        (serde_json::json!(["@method"]), "covered_components[0]"),
        (serde_json::json!(["x-forwarded-for"]), "covered_components[0]"),
        (serde_json::json!([]), "covered_components"),
    ] {
        let json = serde_json::json!({"role": "app", "href": "http://b/", "signature_format": "rfc9421", "covered_components": covered,
                                      "secret": {"keys": [{"id": "k1", "value": "0123456789abcdef"}]}});
        assert_eq!(config(json).unwrap_err().field, field);
    }
    let v1 = serde_json::json!({"role": "app", "href": "http://b/", "covered_components": ["@target-uri"],
                                "secret": {"keys": [{"id": "k1", "value": "0123456789abcdef"}]}});
    assert_eq!(config(v1).unwrap_err().field, "covered_components");
}
