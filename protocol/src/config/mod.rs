//! The filter's `configuration` JSON: parsed strictly, validated once, and turned
//! into ready-to-use values (parsed href and CIDRs, keyed MAC state, header names).

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::key_files::KeyFiles;
use crate::trust::ClientAddress;

mod app;
mod exact;
mod key_directories;
mod middleware;
mod secrets;
mod spawn;
#[cfg(test)]
mod tests;

pub use app::*;
use exact::*;
pub use key_directories::*;
pub use middleware::*;
use secrets::*;
pub use spawn::*;

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

/// The `peer` role takes no settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {}

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

/// Parses and validates a configuration. `env` looks up environment variables
/// (secrets reach the Wasm VM through `vm_config.environment_variables`). Keys from
/// files are refused: see [`parse_with_files`].
pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    parse_with_files(json, env, None)
}

/// As [`parse`], reading key files (`secret.keys[i].file`) through `files` when
/// the loader can read files (the native module; the Wasm filter cannot).
pub fn parse_with_files(json: &[u8], env: &dyn Fn(&str) -> Option<String>, files: Option<&dyn KeyFiles>) -> Result<Config, ConfigError> {
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
        "app" => validate_app(raw(value)?, env, files).map(Config::App),
        "middleware" => validate_middleware(raw(value)?, env, files).map(Config::Middleware),
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
                "must be {\"keys\": [{\"id\": ID, \"env\": VARIABLE} or {\"id\": ID, \"value\": KEY} or {[\"id\": ID, ]\"file\": PATH}, ...][, \"file_check_ms\": MS]} (the value given is not shown: it may be a secret)",
            );
        }
        ConfigError::new(path, e.into_inner().to_string())
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

/// An IP address or CIDR range (an address alone is a range of one), its host bits cleared.
fn network(entry: &str, field: &str) -> Result<IpNet, ConfigError> {
    let net = entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| ConfigError::new(field, format!("{entry:?} is not an IP address or CIDR range")))?;
    Ok(net.trunc())
}
