//! The `middleware` role's request context: the shared driver over proxy-wasm.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::middleware::{on_request_headers, on_request_headers_following, unknown_key_id};

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
    context_id: u32,
}

impl MiddlewareFilter {
    pub fn new(shared: Rc<Shared>, context_id: u32) -> Self {
        MiddlewareFilter { shared, context_id }
    }
}

impl Context for MiddlewareFilter {}

impl HttpContext for MiddlewareFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Config::Middleware(config) = &self.shared.config else {
            return Action::Continue;
        };
        let Some(directories) = &self.shared.directories else {
            return action(on_request_headers(config, &mut WasmHost::new(&self.shared)));
        };
        let followed = directories.followed();
        let host = &mut WasmHost::new(&self.shared);
        if unknown_key_id(config, host, &followed).is_some() && directories.hold(&self.shared, self.context_id) {
            return Action::Pause;
        }
        action(on_request_headers_following(config, host, Some(&followed)))
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // Held with its headers while a key directory is fetched; resumed whole.
        if self.shared.directories.as_ref().is_some_and(|d| d.holds(self.context_id)) {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}
