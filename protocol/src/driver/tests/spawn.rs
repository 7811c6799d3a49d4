use std::time::Duration;

use super::{assert_declared, config};
use crate::config::{Config, SpawnConfig};
use crate::counters;
use crate::driver::spawn::*;
use crate::host::HeaderMap;
use crate::reason::Reason;
use crate::spawn::{
    Grant, COLD_START_HEADER, ORIGINAL_DST_STATE, SIDECAR_COLD_START, SIDECAR_LEASE, SIDECAR_MARK, SIDECAR_UPSTREAM, SIDECAR_WAIT,
    UPSTREAM_HEADER, UPSTREAM_RECORD,
};
use crate::testing::{FakeAnswer, FakeHost, FakeLease};

const TICK: Duration = Duration::from_millis(250);
const APP: &str = "127.0.0.1:10001";
const SPOOF: &str = "10.9.9.9:22";

fn spawn() -> SpawnConfig {
    match config(
        r#"{"role":"spawn","app":"blog","sidecar_cluster":"wsgiproxy_sidecar","ensure_timeout_ms":15000,"report_interval_ms":1000}"#,
    ) {
        Config::Spawn(spawn) => spawn,
        _ => panic!("not a spawn configuration"),
    }
}

/// A request whose client tried to pick the upstream itself.
fn spoofed() -> FakeHost {
    FakeHost::with_request(&[(":method", "GET"), (":path", "/hello"), (UPSTREAM_HEADER, SPOOF), (UPSTREAM_HEADER, SPOOF)])
}

fn leased(host: &FakeHost) -> FakeLease {
    let lease = FakeLease::new(TICK);
    let grant = Grant { upstream: APP.into(), lease: Duration::from_secs(2), cold_start_ms: None };
    lease.lease.borrow_mut().grant(&grant, host.now);
    lease
}

fn granted(cold_start_ms: Option<&str>) -> FakeAnswer {
    let mut pairs = vec![(":status", "200"), (SIDECAR_MARK, "1"), (SIDECAR_UPSTREAM, APP), (SIDECAR_LEASE, "2000")];
    if let Some(ms) = cold_start_ms {
        pairs.push((SIDECAR_COLD_START, ms));
    }
    FakeAnswer::new(&pairs)
}

/// A stream asked the sidecar (callout 1) and is held.
fn held(host: &mut FakeHost, lease: &FakeLease) -> SpawnStream {
    let mut stream = SpawnStream::default();
    assert_eq!(stream.on_request_headers(&spawn(), lease, host), SpawnFlow::Held);
    stream
}

fn upstream_headers(host: &FakeHost) -> Vec<String> {
    host.values(HeaderMap::Request, UPSTREAM_HEADER)
}

/// Where the role sent the request: the object the cluster reads, and its own record
/// of it (both only ever `APP` here); and that no header names it.
fn sent_to_the_app(host: &FakeHost) {
    assert!(upstream_headers(host).is_empty(), "no header names the upstream: {:?}", upstream_headers(host));
    assert_eq!(host.filter_state, [(ORIGINAL_DST_STATE.to_string(), APP.to_string())]);
    assert_eq!(host.stream_state, [(UPSTREAM_RECORD.to_string(), APP.to_string())]);
}

#[test]
fn a_lease_hit_goes_on_with_the_roles_own_upstream() {
    let mut host = spoofed();
    let lease = leased(&host);
    let mut stream = SpawnStream::default();
    assert_eq!(stream.on_request_headers(&spawn(), &lease, &mut host), SpawnFlow::Continue);
    sent_to_the_app(&host);
    assert!(host.callouts.is_empty(), "no sidecar call under a lease");
    assert!(!stream.holds_request());
    assert_eq!((host.count_of(REQUESTS), host.count_of(LEASE_HITS), host.count_of(ENSURE_CALLS)), (1, 1, 0));
    assert_eq!(lease.lease.borrow().in_flight(), 1);

    stream.on_response_headers(&lease, &mut host);
    assert!(host.values(HeaderMap::Response, COLD_START_HEADER).is_empty(), "no cold start, no header");
    stream.on_done(&lease);
    stream.on_done(&lease);
    assert_eq!(lease.lease.borrow().in_flight(), 0, "finished once");
    assert_declared(&host, "spawn");
}

