//! The `app` role (WSGIProxyApp): the sending side. Strips protocol headers the
//! client sent, rewrites the path for the backend's mount, injects the protocol
//! headers, and signs them when a key is configured.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::codec::{encode_payload, is_json, Family};
use crate::config::{AppConfig, KeySource};
use crate::headers::*;
use crate::paths::{has_unsafe_segment, split_query, strip_segment_prefix, target_joining_queries};
use crate::reason::Reason;
use crate::request::{Decision, Edits, LocalReply, RequestHead};
use crate::response::ClientView;
use crate::rfc9421::{self, SignatureFormat};
use crate::signature::{format_date, is_signed_header, sign, Nonce, SignedParts};
use crate::trust::{ClientAddress, Downstream, PEER_UNKNOWN_DETAIL};

/// What the host tells the role about one request besides its headers.
pub struct AppRequest<'a> {
    pub head: &'a RequestHead,
    /// The connection, as [`AppConfig::needs`] says: the client address sent is
    /// picked from it by `client_address`.
    pub downstream: Downstream,
    /// Whether the downstream connection is TLS.
    pub https: bool,
    pub now: SystemTime,
    /// Fresh random bytes; used only when signing.
    pub nonce: Nonce,
}

/// Counts of what was done, for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppOutcome {
    pub stripped: usize,
    /// Keys whose source held no usable value for their family (for example a json key
    /// whose header is not JSON); they are left out, never sent half-valid.
    pub invalid_keys: usize,
    pub signed: bool,
    /// The client's view of the request, for rewriting the response (when enabled).
    pub client_view: Option<ClientView>,
}

/// Envoy's attributes that are numbers (8 bytes, little-endian) or booleans (1
/// byte), as its attribute reference types them; every other attribute is sent as
/// its bytes (strings, and the serialised maps, are sent as Envoy gives them).
const INT_ATTRIBUTES: [[&str; 2]; 9] = [
    ["source", "port"],
    ["destination", "port"],
    ["upstream", "port"],
    ["request", "size"],
    ["request", "total_size"],
    ["response", "code"],
    ["response", "size"],
    ["response", "total_size"],
    ["connection", "id"],
];
const BOOL_ATTRIBUTES: [[&str; 2]; 1] = [["connection", "mtls"]];

/// An attribute's value as text: numbers in decimal, booleans as true/false.
pub fn attribute_text(path: &[String], raw: Vec<u8>) -> Vec<u8> {
    let is = |known: &[&str; 2]| path.len() == 2 && path[0] == known[0] && path[1] == known[1];
    if INT_ATTRIBUTES.iter().any(is) {
        if let Ok(bytes) = <[u8; 8]>::try_from(raw.as_slice()) {
            return i64::from_le_bytes(bytes).to_string().into_bytes();
        }
    } else if BOOL_ATTRIBUTES.iter().any(is) {
        if let [b] = raw.as_slice() {
            return if *b == 0 { b"false".to_vec() } else { b"true".to_vec() };
        }
    }
    raw
}

