//! The `exact` role with envoy/exact.yaml: the upstream receives the request exactly
//! as the client sent it; destinations outside `allow_hosts` are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;
use support::*;

fn exact(allow: &[String]) -> Envoy {
    Envoy::start("envoy/exact.yaml", &Overrides::default().plugin(json!({"role": "exact", "allow_hosts": allow})))
}

#[test]
fn the_request_arrives_as_sent() {
    let echo = Echo::start();
    let host = format!("127.0.0.1:{}", echo.port);
    let envoy = exact(std::slice::from_ref(&host));
    let sent = [
        ("Host", host.as_str()),
        ("User-Agent", "exact-test/1"),
        ("X-Custom", "a, b"),
        ("X-Custom", "c"),
        ("Accept", "text/plain"),
        ("Cookie", "sid=1"),
    ];
    let got = request(envoy.port, "PUT", "/some/path;p?q=1&r=%2F", &sent, b"the body").received();
    assert_eq!(got.method(), "PUT");
    assert_eq!(got.uri(), "/some/path;p?q=1&r=%2F");
    assert_eq!(got.body(), "the body");
    let mut expected: Vec<(String, String)> = sent.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.to_string())).collect();
    expected.push(("content-length".into(), "8".into()));
    let mut received: Vec<(String, String)> = got.0["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
        .collect();
    expected.sort();
    received.sort();
    assert_eq!(received, expected, "nothing added, nothing lost (only the hop-by-hop Connection header is consumed)");
}

