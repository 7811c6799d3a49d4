//! A filter configuration: the role's JSON, parsed once by the protocol crate when
//! Envoy loads it (a bad one is refused, with the field named), and the factory of
//! each stream's filter.

use std::sync::Arc;

use wsgiproxy_protocol::config::{self, Config};

use crate::abi::{log, ConfigHandle, FilterFactory, HttpFilter, LogLevel};
use crate::metrics::Metrics;

/// What every stream of a configuration shares, across worker threads.
pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
}

struct Factory(Arc<Shared>);

impl FilterFactory for Factory {
    fn new_filter(&self) -> Box<dyn HttpFilter> {
        let shared = self.0.clone();
        match &shared.config {
            Config::Middleware(_) => Box::new(crate::middleware::MiddlewareFilter::new(shared)),
            Config::Exact(_) => Box::new(crate::exact::ExactFilter::new(shared)),
            _ => Box::new(crate::app::AppFilter::new(shared)),
        }
    }
}

/// Parses the configuration Envoy passed (`filter_config`); `None` refuses it.
pub fn new_factory(handle: &ConfigHandle, _filter_name: &[u8], raw: &[u8]) -> Option<Box<dyn FilterFactory>> {
    let env = |name: &str| std::env::var(name).ok();
    let parsed = config::parse(raw, &env).map_err(|e| e.to_string()).and_then(|config| match &config {
        Config::App(_) | Config::Middleware(_) | Config::Exact(_) => Ok(config),
        other => Err(format!(
            "the role {:?} runs only in the Wasm filter; the native module has \"app\", \"middleware\" and \"exact\"",
            other.role()
        )),
    });
    match parsed {
        Ok(config) => {
            let names = match &config {
                Config::Middleware(_) => crate::middleware::metric_names(),
                Config::Exact(_) => crate::exact::metric_names(),
                _ => crate::app::metric_names(),
            };
            let metrics = Metrics::define(handle, &names);
            log(LogLevel::Info, &format!("wsgiproxy: configured as role {:?}", config.role()));
            Some(Box::new(Factory(Arc::new(Shared { config, metrics }))))
        }
        Err(e) => {
            log(LogLevel::Error, &format!("wsgiproxy: {e}"));
            None
        }
    }
}
