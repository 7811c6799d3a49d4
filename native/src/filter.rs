//! A filter configuration: the role's JSON, parsed once by the protocol crate when
//! Envoy loads it (a bad one is refused, with the field named), and the factory of
//! each stream's filter.

use std::sync::Arc;

use wsgiproxy_protocol::config::{self, Config};
use wsgiproxy_protocol::counters;

use crate::abi::{log, CalloutResponse, ConfigHandle, FilterFactory, HttpFilter, LogLevel};
use crate::key_files::{KeyFileWatch, SystemFiles};
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::spawn::{SpawnRuntime, Ticker};

struct Factory {
    shared: Arc<Shared>,
    /// The spawn role's lease, and the thread that wakes it for activity reports.
    spawn: Option<(Arc<SpawnRuntime>, Ticker)>,
    /// The thread that polls the key files (`secret.keys[i].file`), if any.
    key_files: Option<KeyFileWatch>,
    /// The thread that wakes the middleware role's key directories.
    _directory_ticker: Option<Ticker>,
}

impl FilterFactory for Factory {
    fn new_filter(&self) -> Box<dyn HttpFilter> {
        let shared = self.shared.clone();
        match (&shared.config, &self.spawn) {
            (Config::Middleware(_), _) => Box::new(crate::middleware::MiddlewareFilter::new(shared)),
            (Config::Exact(_), _) => Box::new(crate::exact::ExactFilter::new(shared)),
            (Config::Spawn(_), Some((runtime, _))) => Box::new(crate::spawn::SpawnFilter::new(shared, runtime.clone())),
            _ => Box::new(crate::app::AppFilter::new(shared)),
        }
    }

    fn on_scheduled(&self, config: &ConfigHandle, event: u64) {
        if event == crate::key_files::EVENT {
            if let Some(watch) = &self.key_files {
                watch.report(config, &self.shared);
            }
            return;
        }
        if let (Config::Spawn(spawn), Some((runtime, _))) = (&self.shared.config, &self.spawn) {
            runtime.tick(spawn, config, &self.shared);
        }
        if let Some(directories) = &self.shared.directories {
            directories.tick(config, &self.shared);
        }
    }

    fn on_callout_done(&self, config: &ConfigHandle, id: u64, response: Option<CalloutResponse>) {
        if let Some(directories) = self.shared.directories.as_ref().filter(|d| d.owns(id)) {
            directories.on_answer(config, &self.shared, id, response);
            return;
        }
        if let (Config::Spawn(spawn), Some((runtime, _))) = (&self.shared.config, &self.spawn) {
            runtime.report_answered(spawn, config, &self.shared, id, response);
        }
    }
}

/// Parses the configuration Envoy passed (`filter_config`); `None` refuses it.
pub fn new_factory(handle: &ConfigHandle, _filter_name: &[u8], raw: &[u8]) -> Option<Box<dyn FilterFactory>> {
    let env = |name: &str| std::env::var(name).ok();
    let parsed = config::parse_with_files(raw, &env, Some(&SystemFiles)).map_err(|e| e.to_string()).and_then(|config| {
        let replay = crate::replay::prepare(&config)?;
        let spawn = match &config {
            Config::Peer => {
                return Err("the role \"peer\" is a network filter: load it with \
                            envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter before the HTTP \
                            connection manager"
                    .to_string())
            }
            // Reports need a timer: a module thread wakes the configuration.
            Config::Spawn(_) => {
                let ticker = handle.scheduler().and_then(|s| Ticker::start(s, crate::spawn::TICK));
                Some((Arc::new(SpawnRuntime::new()), ticker.ok_or("the spawn role's report timer could not start")?))
            }
            _ => None,
        };
        Ok((config, spawn, replay))
    });
    match parsed {
        Ok((config, spawn, replay)) => {
            let names = match &config {
                Config::Spawn(_) => crate::spawn::metric_names(),
                _ => counters::declared(config.role()),
            };
            let metrics = match &config {
                Config::Middleware(m) if m.verify.is_some() => Metrics::define(handle, &names).with_replay_gauge(handle),
                _ => Metrics::define(handle, &names),
            };
            if replay.as_ref().is_some_and(|r| r.untrusted) {
                metrics.inc_config(handle, counters::middleware::REPLAY_MEMORY_UNTRUSTED);
            }
            log(LogLevel::Info, &format!("wsgiproxy: configured as role {:?}", config.role()));
            let mut shared = Shared::new(config, metrics, replay.map(|r| r.memory));
            let mut directory_ticker = None;
            if let Config::Middleware(m) = &shared.config {
                shared.directories = crate::key_directory::NativeDirectories::new(m, handle.scheduler());
                if shared.directories.is_some() {
                    directory_ticker = crate::key_directory::ticker(handle);
                    if directory_ticker.is_none() {
                        log(LogLevel::Error, "wsgiproxy: the key directories' timer could not start");
                        return None;
                    }
                }
            }
            let shared = Arc::new(shared);
            // Keys from files: a module thread polls them.
            let key_files = match crate::key_files::watched(&shared.config) {
                None => None,
                Some(_) => match handle.scheduler().and_then(|s| KeyFileWatch::start(&shared, s)) {
                    Some(watch) => Some(watch),
                    None => {
                        log(LogLevel::Error, "wsgiproxy: the key file poll thread could not start");
                        return None;
                    }
                },
            };
            Some(Box::new(Factory { shared, spawn, key_files, _directory_ticker: directory_ticker }))
        }
        Err(e) => {
            log(LogLevel::Error, &format!("wsgiproxy: {e}"));
            None
        }
    }
}
