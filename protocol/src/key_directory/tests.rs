#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// RFC 8037 Appendix A.2's Ed25519 public key.
const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
/// RFC 7517 Appendix A.1's P-256 public key.
const EC_X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
const EC_Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";

fn ed(kid: &str) -> String {
    format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{ED_X}"}}"#)
}

fn set(keys: &[String]) -> Vec<u8> {
    format!(r#"{{"keys":[{}]}}"#, keys.join(",")).into_bytes()
}

fn source() -> DirectorySource {
    DirectorySource {
        cluster: "keys".into(),
        authority: "keys".into(),
        path: DEFAULT_PATH.into(),
        timeout: Duration::from_secs(2),
        min_refresh: Duration::from_secs(10),
        max_refresh: Duration::from_secs(100),
        unknown_key_interval: Duration::from_secs(30),
        max_stale: Duration::from_secs(50),
        max_bytes: 4096,
    }
}

#[test]
fn reads_a_jwks_and_names_keys_by_kid_or_thumbprint() {
    let keys = parse_key_set(Algorithm::Ed25519, &set(&[ed("a"), format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}"}}"#)])).unwrap();
    let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    // RFC 8037 Appendix A.3: the key's thumbprint.
    assert_eq!(ids, ["a", "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"]);
    // An empty set is a set: no key.
    assert!(parse_key_set(Algorithm::Ed25519, br#"{"keys": []}"#).unwrap().is_empty());
}

#[test]
fn keys_published_for_encryption_are_skipped() {
    let with = |member: &str| format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"e","x":"{ED_X}",{member}}}"#);
    let keys = parse_key_set(
        Algorithm::Ed25519,
        &set(&[ed("a"), with(r#""use":"enc""#), with(r#""key_ops":["encrypt"]"#), with(r#""use":7"#), with(r#""key_ops":"verify""#)]),
    )
    .unwrap();
    let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a"]);
    let keys = parse_key_set(Algorithm::Ed25519, &set(&[with(r#""use":"sig","key_ops":["sign","verify"]"#)])).unwrap();
    assert_eq!(keys.len(), 1);
}

#[test]
fn refuses_what_is_not_a_set_of_public_keys_of_the_algorithm() {
    let refused = |algorithm, body: &[u8]| matches!(parse_key_set(algorithm, body), Err(FetchError::Invalid(_)));
    assert!(refused(Algorithm::Ed25519, b"<html>"));
    assert!(refused(Algorithm::Ed25519, br#"{"kty":"OKP"}"#));
    assert!(refused(Algorithm::Ed25519, br#"{"keys": {}}"#));
    assert!(refused(Algorithm::Ed25519, br#"{"keys": [1]}"#));
    // Another key type, or another algorithm named by `alg`: no algorithm confusion.
    let ec = format!(r#"{{"kty":"EC","crv":"P-256","kid":"e","x":"{EC_X}","y":"{EC_Y}"}}"#);
    assert!(refused(Algorithm::Ed25519, &set(std::slice::from_ref(&ec))));
    assert!(parse_key_set(Algorithm::EcdsaP256Sha256, &set(&[ec])).is_ok());
    let mislabelled = format!(r#"{{"kty":"EC","crv":"P-256","kid":"e","alg":"ES384","x":"{EC_X}","y":"{EC_Y}"}}"#);
    assert!(refused(Algorithm::EcdsaP256Sha256, &set(&[mislabelled])));
    assert!(refused(Algorithm::Ed25519, &set(&[r#"{"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0"}"#.into()])));
    // A private key, a duplicate id, a bad id.
    let private = r#"{"kty":"OKP","crv":"Ed25519","kid":"p","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    assert!(refused(Algorithm::Ed25519, &set(&[private.into()])));
    assert!(refused(Algorithm::Ed25519, &set(&[ed("a"), ed("a")])));
    assert!(refused(Algorithm::Ed25519, &set(&[ed("a b")])));
    assert!(refused(Algorithm::Ed25519, &set(&vec![ed("a"); MAX_KEYS + 1])));
}

#[test]
fn cache_control_max_age() {
    assert_eq!(max_age(b"public, max-age=600"), Some(600));
    assert_eq!(max_age(b"max-age=\"5\""), Some(5));
    assert_eq!(max_age(b"no-store"), Some(0));
    assert_eq!(max_age(b"public"), None);
    assert_eq!(max_age(b"max-age=soon"), None);
}

#[test]
fn fetched_at_start_then_refreshed_by_cache_control_within_bounds() {
    let mut d = Directory::new(source());
    assert!(d.due(0));
    assert!(!d.due(1), "one fetch at a time");
    let answered = d.on_answer(100, Algorithm::Ed25519, Some((200, Some(b"max-age=40"), &set(&[ed("a")]))));
    assert_eq!(answered, Answered::Fetched { keys: 1, recovered: false });
    assert!(d.keys(100).is_some());
    // Refreshed before its 40 s are up, not after.
    assert!(!d.due(35_000));
    assert!(d.due(36_100));
    // Above the bound: the bound.
    d.on_answer(40_000, Algorithm::Ed25519, Some((200, Some(b"max-age=99999"), &set(&[ed("a")]))));
    assert!(!d.due(40_000 + 89_000));
    assert!(d.due(40_000 + 90_000));
    // Below it: the floor.
    d.on_answer(200_000, Algorithm::Ed25519, Some((200, Some(b"no-cache"), &set(&[ed("a")]))));
    assert!(!d.due(208_000));
    assert!(d.due(209_000));
}

#[test]
fn an_unknown_key_flood_refetches_once_per_interval() {
    let mut d = Directory::new(source());
    assert!(d.due(0));
    d.on_answer(0, Algorithm::Ed25519, Some((200, None, &set(&[ed("a")]))));
    let mut fetches = 0;
    let mut waits = 0;
    // 1,000 requests a second for a minute, each naming an unknown key.
    for now in (1_000..61_000).step_by(1) {
        if d.unknown_key(now) == UnknownKey::Wait {
            waits += 1;
        }
        if d.due(now) {
            fetches += 1;
            // Answered 50 ms later, still without the key.
            d.in_flight = Some(now);
        }
        if d.in_flight.is_some_and(|since| now >= since + 50) {
            d.on_answer(now, Algorithm::Ed25519, Some((200, None, &set(&[ed("a")]))));
        }
    }
    // At 1 s and 31 s: two in a minute (the background refresh is 90 s away).
    assert_eq!(fetches, 2);
    // Only requests while a fetch was asked for or under way waited.
    assert!(waits <= 2 * 51, "{waits}");
}

#[test]
fn a_failing_directory_keeps_its_last_keys_then_drops_them() {
    let mut d = Directory::new(source());
    assert!(d.due(0));
    d.on_answer(0, Algorithm::Ed25519, Some((200, Some(b"max-age=10"), &set(&[ed("a")]))));
    assert!(d.due(9_000));
    assert_eq!(d.on_answer(9_000, Algorithm::Ed25519, None), Answered::Failed { error: FetchError::NoAnswer, first: true });
    // Failing again: not the first (logged once).
    assert!(!d.due(9_500));
    assert!(d.due(19_000));
    let failed = d.on_answer(19_000, Algorithm::Ed25519, Some((503, None, b"")));
    assert_eq!(failed, Answered::Failed { error: FetchError::Status(503), first: false });
    for bad in [&b"<html>"[..], &[b' '; 5000][..]] {
        assert!(d.due(d.next_fetch));
        assert!(matches!(d.on_answer(d.next_fetch, Algorithm::Ed25519, Some((200, None, bad))), Answered::Failed { first: false, .. }));
    }
    // Kept until 10 s of freshness + 50 s of max_stale.
    assert!(d.keys(59_999).is_some());
    assert!(!d.drop_expired(59_999));
    assert!(d.keys(60_000).is_none());
    assert!(d.drop_expired(60_000));
    assert!(!d.drop_expired(60_001), "counted once");
    // Back: the new keys, and the recovery said.
    assert!(d.due(d.next_fetch.max(60_001)));
    assert_eq!(
        d.on_answer(61_000, Algorithm::Ed25519, Some((200, None, &set(&[ed("b")])))),
        Answered::Fetched { keys: 1, recovered: true }
    );
    assert_eq!(d.keys(61_000).unwrap()[0].0, "b");
}

#[test]
fn a_lost_answer_is_overdue_after_its_timeout() {
    let mut d = Directory::new(source());
    assert!(d.due(0));
    assert!(!d.overdue(3_000));
    assert!(d.overdue(3_001));
}

#[test]
fn the_follower_merges_directories_and_removed_keys_stop_verifying() {
    let mut f = Follower::new(Algorithm::Ed25519, &[source(), source()]);
    assert!(f.followed().is_empty());
    assert!(f.directories[0].due(0) && f.directories[1].due(0));
    f.directories[0].on_answer(0, Algorithm::Ed25519, Some((200, None, &set(&[ed("a"), ed("b")]))));
    f.directories[1].on_answer(0, Algorithm::Ed25519, Some((200, None, &set(&[ed("b"), ed("c")]))));
    f.remerge(0);
    let followed = f.followed();
    assert!(followed.key("a").is_some() && followed.key("b").is_some() && followed.key("c").is_some());
    // The first directory drops "a": it stops verifying at that answer.
    f.directories[0].in_flight = Some(1);
    f.directories[0].on_answer(1, Algorithm::Ed25519, Some((200, None, &set(&[ed("b")]))));
    f.remerge(1);
    assert!(f.followed().key("a").is_none());
    // A request still holding the old set keeps it (an Arc): the swap is whole.
    assert!(followed.key("a").is_some());
}

#[test]
fn reads_the_key_id_of_our_signature_only() {
    let lines = vec![b"sig1=(\"@method\");keyid=\"other\", wsgiproxy=(\"@method\");created=1;keyid=\"k-2\"".to_vec()];
    assert_eq!(signature_key_id(&lines).as_deref(), Some("k-2"));
    assert_eq!(signature_key_id(&[b"sig1=(\"@method\");keyid=\"x\"".to_vec()]), None);
    assert_eq!(signature_key_id(&[b"wsgiproxy=(\"@method\");keyid=1".to_vec()]), None);
    assert_eq!(signature_key_id(&[b"\xff garbage".to_vec()]), None);
}

#[test]
fn a_sender_publishes_the_public_half_of_every_key_its_receivers_then_read() {
    for (algorithm, jwk) in [
        (
            Algorithm::Ed25519,
            r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        ),
        (
            Algorithm::EcdsaP256Sha256,
            r#"{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","d":"870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE"}"#,
        ),
    ] {
        let private = || crate::asymmetric::parse_key(algorithm, jwk).unwrap();
        let ring = KeyRing::asymmetric(algorithm, vec![("new".into(), private()), ("old".into(), private())]).unwrap();
        let published = published_key_set(&ring).unwrap();
        assert!(!published.contains("\"d\""), "{published}");
        let read = parse_key_set(algorithm, published.as_bytes()).unwrap();
        assert_eq!(read.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["new", "old"]);
        // What the receiver reads verifies what the sender signs.
        let signature = ring.signing_key().unwrap().signature_of(b"message").unwrap();
        let followed = KeyRing::asymmetric(algorithm, read).unwrap();
        assert!(followed.key("new").unwrap().verifies(b"message", &signature));
    }
    let hmac = KeyRing::new(Algorithm::HmacSha256, &[("k".into(), b"0123456789abcdef".to_vec())]).unwrap();
    assert_eq!(published_key_set(&hmac), None);
}

/// Each fetch asks for a connection of its own: a kept-alive one stays on the filter
/// chain that accepted it, which after a sender's configuration push still serves the
/// old directory until it drains (tests/key_rotation.rs saw receivers refuse the new
/// key for as long as the test ran).
#[test]
fn a_fetch_is_never_answered_on_a_kept_alive_connection() {
    let source = source();
    let headers = source.request_headers();
    assert!(headers.contains(&("connection", "close")), "{headers:?}");
    assert!(headers.contains(&(":path", DEFAULT_PATH)));
    assert!(headers.contains(&("accept", ACCEPT)));
}
