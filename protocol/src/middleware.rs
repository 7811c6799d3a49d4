//! The `middleware` role (WSGIProxyMiddleware): the receiving side. Decides whether
//! a request's protocol headers are to be believed (signature, peer CIDR), decodes
//! the believed ones into plain headers any framework understands, applies the
//! forced values of the configuration, and strips everything else.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crate::codec::{decode_value, split_payload, Family};
use crate::config::{EndpointBinding, ForcedPrefix, MiddlewareConfig, OnUntrusted};
use crate::headers::*;
use crate::key_directory::{signature_key_id, Followed};
use crate::paths::{has_unsafe_segment, normalized_prefix, split_query, strip_segment_prefix, with_query};
use crate::reason::Reason;
use crate::replay::Verdict;
use crate::request::{Decision, Edits, LocalReply, RequestHead};
use crate::rfc9421::{self, SignatureFormat};
use crate::signature::{check_date, verify_mac, Nonce, Rejection, SignatureHeader, SignedParts};
use crate::trust::Downstream;

/// Longest protocol header value accepted.
pub const MAX_VALUE_LEN: usize = 8192;
/// Most payload (`x-wsgiproxy-{family}-N`) headers accepted on one request.
pub const MAX_PAYLOADS: usize = 64;

pub struct MiddlewareRequest<'a> {
    pub head: &'a RequestHead,
    /// The connection: its TCP peer (never an X-Forwarded-For entry), Envoy's
    /// computed client address, the mTLS peer identity; as [`MiddlewareConfig::needs`] says.
    pub downstream: Downstream,
    /// Whether the downstream connection is TLS.
    pub https: bool,
    pub now: SystemTime,
    /// The address the connection arrived on (`destination.address`): read only for
    /// `bind_endpoint` without `own_addresses`.
    pub local_address: Option<SocketAddr>,
}

/// Where signed requests' nonces are remembered (per Envoy, across workers): see
/// [`crate::replay`]. Only a request whose MAC verified reaches it, so a flood of
/// forged requests cannot fill it.
pub trait NonceMemory {
    /// Remembers `nonce` of a signature dated `signed_at`, at `now` (both seconds
    /// since the epoch). `Err`: the memory is full or failing (the request is refused).
    fn remember(&mut self, nonce: &Nonce, signed_at: u64, now: u64) -> Result<Verdict, String>;
}

/// What happened, for metrics and debug logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MiddlewareOutcome {
    pub trusted: bool,
    pub verified: bool,
    /// Protocol or delivered headers removed without being used.
    pub stripped: usize,
    /// Payload keys not on the allowlist.
    pub dropped_keys: usize,
    /// A secret is configured and the request carried no signature.
    pub unsigned: bool,
    /// `trust_ips` is configured but the TCP peer is unknown (no network filter
    /// recorded it): nothing was trusted by address.
    pub peer_unknown: bool,
}

fn bad_request(reason: Reason, detail: impl Into<String>) -> Decision<'static> {
    Decision::Reply(LocalReply::new(400, reason, detail))
}

/// Everything a trusted request's protocol headers said, validated (borrowed from
/// the request where it can be delivered as it came).
#[derive(Default)]
struct Believed<'a> {
    client_ip: Option<IpAddr>,
    host: Option<&'a str>,
    scheme: Option<&'static str>,
    script_name: Cow<'a, str>,
    path: Option<&'a str>,
    keys: Vec<(String, Vec<u8>)>,
    kept_pickles: Vec<String>,
}

pub fn decide<'a>(
    config: &'a MiddlewareConfig,
    req: &MiddlewareRequest<'a>,
    nonces: &mut dyn NonceMemory,
    outcome: &mut MiddlewareOutcome,
) -> Decision<'a> {
    decide_following(config, req, nonces, outcome, None)
}

