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

    /// Adds one from the configuration's own context (the main thread).
    pub fn inc_config(&self, config: &ConfigHandle, name: &str) {
        if let Some(id) = self.ids.get(name) {
            config.increment_counter(*id, 1);
        }
    }
}
