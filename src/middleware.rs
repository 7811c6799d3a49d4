//! The `middleware` role's request context: the shared driver over proxy-wasm.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::middleware::on_request_headers;

use crate::host::{action, WasmHost};
use crate::shared::Shared;

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
