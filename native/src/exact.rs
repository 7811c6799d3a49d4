//! The `exact` role's stream filter: the shared driver over the ABI. Placed both
//! before routing and as an upstream filter of the forward-proxy cluster.

use std::sync::Arc;

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::exact::on_request_headers;

use crate::abi::{HeadersStatus, HttpFilter, Stream};
use crate::host::{status, NativeHost};
use crate::shared::Shared;

pub struct ExactFilter {
    shared: Arc<Shared>,
}

impl ExactFilter {
    pub fn new(shared: Arc<Shared>) -> Self {
        ExactFilter { shared }
    }
}

impl HttpFilter for ExactFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let Config::Exact(config) = &self.shared.config else {
            return HeadersStatus::Continue;
        };
        status(on_request_headers(config, &mut NativeHost::new(stream, &self.shared)))
    }
}
