//! Keys: the `secret` of the `app` and `middleware` roles, read into a key ring (from
//! the configuration, the environment or files, see [`crate::key_files`]), and the
//! signature format and algorithm they go with.

use serde::Deserialize;

use crate::asymmetric::{self, AsymmetricKey};
use crate::key_files::{KeyFiles, KeySource, Keys, Material, DEFAULT_FILE_CHECK};
use crate::rfc9421::SignatureFormat;
use crate::signature::{Algorithm, KeyRing};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    keys: Vec<RawSecretKey>,
    #[serde(default, deserialize_with = "lenient_u64")]
    file_check_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecretKey {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    file: Option<String>,
}

/// What a role does with its keys: the `app` role signs, the `middleware` role verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyUse {
    Sign,
    Verify,
}

/// Every `algorithm` the configuration takes.
const ALGORITHM_NAMES: &str =
    "\"hmac-sha1\", \"hmac-sha256\", \"ed25519\", \"ecdsa-p256-sha256\", \"ecdsa-p384-sha384\", \"rsa-pss-sha512\" or \"rsa-v1_5-sha256\"";
/// Bounds of `secret.file_check_ms`: often enough to follow a rotation, and never a
/// busy loop.
const FILE_CHECK_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

pub(super) fn key_ring(
    secret: Option<RawSecret>,
    algorithm: Option<&str>,
    key_use: KeyUse,
    env: &dyn Fn(&str) -> Option<String>,
    files: Option<&dyn KeyFiles>,
) -> Result<Option<Keys>, ConfigError> {
    let algorithm = match algorithm {
        None => Algorithm::HmacSha1,
        Some(name) => Algorithm::from_name(name)
            .ok_or_else(|| ConfigError::new("algorithm", format!("{name:?} is not one of {}", ALGORITHM_NAMES)))?,
    };
    let Some(secret) = secret else {
        return Ok(None);
    };
    if secret.keys.is_empty() {
        return Err(ConfigError::new("secret.keys", "must list at least one key"));
    }
    let check_every = match secret.file_check_ms {
        None => DEFAULT_FILE_CHECK,
        Some(ms) if FILE_CHECK_MS.contains(&ms) => std::time::Duration::from_millis(ms),
        Some(ms) => {
            return Err(ConfigError::new(
                "secret.file_check_ms",
                format!("{ms} is not between {} and {} (milliseconds)", FILE_CHECK_MS.start(), FILE_CHECK_MS.end()),
            ))
        }
    };
    let mut sources = Vec::with_capacity(secret.keys.len());
    for (i, k) in secret.keys.into_iter().enumerate() {
        sources.push(key_source(i, k, algorithm, env, files)?);
    }
    let build = move |entries: &[(&str, &Material)]| ring_of(algorithm, key_use, entries).map_err(|e| (e.field, e.message));
    Keys::new(sources, algorithm, Box::new(build), check_every).map(Some).map_err(|(field, message)| ConfigError::new(field, message))
}

