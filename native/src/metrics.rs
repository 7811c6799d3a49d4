//! Envoy counters, defined once per configuration (Envoy allows it only while the
//! configuration is made) and shown under the filter's metrics namespace.

use std::collections::HashMap;

use crate::abi::{ConfigHandle, Stream};

/// Counter name → Envoy's id.
#[derive(Default)]
pub struct Metrics {
    ids: HashMap<String, usize>,
}

impl Metrics {
    /// Defines `wsgiproxy.{name}` for each name.
    pub fn define(config: &ConfigHandle, names: &[String]) -> Metrics {
        let ids =
            names.iter().filter_map(|name| config.define_counter(&format!("wsgiproxy.{name}")).map(|id| (name.clone(), id))).collect();
        Metrics { ids }
    }

    /// Adds `by` to a defined counter; a name never defined is not counted.
    pub fn add(&self, stream: &Stream, name: &str, by: u64) {
        if by == 0 {
            return;
        }
        if let Some(id) = self.ids.get(name) {
            stream.increment_counter(*id, by);
        }
    }

    pub fn inc(&self, stream: &Stream, name: &str) {
        self.add(stream, name, 1);
    }

    /// Adds one from the configuration's own context (the main thread).
    pub fn inc_config(&self, config: &ConfigHandle, name: &str) {
        if let Some(id) = self.ids.get(name) {
            config.increment_counter(*id, 1);
        }
    }

    /// Counts a refusal under its reason, or under `other` when it is not listed.
    pub fn rejected(&self, stream: &Stream, role: &str, reason: &str) {
        let name = format!("{role}.rejected.{reason}");
        if self.ids.contains_key(&name) {
            self.inc(stream, &name);
        } else {
            self.inc(stream, &format!("{role}.rejected.other"));
        }
    }
}

/// The reasons a role answers with, counted as `{role}.rejected.{reason}`. Envoy
/// takes no new counter after configuration, so they are listed here; a reason
/// missing from the list is counted as `{role}.rejected.other`.
pub const REJECTION_REASONS: &[&str] = &[
    "bad_forwarded_for",
    "bad_forwarded_scheme",
    "bad_forwarded_server",
    "bad_host",
    "bad_payload",
    "bad_payload_index",
    "bad_script_name",
    "bad_traversal_path",
    "conflicting_script_name",
    "control_character",
    "destination_not_allowed",
    "duplicate_header",
    "duplicate_key",
    "no_path",
    "no_randomness",
    "outside_mount",
    "outside_pop_prefix",
    "outside_traversal_path",
    "oversized_header",
    "peer_unknown",
    "replay_store_unavailable",
    "signature_bad",
    "signature_missing",
    "signature_replayed",
    "signature_stale",
    "signed_before_restart",
    "too_many_payloads",
    "undecodable_payload",
    "undeliverable_value",
    "unsafe_path",
    "unsupported_target",
    "unsupported_version",
    "untrusted_peer",
    "other",
];

/// `names` and, for `role`, every `{role}.rejected.{reason}`.
pub fn with_rejections(role: &str, names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_string()).chain(REJECTION_REASONS.iter().map(|r| format!("{role}.rejected.{r}"))).collect()
}