/// The Wasm filter before Envoy 1.40 in a callout's answer: the object cannot be set
/// directly; the role's record is left for Envoy's `set_filter_state` filter.
#[test]
fn a_destination_envoy_takes_only_as_the_roles_record_goes_on() {
    let mut host = spoofed();
    host.filter_state_refused = true;
    let lease = FakeLease::new(TICK);
    let mut stream = held(&mut host, &lease);
    stream.on_callout_done(&spawn(), &lease, &mut host, 1, Some(&granted(None)));
    assert_eq!((host.resumed, host.replies.len()), (1, 0));
    assert_eq!(host.stream_state, [(UPSTREAM_RECORD.to_string(), APP.to_string())]);
    assert!(upstream_headers(&host).is_empty());
    assert_eq!(lease.lease.borrow().in_flight(), 1);
}

/// Envoy took the destination neither way: the request is answered, never left to a
/// cluster that might read something a client chose; counted, and said once.
#[test]
fn a_destination_envoy_does_not_take_is_a_500_never_sent_on() {
    let lease = FakeLease::new(TICK);
    let mut host = spoofed();
    (host.filter_state_refused, host.stream_state_refused) = (true, true);
    let mut stream = held(&mut host, &lease);
    stream.on_callout_done(&spawn(), &lease, &mut host, 1, Some(&granted(None)));
    assert_eq!(host.resumed, 0, "not sent on");
    let [reply] = host.replies.as_slice() else { panic!("one reply: {:?}", host.replies) };
    assert_eq!((reply.status, reply.reason), (500, Reason::UpstreamUnset));
    assert_eq!(lease.lease.borrow().in_flight(), 0, "never in flight");
    // And under the lease that answer granted.
    host.next_request(&[(":path", "/again"), (UPSTREAM_HEADER, SPOOF)]);
    let mut warm = SpawnStream::default();
    assert_eq!(warm.on_request_headers(&spawn(), &lease, &mut host), SpawnFlow::Replied);
    assert!(upstream_headers(&host).is_empty(), "the client's copy is gone");
    assert_eq!(host.count_of(UPSTREAM_UNSET), 2);
    assert_eq!(host.warnings.len(), 1, "said once: {:?}", host.warnings);
    assert_eq!(lease.lease.borrow().in_flight(), 0);
    assert_declared(&host, "spawn");
}

#[test]
fn a_cold_start_asks_the_sidecar_and_holds_the_request() {
    let mut host = spoofed();
    let lease = FakeLease::new(TICK);
    let stream = held(&mut host, &lease);
    assert!(stream.holds_request(), "body and trailers wait too");
    assert!(upstream_headers(&host).is_empty(), "the client's copies are gone while it waits");
    assert!(host.filter_state.is_empty() && host.stream_state.is_empty(), "no destination before the sidecar answers");
    let [call] = host.callouts.as_slice() else { panic!("one callout: {:?}", host.callouts) };
    assert_eq!(call.cluster, "wsgiproxy_sidecar");
    assert_eq!(call.timeout, Duration::from_secs(15));
    let expected = [(":method", "POST"), (":path", "/v1/ensure/blog"), (":authority", "wsgiproxy-sidecar"), ("x-wsgiproxy-reporter", "r1")];
    assert_eq!(call.headers, expected.map(|(n, v)| (n.to_string(), v.to_string())));
    assert_eq!((host.count_of(REQUESTS), host.count_of(LEASE_HITS), host.count_of(ENSURE_CALLS)), (1, 0, 1));
    assert_eq!(lease.lease.borrow().in_flight(), 0, "not in flight before it goes on");
    assert!(host.replies.is_empty());
    assert_eq!(host.resumed, 0);
}

