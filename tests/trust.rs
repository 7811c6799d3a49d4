//! Trust that no client can forge, in every connection-manager configuration users
//! run: Envoy's defaults, `use_remote_address` with 0 and 1 trusted hops,
//! `skip_xff_append`, an Istio-shaped sidecar inbound hop (mTLS with SPIFFE
//! certificates, `use_remote_address: false`, XFCC `SANITIZE_SET`) and an
//! Istio-shaped ingress gateway. Each client has its own TCP peer address
//! (127.0.0.2 is the trusted sender, 127.0.0.3 the attacker).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use support::*;

const TRUSTED: &str = "127.0.0.2";
const ATTACKER: &str = "127.0.0.3";

/// Every header a client might write to pass as the trusted sender.
const FORGERIES: [(&str, &str); 6] = [
    ("X-Forwarded-For", "127.0.0.2"),
    ("X-Envoy-External-Address", "127.0.0.2"),
    ("Forwarded", "for=127.0.0.2;proto=https"),
    ("X-Forwarded-Client-Cert", "By=spiffe://cluster.local/ns/backend/sa/app;URI=spiffe://cluster.local/ns/edge/sa/gateway"),
    ("X-Real-IP", "127.0.0.2"),
    ("X-Client-IP", "127.0.0.2"),
];

/// What a trusted sender (the `app` role) would say.
const PROTOCOL: [(&str, &str); 3] =
    [("X-WSGIProxy-Version", "0.1"), ("X-Forwarded-Server", "victim.example"), ("X-WSGIProxy-Str-0", "REMOTE_USER admin")];

fn by_address() -> Value {
    json!({"role": "middleware", "trust_ips": [format!("{TRUSTED}/32")], "keys": {"REMOTE_USER": "x-remote-user"}})
}

// ------------------------------------------------------------ connection managers

/// An edit that sets up the listener's connection manager as a user would.
type ConnectionManager = fn(&mut Yaml);

fn set(doc: &mut Yaml, field: &str, value: Yaml) {
    hcm(doc).as_mapping_mut().unwrap().insert(Yaml::from(field), value);
}

/// The connection manager as a new user leaves it: only what routing needs.
fn envoy_defaults(doc: &mut Yaml) {
    let hcm = hcm(doc).as_mapping_mut().unwrap();
    for field in [
        "use_remote_address",
        "xff_num_trusted_hops",
        "skip_xff_append",
        "normalize_path",
        "merge_slashes",
        "path_with_escaped_slashes_action",
        "common_http_protocol_options",
    ] {
        hcm.remove(field);
    }
}

fn remote_address_0_hops(doc: &mut Yaml) {
    envoy_defaults(doc);
    set(doc, "use_remote_address", Yaml::from(true));
    set(doc, "xff_num_trusted_hops", Yaml::from(0));
}

fn remote_address_1_hop(doc: &mut Yaml) {
    envoy_defaults(doc);
    set(doc, "use_remote_address", Yaml::from(true));
    set(doc, "xff_num_trusted_hops", Yaml::from(1));
}

fn skip_xff_append(doc: &mut Yaml) {
    envoy_defaults(doc);
    set(doc, "skip_xff_append", Yaml::from(true));
}

/// An Istio ingress gateway behind one load balancer (`numTrustedProxies: 1`):
/// Istio's gateway sets `use_remote_address`, trusts that many hops, sanitises
/// XFCC and lets underscore headers through.
fn istio_gateway(doc: &mut Yaml) {
    remote_address_1_hop(doc);
    set(doc, "forward_client_cert_details", Yaml::from("SANITIZE_SET"));
    set(doc, "normalize_path", Yaml::from(true));
    set(doc, "path_with_escaped_slashes_action", Yaml::from("KEEP_UNCHANGED"));
}

/// The middleware's listener without the `peer` network filter.
fn without_peer_filter(doc: &mut Yaml) {
    let filters = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"].as_sequence_mut().unwrap();
    filters.retain(|f| f["name"].as_str() != Some("wsgiproxy-peer"));
}

/// Envoy's defaults, and no `peer` network filter.
fn defaults_without_peer(doc: &mut Yaml) {
    envoy_defaults(doc);
    without_peer_filter(doc);
}

fn start_middleware(echo: &Echo, config: Value, edit: fn(&mut Yaml)) -> Envoy {
    Envoy::start("envoy/middleware.yaml", &Overrides { edit: Some(edit), ..Overrides::default().cluster("app", echo.port).plugin(config) })
}

