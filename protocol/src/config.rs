//! The filter's `configuration` JSON: parsed strictly, validated once, and turned
//! into ready-to-use values (parsed href and CIDRs, keyed MAC state, header names).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::asymmetric::{self, AsymmetricKey};
use crate::codec::Family;
use crate::headers::{is_lowercase_token, is_reserved_name};
use crate::href::Href;
use crate::paths::normalize_prefix;
use crate::rfc9421::SignatureFormat;
use crate::signature::{Algorithm, KeyRing};
use crate::trust::{ClientAddress, Needs, Principal};

/// A configuration that cannot be used: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration: field `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------- raw form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    href: String,
    #[serde(default)]
    script_name: Option<String>,
    #[serde(default)]
    string_keys: Vec<RawKey>,
    #[serde(default)]
    unicode_keys: Vec<RawKey>,
    #[serde(default)]
    json_keys: Vec<RawKey>,
    #[serde(default)]
    pickle_keys: Vec<RawKey>,
    #[serde(default)]
    secret: Option<RawSecret>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    signature_format: Option<String>,
    #[serde(default)]
    rewrite_response: Option<bool>,
    #[serde(default)]
    client_address: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    bind_endpoint: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    key: String,
    #[serde(default)]
    from_header: Option<String>,
    #[serde(default)]
    from_property: Option<Vec<String>>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    keys: Vec<RawSecretKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretKey {
    id: String,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMiddleware {
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
    signature_format: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_skew_seconds: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    replay_memory_mb: Option<u64>,
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

/// The `peer` role takes no settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExact {
    allow_hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpawn {
    app: String,
    sidecar_cluster: String,
    #[serde(default)]
    sidecar_authority: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    ensure_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    report_interval_ms: Option<u64>,
    #[serde(default)]
    upstream_networks: Option<Vec<String>>,
}

/// Istio passes `pluginConfig` numbers as doubles: accept `300.0` where `300` is meant.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<serde_json::Number>::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(n) => {
            if let Some(u) = n.as_u64() {
                return Ok(Some(u));
            }
            match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64 => Ok(Some(f as u64)),
                _ => Err(de::Error::custom(format!("expected a whole non-negative number, got {n}"))),
            }
        }
    }
}

// ---------------------------------------------------------------- ready form

/// A validated configuration, one variant per role.
#[derive(Debug)]
pub enum Config {
    App(AppConfig),
    Middleware(MiddlewareConfig),
    Spawn(SpawnConfig),
    Exact(crate::exact::ExactConfig),
    /// Loaded as a network filter: records each connection's TCP peer for the
    /// `app` and `middleware` roles (see [`crate::trust`]).
    Peer,
}

impl Config {
    pub fn role(&self) -> &'static str {
        match self {
            Config::App(_) => "app",
            Config::Middleware(_) => "middleware",
            Config::Spawn(_) => "spawn",
            Config::Exact(_) => "exact",
            Config::Peer => "peer",
        }
    }
}