/// [`decide`], with the keys fetched from the configuration's `key_directories`
/// (`followed`) beside its own: a signature whose key id is in neither is refused with
/// 403 `signature_key_unknown`, or 503 `key_directory_unavailable` when no directory
/// has a usable key (fail closed).
pub fn decide_following<'a>(
    config: &'a MiddlewareConfig,
    req: &MiddlewareRequest<'a>,
    nonces: &mut dyn NonceMemory,
    outcome: &mut MiddlewareOutcome,
    followed: Option<&Followed>,
) -> Decision<'a> {
    let head = req.head;
    let Some(target) = head.get_str(PATH) else {
        return bad_request(Reason::NoPath, "the request has no path");
    };
    let (path, query) = split_query(target);

    // Every configured trust source must hold. The address is the TCP peer only:
    // Envoy's computed client address may be an X-Forwarded-For entry.
    let downstream = &req.downstream;
    let ip_trusted = match &config.trust_ips {
        None => true,
        Some(nets) => {
            outcome.peer_unknown = downstream.tcp_peer.is_none();
            downstream.tcp_peer.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
        }
    };
    let principal_trusted = match &config.trust_principals {
        None => true,
        Some(principals) => principals.iter().any(|p| p.matches(downstream)),
    };
    let peer_trusted = ip_trusted && principal_trusted;
    let mut trusted = peer_trusted;
    // RFC 9421: whether the verified signature's fields held our member alone.
    let mut signature_alone = false;
    if peer_trusted {
        if let Err(reply) = check_protocol_headers(head) {
            return reply;
        }
        if let Some(keys) = &config.verify {
            match verify(config, &keys.ring(), req, nonces, followed) {
                Ok(alone) => {
                    signature_alone = alone;
                    outcome.verified = true;
                    if let Some(binding) = &config.bind_endpoint {
                        if let Err(reply) = check_endpoint(binding, head, req.local_address) {
                            return reply;
                        }
                    }
                }
                Err(Err(reply)) => return reply,
                Err(Ok(Rejection::Missing)) => {
                    outcome.unsigned = true;
                    trusted = false
                }
                Err(Ok(rejection)) => return signature_reply(rejection),
            }
        }
    }
    outcome.trusted = trusted;
    if !trusted && config.on_untrusted == OnUntrusted::Reject {
        let has_signature_config = config.verify.is_some();
        return Decision::Reply(if peer_trusted && has_signature_config {
            LocalReply::new(401, Rejection::Missing.reason(), "the request is not signed")
        } else {
            LocalReply::new(403, Reason::UntrustedPeer, "the request comes from a peer this proxy does not trust")
        });
    }

    let believed = if trusted {
        match believe(config, head, path, downstream.tcp_peer, outcome) {
            Ok(b) => b,
            Err(reply) => return reply,
        }
    } else {
        Believed::default()
    };

    // Values from the connection where the protocol said nothing (or was not believed).
    // Borrowed from the request or the configuration unless they are made here.
    let mut host: Cow<'a, str> = Cow::Borrowed(match believed.host {
        Some(h) => h,
        None => head.get_str(AUTHORITY).unwrap_or_default(),
    });
    let mut scheme: &'a str = believed.scheme.unwrap_or(if req.https { "https" } else { "http" });
    let client_ip = believed.client_ip.or_else(|| config.client_address.pick(downstream));
    let mut script_name = believed.script_name;
    let mut new_path: Cow<'a, str> = Cow::Borrowed(believed.path.unwrap_or(path));

    // Forced values of the configuration apply to every request.
    match &config.forced_prefix {
        ForcedPrefix::None => {}
        ForcedPrefix::Prefix(p) => script_name = Cow::Borrowed(p),
        ForcedPrefix::Pop(p) => match strip_segment_prefix(&new_path, p) {
            Some(rest) => {
                new_path = Cow::Owned(if rest.is_empty() { "/".into() } else { rest.to_string() });
                script_name.to_mut().push_str(p);
            }
            None => {
                return bad_request(
                    Reason::OutsidePopPrefix,
                    format!("every request here must start with the path {p}, but this one is {new_path}"),
                )
            }
        },
    }
    if new_path != path && has_unsafe_segment(&new_path) {
        return bad_request(Reason::UnsafePath, "the path holds dot segments, back slashes or encoded slashes");
    }
    if let Some(s) = &config.scheme {
        scheme = s;
    }
    if let Some(h) = &config.host {
        host = Cow::Borrowed(h);
    } else if config.domain.is_some() || config.port.is_some() {
        let (current_host, current_port) = parse_authority(host.as_bytes()).unwrap_or((&host, None));
        let name = config.domain.as_deref().unwrap_or(current_host);
        host = Cow::Owned(match config.port.or(current_port) {
            Some(port) => format!("{name}:{port}"),
            None => name.to_string(),
        });
    }

    // Build the edits: strip, then deliver (room for a signed request's protocol
    // headers and what is delivered in their place).
    let mut edits = Edits::with_capacity(16, 8);
    let delivered = |name: &str| {
        matches!(name, X_FORWARDED_HOST | X_FORWARDED_PROTO | X_FORWARDED_PREFIX | X_FORWARDED_FOR)
            || config.keys.values().any(|h| h == name)
    };
    // What a trusted request's protocol headers said is consumed; anything else
    // that could describe the client, host or scheme is stripped.
    let consumed = |name: &str| is_protocol_header(name) || delivered(name);
    let unwanted = |name: &str| consumed(name) || COMPETING_FORWARDING_HEADERS.contains(&name);
    for (name, _) in head.iter() {
        let name_consumed = consumed(name);
        let wanted = !name_consumed && !COMPETING_FORWARDING_HEADERS.contains(&name) && !is_underscore_spelling_of(name, unwanted);
        if wanted || believed.kept_pickles.iter().any(|k| k == name) {
            continue;
        }
        // Each name once: a repeated header is removed (and counted) at its first line.
        if edits.remove(name) && (!trusted || !name_consumed) {
            outcome.stripped += 1;
        }
    }
    // The query is kept as it came, so the target changes exactly when the path does.
    if new_path != path {
        edits.set(PATH, with_query(&new_path, query));
    }
    if head.get(AUTHORITY) != Some(host.as_bytes()) && !host.is_empty() {
        edits.set(AUTHORITY, host.clone());
    }
    if !host.is_empty() {
        edits.set(X_FORWARDED_HOST, host);
    }
    edits.set(X_FORWARDED_PROTO, scheme);
    if let Some(ip) = client_ip {
        edits.set(X_FORWARDED_FOR, crate::request::ip_text(ip));
    }
    if !script_name.is_empty() {
        edits.set(X_FORWARDED_PREFIX, script_name);
    }
    for (header, value) in believed.keys {
        edits.set(header, value);
    }
    strip_consumed_rfc9421_signature(config, head, signature_alone, &mut edits);
    edits.into_decision()
}