fn with(extra: &[(&'static str, &'static str)], base: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    extra.iter().chain(base).copied().collect()
}

/// In one connection-manager configuration: forgeries from the attacker, one at a
/// time and all at once, never yield trust; the trusted peer's headers are believed.
fn forgeries_never_trusted(name: &str, edit: fn(&mut Yaml)) {
    let echo = Echo::start();
    let envoy = start_middleware(&echo, by_address(), edit);
    let mut sent = 0;
    for forged in FORGERIES.iter().map(|f| vec![*f]).chain([FORGERIES.to_vec()]) {
        let got = request_from(ATTACKER, envoy.port, "GET", "/x", &with(&forged, &PROTOCOL)).received();
        sent += 1;
        assert_eq!(got.header("x-remote-user"), None, "{name}: {forged:?} made the attacker trusted");
        assert_eq!(got.header("host").as_deref(), Some("test.local"), "{name}: {forged:?}");
        // What the backend is told about the client is the TCP peer, whatever was forged.
        assert_eq!(got.header("x-forwarded-for").as_deref(), Some(ATTACKER), "{name}: {forged:?}");
        for competing in ["x-envoy-external-address", "forwarded", "x-real-ip", "x-client-ip"] {
            assert_eq!(got.header(competing), None, "{name}: {competing} reached the backend");
        }
    }
    let got = request_from(TRUSTED, envoy.port, "GET", "/x", &PROTOCOL).received();
    assert_eq!(got.header("x-remote-user").as_deref(), Some("admin"), "{name}: the trusted peer is not believed");
    assert_eq!(got.header("host").as_deref(), Some("victim.example"), "{name}");
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some(TRUSTED), "{name}");
    // The trusted sender itself can say who its client was.
    let got = request_from(TRUSTED, envoy.port, "GET", "/x", &with(&[("X-Forwarded-For", "198.51.100.4")], &PROTOCOL)).received();
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("198.51.100.4"), "{name}");
    assert_eq!(envoy.stat("wsgiproxy.middleware.untrusted"), sent, "{name}");
    assert_eq!(envoy.stat("wsgiproxy.middleware.trusted"), 2, "{name}");
    assert_eq!(envoy.stat("wsgiproxy.middleware.peer_unknown"), 0, "{name}");
}

#[test]
fn envoy_defaults_do_not_let_x_forwarded_for_buy_trust() {
    forgeries_never_trusted("Envoy defaults", envoy_defaults);
}

#[test]
fn use_remote_address_with_0_trusted_hops() {
    forgeries_never_trusted("use_remote_address, 0 hops", remote_address_0_hops);
}

#[test]
fn use_remote_address_with_1_trusted_hop() {
    forgeries_never_trusted("use_remote_address, 1 hop", remote_address_1_hop);
}

#[test]
fn skip_xff_append_alone() {
    forgeries_never_trusted("skip_xff_append", skip_xff_append);
}

#[test]
fn istio_shaped_ingress_gateway() {
    forgeries_never_trusted("Istio ingress gateway", istio_gateway);
}

#[test]
fn shipped_middleware_config() {
    forgeries_never_trusted("envoy/middleware.yaml", |_| {});
}

#[test]
fn without_the_peer_record_nothing_is_trusted_by_address() {
    let echo = Echo::start();
    let mut envoy = start_middleware(&echo, by_address(), defaults_without_peer);
    for source in [TRUSTED, ATTACKER] {
        let got = request_from(source, envoy.port, "GET", "/x", &with(&FORGERIES, &PROTOCOL)).received();
        assert_eq!(got.header("x-remote-user"), None, "{source} trusted without a TCP peer record");
        // Nothing says who the client is: no X-Forwarded-For rather than a forged one.
        assert_eq!(got.header("x-forwarded-for"), None);
    }
    assert_eq!(envoy.stat("wsgiproxy.middleware.peer_unknown"), 2);
    assert_eq!(envoy.stat("wsgiproxy.middleware.trusted"), 0);
    let log = envoy.stop_and_log();
    assert_eq!(log.matches("the TCP peer is unknown").count(), 1, "one warning, not one per request:\n{log}");

    // `client_address: envoy` describes untrusted requests by Envoy's own computed
    // address, but still trusts nobody by it.
    let mut config = by_address();
    config["client_address"] = json!("envoy");
    let envoy = start_middleware(&echo, config, defaults_without_peer);
    let got = request_from(ATTACKER, envoy.port, "GET", "/x", &with(&[("X-Forwarded-For", TRUSTED)], &PROTOCOL)).received();
    assert_eq!(got.header("x-remote-user"), None);
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some(TRUSTED), "Envoy's defaults take the client's X-Forwarded-For");
}