/// Where an app-role key's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(String),
    Property(Vec<String>),
    Value(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct KeySpec {
    pub family: Family,
    pub key: String,
    pub source: KeySource,
}

#[derive(Debug)]
pub struct AppConfig {
    pub href: Href,
    /// The mount point, normalised; `None` when the route serves everything.
    pub script_name: Option<String>,
    pub keys: Vec<KeySpec>,
    pub signing: Option<KeyRing>,
    /// How requests are signed: `X-WSGIProxy-Signature` or RFC 9421.
    pub signature_format: SignatureFormat,
    /// Rewrite `Location`, `Content-Location` and `Set-Cookie` paths back to the client's view.
    pub rewrite_response: bool,
    /// Which address is sent as X-Forwarded-For.
    pub client_address: ClientAddress,
    /// The listener's scheme, when the operator declares it: every connection is then
    /// taken to be https (or http) without asking the host about TLS per request.
    pub scheme: Option<DeclaredScheme>,
    /// Sign in the cluster's upstream filter, binding each signature to the endpoint
    /// the load balancer chose (`X-WSGIProxy-Endpoint`): before routing the role does
    /// everything but sign.
    pub bind_endpoint: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredScheme {
    Http,
    Https,
}

impl AppConfig {
    /// What the role reads about the downstream connection.
    pub fn needs(&self) -> Needs {
        self.client_address.needs()
    }

    /// Whether the request came over TLS: the declared scheme when there is one
    /// (which spares the host call), else what `connection_is_tls` says.
    pub fn https(&self, connection_is_tls: impl FnOnce() -> bool) -> bool {
        match self.scheme {
            Some(declared) => declared == DeclaredScheme::Https,
            None => connection_is_tls(),
        }
    }
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
    pub verify: Option<KeyRing>,
    /// Which signatures are verified: `X-WSGIProxy-Signature` or RFC 9421.
    pub signature_format: SignatureFormat,
    pub max_skew: Duration,
    /// The most memory the replay memory may take (bytes); past it, signed
    /// requests are refused with 503.
    pub replay_memory_bytes: u64,
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

#[derive(Debug)]
pub struct SpawnConfig {
    /// The app's name in the sidecar's configuration.
    pub app: String,
    /// The Envoy cluster that reaches the sidecar's control API.
    pub sidecar_cluster: String,
    pub sidecar_authority: String,
    /// How long a request may wait for the sidecar (a cold start included).
    pub ensure_timeout: Duration,
    /// How often each worker reports activity while it has any.
    pub report_interval: Duration,
    /// Where besides loopback the sidecar may send requests (a container on its own
    /// address): its answer is refused for any other address.
    pub upstream_networks: Vec<IpNet>,
}

pub const DEFAULT_ENSURE_TIMEOUT_MS: u64 = 35_000;
pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 1_000;

pub const DEFAULT_MAX_SKEW_SECONDS: u64 = 300;
/// At the default skew, room for 50,000 signed requests a second sustained in both
/// loaders: the Wasm filter's keys about half full at that rate (its 256 MB held
/// only about 35,000 a second), the native module's memory about a third. It is a
/// bound, not an allocation: an idle Envoy holds the Wasm filter's empty keys only.
pub const DEFAULT_REPLAY_MEMORY_MB: u64 = 512;
const MAX_REPLAY_MEMORY_MB: u64 = 65_536;

/// Parses and validates a configuration. `env` looks up environment variables
/// (secrets reach the Wasm VM through `vm_config.environment_variables`).
pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new("", "the configuration is empty; it must be a JSON object with a \"role\""));
    }
    let mut value: serde_json::Value = serde_json::from_slice(json).map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ConfigError::new("", "must be a JSON object"));
    };
    let role = match object.remove("role") {
        Some(serde_json::Value::String(role)) => role,
        Some(_) => return Err(ConfigError::new("role", "must be a string")),
        None => return Err(ConfigError::new("role", format!("missing; one of {ROLES}"))),
    };
    match role.as_str() {
        "app" => validate_app(raw(value)?, env).map(Config::App),
        "middleware" => validate_middleware(raw(value)?, env).map(Config::Middleware),
        "spawn" => validate_spawn(raw(value)?).map(Config::Spawn),
        "exact" => validate_exact(raw(value)?).map(Config::Exact),
        "peer" => raw::<RawPeer>(value).map(|_| Config::Peer),
        other => Err(ConfigError::new("role", format!("unknown role {other:?}; one of {ROLES}"))),
    }
}

const ROLES: &str = "\"app\", \"middleware\", \"spawn\", \"exact\", \"peer\"";

/// Deserialises a role's raw form, naming the path of the first offending field.
fn raw<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        // serde's message quotes the offending value, and under `secret` that may be
        // the key itself (the original took `secret` as a plain string): never log it.
        if path == "secret" || path.starts_with("secret.") {
            return ConfigError::new(
                path,
                "must be {\"keys\": [{\"id\": ID, \"env\": VARIABLE} or {\"id\": ID, \"value\": KEY}, ...]} (the value given is not shown: it may be a secret)",
            );
        }
        ConfigError::new(path, e.into_inner().to_string())
    })
}