fn signature_reply(rejection: Rejection) -> Decision<'static> {
    let detail = match rejection {
        Rejection::Missing => "the request is not signed",
        Rejection::Bad => "the request signature is not valid",
        Rejection::Stale => "the request Date is missing or outside the accepted window",
        Rejection::DatedAhead => {
            "the request is dated further ahead of this proxy's clock than max_future_seconds allows: check the sender's clock"
        }
        Rejection::Replayed => "the request was already received (replayed nonce)",
        Rejection::BeforeReplayMemory => {
            "the request was signed before this proxy's replay memory began (a restart): send it again, newly signed"
        }
    };
    let status = match rejection {
        Rejection::Missing => 401,
        // RFC 8470's Too Early: the request might be a replay; a new one is welcome.
        Rejection::BeforeReplayMemory => 425,
        _ => 403,
    };
    Decision::Reply(LocalReply::new(status, rejection.reason(), detail))
}

/// Refuses duplicate, oversized or control-character protocol headers and too many payloads.
fn check_protocol_headers(head: &RequestHead) -> Result<(), Decision<'static>> {
    let mut seen: Vec<&str> = Vec::with_capacity(head.len());
    let mut payloads = 0;
    for (name, value) in head.iter() {
        if !is_protocol_header(name) {
            continue;
        }
        if seen.contains(&name) {
            return Err(bad_request(Reason::DuplicateHeader, format!("the header {name} is given more than once")));
        }
        seen.push(name);
        if value.len() > MAX_VALUE_LEN {
            return Err(bad_request(Reason::OversizedHeader, format!("the header {name} is longer than {MAX_VALUE_LEN} bytes")));
        }
        if !is_safe_value(value) {
            return Err(bad_request(Reason::ControlCharacter, format!("the header {name} holds a control character")));
        }
        if Family::parse_header_name(name).is_some() {
            payloads += 1;
        }
    }
    if payloads > MAX_PAYLOADS {
        return Err(bad_request(Reason::TooManyPayloads, format!("more than {MAX_PAYLOADS} payload headers")));
    }
    Ok(())
}

