//! The root context: parses the configuration once, and makes each request's context.

use std::rc::Rc;

use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::ContextType;
use wsgiproxy_protocol::config::{self, Config};
use wsgiproxy_protocol::counters;
use wsgiproxy_protocol::driver::spawn::{on_report_answer, send_report};

use crate::host::{WasmCallAnswer, WasmReportHost};
use crate::metrics::Metrics;
use crate::shared::Shared;

#[derive(Default)]
pub struct Root {
    /// This root context's id (requests held for a key directory are woken from it).
    id: u32,
    shared: Option<Rc<Shared>>,
    /// The call token of the spawn role's activity report in flight.
    report: Option<u64>,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root { id, ..Root::default() }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(shared) = &self.shared else { return };
        if shared.directories.as_ref().is_some_and(|d| d.on_answer(shared, self.id, token, body_size)) {
            return;
        }
        if self.report != Some(u64::from(token)) {
            return;
        }
        self.report = None;
        if let Some((config, runtime)) = crate::spawn::parts(shared) {
            on_report_answer(config, runtime, &mut WasmReportHost::new(&shared.metrics), Some(&WasmCallAnswer { body_size }));
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        crate::host::follow_host_log_level();
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let env = |name: &str| std::env::var(name).ok();
        let parsed = config::parse(&raw, &env).map_err(|e| e.to_string()).and_then(|config| match &config {
            Config::Middleware(m) if m.verify.is_some() => match crate::replay::prepare(m, crate::host::now()) {
                Ok((memory, resized)) => {
                    if let Some(warning) = resized {
                        log::warn!("{warning}");
                    }
                    Ok((config, Some(memory)))
                }
                Err(e) => Err(format!("the replay memory could not be prepared: {e}")),
            },
            _ => Ok((config, None)),
        });
        match parsed {
            Ok((config, replay)) => {
                let metrics = Metrics::default();
                match &config {
                    Config::Spawn(_) => crate::spawn::declare_metrics(&metrics),
                    _ => {
                        // The rare ones first: their names are freed before the counts' map is made.
                        metrics.declare_rare(counters::refusals(config.role()));
                        metrics.declare(counters::of_role(config.role()));
                    }
                }
                let spawn = match &config {
                    Config::Spawn(_) => Some(crate::spawn::SpawnRuntime::new()),
                    _ => None,
                };
                // Ticks flush the metrics and, in the spawn role, send activity reports.
                self.set_tick_period(crate::metrics::FLUSH_EVERY);
                match &config {
                    Config::Peer => info!("wsgiproxy: configured as role \"peer\" (a network filter: envoy.filters.network.wasm)"),
                    _ => info!("wsgiproxy: configured as role {:?} (an HTTP filter: envoy.filters.http.wasm)", config.role()),
                }
                self.shared = Some(Rc::new(Shared::new(config, metrics, spawn, replay)));
                true
            }
            Err(e) => {
                // Refuses the plugin: Envoy does not start, or rejects the xDS update.
                error!("wsgiproxy: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else { return };
        crate::middleware::report_replay_fullness(shared);
        shared.metrics.flush();
        if let (Some((config, runtime)), None) = (crate::spawn::parts(shared), self.report) {
            self.report = send_report(config, runtime, &mut WasmReportHost::new(&shared.metrics));
        }
        if let Some(directories) = &shared.directories {
            directories.tick(shared, self.id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(match &shared.config {
            Config::App(_) => Box::new(crate::app::AppFilter::new(shared)),
            Config::Middleware(_) => Box::new(crate::middleware::MiddlewareFilter::new(shared, context_id)),
            Config::Spawn(_) => Box::new(crate::spawn::SpawnFilter::new(shared)),
            Config::Exact(_) => Box::new(crate::exact::ExactFilter::new(shared)),
            // Never asked: get_type says StreamContext for this role.
            Config::Peer => return None,
        })
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let shared = self.shared.clone()?;
        match &shared.config {
            Config::Peer => Some(Box::new(crate::peer::PeerRecorder::new(shared))),
            _ => None,
        }
    }

    /// The `peer` role is a network filter; every other role an HTTP filter.
    fn get_type(&self) -> Option<ContextType> {
        match self.shared.as_deref().map(|s| &s.config) {
            Some(Config::Peer) => Some(ContextType::StreamContext),
            _ => Some(ContextType::HttpContext),
        }
    }
}
