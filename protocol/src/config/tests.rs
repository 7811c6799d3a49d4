use std::time::Duration;

use ipnet::IpNet;

use super::*;
use crate::rfc9421::SignatureFormat;
use crate::signature::Algorithm;

fn no_env(_: &str) -> Option<String> {
    None
}

fn err(json: &str) -> ConfigError {
    match parse(json.as_bytes(), &no_env) {
        Err(e) => e,
        Ok(c) => panic!("accepted {json}: {c:?}"),
    }
}

#[test]
fn app_config() {
    let c = parse(
        br#"{"role":"app","href":"http://backend:8080/myapp?q=1","script_name":"/blog/",
             "string_keys":[{"key":"REMOTE_USER","from_header":"X-Auth-User"}],
             "json_keys":[{"key":"roles","value":"[\"a\"]"}],
             "secret":{"keys":[{"id":"k1","env":"K1"}]},"algorithm":"hmac-sha256"}"#,
        &|v| (v == "K1").then(|| "0123456789abcdef0123".to_string()),
    )
    .unwrap();
    let Config::App(app) = c else { panic!() };
    assert_eq!(app.script_name.as_deref(), Some("/blog"));
    assert_eq!(app.keys.len(), 2);
    assert_eq!(app.keys[0].source, KeySource::Header("x-auth-user".into()));
    assert!(app.signing.is_some());
}