/// `bind_endpoint`: the verified signature must have been made for this receiver, so
/// that a request captured on its way to one replica is refused by every other.
fn check_endpoint(binding: &EndpointBinding, head: &RequestHead, local: Option<SocketAddr>) -> Result<(), Decision<'static>> {
    let refuse = |reason, detail: String| Err(Decision::Reply(LocalReply::new(403, reason, detail)));
    let Some(named) = head.get_str(X_WSGIPROXY_ENDPOINT) else {
        return refuse(Reason::EndpointMissing, "the signature names no endpoint (the sender signs before choosing one)".into());
    };
    let Ok(named) = named.trim().parse::<SocketAddr>() else {
        return refuse(Reason::WrongEndpoint, format!("the signed endpoint {named:?} is not an ip:port address"));
    };
    let named = SocketAddr::new(named.ip().to_canonical(), named.port());
    let ours = if binding.own_addresses.is_empty() {
        local.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())).into_iter().collect()
    } else {
        binding.own_addresses.clone()
    };
    if ours.contains(&named) {
        Ok(())
    } else {
        refuse(Reason::WrongEndpoint, format!("the request was signed for {named}, not for this receiver"))
    }
}

/// Verifies the signature; `Ok(true)` when RFC 9421's fields held our member alone.
/// `Err(Ok(_))` is a rejection, `Err(Err(_))` a reply to send as is.
fn verify(
    config: &MiddlewareConfig,
    ring: &crate::signature::KeyRing,
    req: &MiddlewareRequest<'_>,
    nonces: &mut dyn NonceMemory,
    followed: Option<&Followed>,
) -> Result<bool, Result<Rejection, Decision<'static>>> {
    if config.signature_format == SignatureFormat::Rfc9421 {
        let ring = match followed {
            Some(followed) => followed_ring(ring, req.head, followed)?,
            None => ring,
        };
        return verify_rfc9421(config, ring, req, nonces);
    }
    let head = req.head;
    let Some(raw) = head.get(X_WSGIPROXY_SIGNATURE) else {
        return Err(Ok(Rejection::Missing));
    };
    let signature = SignatureHeader::parse(raw).ok_or(Ok(Rejection::Bad))?;
    let date = head.get(DATE).ok_or(Ok(Rejection::Stale))?;
    let date_secs = check_date(date, req.now, config.max_skew, config.max_future).map_err(Ok)?;
    let mut parts = SignedParts {
        method: head.get(METHOD).unwrap_or_default(),
        authority: head.get(AUTHORITY).unwrap_or_default(),
        path: head.get(PATH).unwrap_or_default(),
        date,
        protocol_headers: Vec::with_capacity(head.len()),
    };
    parts.protocol_headers.extend(head.iter().filter(|(n, _)| crate::signature::is_signed_header(n)).map(|(n, v)| match n {
        X_FORWARDED_FOR => (n, sender_forwarded_for(v, req.downstream.tcp_peer)),
        _ => (n, v),
    }));
    verify_mac(ring, &signature, &parts).map_err(Ok)?;
    remember_nonce(nonces, &signature.nonce, date_secs, req.now).map(|()| false)
}

/// The ring that holds the signature's key id: the configuration's own, else the
/// directories' (the configuration's wins a key id both hold). Unknown to both: a
/// refusal that says so.
fn followed_ring<'r>(
    own: &'r crate::signature::KeyRing,
    head: &RequestHead,
    followed: &'r Followed,
) -> Result<&'r crate::signature::KeyRing, Result<Rejection, Decision<'static>>> {
    let lines: Vec<Vec<u8>> = head.iter().filter(|(n, _)| *n == rfc9421::SIGNATURE_INPUT).map(|(_, v)| v.to_vec()).collect();
    let Some(id) = signature_key_id(&lines) else { return Ok(own) };
    if own.key(&id).is_some() {
        return Ok(own);
    }
    match &followed.ring {
        Some(ring) if ring.key(&id).is_some() => Ok(ring),
        _ if !followed.answered => Err(Err(Decision::Reply(
            LocalReply::new(
                503,
                Reason::KeyDirectoryUnavailable,
                "no key directory has a usable key (not fetched yet, or failing past max_stale_seconds)",
            )
            .with_header("retry-after", "1"),
        ))),
        _ => Err(Err(Decision::Reply(LocalReply::new(
            403,
            Reason::SignatureKeyUnknown,
            format!("the signature's key id {id:?} is not in this receiver's keys nor in its key directories"),
        )))),
    }
}