/// Decides what to do with a request.
pub fn decide<'a>(
    config: &'a AppConfig,
    req: &AppRequest<'a>,
    property: &mut dyn FnMut(&[String]) -> Option<Vec<u8>>,
    outcome: &mut AppOutcome,
) -> Decision<'a> {
    let head = req.head;
    // The client address is the one thing the backend cannot check: never send one
    // the client may have written.
    let client_ip = config.client_address.pick(&req.downstream);
    if client_ip.is_none() && config.client_address == ClientAddress::Peer {
        return Decision::Reply(LocalReply::new(500, Reason::PeerUnknown, PEER_UNKNOWN_DETAIL));
    }
    let Some(target) = head.get_str(PATH) else {
        return Decision::Reply(LocalReply::new(400, Reason::NoPath, "the request has no path"));
    };
    let (path, query) = split_query(target);
    if !path.starts_with('/') {
        // `OPTIONS *`: there is no path to put under the href's.
        return Decision::Reply(LocalReply::new(400, Reason::UnsupportedTarget, "only paths starting with / are forwarded"));
    }

    // The mount point this route serves: the rest is what the backend sees below the href path.
    let rest = match &config.script_name {
        Some(mount) => match strip_segment_prefix(path, mount) {
            Some(rest) => rest,
            None => {
                return Decision::Reply(LocalReply::new(
                    404,
                    Reason::OutsideMount,
                    format!("this route serves {mount}; the request path is outside it"),
                ))
            }
        },
        None => path,
    };
    if has_unsafe_segment(rest) {
        return Decision::Reply(LocalReply::new(400, Reason::UnsafePath, "the path holds dot segments, back slashes or encoded slashes"));
    }

    // The role sets up to 16 headers; its removals, the client's forgeries, are
    // rare (no room is made for them until one is found).
    let mut edits = Edits::with_capacity(0, 16);
    for name in head.names_where(|n| is_protocol_header(n) || is_underscore_spelling_of(n, is_protocol_header)) {
        edits.remove(name);
        // Envoy itself puts the peer in X-Forwarded-For at the edge: not a client's forgery.
        if name != X_FORWARDED_FOR {
            outcome.stripped += 1;
        }
    }

    let new_target = target_joining_queries(&config.href.path, rest, query, config.href.query.as_deref());

    // The Host the client asked for, with its port if it gave one: host[:port] only
    // (no user information, path or comma), since it is reflected into redirects.
    let client_host = head.get(AUTHORITY).filter(|h| !h.is_empty());
    if let Some(host) = client_host {
        if crate::headers::parse_authority(host).is_none() {
            return Decision::Reply(LocalReply::new(400, Reason::BadHost, "the Host header must be host or host:port"));
        }
    }
    if let Some(host) = client_host {
        edits.set(X_FORWARDED_SERVER, host);
    }
    let scheme = if req.https { "https" } else { "http" };
    edits.set(X_FORWARDED_SCHEME, scheme);
    if config.rewrite_response {
        if let Some(host) = client_host.and_then(|h| std::str::from_utf8(h).ok()) {
            outcome.client_view =
                Some(ClientView { scheme, host: host.to_string(), mount: config.script_name.clone().unwrap_or_default() });
        }
    }
    if let Some(ip) = client_ip {
        edits.set(X_FORWARDED_FOR, crate::request::ip_text(ip));
    }
    if let Some(mount) = &config.script_name {
        edits.set(X_SCRIPT_NAME, mount.as_str());
    }
    if !config.href.path.is_empty() {
        edits.set(X_TRAVERSAL_PATH, config.href.path.as_str());
    }
    if let Some(q) = &config.href.query {
        edits.set(X_TRAVERSAL_QUERY_STRING, q.as_str());
    }
    edits.set(X_WSGIPROXY_VERSION, PROTOCOL_VERSION);

    let mut counts = [0usize; 4];
    for spec in &config.keys {
        let value: Option<std::borrow::Cow<'_, [u8]>> = match &spec.source {
            KeySource::Value(v) => Some(v.as_slice().into()),
            KeySource::Header(h) => head.get(h).map(Into::into),
            KeySource::Property(p) => property(p).map(|raw| attribute_text(p, raw).into()),
        };
        let Some(value) = value else { continue };
        let usable = match spec.family {
            Family::Unicode => std::str::from_utf8(&value).is_ok(),
            Family::Json => is_json(&value),
            Family::Str | Family::Pickle => true,
        };
        if !usable {
            outcome.invalid_keys += 1;
            continue;
        }
        let slot = spec.family as usize;
        edits.set(spec.family.header_name(counts[slot]), encode_payload(&spec.key, &value));
        counts[slot] += 1;
    }

    // Kept for signing only: unsigned, the target moves into the edit.
    let rfc9421_signing = config.signing.is_some() && config.signature_format == SignatureFormat::Rfc9421;
    let signed_target = if rfc9421_signing { new_target.clone() } else { String::new() };
    edits.set(PATH, new_target);
    let new_target = signed_target;
    edits.set(AUTHORITY, config.href.authority.as_str());

    if config.bind_endpoint {
        // Signed in the cluster once the endpoint is chosen (`sign_for_endpoint`); sent
        // in the form that will be signed.
        if config.signature_format == SignatureFormat::Rfc9421 {
            edits.set(AUTHORITY, rfc9421::normalize_authority(&config.href.authority, config.href.scheme == "https"));
        }
        return edits.into_decision();
    }
    if config.signature_format == SignatureFormat::Rfc9421 {
        if let Err(reply) = sign_rfc9421(config, req, &new_target, &mut edits, outcome) {
            return Decision::Reply(reply);
        }
        return edits.into_decision();
    }
    if let Some(keys) = &config.signing {
        let ring = &*keys.ring();
        let date = format_date(req.now);
        let method = head.get(METHOD).unwrap_or(b"GET");
        let signed: Vec<(&str, &[u8])> =
            edits.set.iter().filter(|(name, _)| is_signed_header(name)).map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        let parts = SignedParts {
            method,
            authority: config.href.authority.as_bytes(),
            // The target as it is sent, from the edit that sends it.
            path: edits.value_of(PATH).unwrap_or_default(),
            date: date.as_bytes(),
            protocol_headers: signed,
        };
        let signature = sign(ring, &req.nonce, &parts);
        if let Some(signature) = signature {
            edits.set(DATE, date);
            edits.set(X_WSGIPROXY_SIGNATURE, signature);
            outcome.signed = true;
        }
    }
    edits.into_decision()
}

