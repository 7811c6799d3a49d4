//! The `spawn` role's configuration: the app, the sidecar, and where requests may go.

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::*;
use crate::waiting_page::{self, WaitingPage};

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
    #[serde(default)]
    waiting_page: Option<RawWaitingPage>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWaitingPage {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "lenient_u64")]
    after_ms: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    refresh_seconds: Option<u64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
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
    /// What a browser gets while a slow start goes on (`None`: it waits, as API
    /// clients do).
    pub waiting_page: Option<WaitingPage>,
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
    let waiting_page = match raw.waiting_page {
        Some(RawWaitingPage { enabled: Some(false), .. }) => None,
        Some(page) => Some(validate_waiting_page(page, ensure)?),
        None => Some(validate_waiting_page(RawWaitingPage::default(), ensure)?),
    };
    Ok(SpawnConfig {
        app: raw.app,
        sidecar_cluster: raw.sidecar_cluster,
        sidecar_authority,
        ensure_timeout: Duration::from_millis(ensure),
        report_interval: Duration::from_millis(report),
        upstream_networks,
        waiting_page,
    })
}

fn validate_waiting_page(raw: RawWaitingPage, ensure_timeout_ms: u64) -> Result<WaitingPage, ConfigError> {
    let after_ms = raw.after_ms.unwrap_or(waiting_page::DEFAULT_AFTER_MS.min(ensure_timeout_ms / 2));
    if after_ms >= ensure_timeout_ms {
        return Err(ConfigError::new("waiting_page.after_ms", "must be less than ensure_timeout_ms (the page comes before the wait ends)"));
    }
    let refresh_seconds = raw.refresh_seconds.unwrap_or(waiting_page::DEFAULT_REFRESH_SECONDS);
    if !(1..=60).contains(&refresh_seconds) {
        return Err(ConfigError::new("waiting_page.refresh_seconds", "must be between 1 and 60"));
    }
    let title = raw.title.unwrap_or_else(|| waiting_page::DEFAULT_TITLE.into());
    if title.trim().is_empty() || title.chars().count() > 200 || title.chars().any(char::is_control) {
        return Err(ConfigError::new("waiting_page.title", "must be one line of 1 to 200 characters"));
    }
    let text = raw.text.unwrap_or_else(|| waiting_page::DEFAULT_TEXT.into());
    if text.chars().count() > 2000 || text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ConfigError::new("waiting_page.text", "must be at most 2000 characters, with no control characters but newlines"));
    }
    Ok(WaitingPage { after_ms, refresh_seconds, title, text })
}
