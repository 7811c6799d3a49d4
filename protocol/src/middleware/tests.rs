use super::*;
use crate::app::{self, AppOutcome, AppRequest};
use crate::config::{parse, Config};
use crate::reason::Reason;
use std::collections::HashSet;
use std::time::Duration;

struct Memory(HashSet<Nonce>);

impl NonceMemory for Memory {
    fn remember(&mut self, nonce: &Nonce, _signed_at: u64, _now: u64) -> Result<Verdict, String> {
        Ok(if self.0.insert(*nonce) { Verdict::Fresh } else { Verdict::Replayed })
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_485_600)
}

fn mw(json: &str) -> MiddlewareConfig {
    match parse(json.as_bytes(), &|_| None).unwrap() {
        Config::Middleware(m) => m,
        _ => panic!(),
    }
}

fn head(pairs: &[(&str, &str)]) -> RequestHead {
    RequestHead::new(pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect())
}

fn run_at(c: &MiddlewareConfig, h: &RequestHead, peer: &str, at: SystemTime, mem: &mut Memory) -> Decision<'static> {
    let req = MiddlewareRequest { head: h, downstream: peer_at(peer), https: false, now: at, local_address: None };
    decide(c, &req, mem, &mut MiddlewareOutcome::default()).into_owned()
}

/// A connection whose TCP peer (recorded by the network filter) is `peer`.
fn peer_at(peer: &str) -> Downstream {
    Downstream { tcp_peer: Some(peer.parse().unwrap()), ..Default::default() }
}

fn run(c: &MiddlewareConfig, h: &RequestHead, peer: &str) -> Decision<'static> {
    run_at(c, h, peer, now(), &mut Memory(HashSet::new()))
}

fn forward(d: Decision) -> Edits {
    match d {
        Decision::Forward(e) => e,
        Decision::Reply(r) => panic!("replied {r:?}"),
    }
}

fn reply(d: Decision) -> LocalReply {
    match d {
        Decision::Reply(r) => r,
        Decision::Forward(e) => panic!("forwarded {e:?}"),
    }
}

