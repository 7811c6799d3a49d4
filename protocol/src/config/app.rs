//! The `app` role's configuration: the href, the mount, the keys it sends, signing.

use serde::Deserialize;

use crate::codec::Family;
use crate::headers::is_lowercase_token;
use crate::href::Href;
use crate::key_files::Keys;
use crate::paths::normalize_prefix;
use crate::rfc9421::SignatureFormat;
use crate::trust::{ClientAddress, Needs};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
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
    #[serde(default)]
    publish_key_directory: Option<RawPublishedDirectory>,
    #[serde(default)]
    covered_components: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    key: String,
    #[serde(default)]
    from_header: Option<String>,
    #[serde(default)]
    from_property: Option<Vec<String>>,
    #[serde(default)]
    value: Option<String>,
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
    /// The keys requests are signed with, the first one signing (some may be re-read from files).
    pub signing: Option<Keys>,
    /// The key directory this sender serves for its own keys (`publish_key_directory`).
    pub key_directory: Option<PublishedDirectory>,
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
    /// Derived components an RFC 9421 signature covers besides `@method`,
    /// `@authority`, `@path`, `@query` (for a receiver's `required_components`).
    pub covered_components: Vec<String>,
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

pub(super) fn validate_app(
    raw: RawApp,
    env: &dyn Fn(&str) -> Option<String>,
    files: Option<&dyn KeyFiles>,
) -> Result<AppConfig, ConfigError> {
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
    let signing = key_ring(raw.secret, algorithm, KeyUse::Sign, env, files)?;
    let bind_endpoint = raw.bind_endpoint.unwrap_or(false);
    if bind_endpoint && signing.is_none() {
        return Err(ConfigError::new("bind_endpoint", "needs a secret: the endpoint is bound by the signature"));
    }
    let key_directory = published_directory(raw.publish_key_directory, signing.as_ref().map(|keys| keys.ring()).as_deref())?;
    let covered_components = covered_components(raw.covered_components, signature_format, signing.is_some())?;
    Ok(AppConfig {
        key_directory,
        bind_endpoint,
        covered_components,
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

pub(super) fn validate_key(family: Family, field: &str, raw: RawKey) -> Result<KeySpec, ConfigError> {
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

/// The derived components the app role may cover besides the four it always covers.
pub const EXTRA_DERIVED_COMPONENTS: [&str; 3] = ["@scheme", "@target-uri", "@request-target"];

/// `covered_components`: RFC 9421 signatures only, at least one, each of
/// [`EXTRA_DERIVED_COMPONENTS`] (every protocol header sent is covered already).
fn covered_components(raw: Option<Vec<String>>, format: SignatureFormat, signs: bool) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    if !signs || format != SignatureFormat::Rfc9421 {
        return Err(ConfigError::new(
            "covered_components",
            "goes with RFC 9421 signatures (\"signature_format\": \"rfc9421\" and a \"secret\")",
        ));
    }
    if list.is_empty() {
        return Err(ConfigError::new("covered_components", "must list at least one component (or be left out)"));
    }
    let mut covered: Vec<String> = Vec::with_capacity(list.len());
    for (i, name) in list.into_iter().enumerate() {
        if !EXTRA_DERIVED_COMPONENTS.contains(&name.as_str()) {
            return Err(ConfigError::new(
                format!("covered_components[{i}]"),
                format!(
                    "{name:?} is not one of {}: @method, @authority, @path, @query and every protocol header sent are always covered",
                    EXTRA_DERIVED_COMPONENTS.join(", ")
                ),
            ));
        }
        if !covered.contains(&name) {
            covered.push(name);
        }
    }
    Ok(covered)
}