fn validate_exact(raw: RawExact) -> Result<crate::exact::ExactConfig, ConfigError> {
    if raw.allow_hosts.is_empty() {
        return Err(ConfigError::new(
            "allow_hosts",
            "must list the destinations this proxy may reach (\"*:*\" allows any public host; loopback and private addresses only when listed)",
        ));
    }
    let mut allow_hosts = Vec::with_capacity(raw.allow_hosts.len());
    for (i, entry) in raw.allow_hosts.iter().enumerate() {
        allow_hosts.push(crate::exact::HostPattern::parse(entry).map_err(|e| ConfigError::new(format!("allow_hosts[{i}]"), e))?);
    }
    Ok(crate::exact::ExactConfig { allow_hosts })
}

fn validate_spawn(raw: RawSpawn) -> Result<SpawnConfig, ConfigError> {
    let plain = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain(&raw.app) {
        return Err(ConfigError::new("app", "must be the app's name: letters, digits, '.', '_' or '-'"));
    }
    if raw.sidecar_cluster.is_empty() || raw.sidecar_cluster.chars().any(char::is_control) {
        return Err(ConfigError::new("sidecar_cluster", "must name the Envoy cluster of the sidecar"));
    }
    let sidecar_authority = raw.sidecar_authority.unwrap_or_else(|| "wsgiproxy-sidecar".into());
    if crate::headers::parse_authority(sidecar_authority.as_bytes()).is_none() {
        return Err(ConfigError::new("sidecar_authority", "must be host or host:port"));
    }
    let ensure = raw.ensure_timeout_ms.unwrap_or(DEFAULT_ENSURE_TIMEOUT_MS);
    if !(100..=600_000).contains(&ensure) {
        return Err(ConfigError::new("ensure_timeout_ms", "must be between 100 and 600000"));
    }
    let report = raw.report_interval_ms.unwrap_or(DEFAULT_REPORT_INTERVAL_MS);
    if !(100..=60_000).contains(&report) {
        return Err(ConfigError::new("report_interval_ms", "must be between 100 and 60000"));
    }
    let mut upstream_networks = Vec::new();
    for (i, entry) in raw.upstream_networks.iter().flatten().enumerate() {
        let net = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| ConfigError::new(format!("upstream_networks[{i}]"), format!("{entry:?} is not an IP address or CIDR range")))?;
        // Everywhere is not a network of containers: it would let a wrong answer send
        // requests anywhere Envoy can reach.
        if net.prefix_len() == 0 {
            return Err(ConfigError::new(format!("upstream_networks[{i}]"), "must name the apps' network, not every address"));
        }
        upstream_networks.push(net.trunc());
    }
    Ok(SpawnConfig {
        app: raw.app,
        sidecar_cluster: raw.sidecar_cluster,
        sidecar_authority,
        ensure_timeout: Duration::from_millis(ensure),
        report_interval: Duration::from_millis(report),
        upstream_networks,
    })
}

fn validate_app(raw: RawApp, env: &dyn Fn(&str) -> Option<String>) -> Result<AppConfig, ConfigError> {
    let href = Href::parse(&raw.href).map_err(|e| ConfigError::new("href", e))?;
    let script_name = match raw.script_name {
        None => None,
        Some(s) => {
            let normalized = normalize_prefix(&s).map_err(|e| ConfigError::new("script_name", e))?;
            if s.is_empty() {
                return Err(ConfigError::new("script_name", "must start with /"));
            }
            Some(normalized).filter(|n| !n.is_empty())
        }
    };
    let mut keys = Vec::new();
    for (family, field, list) in [
        (Family::Str, "string_keys", raw.string_keys),
        (Family::Unicode, "unicode_keys", raw.unicode_keys),
        (Family::Json, "json_keys", raw.json_keys),
        (Family::Pickle, "pickle_keys", raw.pickle_keys),
    ] {
        for (i, k) in list.into_iter().enumerate() {
            keys.push(validate_key(family, &format!("{field}[{i}]"), k)?);
        }
    }
    let (signature_format, algorithm) = signature_format(raw.signature_format.as_deref(), raw.algorithm.as_deref())?;
    let signing = key_ring(raw.secret, algorithm, KeyUse::Sign, env)?;
    let bind_endpoint = raw.bind_endpoint.unwrap_or(false);
    if bind_endpoint && signing.is_none() {
        return Err(ConfigError::new("bind_endpoint", "needs a secret: the endpoint is bound by the signature"));
    }
    Ok(AppConfig {
        bind_endpoint,
        href,
        script_name,
        keys,
        signing,
        signature_format,
        rewrite_response: raw.rewrite_response.unwrap_or(true),
        client_address: client_address(raw.client_address.as_deref())?,
        scheme: match raw.scheme.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => None,
            Some("http") => Some(DeclaredScheme::Http),
            Some("https") => Some(DeclaredScheme::Https),
            Some(other) => {
                return Err(ConfigError::new(
                    "scheme",
                    format!("{other:?} is not \"http\" or \"https\" (leave it out to ask Envoy about each connection)"),
                ))
            }
        },
    })
}