/// Verifies an RFC 9421 signature (see [`crate::rfc9421`]) with the same keys,
/// window and replay memory as v1.
fn verify_rfc9421(
    config: &MiddlewareConfig,
    ring: &crate::signature::KeyRing,
    req: &MiddlewareRequest<'_>,
    nonces: &mut dyn NonceMemory,
) -> Result<bool, Result<Rejection, Decision<'static>>> {
    let head = req.head;
    let message = rfc9421::Message {
        method: head.get(METHOD).unwrap_or_default(),
        https: req.https,
        authority: head.get(AUTHORITY).unwrap_or_default(),
        target: head.get(PATH).unwrap_or_default(),
        // The head read in place: no copy of every header.
        fields: head,
    };
    let verified = rfc9421::verify_requiring(
        ring,
        &message,
        req.now,
        config.max_skew,
        config.max_future,
        crate::signature::is_signed_header,
        &config.required_components,
    )
    .map_err(Ok)?;
    remember_nonce(nonces, &verified.nonce, verified.created, req.now).map(|()| verified.alone)
}

/// RFC 9421: our member of `Signature-Input` and `Signature` is consumed like the
/// protocol headers; other signatures pass on untouched.
fn strip_consumed_rfc9421_signature(config: &MiddlewareConfig, head: &RequestHead, alone: bool, edits: &mut Edits<'_>) {
    if config.signature_format != SignatureFormat::Rfc9421 {
        return;
    }
    // Verification already read both fields as our member alone: no second reading.
    if alone {
        edits.remove(rfc9421::SIGNATURE_INPUT);
        edits.remove(rfc9421::SIGNATURE);
        return;
    }
    for name in [rfc9421::SIGNATURE_INPUT, rfc9421::SIGNATURE] {
        // One line (as sent by our app role) is read in place; several are combined first.
        let mut lines = head.iter().filter(|(n, _)| *n == name);
        let consumed = match (lines.next(), lines.next()) {
            (None, _) => None,
            (Some((_, value)), None) => Some(rfc9421::without_our_member(value)),
            _ => rfc9421::combined(&head.to_pairs(), name).map(|v| rfc9421::without_our_member(&v)),
        };
        match consumed {
            Some(rfc9421::Consumed::Rest(rest)) => edits.set(name, rest),
            Some(rfc9421::Consumed::All) => {
                edits.remove(name);
            }
            Some(rfc9421::Consumed::NotOurs) | None => {}
        }
    }
}

/// Records a verified signature's nonce; a replay or an unusable memory is refused.
fn remember_nonce(
    nonces: &mut dyn NonceMemory,
    nonce: &Nonce,
    signed_at: u64,
    now: SystemTime,
) -> Result<(), Result<Rejection, Decision<'static>>> {
    let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    match nonces.remember(nonce, signed_at, now_secs) {
        Ok(Verdict::Fresh) => Ok(()),
        Ok(Verdict::Replayed) => Err(Ok(Rejection::Replayed)),
        Ok(Verdict::SignedBeforeMemory) => Err(Ok(Rejection::BeforeReplayMemory)),
        Ok(Verdict::Expired) => Err(Ok(Rejection::Stale)),
        Err(e) => Err(Err(Decision::Reply(
            LocalReply::new(503, Reason::ReplayStoreUnavailable, format!("cannot check the request for replay: {e}"))
                .with_header("retry-after", "1"),
        ))),
    }
}

/// The X-Forwarded-For the sender wrote. Under `use_remote_address: true` without
/// `skip_xff_append`, Envoy appends the TCP peer to it before any filter runs: that
/// last entry is Envoy's own, not the sender's, and is taken off again.
pub fn sender_forwarded_for(value: &[u8], tcp_peer: Option<IpAddr>) -> &[u8] {
    let Some(peer) = tcp_peer else { return value };
    let Some(comma) = value.iter().rposition(|b| *b == b',') else { return value };
    let last = std::str::from_utf8(&value[comma + 1..]).ok().and_then(|s| s.trim().parse::<IpAddr>().ok()).map(|ip| ip.to_canonical());
    if last == Some(peer) {
        value[..comma].trim_ascii_end()
    } else {
        value
    }
}

