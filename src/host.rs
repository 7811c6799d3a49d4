//! Small wrappers over host calls, shared by the roles.

use std::net::IpAddr;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use wsgiproxy_protocol::request::{parse_peer_address, Edits, LocalReply, RequestHead};
use wsgiproxy_protocol::trust::{Downstream, Needs, PEER_RECORD};

/// Reads every request header once, as bytes (values may not be UTF-8).
pub fn request_head() -> RequestHead {
    let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default().into_iter().collect();
    RequestHead::new(headers)
}

/// Applies header edits to the request `head` was read from: removals, then sets (a
/// set replaces every value of a name). One call per changed header: measured
/// cheaper than rewriting the whole map in one call (`set_map_bytes` makes Envoy drop
/// and re-add every header). A header the request does not have is added, which
/// spares Envoy the search-and-remove of a replace.
pub fn apply_request_edits(edits: &Edits, head: &RequestHead) {
    for name in &edits.remove {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }
    for (name, value) in &edits.set {
        if head.contains(name) {
            let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value));
        } else {
            let _ = hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value);
        }
    }
}

/// Logs at debug level only when Envoy's `wasm` log level lets it through, so that
/// no message is formatted for nothing on every request.
pub fn follow_host_log_level() {
    use proxy_wasm::types::LogLevel;
    let level = match hostcalls::get_log_level() {
        Ok(LogLevel::Trace) => log::LevelFilter::Trace,
        Ok(LogLevel::Debug) => log::LevelFilter::Debug,
        Ok(LogLevel::Info) => log::LevelFilter::Info,
        Ok(LogLevel::Warn) => log::LevelFilter::Warn,
        Ok(LogLevel::Error) => log::LevelFilter::Error,
        Ok(LogLevel::Critical) | Err(_) => log::LevelFilter::Error,
    };
    log::set_max_level(level);
}

/// Answers in the request's place (a role refused it): counts the reason, says why
/// at debug level, sends the reply, and stops the request here.
pub fn refuse(reply: &LocalReply, metrics: &crate::metrics::Metrics, role: &str) -> proxy_wasm::types::Action {
    metrics.inc(&format!("{role}.rejected.{}", reply.reason));
    log::debug!("wsgiproxy {role}: replied {} ({}): {}", reply.status, reply.reason, reply.detail);
    send_reply(reply);
    proxy_wasm::types::Action::Pause
}

/// Sends a short plain-text reply instead of forwarding the request.
pub fn send_reply(reply: &LocalReply) {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "text/plain; charset=utf-8"), ("x-wsgiproxy-error", reply.reason)];
    headers.extend(reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let body = reply.body();
    let _ = hostcalls::send_http_response(reply.status as u32, headers, Some(body.as_bytes()));
}

/// The value of an Envoy attribute, such as `["source", "address"]`.
pub fn property(path: &[String]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.iter().map(String::as_str).collect()).ok().flatten()
}

/// What a role needs to know about the downstream connection, one host call per
/// value it uses.
pub fn downstream(needs: Needs) -> Downstream {
    let address = |path: Vec<&str>| -> Option<IpAddr> {
        let raw = hostcalls::get_property(path).ok().flatten()?;
        parse_peer_address(&raw)
    };
    let text = |path: Vec<&str>| -> Option<String> {
        let raw = hostcalls::get_property(path).ok().flatten().filter(|v| !v.is_empty())?;
        String::from_utf8(raw).ok()
    };
    Downstream {
        // Written by the `peer` network filter; a client cannot set filter state.
        tcp_peer: if needs.tcp_peer { address(vec![PEER_RECORD]) } else { None },
        // The stream's remote address: the connection manager may have taken it from X-Forwarded-For.
        envoy_client: if needs.envoy_client { address(vec!["source", "address"]) } else { None },
        uri_san: if needs.principals { text(vec!["connection", "uri_san_peer_certificate"]) } else { None },
        dns_san: if needs.principals { text(vec!["connection", "dns_san_peer_certificate"]) } else { None },
    }
}

/// Whether the downstream connection is TLS.
pub fn downstream_is_tls() -> bool {
    hostcalls::get_property(vec!["connection", "tls_version"]).ok().flatten().is_some_and(|v| !v.is_empty())
}

/// Fresh random bytes from the host (WASI `random_get`).
pub fn random_nonce() -> Option<[u8; 16]> {
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce).ok()?;
    Some(nonce)
}

pub fn now() -> std::time::SystemTime {
    hostcalls::get_current_time().unwrap_or(std::time::UNIX_EPOCH)
}
