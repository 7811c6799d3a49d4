//! The `middleware` role's request context: the shared driver over proxy-wasm.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::middleware::on_request_headers;

use log::warn;
use wsgiproxy_protocol::host::Warning;
use wsgiproxy_protocol::replay::WARN_PERCENT;

use crate::host::{action, WasmHost};
use crate::shared::Shared;

const REPLAY_GAUGE: &str = "middleware.replay_memory_percent";

/// Sets the replay memory's gauge to the fullest key this VM wrote since the last
/// flush, and warns once when it passes [`WARN_PERCENT`].
pub fn report_replay_fullness(shared: &Shared) {
    let Some(percent) = shared.replay_fullest.take() else { return };
    shared.metrics.set_gauge(REPLAY_GAUGE, percent);
    if percent < WARN_PERCENT {
        shared.rearm(Warning::ReplayMemoryFilling);
    } else if shared.warn_once(Warning::ReplayMemoryFilling) {
        warn!(
            "wsgiproxy middleware: a replay memory key is {percent}% full (past {WARN_PERCENT}%); at 100% its signed requests \
             are refused with 503: raise replay_memory_mb"
        );
    }
}

pub struct MiddlewareFilter {
    shared: Rc<Shared>,
}

impl MiddlewareFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        MiddlewareFilter { shared }
    }
}

impl Context for MiddlewareFilter {}

impl HttpContext for MiddlewareFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Config::Middleware(config) = &self.shared.config else {
            return Action::Continue;
        };
        action(on_request_headers(config, &mut WasmHost::new(&self.shared)))
    }
}
