//! The `middleware` role's stream filter: the shared driver over the ABI.

use std::sync::Arc;

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::driver::middleware::{on_request_headers, on_request_headers_following, unknown_key_id};
use wsgiproxy_protocol::driver::Flow;
use wsgiproxy_protocol::host::Host as _;

use crate::abi::{BodyStatus, HeadersStatus, HttpFilter, Stream, StreamScheduler, TrailersStatus};
use crate::host::{status, NativeHost};
use crate::shared::Shared;

pub struct MiddlewareFilter {
    shared: Arc<Shared>,
    /// Held for a key directory's fetch: woken through this.
    held: Option<Arc<StreamScheduler>>,
}

impl MiddlewareFilter {
    pub fn new(shared: Arc<Shared>) -> Self {
        MiddlewareFilter { shared, held: None }
    }
}

impl HttpFilter for MiddlewareFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let Config::Middleware(config) = &self.shared.config else {
            return HeadersStatus::Continue;
        };
        let Some(directories) = &self.shared.directories else {
            return status(on_request_headers(config, &mut NativeHost::new(stream, &self.shared)));
        };
        let followed = directories.followed();
        let host = &mut NativeHost::new(stream, &self.shared);
        if unknown_key_id(config, host, &followed).is_some() {
            if let Some(scheduler) = stream.scheduler().map(Arc::new) {
                if directories.hold(&scheduler, &mut |name| host.count(name, 1)) {
                    self.held = Some(scheduler);
                    return HeadersStatus::StopIteration;
                }
            }
        }
        status(on_request_headers_following(config, host, Some(&followed)))
    }

    fn on_request_body(&mut self, _stream: &Stream, _end_of_stream: bool) -> BodyStatus {
        if self.held.is_some() {
            BodyStatus::StopIterationAndWatermark
        } else {
            BodyStatus::Continue
        }
    }

    fn on_request_trailers(&mut self, _stream: &Stream) -> TrailersStatus {
        if self.held.is_some() {
            TrailersStatus::StopIteration
        } else {
            TrailersStatus::Continue
        }
    }

    /// The fetch the request waited for was answered: decided again with the keys as
    /// they are now (an unknown key id is refused this time), then let go on.
    fn on_scheduled(&mut self, stream: &Stream, _event: u64) {
        if self.held.take().is_none() {
            return;
        }
        let (Config::Middleware(config), Some(directories)) = (&self.shared.config, &self.shared.directories) else { return };
        let followed = directories.followed();
        if on_request_headers_following(config, &mut NativeHost::new(stream, &self.shared), Some(&followed)) == Flow::Continue {
            stream.continue_decoding();
        }
    }
}