// ------------------------------------------------------------ the app role

fn start_app(echo: &Echo, config: Value, edit: fn(&mut Yaml)) -> Envoy {
    Envoy::start("envoy/app.yaml", &Overrides { edit: Some(edit), ..Overrides::default().cluster("backend", echo.port).plugin(config) })
}

fn app_config(client_address: Option<&str>) -> Value {
    let mut config = json!({"role": "app", "href": "http://backend.internal:8080/"});
    if let Some(choice) = client_address {
        config["client_address"] = json!(choice);
    }
    config
}

/// What the app role sends as X-Forwarded-For when a client at `source` sends
/// `X-Forwarded-For: 203.0.113.5, 198.51.100.4`.
fn app_sends(envoy: &Envoy, source: &str) -> Option<String> {
    let got = request_from(source, envoy.port, "GET", "/", &[("X-Forwarded-For", "203.0.113.5, 198.51.100.4")]).received();
    got.header("x-forwarded-for")
}

#[test]
fn app_role_sends_the_tcp_peer_by_default_in_every_configuration() {
    let echo = Echo::start();
    let configs: [(&str, ConnectionManager); 6] = [
        ("Envoy defaults", envoy_defaults),
        ("use_remote_address, 0 hops", remote_address_0_hops),
        ("use_remote_address, 1 hop", remote_address_1_hop),
        ("skip_xff_append", skip_xff_append),
        ("Istio ingress gateway", istio_gateway),
        ("envoy/app.yaml", |_| {}),
    ];
    for (name, edit) in configs {
        let envoy = start_app(&echo, app_config(None), edit);
        assert_eq!(app_sends(&envoy, ATTACKER).as_deref(), Some(ATTACKER), "{name}");
    }
}

#[test]
fn app_role_client_address_envoy_follows_the_connection_manager() {
    // The table in the README: what `client_address: envoy` sends for a client at
    // 127.0.0.3 that sends `X-Forwarded-For: 203.0.113.5, 198.51.100.4`.
    let echo = Echo::start();
    let configs: [(&str, ConnectionManager, &str); 5] = [
        ("Envoy defaults", envoy_defaults, "198.51.100.4"),
        ("skip_xff_append", skip_xff_append, "198.51.100.4"),
        ("use_remote_address, 0 hops", remote_address_0_hops, ATTACKER),
        ("use_remote_address, 1 hop", remote_address_1_hop, "198.51.100.4"),
        ("envoy/app.yaml", |_| {}, ATTACKER),
    ];
    for (name, edit, expected) in configs {
        let envoy = start_app(&echo, app_config(Some("envoy")), edit);
        assert_eq!(app_sends(&envoy, ATTACKER).as_deref(), Some(expected), "{name}");
    }
}

#[test]
fn app_role_without_the_peer_record_refuses_rather_than_guess() {
    let echo = Echo::start();
    let mut envoy = start_app(&echo, app_config(None), defaults_without_peer);
    for _ in 0..2 {
        let r = request_from(ATTACKER, envoy.port, "GET", "/", &[("X-Forwarded-For", TRUSTED)]);
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.header("x-wsgiproxy-error"), Some("peer_unknown"));
        assert!(r.text().contains("\"role\": \"peer\""), "the reply says how to fix it: {}", r.text());
    }
    assert_eq!(envoy.stat("wsgiproxy.app.rejected.peer_unknown"), 2);
    assert_eq!(envoy.stop_and_log().matches("the TCP peer is unknown").count(), 1);
    // The operator's explicit choice: Envoy's computed address.
    let envoy = start_app(&echo, app_config(Some("envoy")), defaults_without_peer);
    assert_eq!(app_sends(&envoy, ATTACKER).as_deref(), Some("198.51.100.4"));
}

// ------------------------------------------------------------ mTLS identities