/// Validates and decodes a trusted request's protocol headers.
fn believe<'a>(
    config: &MiddlewareConfig,
    head: &'a RequestHead,
    path: &'a str,
    tcp_peer: Option<IpAddr>,
    outcome: &mut MiddlewareOutcome,
) -> Result<Believed<'a>, Decision<'static>> {
    let mut b = Believed::default();
    if let Some(v) = head.get(X_WSGIPROXY_VERSION) {
        if v != PROTOCOL_VERSION.as_bytes() {
            return Err(bad_request(Reason::UnsupportedVersion, format!("X-WSGIProxy-Version must be {PROTOCOL_VERSION}")));
        }
    }
    if let Some(v) = head.get(X_FORWARDED_FOR).map(|v| sender_forwarded_for(v, tcp_peer)) {
        let ip = std::str::from_utf8(v).ok().and_then(|s| s.trim().parse::<IpAddr>().ok());
        b.client_ip = Some(ip.ok_or_else(|| bad_request(Reason::BadForwardedFor, "X-Forwarded-For must hold exactly one IP address"))?);
    }
    if let Some(v) = head.get(X_FORWARDED_SERVER) {
        if parse_authority(v).is_none() {
            return Err(bad_request(Reason::BadForwardedServer, "X-Forwarded-Server must be host or host:port"));
        }
        b.host = std::str::from_utf8(v).ok();
    }
    if let Some(v) = head.get(X_FORWARDED_SCHEME) {
        // In any case; delivered in lowercase.
        b.scheme = Some(if v.eq_ignore_ascii_case(b"http") {
            "http"
        } else if v.eq_ignore_ascii_case(b"https") {
            "https"
        } else {
            return Err(bad_request(Reason::BadForwardedScheme, "X-Forwarded-Scheme must be http or https"));
        });
    }
    let script = match (head.get(X_SCRIPT_NAME), head.get(X_FORWARDED_SCRIPT_NAME)) {
        (Some(a), Some(c)) if a != c => {
            return Err(bad_request(Reason::ConflictingScriptName, "X-Script-Name and X-Forwarded-Script-Name disagree"))
        }
        (Some(a), _) | (None, Some(a)) => Some(a),
        (None, None) => None,
    };
    if let Some(v) = script {
        let text = std::str::from_utf8(v).unwrap_or("\u{fffd}");
        b.script_name =
            Cow::Borrowed(normalized_prefix(text).map_err(|e| bad_request(Reason::BadScriptName, format!("X-Script-Name {e}")))?);
    }
    if let Some(v) = head.get(X_TRAVERSAL_PATH) {
        let text = std::str::from_utf8(v).unwrap_or("\u{fffd}");
        // WSGIProxy 0.2.2 sent it without its leading slash.
        let with_slash: Cow<'_, str> =
            if text.starts_with('/') || text.is_empty() { Cow::Borrowed(text) } else { Cow::Owned(format!("/{text}")) };
        let traversal =
            normalized_prefix(&with_slash).map_err(|e| bad_request(Reason::BadTraversalPath, format!("X-Traversal-Path {e}")))?;
        let rest = strip_segment_prefix(path, traversal).ok_or_else(|| {
            bad_request(
                Reason::OutsideTraversalPath,
                format!("the header X-Traversal-Path gives {traversal} but the path {path} does not start with it"),
            )
        })?;
        b.path = Some(if rest.is_empty() { "/" } else { rest });
    }

    let mut seen_keys: Vec<String> = Vec::new();
    for (name, value) in head.iter() {
        let Some(parsed) = Family::parse_header_name(name) else { continue };
        let (family, _) = parsed.map_err(|e| bad_request(Reason::BadPayloadIndex, e))?;
        let (key, wire) = split_payload(value).map_err(|e| bad_request(Reason::BadPayload, format!("{name}: {e}")))?;
        if seen_keys.contains(&key) {
            return Err(bad_request(Reason::DuplicateKey, format!("{name}: the key {key} is given more than once")));
        }
        let target = config.keys.get(&key);
        seen_keys.push(key);
        let Some(target) = target else {
            outcome.dropped_keys += 1;
            continue;
        };
        if family == Family::Pickle {
            if config.allow_pickle {
                b.kept_pickles.push(name.to_string());
            } else {
                outcome.dropped_keys += 1;
            }
            continue;
        }
        let decoded = decode_value(family, wire).map_err(|e| bad_request(Reason::UndecodablePayload, format!("{name}: {e}")))?;
        if !is_safe_value(&decoded) {
            let key = seen_keys.last().map(String::as_str).unwrap_or_default();
            return Err(bad_request(
                Reason::UndeliverableValue,
                format!("{name}: the value of {key} holds control characters and cannot be delivered as a header"),
            ));
        }
        b.keys.push((target.clone(), decoded));
    }
    Ok(b)
}

#[cfg(test)]
mod tests;