fn client_address(value: Option<&str>) -> Result<ClientAddress, ConfigError> {
    match value {
        None => Ok(ClientAddress::default()),
        Some(v) => ClientAddress::parse(v).ok_or_else(|| {
            ConfigError::new(
                "client_address",
                format!(
                    "{v:?} is not \"peer\" (the TCP peer, recorded by the network filter) or \"envoy\" (Envoy's computed client address)"
                ),
            )
        }),
    }
}

fn validate_key(family: Family, field: &str, raw: RawKey) -> Result<KeySpec, ConfigError> {
    if raw.key.is_empty() || raw.key.chars().any(char::is_control) {
        return Err(ConfigError::new(format!("{field}.key"), "must be a non-empty name without control characters"));
    }
    let source = match (raw.from_header, raw.from_property, raw.value) {
        (Some(h), None, None) => {
            let h = h.to_ascii_lowercase();
            if !is_lowercase_token(&h) {
                return Err(ConfigError::new(format!("{field}.from_header"), format!("{h:?} is not a header name")));
            }
            KeySource::Header(h)
        }
        (None, Some(p), None) => {
            if p.is_empty() || p.iter().any(String::is_empty) {
                return Err(ConfigError::new(
                    format!("{field}.from_property"),
                    "must be a non-empty path such as [\"connection\", \"subject_peer_certificate\"]",
                ));
            }
            KeySource::Property(p)
        }
        (None, None, Some(v)) => {
            if family == Family::Json && !crate::codec::is_json(v.as_bytes()) {
                return Err(ConfigError::new(format!("{field}.value"), "must hold valid JSON text for a json key"));
            }
            KeySource::Value(v.into_bytes())
        }
        (None, None, None) => return Err(ConfigError::new(field, "needs one source: \"from_header\", \"from_property\" or \"value\"")),
        _ => return Err(ConfigError::new(field, "takes exactly one of \"from_header\", \"from_property\" or \"value\"")),
    };
    Ok(KeySpec { family, key: raw.key, source })
}

/// What a role does with its keys: the `app` role signs, the `middleware` role verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyUse {
    Sign,
    Verify,
}

fn key_ring(
    secret: Option<RawSecret>,
    algorithm: Option<&str>,
    key_use: KeyUse,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<KeyRing>, ConfigError> {
    let algorithm = match algorithm {
        None => Algorithm::HmacSha1,
        Some(name) => Algorithm::from_name(name).ok_or_else(|| {
            ConfigError::new("algorithm", format!("{name:?} is not \"hmac-sha1\", \"hmac-sha256\", \"ed25519\" or \"ecdsa-p256-sha256\""))
        })?,
    };
    let Some(secret) = secret else {
        return Ok(None);
    };
    if secret.keys.is_empty() {
        return Err(ConfigError::new("secret.keys", "must list at least one key"));
    }
    if algorithm.is_asymmetric() {
        return asymmetric_key_ring(secret, algorithm, key_use, env).map(Some);
    }
    let mut keys = Vec::with_capacity(secret.keys.len());
    for (i, k) in secret.keys.into_iter().enumerate() {
        let (id, material, _) = key_material(i, k, env)?;
        keys.push((id, material.into_bytes()));
    }
    KeyRing::new(algorithm, &keys).map(Some).map_err(|e| ConfigError::new("secret.keys", e))
}

/// A key's id, its text (from the environment or inline), and the field the text
/// came from (`secret.keys[i].env` or `.value`), for errors about it.
fn key_material(i: usize, k: RawSecretKey, env: &dyn Fn(&str) -> Option<String>) -> Result<(String, String, String), ConfigError> {
    let field = format!("secret.keys[{i}]");
    match (k.env, k.value) {
        (Some(var), None) => {
            let material = env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.env"),
                    format!("environment variable {var:?} is not set in the Wasm VM (vm_config.environment_variables)"),
                )
            })?;
            Ok((k.id, material, format!("{field}.env")))
        }
        (None, Some(v)) => Ok((k.id, v, format!("{field}.value"))),
        _ => Err(ConfigError::new(field, "takes exactly one of \"env\" or \"value\"")),
    }
}

