//! The `exact` role's configuration.

use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExact {
    allow_hosts: Vec<String>,
}

pub(super) fn validate_exact(raw: RawExact) -> Result<crate::exact::ExactConfig, ConfigError> {
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
