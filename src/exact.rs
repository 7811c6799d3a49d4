//! The `exact` role's request context: the shared driver over proxy-wasm.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::exact::on_request_headers;

use crate::host::{action, WasmHost};
use crate::shared::Shared;

pub struct ExactFilter {
    shared: Rc<Shared>,
}

impl ExactFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        ExactFilter { shared }
    }
}

impl Context for ExactFilter {}

impl HttpContext for ExactFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Config::Exact(config) = &self.shared.config else {
            return Action::Continue;
        };
        action(on_request_headers(config, &mut WasmHost::new(&self.shared)))
    }
}