fn text(e: &Edits, name: &str) -> Option<String> {
    e.value_of(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

const TRUSTING: &str =
    r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"keys":{"REMOTE_USER":"x-remote-user","roles":"x-roles","name":"x-name"}}"#;

fn sent_by_app() -> RequestHead {
    head(&[
        (":method", "GET"),
        (":path", "/myapp/article/1?x=1&some=q"),
        (":authority", "backend:8080"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-server", "www.example.com:8000"),
        ("x-forwarded-scheme", "https"),
        ("x-script-name", "/blog"),
        ("x-traversal-path", "/myapp"),
        ("x-traversal-query-string", "some=q"),
        ("x-wsgiproxy-version", "0.1"),
        ("x-wsgiproxy-str-0", "REMOTE_USER bob"),
        ("x-wsgiproxy-json-0", "roles [\"admin\"]"),
        ("x-wsgiproxy-unicode-0", "name b64Sm9zw6k="),
        ("x-wsgiproxy-str-1", "SECRET_THING x"),
        ("x-remote-user", "root"),
    ])
}

#[test]
fn trusted_peer_headers_are_decoded() {
    let e = forward(run(&mw(TRUSTING), &sent_by_app(), "10.1.2.3"));
    assert_eq!(text(&e, ":path").as_deref(), Some("/article/1?x=1&some=q"));
    assert_eq!(text(&e, ":authority").as_deref(), Some("www.example.com:8000"));
    assert_eq!(text(&e, "x-forwarded-host").as_deref(), Some("www.example.com:8000"));
    assert_eq!(text(&e, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(text(&e, "x-forwarded-for").as_deref(), Some("203.0.113.7"));
    assert_eq!(text(&e, "x-forwarded-prefix").as_deref(), Some("/blog"));
    assert_eq!(text(&e, "x-remote-user").as_deref(), Some("bob"));
    assert_eq!(text(&e, "x-roles").as_deref(), Some("[\"admin\"]"));
    assert_eq!(e.value_of("x-name"), Some("Jos\u{e9}".as_bytes()));
    for gone in ["x-forwarded-server", "x-forwarded-scheme", "x-script-name", "x-traversal-path", "x-wsgiproxy-str-1"] {
        assert!(e.remove.iter().any(|r| r == gone), "{gone} not removed");
    }
    assert!(e.set.iter().all(|(n, _)| n != "x-wsgiproxy-str-1"));
}

#[test]
fn untrusted_peer_headers_are_stripped() {
    let e = forward(run(&mw(TRUSTING), &sent_by_app(), "192.0.2.1"));
    assert_eq!(text(&e, ":path"), None, "path untouched");
    assert_eq!(text(&e, ":authority"), None);
    assert_eq!(text(&e, "x-forwarded-for").as_deref(), Some("192.0.2.1"));
    assert_eq!(text(&e, "x-forwarded-host").as_deref(), Some("backend:8080"));
    assert_eq!(text(&e, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(text(&e, "x-forwarded-prefix"), None);
    assert_eq!(text(&e, "x-remote-user"), None);
    assert!(e.remove.iter().any(|r| r == "x-remote-user"));
    assert!(e.remove.iter().any(|r| r == "x-wsgiproxy-str-0"));

    let reject = mw(r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"on_untrusted":"reject"}"#);
    assert_eq!(reply(run(&reject, &sent_by_app(), "192.0.2.1")).status, 403);
}

#[test]
fn competing_headers_and_underscore_spellings_are_stripped_for_everyone() {
    let mut h = sent_by_app();
    for (n, v) in [
        ("forwarded", "for=6.6.6.6;proto=https;host=evil"),
        ("x-forwarded-port", "8443"),
        ("x-real-ip", "6.6.6.6"),
        ("x_remote_user", "root"),
        ("x_forwarded_host", "evil"),
        ("x_wsgiproxy_str_9", "REMOTE_USER root"),
        ("x_custom", "kept"),
    ] {
        h.headers_mut().push((n.to_string(), v.as_bytes().to_vec()));
    }
    for peer in ["10.1.2.3", "192.0.2.1"] {
        let mut outcome = MiddlewareOutcome::default();
        let req = MiddlewareRequest { head: &h, downstream: peer_at(peer), https: false, now: now(), local_address: None };
        let e = forward(decide(&mw(TRUSTING), &req, &mut Memory(HashSet::new()), &mut outcome).into_owned());
        for gone in ["forwarded", "x-forwarded-port", "x-real-ip", "x_remote_user", "x_forwarded_host", "x_wsgiproxy_str_9"] {
            assert!(e.remove.iter().any(|r| r == gone), "{peer}: {gone} not removed");
        }
        assert!(!e.remove.iter().any(|r| r == "x_custom"));
        if peer == "10.1.2.3" {
            assert_eq!(text(&e, "x-remote-user").as_deref(), Some("bob"));
            // The six stripped; x-remote-user is a delivered header, replaced by the decoded value.
            assert_eq!(outcome.stripped, 6, "{peer}");
        }
    }
}

#[test]
fn an_unsigned_request_is_counted_even_when_stripped() {
    let c = mw(r#"{"role":"middleware","secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#);
    let mut outcome = MiddlewareOutcome::default();
    let h = sent_by_app();
    let req = MiddlewareRequest { head: &h, downstream: peer_at("10.1.2.3"), https: false, now: now(), local_address: None };
    forward(decide(&c, &req, &mut Memory(HashSet::new()), &mut outcome));
    assert!(outcome.unsigned && !outcome.trusted);
}

#[test]
fn the_originals_quirks_are_accepted() {
    let h = head(&[(":path", "/myapp/x"), (":authority", "b"), ("x-forwarded-script-name", "/blog"), ("x-traversal-path", "myapp")]);
    let e = forward(run(&mw(TRUSTING), &h, "10.0.0.1"));
    assert_eq!(text(&e, ":path").as_deref(), Some("/x"));
    assert_eq!(text(&e, "x-forwarded-prefix").as_deref(), Some("/blog"));
}

#[test]
fn bad_input_is_a_400_never_half_applied() {
    let c = mw(TRUSTING);
    let cases: &[(&[(&str, &str)], Reason)] = &[
        (&[("x-traversal-path", "/other")], Reason::OutsideTraversalPath),
        (&[("x-traversal-path", "/my")], Reason::OutsideTraversalPath),
        (&[("x-forwarded-for", "1.2.3.4, 5.6.7.8")], Reason::BadForwardedFor),
        (&[("x-forwarded-server", "user@evil.com")], Reason::BadForwardedServer),
        (&[("x-forwarded-server", "a.com/path")], Reason::BadForwardedServer),
        (&[("x-forwarded-server", "a.com,b.com")], Reason::BadForwardedServer),
        (&[("x-forwarded-scheme", "javascript")], Reason::BadForwardedScheme),
        (&[("x-script-name", "blog")], Reason::BadScriptName),
        (&[("x-script-name", "/a/../b")], Reason::BadScriptName),
        (&[("x-script-name", "/a"), ("x-forwarded-script-name", "/b")], Reason::ConflictingScriptName),
        (&[("x-wsgiproxy-version", "9")], Reason::UnsupportedVersion),
        (&[("x-wsgiproxy-str-01", "REMOTE_USER a")], Reason::BadPayloadIndex),
        (&[("x-wsgiproxy-str-0", "REMOTE_USER b64***")], Reason::UndecodablePayload),
        (&[("x-wsgiproxy-unicode-0", "name b64/w==")], Reason::UndecodablePayload),
        (&[("x-wsgiproxy-json-0", "roles {")], Reason::UndecodablePayload),
        (&[("x-wsgiproxy-str-0", "REMOTE_USER b64YQpi")], Reason::UndeliverableValue),
        (&[("x-wsgiproxy-str-0", "REMOTE_USER a"), ("x-wsgiproxy-str-1", "REMOTE_USER b")], Reason::DuplicateKey),
        (&[("x-script-name", "/a"), ("x-script-name", "/a")], Reason::DuplicateHeader),
        (&[("x-wsgiproxy-str-0", "REMOTE_USER a\nb")], Reason::ControlCharacter),
    ];
    for (extra, reason) in cases {
        let mut pairs = vec![(":path", "/myapp/x"), (":authority", "b")];
        pairs.extend_from_slice(extra);
        let r = reply(run(&c, &head(&pairs), "10.0.0.1"));
        assert_eq!((r.status, r.reason), (400, *reason), "{extra:?}: {}", r.detail);
    }
    let long = "x".repeat(MAX_VALUE_LEN + 1);
    let r = reply(run(&c, &head(&[(":path", "/"), ("x-forwarded-server", &long)]), "10.0.0.1"));
    assert_eq!(r.reason, Reason::OversizedHeader);
    let many: Vec<(String, String)> = (0..=MAX_PAYLOADS).map(|i| (format!("x-wsgiproxy-str-{i}"), format!("K{i} v"))).collect();
    let mut pairs: Vec<(&str, &str)> = vec![(":path", "/")];
    pairs.extend(many.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    assert_eq!(reply(run(&c, &head(&pairs), "10.0.0.1")).reason, Reason::TooManyPayloads);
}

#[test]
fn forced_values() {
    let c = mw(r#"{"role":"middleware","trust_ips":[],"pop_prefix":"/app","scheme":"https","domain":"example.com","port":8443}"#);
    let e = forward(run(&c, &head(&[(":path", "/app/x?q"), (":authority", "internal:80")]), "10.0.0.1"));
    assert_eq!(text(&e, ":path").as_deref(), Some("/x?q"));
    assert_eq!(text(&e, "x-forwarded-prefix").as_deref(), Some("/app"));
    assert_eq!(text(&e, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(text(&e, ":authority").as_deref(), Some("example.com:8443"));
    let r = reply(run(&c, &head(&[(":path", "/other"), (":authority", "i")]), "10.0.0.1"));
    assert_eq!((r.status, r.reason), (400, Reason::OutsidePopPrefix));
    assert!(r.detail.contains("/app"));

    let c = mw(r#"{"role":"middleware","trust_ips":["0.0.0.0/0"],"prefix":"/forced","host":"h.example:81"}"#);
    let e = forward(run(&c, &head(&[(":path", "/x"), (":authority", "i"), ("x-script-name", "/blog")]), "10.0.0.1"));
    assert_eq!(text(&e, "x-forwarded-prefix").as_deref(), Some("/forced"));
    assert_eq!(text(&e, ":authority").as_deref(), Some("h.example:81"));
    let c = mw(r#"{"role":"middleware","trust_ips":[],"port":8080}"#);
    let e = forward(run(&c, &head(&[(":path", "/x"), (":authority", "site.example")]), "10.0.0.1"));
    assert_eq!(text(&e, ":authority").as_deref(), Some("site.example:8080"));
}

#[test]
fn pickles() {
    let h = head(&[(":path", "/"), ("x-wsgiproxy-pickle-0", "obj b64gAJ9cQAu")]);
    let no = mw(r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"keys":{"obj":"x-obj"}}"#);
    let e = forward(run(&no, &h, "10.0.0.1"));
    assert!(e.remove.iter().any(|r| r == "x-wsgiproxy-pickle-0"));
    let yes = mw(r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"keys":{"obj":"x-obj"},"allow_pickle":true}"#);
    let e = forward(run(&yes, &h, "10.0.0.1"));
    assert!(!e.remove.iter().any(|r| r == "x-wsgiproxy-pickle-0"));
    assert_eq!(text(&e, "x-obj"), None, "pickles are never decoded");
    let e = forward(run(&yes, &h, "192.0.2.1"));
    assert!(e.remove.iter().any(|r| r == "x-wsgiproxy-pickle-0"), "untrusted pickles are removed");
}

const SIGNED_APP: &str = r#"{"role":"app","href":"http://backend:8080/myapp","script_name":"/blog",
    "string_keys":[{"key":"REMOTE_USER","from_header":"x-auth-user"}],
    "secret":{"keys":[{"id":"k2","value":"second-secret-key-2"}]}}"#;
const VERIFYING: &str = r#"{"role":"middleware","keys":{"REMOTE_USER":"x-remote-user"},
    "secret":{"keys":[{"id":"k2","value":"second-secret-key-2"},{"id":"k1","value":"first-secret-key-11"}]}}"#;

/// Runs the app role and returns the request head the middleware would receive.
fn through_app(app_json: &str, nonce: u8) -> RequestHead {
    let Config::App(a) = parse(app_json.as_bytes(), &|_| None).unwrap() else { panic!() };
    let client = head(&[(":method", "GET"), (":path", "/blog/p?x=1"), (":authority", "www.example.com"), ("x-auth-user", "bob")]);
    let req = AppRequest { head: &client, downstream: peer_at("203.0.113.9"), https: true, now: now(), nonce: [nonce; 16] };
    let Decision::Forward(e) = app::decide(&a, &req, &mut |_| None, &mut AppOutcome::default()) else { panic!() };
    let mut headers: Vec<(String, Vec<u8>)> =
        client.to_pairs().into_iter().filter(|(n, _)| !e.remove.iter().any(|r| r == n) && e.value_of(n).is_none()).collect();
    headers.extend(e.set.into_iter().map(|(n, v)| (n.into_owned(), v.into_owned())));
    RequestHead::new(headers)
}

#[test]
fn signed_round_trip_and_rejections() {
    let c = mw(VERIFYING);
    let mut mem = Memory(HashSet::new());
    let h = through_app(SIGNED_APP, 1);
    let e = forward(run_at(&c, &h, "198.51.100.1", now(), &mut mem));
    assert_eq!(text(&e, "x-remote-user").as_deref(), Some("bob"));
    assert_eq!(text(&e, ":path").as_deref(), Some("/p?x=1"));
    assert_eq!(text(&e, "x-forwarded-proto").as_deref(), Some("https"));
    // The same request again is a replay.
    assert_eq!(reply(run_at(&c, &h, "198.51.100.1", now(), &mut mem)).reason, Reason::SignatureReplayed);
    // Too late.
    let late = now() + Duration::from_secs(301);
    assert_eq!(reply(run_at(&c, &through_app(SIGNED_APP, 2), "198.51.100.1", late, &mut mem)).reason, Reason::SignatureStale);
    // Tampered path, header, host.
    for (name, value) in [(":path", "/myapp/admin"), ("x-wsgiproxy-str-0", "REMOTE_USER root"), (":authority", "other:1")] {
        let mut t = through_app(SIGNED_APP, 3);
        for (n, v) in t.headers_mut().iter_mut() {
            if n == name {
                *v = value.as_bytes().to_vec();
            }
        }
        let r = reply(run(&c, &t, "198.51.100.1"));
        assert_eq!((r.status, r.reason), (403, Reason::SignatureBad), "{name}");
    }
    // An added protocol header breaks the signature too.
    let mut t = through_app(SIGNED_APP, 4);
    t.headers_mut().push(("x-wsgiproxy-str-1".into(), b"IS_ADMIN yes".to_vec()));
    assert_eq!(reply(run(&c, &t, "198.51.100.1")).reason, Reason::SignatureBad);
    // Signed by the older key: still verifies after rotation.
    let old_app = SIGNED_APP.replace("\"k2\",\"value\":\"second-secret-key-2\"", "\"k1\",\"value\":\"first-secret-key-11\"");
    forward(run(&c, &through_app(&old_app, 5), "198.51.100.1"));
    // A wrong key fails.
    let wrong = SIGNED_APP.replace("second-secret-key-2", "not-the-right-key");
    assert_eq!(reply(run(&c, &through_app(&wrong, 6), "198.51.100.1")).reason, Reason::SignatureBad);
    // Unsigned: stripped by default, 401 with reject.
    let unsigned = sent_by_app();
    let e = forward(run(&c, &unsigned, "198.51.100.1"));
    assert_eq!(text(&e, "x-remote-user"), None);
    let rejecting = mw(&VERIFYING.replace("\"keys\":{", "\"on_untrusted\":\"reject\",\"keys\":{"));
    assert_eq!(reply(run(&rejecting, &unsigned, "198.51.100.1")).status, 401);
}

#[test]
fn authorities() {
    assert_eq!(parse_authority(b"a.example:80"), Some(("a.example", Some(80))));
    assert_eq!(parse_authority(b"[::1]:8080"), Some(("[::1]", Some(8080))));
    assert_eq!(parse_authority(b"[::1]"), Some(("[::1]", None)));
    assert_eq!(parse_authority(b"a"), Some(("a", None)));
    for bad in [&b""[..], b"a:", b"a:99999", b"u@h", b"h/p", b"h,i", b"h h", b"[zz]", b"h:1:2", b"\xff"] {
        assert_eq!(parse_authority(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

fn run_with(c: &MiddlewareConfig, h: &RequestHead, downstream: Downstream, https: bool) -> (Decision<'static>, MiddlewareOutcome) {
    let mut outcome = MiddlewareOutcome::default();
    let req = MiddlewareRequest { head: h, downstream, https, now: now(), local_address: None };
    (decide(c, &req, &mut Memory(HashSet::new()), &mut outcome).into_owned(), outcome)
}

fn believed_user(d: Decision) -> Option<String> {
    text(&forward(d), "x-remote-user")
}

#[test]
fn trust_ips_use_the_tcp_peer_only() {
    let c = mw(TRUSTING);
    let h = sent_by_app();
    // Envoy's computed address (an X-Forwarded-For entry) inside the range buys nothing.
    let envoy_says_trusted = Downstream { tcp_peer: "192.0.2.1".parse().ok(), envoy_client: "10.1.2.3".parse().ok(), ..Default::default() };
    let (d, outcome) = run_with(&c, &h, envoy_says_trusted, false);
    assert_eq!(believed_user(d), None);
    assert!(!outcome.trusted && !outcome.peer_unknown);
    // No record of the TCP peer: nothing is trusted by address, and it is said.
    let unknown = Downstream { envoy_client: "10.1.2.3".parse().ok(), ..Default::default() };
    let (d, outcome) = run_with(&c, &h, unknown, false);
    let e = forward(d);
    assert_eq!(text(&e, "x-remote-user"), None);
    assert_eq!(text(&e, "x-forwarded-for"), None, "no address rather than one the client may have written");
    assert!(outcome.peer_unknown && !outcome.trusted);
}

#[test]
fn client_address_envoy_describes_untrusted_requests_only() {
    let c = mw(r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"client_address":"envoy","keys":{"REMOTE_USER":"x-remote-user"}}"#);
    let downstream = Downstream { tcp_peer: "192.0.2.1".parse().ok(), envoy_client: "10.9.9.9".parse().ok(), ..Default::default() };
    let (d, _) = run_with(&c, &sent_by_app(), downstream, false);
    let e = forward(d);
    assert_eq!(text(&e, "x-remote-user"), None, "trust never follows Envoy's computed address");
    assert_eq!(text(&e, "x-forwarded-for").as_deref(), Some("10.9.9.9"));
}

#[test]
fn trust_principals_and_every_source_must_hold() {
    let edge = |uri: &str, peer: &str| Downstream { tcp_peer: peer.parse().ok(), uri_san: Some(uri.to_string()), ..Default::default() };
    let c =
        mw(r#"{"role":"middleware","trust_principals":["spiffe://cluster.local/ns/edge/sa/*"],"keys":{"REMOTE_USER":"x-remote-user"}}"#);
    let h = sent_by_app();
    assert_eq!(believed_user(run_with(&c, &h, edge("spiffe://cluster.local/ns/edge/sa/gw", "192.0.2.1"), true).0).as_deref(), Some("bob"));
    assert_eq!(believed_user(run_with(&c, &h, edge("spiffe://cluster.local/ns/shop/sa/gw", "192.0.2.1"), true).0), None);
    assert_eq!(believed_user(run_with(&c, &h, Downstream::default(), false).0), None);
    // A DNS SAN never stands for a URI principal.
    let dns_only = Downstream { dns_san: Some("spiffe://cluster.local/ns/edge/sa/gw".into()), ..Default::default() };
    assert_eq!(believed_user(run_with(&c, &h, dns_only, true).0), None);

    let both = mw(r#"{"role":"middleware","trust_principals":["spiffe://cluster.local/ns/edge/sa/gw"],"trust_ips":["10.0.0.0/8"],
                     "keys":{"REMOTE_USER":"x-remote-user"}}"#);
    assert_eq!(
        believed_user(run_with(&both, &h, edge("spiffe://cluster.local/ns/edge/sa/gw", "10.1.2.3"), true).0).as_deref(),
        Some("bob")
    );
    assert_eq!(believed_user(run_with(&both, &h, edge("spiffe://cluster.local/ns/edge/sa/gw", "192.0.2.1"), true).0), None);
    assert_eq!(believed_user(run_with(&both, &h, edge("spiffe://cluster.local/ns/shop/sa/gw", "10.1.2.3"), true).0), None);
}

#[test]
fn envoys_own_x_forwarded_for_append_is_taken_off() {
    let peer: Option<IpAddr> = "10.1.2.3".parse().ok();
    assert_eq!(sender_forwarded_for(b"203.0.113.9,10.1.2.3", peer), b"203.0.113.9");
    assert_eq!(sender_forwarded_for(b"203.0.113.9, 10.1.2.3", peer), b"203.0.113.9");
    assert_eq!(sender_forwarded_for(b"203.0.113.9,10.9.9.9", peer), b"203.0.113.9,10.9.9.9");
    assert_eq!(sender_forwarded_for(b"203.0.113.9", peer), b"203.0.113.9");
    assert_eq!(sender_forwarded_for(b"203.0.113.9,10.1.2.3", None), b"203.0.113.9,10.1.2.3");
    // Believed as the one address the sender sent.
    let mut h = sent_by_app();
    h.headers_mut().retain(|(n, _)| n != "x-forwarded-for");
    h.headers_mut().push(("x-forwarded-for".into(), b"203.0.113.9,10.1.2.3".to_vec()));
    let (d, _) = run_with(&mw(TRUSTING), &h, peer_at("10.1.2.3"), false);
    assert_eq!(text(&forward(d), "x-forwarded-for").as_deref(), Some("203.0.113.9"));
}

#[test]
fn signed_requests_survive_envoys_x_forwarded_for_append() {
    let c = mw(VERIFYING);
    let mut h = through_app(SIGNED_APP, 41);
    for (n, v) in h.headers_mut().iter_mut() {
        if n == "x-forwarded-for" {
            v.extend_from_slice(b",10.1.2.3");
        }
    }
    let (d, outcome) = run_with(&c, &h, peer_at("10.1.2.3"), false);
    assert!(outcome.verified, "{d:?}");
    assert_eq!(text(&forward(d), "x-forwarded-for").as_deref(), Some("203.0.113.9"));
}

#[test]
fn app_role_needs_its_client_address() {
    let Config::App(a) = parse(br#"{"role":"app","href":"http://b/"}"#, &|_| None).unwrap() else { panic!() };
    let client = head(&[(":method", "GET"), (":path", "/"), (":authority", "x")]);
    let req = AppRequest { head: &client, downstream: Downstream::default(), https: false, now: now(), nonce: [0; 16] };
    let r = reply(app::decide(&a, &req, &mut |_| None, &mut AppOutcome::default()));
    assert_eq!((r.status, r.reason), (500, Reason::PeerUnknown));
    let Config::App(a) = parse(br#"{"role":"app","href":"http://b/","client_address":"envoy"}"#, &|_| None).unwrap() else { panic!() };
    let req = AppRequest {
        head: &client,
        downstream: Downstream { tcp_peer: "10.0.0.1".parse().ok(), envoy_client: "203.0.113.5".parse().ok(), ..Default::default() },
        https: false,
        now: now(),
        nonce: [0; 16],
    };
    let e = forward(app::decide(&a, &req, &mut |_| None, &mut AppOutcome::default()));
    assert_eq!(text(&e, "x-forwarded-for").as_deref(), Some("203.0.113.5"));
}

fn rfc9421(json: &str) -> String {
    json.replacen("{\"role\"", "{\"signature_format\":\"rfc9421\",\"role\"", 1)
}

#[test]
fn rfc9421_round_trip_and_rejections() {
    let c = mw(&rfc9421(VERIFYING));
    let app_json = rfc9421(SIGNED_APP);
    let mut mem = Memory(HashSet::new());
    let mut h = through_app(&app_json, 1);
    assert!(h.get("signature-input").is_some() && h.get("x-wsgiproxy-signature").is_none());
    // Another party's signature rides along: ignored, and passed on without ours.
    h.headers_mut().push(("signature-input".into(), br#"client=("@method");created=1"#.to_vec()));
    h.headers_mut().push(("signature".into(), b"client=:AAAA:".to_vec()));
    let e = forward(run_at(&c, &h, "198.51.100.1", now(), &mut mem));
    assert_eq!(text(&e, "x-remote-user").as_deref(), Some("bob"));
    assert_eq!(text(&e, ":path").as_deref(), Some("/p?x=1"));
    assert_eq!(text(&e, "signature-input").as_deref(), Some(r#"client=("@method");created=1"#));
    assert_eq!(text(&e, "signature").as_deref(), Some("client=:AAAA:"));
    // Ours alone: consumed.
    let e = forward(run(&c, &through_app(&app_json, 9), "198.51.100.1"));
    assert!(e.remove.iter().any(|n| n == "signature-input") && e.remove.iter().any(|n| n == "signature"));
    // Replayed, stale.
    assert_eq!(reply(run_at(&c, &h, "198.51.100.1", now(), &mut mem)).reason, Reason::SignatureReplayed);
    let late = now() + Duration::from_secs(301);
    assert_eq!(reply(run_at(&c, &through_app(&app_json, 2), "198.51.100.1", late, &mut mem)).reason, Reason::SignatureStale);
    // Tampered path, query, header, host, method.
    for (name, value) in [
        (":path", "/myapp/admin?x=1"),
        (":path", "/myapp/p"),
        ("x-wsgiproxy-str-0", "REMOTE_USER root"),
        (":authority", "other:1"),
        (":method", "POST"),
    ] {
        let mut t = through_app(&app_json, 3);
        for (n, v) in t.headers_mut().iter_mut() {
            if n == name {
                *v = value.as_bytes().to_vec();
            }
        }
        let r = reply(run(&c, &t, "198.51.100.1"));
        assert_eq!((r.status, r.reason), (403, Reason::SignatureBad), "{name}");
    }
    // A protocol header added on the way is not covered.
    let mut t = through_app(&app_json, 4);
    t.headers_mut().push(("x-wsgiproxy-str-1".into(), b"IS_ADMIN yes".to_vec()));
    assert_eq!(reply(run(&c, &t, "198.51.100.1")).reason, Reason::SignatureBad);
    // Key rotation and a wrong key.
    let old_app = app_json.replace("\"k2\",\"value\":\"second-secret-key-2\"", "\"k1\",\"value\":\"first-secret-key-11\"");
    forward(run(&c, &through_app(&old_app, 5), "198.51.100.1"));
    let wrong = app_json.replace("second-secret-key-2", "not-the-right-key");
    assert_eq!(reply(run(&c, &through_app(&wrong, 6), "198.51.100.1")).reason, Reason::SignatureBad);
    // A v1 signature is no signature here, and the reverse.
    let v1_signed = through_app(SIGNED_APP, 7);
    let mut outcome = MiddlewareOutcome::default();
    let req = MiddlewareRequest { head: &v1_signed, downstream: peer_at("198.51.100.1"), https: false, now: now(), local_address: None };
    let e = forward(decide(&c, &req, &mut Memory(HashSet::new()), &mut outcome));
    assert!(outcome.unsigned && !outcome.trusted);
    assert_eq!(text(&e, "x-remote-user"), None);
    let e = forward(run(&mw(VERIFYING), &through_app(&app_json, 8), "198.51.100.1"));
    assert_eq!(text(&e, "x-remote-user"), None, "a v1 middleware does not read RFC 9421 signatures");
}

fn process_memory(began: SystemTime) -> crate::replay::ProcessMemory {
    let began = began.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    crate::replay::ProcessMemory::new(crate::replay::FingerprintKey::new([5; 16]), crate::replay::Window::for_skew(300), 0, 1 << 20, began)
}

fn run_with_memory(c: &MiddlewareConfig, h: &RequestHead, memory: &crate::replay::ProcessMemory) -> Decision<'static> {
    let req = MiddlewareRequest { head: h, downstream: peer_at("198.51.100.1"), https: false, now: now(), local_address: None };
    decide(c, &req, &mut &*memory, &mut MiddlewareOutcome::default()).into_owned()
}

#[test]
fn signed_before_the_memory_began_is_too_early() {
    for format in [VERIFYING.to_string(), rfc9421(VERIFYING)] {
        let c = mw(&format);
        let app_json = if format.contains("rfc9421") { rfc9421(SIGNED_APP) } else { SIGNED_APP.to_string() };
        // Signed in the second the memory began (a restart): it may have been accepted before.
        let memory = process_memory(now());
        let r = reply(run_with_memory(&c, &through_app(&app_json, 1), &memory));
        assert_eq!((r.status, r.reason), (425, Reason::SignedBeforeRestart));
        // Begun a second earlier, the same request passes, once.
        let memory = process_memory(now() - Duration::from_secs(1));
        forward(run_with_memory(&c, &through_app(&app_json, 1), &memory));
        assert_eq!(reply(run_with_memory(&c, &through_app(&app_json, 1), &memory)).reason, Reason::SignatureReplayed);
        assert_eq!(memory.fullness().live, 1);
    }
}

#[test]
fn forged_requests_never_reach_the_memory() {
    // Only a request whose MAC verified is remembered: a flood of forgeries, with
    // fresh nonces and good dates, leaves the memory empty.
    let memory = process_memory(now() - Duration::from_secs(60));
    for format in [VERIFYING.to_string(), rfc9421(VERIFYING)] {
        let c = mw(&format);
        let app_json = if format.contains("rfc9421") { rfc9421(SIGNED_APP) } else { SIGNED_APP.to_string() };
        let wrong_key = app_json.replace("second-secret-key-2", "not-the-right-key");
        for nonce in 0..=255u8 {
            let forged = through_app(&wrong_key, nonce);
            assert_eq!(reply(run_with_memory(&c, &forged, &memory)).reason, Reason::SignatureBad);
            let mut tampered = through_app(&app_json, nonce);
            tampered.headers_mut().push(("x-wsgiproxy-str-1".into(), b"IS_ADMIN yes".to_vec()));
            assert_eq!(reply(run_with_memory(&c, &tampered, &memory)).reason, Reason::SignatureBad);
        }
    }
    assert_eq!(memory.fullness().live, 0);
}

/// The app role with `bind_endpoint`: what it sends before routing (unsigned), then
/// signed in the cluster for `endpoint`: the request head a receiver gets.
fn through_app_to(app_json: &str, nonce: u8, endpoint: &str) -> RequestHead {
    let Config::App(a) = parse(app_json.as_bytes(), &|_| None).unwrap() else { panic!() };
    let routed = through_app(app_json, nonce);
    assert!(routed.get(X_WSGIPROXY_SIGNATURE).is_none() && routed.get("signature").is_none(), "signed before routing");
    let Decision::Forward(e) = app::sign_for_endpoint(&a, &routed, endpoint.parse().unwrap(), now(), &[nonce; 16]) else { panic!() };
    let mut headers: Vec<(String, Vec<u8>)> = routed.to_pairs().into_iter().filter(|(n, _)| e.value_of(n).is_none()).collect();
    headers.extend(e.set.into_iter().map(|(n, v)| (n.into_owned(), v.into_owned())));
    RequestHead::new(headers)
}

fn run_on(c: &MiddlewareConfig, h: &RequestHead, local: &str) -> Decision<'static> {
    let req = MiddlewareRequest {
        head: h,
        downstream: peer_at("198.51.100.1"),
        https: false,
        now: now(),
        local_address: Some(local.parse().unwrap()),
    };
    decide(c, &req, &mut Memory(HashSet::new()), &mut MiddlewareOutcome::default()).into_owned()
}

#[test]
fn a_signature_bound_to_one_endpoint_is_refused_by_every_other() {
    let bound_app = SIGNED_APP.replacen("{\"role\"", "{\"bind_endpoint\":true,\"role\"", 1);
    let bound_mw = VERIFYING.replacen("{\"role\"", "{\"bind_endpoint\":true,\"role\"", 1);
    for (app_json, mw_json) in [(bound_app.clone(), bound_mw.clone()), (rfc9421(&bound_app), rfc9421(&bound_mw))] {
        let c = mw(&mw_json);
        let to_a = through_app_to(&app_json, 1, "10.0.0.5:8080");
        // The replica it was signed for accepts it, the endpoint header does not reach the backend.
        let e = forward(run_on(&c, &to_a, "10.0.0.5:8080"));
        assert_eq!(text(&e, "x-remote-user").as_deref(), Some("bob"), "{mw_json}");
        assert!(e.remove.iter().any(|n| n == X_WSGIPROXY_ENDPOINT), "{e:?}");
        // Another replica refuses it; so does the same address on another port.
        for other in ["10.0.0.6:8080", "10.0.0.5:8081"] {
            let r = reply(run_on(&c, &to_a, other));
            assert_eq!((r.status, r.reason), (403, Reason::WrongEndpoint), "{other}");
        }
        // The endpoint is covered: rewriting it breaks the signature.
        let mut moved = to_a.clone();
        for (n, v) in moved.headers_mut().iter_mut() {
            if n == X_WSGIPROXY_ENDPOINT {
                *v = b"10.0.0.6:8080".to_vec();
            }
        }
        assert_eq!(reply(run_on(&c, &moved, "10.0.0.6:8080")).reason, Reason::SignatureBad);
        // A signature that names no endpoint (a sender without bind_endpoint) is refused.
        let plain = if app_json.contains("rfc9421") { rfc9421(SIGNED_APP) } else { SIGNED_APP.to_string() };
        assert_eq!(reply(run_on(&c, &through_app(&plain, 2), "10.0.0.5:8080")).reason, Reason::EndpointMissing);
        // Behind a NAT: the addresses the sender reaches this receiver at are listed.
        let listed = mw(&mw_json.replacen("\"bind_endpoint\":true", "\"bind_endpoint\":true,\"own_addresses\":[\"10.0.0.5:8080\"]", 1));
        forward(run_on(&listed, &through_app_to(&app_json, 3, "10.0.0.5:8080"), "192.168.9.9:80"));
        assert_eq!(reply(run_on(&listed, &through_app_to(&app_json, 4, "10.0.0.6:8080"), "10.0.0.6:8080")).reason, Reason::WrongEndpoint);
    }
    // Configuration: a binding needs a secret on both sides, and own_addresses a binding.
    let refused = |json: &str| parse(json.as_bytes(), &|_| None).err().map(|e| e.field);
    assert_eq!(refused(r#"{"role":"app","href":"http://b/","bind_endpoint":true}"#).as_deref(), Some("bind_endpoint"));
    assert_eq!(refused(r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"bind_endpoint":true}"#).as_deref(), Some("bind_endpoint"));
    assert_eq!(
        refused(r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"own_addresses":["10.0.0.5:80"]}"#).as_deref(),
        Some("own_addresses")
    );
    let bad_address = VERIFYING.replacen("{\"role\"", "{\"bind_endpoint\":true,\"own_addresses\":[\"10.0.0.5\"],\"role\"", 1);
    assert_eq!(refused(&bad_address).as_deref(), Some("own_addresses[0]"));
}
