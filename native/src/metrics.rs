//! Envoy counters, defined once per configuration (Envoy allows it only while the
//! configuration is made) and shown under the filter's metrics namespace.

use std::sync::atomic::{AtomicU64, Ordering};

use wsgiproxy_protocol::counters::NameMap;

use crate::abi::{ConfigHandle, Stream};

/// Counter name → Envoy's id; the replay memory's gauge, and the value it was last set to.
#[derive(Default)]
pub struct Metrics {
    ids: NameMap<usize>,
    replay_gauge: Option<(usize, AtomicU64)>,
}

/// The middleware's gauge of how full the process's replay memory is (percent).
pub const REPLAY_GAUGE: &str = "wsgiproxy.middleware.replay_memory_percent";

impl Metrics {
    /// Defines `wsgiproxy.{name}` for each name.
    pub fn define(config: &ConfigHandle, names: &[String]) -> Metrics {
        let ids =
            names.iter().filter_map(|name| config.define_counter(&format!("wsgiproxy.{name}")).map(|id| (name.clone(), id))).collect();
        Metrics { ids, replay_gauge: None }
    }

    /// Defines the replay memory's gauge (the middleware role, when it verifies).
    pub fn with_replay_gauge(mut self, config: &ConfigHandle) -> Metrics {
        self.replay_gauge = config.define_gauge(REPLAY_GAUGE).map(|id| (id, AtomicU64::new(u64::MAX)));
        self
    }

    /// Sets the replay memory's gauge, when its value changed (a host call only then).
    pub fn set_replay_percent(&self, stream: &Stream, percent: u64) {
        if let Some((id, last)) = &self.replay_gauge {
            if last.swap(percent, Ordering::Relaxed) != percent {
                stream.set_gauge(*id, percent);
            }
        }
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
