//! The `app` role's request context: the shared driver over proxy-wasm.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::app::AppStream;

use crate::host::{action, WasmHost};
use crate::shared::Shared;

pub struct AppFilter {
    shared: Rc<Shared>,
    stream: AppStream,
}

impl AppFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        AppFilter { shared, stream: AppStream::default() }
    }
}

impl Context for AppFilter {}

impl HttpContext for AppFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Config::App(config) = &self.shared.config else {
            return Action::Continue;
        };
        action(self.stream.on_request_headers(config, &mut WasmHost::new(&self.shared)))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Config::App(config) = &self.shared.config {
            self.stream.on_response_headers(config, &mut WasmHost::new(&self.shared));
        }
        Action::Continue
    }
}
