//! Payload headers: names, `{quoted key} {value}`, b64, UTF-8 and JSON checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wsgiproxy_protocol::codec::{decode_value, encode_payload, encode_value, split_payload, Family};

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = Family::parse_header_name(name);
    }
    if let Ok((key, wire)) = split_payload(data) {
        for family in Family::ALL {
            let _ = decode_value(family, wire);
        }
        // What the sender encodes, the receiver decodes to the same bytes.
        let encoded = encode_payload(&key, data);
        let (back_key, back_wire) = split_payload(encoded.as_bytes()).expect("own encoding splits");
        assert_eq!(back_key, key);
        assert_eq!(decode_value(Family::Str, back_wire).expect("own encoding decodes"), data);
    }
    let encoded = encode_value(data);
    assert!(encoded.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' '), "unsafe wire value {encoded:?}");
    assert!(!encoded.starts_with(' ') && !encoded.ends_with(' '));
});