/// With `bind_endpoint`, in the cluster's upstream filter, once the load balancer has
/// chosen `endpoint`: signs the request as it stands (what `decide` made of it before
/// routing) together with `X-WSGIProxy-Endpoint: {endpoint}`, in the configured
/// format. Each attempt (a retry, a hedged request) is signed anew, with its own nonce.
pub fn sign_for_endpoint(
    config: &AppConfig,
    head: &RequestHead,
    endpoint: SocketAddr,
    now: SystemTime,
    nonce: &Nonce,
) -> Decision<'static> {
    let Some(keys) = &config.signing else { return Decision::Forward(Edits::default()) };
    let ring = &*keys.ring();
    let mut edits = Edits::default();
    let endpoint = endpoint.to_string();
    // Every protocol header the request holds is signed, the endpoint with them; any
    // signature already there (none, as `decide` left it) is replaced.
    let mut fields: Vec<(String, Vec<u8>)> =
        head.iter().filter(|(n, _)| is_signed_header(n) && *n != X_WSGIPROXY_ENDPOINT).map(|(n, v)| (n.to_string(), v.to_vec())).collect();
    fields.push((X_WSGIPROXY_ENDPOINT.to_string(), endpoint.clone().into_bytes()));
    edits.set(X_WSGIPROXY_ENDPOINT, endpoint);
    let method = head.get(METHOD).unwrap_or(b"GET");
    let authority = head.get(AUTHORITY).unwrap_or_default();
    let target = head.get(PATH).unwrap_or(b"/");
    if config.signature_format == SignatureFormat::Rfc9421 {
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).chain(config.covered_components.iter().map(String::as_str)).collect();
        let message = rfc9421::Message { method, https: config.href.scheme == "https", authority, target, fields: &fields };
        let created = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let Some(signed) = rfc9421::sign(ring, &message, &names, created, &hex::encode(nonce)) else {
            return Decision::Reply(LocalReply::new(400, Reason::Unsignable, "a value sent cannot stand in an RFC 9421 signature base"));
        };
        edits.set(rfc9421::SIGNATURE_INPUT, signed.signature_input);
        edits.set(rfc9421::SIGNATURE, signed.signature);
        return edits.into_decision();
    }
    let date = format_date(now);
    let parts = SignedParts {
        method,
        authority,
        path: target,
        date: date.as_bytes(),
        protocol_headers: fields.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect(),
    };
    match sign(ring, nonce, &parts) {
        Some(signature) => {
            edits.set(DATE, date);
            edits.set(X_WSGIPROXY_SIGNATURE, signature);
            edits.into_decision()
        }
        None => Decision::Reply(LocalReply::new(400, Reason::Unsignable, "the request cannot be signed")),
    }
}