#[test]
fn a_grant_lets_the_request_go_on_and_says_how_long_it_waited() {
    let mut host = spoofed();
    let lease = FakeLease::new(TICK);
    let mut stream = held(&mut host, &lease);
    stream.on_callout_done(&spawn(), &lease, &mut host, 1, Some(&granted(Some("315"))));
    assert_eq!(host.resumed, 1);
    assert!(!stream.holds_request());
    sent_to_the_app(&host);
    assert_eq!(host.count_of(COLD_STARTS), 1);
    assert_eq!(lease.lease.borrow().in_flight(), 1);
    assert_eq!(lease.lease.borrow().usable(host.now + Duration::from_millis(1000)), Some(APP), "the next request has a lease");

    host.set_response(&[(":status", "200")]);
    stream.on_response_headers(&lease, &mut host);
    assert_eq!(host.values(HeaderMap::Response, COLD_START_HEADER), ["315"]);
    assert!(host.replies.is_empty() && host.warnings.is_empty());

    // The next request goes on under that lease.
    host.next_request(&[(":path", "/again")]);
    let mut warm = SpawnStream::default();
    assert_eq!(warm.on_request_headers(&spawn(), &lease, &mut host), SpawnFlow::Continue);
    assert_eq!(host.callouts.len(), 1);
    warm.on_response_headers(&lease, &mut host);
    assert!(host.values(HeaderMap::Response, COLD_START_HEADER).is_empty(), "a warm request waited for nothing");
    assert_declared(&host, "spawn");
}

#[test]
fn a_refusal_replies_503_with_the_sidecars_retry_after() {
    let mut host = spoofed();
    let lease = FakeLease::new(TICK);
    let mut stream = held(&mut host, &lease);
    let refused = FakeAnswer::new(&[(":status", "503"), (SIDECAR_MARK, "1"), ("retry-after", "8")]).with_body("the app exited");
    stream.on_callout_done(&spawn(), &lease, &mut host, 1, Some(&refused));
    let [reply] = host.replies.as_slice() else { panic!("one reply") };
    assert_eq!((reply.status, reply.reason), (503, Reason::AppUnavailable));
    assert_eq!(reply.headers, [("retry-after".to_string(), "8".to_string())]);
    assert!(reply.detail.ends_with("the app exited"), "{}", reply.detail);
    assert_eq!(host.count_of(UNAVAILABLE), 1);
    assert_eq!(host.resumed, 0);
    assert!(upstream_headers(&host).is_empty(), "nothing sent anywhere");
    assert!(!stream.holds_request());
    assert!(host.warnings.is_empty(), "the sidecar answered");
    stream.on_done(&lease);
    assert_eq!(lease.lease.borrow().in_flight(), 0);
    assert_declared(&host, "spawn");
}

#[test]
fn an_unreachable_sidecar_replies_503_and_warns_once_until_it_answers() {
    let lease = FakeLease::new(TICK);
    // No answer at all, then Envoy's own 503 (no sidecar mark).
    let mut host = spoofed();
    let mut stream = held(&mut host, &lease);
    stream.on_callout_done(&spawn(), &lease, &mut host, 1, None::<&FakeAnswer>);
    let mut again = spoofed();
    let mut second = held(&mut again, &lease);
    second.on_callout_done(&spawn(), &lease, &mut again, 1, Some(&FakeAnswer::new(&[(":status", "503")])));
    for host in [&host, &again] {
        let [reply] = host.replies.as_slice() else { panic!("one reply") };
        assert_eq!((reply.status, reply.reason), (503, Reason::SidecarUnreachable));
        assert_eq!(reply.headers, [("retry-after".to_string(), "1".to_string())]);
        assert_eq!(host.count_of(UNAVAILABLE), 1);
        assert_eq!(host.resumed, 0);
    }
    assert_eq!(
        host.warnings,
        ["wsgiproxy spawn: the sidecar for \"blog\" did not answer (cluster \"wsgiproxy_sidecar\") (logged once until the sidecar answers again)"]
    );
    assert!(again.warnings.is_empty(), "logged once");
    assert!(again.debug_lines.iter().any(|l| l.contains("did not answer")));

    let mut back = spoofed();
    let mut third = held(&mut back, &lease);
    third.on_callout_done(&spawn(), &lease, &mut back, 1, Some(&granted(None)));
    assert_eq!(back.infos, ["wsgiproxy spawn: the sidecar answers again"]);
    assert_eq!(back.resumed, 1);
}

