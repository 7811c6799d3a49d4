//! What every request context of a plugin shares: its configuration, counters, the
//! spawn role's runtime and the warnings already logged.

use std::cell::Cell;

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::host::{Warned, Warning};
use wsgiproxy_protocol::replay::SharedMemory;

use crate::metrics::Metrics;

pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    /// The spawn role's per-worker lease and activity counts.
    pub spawn: Option<crate::spawn::SpawnRuntime>,
    /// The middleware role's replay memory, when it verifies signatures.
    pub replay: Option<SharedMemory>,
    /// The fullest replay memory key (percent) this VM wrote since the last flush.
    pub replay_fullest: Cell<Option<u64>>,
    /// The middleware role's key directories, when it follows some.
    pub directories: Option<crate::key_directory::WasmDirectories>,
    /// Warnings already logged by this VM (each once, not once per request).
    warned: Warned,
}

impl Shared {
    pub fn new(config: Config, metrics: Metrics, spawn: Option<crate::spawn::SpawnRuntime>, replay: Option<SharedMemory>) -> Self {
        let directories = match &config {
            Config::Middleware(m) => crate::key_directory::WasmDirectories::new(m),
            _ => None,
        };
        Shared { config, metrics, spawn, replay, replay_fullest: Cell::default(), directories, warned: Warned::default() }
    }

    /// True the first time a warning is asked for.
    pub fn warn_once(&self, warning: Warning) -> bool {
        self.warned.first_time(warning)
    }

    /// Forgets a warning, so that it is logged again when its condition returns.
    pub fn rearm(&self, warning: Warning) {
        self.warned.rearm(warning)
    }
}
