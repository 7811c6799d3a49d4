//! Shared by the fuzz targets: arbitrary bytes as a request head.

use wsgiproxy_protocol::request::RequestHead;

/// The first line is `:path`; each further line is `name:value`.
pub fn head(data: &[u8]) -> RequestHead {
    let mut lines = data.split(|b| *b == b'\n');
    let mut headers = vec![(":path".to_string(), lines.next().unwrap_or_default().to_vec())];
    for line in lines {
        if let Some(at) = line.iter().position(|b| *b == b':') {
            if let Ok(name) = std::str::from_utf8(&line[..at]) {
                headers.push((name.to_ascii_lowercase(), line[at + 1..].to_vec()));
            }
        }
    }
    RequestHead::new(headers)
}
