use super::{assert_declared, config};
use crate::config::{Config, MiddlewareConfig};
use crate::driver::app::AppStream;
use crate::driver::middleware::on_request_headers;
use crate::driver::Flow;
use crate::reason::Reason;
use crate::testing::FakeHost;

fn mw(json: &str) -> MiddlewareConfig {
    match config(json) {
        Config::Middleware(m) => m,
        _ => panic!("not a middleware configuration"),
    }
}

const TRUSTING: &str = r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"keys":{"REMOTE_USER":"x-remote-user"}}"#;

fn from_app() -> FakeHost {
    let mut host = FakeHost::with_request(&[
        (":method", "GET"),
        (":path", "/myapp/x"),
        (":authority", "backend:8080"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-server", "www.example.com"),
        ("x-forwarded-scheme", "https"),
        ("x-script-name", "/blog"),
        ("x-traversal-path", "/myapp"),
        ("x-wsgiproxy-version", "0.1"),
        ("x-wsgiproxy-str-0", "REMOTE_USER bob"),
        ("x-wsgiproxy-str-1", "OTHER x"),
    ]);
    host.tcp_peer = Some("10.1.2.3:4444".into());
    host
}

#[test]
fn a_trusted_request_is_delivered_and_counted() {
    let mut host = from_app();
    assert_eq!(on_request_headers(&mw(TRUSTING), &mut host), Flow::Continue);
    assert_eq!(host.request_value(":path").as_deref(), Some("/x"));
    assert_eq!(host.request_value(":authority").as_deref(), Some("www.example.com"));
    assert_eq!(host.request_value("x-forwarded-host").as_deref(), Some("www.example.com"));
    assert_eq!(host.request_value("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(host.request_value("x-forwarded-for").as_deref(), Some("203.0.113.7"));
    assert_eq!(host.request_value("x-forwarded-prefix").as_deref(), Some("/blog"));
    assert_eq!(host.request_value("x-remote-user").as_deref(), Some("bob"));
    assert!(host.request.iter().all(|(n, _)| !n.starts_with("x-wsgiproxy-")), "{:?}", host.request);

    assert_eq!(host.count_of("middleware.requests"), 1);
    assert_eq!(host.count_of("middleware.trusted"), 1);
    assert_eq!(host.count_of("middleware.untrusted"), 0);
    assert_eq!(host.count_of("middleware.dropped_keys"), 1);
    assert!(host.warnings.is_empty());
    // No secret: the time is not asked for.
    assert_eq!(host.reads, ["request_head", "tcp_peer", "connection_is_tls"]);
    assert_declared(&host, "middleware");
}

#[test]
fn an_untrusted_peer_is_refused_when_so_configured() {
    let c = mw(r#"{"role":"middleware","trust_ips":["10.0.0.0/8"],"on_untrusted":"reject"}"#);
    let mut host = from_app();
    host.tcp_peer = Some("192.0.2.1:4444".into());
    assert_eq!(on_request_headers(&c, &mut host), Flow::Replied);
    assert_eq!((host.replies[0].status, host.replies[0].reason), (403, Reason::UntrustedPeer));
    assert_eq!(host.count_of("middleware.untrusted"), 1);
    assert_eq!(host.count_of("middleware.rejected.untrusted_peer"), 1);
    assert_eq!(host.request_value(":path").as_deref(), Some("/myapp/x"), "nothing applied");
    assert_declared(&host, "middleware");
}

#[test]
fn an_unknown_peer_trusts_nobody_and_is_warned_about_once() {
    let c = mw(TRUSTING);
    let mut host = from_app();
    host.tcp_peer = None;
    for _ in 0..2 {
        host.next_request(&[(":path", "/x"), ("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(on_request_headers(&c, &mut host), Flow::Continue);
        assert_eq!(host.request_value("x-forwarded-for"), None, "a forgery is stripped, no address is guessed");
    }
    assert_eq!(host.count_of("middleware.peer_unknown"), 2);
    assert_eq!(host.count_of("middleware.untrusted"), 2);
    assert_eq!(host.warnings.len(), 1, "{:?}", host.warnings);
    assert!(host.warnings[0].starts_with("wsgiproxy middleware: trust_ips is configured but the TCP peer is unknown"));
    assert_declared(&host, "middleware");
}

#[test]
fn principals_without_tls_are_warned_about_once() {
    let c = mw(r#"{"role":"middleware","trust_principals":["spiffe://cluster.local/ns/edge/sa/gw"]}"#);
    let mut host = from_app();
    for _ in 0..2 {
        host.next_request(&[(":path", "/x")]);
        assert_eq!(on_request_headers(&c, &mut host), Flow::Continue);
    }
    assert_eq!(host.warnings.len(), 1, "{:?}", host.warnings);
    assert!(host.warnings[0].starts_with("wsgiproxy middleware: trust_principals is configured but this connection has no TLS"));
    // The TCP peer too: it is the client address sent on (`client_address` is `peer`).
    assert_eq!(host.reads, ["request_head", "tcp_peer", "peer_uri_san", "peer_dns_san", "connection_is_tls"]);

    // Over mTLS: the identity is read and trusted, and nothing is warned about.
    let mut tls = from_app();
    tls.tls = true;
    tls.uri_san = Some("spiffe://cluster.local/ns/edge/sa/gw".into());
    assert_eq!(on_request_headers(&c, &mut tls), Flow::Continue);
    assert!(tls.warnings.is_empty());
    assert_eq!(tls.count_of("middleware.trusted"), 1);
    assert_declared(&tls, "middleware");
}

const SECRET: &str = r#""secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}"#;

/// What the app driver sends for `/x`, as the middleware receives it from 10.1.2.3.
fn signed_by_app() -> FakeHost {
    let app = match config(&format!(r#"{{"role":"app","href":"http://backend:8080/",{SECRET}}}"#)) {
        Config::App(app) => app,
        _ => panic!("not an app configuration"),
    };
    let mut sender = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "www.example.com")]);
    assert_eq!(AppStream::default().on_request_headers(&app, &mut sender), Flow::Continue);
    let mut receiver = FakeHost::default();
    receiver.request = sender.request;
    receiver.tcp_peer = Some("10.1.2.3:4444".into());
    receiver
}

#[test]
fn a_signature_is_verified_once_and_a_replay_refused() {
    let c = mw(&format!(r#"{{"role":"middleware",{SECRET},"keys":{{}}}}"#));
    let mut host = signed_by_app();
    let sent = host.request.clone();
    assert_eq!(on_request_headers(&c, &mut host), Flow::Continue, "{:?}", host.replies);
    assert_eq!(host.count_of("middleware.verified"), 1);
    assert!(host.reads.contains(&"now".to_string()));

    // The same request again, on the same host: its nonce is remembered.
    host.request = sent;
    assert_eq!(on_request_headers(&c, &mut host), Flow::Replied);
    assert_eq!((host.replies[0].status, host.replies[0].reason), (403, Reason::SignatureReplayed));
    assert_eq!(host.count_of("middleware.rejected.signature_replayed"), 1);
    assert_declared(&host, "middleware");
}

#[test]
fn a_failing_nonce_memory_fails_closed() {
    let c = mw(&format!(r#"{{"role":"middleware",{SECRET},"keys":{{}}}}"#));
    let mut host = signed_by_app();
    host.nonces = Err("the replay memory is full".into());
    assert_eq!(on_request_headers(&c, &mut host), Flow::Replied);
    let reply = &host.replies[0];
    assert_eq!((reply.status, reply.reason), (503, Reason::ReplayStoreUnavailable));
    assert_eq!(reply.headers, [("retry-after".to_string(), "1".to_string())]);
    assert_eq!(host.count_of("middleware.rejected.replay_store_unavailable"), 1);
    assert_declared(&host, "middleware");
}

// Key directories: the app role publishes, the middleware follows.

/// RFC 8037 Appendix A's Ed25519 key pair, as a private JWK.
const ED25519_JWK: &str = r#"{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"d\":\"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}"#;

fn ed25519_sender(id: &str) -> crate::config::AppConfig {
    let json = format!(
        r#"{{"role":"app","href":"http://backend:8080/","signature_format":"rfc9421","algorithm":"ed25519","secret":{{"keys":[{{"id":"{id}","value":"{ED25519_JWK}"}}]}},"publish_key_directory":{{}}}}"#
    );
    match config(&json) {
        Config::App(app) => app,
        _ => panic!("not an app configuration"),
    }
}

fn following() -> MiddlewareConfig {
    mw(r#"{"role":"middleware","signature_format":"rfc9421","algorithm":"ed25519","key_directories":[{"cluster":"keys"}],"keys":{}}"#)
}

/// What `sender` sends for `/x`, as the middleware receives it from 10.1.2.3.
fn sent_by(sender: &crate::config::AppConfig) -> FakeHost {
    let mut app = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "www.example.com")]);
    assert_eq!(AppStream::default().on_request_headers(sender, &mut app), Flow::Continue, "{:?}", app.replies);
    let mut receiver = FakeHost::default();
    receiver.request = app.request;
    receiver.tcp_peer = Some("10.1.2.3:4444".into());
    receiver
}

/// The directory the sender serves, as its app role answers a GET of it.
fn directory_of(sender: &crate::config::AppConfig) -> Vec<u8> {
    let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", "/.well-known/http-message-signatures-directory")]);
    assert_eq!(AppStream::default().on_request_headers(sender, &mut host), Flow::Replied);
    assert_eq!(host.count_of("app.key_directory_served"), 1);
    assert!(host.replies.is_empty(), "a document, not a refusal");
    host.documents[0].detail.clone().into_bytes()
}

#[test]
fn a_receiver_verifies_with_the_keys_its_sender_publishes() {
    use crate::driver::middleware::{on_request_headers_following, unknown_key_id};
    use crate::key_directory::{Followed, Follower};
    let sender = ed25519_sender("k-dir");
    let receiver = following();
    let mut follower = Follower::new(crate::signature::Algorithm::Ed25519, &receiver.key_directories);

    // Nothing fetched yet: the key is unknown, and nothing verifies (fail closed).
    let mut host = sent_by(&sender);
    assert_eq!(unknown_key_id(&receiver, &mut host, &follower.followed()).as_deref(), Some("k-dir"));
    assert_eq!(on_request_headers_following(&receiver, &mut host, Some(&Followed::default())), Flow::Replied);
    assert_eq!((host.replies[0].status, host.replies[0].reason), (503, Reason::KeyDirectoryUnavailable));

    // The sender's directory fetched: known, and verified.
    assert!(follower.directories[0].due(0));
    follower.directories[0].on_answer(0, crate::signature::Algorithm::Ed25519, Some((200, None, &directory_of(&sender))));
    follower.remerge(0);
    let mut host = sent_by(&sender);
    assert_eq!(unknown_key_id(&receiver, &mut host, &follower.followed()), None);
    assert_eq!(on_request_headers_following(&receiver, &mut host, Some(&follower.followed())), Flow::Continue, "{:?}", host.replies);
    assert_eq!(host.count_of("middleware.verified"), 1);

    // Another key id, same key: not in the directory.
    let mut host = sent_by(&ed25519_sender("k-other"));
    assert_eq!(unknown_key_id(&receiver, &mut host, &follower.followed()).as_deref(), Some("k-other"));
    assert_eq!(on_request_headers_following(&receiver, &mut host, Some(&follower.followed())), Flow::Replied);
    assert_eq!((host.replies[0].status, host.replies[0].reason), (403, Reason::SignatureKeyUnknown));
    assert_eq!(host.count_of("middleware.rejected.signature_key_unknown"), 1);

    // The directory answers an empty set: it answered, so an unknown key id is a 403,
    // not a 503 that asks clients to come back in a second.
    follower.directories[0].on_answer(10_000, crate::signature::Algorithm::Ed25519, Some((200, None, br#"{"keys": []}"#)));
    follower.remerge(10_000);
    let mut host = sent_by(&sender);
    assert_eq!(on_request_headers_following(&receiver, &mut host, Some(&follower.followed())), Flow::Replied);
    assert_eq!((host.replies[0].status, host.replies[0].reason), (403, Reason::SignatureKeyUnknown));
}

#[test]
fn key_directories_are_for_public_key_rfc9421_receivers_and_publishing_for_public_key_senders() {
    let refused = |json: &str| crate::config::parse(json.as_bytes(), &|_| None).err().map(|e| e.field);
    assert_eq!(refused(r#"{"role":"middleware","key_directories":[{"cluster":"keys"}]}"#).as_deref(), Some("key_directories"));
    assert_eq!(
        refused(r#"{"role":"middleware","signature_format":"rfc9421","key_directories":[{"cluster":"keys"}]}"#).as_deref(),
        Some("key_directories")
    );
    assert_eq!(
        refused(
            r#"{"role":"middleware","signature_format":"rfc9421","algorithm":"ed25519","key_directories":[{"cluster":"keys","path":"x"}]}"#
        )
        .as_deref(),
        Some("key_directories[0].path")
    );
    assert_eq!(
        refused(
            r#"{"role":"app","href":"http://b/","secret":{"keys":[{"id":"k","value":"0123456789abcdef"}]},"publish_key_directory":{}}"#
        )
        .as_deref(),
        Some("publish_key_directory")
    );
    // Directories alone are trust enough: no secret needed.
    assert!(following().verify.is_some());
}