/// A CA and certificates made with openssl for one test: a server certificate
/// for `test.local`, and client certificates with SPIFFE URI SANs.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test mesh CA",
        ]);
        pki.issue("server", "subjectAltName=DNS:test.local\nextendedKeyUsage=serverAuth");
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let out =
            Command::new("openssl").args(args).current_dir(self.dir.path()).output().expect("openssl is installed (scripts/setup.sh)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A key and certificate `{name}.key`/`{name}.pem` signed by the CA.
    fn issue(&self, name: &str, extensions: &str) {
        std::fs::write(self.dir.path().join(format!("{name}.ext")), extensions).unwrap();
        let (key, csr, pem, ext) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    fn client(&self, name: &str, spiffe_id: &str) {
        self.issue(name, &format!("subjectAltName=URI:{spiffe_id}\nextendedKeyUsage=clientAuth"));
    }
}

/// The listener as Istio's sidecar inbound has it: mTLS requiring a client
/// certificate from the mesh CA, `use_remote_address: false`, XFCC sanitised and
/// set from the connection.
fn istio_sidecar_inbound(dir: &Path) -> YamlEdit {
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    std::sync::Arc::new(move |doc: &mut Yaml| {
        envoy_defaults(doc);
        set(doc, "use_remote_address", Yaml::from(false));
        set(doc, "forward_client_cert_details", Yaml::from("SANITIZE_SET"));
        set(doc, "set_current_client_cert_details", serde_yaml::from_str("{uri: true, dns: true}").unwrap());
        let tls: Yaml = serde_yaml::from_str(&format!(
            r#"
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
  require_client_certificate: true
  common_tls_context:
    tls_certificates: [{{ certificate_chain: {{ filename: "{cert}" }}, private_key: {{ filename: "{key}" }} }}]
    validation_context: {{ trusted_ca: {{ filename: "{ca}" }} }}
"#
        ))
        .unwrap();
        doc["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = tls;
    })
}

/// A request over mTLS with curl, from `source`, with the client certificate `cert`.
fn mtls_request(pki: &Pki, port: u16, source: &str, cert: Option<&str>, headers: &[(&str, &str)]) -> Received {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--interface", source, "--cacert", &pki.path("ca.pem")])
        .args(["--resolve", &format!("test.local:{port}:127.0.0.1")]);
    if let Some(name) = cert {
        cmd.args(["--cert", &pki.path(&format!("{name}.pem")), "--key", &pki.path(&format!("{name}.key"))]);
    }
    for (n, v) in headers {
        cmd.args(["-H", &format!("{n}: {v}")]);
    }
    let out = cmd.arg(format!("https://test.local:{port}/x")).output().unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    Received(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout))))
}

#[test]
fn istio_shaped_sidecar_inbound_trusts_spiffe_identities_only() {
    let pki = Pki::new();
    pki.client("gateway", "spiffe://cluster.local/ns/edge/sa/gateway");
    pki.client("intruder", "spiffe://cluster.local/ns/shop/sa/frontend");
    let echo = Echo::start();
    let config = json!({"role": "middleware", "trust_principals": ["spiffe://cluster.local/ns/edge/sa/*"],
                        "keys": {"REMOTE_USER": "x-remote-user"}});
    let o = Overrides {
        edit_with: Some(istio_sidecar_inbound(pki.dir.path())),
        ..Overrides::default().cluster("app", echo.port).plugin(config)
    };
    let envoy = Envoy::start("envoy/middleware.yaml", &o);

    // The edge's identity is believed, from any address (pod addresses change).
    for source in [TRUSTED, ATTACKER] {
        let got = mtls_request(&pki, envoy.port, source, Some("gateway"), &PROTOCOL);
        assert_eq!(got.header("x-remote-user").as_deref(), Some("admin"), "from {source}");
        assert_eq!(got.header("host").as_deref(), Some("victim.example"));
    }
    // Another workload of the mesh forging everything, XFCC naming the edge included.
    for forged in FORGERIES.iter().map(|f| vec![*f]).chain([FORGERIES.to_vec()]) {
        let got = mtls_request(&pki, envoy.port, ATTACKER, Some("intruder"), &with(&forged, &PROTOCOL));
        assert_eq!(got.header("x-remote-user"), None, "{forged:?} made the intruder trusted");
        assert_eq!(got.header("host").as_deref(), Some(&*format!("test.local:{}", envoy.port)));
        // Envoy's SANITIZE_SET replaced the forged XFCC with the real one.
        let xfcc = got.header("x-forwarded-client-cert").unwrap_or_default();
        assert!(!xfcc.contains("ns/edge"), "{xfcc}");
    }
    assert_eq!(envoy.stat("wsgiproxy.middleware.trusted"), 2);
}

