//! What the roles ask of Envoy, over the binding: the request's headers, its peer,
//! attributes, header edits and local replies.

use wsgiproxy_protocol::request::{parse_peer_address, Edits, LocalReply, RequestHead};
use wsgiproxy_protocol::trust::{Downstream, Needs};

use crate::abi::{log, log_enabled, Attribute, HeaderMap, HeadersStatus, LogLevel, Stream};
use crate::metrics::Metrics;

/// Every request header, read once, as bytes.
pub fn request_head(stream: &Stream) -> RequestHead {
    RequestHead::new(stream.headers(HeaderMap::Request))
}

/// Applies header edits: removals, then sets (a set replaces every value of a name;
/// a header the request does not have is added).
pub fn apply_request_edits(stream: &Stream, edits: &Edits, head: &RequestHead) {
    for name in &edits.remove {
        stream.remove_header(HeaderMap::Request, name);
    }
    for (name, value) in &edits.set {
        if head.contains(name) {
            stream.set_header(HeaderMap::Request, name, value);
        } else {
            stream.add_header(HeaderMap::Request, name, value);
        }
    }
}

/// Logs at debug level, formatting only when Envoy would print it.
pub fn debug(message: impl FnOnce() -> String) {
    if log_enabled(LogLevel::Debug) {
        log(LogLevel::Debug, &message());
    }
}

/// Answers in the request's place: counts the reason, says why at debug level,
/// sends the reply, and stops the request here.
pub fn refuse(stream: &Stream, reply: &LocalReply, metrics: &Metrics, role: &str) -> HeadersStatus {
    metrics.rejected(stream, role, reply.reason);
    debug(|| format!("wsgiproxy {role}: replied {} ({}): {}", reply.status, reply.reason, reply.detail));
    send_reply(stream, reply);
    HeadersStatus::StopIteration
}

/// Sends a short plain-text reply instead of forwarding the request.
pub fn send_reply(stream: &Stream, reply: &LocalReply) {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "text/plain; charset=utf-8"), ("x-wsgiproxy-error", reply.reason)];
    headers.extend(reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    stream.send_response(reply.status, &headers, reply.body().as_bytes(), &format!("wsgiproxy_{}", reply.reason));
}

/// What a role needs to know about the downstream connection, one call per value
/// it uses. The TCP peer is the connection's own: the module reads it directly (the
/// ABI's direct remote address), so it needs no network filter to record it.
pub fn downstream(stream: &Stream, needs: Needs) -> Downstream {
    let address = |raw: Option<Vec<u8>>| parse_peer_address(&raw?);
    let text = |id: Attribute| stream.attribute_bytes(id).filter(|v| !v.is_empty()).and_then(|v| String::from_utf8(v).ok());
    Downstream {
        tcp_peer: if needs.tcp_peer { address(stream.direct_remote_address()) } else { None },
        // The stream's remote address: the connection manager may have taken it from X-Forwarded-For.
        envoy_client: if needs.envoy_client { address(stream.attribute_bytes(Attribute::SourceAddress)) } else { None },
        uri_san: if needs.principals { text(Attribute::ConnectionUriSanPeerCertificate) } else { None },
        dns_san: if needs.principals { text(Attribute::ConnectionDnsSanPeerCertificate) } else { None },
    }
}

/// Whether the downstream connection is TLS.
pub fn downstream_is_tls(stream: &Stream) -> bool {
    stream.attribute_bytes(Attribute::ConnectionTlsVersion).is_some_and(|v| !v.is_empty())
}

enum Kind {
    Bytes,
    Int,
    Bool,
}

