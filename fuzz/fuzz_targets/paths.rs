//! Paths, prefixes, authorities and hrefs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wsgiproxy_protocol::href::Href;
use wsgiproxy_protocol::headers::parse_authority;
use wsgiproxy_protocol::paths::{has_unsafe_segment, normalize_prefix, split_query, strip_segment_prefix};

fuzz_target!(|data: &[u8]| {
    let _ = parse_authority(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Href::parse(text);
    let (path, _query) = split_query(text);
    let _ = has_unsafe_segment(path);
    if let Ok(prefix) = normalize_prefix(text) {
        // A normalised prefix is plain and stable.
        assert_eq!(normalize_prefix(&prefix).as_deref(), Ok(prefix.as_str()));
        assert!(!has_unsafe_segment(&prefix));
        if let Some(rest) = strip_segment_prefix(path, &prefix) {
            assert!(rest.is_empty() || rest.starts_with('/'));
            assert_eq!(format!("{prefix}{rest}"), path);
        }
    }
    if let Some((head, tail)) = text.split_once('\n') {
        if let Some(rest) = strip_segment_prefix(tail, head) {
            assert!(rest.is_empty() || rest.starts_with('/'));
        }
    }
});
