//! The `middleware` role's `key_directories`: where a receiver fetches its senders'
//! public keys (see [`crate::key_directory`]).

use std::time::Duration;

use serde::Deserialize;

use crate::key_directory::*;
use crate::signature::Algorithm;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyDirectory {
    cluster: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    min_refresh_seconds: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_refresh_seconds: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    unknown_key_interval_seconds: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_stale_seconds: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_bytes: Option<u64>,
}

/// The most any of the seconds settings may be: a week.
pub const MAX_DIRECTORY_SECONDS: u64 = 604_800;
pub const MAX_DIRECTORY_TIMEOUT_MS: u64 = 30_000;
pub const MAX_DIRECTORY_BYTES: u64 = 1_048_576;
/// The most directories one receiver follows.
pub const MAX_KEY_DIRECTORIES: usize = 8;

fn bounded(value: Option<u64>, default: u64, min: u64, max: u64, field: String) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(default);
    if !(min..=max).contains(&value) {
        return Err(ConfigError::new(field, format!("must be between {min} and {max}")));
    }
    Ok(value)
}

pub(super) fn key_directories(
    raw: Option<Vec<RawKeyDirectory>>,
    algorithm: Option<Algorithm>,
) -> Result<Vec<DirectorySource>, ConfigError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    if raw.is_empty() || raw.len() > MAX_KEY_DIRECTORIES {
        return Err(ConfigError::new("key_directories", format!("must list 1 to {MAX_KEY_DIRECTORIES} directories (or be left out)")));
    }
    if !algorithm.is_some_and(Algorithm::is_asymmetric) {
        return Err(ConfigError::new(
            "key_directories",
            "publish public keys: give a public-key \"algorithm\" (\"ed25519\", \"ecdsa-p256-sha256\", \"ecdsa-p384-sha384\", \"rsa-pss-sha512\", \"rsa-v1_5-sha256\") with \"signature_format\": \"rfc9421\"; an HMAC secret is never fetched",
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, d) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("key_directories[{i}].{name}");
        if d.cluster.is_empty() || d.cluster.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(ConfigError::new(field("cluster"), "must name an Envoy cluster"));
        }
        let path = d.path.unwrap_or_else(|| DEFAULT_PATH.to_string());
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(ConfigError::new(field("path"), format!("{path:?} must be a request path, starting with /")));
        }
        let authority = d.authority.unwrap_or_else(|| d.cluster.clone());
        if crate::headers::parse_authority(authority.as_bytes()).is_none() {
            return Err(ConfigError::new(field("authority"), format!("{authority:?} must be host or host:port")));
        }
        let timeout_ms = bounded(d.timeout_ms, DEFAULT_TIMEOUT_MS, 100, MAX_DIRECTORY_TIMEOUT_MS, field("timeout_ms"))?;
        let min_refresh =
            bounded(d.min_refresh_seconds, DEFAULT_MIN_REFRESH_SECONDS, 1, MAX_DIRECTORY_SECONDS, field("min_refresh_seconds"))?;
        let max_refresh = bounded(
            d.max_refresh_seconds,
            DEFAULT_MAX_REFRESH_SECONDS.max(min_refresh),
            min_refresh,
            MAX_DIRECTORY_SECONDS,
            field("max_refresh_seconds"),
        )?;
        let interval =
            bounded(d.unknown_key_interval_seconds, DEFAULT_UNKNOWN_KEY_INTERVAL_SECONDS, 1, 3600, field("unknown_key_interval_seconds"))?;
        let max_stale = bounded(d.max_stale_seconds, DEFAULT_MAX_STALE_SECONDS, 0, MAX_DIRECTORY_SECONDS, field("max_stale_seconds"))?;
        let max_bytes = bounded(d.max_bytes, DEFAULT_MAX_BYTES, 1024, MAX_DIRECTORY_BYTES, field("max_bytes"))?;
        out.push(DirectorySource {
            cluster: d.cluster,
            authority,
            path,
            timeout: Duration::from_millis(timeout_ms),
            min_refresh: Duration::from_secs(min_refresh),
            max_refresh: Duration::from_secs(max_refresh),
            unknown_key_interval: Duration::from_secs(interval),
            max_stale: Duration::from_secs(max_stale),
            max_bytes: max_bytes as usize,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublishedDirectory {
    #[serde(default)]
    path: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_age_seconds: Option<u64>,
}

/// The key directory the `app` role serves for its own keys (`publish_key_directory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedDirectory {
    /// The request path it is served at (GET or HEAD, any query).
    pub path: String,
    /// Its `Cache-Control`.
    pub cache_control: String,
    /// The JWKS: the public half of every key of `secret.keys`, the signing key first.
    pub body: String,
}

pub const DEFAULT_PUBLISHED_MAX_AGE_SECONDS: u64 = 300;
pub const MAX_PUBLISHED_MAX_AGE_SECONDS: u64 = 86_400;

pub(super) fn published_directory(
    raw: Option<RawPublishedDirectory>,
    signing: Option<&crate::signature::KeyRing>,
) -> Result<Option<PublishedDirectory>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let body = signing.and_then(published_key_set).ok_or_else(|| {
        ConfigError::new(
            "publish_key_directory",
            "publishes public keys: give a public-key \"algorithm\" (\"ed25519\", \"ecdsa-p256-sha256\", \"ecdsa-p384-sha384\", \"rsa-pss-sha512\", \"rsa-v1_5-sha256\") with \"signature_format\": \"rfc9421\" and a \"secret\" of private keys",
        )
    })?;
    let path = raw.path.unwrap_or_else(|| DEFAULT_PATH.to_string());
    if !path.starts_with('/') || path.contains('?') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ConfigError::new("publish_key_directory.path", format!("{path:?} must be a request path, starting with /")));
    }
    let max_age = raw.max_age_seconds.unwrap_or(DEFAULT_PUBLISHED_MAX_AGE_SECONDS);
    if max_age > MAX_PUBLISHED_MAX_AGE_SECONDS {
        return Err(ConfigError::new(
            "publish_key_directory.max_age_seconds",
            format!("must be between 0 and {MAX_PUBLISHED_MAX_AGE_SECONDS}"),
        ));
    }
    Ok(Some(PublishedDirectory { path, cache_control: format!("max-age={max_age}"), body }))
}
