//! The sending side on arbitrary client headers: it never forwards a protocol
//! header the client sent, and every value it writes can stand in a header.
#![no_main]
#[path = "common/mod.rs"]
mod common;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use wsgiproxy_protocol::trust::Downstream;
use wsgiproxy_protocol::app::{decide, AppOutcome, AppRequest};
use wsgiproxy_protocol::config::{parse, Config};
use wsgiproxy_protocol::headers::{is_protocol_header, is_safe_value};
use wsgiproxy_protocol::request::Decision;

fuzz_target!(|data: &[u8]| {
    let head = common::head(data);
    let json = r#"{"role":"app","href":"http://b:8080/deep?q=1","script_name":"/app",
        "string_keys":[{"key":"REMOTE_USER","from_header":"x-user"}],
        "unicode_keys":[{"key":"name","from_header":"x-name"}],
        "json_keys":[{"key":"roles","from_header":"x-roles"}],
        "secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#;
    let Ok(Config::App(config)) = parse(json.as_bytes(), &|_| None) else { panic!("config") };
    let req = AppRequest {
        head: &head,
        downstream: Downstream { tcp_peer: Some("127.0.0.1".parse().expect("ip")), ..Default::default() },
        https: false,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_485_600),
        nonce: [7; 16],
    };
    if let Decision::Forward(edits) = decide(&config, &req, &mut |_| None, &mut AppOutcome::default()) {
        for (name, client_value) in head.iter() {
            if is_protocol_header(name) {
                let kept = !edits.remove.iter().any(|n| n == name) && !edits.set.iter().any(|(n, _)| n == name);
                assert!(!kept, "client's {name}: {client_value:?} passed");
            }
        }
        for (name, value) in &edits.set {
            assert!(is_safe_value(value), "{name}: {value:?}");
        }
    }
});
