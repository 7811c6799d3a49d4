//! What every stream of a configuration shares, across worker threads: the
//! configuration, its counters and the warnings already logged.

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::host::{Warned, Warning};

use crate::metrics::Metrics;
use crate::replay::Memory;

pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    /// The replay memory (a middleware that verifies signatures).
    pub replay: Option<&'static Memory>,
    /// The middleware role's key directories, when it follows some.
    pub directories: Option<crate::key_directory::NativeDirectories>,
    /// Warnings already logged for this configuration (each once, not per request).
    warned: Warned,
}

impl Shared {
    pub fn new(config: Config, metrics: Metrics, replay: Option<&'static Memory>) -> Self {
        Shared { config, metrics, replay, directories: None, warned: Warned::default() }
    }

    /// True the first time a warning is asked for.
    pub fn warn_once(&self, warning: Warning) -> bool {
        self.warned.first_time(warning)
    }
}
