//! The receiving side on arbitrary headers from a trusted peer: whatever it
//! forwards holds only values that can stand in a header.
#![no_main]
#[path = "common/mod.rs"]
mod common;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use wsgiproxy_protocol::trust::Downstream;
use wsgiproxy_protocol::config::{parse, Config};
use wsgiproxy_protocol::headers::is_safe_value;
use wsgiproxy_protocol::middleware::{decide, MiddlewareOutcome, MiddlewareRequest, NonceMemory};
use wsgiproxy_protocol::replay::Verdict;
use wsgiproxy_protocol::request::Decision;
use wsgiproxy_protocol::signature::Nonce;

struct Memory;
impl NonceMemory for Memory {
    fn remember(&mut self, _: &Nonce, _: u64, _: u64) -> Result<Verdict, String> {
        Ok(Verdict::Fresh)
    }
}

fuzz_target!(|data: &[u8]| {
    let configs = [
        r#"{"role":"middleware","trust_ips":["0.0.0.0/0"],"keys":{"REMOTE_USER":"x-remote-user","roles":"x-roles"},"allow_pickle":true}"#,
        r#"{"role":"middleware","trust_ips":["0.0.0.0/0"],"pop_prefix":"/app","domain":"example.com","port":8080}"#,
        r#"{"role":"middleware","secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#,
    ];
    let h = common::head(data);
    for json in configs {
        let Ok(Config::Middleware(config)) = parse(json.as_bytes(), &|_| None) else { panic!("config") };
        let req = MiddlewareRequest {
            head: &h,
            downstream: Downstream { tcp_peer: Some("127.0.0.1".parse().expect("ip")), ..Default::default() },
            https: false,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_485_600),
            local_address: Some("127.0.0.1:10001".parse().expect("address")),
        };
        if let Decision::Forward(edits) = decide(&config, &req, &mut Memory, &mut MiddlewareOutcome::default()) {
            for (name, value) in &edits.set {
                assert!(is_safe_value(value), "{name}: {value:?}");
            }
        }
    }
});
