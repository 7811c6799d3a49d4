//! `bind_endpoint` in real Envoy: two replicas of a backend Envoy (the middleware
//! role) behind one cluster of the sending Envoy (the app role, signing in the
//! cluster's upstream filter once the load balancer has chosen the endpoint). A
//! request captured on its way to one replica is refused by the other, and accepted
//! once by the one it was signed for. Each replica listens on an address of its own
//! (127.0.0.2, 127.0.0.3), as replicas on their own hosts or pods do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use support::*;

const KEY: &str = "replica-shared-key-0123456789";

fn secret() -> Value {
    json!({"keys": [{"id": "k1", "value": KEY}]})
}

/// The sending Envoy (envoy/app.yaml) whose cluster `backend` holds `endpoints`, with
/// the same filter configuration run again as the cluster's upstream filter.
fn sender(endpoints: &[(&str, u16)]) -> Envoy {
    sender_with(vec![lb_endpoints(endpoints)], None, None)
}

/// One priority group of a cluster's endpoints.
fn lb_endpoints(endpoints: &[(&str, u16)]) -> Yaml {
    let list: Vec<Yaml> = endpoints
        .iter()
        .map(|(ip, port)| {
            serde_yaml::from_str(&format!("{{ endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }} }}"))
                .unwrap()
        })
        .collect();
    let mut group = serde_yaml::Mapping::new();
    group.insert("lb_endpoints".into(), Yaml::Sequence(list));
    Yaml::Mapping(group)
}

/// As [`sender`], with the cluster's endpoints in priority groups (`groups`, highest
/// first) and, when given, a retry policy on the route.
/// `more`: a last edit of the configuration.
fn sender_with(groups: Vec<Yaml>, retry_policy: Option<&'static str>, more: Option<YamlEdit>) -> Envoy {
    let mut overrides = Overrides::default().plugin(json!({
        "role": "app", "href": "http://internal:9000/", "secret": secret(), "bind_endpoint": true,
        "string_keys": [{"key": "REMOTE_USER", "value": "bob"}]
    }));
    overrides.edit_with = Some(Arc::new(move |doc: &mut Yaml| {
        let filter =
            hcm(doc)["http_filters"].as_sequence().unwrap().iter().find(|f| f["name"].as_str() == Some("wsgiproxy")).unwrap().clone();
        let cluster = &mut doc["static_resources"]["clusters"][0];
        let mut groups = groups.clone();
        for (priority, group) in groups.iter_mut().enumerate() {
            group["priority"] = Yaml::from(priority as u64);
        }
        cluster["load_assignment"]["endpoints"] = Yaml::Sequence(groups);
        let mut options: Yaml = serde_yaml::from_str(
            r#"{ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                 "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions,
                 explicit_http_config: { http_protocol_options: {} },
                 http_filters: [] } }"#,
        )
        .unwrap();
        let codec: Yaml = serde_yaml::from_str(
            r#"{ name: envoy.filters.http.upstream_codec,
                 typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec } }"#,
        )
        .unwrap();
        options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"] = Yaml::Sequence(vec![filter, codec]);
        cluster["typed_extension_protocol_options"] = options;
        if let Some(policy) = retry_policy {
            hcm(doc)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["retry_policy"] = serde_yaml::from_str(policy).unwrap();
        }
        if let Some(more) = &more {
            more(doc);
        }
    }));
    Envoy::start("envoy/app.yaml", &overrides)
}

/// A replica: the middleware role on `ip:port`, in front of `app_port` on loopback.
/// `reached_at`: the addresses senders reach it at, when that is not where it listens.
fn replica(ip: &'static str, port: u16, app_port: u16, reached_at: Option<String>) -> Envoy {
    let mut plugin = json!({
        "role": "middleware", "secret": secret(), "bind_endpoint": true, "keys": {"REMOTE_USER": "x-remote-user"}
    });
    if let Some(address) = reached_at {
        plugin["own_addresses"] = json!([address]);
    }
    let mut overrides = Overrides::default().cluster("app", app_port).plugin(plugin);
    overrides.edit_with = Some(Arc::new(move |doc: &mut Yaml| {
        let address = &mut doc["static_resources"]["listeners"][0]["address"]["socket_address"];
        address["address"] = Yaml::from(ip);
        address["port_value"] = Yaml::from(port);
    }));
    Envoy::start("envoy/middleware.yaml", &overrides)
}

