//! Keys: the `secret` of the `app` and `middleware` roles, read once into a key ring,
//! and the signature format and algorithm they go with.

use serde::Deserialize;

use crate::asymmetric::{self, AsymmetricKey};
use crate::rfc9421::SignatureFormat;
use crate::signature::{Algorithm, KeyRing};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    keys: Vec<RawSecretKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecretKey {
    id: String,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    value: Option<String>,
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

pub(super) fn key_ring(
    secret: Option<RawSecret>,
    algorithm: Option<&str>,
    key_use: KeyUse,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<KeyRing>, ConfigError> {
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
pub(super) fn key_material(
    i: usize,
    k: RawSecretKey,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String, String), ConfigError> {
    let field = format!("secret.keys[{i}]");
    match (k.env, k.value) {
        (Some(var), None) => {
            let material = env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.env"),
                    format!(
                        "environment variable {var:?} is not set (the Wasm filter reads vm_config.environment_variables, the native module Envoy's own environment)"
                    ),
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
pub(super) fn asymmetric_key_ring(
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
