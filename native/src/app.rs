//! The `app` role's stream filter: the shared driver over the ABI.

use std::sync::Arc;

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::app::AppStream;

use crate::abi::{HeadersStatus, HttpFilter, Stream};
use crate::host::{status, NativeHost};
use crate::shared::Shared;

pub struct AppFilter {
    shared: Arc<Shared>,
    stream: AppStream,
}

impl AppFilter {
    pub fn new(shared: Arc<Shared>) -> Self {
        AppFilter { shared, stream: AppStream::default() }
    }
}

impl HttpFilter for AppFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let Config::App(config) = &self.shared.config else {
            return HeadersStatus::Continue;
        };
        status(self.stream.on_request_headers(config, &mut NativeHost::new(stream, &self.shared)))
    }

    fn on_response_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        if let Config::App(config) = &self.shared.config {
            self.stream.on_response_headers(config, &mut NativeHost::new(stream, &self.shared));
        }
        HeadersStatus::Continue
    }
}