/// The keys of a public-key algorithm: private keys for the `app` role, which
/// signs; public keys only for the `middleware` role, so that no receiver holds
/// what could sign (see [`crate::asymmetric`] for the forms read).
fn asymmetric_key_ring(
    secret: RawSecret,
    algorithm: Algorithm,
    key_use: KeyUse,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KeyRing, ConfigError> {
    let mut keys = Vec::with_capacity(secret.keys.len());
    for (i, k) in secret.keys.into_iter().enumerate() {
        let (id, material, field) = key_material(i, k, env)?;
        let material = zeroize::Zeroizing::new(material);
        let key = asymmetric::parse_key(algorithm, &material).map_err(|e| ConfigError::new(field.as_str(), e))?;
        match (key_use, &key) {
            (KeyUse::Sign, AsymmetricKey::Public(_)) => {
                return Err(ConfigError::new(
                    field,
                    "is a public key: the app role signs with the private key (PKCS#8 PEM \"-----BEGIN PRIVATE KEY-----\" or a JWK with \"d\"); its public key goes to the middleware role",
                ))
            }
            (KeyUse::Verify, AsymmetricKey::Private(_)) => {
                return Err(ConfigError::new(
                    field,
                    "is a private key: the middleware role verifies with the public key only (SPKI PEM \"-----BEGIN PUBLIC KEY-----\" or a JWK without \"d\"); the private key stays with the app role that signs",
                ))
            }
            _ => keys.push((id, key)),
        }
    }
    KeyRing::asymmetric(algorithm, keys).map_err(|e| ConfigError::new("secret.keys", e))
}

fn validate_middleware(raw: RawMiddleware, env: &dyn Fn(&str) -> Option<String>) -> Result<MiddlewareConfig, ConfigError> {
    let mut trust_ips = raw.trust_ips.as_ref().map(|list| Vec::with_capacity(list.len()));
    for (i, entry) in raw.trust_ips.iter().flatten().enumerate() {
        let net = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| ConfigError::new(format!("trust_ips[{i}]"), format!("{entry:?} is not an IP address or CIDR range")))?;
        trust_ips.get_or_insert_with(Vec::new).push(net.trunc());
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
    let verify = key_ring(raw.secret, algorithm, KeyUse::Verify, env)?;
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
    let replay_memory_mb = raw.replay_memory_mb.unwrap_or(DEFAULT_REPLAY_MEMORY_MB);
    if !(1..=MAX_REPLAY_MEMORY_MB).contains(&replay_memory_mb) {
        return Err(ConfigError::new("replay_memory_mb", format!("must be between 1 and {MAX_REPLAY_MEMORY_MB}")));
    }
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
        signature_format,
        max_skew,
        replay_memory_bytes: replay_memory_mb << 20,
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

/// The signature format, and the algorithm to use with it: of the HMACs RFC 9421
/// defines `hmac-sha256` only, which is then the default, and `hmac-sha1` is
/// refused; the public-key algorithms (`ed25519`, `ecdsa-p256-sha256`) sign RFC
/// 9421 signatures only.
fn signature_format<'a>(format: Option<&str>, algorithm: Option<&'a str>) -> Result<(SignatureFormat, Option<&'a str>), ConfigError> {
    let format = match format {
        None => SignatureFormat::V1,
        Some(name) => SignatureFormat::from_name(name)
            .ok_or_else(|| ConfigError::new("signature_format", format!("{name:?} is not \"v1\" or \"rfc9421\"")))?,
    };
    let asymmetric = algorithm.and_then(Algorithm::from_name).is_some_and(Algorithm::is_asymmetric);
    match (format, algorithm) {
        (SignatureFormat::V1, Some(name)) if asymmetric => Err(ConfigError::new(
            "algorithm",
            format!("{name:?} signs RFC 9421 signatures only: add \"signature_format\": \"rfc9421\" (on both sides)"),
        )),
        (SignatureFormat::Rfc9421, Some(_)) if asymmetric => Ok((format, algorithm)),
        (SignatureFormat::Rfc9421, None) => Ok((format, Some(Algorithm::HmacSha256.name()))),
        (SignatureFormat::Rfc9421, Some(name)) if name != Algorithm::HmacSha256.name() => Err(ConfigError::new(
            "algorithm",
            format!(
                "{name:?} cannot sign RFC 9421 signatures (signature_format \"rfc9421\"): use \"hmac-sha256\", \"ed25519\" or \"ecdsa-p256-sha256\""
            ),
        )),
        _ => Ok((format, algorithm)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn err(json: &str) -> ConfigError {
        match parse(json.as_bytes(), &no_env) {
            Err(e) => e,
            Ok(c) => panic!("accepted {json}: {c:?}"),
        }
    }

    #[test]
    fn app_config() {
        let c = parse(
            br#"{"role":"app","href":"http://backend:8080/myapp?q=1","script_name":"/blog/",
                 "string_keys":[{"key":"REMOTE_USER","from_header":"X-Auth-User"}],
                 "json_keys":[{"key":"roles","value":"[\"a\"]"}],
                 "secret":{"keys":[{"id":"k1","env":"K1"}]},"algorithm":"hmac-sha256"}"#,
            &|v| (v == "K1").then(|| "0123456789abcdef0123".to_string()),
        )
        .unwrap();
        let Config::App(app) = c else { panic!() };
        assert_eq!(app.script_name.as_deref(), Some("/blog"));
        assert_eq!(app.keys.len(), 2);
        assert_eq!(app.keys[0].source, KeySource::Header("x-auth-user".into()));
        assert!(app.signing.is_some());
    }

    #[test]
    fn app_errors_name_the_field() {
        assert_eq!(err("not json").field, "");
        assert!(err("").message.contains("empty"));
        assert_eq!(err(r#"{"href":"http://x/"}"#).field, "role");
        assert_eq!(err(r#"{"role":"proxy"}"#).field, "role");
        let e = err(r#"{"role":"app","href":"http://x/","hreff":1}"#);
        assert!(e.message.contains("unknown field `hreff`"), "{e}");
        assert_eq!(err(r#"{"role":"app","href":"ftp://x/"}"#).field, "href");
        assert_eq!(err(r#"{"role":"app","href":"http://x/","script_name":"blog"}"#).field, "script_name");
        assert_eq!(err(r#"{"role":"app","href":"http://x/","string_keys":[{"key":"A"}]}"#).field, "string_keys[0]");
        assert_eq!(
            err(r#"{"role":"app","href":"http://x/","string_keys":[{"key":"A","value":"1","from_header":"b"}]}"#).field,
            "string_keys[0]"
        );
        let e = err(r#"{"role":"app","href":"http://x/","string_keys":[{"key":"A","value":"1","extra":2}]}"#);
        assert_eq!(e.field, "string_keys[0].extra");
        assert_eq!(err(r#"{"role":"app","href":"http://x/","json_keys":[{"key":"A","value":"{x"}]}"#).field, "json_keys[0].value");
        let e = err(r#"{"role":"app","href":"http://x/","secret":{"keys":[{"id":"k","env":"NOPE"}]}}"#);
        assert_eq!(e.field, "secret.keys[0].env");
        assert!(!e.to_string().contains("0123"));
        assert_eq!(err(r#"{"role":"app","href":"http://x/","secret":{"keys":[{"id":"k","value":"short"}]}}"#).field, "secret.keys");
        assert_eq!(err(r#"{"role":"app","href":"http://x/","algorithm":"md5"}"#).field, "algorithm");
        assert_eq!(err(r#"{"role":"app"}"#).message, "missing field `href`");
    }

    #[test]
    fn a_malformed_secret_is_never_echoed() {
        for json in [
            r#"{"role":"app","href":"http://x/","secret":"my-shared-key-123"}"#,
            r#"{"role":"app","href":"http://x/","secret":{"keys":["my-shared-key-123"]}}"#,
            r#"{"role":"middleware","secret":{"keys":[{"id":"k","value":["my-shared-key-123"]}]}}"#,
        ] {
            let e = err(json);
            assert!(e.field.starts_with("secret"), "{e}");
            assert!(!e.to_string().contains("my-shared-key-123"), "{e}");
        }
    }

    #[test]
    fn middleware_config() {
        let c = parse(
            br#"{"role":"middleware","trust_ips":["10.0.0.0/8","::1","127.0.0.1"],"max_skew_seconds":60.0,
                 "pop_prefix":"/app/","scheme":"HTTPS","domain":"example.com","port":8443.0,
                 "keys":{"REMOTE_USER":"X-Remote-User"},"on_untrusted":"reject"}"#,
            &no_env,
        )
        .unwrap();
        let Config::Middleware(mw) = c else { panic!() };
        assert_eq!(mw.trust_ips.as_ref().map(Vec::len), Some(3));
        assert_eq!(mw.max_skew, Duration::from_secs(60));
        assert_eq!(mw.forced_prefix, ForcedPrefix::Pop("/app".into()));
        assert_eq!(mw.scheme.as_deref(), Some("https"));
        assert_eq!(mw.port, Some(8443));
        assert_eq!(mw.keys["REMOTE_USER"], "x-remote-user");
        assert_eq!(mw.on_untrusted, OnUntrusted::Reject);
        assert_eq!(mw.replay_memory_bytes, DEFAULT_REPLAY_MEMORY_MB << 20);
    }

    #[test]
    fn replay_memory_bound() {
        let mw = |extra: &str| parse(format!(r#"{{"role":"middleware","trust_ips":[]{extra}}}"#).as_bytes(), &no_env);
        let Ok(Config::Middleware(m)) = mw(r#","replay_memory_mb":1024.0"#) else { panic!() };
        assert_eq!(m.replay_memory_bytes, 1 << 30);
        for bad in ["0", "65537", "-1", "1.5", "\"64\""] {
            let Err(e) = mw(&format!(r#","replay_memory_mb":{bad}"#)) else { panic!("{bad}") };
            assert_eq!(e.field, "replay_memory_mb", "{bad}");
        }
    }

    #[test]
    fn signature_formats() {
        let secret = r#""secret":{"keys":[{"id":"k1","value":"0123456789abcdef"}]}"#;
        let app = |extra: &str| parse(format!(r#"{{"role":"app","href":"http://x/",{secret}{extra}}}"#).as_bytes(), &no_env);
        let Ok(Config::App(a)) = app("") else { panic!() };
        assert_eq!(a.signature_format, SignatureFormat::V1);
        assert_eq!(a.signing.map(|r| r.algorithm), Some(Algorithm::HmacSha1));
        let Ok(Config::App(a)) = app(r#","signature_format":"rfc9421""#) else { panic!() };
        assert_eq!(a.signature_format, SignatureFormat::Rfc9421);
        assert_eq!(a.signing.map(|r| r.algorithm), Some(Algorithm::HmacSha256), "RFC 9421 defaults to hmac-sha256");
        let Ok(Config::App(a)) = app(r#","signature_format":"rfc9421","algorithm":"hmac-sha256""#) else { panic!() };
        assert_eq!(a.signature_format, SignatureFormat::Rfc9421);
        let Ok(Config::App(a)) = app(r#","signature_format":"v1""#) else { panic!() };
        assert_eq!(a.signature_format, SignatureFormat::V1);
        let Err(e) = app(r#","signature_format":"rfc9421","algorithm":"hmac-sha1""#) else { panic!() };
        assert_eq!(e.field, "algorithm");
        assert!(e.to_string().contains("RFC 9421"), "{e}");
        let Err(e) = app(r#","signature_format":"cavage""#) else { panic!() };
        assert_eq!(e.field, "signature_format");
        let mw = |extra: &str| parse(format!(r#"{{"role":"middleware",{secret}{extra}}}"#).as_bytes(), &no_env);
        let Ok(Config::Middleware(m)) = mw(r#","signature_format":"rfc9421""#) else { panic!() };
        assert_eq!(m.signature_format, SignatureFormat::Rfc9421);
        assert_eq!(m.verify.map(|r| r.algorithm), Some(Algorithm::HmacSha256));
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"signature_format":"rfc9421","algorithm":"hmac-sha1"}"#).field, "algorithm");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"signature_format":1}"#).field, "signature_format");
    }

    #[test]
    fn spawn_config() {
        let c = parse(br#"{"role":"spawn","app":"blog","sidecar_cluster":"sidecar","ensure_timeout_ms":5000.0}"#, &no_env).unwrap();
        let Config::Spawn(s) = c else { panic!() };
        assert_eq!(s.ensure_timeout, Duration::from_secs(5));
        assert_eq!(s.sidecar_authority, "wsgiproxy-sidecar");
        assert_eq!(err(r#"{"role":"spawn","app":"a b","sidecar_cluster":"s"}"#).field, "app");
        assert_eq!(err(r#"{"role":"spawn","app":"a"}"#).message, "missing field `sidecar_cluster`");
        assert_eq!(err(r#"{"role":"spawn","app":"a","sidecar_cluster":"s","ensure_timeout_ms":1}"#).field, "ensure_timeout_ms");
        let Ok(Config::Spawn(s)) =
            parse(br#"{"role":"spawn","app":"a","sidecar_cluster":"s","upstream_networks":["172.18.0.0/16","10.1.2.3"]}"#, &no_env)
        else {
            panic!()
        };
        assert_eq!(s.upstream_networks, ["172.18.0.0/16".parse::<IpNet>().unwrap(), "10.1.2.3/32".parse().unwrap()]);
        for bad in [r#"["0.0.0.0/0"]"#, r#"["::/0"]"#, r#"["nope"]"#] {
            let e = err(&format!(r#"{{"role":"spawn","app":"a","sidecar_cluster":"s","upstream_networks":{bad}}}"#));
            assert_eq!(e.field, "upstream_networks[0]", "{bad}");
        }
    }

    #[test]
    fn middleware_errors() {
        assert_eq!(err(r#"{"role":"middleware"}"#).field, "trust_ips");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":["10.0.0.300"]}"#).field, "trust_ips[0]");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"prefix":"/a","pop_prefix":"/b"}"#).field, "pop_prefix");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"host":"a.com"}"#).field, "host");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"host":"a.com:80","domain":"b"}"#).field, "domain");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"host":"a.com:80","port":80}"#).field, "port");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"scheme":"ftp"}"#).field, "scheme");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"port":1.5}"#).field, "port");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"keys":{"A":"x-forwarded-host"}}"#).field, "keys.A");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"keys":{"A":"x-a","B":"x-a"}}"#).field, "keys.B");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"on_untrusted":"allow"}"#).field, "on_untrusted");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"max_skew_seconds":0}"#).field, "max_skew_seconds");
        assert_eq!(err(r#"{"role":"middleware","trust_principals":[]}"#).field, "trust_principals");
        assert_eq!(err(r#"{"role":"middleware","trust_principals":["spiffe://td/*/x"]}"#).field, "trust_principals[0]");
        assert_eq!(err(r#"{"role":"middleware","trust_ips":[],"client_address":"xff"}"#).field, "client_address");
        assert_eq!(err(r#"{"role":"app","href":"http://x/","client_address":"x-forwarded-for"}"#).field, "client_address");
        assert_eq!(err(r#"{"role":"app","href":"http://x/","scheme":"ftp"}"#).field, "scheme");
        let Ok(Config::App(a)) = parse(br#"{"role":"app","href":"http://x/","scheme":"HTTPS"}"#, &no_env) else { panic!() };
        assert_eq!(a.scheme, Some(DeclaredScheme::Https));
        assert!(err(r#"{"role":"peer","trust_ips":[]}"#).message.contains("unknown field"));
        assert!(err(r#"{"role":"middleware"}"#).message.contains("trust_principals"));
        assert!(matches!(parse(br#"{"role":"peer"}"#, &no_env), Ok(Config::Peer)));
        let Ok(Config::Middleware(m)) = parse(br#"{"role":"middleware","trust_principals":["*.edge.svc"]}"#, &no_env) else { panic!() };
        assert_eq!(m.needs(), crate::trust::Needs { tcp_peer: true, envoy_client: false, principals: true });
    }
}