/// The attributes a configuration may name in `from_property`, as the ABI numbers them.
const ATTRIBUTES: &[(&str, &str, Attribute, Kind)] = &[
    ("request", "path", Attribute::RequestPath, Kind::Bytes),
    ("request", "url_path", Attribute::RequestUrlPath, Kind::Bytes),
    ("request", "host", Attribute::RequestHost, Kind::Bytes),
    ("request", "scheme", Attribute::RequestScheme, Kind::Bytes),
    ("request", "method", Attribute::RequestMethod, Kind::Bytes),
    ("request", "referer", Attribute::RequestReferer, Kind::Bytes),
    ("request", "useragent", Attribute::RequestUserAgent, Kind::Bytes),
    ("request", "id", Attribute::RequestId, Kind::Bytes),
    ("request", "protocol", Attribute::RequestProtocol, Kind::Bytes),
    ("request", "query", Attribute::RequestQuery, Kind::Bytes),
    ("request", "size", Attribute::RequestSize, Kind::Int),
    ("request", "total_size", Attribute::RequestTotalSize, Kind::Int),
    ("response", "code", Attribute::ResponseCode, Kind::Int),
    ("response", "code_details", Attribute::ResponseCodeDetails, Kind::Bytes),
    ("response", "size", Attribute::ResponseSize, Kind::Int),
    ("response", "total_size", Attribute::ResponseTotalSize, Kind::Int),
    ("source", "address", Attribute::SourceAddress, Kind::Bytes),
    ("source", "port", Attribute::SourcePort, Kind::Int),
    ("destination", "address", Attribute::DestinationAddress, Kind::Bytes),
    ("destination", "port", Attribute::DestinationPort, Kind::Int),
    ("connection", "id", Attribute::ConnectionId, Kind::Int),
    ("connection", "mtls", Attribute::ConnectionMtls, Kind::Bool),
    ("connection", "requested_server_name", Attribute::ConnectionRequestedServerName, Kind::Bytes),
    ("connection", "tls_version", Attribute::ConnectionTlsVersion, Kind::Bytes),
    ("connection", "subject_local_certificate", Attribute::ConnectionSubjectLocalCertificate, Kind::Bytes),
    ("connection", "subject_peer_certificate", Attribute::ConnectionSubjectPeerCertificate, Kind::Bytes),
    ("connection", "dns_san_local_certificate", Attribute::ConnectionDnsSanLocalCertificate, Kind::Bytes),
    ("connection", "dns_san_peer_certificate", Attribute::ConnectionDnsSanPeerCertificate, Kind::Bytes),
    ("connection", "uri_san_local_certificate", Attribute::ConnectionUriSanLocalCertificate, Kind::Bytes),
    ("connection", "uri_san_peer_certificate", Attribute::ConnectionUriSanPeerCertificate, Kind::Bytes),
    ("connection", "sha256_peer_certificate_digest", Attribute::ConnectionSha256PeerCertificateDigest, Kind::Bytes),
    ("upstream", "address", Attribute::UpstreamAddress, Kind::Bytes),
    ("upstream", "port", Attribute::UpstreamPort, Kind::Int),
];

/// An Envoy attribute by its path, encoded as the Wasm host gives it (numbers as 8
/// little-endian bytes, booleans as one byte), so that the protocol crate formats
/// both loaders' values alike. An attribute the ABI does not offer is absent.
pub fn property(stream: &Stream, path: &[String]) -> Option<Vec<u8>> {
    let [group, name] = path else { return None };
    let (_, _, id, kind) = ATTRIBUTES.iter().find(|(g, n, _, _)| g == group && n == name)?;
    match kind {
        Kind::Bytes => stream.attribute_bytes(*id),
        Kind::Int => stream.attribute_int(*id).map(|v| v.to_le_bytes().to_vec()),
        // Envoy answers `connection.mtls` only on a TLS connection; its attribute
        // reference (and the Wasm host) make it false on a plain one.
        Kind::Bool => match stream.attribute_bool(*id) {
            Some(b) => Some(vec![u8::from(b)]),
            None if *id == Attribute::ConnectionMtls && !downstream_is_tls(stream) => Some(vec![0]),
            None => None,
        },
    }
}

/// Fresh random bytes from the operating system.
pub fn random_nonce() -> Option<[u8; 16]> {
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce).ok()?;
    Some(nonce)
}
