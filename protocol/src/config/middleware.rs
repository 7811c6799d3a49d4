//! The `middleware` role's configuration: whom to trust, what to verify and deliver.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::headers::{is_lowercase_token, is_reserved_name};
use crate::key_files::Keys;
use crate::paths::normalize_prefix;
use crate::rfc9421::SignatureFormat;
use crate::trust::{ClientAddress, Needs, Principal};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMiddleware {
    #[serde(default)]
    trust_ips: Option<Vec<String>>,
    #[serde(default)]
    trust_principals: Option<Vec<String>>,
    #[serde(default)]
    client_address: Option<String>,
    #[serde(default)]
    secret: Option<RawSecret>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    key_directories: Option<Vec<RawKeyDirectory>>,
    #[serde(default)]
    signature_format: Option<String>,
    #[serde(default)]
    required_components: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_skew_seconds: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_future_seconds: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    replay_memory_mb: Option<u64>,
    #[serde(default)]
    replay_memory_path: Option<String>,
    #[serde(default)]
    bind_endpoint: Option<bool>,
    #[serde(default)]
    own_addresses: Option<Vec<String>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    pop_prefix: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    port: Option<u64>,
    #[serde(default)]
    keys: BTreeMap<String, String>,
    #[serde(default)]
    allow_pickle: bool,
    #[serde(default)]
    on_untrusted: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUntrusted {
    Strip,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForcedPrefix {
    None,
    /// SCRIPT_NAME is this, whatever the request said.
    Prefix(String),
    /// This is popped off the path and appended to SCRIPT_NAME.
    Pop(String),
}

#[derive(Debug)]
pub struct MiddlewareConfig {
    /// TCP peers whose headers are believed; `None` means any address.
    pub trust_ips: Option<Vec<IpNet>>,
    /// mTLS peer identities whose headers are believed; `None` means any.
    pub trust_principals: Option<Vec<Principal>>,
    /// Which address describes the client of a request whose headers are not believed.
    pub client_address: ClientAddress,
    /// The keys signatures are verified with (some may be re-read from files).
    pub verify: Option<Keys>,
    /// Where more public keys are fetched (empty: the `secret` alone verifies).
    pub key_directories: Vec<crate::key_directory::DirectorySource>,
    /// Which signatures are verified: `X-WSGIProxy-Signature` or RFC 9421.
    pub signature_format: SignatureFormat,
    /// Components every RFC 9421 signature must cover, besides `@method`,
    /// `@authority`, `@path`, `@query` and the protocol headers present (always
    /// required): a signature covering fewer is refused, whatever it verifies.
    pub required_components: Vec<String>,
    pub max_skew: Duration,
    /// How far ahead of this proxy's clock a signature may be dated. Small, and of its
    /// own: the replay memory refuses, after a restart, whatever could have been
    /// accepted before it (signatures dated up to this far past its first second).
    pub max_future: Duration,
    /// The most memory the replay memory may take (bytes); past it, signed
    /// requests are refused with 503.
    pub replay_memory_bytes: u64,
    /// The native module's memory file (`replay_memory_path`); `None`: the default,
    /// `/dev/shm/wsgiproxy-replay-<uid>`. Every process given one path shares one memory.
    pub replay_memory_path: Option<String>,
    /// Signatures must name this receiver as their endpoint (`X-WSGIProxy-Endpoint`).
    pub bind_endpoint: Option<EndpointBinding>,
    pub forced_prefix: ForcedPrefix,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub domain: Option<String>,
    pub port: Option<u16>,
    /// Allowlisted environ key → header it is delivered as.
    pub keys: BTreeMap<String, String>,
    pub allow_pickle: bool,
    pub on_untrusted: OnUntrusted,
}

/// How a receiver knows a signature was made for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointBinding {
    /// The addresses senders reach this receiver at; empty: the address each
    /// connection arrived on (Envoy's `destination.address`). Listed where a NAT or an
    /// L4 load balancer stands between the hops.
    pub own_addresses: Vec<SocketAddr>,
}

impl MiddlewareConfig {
    /// What the role reads about the downstream connection.
    pub fn needs(&self) -> Needs {
        let trust = Needs { tcp_peer: self.trust_ips.is_some(), envoy_client: false, principals: self.trust_principals.is_some() };
        trust.union(self.client_address.needs())
    }
}

pub const DEFAULT_MAX_SKEW_SECONDS: u64 = 300;
/// How far ahead of the receiver's clock a signature may be dated, by default: a
/// Date is whole seconds, so a sender's clock a fraction of a second ahead already
/// dates it a second ahead; 2 leaves room for that and a little drift. A freshly
/// started replay memory refuses signatures dated up to this far past its first
/// second (425), so a larger value lengthens that refusal after every start.
pub const DEFAULT_MAX_FUTURE_SECONDS: u64 = 2;
/// The longest `replay_memory_path` (the memory file's header records it).
pub const REPLAY_MEMORY_PATH_MAX_BYTES: usize = 256;
/// The most `max_future_seconds` may be.
pub const MAX_FUTURE_SECONDS: u64 = 60;

/// At the default skew, room for 50,000 signed requests a second sustained in both
/// loaders: the Wasm filter's keys about half full at that rate (its 256 MB held
/// only about 35,000 a second), the native module's memory about a third. It is a
/// bound, not an allocation: an idle Envoy holds the Wasm filter's empty keys only.
pub const DEFAULT_REPLAY_MEMORY_MB: u64 = 512;

pub(super) const MAX_REPLAY_MEMORY_MB: u64 = 65_536;

pub(super) fn validate_middleware(
    raw: RawMiddleware,
    env: &dyn Fn(&str) -> Option<String>,
    files: Option<&dyn KeyFiles>,
) -> Result<MiddlewareConfig, ConfigError> {
    let mut trust_ips = raw.trust_ips.as_ref().map(|list| Vec::with_capacity(list.len()));
    for (i, entry) in raw.trust_ips.iter().flatten().enumerate() {
        trust_ips.get_or_insert_with(Vec::new).push(network(entry, &format!("trust_ips[{i}]"))?);
    }
    let trust_principals = match raw.trust_principals {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new("trust_principals", "must list at least one principal (or be left out)"))
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| Principal::parse(p).map_err(|e| ConfigError::new(format!("trust_principals[{i}]"), e)))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let (signature_format, algorithm) = signature_format(raw.signature_format.as_deref(), raw.algorithm.as_deref())?;
    let mut verify = key_ring(raw.secret, algorithm, KeyUse::Verify, env, files)?;
    let key_directories = key_directories(
        raw.key_directories,
        algorithm.and_then(crate::signature::Algorithm::from_name).filter(|_| signature_format == SignatureFormat::Rfc9421),
    )?;
    if verify.is_none() && !key_directories.is_empty() {
        // Every key comes from the directories.
        verify = algorithm.and_then(crate::signature::Algorithm::from_name).map(|a| Keys::fixed(crate::signature::KeyRing::empty(a)));
    }
    let required_components = required_components(raw.required_components, signature_format, verify.is_some())?;
    if raw.trust_ips.is_none() && trust_principals.is_none() && verify.is_none() {
        return Err(ConfigError::new(
            "trust_ips",
            "trust must be configured: give \"trust_ips\" (TCP peers; to trust everyone: [\"0.0.0.0/0\", \"::/0\"]), \"trust_principals\" (mTLS identities) or \"secret\"",
        ));
    }
    let max_skew = Duration::from_secs(raw.max_skew_seconds.unwrap_or(DEFAULT_MAX_SKEW_SECONDS));
    if max_skew.is_zero() || max_skew > Duration::from_secs(3600) {
        return Err(ConfigError::new("max_skew_seconds", "must be between 1 and 3600"));
    }
    let max_future = Duration::from_secs(raw.max_future_seconds.unwrap_or(DEFAULT_MAX_FUTURE_SECONDS.min(max_skew.as_secs())));
    if max_future > max_skew.min(Duration::from_secs(MAX_FUTURE_SECONDS)) {
        return Err(ConfigError::new(
            "max_future_seconds",
            format!("must be between 0 and {MAX_FUTURE_SECONDS}, and not more than max_skew_seconds"),
        ));
    }
    let replay_memory_mb = raw.replay_memory_mb.unwrap_or(DEFAULT_REPLAY_MEMORY_MB);
    if !(1..=MAX_REPLAY_MEMORY_MB).contains(&replay_memory_mb) {
        return Err(ConfigError::new("replay_memory_mb", format!("must be between 1 and {MAX_REPLAY_MEMORY_MB}")));
    }
    let replay_memory_path = match raw.replay_memory_path {
        Some(path) if !path.starts_with('/') || path.ends_with('/') || path.len() > REPLAY_MEMORY_PATH_MAX_BYTES || path.contains('\0') => {
            return Err(ConfigError::new(
                "replay_memory_path",
                format!("must be an absolute path to a file (not a directory), at most {REPLAY_MEMORY_PATH_MAX_BYTES} bytes"),
            ))
        }
        path => path,
    };
    let bind_endpoint = match (raw.bind_endpoint.unwrap_or(false), raw.own_addresses) {
        (false, None) => None,
        (false, Some(_)) => return Err(ConfigError::new("own_addresses", "goes with \"bind_endpoint\": true")),
        (true, _) if verify.is_none() => {
            return Err(ConfigError::new("bind_endpoint", "needs a secret: the endpoint is bound by the signature"))
        }
        (true, addresses) => {
            let mut own_addresses = Vec::new();
            for (i, entry) in addresses.iter().flatten().enumerate() {
                let address: SocketAddr = entry
                    .parse()
                    .map_err(|_| ConfigError::new(format!("own_addresses[{i}]"), format!("{entry:?} is not an ip:port address")))?;
                own_addresses.push(SocketAddr::new(address.ip().to_canonical(), address.port()));
            }
            Some(EndpointBinding { own_addresses })
        }
    };
    let forced_prefix = match (raw.prefix, raw.pop_prefix) {
        (Some(_), Some(_)) => return Err(ConfigError::new("pop_prefix", "cannot be given together with \"prefix\"")),
        (Some(p), None) => ForcedPrefix::Prefix(normalize_prefix(&p).map_err(|e| ConfigError::new("prefix", e))?),
        (None, Some(p)) => {
            let p = normalize_prefix(&p).map_err(|e| ConfigError::new("pop_prefix", e))?;
            if p.is_empty() {
                return Err(ConfigError::new("pop_prefix", "must not be empty or /"));
            }
            ForcedPrefix::Pop(p)
        }
        (None, None) => ForcedPrefix::None,
    };
    let scheme = match raw.scheme.map(|s| s.to_ascii_lowercase()) {
        None => None,
        Some(s) if s == "http" || s == "https" => Some(s),
        Some(s) => return Err(ConfigError::new("scheme", format!("{s:?} is not \"http\" or \"https\""))),
    };
    if raw.host.is_some() && raw.domain.is_some() {
        return Err(ConfigError::new("domain", "cannot be given together with \"host\""));
    }
    if raw.host.is_some() && raw.port.is_some() {
        return Err(ConfigError::new("port", "cannot be given together with \"host\""));
    }
    if let Some(host) = &raw.host {
        match crate::headers::parse_authority(host.as_bytes()) {
            Some((_, Some(_))) => {}
            _ => return Err(ConfigError::new("host", format!("{host:?} must be host:port (use \"domain\" for a host alone)"))),
        }
    }
    if let Some(domain) = &raw.domain {
        if !matches!(crate::headers::parse_authority(domain.as_bytes()), Some((_, None))) {
            return Err(ConfigError::new("domain", format!("{domain:?} must be a host name without a port")));
        }
    }
    let port = match raw.port {
        None => None,
        Some(p) => Some(u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| ConfigError::new("port", "must be 1 to 65535"))?),
    };
    let mut keys = BTreeMap::new();
    for (key, header) in raw.keys {
        let header = header.to_ascii_lowercase();
        if !is_lowercase_token(&header) || is_reserved_name(&header) {
            return Err(ConfigError::new(
                format!("keys.{key}"),
                format!("{header:?} cannot be used: it must be a header name that is not a pseudo, hop-by-hop, X-Forwarded-* or protocol header"),
            ));
        }
        if keys.values().any(|h| h == &header) {
            return Err(ConfigError::new(format!("keys.{key}"), format!("header {header:?} is used by two keys")));
        }
        keys.insert(key, header);
    }
    let on_untrusted = match raw.on_untrusted.as_deref() {
        None | Some("strip") => OnUntrusted::Strip,
        Some("reject") => OnUntrusted::Reject,
        Some(other) => return Err(ConfigError::new("on_untrusted", format!("{other:?} is not \"strip\" or \"reject\""))),
    };
    Ok(MiddlewareConfig {
        trust_ips,
        trust_principals,
        client_address: client_address(raw.client_address.as_deref())?,
        verify,
        key_directories,
        signature_format,
        required_components,
        max_skew,
        max_future,
        replay_memory_bytes: replay_memory_mb << 20,
        replay_memory_path,
        bind_endpoint,
        forced_prefix,
        scheme,
        host: raw.host,
        domain: raw.domain,
        port,
        keys,
        allow_pickle: raw.allow_pickle,
        on_untrusted,
    })
}

/// `required_components`: RFC 9421 signatures only (v1 covers a fixed set: method,
/// host, path with query, Date and every protocol header present), at least one,
/// each a component a request's signature can cover.
fn required_components(raw: Option<Vec<String>>, format: SignatureFormat, verifies: bool) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    if !verifies || format != SignatureFormat::Rfc9421 {
        return Err(ConfigError::new(
            "required_components",
            "goes with RFC 9421 signatures (\"signature_format\": \"rfc9421\" and a \"secret\"): v1 signatures cover a fixed set, method, host, path with query, Date and every protocol header present",
        ));
    }
    if list.is_empty() {
        return Err(ConfigError::new("required_components", "must list at least one component (or be left out)"));
    }
    let mut required: Vec<String> = Vec::with_capacity(list.len());
    for (i, name) in list.into_iter().enumerate() {
        crate::rfc9421::check_required_component(&name).map_err(|e| ConfigError::new(format!("required_components[{i}]"), e))?;
        if !required.contains(&name) {
            required.push(name);
        }
    }
    Ok(required)
}