/// Signs what is sent as RFC 9421 asks (see [`crate::rfc9421`]): `Signature-Input`
/// and `Signature` over the method, authority, path, query and every protocol header.
fn sign_rfc9421(
    config: &AppConfig,
    req: &AppRequest<'_>,
    target: &str,
    edits: &mut Edits<'_>,
    outcome: &mut AppOutcome,
) -> Result<(), LocalReply> {
    let Some(keys) = &config.signing else { return Ok(()) };
    let ring = &*keys.ring();
    let https = config.href.scheme == "https";
    // Sent in its normal form (no default port), which any receiver, over TLS or
    // not, reads as the `@authority` that was signed.
    let authority = rfc9421::normalize_authority(&config.href.authority, https);
    edits.set(AUTHORITY, authority.clone());
    let created = req.now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let signed = {
        // Borrowed from the edits: no copy of the protocol headers.
        let fields: Vec<(&str, &[u8])> =
            edits.set.iter().filter(|(n, _)| is_signed_header(n)).map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).chain(config.covered_components.iter().map(String::as_str)).collect();
        let message = rfc9421::Message {
            method: req.head.get(METHOD).unwrap_or(b"GET"),
            https,
            authority: authority.as_bytes(),
            target: target.as_bytes(),
            fields: fields.as_slice(),
        };
        rfc9421::sign(ring, &message, &names, created, &hex::encode(req.nonce))
            .ok_or_else(|| LocalReply::new(400, Reason::Unsignable, "a value sent cannot stand in an RFC 9421 signature base"))?
    };
    edits.set(rfc9421::SIGNATURE_INPUT, signed.signature_input);
    edits.set(rfc9421::SIGNATURE, signed.signature);
    outcome.signed = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Config};
    use crate::signature::{verify_mac, SignatureHeader};

    fn app(json: &str) -> AppConfig {
        match parse(json.as_bytes(), &|_| None).unwrap() {
            Config::App(a) => a,
            _ => panic!(),
        }
    }

    fn head(pairs: &[(&str, &str)]) -> RequestHead {
        RequestHead::new(pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect())
    }

    fn run(config: &AppConfig, h: &RequestHead) -> Decision<'static> {
        let req = AppRequest {
            head: h,
            downstream: Downstream { tcp_peer: "203.0.113.7".parse().ok(), ..Default::default() },
            https: false,
            now: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_485_600),
            nonce: [5; 16],
        };
        decide(config, &req, &mut |p| (p[0] == "conn").then(|| b"CN=client".to_vec()), &mut AppOutcome::default()).into_owned()
    }

    fn edits(d: Decision) -> Edits {
        match d {
            Decision::Forward(e) => e,
            Decision::Reply(r) => panic!("replied {r:?}"),
        }
    }

    fn text(e: &Edits, name: &str) -> Option<String> {
        e.value_of(name).map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    #[test]
    fn injects_the_protocol_headers() {
        let c = app(r#"{"role":"app","href":"http://backend:8080/myapp?some=querystring","script_name":"/blog",
                        "string_keys":[{"key":"REMOTE_USER","from_header":"x-auth-user"},{"key":"missing","from_header":"x-none"},
                                       {"key":"CN","from_property":["conn"]}],
                        "unicode_keys":[{"key":"name","value":"Jos\u00e9"}],
                        "json_keys":[{"key":"roles","from_header":"x-roles"},{"key":"bad","from_header":"x-bad"}]}"#);
        let h = head(&[
            (":method", "GET"),
            (":path", "/blog/article/1?x=1"),
            (":authority", "www.example.com:8000"),
            ("x-auth-user", "bob"),
            ("x-roles", "[\"admin\"]"),
            ("x-bad", "{nope"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-wsgiproxy-str-5", "REMOTE_USER root"),
            ("x-script-name", "/evil"),
            ("x_wsgiproxy_str_0", "REMOTE_USER root"),
            ("x_custom", "kept"),
        ]);
        let e = edits(run(&c, &h));
        assert_eq!(text(&e, ":path").as_deref(), Some("/myapp/article/1?x=1&some=querystring"));
        assert_eq!(text(&e, ":authority").as_deref(), Some("backend:8080"));
        assert_eq!(text(&e, "x-forwarded-for").as_deref(), Some("203.0.113.7"));
        assert_eq!(text(&e, "x-forwarded-server").as_deref(), Some("www.example.com:8000"));
        assert_eq!(text(&e, "x-forwarded-scheme").as_deref(), Some("http"));
        assert_eq!(text(&e, "x-script-name").as_deref(), Some("/blog"));
        assert_eq!(text(&e, "x-traversal-path").as_deref(), Some("/myapp"));
        assert_eq!(text(&e, "x-traversal-query-string").as_deref(), Some("some=querystring"));
        assert_eq!(text(&e, "x-wsgiproxy-version").as_deref(), Some("0.1"));
        assert_eq!(text(&e, "x-wsgiproxy-str-0").as_deref(), Some("REMOTE_USER bob"));
        assert_eq!(text(&e, "x-wsgiproxy-str-1").as_deref(), Some("CN CN=client"));
        assert_eq!(text(&e, "x-wsgiproxy-unicode-0").as_deref(), Some("name b64Sm9zw6k="));
        assert_eq!(text(&e, "x-wsgiproxy-json-0").as_deref(), Some("roles [\"admin\"]"));
        assert_eq!(text(&e, "x-wsgiproxy-json-1"), None);
        assert!(e.remove.iter().any(|n| n == "x-wsgiproxy-str-5"));
        assert!(e.remove.iter().any(|n| n == "x_wsgiproxy_str_0"), "underscore spellings too");
        assert!(!e.remove.iter().any(|n| n == "x_custom"));
        assert!(e.remove.iter().any(|n| n == "x-script-name") || text(&e, "x-script-name").is_some());
        assert!(!e.remove.iter().any(|n| n == "x-forwarded-for"), "a set replaces it");
    }

    #[test]
    fn mount_points() {
        let c = app(r#"{"role":"app","href":"http://b/","script_name":"/blog"}"#);
        let e = edits(run(&c, &head(&[(":path", "/blog")])));
        assert_eq!(text(&e, ":path").as_deref(), Some("/"));
        assert_eq!(text(&e, "x-traversal-path"), None);
        let e = edits(run(&c, &head(&[(":path", "/blog/?a")])));
        assert_eq!(text(&e, ":path").as_deref(), Some("/?a"));
        let Decision::Reply(r) = run(&c, &head(&[(":path", "/blogger")])) else { panic!() };
        assert_eq!(r.status, 404);
        let Decision::Reply(r) = run(&c, &head(&[(":path", "/blog/../admin")])) else { panic!() };
        assert_eq!(r.status, 400);
        let c = app(r#"{"role":"app","href":"http://b/deep/er"}"#);
        let e = edits(run(&c, &head(&[(":path", "/")])));
        assert_eq!(text(&e, ":path").as_deref(), Some("/deep/er/"));
        assert_eq!(text(&e, "x-script-name"), None);
    }

    #[test]
    fn typed_attributes_become_text() {
        let path = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
        assert_eq!(attribute_text(&path("source", "port"), 8443i64.to_le_bytes().to_vec()), b"8443");
        assert_eq!(attribute_text(&path("connection", "mtls"), vec![1]), b"true");
        assert_eq!(attribute_text(&path("connection", "mtls"), vec![0]), b"false");
        assert_eq!(attribute_text(&path("source", "address"), b"10.0.0.1:5".to_vec()), b"10.0.0.1:5");
        assert_eq!(attribute_text(&path("source", "port"), vec![1, 2]), [1, 2], "not 8 bytes: left as it is");
    }

    #[test]
    fn odd_targets_and_hosts_are_refused() {
        let c = app(r#"{"role":"app","href":"http://b/myapp"}"#);
        let Decision::Reply(r) = run(&c, &head(&[(":method", "OPTIONS"), (":path", "*")])) else { panic!() };
        assert_eq!((r.status, r.reason), (400, Reason::UnsupportedTarget));
        for host in ["user@evil.example", "a.example/x", "a.example,b.example", "a.example:http"] {
            let Decision::Reply(r) = run(&c, &head(&[(":path", "/"), (":authority", host)])) else { panic!("{host}") };
            assert_eq!((r.status, r.reason), (400, Reason::BadHost), "{host}");
        }
        for host in ["www.example.com", "www.example.com:8443", "[2001:db8::1]:80", "203.0.113.9"] {
            assert!(matches!(run(&c, &head(&[(":path", "/"), (":authority", host)])), Decision::Forward(_)), "{host}");
        }
    }

    #[test]
    fn never_writes_a_control_character() {
        let c = app(r#"{"role":"app","href":"http://b/"}"#);
        let Decision::Reply(r) = run(&c, &head(&[(":path", "/a\u{1}b"), (":authority", "h")])) else { panic!() };
        assert_eq!((r.status, r.reason), (400, Reason::ControlCharacter));
        // A Host with one is not host[:port] to begin with.
        let Decision::Reply(r) = run(&c, &head(&[(":path", "/a"), (":authority", "h\u{7f}")])) else { panic!() };
        assert_eq!(r.reason, Reason::BadHost);
    }

    #[test]
    fn signs_rfc9421_what_it_sends() {
        let c = app(r#"{"role":"app","href":"http://Backend/app","signature_format":"rfc9421",
                        "string_keys":[{"key":"REMOTE_USER","value":"bob"}],
                        "secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#);
        let e = edits(run(&c, &head(&[(":method", "POST"), (":path", "/x"), (":authority", "h"), ("signature", "client=:AAAA:")])));
        assert_eq!(e.value_of("x-wsgiproxy-signature"), None);
        assert_eq!(e.value_of("date"), None);
        assert_eq!(text(&e, ":authority").as_deref(), Some("backend"), "the default port is left out");
        let input = text(&e, "signature-input").unwrap();
        assert_eq!(
            input,
            r#"wsgiproxy=("@method" "@authority" "@path" "@query" "x-forwarded-for" "x-forwarded-scheme" "x-forwarded-server" "x-traversal-path" "x-wsgiproxy-str-0" "x-wsgiproxy-version");created=1795485600;keyid="k1";alg="hmac-sha256";nonce="05050505050505050505050505050505""#
        );
        // What the middleware receives verifies.
        let received: Vec<(String, Vec<u8>)> =
            e.set.iter().filter(|(n, _)| !n.starts_with(':')).map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        assert_eq!(received.iter().filter(|(n, _)| n == "signature").count(), 1, "the client's signature is replaced");
        let message = rfc9421::Message { method: b"POST", https: false, authority: b"backend", target: b"/app/x", fields: &received };
        let verified = rfc9421::verify(
            &c.signing.as_ref().unwrap().ring(),
            &message,
            run_time(),
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(2),
            is_signed_header,
        );
        assert!(verified.is_ok(), "{verified:?}");
    }

    fn run_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_485_600)
    }

    #[test]
    fn signs_what_it_sends() {
        let c = app(r#"{"role":"app","href":"http://backend:8080/app","secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}}"#);
        let e = edits(run(&c, &head(&[(":method", "POST"), (":path", "/x"), (":authority", "h")])));
        let sig = SignatureHeader::parse(e.value_of("x-wsgiproxy-signature").unwrap()).unwrap();
        assert_eq!(sig.nonce, [5; 16]);
        let date = e.value_of("date").unwrap();
        assert_eq!(date, b"Tue, 24 Nov 2026 02:00:00 GMT");
        let signed: Vec<(&str, &[u8])> = e.set.iter().filter(|(n, _)| is_signed_header(n)).map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        let parts = SignedParts { method: b"POST", authority: b"backend:8080", path: b"/app/x", date, protocol_headers: signed };
        assert!(verify_mac(&c.signing.as_ref().unwrap().ring(), &sig, &parts).is_ok());
    }
}