/// A TCP relay on `listen` to `to` that keeps every byte clients send through it: an
/// eavesdropper on the wire (or a NAT) between the sender and a replica.
fn relay(listen: (&str, u16), to: (&'static str, u16)) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let listener = TcpListener::bind(listen).unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let Ok(mut server) = TcpStream::connect(to) else { continue };
            let (mut client_back, mut server_back) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_back, &mut client_back);
                let _ = client_back.shutdown(std::net::Shutdown::Both);
            });
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 || server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    kept.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    seen
}

/// Sends raw request bytes to `ip:port` on a new connection; the response.
fn send_raw(ip: &str, port: u16, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect((ip, port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(raw).unwrap();
    read_response(&mut BufReader::new(stream))
}

#[test]
fn a_request_captured_on_its_way_to_one_replica_is_refused_by_the_other() {
    let app = Echo::start_with(&["--name", "app"]);
    let (wire_a, port_a, port_b) = (free_port(), free_port(), free_port());
    // Replica A listens on 127.0.0.4 and is reached through a relay at 127.0.0.2 (the
    // address the sender's cluster names, which A lists as its own); replica B on
    // 127.0.0.3, reached directly (it checks the address each connection arrived on).
    let a = replica("127.0.0.4", port_a, app.port, Some(format!("127.0.0.2:{wire_a}")));
    let b = replica("127.0.0.3", port_b, app.port, None);
    let on_the_wire = relay(("127.0.0.2", wire_a), ("127.0.0.4", port_a));

    let edge = sender(&[("127.0.0.2", wire_a)]);
    let first = edge.get("/orders?id=7", &[]);
    assert_eq!(first.status, 200, "{}", first.text());
    let delivered = first.received();
    assert_eq!(delivered.header("x-remote-user").as_deref(), Some("bob"), "accepted by the replica it was signed for");
    assert_eq!(delivered.header("x-wsgiproxy-endpoint"), None, "the endpoint is the protocol's, not the backend's");
    let captured = on_the_wire.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&captured);
    assert!(text.contains(&format!("x-wsgiproxy-endpoint: 127.0.0.2:{wire_a}")), "{text}");
    assert!(text.contains("x-wsgiproxy-signature: "), "{text}");

    // Replayed byte for byte to the other replica: refused.
    let at_b = send_raw("127.0.0.3", port_b, &captured);
    assert_eq!((at_b.status, at_b.header("x-wsgiproxy-error")), (403, Some("wrong_endpoint")), "{}", at_b.text());
    assert_eq!(b.stat("wsgiproxy.middleware.rejected.wrong_endpoint"), 1);
    // And to the one it was for, again: refused, it was accepted once.
    let at_a = send_raw("127.0.0.2", wire_a, &captured);
    assert_eq!((at_a.status, at_a.header("x-wsgiproxy-error")), (403, Some("signature_replayed")), "{}", at_a.text());

    // Live traffic spread over both replicas by the sender's load balancer: each
    // request is signed for the replica it reaches, and accepted.
    let edge = sender(&[("127.0.0.2", wire_a), ("127.0.0.3", port_b)]);
    let before = [a.stat("wsgiproxy.middleware.verified"), b.stat("wsgiproxy.middleware.verified")];
    for i in 0..8 {
        let r = edge.get(&format!("/live/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.received().header("x-remote-user").as_deref(), Some("bob"));
    }
    for ((name, replica), before) in [("A", &a), ("B", &b)].into_iter().zip(before) {
        assert!(replica.stat("wsgiproxy.middleware.verified") > before, "replica {name} verified none of the live requests");
    }
    assert_eq!(edge.stat("wsgiproxy.app.signed"), 8, "signed once per attempt, in the cluster");
}

/// A server that answers every request 503 and keeps what it was sent.
fn failing_server(ip: &str) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            kept.lock().unwrap().extend_from_slice(&head);
            let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

/// A retry goes to another endpoint: it is signed anew, for that endpoint.
#[test]
fn a_retry_is_signed_again_for_the_endpoint_it_goes_to() {
    let app = Echo::start_with(&["--name", "app"]);
    let port_b = free_port();
    let b = replica("127.0.0.3", port_b, app.port, None);
    let (port_x, at_x) = failing_server("127.0.0.5");
    // The first attempt goes to the failing endpoint (priority 0), the retry to B.
    let retry = r#"{ retry_on: "5xx", num_retries: 1,
                     retry_priority: { name: envoy.retry_priorities.previous_priorities,
                       typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig,
                                       update_frequency: 1 } } }"#;
    let edge = sender_with(vec![lb_endpoints(&[("127.0.0.5", port_x)]), lb_endpoints(&[("127.0.0.3", port_b)])], Some(retry), None);
    let r = edge.get("/retried", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.received().header("x-remote-user").as_deref(), Some("bob"), "the retry was accepted by B");
    let first = String::from_utf8_lossy(&at_x.lock().unwrap()).into_owned();
    assert!(first.contains(&format!("x-wsgiproxy-endpoint: 127.0.0.5:{port_x}")), "the first attempt was signed for its endpoint: {first}");
    assert_eq!(edge.stat("wsgiproxy.app.signed"), 2, "one signature per attempt");
    assert_eq!(b.stat("wsgiproxy.middleware.verified"), 1);
}

/// The cluster's upstream filter signs only what the pre-routing pass prepared. Two
/// ways a client's request reaches the signing cluster without that pass, as users
/// configure them: a second listener (no `app` filter) routing to the same cluster,
/// and a route of the sender's own listener that disables the pre-routing filter (the
/// upstream instance named apart, so it still runs). Before, the forged protocol
/// headers were signed and the replica delivered `x-remote-user: admin`.
#[test]
fn a_request_that_skipped_the_pre_routing_pass_is_never_signed() {
    let app = Echo::start_with(&["--name", "app"]);
    let port_b = free_port();
    let b = replica("127.0.0.3", port_b, app.port, None);
    let bypass_port = free_port();
    let bypasses: YamlEdit = Arc::new(move |doc: &mut Yaml| {
        let options = &mut doc["static_resources"]["clusters"][0]["typed_extension_protocol_options"];
        options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"][0]["name"] = Yaml::from("wsgiproxy-sign");
        // A route of the sender's listener on which the pre-routing filter is off.
        let skip: Yaml = serde_yaml::from_str(
            r#"{ match: { prefix: "/skip" }, route: { cluster: backend },
                 typed_per_filter_config: { wsgiproxy: { "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true } } }"#,
        )
        .unwrap();
        hcm(doc)["route_config"]["virtual_hosts"][0]["routes"].as_sequence_mut().unwrap().insert(0, skip);
        // A second listener to the same cluster, with no app filter at all.
        let mut second = doc["static_resources"]["listeners"][0].clone();
        second["name"] = Yaml::from("bypass");
        second["address"]["socket_address"]["port_value"] = Yaml::from(bypass_port);
        let chain = &mut second["filter_chains"][0]["filters"];
        chain.as_sequence_mut().unwrap().retain(|f| f["name"].as_str() == Some("envoy.filters.network.http_connection_manager"));
        let http = &mut chain[0]["typed_config"];
        http["stat_prefix"] = Yaml::from("bypass");
        // Envoy's defaults: the client's X-Forwarded-For goes on as it came.
        let http_map = http.as_mapping_mut().unwrap();
        http_map.remove("use_remote_address");
        http_map.remove("xff_num_trusted_hops");
        http["http_filters"].as_sequence_mut().unwrap().retain(|f| f["name"].as_str() != Some("wsgiproxy"));
        http["route_config"]["virtual_hosts"][0]["routes"]
            .as_sequence_mut()
            .unwrap()
            .retain(|r| r["match"]["prefix"].as_str() == Some("/"));
        doc["static_resources"]["listeners"].as_sequence_mut().unwrap().push(second);
    });
    let edge = sender_with(vec![lb_endpoints(&[("127.0.0.3", port_b)])], None, Some(bypasses));

    // Through the pre-routing pass: prepared, then signed in the cluster, accepted.
    let ok = edge.get("/orders", &[]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.received().header("x-remote-user").as_deref(), Some("bob"));

    let forged = [("X-WSGIProxy-Str-0", "REMOTE_USER admin"), ("X-Script-Name", "/evil"), ("X-Forwarded-For", "6.6.6.6")];
    let verified = b.stat("wsgiproxy.middleware.verified");
    // (The sender's own listener appends the peer to X-Forwarded-For: not forged there.)
    for (how, port, path, headers) in [
        ("a second listener", bypass_port, "/orders", &forged[..]),
        ("a route without the pre-routing pass", edge.port, "/skip/orders", &forged[..2]),
    ] {
        let r = request(port, "GET", path, headers, b"");
        assert_eq!((r.status, r.header("x-wsgiproxy-error")), (500, Some("unprepared")), "{how}: {}", r.text());
    }
    assert_eq!(b.stat("wsgiproxy.middleware.verified"), verified, "the replica verified no forged request");
    assert_eq!(edge.stat("wsgiproxy.app.rejected.unprepared"), 2);
    assert_eq!(edge.stat("wsgiproxy.app.signed"), 1, "only the prepared request was signed");
}