#[test]
fn app_errors_name_the_field() {
    assert_eq!(err("not json").field, "");
    assert!(err("").message.contains("empty"));
    assert_eq!(err(r#"{"href":"http://x/"}"#).field, "role");
    assert_eq!(err(r#"{"role":"proxy"}"#).field, "role");
    let e = err(r#"{"role":"app","href":"http://x/","hreff":1}"#);
    assert!(e.message.contains("unknown field `hreff`"), "{e}");
    assert_eq!(err(r#"{"role":"app","href":"ftp://x/"}"#).field, "href");
    assert_eq!(err(r#"{"role":"app","href":"http://x/","script_name":"blog"}"#).field, "script_name");
    assert_eq!(err(r#"{"role":"app","href":"http://x/","string_keys":[{"key":"A"}]}"#).field, "string_keys[0]");
    assert_eq!(
        err(r#"{"role":"app","href":"http://x/","string_keys":[{"key":"A","value":"1","from_header":"b"}]}"#).field,
        "string_keys[0]"
    );
    let e = err(r#"{"role":"app","href":"http://x/","string_keys":[{"key":"A","value":"1","extra":2}]}"#);
    assert_eq!(e.field, "string_keys[0].extra");
    assert_eq!(err(r#"{"role":"app","href":"http://x/","json_keys":[{"key":"A","value":"{x"}]}"#).field, "json_keys[0].value");
    let e = err(r#"{"role":"app","href":"http://x/","secret":{"keys":[{"id":"k","env":"NOPE"}]}}"#);
    assert_eq!(e.field, "secret.keys[0].env");
    assert!(!e.to_string().contains("0123"));
    assert_eq!(err(r#"{"role":"app","href":"http://x/","secret":{"keys":[{"id":"k","value":"short"}]}}"#).field, "secret.keys");
    assert_eq!(err(r#"{"role":"app","href":"http://x/","algorithm":"md5"}"#).field, "algorithm");
    assert_eq!(err(r#"{"role":"app"}"#).message, "missing field `href`");
}

#[test]
fn a_malformed_secret_is_never_echoed() {
    for json in [
        r#"{"role":"app","href":"http://x/","secret":"my-shared-key-123"}"#,
        r#"{"role":"app","href":"http://x/","secret":{"keys":["my-shared-key-123"]}}"#,
        r#"{"role":"middleware","secret":{"keys":[{"id":"k","value":["my-shared-key-123"]}]}}"#,
    ] {
        let e = err(json);
        assert!(e.field.starts_with("secret"), "{e}");
        assert!(!e.to_string().contains("my-shared-key-123"), "{e}");
    }
}

#[test]
fn middleware_config() {
    let c = parse(
        br#"{"role":"middleware","trust_ips":["10.0.0.0/8","::1","127.0.0.1"],"max_skew_seconds":60.0,
             "pop_prefix":"/app/","scheme":"HTTPS","domain":"example.com","port":8443.0,
             "keys":{"REMOTE_USER":"X-Remote-User"},"on_untrusted":"reject"}"#,
        &no_env,
    )
    .unwrap();
    let Config::Middleware(mw) = c else { panic!() };
    assert_eq!(mw.trust_ips.as_ref().map(Vec::len), Some(3));
    assert_eq!(mw.max_skew, Duration::from_secs(60));
    assert_eq!(mw.forced_prefix, ForcedPrefix::Pop("/app".into()));
    assert_eq!(mw.scheme.as_deref(), Some("https"));
    assert_eq!(mw.port, Some(8443));
    assert_eq!(mw.keys["REMOTE_USER"], "x-remote-user");
    assert_eq!(mw.on_untrusted, OnUntrusted::Reject);
    assert_eq!(mw.replay_memory_bytes, DEFAULT_REPLAY_MEMORY_MB << 20);
}

#[test]
fn replay_memory_bound() {
    let mw = |extra: &str| parse(format!(r#"{{"role":"middleware","trust_ips":[]{extra}}}"#).as_bytes(), &no_env);
    let Ok(Config::Middleware(m)) = mw(r#","replay_memory_mb":1024.0"#) else { panic!() };
    assert_eq!(m.replay_memory_bytes, 1 << 30);
    for bad in ["0", "65537", "-1", "1.5", "\"64\""] {
        let Err(e) = mw(&format!(r#","replay_memory_mb":{bad}"#)) else { panic!("{bad}") };
        assert_eq!(e.field, "replay_memory_mb", "{bad}");
    }
    let Ok(Config::Middleware(m)) = mw("") else { panic!() };
    assert_eq!(m.replay_memory_path, None);
    let Ok(Config::Middleware(m)) = mw(r#","replay_memory_path":"/dev/shm/mine""#) else { panic!() };
    assert_eq!(m.replay_memory_path.as_deref(), Some("/dev/shm/mine"));
    let long = format!(r#","replay_memory_path":"/{}""#, "x".repeat(256));
    for bad in [
        r#","replay_memory_path":"relative""#,
        r#","replay_memory_path":"/dev/shm/""#,
        r#","replay_memory_path":"""#,
        &long,
        r#","replay_memory_path":7"#,
    ] {
        let Err(e) = mw(bad) else { panic!("{bad}") };
        assert_eq!(e.field, "replay_memory_path", "{bad}");
    }
}

#[test]
fn future_tolerance() {
    let mw = |extra: &str| parse(format!(r#"{{"role":"middleware","trust_ips":[]{extra}}}"#).as_bytes(), &no_env);
    let Ok(Config::Middleware(m)) = mw("") else { panic!() };
    assert_eq!(m.max_future, Duration::from_secs(DEFAULT_MAX_FUTURE_SECONDS));
    let Ok(Config::Middleware(m)) = mw(r#","max_future_seconds":0"#) else { panic!() };
    assert_eq!(m.max_future, Duration::ZERO);
    // The default never exceeds a smaller skew.
    let Ok(Config::Middleware(m)) = mw(r#","max_skew_seconds":1"#) else { panic!() };
    assert_eq!(m.max_future, Duration::from_secs(1));
    for bad in [r#","max_future_seconds":61"#, r#","max_skew_seconds":10,"max_future_seconds":11"#, r#","max_future_seconds":-1"#] {
        let Err(e) = mw(bad) else { panic!("{bad}") };
        assert_eq!(e.field, "max_future_seconds", "{bad}");
    }
}

#[test]
fn signature_formats() {
    let secret = r#""secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}"#;
    let app = |extra: &str| parse(format!(r#"{{"role":"app","href":"http://x/",{secret}{extra}}}"#).as_bytes(), &no_env);
    let Ok(Config::App(a)) = app("") else { panic!() };
    assert_eq!(a.signature_format, SignatureFormat::V1);
    assert_eq!(a.signing.map(|r| r.algorithm), Some(Algorithm::HmacSha1));
    let Ok(Config::App(a)) = app(r#","signature_format":"rfc9421""#) else { panic!() };
    assert_eq!(a.signature_format, SignatureFormat::Rfc9421);
    assert_eq!(a.signing.map(|r| r.algorithm), Some(Algorithm::HmacSha256), "RFC 9421 defaults to hmac-sha256");
    let Ok(Config::App(a)) = app(r#","signature_format":"rfc9421","algorithm":"hmac-sha256""#) else { panic!() };
    assert_eq!(a.signature_format, SignatureFormat::Rfc9421);
    let Ok(Config::App(a)) = app(r#","signature_format":"v1""#) else { panic!() };
    assert_eq!(a.signature_format, SignatureFormat::V1);
    let Err(e) = app(r#","signature_format":"rfc9421","algorithm":"hmac-sha1""#) else { panic!() };
    assert_eq!(e.field, "algorithm");
    assert!(e.to_string().contains("RFC 9421"), "{e}");
    let Err(e) = app(r#","signature_format":"cavage""#) else { panic!() };
    assert_eq!(e.field, "signature_format");
    let mw = |extra: &str| parse(format!(r#"{{"role":"middleware",{secret}{extra}}}"#).as_bytes(), &no_env);
    let Ok(Config::Middleware(m)) = mw(r#","signature_format":"rfc9421""#) else { panic!() };
    assert_eq!(m.signature_format, SignatureFormat::Rfc9421);
    assert_eq!(m.verify.map(|r| r.algorithm), Some(Algorithm::HmacSha256));
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"signature_format":"rfc9421","algorithm":"hmac-sha1"}"#).field, "algorithm");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"signature_format":1}"#).field, "signature_format");
}

#[test]
fn spawn_config() {
    let c = parse(br#"{"role":"spawn","app":"blog","sidecar_cluster":"sidecar","ensure_timeout_ms":5000.0}"#, &no_env).unwrap();
    let Config::Spawn(s) = c else { panic!() };
    assert_eq!(s.ensure_timeout, Duration::from_secs(5));
    assert_eq!(s.sidecar_authority, "wsgiproxy-sidecar");
    assert_eq!(err(r#"{"role":"spawn","app":"a b","sidecar_cluster":"s"}"#).field, "app");
    assert_eq!(err(r#"{"role":"spawn","app":"a"}"#).message, "missing field `sidecar_cluster`");
    assert_eq!(err(r#"{"role":"spawn","app":"a","sidecar_cluster":"s","ensure_timeout_ms":1}"#).field, "ensure_timeout_ms");
    let Ok(Config::Spawn(s)) =
        parse(br#"{"role":"spawn","app":"a","sidecar_cluster":"s","upstream_networks":["172.18.0.0/16","10.1.2.3"]}"#, &no_env)
    else {
        panic!()
    };
    assert_eq!(s.upstream_networks, ["172.18.0.0/16".parse::<IpNet>().unwrap(), "10.1.2.3/32".parse().unwrap()]);
    for bad in [r#"["0.0.0.0/0"]"#, r#"["::/0"]"#, r#"["nope"]"#] {
        let e = err(&format!(r#"{{"role":"spawn","app":"a","sidecar_cluster":"s","upstream_networks":{bad}}}"#));
        assert_eq!(e.field, "upstream_networks[0]", "{bad}");
    }
}

#[test]
fn middleware_errors() {
    assert_eq!(err(r#"{"role":"middleware"}"#).field, "trust_ips");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":["10.0.0.300"]}"#).field, "trust_ips[0]");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"prefix":"/a","pop_prefix":"/b"}"#).field, "pop_prefix");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"host":"a.com"}"#).field, "host");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"host":"a.com:80","domain":"b"}"#).field, "domain");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"host":"a.com:80","port":80}"#).field, "port");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"scheme":"ftp"}"#).field, "scheme");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"port":1.5}"#).field, "port");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"keys":{"A":"x-forwarded-host"}}"#).field, "keys.A");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"keys":{"A":"x-a","B":"x-a"}}"#).field, "keys.B");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"on_untrusted":"allow"}"#).field, "on_untrusted");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"max_skew_seconds":0}"#).field, "max_skew_seconds");
    assert_eq!(err(r#"{"role":"middleware","trust_principals":[]}"#).field, "trust_principals");
    assert_eq!(err(r#"{"role":"middleware","trust_principals":["spiffe://td/*/x"]}"#).field, "trust_principals[0]");
    assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"client_address":"xff"}"#).field, "client_address");
    assert_eq!(err(r#"{"role":"app","href":"http://x/","client_address":"x-forwarded-for"}"#).field, "client_address");
    assert_eq!(err(r#"{"role":"app","href":"http://x/","scheme":"ftp"}"#).field, "scheme");
    let Ok(Config::App(a)) = parse(br#"{"role":"app","href":"http://x/","scheme":"HTTPS"}"#, &no_env) else { panic!() };
    assert_eq!(a.scheme, Some(DeclaredScheme::Https));
    assert!(err(r#"{"role":"peer","trust_ips":[]}"#).message.contains("unknown field"));
    assert!(err(r#"{"role":"middleware"}"#).message.contains("trust_principals"));
    assert!(matches!(parse(br#"{"role":"peer"}"#, &no_env), Ok(Config::Peer)));
    let Ok(Config::Middleware(m)) = parse(br#"{"role":"middleware","trust_principals":["*.edge.svc"]}"#, &no_env) else { panic!() };
    assert_eq!(m.needs(), crate::trust::Needs { tcp_peer: true, envoy_client: false, principals: true });
}