#[test]
fn a_callout_the_host_refuses_replies_503_at_once() {
    let mut host = spoofed();
    host.callout_refusal = Some("cluster not found".into());
    let lease = FakeLease::new(TICK);
    let mut stream = SpawnStream::default();
    assert_eq!(stream.on_request_headers(&spawn(), &lease, &mut host), SpawnFlow::Replied);
    assert!(!stream.holds_request());
    assert_eq!(host.replies[0].reason, Reason::SidecarUnreachable);
    assert_eq!(host.count_of(ENSURE_CALLS), 0);
    assert_eq!(
        host.warnings,
        ["wsgiproxy spawn: cannot call the sidecar through cluster \"wsgiproxy_sidecar\": cluster not found (logged once until the sidecar answers again)"]
    );
    assert!(upstream_headers(&host).is_empty());
    assert_declared(&host, "spawn");
}

#[test]
fn only_the_answer_to_its_own_callout_counts() {
    let mut host = spoofed();
    let lease = FakeLease::new(TICK);
    let mut stream = held(&mut host, &lease);
    stream.on_callout_done(&spawn(), &lease, &mut host, 2, Some(&granted(None)));
    stream.on_callout_done(&spawn(), &lease, &mut host, 7, None::<&FakeAnswer>);
    assert!(stream.holds_request(), "still waiting");
    assert_eq!((host.resumed, host.replies.len()), (0, 0));
    assert!(upstream_headers(&host).is_empty());
    assert_eq!(lease.lease.borrow().usable(host.now), None, "another callout's grant is not taken");

    stream.on_callout_done(&spawn(), &lease, &mut host, 1, Some(&granted(None)));
    assert_eq!(host.resumed, 1);
    // An answer after that (the same id, once more) changes nothing.
    stream.on_callout_done(&spawn(), &lease, &mut host, 1, None::<&FakeAnswer>);
    assert_eq!((host.resumed, host.replies.len()), (1, 0));
}

#[test]
fn a_refused_connection_to_the_app_revokes_the_lease() {
    let mut host = spoofed();
    let lease = leased(&host);
    let mut stream = SpawnStream::default();
    let _ = stream.on_request_headers(&spawn(), &lease, &mut host);

    // Any other answer reads the status alone.
    host.set_response(&[(":status", "502")]);
    host.reads.clear();
    stream.on_response_headers(&lease, &mut host);
    assert_eq!(host.reads, ["header :status"]);
    assert!(lease.lease.borrow().usable(host.now).is_some());

    let details = "upstream_reset_before_response_started{remote_connection_failure}";
    host.properties.push((vec!["response".into(), "code_details".into()], details.as_bytes().to_vec()));
    host.set_response(&[(":status", "503")]);
    stream.on_response_headers(&lease, &mut host);
    assert_eq!(lease.lease.borrow().usable(host.now), None, "the next request asks the sidecar");
    assert_eq!(host.count_of(CONNECT_FAILURES), 1);
    assert_declared(&host, "spawn");

    // A 503 for another reason keeps the lease; a request answered here revokes nothing.
    let mut other = spoofed();
    let lease = leased(&other);
    let mut stream = SpawnStream::default();
    let _ = stream.on_request_headers(&spawn(), &lease, &mut other);
    other.properties.push((vec!["response".into(), "code_details".into()], b"via_upstream".to_vec()));
    other.set_response(&[(":status", "503")]);
    stream.on_response_headers(&lease, &mut other);
    assert!(lease.lease.borrow().usable(other.now).is_some());
    let mut refused = spoofed();
    refused.callout_refusal = Some("refused".into());
    refused.properties.push((vec!["response".into(), "code_details".into()], details.as_bytes().to_vec()));
    refused.set_response(&[(":status", "503")]);
    let cold = FakeLease::new(TICK);
    let mut stream = SpawnStream::default();
    let _ = stream.on_request_headers(&spawn(), &cold, &mut refused);
    stream.on_response_headers(&cold, &mut refused);
    assert_eq!(refused.count_of(CONNECT_FAILURES), 0, "never sent to the app");
}

