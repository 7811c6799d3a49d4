use super::{assert_declared, config};
use crate::config::{AppConfig, Config};
use crate::driver::app::AppStream;
use crate::driver::Flow;
use crate::host::HeaderMap;
use crate::reason::Reason;
use crate::testing::FakeHost;

fn app(json: &str) -> AppConfig {
    match config(json) {
        Config::App(app) => app,
        _ => panic!("not an app configuration"),
    }
}

const MOUNTED: &str = r#"{"role":"app","href":"http://backend:8080/myapp","script_name":"/blog",
                          "string_keys":[{"key":"REMOTE_USER","from_header":"x-auth-user"},
                                         {"key":"PROTO","from_property":["request","protocol"]}]}"#;

fn blog_request() -> FakeHost {
    FakeHost::with_request(&[
        (":method", "GET"),
        (":path", "/blog/article/1?x=1"),
        (":authority", "www.example.com"),
        ("x-auth-user", "bob"),
        ("x-script-name", "/evil"),
    ])
}

#[test]
fn forwards_with_the_edits_applied_and_counted() {
    let c = app(MOUNTED);
    let mut host = blog_request();
    host.properties.push((vec!["request".into(), "protocol".into()], b"HTTP/1.1".to_vec()));
    assert_eq!(AppStream::default().on_request_headers(&c, &mut host), Flow::Continue);

    assert_eq!(host.request_value(":path").as_deref(), Some("/myapp/article/1?x=1"));
    assert_eq!(host.request_value(":authority").as_deref(), Some("backend:8080"));
    assert_eq!(host.values(HeaderMap::Request, "x-script-name"), ["/blog"], "the client's is replaced");
    assert_eq!(host.request_value("x-forwarded-for").as_deref(), Some("203.0.113.7"), "the TCP peer");
    assert_eq!(host.request_value("x-forwarded-server").as_deref(), Some("www.example.com"));
    assert_eq!(host.request_value("x-wsgiproxy-str-0").as_deref(), Some("REMOTE_USER bob"));
    assert_eq!(host.request_value("x-wsgiproxy-str-1").as_deref(), Some("PROTO HTTP/1.1"));
    assert!(host.replies.is_empty());

    assert_eq!(host.count_of("app.requests"), 1);
    assert_eq!(host.count_of("app.forwarded"), 1);
    assert_eq!(host.count_of("app.stripped_headers"), 1);
    assert_eq!(host.count_of("app.signed"), 0);
    assert_declared(&host, "app");
    assert_eq!(host.debug_lines, ["wsgiproxy app: forwarded (stripped 1, invalid keys 0, signed false)"]);
}

#[test]
fn reads_only_what_the_configuration_needs() {
    // Unsigned: no time and no randomness; the TLS read is spared by a declared scheme.
    let mut host = blog_request();
    let _ = AppStream::default().on_request_headers(&app(MOUNTED), &mut host);
    assert_eq!(host.reads, ["request_head", "tcp_peer", "connection_is_tls", "property request.protocol"]);

    let declared = app(r#"{"role":"app","href":"http://backend/","scheme":"https","client_address":"envoy"}"#);
    let mut host = blog_request();
    host.envoy_client = Some("198.51.100.4:1234".into());
    let _ = AppStream::default().on_request_headers(&declared, &mut host);
    assert_eq!(host.reads, ["request_head", "envoy_client"]);
    assert_eq!(host.request_value("x-forwarded-scheme").as_deref(), Some("https"));
    assert_eq!(host.request_value("x-forwarded-for").as_deref(), Some("198.51.100.4"));
}

#[test]
fn signs_with_the_hosts_time_and_randomness() {
    let c = app(r#"{"role":"app","href":"http://backend:8080/app","secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#);
    let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "h")]);
    assert_eq!(AppStream::default().on_request_headers(&c, &mut host), Flow::Continue);
    assert!(host.reads.contains(&"random_nonce".to_string()) && host.reads.contains(&"now".to_string()));
    assert_eq!(host.request_value("date").as_deref(), Some("Tue, 24 Nov 2026 02:00:00 GMT"));
    assert!(host.request_value("x-wsgiproxy-signature").is_some());
    assert_eq!(host.count_of("app.signed"), 1);
    assert_declared(&host, "app");
}

