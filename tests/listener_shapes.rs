//! Who the peer is, under every listener shape users run in front of the `app` and
//! `middleware` roles: a PROXY protocol listener filter (v1 text, v2 binary, IPv4 and
//! IPv6), `original_src`, and an internal listener. Both loaders must agree: the peer
//! is the connection's remote address as the listener filters left it (the client a
//! trusted balancer's PROXY header names, not the balancer), and where there is no IP
//! peer nothing is trusted by address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufReader, Write};
use std::time::Duration;

use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use support::*;

/// The load balancer, the one peer `trust_ips` names.
const BALANCER: &str = "127.0.0.1";
/// The client a PROXY header names.
const CLIENT: &str = "203.0.113.9";

/// What a trusted sender (the `app` role) would say; here a client forges it.
const FORGED: [(&str, &str); 3] =
    [("X-WSGIProxy-Version", "0.1"), ("X-Forwarded-Server", "forged.example"), ("X-WSGIProxy-Str-0", "REMOTE_USER admin")];

fn trusting_the_balancer() -> Value {
    json!({"role": "middleware", "trust_ips": [format!("{BALANCER}/32")], "keys": {"REMOTE_USER": "x-remote-user"}})
}

fn yaml(text: &str) -> Yaml {
    serde_yaml::from_str(text).unwrap()
}

/// The first listener takes a PROXY protocol header (v1 or v2) on each connection.
fn with_proxy_protocol(doc: &mut Yaml) {
    doc["static_resources"]["listeners"][0]["listener_filters"] = yaml(
        "- name: envoy.filters.listener.proxy_protocol
  typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol }",
    );
}

/// The first listener makes its upstream connections from each client's own address.
fn with_original_src(doc: &mut Yaml) {
    doc["static_resources"]["listeners"][0]["listener_filters"] = yaml(
        "- name: envoy.filters.listener.original_src
  typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc }",
    );
}

/// The roles behind an internal listener: the first listener passes each connection
/// (TCP proxy) to an internal listener with the shipped filter chain.
fn behind_an_internal_listener(doc: &mut Yaml) {
    let listeners = doc["static_resources"]["listeners"].as_sequence_mut().unwrap();
    let mut inner = listeners[0].clone();
    let m = inner.as_mapping_mut().unwrap();
    m.remove("address");
    m.insert("name".into(), "inner".into());
    m.insert("internal_listener".into(), yaml("{}"));
    listeners.push(inner);
    listeners[0]["filter_chains"][0]["filters"] = yaml(
        "- name: envoy.filters.network.tcp_proxy
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
    stat_prefix: outer
    cluster: inner",
    );
    doc["static_resources"]["clusters"].as_sequence_mut().unwrap().push(yaml(
        "name: inner
load_assignment:
  cluster_name: inner
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { envoy_internal_address: { server_listener_name: inner } } }",
    ));
    doc["bootstrap_extensions"] = yaml(
        "- name: envoy.bootstrap.internal_listener
  typed_config: { \"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener }",
    );
}

fn start(file: &str, cluster: &str, echo: &Echo, config: Value, edit: fn(&mut Yaml)) -> Envoy {
    Envoy::start(file, &Overrides { edit: Some(edit), ..Overrides::default().cluster(cluster, echo.port).plugin(config) })
}

fn v1(client: &str) -> Vec<u8> {
    let family = if client.contains(':') { "TCP6" } else { "TCP4" };
    let local = if client.contains(':') { "::1" } else { "127.0.0.1" };
    format!("PROXY {family} {client} {local} 5555 10000\r\n").into_bytes()
}

fn v2(client: &str) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    match client.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(ip) => {
            header.extend_from_slice(&[0x11, 0, 12]);
            header.extend_from_slice(&ip.octets());
            header.extend_from_slice(&[127, 0, 0, 1]);
        }
        std::net::IpAddr::V6(ip) => {
            header.extend_from_slice(&[0x21, 0, 36]);
            header.extend_from_slice(&ip.octets());
            header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    }
    header.extend_from_slice(&5555u16.to_be_bytes());
    header.extend_from_slice(&10000u16.to_be_bytes());
    header
}

/// One request from the balancer's address, behind `proxy_header` (empty: none).
fn through_balancer(port: u16, proxy_header: &[u8], headers: &[(&str, &str)]) -> Response {
    let mut raw = proxy_header.to_vec();
    raw.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: test.local\r\n");
    for (n, v) in headers {
        raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut stream = connect_from(BALANCER, port);
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(&raw).unwrap();
    read_response(&mut BufReader::new(stream))
}

/// Behind a PROXY-protocol listener, the middleware judges the client the header
/// names, not the balancer it trusts: a client's forged protocol headers are stripped.
fn middleware_judges_the_declared_client(version: &str, header: fn(&str) -> Vec<u8>) {
    let echo = Echo::start();
    let envoy = start("envoy/middleware.yaml", "app", &echo, trusting_the_balancer(), with_proxy_protocol);
    for client in [CLIENT, "2001:db8::9"] {
        let got = through_balancer(envoy.port, &header(client), &FORGED).received();
        assert_eq!(got.header("x-remote-user"), None, "{version}: a client behind the trusted balancer ({client}) was trusted");
        assert_eq!(got.header("host").as_deref(), Some("test.local"), "{version}: {client}");
        assert_eq!(got.header("x-forwarded-for").as_deref(), Some(client), "{version}");
    }
    // A PROXY header that names the trusted address is believed: the declared peer is
    // what is judged, both ways.
    let got = through_balancer(envoy.port, &header(BALANCER), &FORGED).received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("admin"), "{version}");
    assert_eq!(envoy.stat("wsgiproxy.middleware.untrusted"), 2, "{version}");
    assert_eq!(envoy.stat("wsgiproxy.middleware.trusted"), 1, "{version}");
    assert_eq!(envoy.stat("wsgiproxy.middleware.peer_unknown"), 0, "{version}");
}