#[test]
fn client_sent_forwarding_headers_pass_untouched() {
    let echo = Echo::start();
    let host = format!("127.0.0.1:{}", echo.port);
    let envoy = exact(std::slice::from_ref(&host));
    let got = envoy
        .get("/", &[("Host", &host), ("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "1.2.3.4"), ("X-Request-Id", "abc")])
        .received();
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("1.2.3.4"));
    assert_eq!(got.header("x-request-id").as_deref(), Some("abc"));
    let got = envoy.get("/", &[("Host", &host)]).received();
    for added in ["x-forwarded-proto", "x-forwarded-for", "x-request-id", "x-envoy-expected-rq-timeout-ms", "via"] {
        assert_eq!(got.header(added), None, "{added} was added");
    }
}

#[test]
fn not_an_open_proxy() {
    let echo = Echo::start();
    let allowed = format!("127.0.0.1:{}", echo.port);
    let envoy = exact(&[allowed, "*:*".into()]);
    for host in ["127.0.0.2:80".to_string(), format!("localhost:{}", echo.port), "169.254.169.254".into(), "10.0.0.1:8080".into()] {
        let r = envoy.get("/", &[("Host", &host)]);
        assert_eq!(r.status, 403, "{host}");
        assert_eq!(r.header("x-wsgiproxy-error"), Some("destination_not_allowed"));
        assert!(r.text().contains(&host), "{}", r.text());
    }
    assert_eq!(envoy.stat("wsgiproxy.exact.rejected.destination_not_allowed"), 4);
}

#[test]
fn a_name_is_judged_by_the_address_it_resolves_to() {
    // Every name resolves to 127.0.0.1 here, as a hostile DNS record could.
    let echo = Echo::start();
    let dns = FakeDns::start();
    let listed = format!("listed.test:{}", echo.port);
    let o = Overrides { dns: Some(dns.port), ..Overrides::default() }.plugin(json!({"role": "exact", "allow_hosts": ["*:*", listed]}));
    let envoy = Envoy::start("envoy/exact.yaml", &o);
    // A listed name is trusted as listed: it reaches the loopback backend.
    let r = envoy.get("/", &[("Host", &listed)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"].as_array().unwrap().iter().find(|h| h[0] == "host").unwrap()[1], listed.as_str());
    // A name allowed only by "*" must resolve to a public address: this one is refused
    // after DNS, before any connection.
    let rebound = format!("rebind.test:{}", echo.port);
    let r = envoy.get("/", &[("Host", &rebound)]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("x-wsgiproxy-error"), Some("destination_not_allowed"));
    assert!(r.text().contains("resolves to 127.0.0.1"), "{}", r.text());
    assert_eq!(envoy.stat("wsgiproxy.exact.resolved_checks"), 2);
    assert_eq!(envoy.stat("wsgiproxy.exact.rejected.destination_not_allowed"), 1);
}

#[test]
fn an_unreachable_destination_is_a_502_naming_it() {
    let dead = free_port();
    let host = format!("127.0.0.1:{dead}");
    let envoy = exact(&[host.clone(), "no-such-host.invalid:80".into()]);
    let r = envoy.get("/", &[("Host", &host)]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains(&host), "{}", r.text());
    let r = envoy.get("/", &[("Host", "no-such-host.invalid")]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("no-such-host.invalid"), "{}", r.text());
}

#[test]
fn allow_hosts_is_required() {
    let log = Envoy::start_refused("envoy/exact.yaml", &Overrides::default().plugin(json!({"role": "exact", "allow_hosts": []})));
    assert!(log.contains("field `allow_hosts`: must list"), "{log}");
}

/// The DNS answers of the names in [`several_addresses`]: 1.2.3.4 (public, and
/// refusing: nothing listens there) then 10.9.9.9 (private, where a service listens).
fn mixed_and_private_names() -> FakeDns {
    let (public, private) = (Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(10, 9, 9, 9));
    FakeDns::start_with(&[("mixed.test", &[public, private]), ("private.test", &[private]), ("listed.test", &[public, private])])
}

/// A name answering a public address that refuses connections, then a private one.
/// Envoy gives the forward-proxy host every address and falls back to the next when a
/// connection fails: the check must judge the address connected to, not the first
/// answer. All in a network namespace of the test's own, so nothing leaves the machine.
#[test]
fn a_name_with_several_addresses_never_reaches_a_private_one() {
    in_own_network_namespace(&["1.2.3.4/32", "10.9.9.9/32"], || {
        let private = Recorder::start("10.9.9.9", "the private service");
        let port = private.port();
        let dns = mixed_and_private_names();
        let listed = format!("listed.test:{port}");
        let o = Overrides { dns: Some(dns.port), ..Overrides::default() }.plugin(json!({"role": "exact", "allow_hosts": ["*:*", listed]}));
        let envoy = Envoy::start("envoy/exact.yaml", &o);
        let mixed = format!("mixed.test:{port}");
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let r = envoy.get("/", &[("Host", &mixed)]);
            assert!(r.status == 403 || r.status == 502, "{mixed} was answered {}: {}", r.status, r.text());
            if r.status == 403 {
                assert!(r.text().contains("resolves to 10.9.9.9"), "{}", r.text());
            }
            statuses.push(r.status);
        }
        assert!(statuses.contains(&403), "the private address was never judged: {statuses:?}");
        // The same name with the private address alone: the documented 403.
        let r = envoy.get("/", &[("Host", &format!("private.test:{port}"))]);
        assert_eq!(r.status, 403, "{}", r.text());
        eprintln!("{mixed}: {statuses:?}; the private service accepted {} connections", private.accepted());
        assert_eq!(private.received(), 0, "the private service received bytes ({} connections)", private.accepted());
        // A name listed by name is trusted as listed, wherever it resolves: it gets there.
        let r = (0..4).map(|_| envoy.get("/", &[("Host", &listed)])).find(|r| r.status == 200).expect("the listed name never got through");
        assert_eq!(r.text(), "reached the private service\n");
    });
}

/// What a refused destination gets. Refused before routing (a private address as the
/// Host): nothing, not even a connection. Refused once DNS has answered: Envoy has
/// already asked its pool for a connection (it does before the cluster's filters
/// run), so a TCP handshake may happen, but no byte is sent on it, and the pool's
/// idle timeout closes it.
#[test]
fn a_refused_destination_gets_no_byte() {
    in_own_network_namespace(&["10.9.9.9/32"], || {
        let private = Recorder::start("10.9.9.9", "the private service");
        let port = private.port();
        let dns = mixed_and_private_names();
        let mut o = Overrides { dns: Some(dns.port), ..Overrides::default() }.plugin(json!({"role": "exact", "allow_hosts": ["*:*"]}));
        o.edit = Some(|doc| {
            let cluster = &mut doc["static_resources"]["clusters"][0];
            assert_eq!(cluster["name"].as_str(), Some("exact_destination"));
            let options = &mut cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
            let idle = &mut options["common_http_protocol_options"]["idle_timeout"];
            assert_eq!(idle.as_str(), Some("60s"), "the shipped cluster closes idle connections");
            *idle = "1s".into();
        });
        let envoy = Envoy::start("envoy/exact.yaml", &o);
        let literal = format!("10.9.9.9:{port}");
        let r = envoy.get("/", &[("Host", &literal)]);
        assert_eq!(r.status, 403, "{}", r.text());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(private.accepted(), 0, "{literal} was refused before routing, yet connected to");
        let r = envoy.get("/", &[("Host", &format!("private.test:{port}"))]);
        assert_eq!(r.status, 403, "{}", r.text());
        wait_until("Envoy closes the connections it opened", Duration::from_secs(10), || private.closed() == private.accepted());
        eprintln!("private.test: the private service accepted {} connections, all closed", private.accepted());
        assert_eq!(private.received(), 0, "the private service received bytes");
    });
}