/// One entry of `secret.keys`: its key from the environment or inline, or its key
/// (with an `id`) or key set (without) from a file.
pub(super) fn key_source(
    i: usize,
    k: RawSecretKey,
    algorithm: Algorithm,
    env: &dyn Fn(&str) -> Option<String>,
    files: Option<&dyn KeyFiles>,
) -> Result<KeySource, ConfigError> {
    let field = format!("secret.keys[{i}]");
    if let Some(path) = k.file {
        if k.env.is_some() || k.value.is_some() {
            return Err(ConfigError::new(field, "takes exactly one of \"env\", \"value\" or \"file\""));
        }
        let Some(files) = files else {
            return Err(ConfigError::new(
                format!("{field}.file"),
                "keys cannot come from a file in the Wasm filter (Envoy gives a Wasm VM no file system): use the native module, or \"env\" (vm_config.environment_variables), or \"value\"",
            ));
        };
        if path.is_empty() {
            return Err(ConfigError::new(format!("{field}.file"), "must be a path"));
        }
        return KeySource::from_file(field, path, k.id, algorithm, files).map_err(|(field, message)| ConfigError::new(field, message));
    }
    let Some(id) = k.id else {
        return Err(ConfigError::new(format!("{field}.id"), "missing: a key from \"env\" or \"value\" needs its id"));
    };
    let (material, field) = match (k.env, k.value) {
        (Some(var), None) => {
            let material = env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.env"),
                    format!(
                        "environment variable {var:?} is not set (the Wasm filter reads vm_config.environment_variables, the native module Envoy's own environment)"
                    ),
                )
            })?;
            (material, format!("{field}.env"))
        }
        (None, Some(v)) => (v, format!("{field}.value")),
        _ => return Err(ConfigError::new(field, "takes exactly one of \"env\", \"value\" or \"file\"")),
    };
    // The field the text came from names it in errors about the key.
    Ok(KeySource::fixed(field, vec![(id, zeroize::Zeroizing::new(material.into_bytes()))]))
}

/// The ring of every entry's keys, as the configuration checks it (at start, and at
/// each reload of a key file).
fn ring_of(algorithm: Algorithm, key_use: KeyUse, entries: &[(&str, &Material)]) -> Result<KeyRing, ConfigError> {
    if algorithm.is_asymmetric() {
        return asymmetric_key_ring(algorithm, key_use, entries);
    }
    let keys: Vec<(String, Vec<u8>)> =
        entries.iter().flat_map(|(_, keys)| keys.iter().map(|(id, key)| (id.clone(), key.to_vec()))).collect();
    let ring = KeyRing::new(algorithm, &keys).map_err(|e| ConfigError::new("secret.keys", e));
    // The copies hold secrets.
    for (_, mut key) in keys {
        zeroize::Zeroize::zeroize(&mut key);
    }
    ring
}

/// The keys of a public-key algorithm: private keys for the `app` role, which
/// signs; public keys only for the `middleware` role, so that no receiver holds
/// what could sign (see [`crate::asymmetric`] for the forms read).
fn asymmetric_key_ring(algorithm: Algorithm, key_use: KeyUse, entries: &[(&str, &Material)]) -> Result<KeyRing, ConfigError> {
    let mut keys = Vec::new();
    for (entry, material) in entries {
        for (id, text) in material.iter() {
            // The field of the entry the key came from; a key set's key by its id.
            let field = if material.len() > 1 { format!("{entry} (key {id:?})") } else { (*entry).to_string() };
            let text = std::str::from_utf8(text).map_err(|_| ConfigError::new(field.as_str(), "is not text (a PEM or a JWK)"))?;
            let key = asymmetric::parse_key(algorithm, text).map_err(|e| ConfigError::new(field.as_str(), e))?;
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
                _ => keys.push((id.clone(), key)),
            }
        }
    }
    KeyRing::asymmetric(algorithm, keys).map_err(|e| ConfigError::new("secret.keys", e))
}

/// The signature format, and the algorithm to use with it: of the HMACs RFC 9421
/// defines `hmac-sha256` only, which is then the default, and `hmac-sha1` is
/// refused; the public-key algorithms (`ed25519`, `ecdsa-p256-sha256`) sign RFC
/// 9421 signatures only.
pub(super) fn signature_format<'a>(
    format: Option<&str>,
    algorithm: Option<&'a str>,
) -> Result<(SignatureFormat, Option<&'a str>), ConfigError> {
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
                "{name:?} cannot sign RFC 9421 signatures (signature_format \"rfc9421\"): use \"hmac-sha256\" or a public-key algorithm: \"ed25519\", \"ecdsa-p256-sha256\", \"ecdsa-p384-sha384\", \"rsa-pss-sha512\" or \"rsa-v1_5-sha256\""
            ),
        )),
        _ => Ok((format, algorithm)),
    }
}