#[test]
fn proxy_protocol_v1_the_middleware_judges_the_declared_client() {
    middleware_judges_the_declared_client("PROXY v1", v1);
}

#[test]
fn proxy_protocol_v2_the_middleware_judges_the_declared_client() {
    middleware_judges_the_declared_client("PROXY v2", v2);
}

#[test]
fn proxy_protocol_the_app_role_reports_the_declared_client() {
    let echo = Echo::start();
    let config = json!({"role": "app", "href": "http://backend.internal:8080/"});
    let envoy = start("envoy/app.yaml", "backend", &echo, config, with_proxy_protocol);
    for (version, header) in [("v1", v1(CLIENT)), ("v2", v2(CLIENT)), ("v2 IPv6", v2("2001:db8::9"))] {
        let got = through_balancer(envoy.port, &header, &[("X-Forwarded-For", "198.51.100.4")]).received();
        let expected = if version.ends_with("IPv6") { "2001:db8::9" } else { CLIENT };
        assert_eq!(got.header("x-forwarded-for").as_deref(), Some(expected), "PROXY {version}: the balancer reported as the client");
    }
}

#[test]
fn original_src_the_peer_is_the_client_socket() {
    // original_src changes the upstream connection's source, not who the downstream
    // peer is: each client is judged by its own address.
    let echo = Echo::start();
    let config = json!({"role": "middleware", "trust_ips": ["127.0.0.2/32"], "keys": {"REMOTE_USER": "x-remote-user"}});
    let envoy = start("envoy/middleware.yaml", "app", &echo, config, with_original_src);
    let got = request_from("127.0.0.3", envoy.port, "GET", "/x", &FORGED).received();
    assert_eq!(got.header("x-remote-user"), None);
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.3"));
    let got = request_from("127.0.0.2", envoy.port, "GET", "/x", &FORGED).received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("admin"));

    let config = json!({"role": "app", "href": "http://backend.internal:8080/"});
    let envoy = start("envoy/app.yaml", "backend", &echo, config, with_original_src);
    let got = request_from("127.0.0.3", envoy.port, "GET", "/", &[("X-Forwarded-For", "198.51.100.4")]).received();
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.3"));
}

/// One request on a connection left open: through an internal listener, a
/// `Connection: close` answer is reset before it reaches the client (Envoy 1.40).
fn kept_alive_from(source: &str, port: u16, headers: &[(&str, &str)]) -> Response {
    let mut raw = b"GET /x HTTP/1.1\r\nHost: test.local\r\n".to_vec();
    for (n, v) in headers {
        raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let mut stream = connect_from(source, port);
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(&raw).unwrap();
    read_response(&mut BufReader::new(stream))
}

#[test]
fn internal_listener_has_no_ip_peer_and_nothing_is_trusted_by_address() {
    let echo = Echo::start();
    let config = json!({"role": "middleware", "trust_ips": ["127.0.0.0/8", "::1/128"], "keys": {"REMOTE_USER": "x-remote-user"}});
    let mut envoy = start("envoy/middleware.yaml", "app", &echo, config, behind_an_internal_listener);
    for _ in 0..2 {
        let got = kept_alive_from("127.0.0.2", envoy.port, &FORGED).received();
        assert_eq!(got.header("x-remote-user"), None, "trusted on a connection with no IP peer");
        assert_eq!(got.header("x-forwarded-for"), None, "a client address made up where there is none");
    }
    assert_eq!(envoy.stat("wsgiproxy.middleware.peer_unknown"), 2);
    assert_eq!(envoy.stat("wsgiproxy.middleware.trusted"), 0);
    assert_eq!(envoy.stat("wsgiproxy.peer.unrecorded"), 2, "the peer filter says it recorded nothing");
    let log = envoy.stop_and_log();
    assert_eq!(log.matches("has no IP peer to record").count(), 1, "one warning:\n{log}");

    let config = json!({"role": "app", "href": "http://backend.internal:8080/"});
    let envoy = start("envoy/app.yaml", "backend", &echo, config, behind_an_internal_listener);
    let r = kept_alive_from("127.0.0.2", envoy.port, &[("X-Forwarded-For", "127.0.0.2")]);
    assert_eq!((r.status, r.header("x-wsgiproxy-error")), (500, Some("peer_unknown")), "{}", r.text());
}
