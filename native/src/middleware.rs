//! The `middleware` role's stream filter: the shared driver over the ABI.

use std::sync::Arc;

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::middleware::on_request_headers;

use crate::abi::{HeadersStatus, HttpFilter, Stream};
use crate::host::{status, NativeHost};
use crate::shared::Shared;

pub struct MiddlewareFilter {
    shared: Arc<Shared>,
}

impl MiddlewareFilter {
    pub fn new(shared: Arc<Shared>) -> Self {
        MiddlewareFilter { shared }
    }
}

impl HttpFilter for MiddlewareFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let Config::Middleware(config) = &self.shared.config else {
            return HeadersStatus::Continue;
        };
        status(on_request_headers(config, &mut NativeHost::new(stream, &self.shared)))
    }
}
