//! The `spawn` role's configuration: the app, the sidecar, and where requests may go.

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpawn {
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

pub(super) fn validate_spawn(raw: RawSpawn) -> Result<SpawnConfig, ConfigError> {
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
        let net = network(entry, &format!("upstream_networks[{i}]"))?;
        // Everywhere is not a network of containers: it would let a wrong answer send
        // requests anywhere Envoy can reach.
        if net.prefix_len() == 0 {
            return Err(ConfigError::new(format!("upstream_networks[{i}]"), "must name the apps' network, not every address"));
        }
        upstream_networks.push(net);
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