#[test]
fn principals_and_addresses_must_both_hold() {
    let pki = Pki::new();
    pki.client("gateway", "spiffe://cluster.local/ns/edge/sa/gateway");
    pki.client("intruder", "spiffe://cluster.local/ns/shop/sa/frontend");
    let echo = Echo::start();
    let config = json!({"role": "middleware", "trust_principals": ["spiffe://cluster.local/ns/edge/sa/gateway"],
                        "trust_ips": [format!("{TRUSTED}/32")], "keys": {"REMOTE_USER": "x-remote-user"}});
    let o = Overrides {
        edit_with: Some(istio_sidecar_inbound(pki.dir.path())),
        ..Overrides::default().cluster("app", echo.port).plugin(config)
    };
    let envoy = Envoy::start("envoy/middleware.yaml", &o);
    let trusted =
        |source, cert| mtls_request(&pki, envoy.port, source, Some(cert), &with(&FORGERIES, &PROTOCOL)).header("x-remote-user").is_some();
    assert!(trusted(TRUSTED, "gateway"));
    assert!(!trusted(ATTACKER, "gateway"), "the right identity from the wrong address");
    assert!(!trusted(TRUSTED, "intruder"), "the right address with the wrong identity");
}

#[test]
fn principals_on_a_plaintext_listener_never_match_and_say_so() {
    let echo = Echo::start();
    let config = json!({"role": "middleware", "trust_principals": ["spiffe://cluster.local/ns/edge/sa/*"],
                        "keys": {"REMOTE_USER": "x-remote-user"}});
    let mut envoy = start_middleware(&echo, config, envoy_defaults);
    for _ in 0..2 {
        let got = request_from(TRUSTED, envoy.port, "GET", "/x", &with(&FORGERIES, &PROTOCOL)).received();
        assert_eq!(got.header("x-remote-user"), None);
    }
    let log = envoy.stop_and_log();
    assert_eq!(log.matches("trust_principals is configured but this connection has no TLS").count(), 1, "{log}");
}

/// The native module refuses a role in the wrong kind of filter when Envoy loads it:
/// Envoy does not start, and its log says why.
fn native_refuses_a_role_in_the_wrong_kind_of_filter() {
    let echo = Echo::start();
    let peer_as_http_filter = Overrides::default().cluster("app", echo.port).plugin(json!({"role": "peer"}));
    let log = Envoy::start_refused("envoy/middleware.yaml", &peer_as_http_filter);
    assert!(log.contains("the role \"peer\" is a network filter"), "{log}");
    fn middleware_as_network_filter(doc: &mut Yaml) {
        let filter = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
        filter["typed_config"]["filter_config"]["value"] =
            Yaml::from(r#"{"role": "middleware", "trust_ips": ["127.0.0.2/32"], "keys": {"REMOTE_USER": "x-remote-user"}}"#);
    }
    let mut doc: Yaml = serde_yaml::from_str(&render("envoy/middleware.yaml", free_port(), free_port(), &Overrides::default())).unwrap();
    middleware_as_network_filter(&mut doc);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "init_only", "--disable-hot-restart", "-c"])
        .arg(&config)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_module_dir())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "Envoy accepted the middleware role as a network filter:\n{log}");
    assert!(log.contains("as a network filter the module takes only"), "{log}");
}

#[test]
fn a_role_in_the_wrong_kind_of_filter_fails_closed() {
    if Loader::from_env() == Loader::Native {
        return native_refuses_a_role_in_the_wrong_kind_of_filter();
    }
    // The peer role in the HTTP filter's place: no request reaches the backend unjudged.
    let echo = Echo::start();
    let envoy = Envoy::start(
        "envoy/middleware.yaml",
        &Overrides::default()
            .cluster("app", echo.port)
            .plugin(json!({"role": "peer"}))
            .env("WSGIPROXY_KEY_K1", "validate-only-key-0123456789"),
    );
    for _ in 0..3 {
        let r = request_from(ATTACKER, envoy.port, "GET", "/x", &PROTOCOL);
        assert!(r.status >= 500, "forwarded by a misplaced peer role: {} {}", r.status, r.text());
    }
    // The middleware role in the network filter's place: connections are refused.
    fn middleware_as_network_filter(doc: &mut Yaml) {
        let filter = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
        filter["typed_config"]["config"]["configuration"]["value"] =
            Yaml::from(r#"{"role": "middleware", "trust_ips": ["127.0.0.2/32"], "keys": {"REMOTE_USER": "x-remote-user"}}"#);
    }
    let envoy = start_middleware(&echo, by_address(), middleware_as_network_filter);
    for _ in 0..3 {
        let mut stream = connect_from(ATTACKER, envoy.port);
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let _ = std::io::Write::write_all(
            &mut stream,
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-WSGIProxy-Str-0: REMOTE_USER admin\r\nConnection: close\r\n\r\n",
        );
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.contains("x-remote-user"), "forwarded: {text}");
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 5"), "{text}");
    }
}
