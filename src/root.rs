//! The root context: parses the configuration once, and makes each request's context.

use std::rc::Rc;

use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use wsgiproxy_protocol::config::{self, Config};

use crate::metrics::Metrics;

/// What every request context of this plugin shares.
pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let env = |name: &str| std::env::var(name).ok();
        match config::parse(&raw, &env) {
            Ok(config) => {
                let metrics = Metrics::default();
                crate::app::declare_metrics(&metrics);
                crate::middleware::declare_metrics(&metrics);
                info!("wsgiproxy: configured as role {:?}", config.role());
                self.shared = Some(Rc::new(Shared { config, metrics }));
                true
            }
            Err(e) => {
                // Refuses the plugin: Envoy does not start, or rejects the xDS update.
                error!("wsgiproxy: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(match &shared.config {
            Config::App(_) => Box::new(crate::app::AppFilter::new(shared)),
            Config::Middleware(_) => Box::new(crate::middleware::MiddlewareFilter::new(shared)),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