#[test]
fn without_randomness_signing_refuses() {
    let c = app(r#"{"role":"app","href":"http://backend/","secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#);
    let mut host = FakeHost::with_request(&[(":path", "/x")]);
    host.random = None;
    assert_eq!(AppStream::default().on_request_headers(&c, &mut host), Flow::Replied);
    let reply = &host.replies[0];
    assert_eq!((reply.status, reply.reason), (503, Reason::NoRandomness));
    assert_eq!(host.count_of("app.rejected.no_randomness"), 1);
    assert_eq!(host.count_of("app.forwarded"), 0);
    assert_eq!(host.request, [(":path".to_string(), b"/x".to_vec())], "the request is left alone");
    assert_declared(&host, "app");
}

#[test]
fn a_refusal_is_replied_and_counted_under_its_reason() {
    let mut host = FakeHost::with_request(&[(":path", "/elsewhere")]);
    assert_eq!(AppStream::default().on_request_headers(&app(MOUNTED), &mut host), Flow::Replied);
    assert_eq!(host.replies.len(), 1);
    assert_eq!((host.replies[0].status, host.replies[0].reason), (404, Reason::OutsideMount));
    assert_eq!(host.count_of("app.rejected.outside_mount"), 1);
    assert_eq!(host.request_value(":path").as_deref(), Some("/elsewhere"), "nothing applied");
    assert!(host.debug_lines[0].starts_with("wsgiproxy app: replied 404 (outside_mount): "), "{:?}", host.debug_lines);
    assert_declared(&host, "app");
}

#[test]
fn an_unsignable_request_is_counted_as_such() {
    // The reason the native module once counted as `other`.
    let c = app(r#"{"role":"app","href":"http://backend/app","signature_format":"rfc9421",
                    "secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#);
    let mut host = FakeHost::with_request(&[(":method", "G\u{e9}T"), (":path", "/x")]);
    assert_eq!(AppStream::default().on_request_headers(&c, &mut host), Flow::Replied);
    assert_eq!(host.replies[0].reason, Reason::Unsignable);
    assert_eq!(host.count_of("app.rejected.unsignable"), 1);
    assert_declared(&host, "app");
}

#[test]
fn an_unknown_peer_is_refused_and_warned_about_once() {
    let c = app(MOUNTED);
    let mut host = blog_request();
    host.tcp_peer = None;
    for _ in 0..3 {
        host.next_request(&[(":path", "/blog/x")]);
        assert_eq!(AppStream::default().on_request_headers(&c, &mut host), Flow::Replied);
    }
    assert_eq!(host.count_of("app.rejected.peer_unknown"), 3);
    assert!(host.replies.iter().all(|r| (r.status, r.reason) == (500, Reason::PeerUnknown)));
    assert_eq!(host.warnings.len(), 1, "{:?}", host.warnings);
    assert!(host.warnings[0].starts_with("wsgiproxy app: client_address is \"peer\" but the TCP peer is unknown"));
    assert_declared(&host, "app");
}

#[test]
fn the_response_is_rewritten_to_the_clients_view() {
    let c = app(r#"{"role":"app","href":"http://backend:8080/myapp","script_name":"/blog","rewrite_response":true}"#);
    let mut stream = AppStream::default();
    let mut host = blog_request();
    assert_eq!(stream.on_request_headers(&c, &mut host), Flow::Continue);
    host.reads.clear();
    host.set_response(&[
        (":status", "302"),
        ("location", "http://backend:8080/myapp/login?next=1"),
        ("set-cookie", "a=1; Path=/myapp/x"),
        ("set-cookie", "b=2"),
        ("x-other", "kept"),
    ]);
    stream.on_response_headers(&c, &mut host);
    assert_eq!(host.reads, ["header location", "header content-location", "header_values set-cookie"]);
    assert_eq!(host.values(HeaderMap::Response, "location"), ["http://www.example.com/blog/login?next=1"]);
    assert_eq!(host.values(HeaderMap::Response, "set-cookie"), ["a=1; Path=/blog/x", "b=2"], "every cookie, in order");
    assert_eq!(host.values(HeaderMap::Response, "x-other"), ["kept"]);
    assert_eq!(host.count_of("app.rewritten_locations"), 1);
    assert_eq!(host.count_of("app.rewritten_cookies"), 1);
    assert_declared(&host, "app");
}

#[test]
fn the_response_is_left_alone_when_not_asked() {
    let c = app(r#"{"role":"app","href":"http://backend:8080/myapp","rewrite_response":false}"#);
    let mut stream = AppStream::default();
    let mut host = blog_request();
    let _ = stream.on_request_headers(&c, &mut host);
    host.reads.clear();
    host.set_response(&[("location", "http://backend:8080/myapp/login")]);
    stream.on_response_headers(&c, &mut host);
    assert!(host.reads.is_empty(), "nothing read");
    assert_eq!(host.values(HeaderMap::Response, "location"), ["http://backend:8080/myapp/login"]);
}

const BOUND: &str = r#"{"role":"app","href":"http://backend:8080/app","bind_endpoint":true,
                        "secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#;

#[test]
fn the_upstream_pass_signs_only_what_the_pre_routing_pass_prepared() {
    let c = app(BOUND);
    // Before routing: stripped, not signed, and marked for the upstream pass.
    let mut host = blog_request();
    host.request.push(("x-forwarded-for".into(), b"6.6.6.6".to_vec()));
    assert_eq!(AppStream::default().on_request_headers(&c, &mut host), Flow::Continue);
    assert_eq!(host.marks, ["wsgiproxy_app_prepared"]);
    assert_eq!(host.request_value("x-wsgiproxy-signature"), None);

    // The cluster's upstream filter on that stream signs it.
    host.upstream_address = Some("10.0.0.5:8080".into());
    assert_eq!(AppStream::default().on_request_headers(&c, &mut host), Flow::Continue);
    assert!(host.request_value("x-wsgiproxy-signature").is_some());
    assert_eq!(host.request_value("x-forwarded-for").as_deref(), Some("203.0.113.7"));
    assert_eq!(host.count_of("app.signed"), 1);

    // A request that reached the cluster some other way (a listener or route without
    // the pre-routing pass): its headers are the client's, and are never signed.
    for _ in 0..2 {
        let mut forged = FakeHost::with_request(&[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "backend:8080"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-wsgiproxy-str-0", "REMOTE_USER admin"),
        ]);
        forged.upstream_address = Some("10.0.0.5:8080".into());
        assert_eq!(AppStream::default().on_request_headers(&c, &mut forged), Flow::Replied);
        let reply = &forged.replies[0];
        assert_eq!((reply.status, reply.reason), (500, Reason::Unprepared));
        assert_eq!(forged.request_value("x-wsgiproxy-signature"), None);
        assert_eq!(forged.count_of("app.signed"), 0);
        assert_eq!(forged.count_of("app.rejected.unprepared"), 1);
        assert_eq!(forged.warnings.len(), 1, "{:?}", forged.warnings);
    }
}
