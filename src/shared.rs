//! What every request context of a plugin shares: its configuration, counters, the
//! spawn role's runtime and the warnings already logged.

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::host::{Warned, Warning};

use crate::metrics::Metrics;

pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    /// The spawn role's per-worker lease and activity counts.
    pub spawn: Option<crate::spawn::SpawnRuntime>,
    /// Warnings already logged by this VM (each once, not once per request).
    warned: Warned,
}

impl Shared {
    pub fn new(config: Config, metrics: Metrics, spawn: Option<crate::spawn::SpawnRuntime>) -> Self {
        Shared { config, metrics, spawn, warned: Warned::default() }
    }

    /// True the first time a warning is asked for.
    pub fn warn_once(&self, warning: Warning) -> bool {
        self.warned.first_time(warning)
    }
}
