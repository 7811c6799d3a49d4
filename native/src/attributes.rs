//! Envoy's attributes as the configuration names them (`["request", "protocol"]`),
//! read over the ABI and encoded as the Wasm host gives them.

use crate::abi::{Attribute, Stream};

/// Whether the downstream connection is TLS.
pub fn connection_is_tls(stream: &Stream) -> bool {
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
            None if *id == Attribute::ConnectionMtls && !connection_is_tls(stream) => Some(vec![0]),
            None => None,
        },
    }
}