#[test]
fn reports_go_when_due_and_their_answers_renew_or_revoke_the_lease() {
    let mut host = FakeHost::default();
    let lease = leased(&host);
    assert_eq!(send_report(&spawn(), &lease, &mut host), None, "nothing owed");
    assert!(host.callouts.is_empty());

    let mut stream = SpawnStream::default();
    let _ = stream.on_request_headers(&spawn(), &lease, &mut spoofed());
    let sent_at = host.now + Duration::from_secs(1);
    host.now = sent_at;
    let id = send_report(&spawn(), &lease, &mut host);
    assert_eq!(id, Some(1));
    let [call] = host.callouts.as_slice() else { panic!("one report") };
    assert_eq!((call.cluster.as_str(), call.timeout), ("wsgiproxy_sidecar", REPORT_TIMEOUT));
    assert_eq!(call.header(":path"), Some("/v1/activity/blog"));
    assert_eq!(call.header(":authority"), Some("wsgiproxy-sidecar"));
    assert_eq!(call.header("x-wsgiproxy-reporter"), Some("r1"));
    assert_eq!((call.header("x-wsgiproxy-started"), call.header("x-wsgiproxy-in-flight")), (Some("1"), Some("1")));
    assert_eq!(host.count_of(REPORTS), 1);
    assert_eq!(send_report(&spawn(), &lease, &mut host), None, "one report at a time");

    // Renewed: the lease now runs 2 s from when the report was sent, past the first one's end.
    host.now += Duration::from_millis(300);
    on_report_answer(&spawn(), &lease, &mut host, Some(&granted(None)));
    assert_eq!(lease.lease.borrow().usable(sent_at + Duration::from_millis(1200)), Some(APP));
    assert_eq!(lease.lease.borrow().usable(sent_at + Duration::from_millis(1500)), None);
    assert!(host.warnings.is_empty());

    // Undelivered (Envoy's own 503): the lease is revoked, and that is news once.
    host.now += Duration::from_secs(2);
    assert_eq!(send_report(&spawn(), &lease, &mut host), Some(2));
    on_report_answer(&spawn(), &lease, &mut host, Some(&FakeAnswer::new(&[(":status", "503")])));
    assert_eq!(lease.lease.borrow().usable(host.now), None);
    assert_eq!(
        host.warnings,
        ["wsgiproxy spawn: an activity report did not reach the sidecar (logged once until the sidecar answers again)"]
    );

    // A report the host cannot send is undelivered at once, and keeps its count.
    host.now += Duration::from_secs(2);
    host.callout_refusal = Some("cluster not found".into());
    assert_eq!(send_report(&spawn(), &lease, &mut host), None);
    assert_eq!(host.warnings.len(), 1, "still failing: at debug level");
    assert!(host.debug_lines.iter().any(|l| l.contains("cannot call the sidecar through cluster")));
    host.callout_refusal = None;
    host.now += Duration::from_secs(2);
    assert_eq!(send_report(&spawn(), &lease, &mut host), Some(3));
    on_report_answer(&spawn(), &lease, &mut host, Some(&FakeAnswer::new(&[(":status", "409"), (SIDECAR_MARK, "1")])));
    assert_eq!(host.infos, ["wsgiproxy spawn: the sidecar answers again"]);
    assert_eq!(lease.lease.borrow().usable(host.now), None, "not ready: no lease");
    assert_declared(&host, "spawn");
}

#[test]
fn the_drivers_counters_are_the_ones_the_loaders_declare() {
    let counted = [REQUESTS, LEASE_HITS, ENSURE_CALLS, COLD_STARTS, UNAVAILABLE, REPORTS, CONNECT_FAILURES, WAITING_PAGES, UPSTREAM_UNSET];
    assert_eq!(counters::spawn::ALL, counted);
}

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

