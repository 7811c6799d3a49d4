//! The filter's configuration JSON: refused with a message, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = |name: &str| (name == "K").then(|| "0123456789abcdef".to_string());
    if let Err(e) = wsgiproxy_protocol::config::parse(data, &env) {
        assert!(!e.to_string().is_empty());
    }
});