fn spawn_with(page: &str) -> SpawnConfig {
    let json = format!(r#"{{"role":"spawn","app":"blog","sidecar_cluster":"wsgiproxy_sidecar","ensure_timeout_ms":15000{page}}}"#);
    match config(&json) {
        Config::Spawn(spawn) => spawn,
        _ => panic!("not a spawn configuration"),
    }
}

/// The wait the stream asked the sidecar for (callout 1), if any.
fn asked_wait(host: &FakeHost) -> Option<String> {
    host.callouts.first()?.header(SIDECAR_WAIT).map(str::to_string)
}

#[test]
fn a_browser_asks_for_a_short_wait_and_gets_the_page_while_the_app_starts() {
    let config = spawn_with(r#","waiting_page":{"after_ms":700,"title":"Blog","text":"Warming up"}"#);
    let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", "/"), ("accept", BROWSER)]);
    let lease = FakeLease::new(TICK);
    let mut stream = SpawnStream::default();
    assert_eq!(stream.on_request_headers(&config, &lease, &mut host), SpawnFlow::Held);
    assert_eq!(asked_wait(&host).as_deref(), Some("700"));

    let starting = FakeAnswer::new(&[(":status", "202"), (SIDECAR_MARK, "1")]);
    stream.on_callout_done(&config, &lease, &mut host, 1, Some(&starting));
    let [reply] = host.replies.as_slice() else { panic!("one reply: {:?}", host.replies) };
    assert_eq!((reply.status, reply.reason), (503, Reason::AppStarting));
    assert!(reply.body().contains("<title>Blog</title>") && reply.body().contains("Warming up"), "{}", reply.body());
    assert!(reply.headers.contains(&("retry-after".into(), "2".into())), "{:?}", reply.headers);
    assert_eq!((host.count_of(WAITING_PAGES), host.count_of(UNAVAILABLE)), (1, 0));
    assert_eq!(host.resumed, 0, "the request does not go on");
    assert_eq!(lease.lease.borrow().in_flight(), 0, "nothing sent to the app");
    assert_declared(&host, "spawn");
}

#[test]
fn api_clients_posts_and_a_disabled_page_wait_for_the_start() {
    let cases = [
        (spawn_with(""), vec![(":method", "GET"), ("accept", "application/json")]),
        (spawn_with(""), vec![(":method", "GET")]),
        (spawn_with(""), vec![(":method", "POST"), ("accept", BROWSER)]),
        (spawn_with(r#","waiting_page":{"enabled":false}"#), vec![(":method", "GET"), ("accept", BROWSER)]),
    ];
    for (config, request) in cases {
        let mut host = FakeHost::with_request(&request);
        let lease = FakeLease::new(TICK);
        let mut stream = SpawnStream::default();
        assert_eq!(stream.on_request_headers(&config, &lease, &mut host), SpawnFlow::Held);
        assert_eq!(asked_wait(&host), None, "{request:?}: a long poll, as before");
        // A sidecar that answers 202 anyway is not waited for: a plain 503.
        stream.on_callout_done(&config, &lease, &mut host, 1, Some(&FakeAnswer::new(&[(":status", "202"), (SIDECAR_MARK, "1")])));
        let [reply] = host.replies.as_slice() else { panic!("one reply") };
        assert_eq!((reply.status, reply.reason, reply.page.is_some()), (503, Reason::AppStarting, false), "{request:?}");
        assert_eq!((host.count_of(WAITING_PAGES), host.count_of(UNAVAILABLE)), (0, 1));
    }
}

#[test]
fn a_browser_whose_app_is_ready_in_time_goes_on() {
    let config = spawn_with("");
    let mut host = FakeHost::with_request(&[(":method", "GET"), (":path", "/"), ("accept", BROWSER)]);
    let lease = FakeLease::new(TICK);
    let mut stream = SpawnStream::default();
    assert_eq!(stream.on_request_headers(&config, &lease, &mut host), SpawnFlow::Held);
    assert_eq!(asked_wait(&host).as_deref(), Some("1000"), "the default wait");
    stream.on_callout_done(&config, &lease, &mut host, 1, Some(&granted(Some("300"))));
    assert!(host.replies.is_empty() && host.resumed == 1);
    sent_to_the_app(&host);
}

#[test]
fn waiting_page_settings_are_checked() {
    let bad = [
        (r#","waiting_page":{"after_ms":15000}"#, "waiting_page.after_ms"),
        (r#","waiting_page":{"refresh_seconds":0}"#, "waiting_page.refresh_seconds"),
        (r#","waiting_page":{"title":""}"#, "waiting_page.title"),
        (r#","waiting_page":{"title":"a\nb"}"#, "waiting_page.title"),
        (r#","waiting_page":{"text":"a\u0007"}"#, "waiting_page.text"),
        (r#","waiting_page":{"color":"red"}"#, "color"),
    ];
    for (page, field) in bad {
        let json = format!(r#"{{"role":"spawn","app":"blog","sidecar_cluster":"s","ensure_timeout_ms":15000{page}}}"#);
        let error = crate::config::parse(json.as_bytes(), &|_| None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(field), "{page}: {error}");
    }
}
